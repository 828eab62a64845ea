"""moderate-file with a verdict cache: a second job (another guard, another cache object on the same file, as a
new process would have) pays for nothing it already judged, and writes the same rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FakeBackend
from guardreasoner_vl.batch import moderate_file
from guardreasoner_vl.cache import SqliteCache
from guardreasoner_vl.cli import main


def write_rows(path: Path, n: int) -> Path:
    lines = [json.dumps({"id": i, "text": f"question {i}" + (" bomb" if i % 3 == 0 else "")}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def stable(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        row["usage"]["latency_s"] = None
        out.append(row)
    return out


def test_a_second_job_reuses_the_cache_file(tmp_path: Path) -> None:
    source = write_rows(tmp_path / "in.jsonl", 10)
    first_engine, second_engine = FakeBackend(), FakeBackend()
    with Guard(backend=first_engine, cache=tmp_path / "verdicts.db") as guard:
        moderate_file(guard, source, tmp_path / "a.jsonl", batch_size=4)
    assert sum(len(c) for c in first_engine.calls) == 10
    with Guard(backend=second_engine, cache=SqliteCache(tmp_path / "verdicts.db")) as guard:
        summary = moderate_file(guard, source, tmp_path / "b.jsonl", batch_size=4)
        assert guard.cache is not None and guard.cache.stats.hits == 10
    assert second_engine.calls == [] and summary.written == 10
    assert stable(tmp_path / "a.jsonl") == stable(tmp_path / "b.jsonl")


def test_moderate_file_command_takes_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_rows(tmp_path / "in.jsonl", 6)
    calls: list[int] = []
    real = FakeBackend.generate

    def counting(self: FakeBackend, requests: Any, params: Any) -> Any:
        calls.append(len(requests))
        return real(self, requests, params)

    monkeypatch.setattr(FakeBackend, "generate", counting)
    cache = tmp_path / "cache.db"
    argv = ["moderate-file", str(source), "--backend", "fake", "--no-progress", "--cache", str(cache)]
    assert main([*argv, "-o", str(tmp_path / "a.jsonl")]) == 0
    assert main([*argv, "-o", str(tmp_path / "b.jsonl")]) == 0
    assert sum(calls) == 6  # the second run's rows all came from the cache file
    assert stable(tmp_path / "a.jsonl") == stable(tmp_path / "b.jsonl")
    assert main([*argv[:-2], "-o", str(tmp_path / "c.jsonl")]) == 0  # without --cache: judged again
    assert sum(calls) == 12
