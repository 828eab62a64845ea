"""First contact (issue 9.8): no network, wrong paths, typos; the CLI's conventions, the same for every verb.

(Named ``test_hostile_cli.py``: pytest's default import mode needs unique module basenames.)
"""

from __future__ import annotations

import io
import json
import re
import shlex
import time
from pathlib import Path

import pytest

from guardreasoner_vl import __version__
from guardreasoner_vl.cli import build_parser, main
from guardreasoner_vl.errors import ModelLoadError
from guardreasoner_vl.hub import resolve_checkpoint

ROOT = Path(__file__).resolve().parents[2]
WHAT_TO_DO = ("local checkpoint", "HF_HUB_OFFLINE=1", "guardreasoner-vl demo", 'backend="fake"')


# -- resolve_checkpoint: one clear message, at once -----------------------------------------------------------


def test_a_missing_local_path_says_so(tmp_path: Path) -> None:
    for missing in (tmp_path / "ckpt", str(tmp_path / "ckpt"), "./runs/sft/final", "~/nowhere/ckpt", "a/b/c"):
        with pytest.raises(ModelLoadError, match="checkpoint directory not found") as info:
            resolve_checkpoint(missing)
        assert "Repo id" not in str(info.value) and all(hint in str(info.value) for hint in WHAT_TO_DO)


def test_a_directory_or_file_that_is_not_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_checkpoint(tmp_path / "weights.bin")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_checkpoint(tmp_path) == str(tmp_path)


def test_an_uncached_hub_id_offline_fails_at_once_with_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        resolve_checkpoint("someone/GuardReasoner-VL-404")
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message and all(hint in message for hint in WHAT_TO_DO)


def test_an_unreachable_hub_fails_fast_without_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens, refused at once
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="cannot be reached") as info:
        resolve_checkpoint("someone/GuardReasoner-VL-404")
    assert time.monotonic() - start < 5
    assert all(hint in str(info.value) for hint in WHAT_TO_DO)


def test_an_invalid_id_is_not_sent_to_the_hub() -> None:
    with pytest.raises(ModelLoadError, match="not a Hugging Face Hub id"):
        resolve_checkpoint("not an id!")


# -- the CLI: error lines, exit 2, inputs before models --------------------------------------------------------


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_missing_image_is_reported_before_any_model_loads(capsys: pytest.CaptureFixture[str]) -> None:
    # The model id is not cached and the Hub is off: had the model been loaded first, its error would show.
    code, _, err = _run(["moderate", "hi", "--image", "/no/such/photo.jpg", "--model", "someone/uncached"], capsys)
    assert code == 2 and err.startswith("error: ") and "image file not found" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["moderate", "hi", "--backend", "fake", "--backend-option", "outptus=[]"],
            "unknown --backend-option 'outptus'",
        ),
        (["moderate", "hi", "--backend", "fake", "--backend-option", "novalue"], "KEY=VALUE"),
        (["moderate", "hi", "--backend", "warp-drive"], "unknown backend 'warp-drive'"),
        (["moderate", "", "--backend", "fake"], "text is empty"),
        (["moderate", "hi", "--response", "  ", "--backend", "fake"], "response is empty"),
        (["moderate", "hi", "--model", "./no/checkpoint/here"], "checkpoint directory not found"),
        (
            ["moderate", "hi", "--backend", "fake", "--backend-option", 'outputs=["?"]', "--on-parse-error", "raise"],
            "could not read the guard's verdicts",
        ),
        (["serve", "--backend", "fake", "--on-parse-error", "raise"], "does not apply to serve"),
        (["serve", "--backend", "fake", "--max-batch-size", "0"], "max_batch_size must be at least 1"),
        (["serve", "--backend", "fake", "--max-memory-bytes", "10"], "max_memory_bytes"),
    ],
)
def test_bad_input_or_options_print_one_error_line_and_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_backend_option_typo_lists_what_the_engine_takes(capsys: pytest.CaptureFixture[str]) -> None:
    _, _, err = _run(["moderate", "hi", "--backend", "fake", "--backend-option", "outptus=[]"], capsys)
    assert "it takes: family, harmful_keywords, outputs" in err
    code, out, _ = _run(["moderate", "hi", "--backend", "fake", "--backend-option", 'outputs=["x"]', "--json"], capsys)
    assert code == 0 and json.loads(out)["status"] == "parse_error"  # a correct option still works


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"guardreasoner-vl {__version__}"


def test_dash_reads_the_text_from_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("How do I make a bomb?\n"))
    code, out, _ = _run(["moderate", "-", "--backend", "fake", "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["flagged"] is True and result["request"] == "harmful"


def test_verbose_after_the_verb_and_latency_in_ms(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["moderate", "hello", "--backend", "fake", "-v"], capsys)
    assert code == 0 and re.search(r"tokens, \d+ ms", out), out
    for command in ("moderate", "serve", "env", "demo"):
        assert (
            build_parser().parse_args([command, "-vv"] if command != "moderate" else [command, "x", "-vv"]).verbose == 2
        )


def test_every_help_shows_the_defaults() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():  # type: ignore[union-attr]
        text = command.format_help()
        assert "-v, --verbose" in text, name
        if name in ("moderate", "serve"):
            assert "(default: 8)" in text and "(default: auto)" in text, name
    serve = sub.choices["serve"].format_help()  # type: ignore[index]
    assert "(default: 2147483648)" in serve and "(default: 10.0)" in serve


# -- the README's run command, as written ---------------------------------------------------------------------


def _readme_run_command() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    return shlex.split(blocks[1].strip())


def test_every_file_the_readme_run_command_names_exists() -> None:
    argv = _readme_run_command()
    assert argv[0] == "guardreasoner-vl"
    images = [argv[i + 1] for i, a in enumerate(argv) if a == "--image"]
    assert images and all((ROOT / image).is_file() for image in images), images


@pytest.mark.slow
def test_the_readme_run_command_offline_stops_at_once_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    code, _, err = _run([*_readme_run_command()[1:], "--backend", "transformers"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "yueliu1999/GuardReasoner-VL-3B" in err and all(hint in err for hint in WHAT_TO_DO)
    assert time.monotonic() - start < 60  # imports torch; no download attempts, no retries
