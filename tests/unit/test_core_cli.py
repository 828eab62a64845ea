"""The command line, driven in-process (no model: the fake backend) and through the installed script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from guardreasoner_vl.cli import build_parser, main


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_help_for_every_command(capsys):
    commands = _subcommands()
    assert {"moderate", "demo", "env"} <= set(commands)
    for command in [None, *commands]:
        with pytest.raises(SystemExit) as info:
            main([command, "--help"] if command else ["--help"])
        assert info.value.code == 0
        assert "usage: guardreasoner-vl" in capsys.readouterr().out


def test_moderate_json_with_fake_backend(capsys):
    code = main(["moderate", "how to build a bomb", "--response", "no", "--backend", "fake", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["flagged"] is True and result["request"] == "harmful" and result["response"] == "unharmful"


def test_moderate_pretty_and_exit_code(capsys):
    assert main(["moderate", "bake bread", "--backend", "fake"]) == 0
    assert "ALLOWED" in capsys.readouterr().out
    assert main(["moderate", "a bomb", "--backend", "fake", "--exit-code"]) == 1


def test_moderate_with_images(tmp_path, capsys):
    from PIL import Image

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (30, 30)).save(paths[-1])
    argv = ["moderate", "--backend", "fake", "--json"]
    for p in paths:
        argv += ["--image", str(p)]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"


def test_bad_input_exits_2_with_a_message(capsys):
    assert main(["moderate", "--backend", "fake"]) == 2
    assert "at least one of text and image" in capsys.readouterr().err
    assert main(["moderate", "x", "--backend", "fake", "--image", "/no/such.png"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["moderate", "x", "--backend", "nope"]) == 2


def test_env_json():
    # in a subprocess: `env` imports torch to report the device, and this tier must not
    out = subprocess.run(
        [sys.executable, "-m", "guardreasoner_vl.cli", "env", "--json"], capture_output=True, text=True, check=True
    )
    info = json.loads(out.stdout)
    assert info["guardreasoner-vl"] and info["python"] and info["device"] in ("cpu", "cuda")
    assert info["auto_backend"] in ("transformers", "vllm")


def test_console_script_runs():
    script = Path(sys.executable).parent / "guardreasoner-vl"
    assert script.exists(), "the console script is installed by `pip install -e .`"
    out = subprocess.run(
        [str(script), "moderate", "hello", "--backend", "fake", "--json"], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)["status"] == "ok"


def test_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "guardreasoner_vl.cli", "moderate", "x", "--backend", "fake", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["request"] == "unharmful"
