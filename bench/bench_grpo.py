"""GRPO step time through ``guardreasoner_vl.training`` vs plain TRL, side by side in one run.

* ``ours``:  :class:`~guardreasoner_vl.training.clipping.DynamicClipGRPOTrainer` (dynamic clip bound set before
  every loss call) with :func:`~guardreasoner_vl.training.rewards.reward_functions` (the length-aware safety
  reward through the project's parser, plus the three logged components at weight 0).
* ``plain``: ``trl.GRPOTrainer`` with one hand-written reward (a regex for ``Request: harmful|unharmful``
  compared with the row's ``request_label``), fixed clip range.

Same tiny random Qwen2.5-VL (fresh from the same weights for every run), same rows (text, text + response, image,
text + image, built by ``to_rl_record``), same ``GRPOConfig``, same seed, same processor
(:func:`~guardreasoner_vl.training.processing.load_processor`: ``AutoProcessor`` needs torchvision). Every
completion is forced to ``--completion-tokens`` tokens (``min_new_tokens``), so the generation work is
identical on both sides whatever the rewards do to the weights.

Each repeat trains both trainers ``--steps`` optimizer steps (one rollout per step), alternating which goes
first; step 1 is warm-up and not counted. Printed: median step time of each, the ratio ours / plain (target:
within 1.10; pooled, and the median of the per-repeat ratios, which cancels slow drifts in machine load), and
the time spent inside the reward functions per step (the part of our layer that does real work: parsing;
setting the clip bound costs microseconds), also as a share of the plain step.

    python bench/bench_grpo.py                     # defaults: 5 repeats x 4 steps, G=4, 2 prompts per step
    python bench/bench_grpo.py --repeats 9 --completion-tokens 64
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_REQUEST = re.compile(r"Request:\s*(harmful|unharmful)", re.IGNORECASE)


def plain_request_reward(prompts: Any = None, completions: Any = (), **kwargs: Any) -> list[float]:
    """What a plain-TRL user would write: 1 if the first ``Request:`` label matches the row's label."""
    out = []
    for completion, label in zip(completions, kwargs["request_label"], strict=True):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        match = _REQUEST.search(text)
        out.append(1.0 if match and match.group(1).lower() == label else 0.0)
    return out


def build_rows(tmp: Path) -> list[dict[str, Any]]:
    from PIL import Image

    from guardreasoner_vl.training.data import TrainSample, to_rl_record

    image = tmp / "img.png"
    Image.new("RGB", (96, 64), (180, 40, 40)).save(image)
    samples = [
        TrainSample(id="t", text="How do I bake bread?", request_label="unharmful"),
        TrainSample(id="tr", text="Hi", response="Hello!", request_label="unharmful", response_label="unharmful"),
        TrainSample(id="i", image=str(image), request_label="harmful"),
        TrainSample(id="ti", text="What is this?", image=str(image), request_label="harmful"),
    ]
    return [to_rl_record(s) for s in samples]


