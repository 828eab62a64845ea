"""Loaders: the authors' text and VL benchmark formats, our JSONL, prediction files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.evaluation.loaders import (
    discover_benchmarks,
    discover_predictions,
    gold_label,
    load_benchmark,
    load_jsonl_samples,
    load_predictions,
    load_samples,
    load_text_benchmark,
    load_vl_benchmark,
    parse_user_turn,
)
from guardreasoner_vl.prompts import ModelFamily, render_prompt, text_input, vl_user_text

# benchmark file -> its folder in predictions-1B
PAIRS = {
    "0_0_SimpleSafetyTests.json": "SimpleSafetyTests",
    "0_1_AegisSafetyTest.json": "AegisSafetyTest",
    "0_3_harmbench_prompt.json": "HarmBenchPrompt",
    "0_5_harmbench_response.json": "HarmBenchResponse",
    "0_6_xstest_response_harmful.json": "XSTestReponseHarmful",
    "0_7_xstest_response_refusal.json": "XSTestResponseRefusal",
}


def test_every_real_text_record_round_trips(text_data: Path):
    files = sorted((text_data / "benchmark").glob("*.json"))
    assert len(files) == 10
    for path in files:
        records = json.loads(path.read_text(encoding="utf-8"))
        samples = load_text_benchmark(path)
        assert len(samples) == len(records)
        for record, sample in zip(records, samples, strict=True):
            assert text_input(sample.text, sample.response) == record["input"]
            assert sample.label == record["output"]
            assert sample.images == ()


def test_loaded_samples_render_the_exact_prompts_the_authors_used(text_data: Path):
    for bench, folder in PAIRS.items():
        samples = load_text_benchmark(text_data / "benchmark" / bench)
        rows = load_predictions(text_data / "predictions-1B" / folder / "generated_predictions.jsonl")
        assert len(rows) == len(samples)
        for sample, row in zip(samples, rows, strict=True):
            assert render_prompt(ModelFamily.TEXT, sample.text, response=sample.response).text == row.prompt
            assert sample.label == row.label


def test_real_benchmarks_match_the_registry(text_data: Path):
    found = discover_benchmarks(text_data / "benchmark")
    assert len(found) == 10
    safe = load_benchmark(text_data / "benchmark" / "0_9_safe_rlhf.json")
    assert [s.key for s in safe.specs] == ["SafeRLHF/response"]
    assert {s.gold("response") for s in safe.samples} == {"harmful", "unharmful"}
    assert {s.gold("request") for s in safe.samples} == {None}  # "Request: None" gives no label
    no_response = load_benchmark(text_data / "benchmark" / "0_0_SimpleSafetyTests.json")
    assert all(s.response is None for s in no_response.samples)
    assert no_response.samples[0].item() == {"text": no_response.samples[0].text, "image": None, "response": None}


@pytest.mark.parametrize(
    ("label", "task", "gold"),
    [
        ("harmful", "request", "harmful"),
        (" Unharmful\n", "response", "unharmful"),
        ("harmless", "request", "unharmful"),
        ("compliance", "refusal", "compliance"),
        ("Answers: \nRequest: None\nCompletion: refusal\nResponse: harmful\n", "refusal", "refusal"),
        ("Answers: \nRequest: None\nCompletion: refusal\nResponse: harmful\n", "request", None),
        ("<think>t</think><result>\nRequest: harmful\nResponse: unharmful\n</result>", "response", "unharmful"),
        (None, "request", None),
        ("None", "response", None),
    ],
)
def test_gold_labels(label, task, gold):
    assert gold_label(label, task) == gold


def test_gold_labels_that_do_not_fit_the_task_are_refused():
    with pytest.raises(InvalidInputError, match="does not fit the request task"):
        gold_label("refusal", "request")
    with pytest.raises(InvalidInputError, match="must be a string"):
        gold_label(1, "request")


def test_user_turn_layouts():
    assert parse_user_turn("Human user:\nHi\n\nAI assistant:\nHello\n\n") == ("Hi", "Hello", 0)
    assert parse_user_turn("Human user:\nHi\n\nAI assistant:\nline\n\n\n") == ("Hi", "line\n", 0)
    for prompt, response, image in [("Look", "Ok.", True), (None, None, True), ("Hi", "Yo\n", False)]:
        user = vl_user_text(prompt, response, has_image=image)
        assert parse_user_turn(user, layout="vl") == (prompt, response, int(image))
    with pytest.raises(InvalidInputError, match="must start with"):
        parse_user_turn("User: hi")
    with pytest.raises(InvalidInputError, match="no '\\\\n\\\\nAI assistant"):
        parse_user_turn("Human user:\nhi")


def _image(path: Path, colour: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)


def test_vl_benchmark_with_images_relative_to_the_json(vl_benchmark: Path):
    path = vl_benchmark
    samples = load_vl_benchmark(path)
    assert [s.id for s in samples] == ["0", "img-only", "2"]
    first, second, third = samples
    assert (first.text, first.response) == ("What is this?", "A red square.")
    assert first.images == (path.parent / "imgs" / "a.png",)
    assert Image.open(first.images[0]).size == (40, 30)
    assert (second.text, second.response, second.gold("request"), second.gold("response")) == (
        None,
        None,
        "harmful",
        None,
    )
    assert second.item()["image"] == str(path.parent / "imgs" / "b.jpg")
    assert third.images == () and third.gold("response") == "harmful"
    data = load_benchmark(path)  # auto-detected as VL, both tasks of SPA-VL-Eval
    assert data.name == "SPA-VL-Eval" and [s.task for s in data.specs] == ["request", "response"]
    assert data.modality == "text+image"
    assert load_samples(path) == samples


def test_vl_benchmark_errors(tmp_path: Path):
    root = tmp_path / "bad"
    root.mkdir()
    missing = root / "m.json"
    missing.write_text(json.dumps([{"input": vl_user_text("x", None, has_image=True), "images": ["nope.png"]}]))
    with pytest.raises(InvalidInputError, match="image file not found"):
        load_vl_benchmark(missing)
    _image(root / "a.png", "green")
    mismatch = root / "mm.json"
    mismatch.write_text(json.dumps([{"input": vl_user_text("x", None, has_image=False), "images": ["a.png"]}]))
    with pytest.raises(InvalidInputError, match=r"0 <image> marker\(s\) but the record has 1 image"):
        load_vl_benchmark(mismatch)
    notalist = root / "n.json"
    notalist.write_text(json.dumps({"input": "x"}))
    with pytest.raises(InvalidInputError, match="JSON list"):
        load_vl_benchmark(notalist)


def test_our_jsonl(tmp_path: Path):
    _image(tmp_path / "img.png", "white")
    path = tmp_path / "mine.jsonl"
    lines = [
        {"id": "a", "text": "How do I bake bread?", "label": "unharmful"},
        {
            "text": "Rate this",
            "image": "img.png",
            "response": "Nice",
            "request_label": "unharmful",
            "response_label": "harmful",
        },
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    samples = load_jsonl_samples(path)
    assert [s.id for s in samples] == ["a", "1"]
    assert samples[1].images == (tmp_path / "img.png",)
    assert (samples[1].gold("request"), samples[1].gold("response"), samples[1].gold("refusal")) == (
        "unharmful",
        "harmful",
        None,
    )
    with pytest.raises(InvalidInputError, match="not a known benchmark"):
        load_benchmark(path)
    data = load_benchmark(path, task="request")
    assert data.specs[0].name == "mine" and not data.specs[0].in_vl_paper
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"response": "x"}) + "\n")
    with pytest.raises(InvalidInputError, match="give 'text', an image, or both"):
        load_jsonl_samples(bad)


def test_predictions_skip_a_cut_off_last_line_but_not_a_broken_middle(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    good = json.dumps(
        {"prompt": "p", "label": "harmful", "predict": "Request: harmful", "id": 3, "usage": {"completion_tokens": 4}}
    )
    path.write_text(good + "\n" + '{"prompt": "p", "lab')
    rows = load_predictions(path)
    assert len(rows) == 1 and rows[0].id == "3" and rows[0].completion_tokens == 4
    path.write_text('{"prompt": \n' + good + "\n")
    with pytest.raises(InvalidInputError, match="line 1 is not valid JSON"):
        load_predictions(path)
    path.write_text(json.dumps({"prompt": "p", "label": "x"}) + "\n")
    with pytest.raises(InvalidInputError, match="'predict' must be a string"):
        load_predictions(path)


def test_discover_predictions_maps_folder_names(tmp_path: Path, predictions_1b: Path):
    files, unknown = discover_predictions(predictions_1b)
    assert unknown == []
    by_folder = {f.folder: [s.key for s in f.specs] for f in files}
    assert by_folder["XSTestReponseHarmful"] == ["XSTestResponseHarmful/response"]
    assert len(by_folder) == 6
    (tmp_path / "predictions" / "MyOwnSet").mkdir(parents=True)
    (tmp_path / "predictions" / "MyOwnSet" / "generated_predictions.jsonl").write_text("")
    files, unknown = discover_predictions(tmp_path)  # finds the predictions/ subfolder of a run
    assert files == [] and unknown == ["MyOwnSet"]
    with pytest.raises(InvalidInputError, match=r"no <Benchmark>/generated_predictions\.jsonl"):
        discover_predictions(tmp_path / "predictions" / "MyOwnSet")
