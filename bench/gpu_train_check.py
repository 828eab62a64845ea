"""GPU check of the training layer: R-SFT and GRPO steps on a random-weight Qwen2.5-VL of the real 3B shape.

A prepared script for a machine with a CUDA GPU (not a test; nothing here runs in CI). It builds a checkpoint
with Qwen2.5-VL-3B's architecture (36 layers, hidden 2048, 16/2 heads, 32-block vision tower, vocabulary
151,936) and random weights, using the tiny test tokenizer (no download), then runs through our layer:

1. ``run_sft``: a few R-SFT steps (full fine-tuning, fp32 master weights, bf16 autocast, gradient
   checkpointing, vision tower frozen, image rows at the 768x768 cap);
2. ``run_rl``: a few GRPO steps (G rollouts with transformers generation, length-aware reward, dynamic
   clipping, vision tower trained).

It prints one JSON object: seconds per optimizer step (first step apart: it includes warm-up) and the peak GPU
memory of each stage. Weights are random, so losses and rewards mean nothing.

Usage (about 5-8 minutes on one H100/H200, most of it building and saving the 3B checkpoint)::

    python bench/gpu_train_check.py                      # 3B shape
    python bench/gpu_train_check.py --size 7b --model-dtype bfloat16
    python bench/gpu_train_check.py --size tiny --cpu    # smoke test of the script itself (CPU, seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHAPES: dict[str, dict[str, Any]] = {
    # Qwen2.5-VL-3B-Instruct
    "3b": {
        "text": {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "mrope_section": [16, 24, 24],
            "tie_word_embeddings": True,
        },
        "vision_out": 2048,
    },
    # Qwen2.5-VL-7B-Instruct
    "7b": {
        "text": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "mrope_section": [16, 24, 24],
            "tie_word_embeddings": False,
        },
        "vision_out": 3584,
    },
}
VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "in_chans": 3,
    "tokens_per_second": 2,
}


def build_checkpoint(path: Path, size: str, device: str) -> Path:
    """Write a random-weight checkpoint of the given shape (tiny tokenizer and processor files)."""
    import torch
    import transformers

    from guardreasoner_vl.testing import build_tiny_vl_model

    build_tiny_vl_model(path)
    if size == "tiny":
        return path
    shape = SHAPES[size]
    config = json.loads((path / "config.json").read_text())
    text = dict(shape["text"])
    section = text.pop("mrope_section")
    tie = text.pop("tie_word_embeddings")
    for holder in (config, config.get("text_config") or {}):
        holder.update(text)
        holder["vocab_size"] = 151936
        holder.pop("layer_types", None)  # per-layer list of the tiny model; rebuilt for the new depth
        holder["max_position_embeddings"] = 128000
        for key in ("rope_scaling", "rope_parameters"):
            if isinstance(holder.get(key), dict):
                holder[key]["mrope_section"] = section
    config["tie_word_embeddings"] = tie
    if isinstance(config.get("text_config"), dict):
        config["text_config"]["tie_word_embeddings"] = tie
    config["vision_config"].update(VISION, out_hidden_size=shape["vision_out"])
    cfg = transformers.Qwen2_5_VLConfig.from_dict(config)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.Qwen2_5_VLForConditionalGeneration(cfg).to(torch.bfloat16)
    model.save_pretrained(str(path), safe_serialization=True)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache() if device.startswith("cuda") else None
    print(f"built a random {size} Qwen2.5-VL ({n_params / 1e9:.2f}B parameters) in {path}", file=sys.stderr)
    return path


def write_rows(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(8):
        record: dict[str, Any] = {
            "id": f"r{i}",
            "request_label": "harmful" if i % 2 else "unharmful",
            "reasoning": "Step one. Step two. " * 40,  # ~200 tokens of target
        }
        if i % 4 != 3:
            record["text"] = f"Request number {i}: " + "please describe this in detail. " * 20
        if i % 2 == 0 or "text" not in record:
            Image.new("RGB", (640, 480), (40 * i % 255, 90, 160)).save(folder / f"img{i}.png")
            record["image"] = f"img{i}.png"
        if i % 3 == 0:
            record["response"] = "Here is an answer. " * 10
            record["response_label"] = "unharmful"
        rows.append(record)
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class StepTimer:
    """A TrainerCallback recording the wall time of every optimizer step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                timer.start = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                timer.steps.append(time.perf_counter() - timer.start)

        self.start = 0.0
        self.steps: list[float] = []
        self.callback = _Callback()

    def summary(self) -> dict[str, Any]:
        rest = self.steps[1:] or self.steps
        return {
            "steps": len(self.steps),
            "first_step_s": round(self.steps[0], 3) if self.steps else None,
            "mean_step_s_after_first": round(sum(rest) / len(rest), 3) if rest else None,
            "step_s": [round(s, 3) for s in self.steps],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["3b", "7b", "tiny"], default="3b")
    parser.add_argument("--cpu", action="store_true", help="run on CPU (only sensible with --size tiny)")
    parser.add_argument("--model-dtype", default="float32", help="weights being trained: float32 (default) or bfloat16")
    parser.add_argument("--sft-steps", type=int, default=4)
    parser.add_argument("--rl-steps", type=int, default=3)
    parser.add_argument("--generations", type=int, default=4, help="GRPO group size G")
    parser.add_argument("--completion-tokens", type=int, default=256)
    parser.add_argument("--workdir", help="where to build the checkpoint (default: a temporary folder)")
    args = parser.parse_args()

    import torch

    from guardreasoner_vl.training.config import load_config
    from guardreasoner_vl.training.rl import run_rl
    from guardreasoner_vl.training.sft import run_sft

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and args.size != "tiny":
        print("no CUDA GPU: use --size tiny --cpu to smoke-test the script", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="grvl-gpu-check-"))
    results: dict[str, Any] = {
        "size": args.size,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "model_dtype": args.model_dtype,
    }
    start = time.perf_counter()
    model = build_checkpoint(work / "model", args.size, "cuda" if cuda else "cpu")
    results["build_s"] = round(time.perf_counter() - start, 1)
    data = write_rows(work / "data")
    common = [
        f"model_dtype={args.model_dtype}",
        "trl.report_to=none",
        "trl.logging_steps=1",
        f"trl.use_cpu={'false' if cuda else 'true'}",
        f"bf16={'true' if cuda else 'false'}",
        "save_final_model=false",
    ]

    timer = StepTimer()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sft_cfg = load_config(
        None,
        "sft",
        [
            *common,
            f"model={model}",
            f"data={data}",
            f"output_dir={work / 'sft'}",
            f"trl.max_steps={args.sft_steps}",
            "trl.per_device_train_batch_size=2",
            "global_batch_size=2",
            "trl.save_steps=100000",
        ],
    )
    sft = run_sft(sft_cfg, callbacks=[timer.callback])
    results["sft"] = {
        **timer.summary(),
        "global_step": sft.global_step,
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "train_loss": sft.metrics.get("train_loss"),
    }
    print(json.dumps({"sft": results["sft"]}), file=sys.stderr)

    import gc

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer()
    rl_cfg = load_config(
        None,
        "rl",
        [
            *common,
            f"model={model}",
            f"data={data}",
            f"output_dir={work / 'rl'}",
            f"trl.max_steps={args.rl_steps}",
            f"trl.num_generations={args.generations}",
            f"trl.per_device_train_batch_size={args.generations}",
            "rollout_batch_size=1",
            "actor_batch_size=1",
            f"trl.max_completion_length={args.completion_tokens}",
            "trl.save_steps=100000",
        ],
    )
    rl = run_rl(rl_cfg, callbacks=[timer.callback])
    results["rl"] = {
        **timer.summary(),
        "global_step": rl.global_step,
        "generations_per_step": args.generations,
        "completion_tokens_max": args.completion_tokens,
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "clip_bounds": [round(low, 4) for _, low, _ in rl.clip_history],
    }
    results["total_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
