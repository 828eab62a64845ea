"""Verdict cache: latency of a hit vs a miss, same guard, same inputs, measured side by side.

The tiny VL checkpoint trained to write verdicts (``testing.tiny_verdict_model_path``) on CPU, with transformers;
the eight inputs of ``testing.verdict_examples`` (one with an image). For each store (``MemoryCache``,
``SqliteCache`` in a temporary file) and each input, in turn:

* **miss**: the entry is removed, then ``guard.moderate(...)`` (hashing the prompt and the image, a lookup that
  misses, the model, and the store);
* **hit**: ``guard.moderate(...)`` again (hashing, a lookup that hits, the parse);
* **none**: the same call on a guard without a cache (what a miss costs over no cache).

Medians over ``--repeats`` rounds. The tiny model generates in tens of milliseconds; a real 3B model takes
seconds, so the ratio there is far larger, while the hit's own cost (hashing, a read) stays the same.

Run: ``python bench/bench_cache.py [--repeats 7]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import torch

    from guardreasoner_vl import Guard
    from guardreasoner_vl.cache import MemoryCache, SqliteCache
    from guardreasoner_vl.testing import tiny_verdict_model_path, verdict_examples

    torch.set_num_threads(1)
    items = [{k: e.get(k) for k in ("text", "image", "response")} for e in verdict_examples("vl")]
    path = tiny_verdict_model_path("vl")
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    print(f"torch {torch.__version__}, 1 thread, CPU; {len(items)} inputs, repeats={args.repeats} (median per call)")
    with Guard(path, backend="transformers", device="cpu", max_new_tokens=64) as plain:
        for item in items:
            plain.moderate(**item)  # warm-up (and the one-time scan of the vocabulary for label candidates)
        for name, cache in (("memory", MemoryCache()), ("sqlite", SqliteCache(work / "cache.db"))):
            guard = Guard(path, backend="transformers", device="cpu", max_new_tokens=64, cache=cache)
            times: dict[str, list[float]] = {"none": [], "miss": [], "hit": []}
            for _ in range(args.repeats):
                for item in items:
                    cache.clear()
                    for kind, target in (("miss", guard), ("hit", guard), ("none", plain)):
                        start = time.perf_counter()
                        result = target.moderate(**item)
                        times[kind].append(time.perf_counter() - start)
                        assert result.status == "ok"
            assert cache.stats.hits == args.repeats * len(items)
            t = {k: statistics.median(v) for k, v in times.items()}
            print(
                f"{name:>6}: miss {t['miss'] * 1000:8.2f} ms  hit {t['hit'] * 1000:6.2f} ms  "
                f"(no cache {t['none'] * 1000:8.2f} ms) | miss/hit x{t['miss'] / t['hit']:.0f}, "
                f"a miss costs {(t['miss'] / t['none'] - 1) * 100:+.1f}% over no cache"
            )
            guard.close()
            cache.close()


if __name__ == "__main__":
    main()
