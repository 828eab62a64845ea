"""moderate-file on Ray: the same rows as the one-process job, Parquet and URIs, per-row errors, retries."""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from ray_helpers import ROOT, part_rows, read_rows, stable, write_jsonl

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FakeBackend
from guardreasoner_vl.backends.base import Generation
from guardreasoner_vl.batch import moderate_file
from guardreasoner_vl.distributed import GuardSpec, moderate_dataset
from guardreasoner_vl.errors import BackendError, ModelLoadError


def png_bytes(color: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def mixed_rows(tmp_path: Path, n: int) -> list[Any]:
    """n text rows, then rows with images (a relative path, a data URL, a missing file), a response, bad rows."""
    (tmp_path / "pic.png").write_bytes(png_bytes("red"))
    rows: list[Any] = [
        {"id": f"r{i:04d}" if i % 3 else i, "text": f"question {i}" + (" about a bomb" if i % 7 == 1 else "")}
        for i in range(n)
    ]
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes("blue", (60, 20))).decode()
    rows[10:10] = [
        {"id": "img-path", "text": "what is this?", "image": "pic.png"},
        {"id": "img-data", "image": data_url},
        {"id": "img-missing", "text": "and this?", "image": "nope.png"},
        {"id": "with-response", "text": "how to build a bomb", "response": "I can't help with that."},
        {"id": "no-input"},
        "{not json",
    ]
    return rows


@pytest.mark.slow
def test_two_actors_write_what_one_process_writes(tmp_path: Path, ray_cluster: str, tiny_vl_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", mixed_rows(tmp_path, 200))
    options: dict[str, Any] = {"backend": "transformers", "device": "cpu", "max_new_tokens": 8, "batch_size": 8}
    with Guard(tiny_vl_path, **options) as guard:
        local = moderate_file(guard, src, tmp_path / "local.jsonl", batch_size=8, skip_invalid=True)
    summary = moderate_dataset(
        GuardSpec(tiny_vl_path, **options), src, tmp_path / "ray.jsonl", replicas=2, skip_invalid=True
    )
    expected = read_rows(tmp_path / "local.jsonl")
    got = read_rows(tmp_path / "ray.jsonl")
    assert len(got) == 206 and [r["id"] for r in got] == [r["id"] for r in expected]
    assert [stable(r) for r in got] == [stable(r) for r in expected]  # verdicts and raw outputs, row for row
    by_id = {r["id"]: r for r in got}
    assert by_id["img-path"]["usage"]["prompt_tokens"] > by_id[12]["usage"]["prompt_tokens"]  # the image came along
    assert by_id["img-missing"]["status"] == "invalid_input" and "image file not found" in by_id["img-missing"]["error"]
    assert by_id["line:16"]["status"] == "invalid_input" and by_id["line:16"]["line"] == 16
    assert summary.written == 206 and summary.by_status == local.by_status and summary.flagged == local.flagged
    assert len(summary.actors_ready_s) == 2 and all(n > 0 for n in summary.actor_rows)  # both actors judged
    assert summary.attempts == 1 and summary.duplicates == 0
    assert sorted(str(r["id"]) for r in part_rows(tmp_path / "ray.jsonl.parts")) == sorted(str(r["id"]) for r in got)


def test_parquet_in_parquet_out_through_a_uri(tmp_path: Path, ray_cluster: str) -> None:
    blue = png_bytes("blue")
    table = pa.table(
        {
            "id": pa.array([1, 2, 3, None, 5], pa.int64()),
            "text": ["a bomb", "bread", None, "no id", "hello"],
            "image": pa.array(
                [None, None, {"bytes": blue, "path": None}, None, {"bytes": None, "path": "nope.png"}],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")  # one row group of 5 rows: copied into groups of 1 row
    out = f"file://{tmp_path}/out.parquet"
    spec = GuardSpec(backend=FakeBackend, batch_size=2)
    summary = moderate_dataset(spec, tmp_path / "in.parquet", out, skip_invalid=True, block_rows=1)
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["id"] for r in rows] == ["1", "2", "3", "line:4", "5"]  # one row per input row, in order
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "invalid_input", "invalid_input"]
    assert rows[0]["flagged"] and not rows[1]["flagged"]
    assert rows[3]["line"] == 4 and "'id' must be" in rows[3]["error"]
    assert "image file not found" in rows[4]["error"]
    assert rows[2]["usage"]["prompt_tokens"] is not None
    assert summary.total == 5 and summary.malformed == 1 and summary.parts == out + ".parts"
    again = moderate_dataset(spec, tmp_path / "in.parquet", out, skip_invalid=True)
    assert again.skipped == 5 and again.written == 0 and again.attempts == 0  # nothing left: Ray not even started


class FlakyEngine(FakeBackend):
    """Fails every call holding a FLAKY row while the marker file exists (each actor has its own copy)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def generate(self, requests: Any, params: Any) -> list[Generation]:
        if os.path.exists(self.marker) and any("FLAKY" in (r.prompt.user_text or "") for r in requests):
            raise RuntimeError("the engine fell over")
        return super().generate(requests, params)


def test_retry_errors_judges_only_the_failed_rows_again(tmp_path: Path, ray_cluster: str) -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test module
    marker = tmp_path / "failing"
    marker.touch()
    rows = [{"id": i, "text": f"row {i}" + (" FLAKY" if i in (5, 21) else "")} for i in range(40)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    spec = GuardSpec(backend=functools.partial(FlakyEngine, str(marker)), batch_size=4)
    first = moderate_dataset(spec, src, tmp_path / "out.jsonl", replicas=2)
    assert first.by_status == {"ok": 32, "engine_error": 8}  # the two batches of 4 holding a FLAKY row
    assert "fell over" in next(r for r in read_rows(tmp_path / "out.jsonl") if r["id"] == 5)["error"]
    marker.unlink()
    again = moderate_dataset(spec, src, tmp_path / "out.jsonl", retry_errors=True)
    assert again.retried == 8 and again.written == 8 and again.skipped == 32 and again.by_status == {"ok": 8}
    out = read_rows(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == list(range(40)) and {r["status"] for r in out} == {"ok"}
    assert sorted(r["id"] for r in part_rows(tmp_path / "out.jsonl.parts")) == list(range(40))  # none left twice


class Unloadable(FakeBackend):
    def __init__(self) -> None:
        raise ModelLoadError("checkpoint directory not found: /no/such/model")


def test_a_guard_that_cannot_load_fails_the_job_at_once_and_says_why(tmp_path: Path, ray_cluster: str) -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": "x"} for i in range(8)])
    with pytest.raises(BackendError) as info:
        moderate_dataset(GuardSpec(backend=Unloadable), src, tmp_path / "out.jsonl", max_attempts=3)
    message = str(info.value)
    assert "8 of 8 row(s) not judged after 1 attempt(s)" in message  # no second attempt: it would fail alike
    assert "checkpoint directory not found: /no/such/model" in message
    assert not (tmp_path / "out.jsonl").exists()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "guardreasoner_vl.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_every_row_failed_exits_1(tmp_path: Path, ray_cluster: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i} for i in range(6)])  # nothing to judge: all invalid_input
    out = tmp_path / "out.jsonl"
    done = cli("moderate-file", str(src), "-o", str(out), "--backend", "fake", "--ray", "--address", ray_cluster,
               "--replicas", "1", "--no-progress", "--json")  # fmt: skip
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["all_failed"] and summary["by_status"] == {"invalid_input": 6} and summary["replicas"] == 1
    assert "error: every row failed (6 of 6 not ok)" in done.stderr
    assert [r["status"] for r in read_rows(out)] == ["invalid_input"] * 6
