"""moderate_file in-process: order, per-row errors, input checks, resume, retries, atomic rewrites."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from guardreasoner_vl import Guard, InvalidInputError
from guardreasoner_vl.backends import FakeBackend, FunctionBackend, Generation, verdict_output
from guardreasoner_vl.batch import moderate_file, scan_input
from guardreasoner_vl.prompts import ModelFamily


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.decode("utf-8").split("\n") if line]


def stable(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its timing (the only field that differs between runs)."""
    return {**row, "usage": {**row["usage"], "latency_s": None}}


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": f"question {i}" + (" about a bomb" if i % 4 == 1 else "")} for i in range(n)]


def test_every_row_once_in_order_with_errors_recorded(tmp_path: Path) -> None:
    Image.new("RGB", (40, 40), "white").save(tmp_path / "pic.png")
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "text": "how do I bake bread?"},
            {"id": 7, "text": "how to build a bomb", "response": "I can't help with that."},
            "",
            {"id": "img", "text": "what is this?", "image": "pic.png", "note": "extra keys are ignored"},
            {"id": "nothing"},
            {"id": "missing-image", "text": "x", "image": "does-not-exist.png"},
            {"id": "number", "text": 12},
            {"id": "poison", "text": "hello", "response": "use poison"},
        ],
    )
    fake = FakeBackend()
    summary = moderate_file(Guard(backend=fake), src, tmp_path / "out.jsonl", batch_size=3)
    out = read_rows(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == ["a", 7, "img", "nothing", "missing-image", "number", "poison"]
    status = {r["id"]: r["status"] for r in out}
    assert status == {
        "a": "ok",
        7: "ok",
        "img": "ok",
        "nothing": "invalid_input",
        "missing-image": "invalid_input",
        "number": "invalid_input",
        "poison": "ok",
    }
    by_id = {r["id"]: r for r in out}
    assert by_id[7]["flagged"] and by_id[7]["request"] == "harmful" and by_id[7]["response"] == "unharmful"
    assert by_id["poison"]["response"] == "harmful" and by_id["poison"]["flagged"]
    assert not by_id["a"]["flagged"] and by_id["a"]["reasoning"]
    assert "image file not found" in by_id["missing-image"]["error"]
    assert "give at least one of text and image" in by_id["nothing"]["error"]
    assert by_id["nothing"]["flagged"] is True  # could not judge: fail closed
    # The relative image path was read from the input's folder and reached the engine.
    images = [req.image for call in fake.calls for req in call if req.image is not None]
    assert len(images) == 1 and images[0].size == (56, 56)
    assert summary.total == 7 and summary.written == 7 and summary.skipped == 0
    assert summary.by_status == {"ok": 4, "invalid_input": 3} and summary.flagged == 5


def test_input_problems_stop_the_job_before_any_work(tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": 1, "text": "a"},
            {"id": "1", "text": "same id as a string"},
            {"text": "no id"},
            "{not json",
            "[1, 2]",
            {"id": True, "text": "bool id"},
            {"id": "", "text": "empty id"},
            {"id": "ok", "text": "fine"},
            {"id": "ok", "text": "dup"},
        ],
    )
    backend = FakeBackend()
    with pytest.raises(InvalidInputError) as info:
        moderate_file(Guard(backend=backend), src, tmp_path / "out.jsonl")
    message = str(info.value)
    assert "7 problem(s)" in message
    for expected in (
        "line 2: duplicate id '1' (first on line 1)",
        "line 3: no 'id'",
        "line 4: not valid JSON",
        "line 5: a row must be a JSON object, got list",
        "line 6: 'id' must be a non-empty string or an integer",
        "line 7: 'id' must be",
        "line 9: duplicate id 'ok' (first on line 8)",
    ):
        assert expected in message
    assert backend.calls == [] and not (tmp_path / "out.jsonl").exists()
    with pytest.raises(InvalidInputError, match="input file not found"):
        scan_input(tmp_path / "nope.jsonl")


