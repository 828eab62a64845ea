"""Exactly once under failure: the driver killed with SIGKILL at random points, an actor killed with ray.kill.

Every run must leave only whole parts, no id in two parts, and the job resumed afterwards must judge only the
missing rows and end with every input id exactly once, in input order, each with its own verdict.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ray_helpers import ROOT, part_rows, read_rows, write_jsonl

from guardreasoner_vl.backends import FakeBackend
from guardreasoner_vl.backends.base import Generation
from guardreasoner_vl.distributed import GuardSpec, moderate_dataset

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    from guardreasoner_vl.backends import FakeBackend
    from guardreasoner_vl.distributed import GuardSpec, moderate_dataset

    class Slow(FakeBackend):  # a model that takes a while per batch, so kills land mid-run
        def generate(self, requests, params):
            time.sleep(0.03 * len(requests))
            return super().generate(requests, params)

    summary = moderate_dataset(GuardSpec(backend=Slow, batch_size=4), sys.argv[1], sys.argv[2], replicas=2,
                               block_rows=8, address=sys.argv[3], progress=False)
    print(json.dumps({"written": summary.written, "skipped": summary.skipped, "attempts": summary.attempts}))
    """
)


def make_rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"row-{i:04d}", "text": f"message {i}" + (" with a bomb" if i % 5 == 0 else "")} for i in range(n)]


def check_parts(parts: Path) -> int:
    """Every part whole, no id twice; returns the rows committed."""
    ids = [r["id"] for r in part_rows(parts)]
    assert len(ids) == len(set(ids)), "an id was committed twice"
    return len(ids)


def check_final(out: Path, rows: list[dict[str, Any]]) -> None:
    got = read_rows(out)
    assert [r["id"] for r in got] == [r["id"] for r in rows]  # every id once, in input order
    for i, row in enumerate(got):
        assert row["status"] == "ok" and row["flagged"] is (i % 5 == 0), row  # its own verdict


def test_driver_killed_at_random_points_then_resumed(tmp_path: Path, ray_cluster: str) -> None:
    rows = make_rows(240)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out, parts = tmp_path / "out.jsonl", tmp_path / "out.jsonl.parts"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    rng = random.Random(20261205)
    committed: list[int] = []
    for attempt in range(12):
        before = check_parts(parts) if parts.exists() else 0
        proc = subprocess.Popen(
            [sys.executable, str(script), str(src), str(out), ray_cluster],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        # Kill once a random number of new blocks (0: still starting up) is committed, a random moment later.
        target = before + 8 * (rng.randint(1, 4) if attempt else 0)
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            if (check_parts(parts) if parts.exists() else 0) >= target:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 2.5 if attempt == 0 else 0.3))
        if proc.poll() is None and attempt < 4:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            committed.append(check_parts(parts) if parts.exists() else 0)
            continue
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, stdout
        summary = json.loads(stdout.strip().splitlines()[-1])
        assert summary["skipped"] == before and summary["written"] == len(rows) - before  # only the missing rows
        break
    else:
        raise AssertionError("the job never finished")
    assert len(committed) >= 3 and sum(0 < c < len(rows) for c in committed) >= 2, committed
    check_final(out, rows)
    assert check_parts(parts) == len(rows)
    print(f"rows committed at each SIGKILL: {committed}")


class Registered(FakeBackend):
    """A slow fake engine that tells the test which actor it lives in (so the test can kill that actor)."""

    def __init__(self) -> None:
        import ray

        super().__init__()
        ray.get_actor("grvl-test-actors").add.remote(ray.get_runtime_context().current_actor)

    def generate(self, requests: Any, params: Any) -> list[Generation]:
        time.sleep(0.03 * len(requests))
        return super().generate(requests, params)


@pytest.mark.parametrize("restart", [True, False], ids=["ray-restarts-it", "gone-for-good"])
def test_actor_killed_mid_run(tmp_path: Path, ray_cluster: str, restart: bool) -> None:
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test module

    @ray.remote(num_cpus=0)
    class Actors:
        def __init__(self) -> None:
            self.handles: list[Any] = []

        def add(self, handle: Any) -> None:
            self.handles.append(handle)

        def get(self) -> list[Any]:
            return self.handles

    registry = Actors.options(name="grvl-test-actors").remote()  # type: ignore[attr-defined]
    rows = make_rows(160)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out, parts = tmp_path / "out.jsonl", tmp_path / "out.jsonl.parts"
    result: dict[str, Any] = {}

    def job() -> None:
        try:
            result["summary"] = moderate_dataset(
                GuardSpec(backend=Registered, batch_size=4), src, out, replicas=2, block_rows=8, progress=False
            )
        except BaseException as exc:  # reported below
            result["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 90
    while (not parts.exists() or check_parts(parts) < 24) and time.monotonic() < deadline:
        time.sleep(0.01)
    handles = ray.get(registry.get.remote())
    assert handles and thread.is_alive(), "the job finished before an actor could be killed"
    ray.kill(handles[0], no_restart=not restart)
    thread.join(120)
    ray.kill(registry)
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    check_final(out, rows)
    assert check_parts(parts) == len(rows) and summary.written == len(rows)
    # Restarted: Ray retried the block on the new actor. Gone: the driver started the pipeline again.
    assert summary.attempts == (1 if restart else 2)
