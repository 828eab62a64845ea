"""A local Ray cluster for the distributed tier: started once by the test session on 127.0.0.1, 2 CPUs.

The test process is itself a Ray driver (in-process jobs); jobs run as separate processes (the SIGKILL tests)
join the same cluster through :func:`cluster_address`. Workers inherit this process's environment, so they
import this checkout (PYTHONPATH) and stay offline (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


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


def part_rows(parts: Path) -> list[dict[str, Any]]:
    """Every row of every committed part (each part must be whole: only complete JSON lines)."""
    rows = []
    for part in sorted(parts.glob("part-*.jsonl")):
        data = part.read_bytes()
        assert data.endswith(b"\n"), f"{part.name} is not whole"
        rows.extend(json.loads(line) for line in data.splitlines())
    return rows
