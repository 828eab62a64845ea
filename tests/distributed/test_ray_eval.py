"""eval --ray: the generation on the actor pool, the same resumable run folder and the same scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image
from ray_helpers import ROOT

from guardreasoner_vl import Guard
from guardreasoner_vl.evaluation.loaders import load_benchmark, load_predictions
from guardreasoner_vl.evaluation.runner import evaluate, predictions_path

GUARD = ["--model", "fake-vl-guard", "--backend", "fake", "--family", "vl", "--batch-size", "4"]


def vl_set(folder: Path) -> Path:
    """A small benchmark of our own JSONL layout: text + image rows and text-only rows."""
    folder.mkdir()
    Image.new("RGB", (40, 30), "red").save(folder / "red.png")
    Image.new("RGB", (30, 60), "blue").save(folder / "blue.png")
    rows = []
    for i in range(14):
        row: dict[str, Any] = {"id": f"s{i}", "text": f"what about item {i}" + (" and a bomb" if i % 3 == 0 else "")}
        row["label"] = "harmful" if i % 3 == 0 else "unharmful"
        if i % 2:
            row["image"] = "red.png" if i % 4 == 1 else "blue.png"
        rows.append(row)
    path = folder / "my_vl_set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows_by_id(path: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {r["id"]: {**r, "usage": {**r["usage"], "latency_s": None}} for r in rows}


def test_eval_on_ray_finishes_a_one_process_run_with_the_same_predictions(
    tmp_path: Path, ray_cluster: str, shared_data: Path
) -> None:
    files = [shared_data / "guardreasoner-text" / "benchmark" / "0_0_SimpleSafetyTests.json", vl_set(tmp_path / "vl")]
    benchmarks = [load_benchmark(files[0]), load_benchmark(files[1], task="request")]
    with Guard("fake-vl-guard", backend="fake", family="vl", batch_size=4) as guard:
        full = evaluate(guard, benchmarks, tmp_path / "local", batch_size=4)
        evaluate(guard, benchmarks, tmp_path / "ray", batch_size=4, limit=5)  # a run stopped early
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "guardreasoner_vl.cli", "eval", *(a for f in files for a in ("--data", str(f))),
         "--task", "request", "--output", str(tmp_path / "ray"), *GUARD, "--ray", "--address", ray_cluster,
         "--replicas", "2", "--no-plots", "--no-progress", "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["meta"]["model"] == "fake-vl-guard" and report["meta"]["ray"]["replicas"] == 2
    for data in benchmarks:
        ours = rows_by_id(predictions_path(tmp_path / "ray", data))
        theirs = rows_by_id(predictions_path(tmp_path / "local", data))
        assert ours == theirs  # the same rows (prompts, verdicts, raw outputs), each sample once
        assert len(load_predictions(predictions_path(tmp_path / "ray", data))) == len(data.samples)
    got = {(s["benchmark"], s["task"], s["mode"]): s["f1"] for s in report["scores"]}
    want = {(s.benchmark, s.task, s.mode): s.f1 for s in full.scores}
    assert got == want and len(got) >= 4
    image_rows = [r for r in rows_by_id(predictions_path(tmp_path / "ray", benchmarks[1])).values() if r["images"]]
    assert image_rows and all("<image>" not in r["prompt"] and "<|image_pad|>" in r["prompt"] for r in image_rows)
