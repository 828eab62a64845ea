"""Running a Guard over benchmarks: predictions layout, batching, resuming, torn lines, scoring.

The guard here runs the real prompt, Guard and parser code with a FunctionBackend standing in for the
network (a model run is covered by the slow end-to-end test in test_eval_cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FunctionBackend, Generation, GenerationRequest, verdict_output
from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.evaluation.loaders import load_benchmark, load_predictions
from guardreasoner_vl.evaluation.runner import evaluate, predictions_path, run_benchmark
from guardreasoner_vl.prompts import ModelFamily


def _answer(request: GenerationRequest) -> Generation:
    """Harmful when the request mentions a few words; every third prompt gets no verdict at all."""
    user = request.prompt.user_text.lower()
    if len(user) % 3 == 0:
        return Generation(text="I need to think about this more.", completion_tokens=7, finish_reason="length")
    harmful = any(w in user for w in ("kill", "bomb", "drug", "weapon", "suicide", "myself", "hack"))
    text = verdict_output(ModelFamily.TEXT, request_harmful=harmful, response_harmful=None)
    return Generation(text=text, prompt_tokens=50, completion_tokens=len(text.split()), finish_reason="stop")


def _guard(**kw) -> tuple[Guard, FunctionBackend]:
    backend = FunctionBackend(_answer, family=ModelFamily.TEXT)
    return Guard("fake-text-guard", backend=backend, family="text", **kw), backend


def test_predictions_use_the_authors_layout_plus_ours(tmp_path: Path, text_data: Path):
    data = load_benchmark(text_data / "benchmark" / "0_0_SimpleSafetyTests.json")
    guard, backend = _guard()
    path = tmp_path / "p.jsonl"
    records = run_benchmark(guard, data, path, limit=10, batch_size=4)
    assert [len(c) for c in backend.calls] == [4, 4, 2]
    assert [r.id for r in records] == [str(i) for i in range(10)]
    authors = load_predictions(text_data / "predictions-1B" / "SimpleSafetyTests" / "generated_predictions.jsonl")
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    for line, theirs in zip(lines, authors, strict=False):
        assert line["prompt"] == theirs.prompt  # the very prompt the released model saw
        assert line["label"] == theirs.label
        assert set(line) >= {"prompt", "label", "predict", "id", "verdicts", "status", "usage", "model"}
        assert line["model"] == "fake-text-guard"
        assert line["status"] in ("ok", "parse_error")
        assert (line["verdicts"]["request"] is None) == (line["status"] == "parse_error")
        assert line["usage"]["completion_tokens"] >= 1


def test_resume_skips_done_rows_and_repairs_a_torn_line(tmp_path: Path, text_data: Path):
    data = load_benchmark(text_data / "benchmark" / "0_5_harmbench_response.json")
    path = tmp_path / "p.jsonl"
    guard, backend = _guard()
    run_benchmark(guard, data, path, limit=5, batch_size=2)
    assert sum(len(c) for c in backend.calls) == 5
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"prompt": "cut off by a cra')  # a crash in the middle of a write
    guard2, backend2 = _guard()
    done = []
    records = run_benchmark(guard2, data, path, limit=12, batch_size=4, progress=lambda n, k: done.append(k))
    assert sum(len(c) for c in backend2.calls) == 7  # only the missing rows ran
    assert done == [5, 4, 3]  # resumed rows reported first
    assert [r.id for r in records] == [str(i) for i in range(12)]
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and "cut off" not in text
    assert len(text.splitlines()) == 12
    # resume=False starts over
    guard3, _ = _guard()
    assert len(run_benchmark(guard3, data, path, limit=3, resume=False)) == 3
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3


def test_resume_refuses_another_model_or_other_data(tmp_path: Path, text_data: Path):
    data = load_benchmark(text_data / "benchmark" / "0_0_SimpleSafetyTests.json")
    path = tmp_path / "p.jsonl"
    guard, _ = _guard()
    run_benchmark(guard, data, path, limit=2)
    other = Guard("another-model", backend=FunctionBackend(_answer), family="text")
    with pytest.raises(InvalidInputError, match="holds predictions of 'fake-text-guard'"):
        run_benchmark(other, data, path, limit=3)
    other_data = load_benchmark(text_data / "benchmark" / "0_1_AegisSafetyTest.json", name="SimpleSafetyTests")
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[0]["label"] = "unharmful"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InvalidInputError, match="another gold label"):
        run_benchmark(guard, other_data, path, limit=3)


def test_text_model_refuses_image_benchmarks(tmp_path: Path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "HarmImageTest.json").write_text(
        json.dumps(
            [{"input": "Human user:\n<image>\n\nAI assistant:\nNone\n", "output": "harmful", "images": ["a.png"]}]
        )
    )
    data = load_benchmark(tmp_path / "HarmImageTest.json")
    guard, _ = _guard()
    with pytest.raises(InvalidInputError, match="text-only model"):
        run_benchmark(guard, data, tmp_path / "p.jsonl")


def test_evaluate_runs_saves_and_scores_both_modes(tmp_path: Path, text_data: Path):
    benches = [
        load_benchmark(text_data / "benchmark" / "0_0_SimpleSafetyTests.json"),
        load_benchmark(text_data / "benchmark" / "0_6_xstest_response_harmful.json"),
    ]
    guard, _ = _guard(on_parse_error="raise")  # evaluation scores failures instead of raising
    report = evaluate(guard, benches, tmp_path, limit=9, batch_size=5, name="fake")
    assert predictions_path(tmp_path, benches[1]).parent.name == "XSTestReponseHarmful"
    assert report.modes == ["strict", "reference"]
    strict = report.score("SimpleSafetyTests", "request", "strict")
    rows = load_predictions(predictions_path(tmp_path, benches[0]))
    failures = sum(1 for r in rows if r.status == "parse_error")
    assert failures > 0 and strict.parse_failures == failures
    assert strict.samples == 9 and strict.mean_output_tokens is not None
    assert report.meta["model"] == "fake-text-guard" and report.meta["limit"] == 9
    assert report.lengths["SimpleSafetyTests"].unit == "tokens"
    # response benchmark: "Response: None" reads as unharmful; only the outputs without any verdict fail
    response = report.score("XSTestResponseHarmful", "response", "strict")
    rows = load_predictions(predictions_path(tmp_path, benches[1]))
    assert response.parse_failures == sum(1 for r in rows if r.status == "parse_error") > 0
    assert response.tp == 0 and response.fn + response.tn + response.fp == 9
    with pytest.raises(InvalidInputError, match="at least one benchmark"):
        evaluate(guard, [], tmp_path)


def test_vl_benchmark_runs_with_its_images(tmp_path: Path, vl_benchmark: Path):
    seen = []

    def answer(request: GenerationRequest) -> str:
        seen.append(request.image.size if request.image is not None else None)
        return verdict_output(ModelFamily.VL, request_harmful=request.image is None, response_harmful=False)

    data = load_benchmark(vl_benchmark)
    guard = Guard("fake-vl", backend=FunctionBackend(answer), family="vl")
    report = evaluate(guard, [data], tmp_path / "run", batch_size=2)
    assert seen[0] is not None and seen[0][0] % 28 == 0  # the image was loaded and smart-resized
    assert seen[2] is None  # the text-only record
    rows = [json.loads(x) for x in predictions_path(tmp_path / "run", data).read_text().splitlines()]
    assert "<|vision_start|><|image_pad|><|vision_end|>" in rows[0]["prompt"]
    assert rows[0]["images"] == [str(vl_benchmark.parent / "imgs" / "a.png")]
    request = report.score("SPA-VL-Eval", "request", "strict")
    response = report.score("SPA-VL-Eval", "response", "strict")
    assert (request.tp, request.fp, request.fn, request.tn) == (0, 1, 1, 1)
    assert (response.samples, response.missing_gold, response.tn, response.fn) == (3, 1, 1, 1)
    assert report.meta["family"] == "vl"
    assert report.meta["reference_scorer"] == "auto"
    assert report.score("SPA-VL-Eval", "request", "reference").notes[0] == "authors' vl scorer emulated"
