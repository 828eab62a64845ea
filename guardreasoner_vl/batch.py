"""Moderate a JSONL file, resumably: ``guardreasoner-vl moderate-file in.jsonl -o out.jsonl``.

Input: one JSON object per line with ``id`` (a string or an integer, unique), ``text``, and optionally
``image`` (a path -- relative paths are read from the input file's folder --, a ``data:`` URL, an ``http(s)``
URL when URLs are allowed, or a list of those, merged side by side) and ``response`` (the AI's answer to
judge as well). Other keys are ignored. Blank lines are skipped.

Output: one JSON object per input row, in input order: ``{"id": ..., **GuardResult}`` (``flagged``,
``request``, ``response``, ``refusal``, ``status``, ``error``, ``reasoning``, ``raw_output``, ``model``,
``usage``, ``judged``). A row that cannot be judged is recorded, never dropped: ``status`` is
``invalid_input`` (bad text or image), ``parse_error`` or ``engine_error``, and ``error`` says why.

Guarantees:

* **Checked before starting.** Lines that are not JSON objects, missing or ill-typed ids and duplicate ids
  (``1`` and ``"1"`` count as the same id) stop the job before any work, with every problem listed.
* **Durable per batch.** Each batch's rows are appended as whole lines, then flushed and fsync'ed; a crash
  can leave at most one torn last line, which the next run cuts off.
* **Resumable.** Run the same command again after a crash or ``kill -9``: ids already in the output are
  skipped and the rest are judged, so in the end every input row is in the output exactly once. If the
  output is not in input order (the input was reordered, or ``retry_errors`` redid rows), it is rewritten
  in input order at the end (atomically: temporary file, fsync, rename).
* **One writer.** An advisory lock (POSIX) stops a second job from writing the same output file.

Example:
    >>> from guardreasoner_vl import Guard
    >>> from guardreasoner_vl.batch import moderate_file
    >>> summary = moderate_file(Guard(backend="fake"), "in.jsonl", "out.jsonl")  # doctest: +SKIP
    >>> summary.written, summary.by_status                                      # doctest: +SKIP
    (3, {'ok': 3})
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from guardreasoner_vl.errors import InvalidInputError, ParseError
from guardreasoner_vl.types import GuardResult

__all__ = ["BatchSummary", "moderate_file", "register", "scan_input"]

logger = logging.getLogger(__name__)

_MAX_PROBLEMS = 20


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What one :func:`moderate_file` run did.

    Attributes:
        total: rows in the input.
        skipped: rows already in the output from an earlier run (not judged again).
        written: rows judged and written by this run.
        by_status: rows written by this run, per result status (``ok``, ``parse_error`` ...).
        flagged: rows written by this run with ``flagged=True``.
        retried: rows with ``engine_error`` removed from the output to be judged again (``retry_errors``).
        reordered: whether the output was rewritten in input order at the end.
        elapsed_s: wall time of the run.
        output: the output file.
    """

    total: int
    skipped: int
    written: int
    by_status: dict[str, int] = field(default_factory=dict)
    flagged: int = 0
    retried: int = 0
    reordered: bool = False
    elapsed_s: float = 0.0
    output: str = ""


def _key(value: Any) -> str | None:
    """The identity of an id (``1`` and ``"1"`` are the same), or None when it is not a valid id."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return str(value)


def _lines(handle: IO[bytes]) -> Iterator[tuple[int, int, int, bytes]]:
    """(line number, byte offset, byte length with the newline, line without its newline) of every line.

    The last line has no newline when it is torn: then ``length == len(line)``.
    """
    offset = 0
    for number, raw in enumerate(handle, start=1):
        yield number, offset, len(raw), raw.rstrip(b"\r\n")
        offset += len(raw)


def scan_input(path: str | os.PathLike[str]) -> list[str]:
    """Check an input file and return the keys of its ids, in order.

    Raises:
        InvalidInputError: listing every line that is not a JSON object with a valid, unique ``id``.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"input file not found: {path}")
    keys: list[str] = []
    first_line: dict[str, int] = {}
    problems: list[str] = []
    with path.open("rb") as handle:
        for number, _, _, raw in _lines(handle):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError as exc:
                problems.append(f"line {number}: not valid JSON ({exc})")
                continue
            if not isinstance(row, dict):
                problems.append(f"line {number}: a row must be a JSON object, got {type(row).__name__}")
                continue
            if "id" not in row:
                problems.append(f"line {number}: no 'id'")
                continue
            key = _key(row["id"])
            if key is None:
                problems.append(f"line {number}: 'id' must be a non-empty string or an integer, got {row['id']!r:.60}")
                continue
            if key in first_line:
                problems.append(f"line {number}: duplicate id {row['id']!r:.60} (first on line {first_line[key]})")
                continue
            first_line[key] = number
            keys.append(key)
    if problems:
        more = f"\n  ... and {len(problems) - _MAX_PROBLEMS} more" if len(problems) > _MAX_PROBLEMS else ""
        raise InvalidInputError(
            f"{path}: {len(problems)} problem(s) in the input, nothing was judged:\n  "
            + "\n  ".join(problems[:_MAX_PROBLEMS])
            + more
        )
    return keys


