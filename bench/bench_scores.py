"""Cost of verdict scores: ``moderate_batch`` with scores on vs off, same guard, same inputs, side by side.

Two tiny VL checkpoints on CPU:

* ``verdict``: the small BPE vocabulary, trained for a few seconds to write verdicts
  (``testing.tiny_verdict_model``), so every result carries scores (the whole path is timed: recording,
  reading the trace, the rule);
* ``qwen-vocab``: random weights with Qwen2.5's real 151,936-entry vocabulary, run for a fixed number of new
  tokens. With a 64-wide model the per-step log-sum-exp over the vocabulary weighs far more against the
  forward pass than it would in the 3B model (whose forward pass is ~10^4 times larger), so this is the
  pessimistic case of the recorder.

Runs alternate on/off so that drift of a shared machine hits both alike; the median of each is reported.
Goal (issue 11): scores on at most 3% slower.

Run: ``python bench/bench_scores.py [--n 32] [--repeats 7] [--new-tokens 48]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, guard, items: list[dict], repeats: int) -> None:  # type: ignore[no-untyped-def]
    on, off = guard, guard.with_options(scores=False)
    on.moderate_batch(items[:4])  # warm-up (and the one-time scan of the vocabulary for label candidates)
    off.moderate_batch(items[:4])
    times: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(repeats):
        times["off"].append(_timed(lambda: off.moderate_batch(items)))
        times["on"].append(_timed(lambda: on.moderate_batch(items)))
    results = on.moderate_batch(items)
    scored = sum(r.request_score is not None for r in results)
    t_on, t_off = statistics.median(times["on"]), statistics.median(times["off"])
    tokens = sum(r.usage.completion_tokens or 0 for r in results)
    print(
        f"{name:>11}: {len(items)} items, {tokens} new tokens, {scored}/{len(items)} with a request score | "
        f"off {t_off:.3f} s  on {t_on:.3f} s  ratio on/off x{t_on / t_off:.3f} ({(t_on / t_off - 1) * 100:+.1f}%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32, help="inputs per moderate_batch call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=48, help="budget of the qwen-vocab run")
    args = parser.parse_args()

    import torch

    from guardreasoner_vl import Guard
    from guardreasoner_vl.testing import build_tiny_vl_model, tiny_verdict_model, verdict_examples

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-scores-"))
    examples = [{k: e.get(k) for k in ("text", "image", "response")} for e in verdict_examples("vl")]
    items = [examples[i % len(examples)] for i in range(args.n)]
    print(f"torch {torch.__version__}, 1 thread, CPU; n={args.n}, repeats={args.repeats} (median)")

    path = tiny_verdict_model(work / "verdict", "vl")
    with Guard(path, backend="transformers", device="cpu", max_new_tokens=64, batch_size=8) as guard:
        compare("verdict", guard, items, args.repeats)

    qwen = build_tiny_vl_model(work / "qwen", tokenizer="qwen")
    with Guard(qwen, backend="transformers", device="cpu", max_new_tokens=args.new_tokens, batch_size=8) as guard:
        compare("qwen-vocab", guard, items, args.repeats)


if __name__ == "__main__":
    main()