def test_resume_cuts_a_torn_line_and_skips_finished_ids(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", rows(23))
    full = tmp_path / "full.jsonl"
    moderate_file(Guard(backend=FakeBackend()), src, full, batch_size=4)
    reference = [stable(r) for r in read_rows(full)]
    lines = full.read_bytes().split(b"\n")
    # As if killed while writing: 9 whole lines, then half of the 10th.
    partial = tmp_path / "out.jsonl"
    partial.write_bytes(b"\n".join(lines[:9]) + b"\n" + lines[9][: len(lines[9]) // 2])
    backend = FakeBackend()
    summary = moderate_file(Guard(backend=backend), src, partial, batch_size=4)
    assert summary.skipped == 9 and summary.written == 14 and not summary.reordered
    assert summary.repaired is not None and "torn last line 10" in summary.repaired  # cut, and reported
    judged = [req.prompt.user_text for call in backend.calls for req in call]
    assert len(judged) == 14 and "question 9" in judged[0]
    assert [stable(r) for r in read_rows(partial)] == reference
    # Nothing left to do: a third run judges nothing and changes nothing.
    again = FakeBackend()
    before = partial.read_bytes()
    assert moderate_file(Guard(backend=again), src, partial).written == 0
    assert again.calls == [] and partial.read_bytes() == before


def test_output_of_another_input_is_refused_unless_overwrite(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", rows(3))
    other = write_jsonl(tmp_path / "out.jsonl", [{"id": "zzz", "flagged": False}])
    with pytest.raises(InvalidInputError, match="'zzz' is not in the input"):
        moderate_file(Guard(backend=FakeBackend()), src, other)
    write_jsonl(other, ["this is not json"])
    with pytest.raises(InvalidInputError, match="not a row written by moderate-file"):
        moderate_file(Guard(backend=FakeBackend()), src, other)
    summary = moderate_file(Guard(backend=FakeBackend()), src, other, overwrite=True)
    assert summary.written == 3 and [r["id"] for r in read_rows(other)] == ["r0", "r1", "r2"]
    with pytest.raises(InvalidInputError, match="must not be the input"):
        moderate_file(Guard(backend=FakeBackend()), src, src)


def test_engine_failures_are_recorded_then_retried_on_request(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", rows(10))
    out = tmp_path / "out.jsonl"

    def flaky(request: Any) -> Generation | str:
        if "question 3" in request.prompt.user_text or "question 6" in request.prompt.user_text:
            return Generation(text="", error="server unreachable")
        return verdict_output(ModelFamily.VL, request_harmful=False)

    first = moderate_file(Guard(backend=FunctionBackend(flaky, family=ModelFamily.VL)), src, out, batch_size=4)
    assert first.by_status == {"ok": 8, "engine_error": 2}
    statuses = [r["status"] for r in read_rows(out)]
    assert statuses[3] == statuses[6] == "engine_error"
    # Without retry_errors, a rerun leaves them; with it, they are judged again and the order is restored.
    assert moderate_file(Guard(backend=FakeBackend()), src, out).written == 0
    second = moderate_file(Guard(backend=FakeBackend()), src, out, retry_errors=True)
    assert second.retried == 2 and second.written == 2 and second.reordered
    final = read_rows(out)
    assert [r["id"] for r in final] == [f"r{i}" for i in range(10)]
    assert all(r["status"] == "ok" for r in final)


def test_a_batch_that_raises_becomes_error_rows_and_the_job_goes_on(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", rows(6))

    class Exploding(FakeBackend):
        def generate(self, requests: Any, params: Any) -> list[Generation]:
            if any("question 2" in r.prompt.user_text for r in requests):
                raise RuntimeError("CUDA out of memory")
            return super().generate(requests, params)

    summary = moderate_file(Guard(backend=Exploding()), src, tmp_path / "out.jsonl", batch_size=2)
    out = read_rows(tmp_path / "out.jsonl")
    assert [r["status"] for r in out] == ["ok", "ok", "engine_error", "engine_error", "ok", "ok"]
    assert out[2]["error"] == "RuntimeError: CUDA out of memory" and out[2]["flagged"]
    assert summary.written == 6


def test_reordered_input_gives_output_in_input_order(tmp_path: Path) -> None:
    data = rows(8)
    src = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / "out.jsonl"
    moderate_file(Guard(backend=FakeBackend()), src, out)
    kept = out.read_bytes().split(b"\n")
    out.write_bytes(b"\n".join([kept[5], kept[2]]) + b"\n")  # an earlier run of a differently ordered input
    summary = moderate_file(Guard(backend=FakeBackend()), src, out)
    assert summary.skipped == 2 and summary.written == 6 and summary.reordered
    assert [r["id"] for r in read_rows(out)] == [r["id"] for r in data]
    assert not list(tmp_path.glob(".out.jsonl*"))  # no temporary or lock file left behind


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    import fcntl

    src = write_jsonl(tmp_path / "in.jsonl", rows(2))
    with (tmp_path / ".out.jsonl.lock").open("ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(InvalidInputError, match="another moderate-file job is writing"):
            moderate_file(Guard(backend=FakeBackend()), src, tmp_path / "out.jsonl")


def test_rows_stay_on_one_line_and_empty_input_is_fine(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "u", "text": "line\u2028separator and \u00e9"}])
    reasoning = "thinking\u2028more\u2029end\nnext"
    backend = FunctionBackend(
        lambda r: verdict_output(ModelFamily.VL, request_harmful=False, reasoning=reasoning), family=ModelFamily.VL
    )
    moderate_file(Guard(backend=backend), src, tmp_path / "out.jsonl")
    (row,) = read_rows(tmp_path / "out.jsonl")
    assert row["reasoning"] == reasoning
    assert len((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()) == 1
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    summary = moderate_file(Guard(backend=FakeBackend()), empty, tmp_path / "empty-out.jsonl")
    assert summary.total == 0 and (tmp_path / "empty-out.jsonl").read_bytes() == b""