@dataclass(slots=True)
class _Output:
    """What an existing output file holds: ids in file order and where each line is."""

    keys: list[str] = field(default_factory=list)
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/filesystem allows it
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _recover_output(path: Path, input_keys: set[str]) -> _Output:
    """Cut a torn last line off ``path`` and index its rows.

    Raises:
        InvalidInputError: a complete line is not a row of ours, an id is not in the input, or repeats.
    """
    out = _Output()
    if not path.exists():
        return out
    with path.open("r+b") as handle:
        good_end = 0
        for number, offset, length, raw in _lines(handle):
            if length == len(raw):
                break  # no newline: a torn last line, cut off below
            line_end = offset + length
            if not raw.strip():
                good_end = line_end
                continue
            try:
                row = json.loads(raw)
                key = _key(row["id"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInputError(
                    f"{path}, line {number}: not a row written by moderate-file ({exc}); "
                    "use another output file, or --overwrite to start again"
                ) from None
            if key is None or key not in input_keys:
                raise InvalidInputError(
                    f"{path}, line {number}: id {row.get('id')!r:.60} is not in the input; this output belongs to "
                    "another input. Use another output file, or --overwrite to start again"
                )
            if key in out.spans:
                raise InvalidInputError(f"{path}, line {number}: id {row['id']!r:.60} appears twice in the output")
            out.keys.append(key)
            out.spans[key] = (offset, line_end - offset)
            out.statuses[key] = str(row.get("status", ""))
            good_end = line_end
        size = handle.seek(0, os.SEEK_END)
        if size > good_end:
            logger.warning(
                "%s: cutting off a torn last line (%d bytes) left by an interrupted run", path, size - good_end
            )
            handle.truncate(good_end)
            handle.flush()
            os.fsync(handle.fileno())
    return out


def _rewrite(path: Path, order: list[str], spans: dict[str, tuple[int, int]]) -> None:
    """Write the lines of ``order`` (read from ``path`` at ``spans``) to ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with path.open("rb") as src, tmp.open("wb") as dst:
        for key in order:
            offset, length = spans[key]
            src.seek(offset)
            dst.write(src.read(length))
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _resolve_image(value: Any, base: Path) -> Any:
    if isinstance(value, list):
        return [_resolve_image(v, base) for v in value]
    if isinstance(value, str) and value and not value.startswith(("data:", "http://", "https://")):
        if "://" in value[:16]:
            return value  # an unsupported scheme: the guard says so
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)
    return value


def _row_line(row_id: Any, result: GuardResult) -> bytes:
    data = {"id": row_id, **result.model_dump(mode="json")}
    text = json.dumps(data, ensure_ascii=False)
    # Keep each row on one line for every reader: U+2028/U+2029 split lines in some (str.splitlines).
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return (text + "\n").encode("utf-8")


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an advisory lock on ``.<name>.lock`` beside ``path`` (POSIX; no lock elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock
        yield
        return
    lock_path = path.with_name(f".{path.name}.lock")
    with lock_path.open("ab") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InvalidInputError(f"another moderate-file job is writing {path}; wait for it or stop it") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock_path.unlink()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def moderate_file(
    guard: Any,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    batch_size: int = 16,
    overwrite: bool = False,
    retry_errors: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """Judge every row of a JSONL file into another, resumably (see the module docs).

    Args:
        guard: the :class:`~guardreasoner_vl.Guard` that judges.
        input_path: the input JSONL.
        output_path: the output JSONL; if it exists, the run resumes it (ids already there are skipped).
        batch_size: rows per engine call, and per durable write.
        overwrite: start again: empty the output first.
        retry_errors: judge again the rows the output holds with ``status="engine_error"``.
        on_start: called once before judging with ``(rows in the input, rows already done)``.
        on_batch: called after each durable write with ``(rows written so far, rows flagged so far)``.

    Returns:
        A :class:`BatchSummary`.

    Raises:
        InvalidInputError: a bad input file (nothing is judged), or an output that does not belong to it.
    """
    if batch_size < 1:
        raise InvalidInputError("batch_size must be at least 1")
    start = time.perf_counter()
    source = Path(input_path)
    target = Path(output_path)
    if target.exists() and source.exists() and os.path.samefile(source, target):
        raise InvalidInputError("the output file must not be the input file")
    keys = scan_input(source)
    key_set = set(keys)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target):
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a run killed while rewriting
            with contextlib.suppress(OSError):
                stale.unlink()
        if overwrite or not target.exists():
            with target.open("wb") as fresh:
                fresh.flush()
                os.fsync(fresh.fileno())
            _fsync_dir(target.parent)
        existing = _recover_output(target, key_set)
        retried = 0
        if retry_errors:
            redo = {k for k in existing.keys if existing.statuses.get(k) == "engine_error"}
            if redo:
                _rewrite(target, [k for k in existing.keys if k not in redo], existing.spans)
                retried = len(redo)
                existing = _recover_output(target, key_set)
        done = set(existing.spans)
        in_order = existing.keys == keys[: len(existing.keys)]
        if on_start is not None:
            on_start(len(keys), len(done))
        counts: Counter[str] = Counter()
        flagged = 0
        written = 0
        base = source.resolve().parent
        with target.open("ab") as out:

            def flush(batch: list[tuple[Any, dict[str, Any]]]) -> None:
                nonlocal flagged, written
                results = _judge(guard, [item for _, item in batch])
                data = b"".join(_row_line(row_id, r) for (row_id, _), r in zip(batch, results, strict=True))
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
                for r in results:
                    counts[r.status] += 1
                    flagged += int(r.flagged)
                written += len(batch)
                if on_batch is not None:
                    on_batch(written, flagged)

            batch: list[tuple[Any, dict[str, Any]]] = []
            with source.open("rb") as handle:
                for _, _, _, raw in _lines(handle):
                    if not raw.strip():
                        continue
                    row = json.loads(raw)
                    if str(row["id"]) in done:
                        continue
                    item = {
                        "text": row.get("text"),
                        "image": _resolve_image(row.get("image"), base),
                        "response": row.get("response"),
                    }
                    batch.append((row["id"], item))
                    if len(batch) >= batch_size:
                        flush(batch)
                        batch = []
            if batch:
                flush(batch)
        reordered = False
        if not in_order:
            final = _recover_output(target, key_set)
            if final.keys != keys:
                _rewrite(target, [k for k in keys if k in final.spans], final.spans)
                reordered = True
    return BatchSummary(
        total=len(keys),
        skipped=len(done),
        written=written,
        by_status=dict(counts),
        flagged=flagged,
        retried=retried,
        reordered=reordered,
        elapsed_s=round(time.perf_counter() - start, 3),
        output=str(target),
    )


def _judge(guard: Any, items: list[dict[str, Any]]) -> list[GuardResult]:
    """One engine call; never raises for one batch's failure (every row records it instead)."""
    try:
        return list(guard.moderate_batch(items))
    except ParseError as exc:  # on_parse_error="raise": the results are all there
        if exc.results is not None:
            return list(exc.results)
        message = str(exc)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        logger.exception("a batch of %d row(s) failed", len(items))
        message = f"{type(exc).__name__}: {exc}"
    model = str(getattr(guard, "model_id", ""))
    return [GuardResult(flagged=True, status="engine_error", error=message, model=model) for _ in items]


# -- command line ------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``moderate-file`` to the ``guardreasoner-vl`` parser."""
    from guardreasoner_vl.cli import add_guard_options

    parser = subparsers.add_parser(
        "moderate-file",
        help="judge every row of a JSONL file (resumable: run it again to continue)",
        description="Judge each row {id, text, image?, response?} of a JSONL file into an output JSONL, one row "
        "per input row, in order. Interrupted? Run the same command again: finished ids are skipped.",
    )
    parser.add_argument("input", help="input JSONL (rows with id, text, optional image and response)")
    parser.add_argument("-o", "--output", required=True, help="output JSONL (resumed when it exists)")
    parser.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    parser.add_argument("--retry-errors", action="store_true", help="judge again rows that failed with engine_error")
    parser.add_argument("--allow-image-urls", action="store_true", help="download http(s) image URLs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_guard_options(parser)
    parser.set_defaults(func=_cmd_moderate_file)


def _cmd_moderate_file(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from guardreasoner_vl.cli import guard_from_args

    keys = scan_input(args.input)  # fail fast, before loading a model
    with guard_from_args(args) as guard:
        if args.allow_image_urls:
            guard = guard.with_options(limits=replace(guard.limits, allow_urls=True))
        show = not args.no_progress and sys.stderr.isatty()
        progress_cm: Any = contextlib.nullcontext()
        start: Callable[[int, int], None] | None = None
        update: Callable[[int, int], None] | None = None
        if show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            progress = Progress(
                TextColumn("[bold]moderating[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[flagged]} flagged"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            progress_cm = progress
            task = progress.add_task("rows", total=len(keys), flagged=0)
            already = [0]

            def start(total: int, skipped: int) -> None:
                already[0] = skipped
                progress.update(task, total=total, completed=skipped)

            def update(written: int, flagged: int) -> None:
                progress.update(task, completed=already[0] + written, flagged=flagged)

        with progress_cm:
            summary = moderate_file(
                guard,
                args.input,
                args.output,
                batch_size=args.batch_size,
                overwrite=args.overwrite,
                retry_errors=args.retry_errors,
                on_start=start,
                on_batch=update,
            )
    if args.json:
        print(json.dumps(asdict(summary)))
    else:
        statuses = ", ".join(f"{k}={v}" for k, v in sorted(summary.by_status.items())) or "nothing to do"
        print(
            f"{summary.output}: wrote {summary.written} row(s) ({statuses}; {summary.flagged} flagged), "
            f"skipped {summary.skipped} already done, {summary.total} in all, {summary.elapsed_s:.1f}s",
            file=sys.stderr,
        )
    return 0
