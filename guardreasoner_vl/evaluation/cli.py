"""The ``guardreasoner-vl eval`` command.

Three ways to call it::

    # run a guard over benchmark files, save predictions, score them, write the report
    guardreasoner-vl eval --data path/to/benchmarks/ --model yueliu1999/GuardReasoner-VL-3B --output runs/vl3b

    # re-score existing predictions (<Benchmark>/generated_predictions.jsonl), no model needed
    guardreasoner-vl eval --predictions path/to/predictions/ --output runs/released-1b

    # compare two runs side by side (report folders, report.json files or predictions folders)
    guardreasoner-vl eval --compare runs/a runs/b --output runs/a-vs-b
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from guardreasoner_vl.errors import InvalidInputError

__all__ = ["register"]

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``eval`` subcommand."""
    from guardreasoner_vl.cli import add_guard_options

    parser = subparsers.add_parser(
        "eval",
        help="evaluate a guard on benchmarks, re-score prediction files, or compare two runs",
        description=(
            "Evaluate a guard the way the paper does. With --data, run the guard over benchmark files and score "
            "its predictions; with --predictions, score existing <Benchmark>/generated_predictions.jsonl files; "
            "with --compare, put two runs side by side. Writes report.md, report.json and PNG plots."
        ),
    )
    what = parser.add_argument_group("what to evaluate (one of)")
    what.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="PATH",
        help="benchmark file (.json authors' text/VL format, .jsonl ours) or a folder of them; repeatable",
    )
    what.add_argument("--predictions", metavar="DIR", help="folder of <Benchmark>/generated_predictions.jsonl")
    what.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="two report or predictions folders")
    opts = parser.add_argument_group("evaluation")
    opts.add_argument("--output", "-o", metavar="DIR", help="report folder (default: eval-results or eval-compare)")
    opts.add_argument(
        "--mode",
        choices=["strict", "reference", "both"],
        default="both",
        help="scoring: strict (project parser), reference (authors' scorer emulated) or both (default)",
    )
    opts.add_argument(
        "--reference-scorer",
        choices=["auto", "text", "vl"],
        default="auto",
        help="which authors' scorer reference mode emulates (default: auto, from the prompts)",
    )
    opts.add_argument("--only", action="append", metavar="NAME", help="only these benchmarks; repeatable")
    opts.add_argument(
        "--task",
        choices=["request", "response", "refusal"],
        help="task to score a --data file that is not a known benchmark for",
    )
    opts.add_argument("--limit", type=int, help="only the first N samples of each benchmark")
    opts.add_argument("--overwrite", action="store_true", help="start predictions over instead of resuming")
    opts.add_argument("--name", help="the run's name in reports (default: model id or folder name)")
    scored = parser.add_argument_group("verdict scores (used when the predictions carry request_score etc.)")
    scored.add_argument(
        "--threshold", type=float, default=0.5, help="also report F1 flagging rows with score >= this (default 0.5)"
    )
    scored.add_argument(
        "--target-fpr",
        type=float,
        default=0.01,
        help="report the lowest threshold whose false-positive rate is at most this (default 0.01)",
    )
    scored.add_argument(
        "--ece-bins", type=int, default=10, help="equal-width bins of the calibration error (default 10)"
    )
    opts.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    opts.add_argument("--no-progress", action="store_true", help="no progress bar")
    opts.add_argument("--json", action="store_true", help="print the report JSON instead of the tables")
    add_guard_options(parser, threshold=False)  # its --threshold is the score metrics' (labels are what is scored)
    from guardreasoner_vl.distributed.cli import add_ray_options

    add_ray_options(parser)
    parser.set_defaults(func=_cmd_eval)


def _modes(args: argparse.Namespace) -> list[Any]:
    return ["strict", "reference"] if args.mode == "both" else [args.mode]


def _score_options(args: argparse.Namespace) -> Any:
    from guardreasoner_vl.evaluation.probabilities import ScoreOptions

    return ScoreOptions(threshold=args.threshold, target_fpr=args.target_fpr, bins=args.ece_bins)


def _print_report(report: Any, written: dict[str, Path], *, as_json: bool) -> None:
    if as_json:
        print(report.to_json())
    else:
        for mode in report.modes:
            print(f"\n{mode} scoring")
            for task in report.tasks(mode):
                print(f"\n{task}:")
                print(report.paper_table(mode, task))
        print()
    for kind, path in written.items():
        print(f"wrote {kind}: {path}", file=sys.stderr)


