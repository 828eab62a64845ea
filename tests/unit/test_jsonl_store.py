"""The one resumable JSONL store: torn tails of every kind, damaged files, kill -9 mid-write, lock contention."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.jsonl_store import JsonlStore, StoreCorruptError, StoreLockedError, encode_line

GOOD = b'{"id": "a", "n": 1}\n{"id": "b", "n": 2}\n'


def _ids(path: Path) -> list[str]:
    with JsonlStore(path) as store:
        return [r.data["id"] for r in store.rows()]


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (b'{"id": "c", "n"', "no newline"),  # cut inside a row
        (b'{"id": "c", "n": 3}', "no newline"),  # cut just before the newline: still torn (newline is last)
        (b"{", "no newline"),
        ('{"id": "\u00e9'.encode()[:-1], "no newline"),  # cut inside a UTF-8 sequence
        (b"\x00\x00\x00\x00", "no newline"),  # NUL fill without a newline
        (b"\x00\x00\x00\n", "a cut-off row"),  # NUL fill a crashed file system left, newline and all
        (b'{"id": "c", "n":\n', "a cut-off row"),  # the start of a row, then a newline
        (b"   ", "no newline"),  # blanks without a newline
    ],
)
def test_every_kind_of_torn_tail_is_cut_and_reported(
    tmp_path: Path, tail: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(GOOD + tail)
    with caplog.at_level(logging.WARNING), JsonlStore(path) as store:
        assert store.torn is not None
        assert (store.torn.line, store.torn.offset, store.torn.size, store.torn.reason) == (
            3,
            len(GOOD),
            len(tail),
            reason,
        )
        assert store.done_ids() == {"a", "b"}
        store.append([{"id": "c", "n": 3}])
    assert path.read_bytes() == GOOD + b'{"id": "c", "n": 3}\n'
    assert "torn last line 3" in caplog.text
    with JsonlStore(path) as again:  # nothing left to repair
        assert again.torn is None


@pytest.mark.parametrize("content", [b"", b"\n", GOOD, GOOD + b"\n\n", b'{"id": "x"}\n'])
def test_good_files_are_left_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with JsonlStore(path) as store:
        assert store.torn is None
    assert path.read_bytes() == content


def test_a_torn_tail_longer_than_the_read_chunk(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    big = encode_line({"id": "big", "text": "x" * 300_000})
    path.write_bytes(GOOD + big + big[:200_000])
    with JsonlStore(path) as store:
        assert store.torn is not None and store.torn.size == 200_000 and store.torn.line == 4
        assert store.done_ids() == {"a", "b", "big"}


def test_only_one_line_file_torn(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"id": "a"')
    with JsonlStore(path) as store:
        assert store.torn is not None and store.torn.offset == 0 and store.torn.line == 1
        assert list(store.rows()) == []
    assert path.read_bytes() == b""


@pytest.mark.parametrize(
    "bad",
    [b"this is not json\n", b"[1, 2]\n", b"\xff\xfe not utf-8\n", b"[" * 100_000 + b"\n"],
)
def test_a_damaged_line_is_an_error_not_a_silent_cut(tmp_path: Path, bad: bytes) -> None:
    # Last or not, a complete line that is not a cut-off row is someone's data: report it, never delete it.
    for content in (GOOD + bad, bad + GOOD):
        path = tmp_path / "rows.jsonl"
        path.write_bytes(content)
        with JsonlStore(path) as store:
            assert store.torn is None
            with pytest.raises(StoreCorruptError, match=r"line \d: not a JSON object"):
                list(store.rows())
        assert path.read_bytes() == content


def test_rows_keep_their_spans_and_rewrite_is_atomic_and_in_the_given_order(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    with JsonlStore(path) as store:
        store.append([{"id": i, "text": f"row {i}\u2028with a line separator"} for i in range(5)])
        rows = list(store.rows())
        assert [r.line for r in rows] == [1, 2, 3, 4, 5]
        assert len(path.read_bytes().splitlines()) == 5  # U+2028 escaped: one row, one line for every reader
        store.rewrite([rows[3], rows[1], {"id": "new"}])
        store.append([{"id": "after"}])  # appending still works after a rewrite (new inode)
    assert _ids(path) == [3, 1, "new", "after"]
    assert not list(tmp_path.glob(".rows.jsonl*"))  # no temporary or lock file left behind


def test_a_failed_rewrite_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(GOOD)

    def lines():
        yield {"id": "x"}
        raise RuntimeError("disk full")

    with JsonlStore(path) as store, pytest.raises(RuntimeError):
        store.rewrite(lines())
    assert path.read_bytes() == GOOD and not list(tmp_path.glob(".rows.jsonl.*.tmp"))


def test_stale_temporary_files_are_removed_and_fresh_empties(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(GOOD)
    stale = tmp_path / ".rows.jsonl.12345.tmp"
    stale.write_bytes(b"half a rewrite")
    with JsonlStore(path, fresh=True) as store:
        assert list(store.rows()) == []
    assert not stale.exists() and path.read_bytes() == b""


def test_append_refuses_anything_but_whole_lines(tmp_path: Path) -> None:
    with JsonlStore(tmp_path / "rows.jsonl") as store:
        with pytest.raises(ValueError, match="exactly one line"):
            store.append([b'{"id": 1}'])
        with pytest.raises(ValueError, match="exactly one line"):
            store.append([b'{"id": 1}\n{"id": 2}\n'])
        assert store.append([]) == 0


def test_done_ids_with_key_and_filter(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    with JsonlStore(path) as store:
        store.append([{"id": 1, "ok": True}, {"id": "2", "ok": False}, {"name": "x", "ok": True}])
        assert store.done_ids() == {"1", "2"}
        assert store.done_ids(where=lambda r: r["ok"]) == {"1"}
        assert store.done_ids(key=lambda r: r.get("name")) == {"x"}


def test_lock_contention_between_two_writers(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    with JsonlStore(path, owner="moderate-file"):
        with pytest.raises(StoreLockedError, match="another moderate-file job is writing") as info:
            JsonlStore(path, owner="moderate-file").open()
        assert isinstance(info.value, InvalidInputError)
        # another process too (flock is per open file, so this is the real case)
        code = f"from guardreasoner_vl.jsonl_store import JsonlStore; JsonlStore({str(path)!r}).open()"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "StoreLockedError" in proc.stderr
    with JsonlStore(path):  # released on close
        pass
    assert not (tmp_path / ".rows.jsonl.lock").exists()


def test_the_lock_is_released_when_open_fails(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.mkdir()  # a folder where the file should be: open fails after taking the lock
    with pytest.raises(OSError):
        JsonlStore(path).open()
    path.rmdir()
    with JsonlStore(path):
        pass


_WRITER = textwrap.dedent(
    """
    import sys
    from guardreasoner_vl.jsonl_store import JsonlStore
    with JsonlStore(sys.argv[1]) as store:
        start = len(store.done_ids())
        print("ready", flush=True)
        for n in range(start, 10**9):
            store.append([{"id": f"{n}-{k}", "pad": "x" * 2000} for k in range(100)])
    """
)


def test_kill_minus_9_mid_write_leaves_only_whole_rows(tmp_path: Path) -> None:
    """A writer killed at random points: after each kill the store holds whole rows only, and resumes."""
    path = tmp_path / "rows.jsonl"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    torn = 0
    for delay in (0.05, 0.15, 0.3):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        data = path.read_bytes()
        torn += int(bool(data) and not data.endswith(b"\n"))
        with JsonlStore(path) as store:  # the lock of the killed process is gone with it
            rows = list(store.rows())
            data = path.read_bytes()
            assert all(json.loads(data[r.offset : r.offset + r.length]) == r.data for r in rows)
            assert len({r.data["id"] for r in rows}) == len(rows)
        assert path.read_bytes().endswith(b"\n") or path.stat().st_size == 0
    print(f"kills=3 torn_tails_seen={torn} rows={len(rows)}")
