"""The ``--ray`` options of ``moderate-file`` and ``eval``, and what they run.

Progress is Ray Data's own (rows done and rows/s per operator; ``--no-progress`` turns it off); the closing
summary is the command's, in the same words as the one-process run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from guardreasoner_vl.errors import InvalidInputError

__all__ = ["add_ray_options", "check_ray_options", "eval_on_ray", "moderate_file_on_ray"]

_RAY_ONLY = {
    "address": None,
    "replicas": 1,
    "gpus_per_replica": 0.0,
    "cpus_per_replica": 1.0,
    "block_rows": None,
    "input_format": None,
    "output_format": None,
}


def add_ray_options(parser: argparse.ArgumentParser, *, formats: bool = False) -> None:
    """Add ``--ray`` and the actor pool's options to a command."""
    group = parser.add_argument_group(
        'Ray (a pool of actors, each loading the guard once; needs pip install "guardreasoner-vl[ray]")'
    )
    group.add_argument("--ray", action="store_true", help="run on a Ray cluster (a local one when no --address)")
    group.add_argument(
        "--address",
        help="Ray cluster to join: auto (the one started with 'ray start'), ray://HEAD:10001, HOST:6379 "
        "(default: RAY_ADDRESS, else a new local cluster)",
    )
    group.add_argument("--replicas", type=int, default=1, help="actors, each loading one guard")
    group.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs each actor reserves")
    group.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs each actor reserves")
    group.add_argument(
        "--block-rows", type=int, help="rows per block, the unit of work and of commit (default: 4 x --batch-size)"
    )
    if formats:
        group.add_argument(
            "--input-format", choices=["jsonl", "parquet"], help="default: from the name (.parquet, .pq)"
        )
        group.add_argument(
            "--output-format", choices=["jsonl", "parquet"], help="default: from the name (.parquet, .pq)"
        )


def check_ray_options(args: argparse.Namespace) -> None:
    """Refuse a Ray option given without ``--ray`` (it would be silently ignored)."""
    if getattr(args, "ray", False):
        return
    given = [name for name, default in _RAY_ONLY.items() if getattr(args, name, default) != default]
    if given:
        shown = ", ".join("--" + name.replace("_", "-") for name in given)
        raise InvalidInputError(f"{shown} only apply with --ray")


def _spec(args: argparse.Namespace) -> Any:
    from guardreasoner_vl.cli import guard_kwargs_from_args
    from guardreasoner_vl.distributed.spec import GuardSpec

    model, options = guard_kwargs_from_args(args)
    spec = GuardSpec(model, **options)
    if getattr(args, "allow_image_urls", False):
        spec = spec.with_options(allow_urls=True)
    return spec


def moderate_file_on_ray(args: argparse.Namespace) -> int:
    """``moderate-file ... --ray``."""
    from guardreasoner_vl.batch import report_summary
    from guardreasoner_vl.distributed.moderate import moderate_dataset

    summary = moderate_dataset(
        _spec(args),
        args.input,
        args.output,
        replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
        block_rows=args.block_rows,
        input_format=args.input_format,
        output_format=args.output_format,
        overwrite=args.overwrite,
        retry_errors=args.retry_errors,
        skip_invalid=args.skip_invalid,
        address=args.address,
        progress=False if args.no_progress else None,
    )
    notes = []
    if summary.duplicates:
        notes.append(f"{summary.parts}: {summary.duplicates} row(s) found twice; each input row kept one")
    where = f" on {summary.replicas} Ray actor(s); parts in {summary.parts}"
    return report_summary(summary, as_json=args.json, where=where, notes=notes)


def eval_on_ray(args: argparse.Namespace, benchmarks: list[Any], output: Path, options: dict[str, Any]) -> Any:
    """``eval --data ... --ray``: the report of :func:`~guardreasoner_vl.distributed.evaluate_on_ray`."""
    from guardreasoner_vl.distributed.evaluate import evaluate_on_ray

    options = {k: v for k, v in options.items() if k != "batch_size"}  # the spec's batch size is the one used
    return evaluate_on_ray(
        _spec(args),
        benchmarks,
        output,
        replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
        block_rows=args.block_rows,
        address=args.address,
        progress=False if args.no_progress else None,
        **options,
    )
