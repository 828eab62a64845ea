"""moderate-file as a real process: the CLI, and resume after ``kill -9`` at random points.

No row may be lost or duplicated however often the job is killed; the final output holds every input id
exactly once, in input order, each with its own correct verdict.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")


def make_input(path: Path, n: int) -> list[str]:
    ids = [f"row-{i:05d}" for i in range(n)]
    with path.open("w", encoding="utf-8") as handle:
        for i, row_id in enumerate(ids):
            text = f"message number {i}" + (" with a bomb" if i % 5 == 0 else "")
            handle.write(json.dumps({"id": row_id, "text": text}) + "\n")
    return ids


def check_output(path: Path, ids: list[str]) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    rows = [json.loads(line) for line in data.split(b"\n") if line]
    assert [r["id"] for r in rows] == ids  # every id once, in input order
    for i, row in enumerate(rows):
        assert row["status"] == "ok"
        assert row["flagged"] is (i % 5 == 0), row  # the verdict belongs to this row
    return rows


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardreasoner_vl.cli", *args],
        capture_output=True,
        text=True,
        env=env(),
        cwd=ROOT,
        timeout=120,
    )


def test_cli_runs_and_reports(tmp_path: Path) -> None:
    ids = make_input(tmp_path / "in.jsonl", 40)
    done = cli("moderate-file", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--backend", "fake",
               "--batch-size", "6", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["written"] == 40 and summary["by_status"] == {"ok": 40} and summary["flagged"] == 8
    check_output(tmp_path / "out.jsonl", ids)
    again = cli("moderate-file", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--backend", "fake")
    assert again.returncode == 0 and "wrote 0 row(s)" in again.stderr and "skipped 40 already done" in again.stderr


def test_cli_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', encoding="utf-8")
    done = cli("moderate-file", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--backend", "fake")
    assert done.returncode == 2
    assert "line 2: duplicate id 1 (first on line 1)" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_killed_mid_run_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    ids = make_input(tmp_path / "in.jsonl", 3000)
    out = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "guardreasoner_vl.cli", "moderate-file", str(tmp_path / "in.jsonl"), "-o",
            str(out), "--backend", "fake", "--batch-size", "7", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(args, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while (not out.exists() or out.stat().st_size < 20_000) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    partial = out.read_bytes().count(b"\n")
    assert 0 < partial < len(ids)
    done = subprocess.run(args, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    check_output(out, ids)


SLOW_JOB = textwrap.dedent(
    """
    import sys, time
    from guardreasoner_vl import Guard
    from guardreasoner_vl.backends import FakeBackend
    from guardreasoner_vl.batch import moderate_file

    class Slow(FakeBackend):  # a model that takes a while per batch, so kills land mid-run
        def generate(self, requests, params):
            time.sleep(0.01)
            return super().generate(requests, params)

    summary = moderate_file(Guard(backend=Slow()), sys.argv[1], sys.argv[2], batch_size=3)
    print(summary.written, summary.skipped)
    """
)


def _lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_repeated_kill_9_at_random_points(tmp_path: Path) -> None:
    ids = make_input(tmp_path / "in.jsonl", 240)
    script = tmp_path / "job.py"
    script.write_text(SLOW_JOB, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    rng = random.Random(1234)
    kills = 0
    torn_seen = 0
    progress: list[int] = []
    for _ in range(100):
        # Kill once the job has written a random number of new rows, a random moment later: mid-batch,
        # mid-write or between writes. Each run makes progress, so the loop ends.
        start_rows = _lines_in(out)
        target = start_rows + rng.randint(1, 45)
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "in.jsonl"), str(out)],
            env=env(),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and _lines_in(out) < target and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            time.sleep(rng.uniform(0.0, 0.02))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            data = out.read_bytes() if out.exists() else b""
            torn_seen += int(bool(data) and not data.endswith(b"\n"))
            progress.append(data.count(b"\n"))
            continue
        _, stderr = proc.communicate()
        assert proc.returncode == 0, stderr
        break
    else:
        raise AssertionError("the job never finished")
    mid_run = sum(0 < p < len(ids) for p in progress)
    assert mid_run >= 3, f"too few kills landed mid-run to test anything: {progress}"
    check_output(out, ids)
    assert not list(tmp_path.glob(".out.jsonl*"))
    print(f"kills={kills} torn_lines_seen={torn_seen} rows_at_each_kill={progress}")
