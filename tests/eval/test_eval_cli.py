"""The ``guardreasoner-vl eval`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from guardreasoner_vl.cli import main


def test_eval_rescores_a_predictions_folder(tmp_path: Path, predictions_1b: Path, readme_f1, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--predictions", str(predictions_1b), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    for _, f1 in readme_f1.values():
        assert f"{f1:.2f}" in printed
    for name in (
        "report.md",
        "report.json",
        "plots/f1_strict.png",
        "plots/confusion_reference.png",
        "plots/output_length.png",
    ):
        assert (out / name).is_file(), name
    data = json.loads((out / "report.json").read_text())
    got = {(s["benchmark"], s["mode"]): round(s["f1"], 2) for s in data["scores"]}
    assert got[("XSTestResponseHarmful", "reference")] == readme_f1["XSTestReponseHarmful"][1]


def test_eval_options_mode_only_json_and_compare(tmp_path: Path, predictions_1b: Path, capsys):
    out = tmp_path / "ref"
    args = [
        "eval",
        "--predictions",
        str(predictions_1b),
        "-o",
        str(out),
        "--mode",
        "reference",
        "--only",
        "HarmBenchPrompt",
        "--no-plots",
        "--json",
    ]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(s["benchmark"], s["mode"]) for s in data["scores"]] == [("HarmBenchPrompt", "reference")]
    assert not (out / "plots").exists()
    cmp = tmp_path / "cmp"
    assert main(["eval", "--compare", str(out), str(predictions_1b), "-o", str(cmp)]) == 0
    text = (cmp / "compare.md").read_text()
    assert "Δ (B − A)" in text and (cmp / "plots" / "compare_reference.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval"], "exactly one of --data, --predictions and --compare"),
        (["eval", "--predictions", "x", "--data", "y"], "exactly one of"),
        (["eval", "--predictions", "/nonexistent/dir"], "is not a folder"),
        (["eval", "--data", "/nonexistent.json", "--backend", "fake"], "no such file or folder"),
        (["eval", "--predictions", ".", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_eval_errors_are_clear(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_eval_runs_a_guard_with_the_fake_backend(tmp_path: Path, text_data: Path, capsys):
    out = tmp_path / "fake"
    args = [
        "eval",
        "--data",
        str(text_data / "benchmark"),
        "--only",
        "SimpleSafetyTests",
        "--only",
        "AegisSafetyTest",
        "--limit",
        "5",
        "--backend",
        "fake",
        "--family",
        "text",
        "--model",
        "fake",
        "-o",
        str(out),
        "--no-plots",
    ]
    assert main(args) == 0
    data = json.loads((out / "report.json").read_text())
    assert {s["benchmark"] for s in data["scores"]} == {"SimpleSafetyTests", "AegisSafetyTest"}
    assert all(s["samples"] == 5 for s in data["scores"])
    assert (out / "predictions" / "AegisSafetyTest" / "generated_predictions.jsonl").is_file()
    # a second call resumes: nothing new to run, same report
    assert main([*args, "--no-progress"]) == 0
    assert json.loads((out / "report.json").read_text())["scores"] == data["scores"]


def test_eval_custom_file_needs_a_task(tmp_path: Path, capsys):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"text": "how to build a bomb", "label": "harmful"}) + "\n")
    base = [
        "eval",
        "--data",
        str(path),
        "--backend",
        "fake",
        "--family",
        "text",
        "--model",
        "fake",
        "-o",
        str(tmp_path / "o"),
        "--no-plots",
        "--no-progress",
    ]
    assert main(base) == 2
    assert "pass its name" in capsys.readouterr().err
    assert main([*base, "--task", "request"]) == 0
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["scores"][0]["benchmark"] == "mine" and data["scores"][0]["f1"] == 100.0


@pytest.mark.slow
def test_eval_end_to_end_with_the_tiny_model(tmp_path: Path, tiny_text_path: Path, text_data: Path, capsys):
    """A real (tiny, random) Llama through the transformers engine: outputs are gibberish, so strict mode
    must report parse failures, and every report file must be written."""
    out = tmp_path / "tiny"
    args = [
        "eval",
        "--data",
        str(text_data / "benchmark"),
        "--only",
        "SimpleSafetyTests",
        "--only",
        "HarmBenchResponse",
        "--limit",
        "3",
        "--model",
        str(tiny_text_path),
        "--backend",
        "transformers",
        "--device",
        "cpu",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "3",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    for name in (
        "report.md",
        "report.json",
        "plots/f1_strict.png",
        "plots/f1_reference.png",
        "plots/confusion_strict.png",
        "plots/output_length.png",
    ):
        assert (out / name).is_file(), name
    for png in (out / "plots").glob("*.png"):
        with Image.open(png) as image:
            image.verify()
    data = json.loads((out / "report.json").read_text())
    strict = [s for s in data["scores"] if s["mode"] == "strict"]
    assert {s["benchmark"] for s in strict} == {"SimpleSafetyTests", "HarmBenchResponse"}
    rows = [
        json.loads(x)
        for x in (out / "predictions" / "SimpleSafetyTests" / "generated_predictions.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 3 and all(r["model"] == str(tiny_text_path) for r in rows)
    failures = sum(r["status"] == "parse_error" for r in rows)
    assert failures > 0  # random weights cannot write "Request: harmful" in 6 tokens
    sst = next(s for s in strict if s["benchmark"] == "SimpleSafetyTests")
    assert sst["parse_failures"] == failures and sst["failed_positive"] == failures
    assert 1 <= sst["mean_output_tokens"] <= 6  # token counts from GuardResult.usage
    assert data["output_lengths"]["SimpleSafetyTests"]["unit"] == "tokens"
    assert "↳ parse failures" in (out / "report.md").read_text()
