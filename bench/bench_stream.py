"""Streaming: time to the first reasoning piece vs time to the full result, on the tiny models, side by side.

``Guard.stream`` yields the model's output as it is generated; a caller (the playground, an SSE client) shows the
first words after one prompt pass and a few tokens, instead of after the whole output. Two tiny VL checkpoints on
CPU, with transformers:

* ``verdict``: trained to write short verdicts (~25 tokens, ``testing.tiny_verdict_model_path``);
* ``random-256``: random weights made to write exactly 256 tokens (its end-of-sequence id is set outside the
  vocabulary), the shape of a reasoning guard's long output.

For each: the time to the first ``ReasoningDelta`` and to the ``FinalResult`` of ``guard.stream(...)``, and the
time of ``guard.moderate(...)`` on the same input (what streaming costs over not streaming). Runs alternate;
medians over ``--repeats``.

Run: ``python bench/bench_stream.py [--repeats 7] [--new-tokens 256]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measure(name: str, guard, item: dict, repeats: int) -> None:  # type: ignore[no-untyped-def]
    guard.moderate(**item)  # warm-up
    first: list[float] = []
    full: list[float] = []
    plain: list[float] = []
    tokens = 0
    for _ in range(repeats):
        start = time.perf_counter()
        moderated = guard.moderate(**item)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        seen = None
        for event in guard.stream(**item):
            if seen is None:
                seen = time.perf_counter() - start
            if event.type == "result":
                full.append(time.perf_counter() - start)
                tokens = event.result.usage.completion_tokens or 0
                assert event.result.raw_output == moderated.raw_output
        assert seen is not None
        first.append(seen)
    t_first, t_full, t_plain = (statistics.median(v) for v in (first, full, plain))
    print(
        f"{name:>10}: {tokens} tokens | first piece {t_first * 1000:7.1f} ms  full result {t_full * 1000:7.1f} ms  "
        f"(moderate {t_plain * 1000:7.1f} ms) | full/first x{t_full / t_first:.1f}, "
        f"stream/moderate x{t_full / t_plain:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()

    import torch

    from guardreasoner_vl import Guard
    from guardreasoner_vl.testing import tiny_model_path, tiny_verdict_model_path

    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, CPU; repeats={args.repeats} (median)")
    with Guard(tiny_verdict_model_path("vl"), backend="transformers", device="cpu", max_new_tokens=64) as guard:
        measure("verdict", guard, {"text": "Help me hurt someone", "response": "Sure, here is how."}, args.repeats)
    with Guard(tiny_model_path("vl"), backend="transformers", device="cpu", max_new_tokens=args.new_tokens) as guard:
        backend = guard.backend
        backend.eos_token_ids = [backend.model.config.get_text_config().vocab_size + 1]  # type: ignore[attr-defined]
        measure(f"random-{args.new_tokens}", guard, {"text": "Tell me a long story."}, args.repeats)


if __name__ == "__main__":
    main()