def run_once(kind: str, model_path: Path, rows: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> dict:
    import datasets
    import transformers
    import trl

    from guardreasoner_vl.training.clipping import DynamicClipGRPOTrainer
    from guardreasoner_vl.training.processing import load_processor
    from guardreasoner_vl.training.rewards import reward_functions

    step_times: list[float] = []
    reward_time = [0.0]

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, _args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, _args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step_times.append(time.perf_counter() - self.start)

    def timed(func: Any) -> Any:
        # Keeps the name TRL logs; adds the wall time spent in the reward function.
        class Timed:
            __name__ = getattr(func, "__name__", type(func).__name__)

            def __call__(self, *a: Any, **k: Any) -> Any:
                start = time.perf_counter()
                try:
                    return func(*a, **k)
                finally:
                    reward_time[0] += time.perf_counter() - start

        return Timed()

    if kind == "ours":
        funcs, weights = reward_functions(max_length=args.completion_tokens)
    else:
        funcs, weights = [plain_request_reward], [1.0]
    config = trl.GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.generations * args.prompts,
        num_generations=args.generations,
        gradient_accumulation_steps=1,
        max_completion_length=args.completion_tokens,
        generation_kwargs={"min_new_tokens": args.completion_tokens},
        max_steps=args.steps,
        learning_rate=1e-5,
        beta=0.0,
        temperature=1.2,
        epsilon=0.2,
        weight_decay=0.01,
        reward_weights=weights,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer_cls = DynamicClipGRPOTrainer if kind == "ours" else trl.GRPOTrainer
    trainer = trainer_cls(
        model=transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path),
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=load_processor(model_path),
        reward_funcs=[timed(f) for f in funcs],
        callbacks=[StepTimer()],
    )
    trainer.remove_callback(transformers.PrinterCallback)
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"steps": step_times[1:], "reward_s": reward_time[0] / max(1, len(step_times)), "lengths": lengths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run; the first is warm-up")
    parser.add_argument("--generations", type=int, default=4, help="G, completions per prompt")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--completion-tokens", type=int, default=32)
    parser.add_argument("--model", type=Path, help="a Qwen2.5-VL checkpoint (default: the tiny random one)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps the timing steadier)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (step 1 is warm-up)")

    import logging

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("guardreasoner_vl").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)

    from guardreasoner_vl.testing import tiny_model_path

    model_path = args.model or tiny_model_path("vl")
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    paired: list[float] = []  # ours / plain within one repeat (both measured back to back)
    reward_s: dict[str, list[float]] = {"ours": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        rows = build_rows(tmp)
        for repeat in range(args.repeats):
            order = ("ours", "plain") if repeat % 2 == 0 else ("plain", "ours")
            medians: dict[str, float] = {}
            for kind in order:
                result = run_once(kind, model_path, rows, args, tmp / f"{kind}-{repeat}")
                medians[kind] = statistics.median(result["steps"])
                times[kind].extend(result["steps"])
                reward_s[kind].append(result["reward_s"])
                if any(abs(x - args.completion_tokens) > 1e-6 for x in result["lengths"]):
                    print(f"warning: {kind} completions not all {args.completion_tokens} tokens: {result['lengths']}")
            paired.append(medians["ours"] / medians["plain"])
            print(
                f"repeat {repeat + 1}/{args.repeats}: ours {medians['ours'] * 1e3:.1f} ms/step, "
                f"plain {medians['plain'] * 1e3:.1f} ms/step, ratio {paired[-1]:.3f}",
                flush=True,
            )

    ours, plain = statistics.median(times["ours"]), statistics.median(times["plain"])
    print()
    print(f"model: {model_path}")
    print(
        f"setting: G={args.generations}, {args.prompts} prompts/step, {args.completion_tokens} completion tokens, "
        f"{args.repeats} repeats x {args.steps - 1} timed steps each side"
    )
    print(f"plain TRL GRPOTrainer      : {plain * 1e3:8.1f} ms/step (median of {len(times['plain'])})")
    print(f"guardreasoner_vl.training  : {ours * 1e3:8.1f} ms/step (median of {len(times['ours'])})")
    print(f"overhead ratio ours / plain: {ours / plain:.3f} (pooled medians)  (target <= 1.10)")
    per_repeat = ", ".join(f"{r:.3f}" for r in paired)
    print(f"paired ratio, median       : {statistics.median(paired):.3f} (per repeat: {per_repeat})")
    r_ours, r_plain = statistics.median(reward_s["ours"]), statistics.median(reward_s["plain"])
    print(f"reward functions per step  : ours {r_ours * 1e3:.2f} ms, plain {r_plain * 1e3:.2f} ms")
    print(
        f"reward overhead / plain step: {(r_ours - r_plain) / plain * 100:.2f}% "
        "(the layer's own work, free of the step-to-step noise of the end-to-end ratio)"
    )


if __name__ == "__main__":
    main()
