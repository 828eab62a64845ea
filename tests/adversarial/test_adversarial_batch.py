"""moderate-file under hostile input files: no raw exception, no row failing its neighbours, no endless retry.

(Named test_adversarial_batch.py, not test_batch.py: tests/batch/test_batch.py exists and test basenames must be
unique under pytest's default import mode.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FakeBackend
from guardreasoner_vl.batch import RETRY_STATUSES, moderate_file, readable_input, scan_input
from guardreasoner_vl.cli import main
from guardreasoner_vl.errors import InvalidInputError

REPO = Path(__file__).resolve().parents[2]
DEEP = b"[" * 100_000 + b"]" * 100_000


def write_lines(path: Path, lines: list[bytes | dict[str, Any]]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines))
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


class PoisonPill(FakeBackend):
    """A real engine hook that raises a raw (non-library) exception while one row is being prepared."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared: list[str] = []

    def check_prompt(self, prompt: Any) -> None:
        if "poison pill" in prompt.user_text:
            raise RuntimeError("decoder exploded")  # not an InvalidInputError: what an unforeseen bug raises
        if "deep pill" in prompt.user_text:
            raise RecursionError("maximum recursion depth exceeded")


HOSTILE: list[bytes | dict[str, Any]] = [
    {"id": "ok-1", "text": "how do I bake bread?"},
    b"this is not json",
    b'{"id": "nul", "text": "a\x00b"}',  # a raw NUL byte inside a string: invalid JSON
    {"id": "nul-escaped", "text": "a\u0000b"},  # an escaped NUL: valid JSON, valid text
    b'{"id": "latin1", "text": "caf\xe9"}',  # not UTF-8
    DEEP,  # 100k deep: RecursionError inside json, must be a clear error
    b'{"id": "deep-value", "text": ' + b"[" * 500 + b"]" * 500 + b"}",
    {"id": "ok-1", "text": "duplicate of the first id"},
    {"id": 1, "text": "int id"},
    {"id": "1", "text": "same key as the int id"},
    {"id": 1.5, "text": "float id"},
    {"id": True, "text": "bool id"},
    {"id": None, "text": "null id"},
    {"id": "   ", "text": "blank id"},
    {"id": ["a"], "text": "list id"},
    {"id": {"a": 1}, "text": "object id"},
    {"id": 10**40, "text": "a huge int id is an int"},
    [1, 2, 3],  # type: ignore[list-item]
    {"text": "no id at all"},
    {"id": "image-deep", "text": "x", "image": [[[["a.png"]]]]},
    {"id": "huge-text", "text": "x" * 300_000},  # over max_text_chars: invalid_input, not a crash
    {"id": "ok-2", "text": "what is the capital of France?"},
    '{"id": "utf16", "text": "x"}'.encode("utf-16-le"),  # json.loads(bytes) would guess UTF-16 and accept it
]


