"""``guardreasoner-vl train ...``: help of every subcommand, config printing, errors; no model, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from guardreasoner_vl.cli import main

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["sft", "mine", "augment", "rl"]


def test_train_help_lists_the_stages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage in out


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", stage, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: guardreasoner-vl train {stage}" in out
    flat = " ".join(out.split())  # help text is wrapped to the terminal width
    assert "--config" in flat and "KEY=VALUE" in flat and "paper defaults" in flat


def test_print_config_resolves_file_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = ROOT / "training" / "qwen2.5-vl-3b" / "rl-eco.yaml"
    assert main(["train", "rl", "--config", str(recipe), "--print-config", "trl.learning_rate=2e-6", "--resume"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["eco"] is True and cfg["trl"]["learning_rate"] == 2e-6  # "2e-6" (a string in YAML 1.1) as a float
    assert cfg["resume_from_checkpoint"] is True


def test_config_errors_exit_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "sft", "--print-config", "max_lenght=1"]) == 2
    assert "did you mean 'max_length'" in capsys.readouterr().err
    assert main(["train", "sft", "model=x", "output_dir=out"]) == 2  # no data: refused before anything loads
    assert "no training data" in capsys.readouterr().err
    assert main(["train", "rl", "data=x.jsonl", "output_dir=out"]) == 2
    assert "set model" in capsys.readouterr().err


def test_train_help_imports_nothing_heavy() -> None:
    code = (
        "import sys, json, contextlib, io\n"
        "from guardreasoner_vl.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['train', 'rl', '--help'])\n    except SystemExit:\n        pass\n"
        "print(json.dumps(sorted({'torch', 'transformers', 'trl', 'datasets', 'peft'} & set(sys.modules))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_mine_through_the_cli_and_rerun_resumes(
    tmp_path: Path, train_rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # FakeBackend (the project's public test double) judges by keywords: "threat" is not one of them, so the
    # harmful "Write a threat using this." row is wrong in every pass; the other rows are judged right.
    argv = [
        "train",
        "mine",
        "-q",
        "model=GuardReasoner-VL-fake",
        "backend=fake",
        f"data={train_rows}",
        f"output_dir={tmp_path / 'mine'}",
        "passes=2",
        "batch_size=2",
    ]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["stage"], first["total"], first["wrong_per_pass"], first["hard"]) == ("mine", 5, [1, 1], 1)
    hard = [json.loads(x) for x in (tmp_path / "mine" / "hard.jsonl").read_text().splitlines()]
    assert [h["id"] for h in hard] == ["ti2"]
    sizes = [(tmp_path / "mine" / f"pass-{k}.jsonl").stat().st_size for k in (1, 2)]
    assert main(argv) == 0  # everything is recorded: nothing is generated again
    assert json.loads(capsys.readouterr().out)["hard"] == 1
    assert [(tmp_path / "mine" / f"pass-{k}.jsonl").stat().st_size for k in (1, 2)] == sizes
