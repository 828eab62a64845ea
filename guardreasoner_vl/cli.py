"""Command line: ``guardreasoner-vl moderate | demo | env`` and the commands other modules register.

Each further command lives beside the code it drives and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit
code). Those modules import nothing heavy at import time, so ``--help`` stays fast.

Conventions, the same for every command: ``--version``; ``-v``/``-vv`` before or after the command; every
``--help`` shows the defaults; bad input or a bad option prints one line ``error: ...`` and exits 2 (no
traceback; ``-vv`` shows it); ``moderate``'s text may be ``-`` to read it from stdin; inputs are checked
before a model is loaded.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import platform
import sys
from collections.abc import Sequence
from typing import Any

from guardreasoner_vl.errors import GuardError

__all__ = ["build_parser", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    "guardreasoner_vl.evaluation.cli",
    "guardreasoner_vl.server.cli",
    "guardreasoner_vl.batch",
    "guardreasoner_vl.training.cli",
)
"""Modules that add subcommands through ``register(subparsers)``."""


def add_guard_options(
    parser: argparse.ArgumentParser, *, default_model: str | None = None, threshold: bool = True
) -> None:
    """Options that build a :class:`~guardreasoner_vl.Guard` (shared by every command that runs one).

    ``threshold=False`` leaves out ``--threshold`` (for a command whose own ``--threshold`` means something else).
    """
    from guardreasoner_vl.prompts import DEFAULT_MODEL

    group = parser.add_argument_group("model")
    group.add_argument("--model", default=default_model or DEFAULT_MODEL, help="Hub id or checkpoint directory")
    group.add_argument("--backend", default="auto", help="auto | transformers | vllm | remote | fake (default: auto)")
    group.add_argument("--family", choices=["vl", "text"], help="force the model family")
    group.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    group.add_argument("--dtype", help="auto | bfloat16 | float16 | float32 (default: auto)")
    group.add_argument("--max-new-tokens", type=int, help="generation budget (default: 4096 VL, 2048 text)")
    group.add_argument("--batch-size", type=int, default=8, help="prompts per engine call (default: 8)")
    group.add_argument("--max-pixels", type=int, help="smart-resize upper bound in pixels (default: 16384*28*28)")
    group.add_argument(
        "--on-parse-error",
        choices=["flag", "allow", "raise"],
        default="flag",
        help="unparseable output policy",
    )
    if threshold:
        group.add_argument(
            "--threshold",
            dest="guard_threshold",
            metavar="T | request=T,response=T",
            help="flag by verdict score instead of by label: one value in [0, 1] for both tasks, or per task "
            "(default: none, the labels decide)",
        )
    group.add_argument(
        "--no-scores", action="store_true", help="do not ask the engine for the log-probabilities scores need"
    )
    group.add_argument(
        "--cache",
        metavar="PATH | memory",
        help="verdict cache: an SQLite file (shared by processes and runs) or 'memory' (this process); a result "
        "is reused only for the same model, engine, input and decoding settings (default: no cache)",
    )
    group.add_argument(
        "--backend-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra engine option (JSON value), e.g. --backend-option base_url='\"http://127.0.0.1:8000/v1\"'",
    )


def _check_backend_options(backend: str, options: dict[str, Any]) -> None:
    """Refuse an option the engine's constructor does not take (a typo would otherwise be a TypeError)."""
    from guardreasoner_vl.backends import FakeBackend, available_backend, load_backend_class
    from guardreasoner_vl.errors import InvalidInputError

    if not options:
        return
    name = available_backend() if backend == "auto" else backend
    cls = FakeBackend if name == "fake" else load_backend_class(name)
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = {p.name for p in parameters if p.kind in named} - {"self", "model"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InvalidInputError(
            f"unknown --backend-option {', '.join(map(repr, unknown))} for the {name} backend; "
            f"it takes: {', '.join(sorted(accepted)) or 'no options'}"
        )


def guard_from_args(args: argparse.Namespace) -> Any:
    """Build the :class:`~guardreasoner_vl.Guard` described by :func:`add_guard_options`."""
    from guardreasoner_vl import Guard

    model, kwargs = guard_kwargs_from_args(args)
    return Guard(model, **kwargs)


def guard_kwargs_from_args(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """``(model, Guard keyword arguments)`` described by :func:`add_guard_options`, checked, nothing loaded.

    The Ray runner ships these to its actors, each of which builds the same :class:`~guardreasoner_vl.Guard`.
    """
    from guardreasoner_vl.errors import InvalidInputError

    options: dict[str, Any] = {}
    for item in args.backend_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--backend-option takes KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    _check_backend_options(args.backend, options)
    limits = limits_from_args(args)
    threshold = parse_threshold(args.guard_threshold) if getattr(args, "guard_threshold", None) else None
    return args.model, {
        "backend": args.backend,
        "family": args.family,
        "device": args.device,
        "dtype": args.dtype,
        "max_new_tokens": args.max_new_tokens,
        "on_parse_error": args.on_parse_error,
        "scores": not getattr(args, "no_scores", False),
        "threshold": threshold,
        "limits": limits,
        "batch_size": args.batch_size,
        "backend_options": options,
        "cache": getattr(args, "cache", None) or None,
    }


def parse_threshold(value: str) -> float | dict[str, float]:
    """``--threshold``: ``0.3`` (both tasks) or ``request=0.3,response=0.5``.

    Raises:
        InvalidInputError: a value that is not a number, or an unknown task (the range is checked by ``Guard``).
    """
    from guardreasoner_vl.errors import InvalidInputError

    def number(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise InvalidInputError(f"--threshold takes numbers in [0, 1], got {text!r}") from None

    if "=" not in value:
        return number(value)
    out: dict[str, float] = {}
    for part in value.split(","):
        task, sep, amount = part.partition("=")
        if not sep or task.strip() not in ("request", "response"):
            raise InvalidInputError(f"--threshold takes T or request=T,response=T, got {value!r}")
        out[task.strip()] = number(amount)
    return out


def limits_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~guardreasoner_vl.inputs.InputLimits` the guard options ask for (None: the defaults)."""
    from guardreasoner_vl.inputs import InputLimits

    return InputLimits(max_pixels=args.max_pixels) if args.max_pixels else None


def print_result(result: Any, *, as_json: bool) -> None:
    """Print a :class:`~guardreasoner_vl.GuardResult` as JSON or as a readable panel."""
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    console = Console()
    table = Table(show_header=False, box=None)
    verdict = "[bold red]FLAGGED[/]" if result.flagged else "[bold green]ALLOWED[/]"
    table.add_row("verdict", verdict)
    table.add_row("request", result.request.value if result.request else "-")
    table.add_row("response", result.response.value if result.response else "-")
    if result.refusal is not None:
        table.add_row("refusal", result.refusal.value)
    scores = [
        f"{name} {value:.3f}"
        for name, value in (
            ("request", result.request_score),
            ("response", result.response_score),
            ("refusal", result.refusal_score),
        )
        if value is not None
    ]
    if scores:
        table.add_row("scores", ", ".join(scores) + "  (P(harmful); refusal: P(refusal))")
    table.add_row("status", result.status + (f" ({result.error})" if result.error else ""))
    usage = result.usage
    table.add_row(
        "usage",
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, {usage.latency_s * 1000:.0f} ms",
    )
    console.print(table)
    if result.reasoning:
        console.print(Panel(result.reasoning, title="reasoning", expand=False))


def _read_text(value: str | None) -> str | None:
    """``-`` reads the text from stdin (one trailing newline dropped)."""
    if value != "-":
        return value
    text = sys.stdin.read()
    return text[:-1] if text.endswith("\n") else text


def _checked_inputs(args: argparse.Namespace) -> tuple[str | None, Any]:
    """Text and image checked (image loaded and resized) before any model is loaded."""
    from guardreasoner_vl.errors import InvalidInputError
    from guardreasoner_vl.inputs import DEFAULT_LIMITS, prepare_image, validate_text

    limits = limits_from_args(args) or DEFAULT_LIMITS
    text = validate_text(_read_text(args.text), name="text", limits=limits)
    validate_text(args.response, name="response", limits=limits)
    images = args.image or None
    if text is None and images is None:
        raise InvalidInputError("give at least one of text and image (the text may be - to read it from stdin)")
    image = None if images is None else prepare_image(images[0] if len(images) == 1 else images, limits=limits)
    return text, image


def _cmd_moderate(args: argparse.Namespace) -> int:
    text, image = _checked_inputs(args)
    with guard_from_args(args) as guard:
        result = guard.moderate(text, image, response=args.response)
    print_result(result, as_json=args.json)
    return 1 if result.flagged and args.exit_code else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from guardreasoner_vl import Guard
    from guardreasoner_vl.testing import tiny_model_path

    if args.serve:
        return _demo_serve(args)
    print(
        "DEMO: a tiny model with UNTRAINED random weights, built offline. Its verdicts mean nothing; "
        "it shows the pipeline end to end (expect status=parse_error, flagged by the fail-closed policy).",
        file=sys.stderr,
    )
    path = tiny_model_path(args.family, tokenizer="bpe")
    with Guard(path, backend="transformers", max_new_tokens=args.max_new_tokens, device="cpu") as guard:
        result = guard.moderate(args.text, args.image, response=args.response)
    print_result(result, as_json=args.json)
    return 0


def _demo_serve(args: argparse.Namespace) -> int:
    """``demo --serve``: the server with the playground on 127.0.0.1, on a tiny model trained to write verdicts."""
    from guardreasoner_vl import Guard
    from guardreasoner_vl.server import ServerSettings
    from guardreasoner_vl.server.app import create_app
    from guardreasoner_vl.server.runner import run_server
    from guardreasoner_vl.testing import tiny_verdict_model_path

    print(
        "DEMO: a tiny model trained for a few seconds on eight examples (guardreasoner_vl.testing.verdict_examples), "
        "built offline and cached. It writes parseable verdicts and scores, which mean nothing beyond those "
        "examples. Building it the first time takes a minute.",
        file=sys.stderr,
    )
    path = tiny_verdict_model_path(args.family)
    guard = Guard(path, backend="transformers", max_new_tokens=max(args.max_new_tokens, 64), device="cpu")
    app = create_app(guard, settings=ServerSettings(playground=True))
    print(f"playground: http://127.0.0.1:{args.port}/  (Ctrl-C stops it)", file=sys.stderr, flush=True)
    run_server(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from importlib import metadata

    import guardreasoner_vl

    info: dict[str, Any] = {
        "guardreasoner-vl": guardreasoner_vl.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for dist in (
        "torch",
        "transformers",
        "accelerate",
        "vllm",
        "trl",
        "peft",
        "openai",
        "langchain",
        "fastapi",
    ):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        info["device"] = 'unknown (torch not installed: pip install "guardreasoner-vl[transformers]")'
    from guardreasoner_vl.backends import available_backend

    info["auto_backend"] = available_backend()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>18}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full ``guardreasoner-vl`` argument parser."""
    from guardreasoner_vl import __version__

    parser = argparse.ArgumentParser(
        prog="guardreasoner-vl",
        description="Reasoning-based safety verdicts for text, images and AI responses (GuardReasoner-VL).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    moderate = sub.add_parser("moderate", help="judge one request (text, image or both) and optional response")
    moderate.add_argument("text", nargs="?", help="the user's request text (- reads it from stdin)")
    moderate.add_argument("--image", action="append", help="image path/data URL (repeat to merge several)")
    moderate.add_argument("--response", help="the AI assistant's response to judge too")
    moderate.add_argument("--json", action="store_true", help="print the full result as JSON")
    moderate.add_argument("--exit-code", action="store_true", help="exit with status 1 when flagged")
    add_guard_options(moderate)
    moderate.set_defaults(func=_cmd_moderate)

    demo = sub.add_parser("demo", help="run the pipeline offline on a tiny UNTRAINED model (no download)")
    demo.add_argument("text", nargs="?", default="How do I bake bread?", help="request text")
    demo.add_argument("--image", help="image path")
    demo.add_argument("--response", help="AI response to judge too")
    demo.add_argument("--family", choices=["vl", "text"], default="vl")
    demo.add_argument("--max-new-tokens", type=int, default=16)
    demo.add_argument("--json", action="store_true")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="serve the playground page on 127.0.0.1 instead (a tiny model trained to write verdicts)",
    )
    demo.add_argument("--port", type=int, default=8000, help="port for --serve")
    demo.set_defaults(func=_cmd_demo)

    env = sub.add_parser("env", help="print versions and the device found")
    env.add_argument("--json", action="store_true")
    env.set_defaults(func=_cmd_env)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    for command in sub.choices.values():  # the same conventions for every command, whoever registered it
        _conventions(command)
    return parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already states one or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _conventions(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    for child in parser._subparsers._group_actions if parser._subparsers else ():  # nested commands
        for nested in getattr(child, "choices", {}).values():
            _conventions(nested)
    if "-v" not in parser._option_string_actions:
        parser.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging (-vv for debug)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``guardreasoner-vl`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (GuardError, ValueError, OSError) as exc:  # bad input, a bad option, a missing file: one line
        if args.verbose >= 2:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