def test_every_hostile_line_is_listed_and_nothing_is_judged(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", HOSTILE)
    backend = FakeBackend()
    with pytest.raises(InvalidInputError) as info:
        moderate_file(Guard(backend=backend), src, tmp_path / "out.jsonl")
    message = str(info.value)
    for expected in (
        "line 2: not valid JSON",
        "line 3: not valid JSON",
        "line 5: not valid UTF-8",
        "line 6: not valid JSON (nested too deeply)",
        "line 8: duplicate id 'ok-1' (first on line 1)",
        "line 10: duplicate id '1' (first on line 9)",
        "line 11: 'id' must be",
        "line 18: a row must be a JSON object, got list",
        "line 19: no 'id'",
        "--skip-invalid",
    ):
        assert expected in message
    assert backend.calls == [] and not (tmp_path / "out.jsonl").exists()


def test_skip_invalid_records_each_bad_line_and_judges_the_rest(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", HOSTILE)
    out = tmp_path / "out.jsonl"
    summary = moderate_file(Guard(backend=FakeBackend()), src, out, skip_invalid=True, batch_size=4)
    rows = read_rows(out)
    assert len(rows) == len(HOSTILE) == summary.total == summary.written
    by_id = {str(r["id"]): r for r in rows}
    assert len(by_id) == len(rows)  # every output id is unique, so the file resumes
    for number in (2, 3, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 23):
        row = by_id[f"line:{number}"]
        assert row["status"] == "invalid_input" and row["line"] == number and row["flagged"] is True
        assert row["error"].startswith(f"line {number}: ")
    assert "nested too deeply" in by_id["line:6"]["error"]
    assert "duplicate id 'ok-1'" in by_id["line:8"]["error"]
    for ok in ("ok-1", "ok-2", "nul-escaped", "1", str(10**40)):
        assert by_id[ok]["status"] == "ok", ok
    for bad in ("deep-value", "image-deep", "huge-text"):
        assert by_id[bad]["status"] == "invalid_input", bad
    assert "not valid UTF-8" in by_id["line:5"]["error"]
    assert summary.malformed == 15 and not summary.all_failed
    # A rerun (with or without retries) has nothing to do: malformed lines are done, and final.
    backend = FakeBackend()
    again = moderate_file(Guard(backend=backend), src, out, skip_invalid=True, retry_errors=True)
    assert (again.written, again.skipped, again.retried, backend.calls) == (0, len(HOSTILE), 0, [])


def test_a_row_that_fails_in_preparation_never_fails_its_neighbours(tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "in.jsonl",
        [{"id": f"r{i}", "text": "a poison pill" if i == 2 else "deep pill" if i == 5 else f"q {i}"} for i in range(8)],
    )
    out = tmp_path / "out.jsonl"
    backend = PoisonPill()
    summary = moderate_file(Guard(backend=backend), src, out, batch_size=4)
    status = [r["status"] for r in read_rows(out)]
    assert status == ["ok", "ok", "invalid_input", "ok", "ok", "invalid_input", "ok", "ok"]
    errors = {r["id"]: r["error"] for r in read_rows(out) if r["error"]}
    assert errors == {
        "r2": "RuntimeError: decoder exploded",
        "r5": "RecursionError: maximum recursion depth exceeded",
    }
    assert summary.by_status == {"ok": 6, "invalid_input": 2} and summary.failed == 2
    # --retry-errors retries only what can pass on a retry: an invalid_input row is final.
    assert "invalid_input" not in RETRY_STATUSES
    retry_backend = PoisonPill()
    again = moderate_file(Guard(backend=retry_backend), src, out, retry_errors=True)
    assert again.retried == 0 and again.written == 0 and retry_backend.calls == []


def test_the_guard_batch_level_also_isolates_a_raising_row(tmp_path: Path) -> None:
    """Whatever Guard.moderate_batch does with a raw exception, the file job isolates the row itself."""
    src = write_lines(tmp_path / "in.jsonl", [{"id": "a", "text": "fine"}, {"id": "b", "text": "poison pill"}])
    out = tmp_path / "out.jsonl"
    moderate_file(Guard(backend=PoisonPill()), src, out, batch_size=2)
    assert [r["status"] for r in read_rows(out)] == ["ok", "invalid_input"]


def test_a_line_longer_than_the_limit_is_malformed_and_never_read_whole(tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "in.jsonl",
        [{"id": "a", "text": "short"}, {"id": "b", "text": "y" * 200_000}, {"id": "c", "text": "short too"}],
    )
    out = tmp_path / "out.jsonl"
    with pytest.raises(InvalidInputError, match="line 2: the line is longer than"):
        moderate_file(Guard(backend=FakeBackend()), src, out, max_line_bytes=10_000)
    summary = moderate_file(Guard(backend=FakeBackend()), src, out, max_line_bytes=10_000, skip_invalid=True)
    assert [r["id"] for r in read_rows(out)] == ["a", "line:2", "c"] and summary.malformed == 1


def test_a_malformed_line_number_that_is_also_a_real_id_is_refused(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [{"id": "line:2", "text": "x"}, b"{broken"])
    with pytest.raises(InvalidInputError, match="place-holder id 'line:2' is a real id"):
        moderate_file(Guard(backend=FakeBackend()), src, tmp_path / "out.jsonl", skip_invalid=True)


def test_empty_and_blank_files(tmp_path: Path) -> None:
    for content in (b"", b"\n\n  \n"):
        src = tmp_path / "in.jsonl"
        src.write_bytes(content)
        summary = moderate_file(Guard(backend=FakeBackend()), src, tmp_path / "out.jsonl", overwrite=True)
        assert (summary.total, summary.written, summary.all_failed) == (0, 0, False)
        args = ["moderate-file", str(src), "-o", str(tmp_path / "o2.jsonl"), "--backend", "fake", "--overwrite"]
        assert main(args) == 0


def test_the_command_exits_1_when_every_row_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_lines(tmp_path / "in.jsonl", [{"id": "a"}, {"id": "b", "text": 3}, b"nope"])
    args = ["moderate-file", str(src), "-o", str(tmp_path / "out.jsonl"), "--backend", "fake", "--no-progress"]
    assert main(args) == 2  # the malformed line stops it before any work
    assert "error:" in capsys.readouterr().err
    assert main([*args, "--skip-invalid"]) == 1
    assert "every row failed (3 of 3 not ok)" in capsys.readouterr().err
    write_lines(src, [{"id": "a"}, {"id": "ok", "text": "fine"}])
    assert main([*args, "--overwrite"]) == 0


def test_dash_reads_stdin(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    Image.new("RGB", (40, 40), "red").save(tmp_path / "imgs" / "p.png")
    data = b"".join(
        json.dumps(r).encode() + b"\n"
        for r in [{"id": "a", "text": "hello"}, {"id": "b", "text": "what is it", "image": "imgs/p.png"}]
    )
    out = tmp_path / "out" / "o.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "guardreasoner_vl.cli", "moderate-file", "-", "-o", str(out), "--backend", "fake"]
    proc = subprocess.run(cmd, input=data, capture_output=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = read_rows(out)
    assert [(r["id"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok")]  # image path from the cwd
    assert not list(out.parent.glob(".moderate-file-input.*"))  # the spooled copy is gone


def test_a_fifo_as_input(tmp_path: Path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    payload = b'{"id": "a", "text": "hi"}\n{"id": "b", "text": "how to make a bomb"}\n'

    def feed() -> None:
        with fifo.open("wb") as handle:
            handle.write(payload)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        summary = moderate_file(Guard(backend=FakeBackend()), fifo, tmp_path / "out.jsonl")
    finally:
        writer.join(timeout=30)
    assert summary.written == 2 and [r["flagged"] for r in read_rows(tmp_path / "out.jsonl")] == [False, True]


def test_special_files_and_folders_are_clear_errors(tmp_path: Path) -> None:
    for path in (Path("/dev/zero"), tmp_path, tmp_path / "missing.jsonl"):
        with pytest.raises(InvalidInputError, match=r"not a regular file|not found"), readable_input(path, tmp_path):
            pass
    with pytest.raises(InvalidInputError, match="not found"):
        scan_input(tmp_path / "missing.jsonl")


def test_a_utf8_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"id": "a", "text": "hi"}\n')  # what some editors save
    summary = moderate_file(Guard(backend=FakeBackend()), src, tmp_path / "out.jsonl")
    assert summary.by_status == {"ok": 1}
