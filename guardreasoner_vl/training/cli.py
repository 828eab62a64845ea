"""``guardreasoner-vl train sft|mine|augment|rl --config FILE [KEY=VALUE ...]``.

Each subcommand loads the stage's YAML config (:func:`guardreasoner_vl.training.config.load_config`),
applies ``KEY=VALUE`` overrides (dotted keys for nested sections, values read as YAML), runs the stage and
prints a JSON summary on stdout. Logs go to stderr (INFO by default; ``-q`` for warnings only); the
trainers show TRL's progress bar and write TensorBoard logs to ``<output_dir>/runs`` unless
``report_to=none``; mining shows a progress bar per pass. Nothing heavy is imported until a command runs,
so ``--help`` is fast.

Multi-GPU: launch the same command with accelerate, e.g.
``accelerate launch --config_file training/accelerate/multi_gpu.yaml -m guardreasoner_vl.cli train sft --config ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

_STAGES = {
    "sft": (
        "stage 1, R-SFT: supervised fine-tuning on reasoning + result targets (TRL SFTTrainer)",
        "paper defaults: lr 5e-5 cosine, no warmup, 3 epochs, global batch 192, cutoff 2048 tokens, bf16 on GPU, "
        "grad clip 1.0, images capped at 768x768, vision tower and projector frozen; finetuning=full|lora. "
        "TRL's own settings under trl. (trl.learning_rate=1e-5). Ablation: targets=label_only.",
    ),
    "mine": (
        "hard-sample mining: k sampled passes of a model, keep the samples wrong in every pass (resumable)",
        "paper defaults: 4 passes, temperature 1.0, top_p 0.95. Any Guard backend (backend=vllm for speed). "
        "Writes pass-<k>.jsonl, hard.jsonl and report.json to output_dir; rerun to resume.",
    ),
    "augment": (
        "safety-aware concatenation: merge pairs of hard samples into the RL set",
        "paper defaults: merged samples are 20% of the RL set (ratio=0.2); texts joined with a space, images "
        "side by side (white padding) fit in 1024x1024, labels OR-combined; RL set of total=12000 rows "
        "(9,600 hard + 2,400 merged). Ablation: ratio=0 (no concatenation).",
    ),
    "rl": (
        "stage 2, GRPO with the length-aware safety reward and dynamic clipping (TRL GRPOTrainer)",
        "paper defaults: G=16, temperature 1.2, lr 1e-6 constant, weight decay 1e-2, no KL, max completion 3072, "
        "1 epoch, eps 0.2 dynamic clipping, reward beta 1 (eco=true: 1/6) with length in characters "
        "(length_unit=chars), rollout batch 512 / actor batch 256 prompts, images in [512x512, 2048x2048], vision "
        "tower trained; trl.use_vllm=true for vLLM rollouts. Ablations: reward=safety, dynamic_clipping=false.",
    ),
}


def register(subparsers: Any) -> None:
    """Add the ``train`` command and its ``sft``, ``mine``, ``augment`` and ``rl`` subcommands."""
    train = subparsers.add_parser(
        "train",
        help="train a guard: sft | mine | augment | rl (the GuardReasoner-VL recipe on TRL)",
        description="Reproduce GuardReasoner-VL or train your own guard. Each stage reads a YAML config "
        "(recipes in training/ of the repository) and KEY=VALUE overrides.",
    )
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (summary, details) in _STAGES.items():
        parser = stages.add_parser(
            name,
            help=summary,
            description=f"{summary}.\n\n{details}",
            epilog="Overrides: KEY=VALUE, values read as YAML, dotted keys for nested sections, e.g. "
            "learning_rate=1e-5 lora.r=32 report_to=[none] data=[a.jsonl,b.jsonl].",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("--config", "-c", metavar="FILE", help="YAML config of the stage")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
        parser.add_argument(
            "--print-config", action="store_true", help="print the resolved config as JSON and exit (no training)"
        )
        parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
        if name in ("sft", "rl"):
            parser.add_argument(
                "--resume",
                action="store_true",
                help="resume from the last checkpoint-N in output_dir (same as resume_from_checkpoint=true)",
            )
        parser.set_defaults(func=_run)


def _setup_logging(quiet: bool, verbose: int) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    for name in ("guardreasoner_vl", "trl", "transformers.trainer"):
        logging.getLogger(name).setLevel(level)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _mining_progress(quiet: bool) -> Any:
    if quiet or not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    tasks: dict[int, Any] = {}

    def update(pass_index: int, done: int, total: int) -> None:
        if pass_index not in tasks:
            tasks[pass_index] = progress.add_task(f"pass {pass_index}", total=total)
        progress.update(tasks[pass_index], completed=done)

    return progress, update


def _run(args: argparse.Namespace) -> int:
    from guardreasoner_vl.training.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "resume", False):
        overrides.append("resume_from_checkpoint=true")
    config = load_config(args.config, args.stage, overrides)
    if args.print_config:
        print(config.model_dump_json(indent=2))
        return 0
    _setup_logging(args.quiet, getattr(args, "verbose", 0))
    # stdout carries only the JSON summary; the trainers' own prints (metrics dicts) go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        summary = _stage(args, config)
    print(json.dumps(summary, indent=2))
    return 0


def _stage(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    summary: dict[str, Any]
    if args.stage in ("sft", "rl"):
        if args.stage == "sft":
            from guardreasoner_vl.training.sft import run_sft

            result = run_sft(config)
        else:
            from guardreasoner_vl.training.rl import run_rl

            result = run_rl(config)
        fields = {
            "stage": args.stage,
            "output_dir": result.output_dir,
            "final_model": result.final_model,
            "global_step": result.global_step,
            "num_samples": result.num_samples,
            "dropped": result.dropped,
            "resumed_from": result.resumed_from,
        }
        if args.stage == "rl":
            fields["clip_total_steps"] = result.clip_total
        summary = _jsonable({**fields, "metrics": result.metrics})
    elif args.stage == "mine":
        from guardreasoner_vl.training.mining import run_mining

        progress, update = _mining_progress(args.quiet)
        if progress is not None:
            with progress:
                report = run_mining(config, progress=update)
        else:
            report = run_mining(config)
        summary = _jsonable({"stage": "mine", "output_dir": report.output_dir, **report.counts()})
    else:
        from guardreasoner_vl.training.mining import run_augment

        summary = _jsonable({"stage": "augment", **run_augment(config)})
    return summary
