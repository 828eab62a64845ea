"""Ray runner benchmark on the tiny model, CPU, everything measured side by side in one run.

Timings on a machine shared with other work swing widely: each figure is the median of ``--repeats`` runs,
one process and Ray alternating, with the range; the load average is printed at the start and the end.

(a) Ray overhead: the same N-row job (``moderate-file`` rows, tiny VL model, transformers engine, greedy) in
    one process (``batch.moderate_file``) and on ONE Ray actor (``distributed.moderate_dataset``), at equal
    parallelism (the same number of torch threads: ``--threads 1 2``; on 2 shared cores two spinning OpenMP
    threads per process measure the neighbours more than the code, so 1 is the default). Model load is
    outside both timings. For Ray, start-up is reported apart: ``ray.init``, then the pipeline's start until
    the actor has loaded its guard (worker process, imports, model load); the ratio compares the rest
    (judging, moving rows, commits, the final file) with the one-process wall time.
(b) Scaling: 1 vs 2 actors of 1 CPU each on this machine, steady-state rows/s, with the tiny model (CPU-bound:
    the two actors need two free cores) and with an engine that waits 20 ms a row instead of computing (what
    a GPU or a remote engine looks like from the CPU: the actor mostly waits), which shows the pool itself.
(c) The framework alone: the same rows with the fake engine (no model), to put a number on Ray's cost per
    block.

Run: ``python bench/bench_ray.py [--rows 200] [--new-tokens 64] [--batch-size 8] [--block-rows 32] [--repeats 3]``
(prints one line per measurement, medians of ``--repeats`` runs with their range; each Ray job's output is checked
row for row against the one-process output).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def write_input(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            text = f"Request number {i}: how do I {'bake bread' if i % 2 else 'fix a bike'} at home?"
            handle.write(json.dumps({"id": i, "text": text}) + "\n")


def stable_rows(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [{**r, "usage": {**r["usage"], "latency_s": None}} for r in rows]


def one_process(model: Path | None, src: Path, out: Path, args: argparse.Namespace, threads: int) -> float:
    import torch

    from guardreasoner_vl import Guard
    from guardreasoner_vl.batch import moderate_file

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        options = guard_options(model, args)
        with Guard(str(model) if model else "fake", **options) as guard:  # model load: not timed
            start = time.perf_counter()
            moderate_file(guard, src, out, batch_size=args.batch_size, overwrite=True)
            return time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


def waiting_engine() -> Any:
    """The fake engine, 20 ms a row spent waiting (sleep), not computing (made in each actor)."""
    from guardreasoner_vl.backends import FakeBackend

    class Waiting(FakeBackend):
        def generate(self, requests: Any, params: Any) -> Any:
            time.sleep(0.02 * len(requests))
            return super().generate(requests, params)

    return Waiting()


def guard_options(model: Path | str | None, args: argparse.Namespace) -> dict[str, Any]:
    if model == "waiting":
        return {"backend": waiting_engine, "family": "vl", "batch_size": args.batch_size}
    if model is None:
        return {"backend": "fake", "family": "vl", "batch_size": args.batch_size}
    options = {"backend": "transformers", "device": "cpu", "max_new_tokens": args.new_tokens}
    return {**options, "batch_size": args.batch_size}


def on_ray(model: Path | str | None, src: Path, out: Path, args: argparse.Namespace, replicas: int, cpus: float) -> Any:
    from guardreasoner_vl.distributed import GuardSpec, moderate_dataset

    spec = GuardSpec(str(model) if isinstance(model, Path) else "fake", **guard_options(model, args))
    return moderate_dataset(
        spec,
        src,
        out,
        replicas=replicas,
        cpus_per_replica=cpus,
        block_rows=args.block_rows,
        overwrite=True,
        progress=False,
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"[{min(values):.2f}-{max(values):.2f}]"


def phases(summary: Any) -> tuple[float, float, float]:
    """(start-up: pipeline start to the first actor ready, steady: from there to the end, rows/s in steady)."""
    startup = summary.actors_ready_s[0]
    end = summary.timeline[-1][0] + summary.finalize_s
    steady = end - startup
    return startup, steady, summary.written / (summary.timeline[-1][0] - startup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c"], help="which measurements to run")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1], help="torch threads of (a): 1 actor with N CPUs vs N threads"
    )
    parser.add_argument(
        "--worker-niceness",
        type=int,
        default=0,
        help="niceness of Ray's worker processes (Ray's own default is 15: on a machine shared with other work "
        "that alone slows the actors against a one-process run at niceness 0)",
    )
    args = parser.parse_args()

    import ray
    import torch

    from guardreasoner_vl.testing import tiny_model_path

    model = tiny_model_path("vl")
    work = Path(tempfile.mkdtemp(prefix="bench-ray."))
    src = work / "in.jsonl"
    write_input(src, args.rows)
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # noqa: SIM112 - Ray reads this exact name
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_init = time.perf_counter() - start
    print(f"machine: {os.cpu_count()} CPU(s), torch {torch.__version__} default threads {torch.get_num_threads()}, "
          f"ray {ray.__version__}; {args.rows} rows, tiny VL model, {args.new_tokens} new tokens, batch "
          f"{args.batch_size}, block {args.block_rows} rows; worker niceness {args.worker_niceness}; ray.init "
          f"{ray_init:.2f}s; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)  # fmt: skip
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        print(line, file=sys.stderr, flush=True)

    def check(summary: Any, reference: Path, out: Path) -> None:
        assert summary.written == args.rows
        assert stable_rows(out) == stable_rows(reference), "Ray output differs from the one-process output"

    # (a) overhead at equal parallelism: 1 actor with C CPUs (Ray gives it C threads) vs one process, C threads.
    # Each measurement is repeated (one process and Ray alternating, so a busy machine hits both) and the
    # median is reported with the range.
    warmup = on_ray(model, src, work / "warm.jsonl", args, 1, 1)  # first actor start of the session: cold
    report(f"cold start (first job on the cluster): pipeline start -> actor ready {warmup.actors_ready_s[0]:.2f}s")
    one_process(model, src, work / "local1.jsonl", args, 1)  # the reference output of the checks
    for threads in args.threads if "a" in args.parts else []:
        local_out, ray_out = work / f"local{threads}.jsonl", work / f"ray{threads}.jsonl"
        locals_, startups, steadies, loads, wholes = [], [], [], [], []
        for _ in range(args.repeats):
            locals_.append(one_process(model, src, local_out, args, threads))
            summary = on_ray(model, src, ray_out, args, 1, threads)
            check(summary, local_out, ray_out)
            startup, steady, _ = phases(summary)
            startups.append(startup)
            steadies.append(steady)
            loads.append(summary.actor_load_s[0])
            wholes.append(summary.elapsed_s)
        local, steady = median(locals_), median(steadies)
        ratios = [x / y for x, y in zip(steadies, locals_, strict=True)]
        report(
            f"(a) {threads} thread(s): one process {local:.2f}s {spread(locals_)} ({args.rows / local:.1f} rows/s) | "
            f"1 Ray actor: start-up {median(startups):.2f}s (guard load {median(loads):.2f}s), then {steady:.2f}s "
            f"{spread(steadies)} ({args.rows / steady:.1f} rows/s) -> ratio {steady / local:.2f}x "
            f"{spread(ratios)}"
            f" (whole job incl. start-up {median(wholes):.2f}s = {median(wholes) / local:.2f}x)"
        )
    # (b) scaling: 1 vs 2 actors of 1 CPU each, the tiny model, then an engine that waits.
    for engine, label, reference in ((model, "tiny model", "local1"), ("waiting", "waiting engine", "fake-local")):
        if "b" not in args.parts:
            break
        if engine == "waiting":
            one_process(None, src, work / "fake-local.jsonl", args, 1)
        rates: dict[int, list[float]] = {1: [], 2: []}
        split: list[int] = []
        for _ in range(args.repeats):
            for replicas in (1, 2):
                summary = on_ray(engine, src, work / f"s{replicas}.jsonl", args, replicas, 1)
                check(summary, work / f"{reference}.jsonl", work / f"s{replicas}.jsonl")
                rates[replicas].append(phases(summary)[2])
                if replicas == 2:
                    split = list(summary.actor_rows)
        r1, r2 = median(rates[1]), median(rates[2])
        report(
            f"(b) {label}: 1 actor {r1:.1f} rows/s {spread(rates[1])}, 2 actors {r2:.1f} rows/s "
            f"{spread(rates[2])} -> {r2 / r1:.2f}x (rows per actor in the last run {split})"
        )
    # (c) the framework alone: no model.
    if "c" not in args.parts:
        print(f"load average at the end: {os.getloadavg()[0]:.2f}", file=sys.stderr)
        ray.shutdown()
        return
    fake_local = one_process(None, src, work / "fake-local.jsonl", args, 1)
    fake = on_ray(None, src, work / "fake-ray.jsonl", args, 1, 1)
    check(fake, work / "fake-local.jsonl", work / "fake-ray.jsonl")
    startup, steady, _ = phases(fake)
    blocks = -(-args.rows // args.block_rows)
    report(
        f"(c) fake engine: one process {fake_local * 1000:.0f} ms | 1 Ray actor after start-up {steady * 1000:.0f} ms "
        f"for {blocks} blocks -> {(steady - fake_local) / blocks * 1000:.0f} ms per block of Ray and commits"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    ray.shutdown()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
