"""Core benchmark on the tiny model, CPU, everything measured side by side in one run.

(a) ``moderate_batch`` of N inputs vs N sequential ``moderate`` calls (throughput ratio);
(b) ``Guard.moderate`` vs a hand-written ``model.generate`` loop on identical token ids and the same
    generation length (overhead ratio; target: within 5%);
(c) ``import guardreasoner_vl`` time vs a bare interpreter.

Run: ``python bench/bench_core.py [--n 32] [--new-tokens 32] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_import(repeats: int) -> tuple[float, float]:
    def run(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - start

    bare = statistics.median(run("pass") for _ in range(repeats))
    ours = statistics.median(run("import guardreasoner_vl") for _ in range(repeats))
    return bare, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from guardreasoner_vl import Guard
    from guardreasoner_vl.testing import tiny_model_path

    torch.manual_seed(0)
    path = tiny_model_path("vl")
    guard = Guard(path, backend="transformers", max_new_tokens=args.new_tokens, batch_size=args.n, device="cpu")
    texts = [f"Request number {i}: how do I {'bake bread' if i % 2 else 'fix a bike'} at home?" for i in range(args.n)]
    images = [Image.effect_noise((112 + 28 * (i % 3), 112), 40).convert("RGB") for i in range(args.n)]
    items = [{"text": t, "image": im} for t, im in zip(texts, images, strict=True)]

    guard.moderate_batch(items[:2])  # warm-up
    t_batch = _median_time(lambda: guard.moderate_batch(items), args.repeats)
    t_seq = _median_time(lambda: [guard.moderate(i["text"], i["image"]) for i in items], args.repeats)

    # (b) the plain baseline a user would write: template string -> tokenizer -> image processor -> generate,
    # one input at a time, on the same prepared images (so both sides feed identical ids and pixels).
    backend = guard.backend
    model, processor, tokenizer = backend.model, backend.image_processor, backend.tokenizer
    pad = backend.encoder.token_id("<|image_pad|>")
    prepared = [guard.prepare(i["text"], i["image"]).request for i in items]

    def baseline_inputs(request) -> dict:
        vision = processor(images=[request.image], return_tensors="pt")
        n = int(vision["image_grid_thw"][0].prod()) // 4
        ids = tokenizer(request.prompt.text.replace("<|image_pad|>", "<|image_pad|>" * n), add_special_tokens=False)
        ids = ids["input_ids"]
        return {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values": vision["pixel_values"],
            "image_grid_thw": vision["image_grid_thw"],
            "mm_token_type_ids": torch.tensor([[int(t == pad) for t in ids]], dtype=torch.int),
        }

    assert all(baseline_inputs(r)["input_ids"][0].tolist() == backend.encode(r) for r in prepared[:4])

    def baseline_one(request) -> int:
        with torch.inference_mode():
            inputs = baseline_inputs(request)
            out = model.generate(
                **inputs,
                max_new_tokens=args.new_tokens,
                do_sample=False,
                eos_token_id=backend.eos_token_ids,
                pad_token_id=backend.pad_token_id,
            )
        return int(out.shape[1] - inputs["input_ids"].shape[1])

    def ours_one(item) -> int:
        return guard.moderate(item["text"], item["image"]).usage.completion_tokens or 0

    # Interleaved per input (alternating which side goes first) so machine noise hits both sides alike.
    t_base = t_ours = 0.0
    base_lengths, our_lengths = [], []
    for repeat in range(args.repeats):
        for index, (request, item) in enumerate(zip(prepared, items, strict=True)):
            order = [("base", request), ("ours", item)]
            if (index + repeat) % 2:
                order.reverse()
            for side, payload in order:
                start = time.perf_counter()
                if side == "base":
                    length = baseline_one(payload)
                    t_base += time.perf_counter() - start
                    base_lengths.append(length)
                else:
                    length = ours_one(payload)
                    t_ours += time.perf_counter() - start
                    our_lengths.append(length)
    assert base_lengths == our_lengths, "generation lengths differ: not a like-for-like comparison"

    bare, imported = bench_import(args.repeats)

    print(f"tiny Qwen2.5-VL on CPU, {args.n} text+image inputs, {args.new_tokens} new tokens, median of {args.repeats}")
    print(
        f"(a) moderate_batch({args.n}): {t_batch:.3f}s   {args.n} x moderate: {t_seq:.3f}s   "
        f"speed-up x{t_seq / t_batch:.2f}"
    )
    print(
        f"(b) Guard.moderate: {t_ours:.3f}s   hand-written generate: {t_base:.3f}s   "
        f"overhead {100 * (t_ours / t_base - 1):+.1f}% ({args.n} inputs x {args.repeats} interleaved passes, "
        f"{sum(our_lengths)} tokens generated on each side)"
    )
    print(
        f"(c) import guardreasoner_vl: {imported * 1000:.0f} ms wall   bare python: {bare * 1000:.0f} ms   "
        f"package cost {1000 * (imported - bare):.0f} ms"
    )


if __name__ == "__main__":
    main()