def _load_run(path: str, args: argparse.Namespace) -> Any:
    from guardreasoner_vl.evaluation.report import REPORT_JSON, load_report
    from guardreasoner_vl.evaluation.runner import score_predictions_dir

    p = Path(path)
    if p.is_file() or (p / REPORT_JSON).is_file():
        return load_report(p)
    if p.is_dir():
        return score_predictions_dir(
            p,
            modes=_modes(args),
            reference_scorer=args.reference_scorer,
            only=args.only,
            score_options=_score_options(args),
        )
    raise InvalidInputError(f"{path}: neither a report (report.json) nor a predictions folder")


def _benchmarks(args: argparse.Namespace) -> list[Any]:
    from guardreasoner_vl.evaluation.loaders import discover_benchmarks, load_benchmark
    from guardreasoner_vl.evaluation.registry import find_benchmarks

    paths: list[Path] = []
    for item in args.data:
        p = Path(item)
        if p.is_dir():
            paths.extend(discover_benchmarks(p))
        elif p.is_file():
            paths.append(p)
        else:
            raise InvalidInputError(f"--data {item}: no such file or folder")
    if args.only:
        wanted = {s.name for n in args.only for s in find_benchmarks(n)}
        unknown = [n for n in args.only if not find_benchmarks(n)]
        if unknown:
            raise InvalidInputError(f"--only: unknown benchmark(s) {unknown}")
        paths = [p for p in paths if any(s.name in wanted for s in find_benchmarks(p.name))]
    if not paths:
        raise InvalidInputError("no benchmark files to run (check --data and --only)")
    return [load_benchmark(p, task=args.task) for p in paths]


def _run(args: argparse.Namespace, output: Path) -> Any:
    from guardreasoner_vl.cli import guard_from_args
    from guardreasoner_vl.evaluation.runner import evaluate

    benchmarks = _benchmarks(args)
    total = sum(min(len(b.samples), args.limit) if args.limit else len(b.samples) for b in benchmarks)
    options: dict[str, Any] = {
        "limit": args.limit,
        "batch_size": args.batch_size,
        "resume": not args.overwrite,
        "modes": _modes(args),
        "reference_scorer": args.reference_scorer,
        "name": args.name,
        "score_options": _score_options(args),
    }
    if args.ray:  # the generation on a pool of Ray actors; the scoring stays here
        from guardreasoner_vl.distributed.cli import eval_on_ray

        return eval_on_ray(args, benchmarks, output, options)
    with guard_from_args(args) as guard:
        if args.no_progress:
            return evaluate(guard, benchmarks, output, **options)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True)) as bar:
            handle = bar.add_task("evaluating", total=total)

            def progress(name: str, rows: int) -> None:
                bar.update(handle, advance=rows, description=name)

            return evaluate(guard, benchmarks, output, progress=progress, **options)


def _cmd_eval(args: argparse.Namespace) -> int:
    from guardreasoner_vl.evaluation.report import write_comparison, write_report
    from guardreasoner_vl.evaluation.runner import score_predictions_dir

    chosen = [bool(args.data), args.predictions is not None, args.compare is not None]
    if sum(chosen) != 1:
        raise InvalidInputError("give exactly one of --data, --predictions and --compare")
    from guardreasoner_vl.distributed.cli import check_ray_options

    if args.ray and not args.data:
        raise InvalidInputError("--ray runs a guard: it goes with --data (scoring and comparing run here)")
    check_ray_options(args)
    if args.limit is not None and args.limit < 1:
        raise InvalidInputError("--limit must be at least 1")
    if args.compare:
        output = Path(args.output or "eval-compare")
        a, b = (_load_run(p, args) for p in args.compare)
        written = write_comparison(a, b, output, plots=not args.no_plots)
        print(written["markdown"].read_text(encoding="utf-8"))
        for kind, path in written.items():
            print(f"wrote {kind}: {path}", file=sys.stderr)
        return 0
    output = Path(args.output or "eval-results")
    if args.predictions is not None:
        report = score_predictions_dir(
            args.predictions,
            modes=_modes(args),
            reference_scorer=args.reference_scorer,
            only=args.only,
            name=args.name,
            score_options=_score_options(args),
        )
    else:
        report = _run(args, output)
    written = write_report(report, output, plots=not args.no_plots)
    _print_report(report, written, as_json=args.json)
    return 0
