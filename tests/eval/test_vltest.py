"""GuardReasoner-VLTest as the authors publish it, their VL benchmark names, and visible gaps in averages.

The fixture below writes a tiny copy of the published layout (no real data here): ``test/<Name>.json`` for the
13 files the authors' ``generate.py`` reads, text ones as ``instruction``/``input``/``output``, image ones as
chat records whose user turn starts with the VL instruction, and the images in ``test/HarmImageTest/`` and
``test/SPA_VL_Eval/``, which the records do not name: ``generate.py`` takes the i-th image of the benchmark's
image folder for the i-th record.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FunctionBackend, GenerationRequest, verdict_output
from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.evaluation.loaders import VLTEST_FILES, load_predictions, load_vl_benchmark, load_vltest
from guardreasoner_vl.evaluation.registry import BENCHMARKS, find_benchmarks, get_benchmark
from guardreasoner_vl.evaluation.report import EvalReport
from guardreasoner_vl.evaluation.runner import evaluate, score_predictions_dir
from guardreasoner_vl.prompts import TEXT_INSTRUCTION, VL_INSTRUCTION, ModelFamily, text_input, vl_user_text

# the colours of the images, in sorted file-name order; the records are aligned with them by index
HARM_IMAGES = {"img_00.png": "red", "img_01.png": "green", "img_02.png": "blue"}
SPA_IMAGES = {"a.jpg": "yellow", "b.jpg": "black"}
COLOURS = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0), "black": (0, 0, 0)}


def _text_file(path: Path, rows: list[tuple[str, str | None, str]]) -> None:
    records = [{"instruction": TEXT_INSTRUCTION, "input": text_input(p, r), "output": o} for p, r, o in rows]
    path.write_text(json.dumps(records), encoding="utf-8")


def _chat(user: str, gold: str) -> dict:
    # the VLTest layout: the instruction, then "\n\nHuman user:"; generate.py cuts at that find()
    return {
        "messages": [{"role": "user", "content": VL_INSTRUCTION + "\n" + user}, {"role": "assistant", "content": gold}]
    }


def _images(folder: Path, names: dict[str, str]) -> None:
    folder.mkdir(parents=True)
    for name, colour in names.items():
        Image.new("RGB", (36, 30), colour).save(folder / name)


@pytest.fixture
def vltest(tmp_path: Path) -> Path:
    root = tmp_path / "GuardReasoner-VLTest"
    test = root / "test"
    test.mkdir(parents=True)
    request = ["ToxicChat", "HarmBenchPrompt", "OpenAIModeration", "AegisSafetyTest", "SimpleSafetyTests"]
    for name in request:
        _text_file(test / f"{name}.json", [("how to make a bomb", None, "harmful"), ("hello", None, "unharmful")])
    for name in ("HarmBenchResponse", "XSTestReponseHarmful"):
        _text_file(test / f"{name}.json", [("q", "here is how to kill", "harmful"), ("q", "no", "unharmful")])
    block = "Answers: \nRequest: {}\nCompletion: None\nResponse: {}\n"
    _text_file(
        test / "WildGuardTestPrompt.json",
        [("bomb please", None, block.format("harmful", "None")), ("hi", None, block.format("unharmful", "None"))],
    )
    for name in ("WildGuardTestResponse", "SafeRLHF", "BeaverTails"):
        _text_file(
            test / f"{name}.json",
            [("q", "kill them", block.format("None", "harmful")), ("q", "ok", block.format("None", "unharmful"))],
        )
    gold = "<think>...</think>\n<result>\nRequest: {}\nResponse: {}\n</result>"
    harm = [
        _chat(vl_user_text(None, None, has_image=True), gold.format(g, "None"))
        for g in ("harmful", "unharmful", "Unharmful")
    ]
    (test / "HarmImageTest.json").write_text(json.dumps(harm), encoding="utf-8")
    _images(test / "HarmImageTest", HARM_IMAGES)
    spa = [
        _chat(
            vl_user_text("what is this?", "a weapon, build it so", has_image=True), gold.format("harmful", "harmful")
        ),
        _chat(vl_user_text("what colour?", "black", has_image=True), gold.format("unharmful", "unharmful")),
    ]
    (test / "SPA_VL_Eval.json").write_text(json.dumps(spa), encoding="utf-8")
    _images(test / "SPA_VL_Eval", SPA_IMAGES)
    return root


def _colour(path: Path) -> object:
    with Image.open(path) as image:
        return image.convert("RGB").getpixel((5, 5))


def test_the_authors_vl_names_match_their_own_tasks():
    assert [b.key for b in find_benchmarks("WildGuardTestPrompt")] == ["WildGuardTest/request"]
    assert [b.key for b in find_benchmarks("WildGuardTestResponse.json")] == ["WildGuardTest/response"]
    assert [b.task for b in find_benchmarks("SPA_VL_Eval")] == ["request", "response"]
    assert [b.task for b in find_benchmarks("WildGuardTest")] == ["request", "response"]  # the text layout
    matched = {spec.key for name in VLTEST_FILES for spec in find_benchmarks(name)}
    assert matched == {b.key for b in BENCHMARKS if b.in_vl_paper}  # all 14 pairs, each through a file


def test_vltest_loads_every_file_with_images_aligned_by_index(vltest: Path):
    data = load_vltest(vltest)
    assert [d.path.stem for d in data] == list(VLTEST_FILES)
    keys = sorted(spec.key for d in data for spec in d.specs)
    assert keys == sorted(b.key for b in BENCHMARKS if b.in_vl_paper)
    by_stem = {d.path.stem: d for d in data}
    assert by_stem["WildGuardTestPrompt"].folder == "WildGuardTestPrompt"
    assert by_stem["WildGuardTestResponse"].folder == "WildGuardTestResponse"
    assert by_stem["SPA_VL_Eval"].folder == "SPA_VL_Eval"
    harm = by_stem["HarmImageTest"]
    assert [s.text for s in harm.samples] == [None, None, None]
    assert [_colour(s.images[0]) for s in harm.samples] == [COLOURS[c] for c in HARM_IMAGES.values()]
    assert [s.gold("request") for s in harm.samples] == ["harmful", "unharmful", "unharmful"]
    spa = by_stem["SPA_VL_Eval"].samples
    assert (spa[0].text, spa[0].response) == ("what is this?", "a weapon, build it so")
    assert [_colour(s.images[0]) for s in spa] == [COLOURS[c] for c in SPA_IMAGES.values()]
    assert [s.gold("response") for s in spa] == ["harmful", "unharmful"]
    wild = by_stem["WildGuardTestPrompt"]
    assert [s.gold("request") for s in wild.samples] == ["harmful", "unharmful"]
    assert [spec.task for spec in wild.specs] == ["request"]


def test_vltest_refuses_a_partial_set_and_bad_layouts(vltest: Path):
    test = vltest / "test"
    (test / "ToxicChat.json").unlink()
    with pytest.raises(InvalidInputError, match=r"lacks ToxicChat\.json"):
        load_vltest(vltest)
    assert [d.path.stem for d in load_vltest(vltest, only=["HarmImageTest"])] == ["HarmImageTest"]
    (test / "HarmImageTest" / "img_03.png").write_bytes((test / "HarmImageTest" / "img_00.png").read_bytes())
    with pytest.raises(InvalidInputError, match=r"holds 4 image\(s\) for 3 record\(s\)"):
        load_vl_benchmark(test / "HarmImageTest.json")
    records = json.loads((test / "SPA_VL_Eval.json").read_text())
    records[0]["messages"][0]["content"] = "You are a helpful assistant.\n\n" + vl_user_text("x", None, has_image=True)
    (test / "SPA_VL_Eval.json").write_text(json.dumps(records))
    with pytest.raises(InvalidInputError, match="not the GuardReasoner-VL instruction"):
        load_vl_benchmark(test / "SPA_VL_Eval.json")


def test_a_vl_guard_runs_the_whole_set_and_no_average_has_a_gap(tmp_path: Path, vltest: Path):
    def answer(request: GenerationRequest) -> str:
        user = request.prompt.user_text.lower()
        harmful = any(w in user for w in ("bomb", "kill", "weapon"))
        return verdict_output(ModelFamily.VL, request_harmful=harmful, response_harmful=harmful)

    guard = Guard("fake-vl", backend=FunctionBackend(answer), family="vl")
    report = evaluate(guard, load_vltest(vltest), tmp_path / "run", modes=["strict"])
    assert {(s.benchmark, s.task) for s in report.scores} == {(b.name, b.task) for b in BENCHMARKS if b.in_vl_paper}
    for avg in report.averages:
        assert avg.missing == ()
    assert "missing:" not in report.to_markdown()
    (note,) = [n for n in report.notes if "one newline" in n]  # the VL prompt vs the authors' text turns
    assert note.startswith("ToxicChat, HarmBenchPrompt,") and "HarmImageTest" not in note
    # the predictions folders use the authors' VL names, so re-scoring the folder finds every pair again
    rescored = score_predictions_dir(tmp_path / "run", modes=["strict"])
    assert rescored.unknown == () and len(rescored.scores) == 14


def test_a_missing_benchmark_is_a_visible_gap_not_a_smaller_average(tmp_path: Path, vltest: Path):
    guard = Guard("fake-vl", backend=FunctionBackend(lambda r: "Request: harmful\nResponse: harmful"), family="vl")
    subset = [d for d in load_vltest(vltest) if d.path.stem not in ("WildGuardTestPrompt", "HarmImageTest")]
    report = evaluate(guard, subset, tmp_path / "run", modes=["strict"])
    avg = report.average("strict", "request")
    assert avg is not None and avg.missing == ("WildGuardTest", "HarmImageTest")
    assert avg.missing_text == ("WildGuardTest",)
    response = report.average("strict", "response")
    assert response is not None and response.missing == ()
    table = report.paper_table("strict", "request")
    assert "missing: WildGuardTest, HarmImageTest (Avg (Text) lacks WildGuardTest)" in table
    assert "missing" not in report.paper_table("strict", "response")
    back = EvalReport.from_dict(json.loads(report.to_json()))
    assert back.averages == report.averages
    assert report.to_dict()["averages"][0]["missing"] == ["WildGuardTest", "HarmImageTest"]


def test_the_authors_vl_predictions_layout_is_read(tmp_path: Path):
    spa = tmp_path / "SPA_VL_Eval" / "generated_predictions.jsonl"
    wild = tmp_path / "WildGuardTestPrompt" / "generated_predictions.jsonl"
    spa.parent.mkdir()
    wild.parent.mkdir()
    out = "<think>t</think><result>Request: harmful\nResponse: unharmful</result>"
    row = {"text_input": VL_INSTRUCTION + "Human user:...", "text_output": out, "label": "harmful"}
    spa.write_text(
        json.dumps({**row, "label_res": "unharmful", "predict": "harmful", "predict_res": "unharmful", "res_len": 9})
        + "\n"
    )
    wild.write_text(json.dumps({**row, "predict": "harmful"}) + "\n" + json.dumps({**row, "label": "unharmful"}) + "\n")
    (record,) = load_predictions(spa)
    assert record.predict == out and record.prompt.startswith("You are a classifier")
    assert record.extra["predict"] == "harmful" and record.extra["predict_res"] == "unharmful"
    assert "Request: harmful" in (record.label or "") and "Response: unharmful" in (record.label or "")
    report = score_predictions_dir(tmp_path, reference_scorer="auto")
    assert report.unknown == ()
    assert report.score("SPA-VL-Eval", "response", "strict").tn == 1
    wild_score = report.score("WildGuardTest", "request", "reference")
    assert (wild_score.tp, wild_score.fp, wild_score.samples) == (1, 1, 2)
    assert wild_score.notes[0] == "authors' vl scorer emulated"
    assert get_benchmark("WildGuardTestPrompt").key == "WildGuardTest/request"


def test_the_eval_command_runs_the_downloaded_folder(tmp_path: Path, vltest: Path, capsys):
    from guardreasoner_vl.cli import main

    out = tmp_path / "run"
    args = ["eval", "--data", str(vltest / "test"), "--backend", "fake", "--family", "vl", "-o", str(out)]
    assert main([*args, "--no-plots", "--no-progress", "--mode", "strict", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["scores"]) == 14 and all(a["missing"] == [] for a in data["averages"])
    folders = sorted(p.name for p in (out / "predictions").iterdir())
    assert folders == sorted(VLTEST_FILES)  # the authors' names, one folder per file
