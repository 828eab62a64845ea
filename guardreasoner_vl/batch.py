"""Moderate a JSONL file, resumably: ``guardreasoner-vl moderate-file in.jsonl -o out.jsonl``.

Input: one JSON object per line with ``id`` (a string or an integer, unique), ``text``, and optionally
``image`` (a path -- relative paths are read from the input file's folder --, a ``data:`` URL, an ``http(s)``
URL when URLs are allowed, or a list of those, merged side by side) and ``response`` (the AI's answer to
judge as well). Other keys are ignored. Blank lines are skipped. ``-`` reads the input from stdin (and a
FIFO works too): it is copied to a temporary file first, and relative image paths start from the working
folder.

Output: one JSON object per input row, in input order: ``{"id": ..., **GuardResult}`` (``flagged``,
``request``, ``response``, ``refusal``, ``status``, ``error``, ``reasoning``, ``raw_output``, ``model``,
``usage``, ``judged``). A row that cannot be judged is recorded, never dropped: ``status`` is
``invalid_input`` (bad text or image), ``parse_error`` or ``engine_error``, and ``error`` says why.

Guarantees:

* **Checked before starting.** Lines that are not JSON objects (bad JSON, not UTF-8, JSON nested too
  deeply, longer than :data:`MAX_LINE_BYTES`), missing or ill-typed ids and duplicate ids (``1`` and ``"1"``
  count as the same id) stop the job before any work, with every problem listed -- or, with
  ``skip_invalid`` (``--skip-invalid``), each such line becomes an ``invalid_input`` row with the line's
  number in ``line`` and the id ``"line:<number>"`` (also for a duplicate: the first row keeps the id), and
  the job goes on.
* **One bad row never fails its neighbours.** A row that fails while it is prepared (any exception: an
  unreadable image, a decoder failure) is that row's ``invalid_input``; the other rows of its batch are
  judged. Only a failure of the engine itself makes a batch ``engine_error``.
* **Durable per batch, one torn-tail rule.** The output is a :class:`~guardreasoner_vl.jsonl_store.JsonlStore`:
  each batch's rows are appended as whole lines, then flushed and fsync'ed; a crash can leave at most one
  torn last line, which the next run cuts off and reports (a warning, and ``BatchSummary.repaired``).
* **Resumable.** Run the same command again after a crash or ``kill -9``: ids already in the output are
  skipped and the rest are judged, so in the end every input row is in the output exactly once. If the
  output is not in input order (the input was reordered, or ``retry_errors`` redid rows), it is rewritten
  in input order at the end (atomically: temporary file, fsync, rename).
* **Retries that can end.** ``retry_errors`` judges again only rows whose status is in
  :data:`RETRY_STATUSES` (``engine_error``); an ``invalid_input`` or ``parse_error`` row is final.
* **One writer.** An advisory lock (POSIX) stops a second job from writing the same output file.
* **Exit status.** The command exits 1 when the input had rows and none of them is ``ok`` in the output
  (every row failed), 2 on a bad input or option, else 0.

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
import shutil
import stat
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from guardreasoner_vl.errors import InvalidInputError, ParseError
from guardreasoner_vl.jsonl_store import JsonlStore, StoreCorruptError, StoredRow
from guardreasoner_vl.types import GuardResult

__all__ = [
    "MAX_LINE_BYTES",
    "RETRY_STATUSES",
    "BatchSummary",
    "moderate_file",
    "readable_input",
    "register",
    "scan_input",
]

logger = logging.getLogger(__name__)

_MAX_PROBLEMS = 20


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What one :func:`moderate_file` run did.

    Attributes:
        total: rows in the input (malformed lines kept by ``skip_invalid`` included).
        skipped: rows already in the output from an earlier run (not judged again).
        written: rows judged and written by this run.
        by_status: rows written by this run, per result status (``ok``, ``parse_error`` ...).
        flagged: rows written by this run with ``flagged=True``.
        retried: rows with ``engine_error`` removed from the output to be judged again (``retry_errors``).
        reordered: whether the output was rewritten in input order at the end.
        elapsed_s: wall time of the run.
        output: the output file.
        failed: rows of the whole output (earlier runs included) whose status is not ``ok``.
        malformed: input lines recorded as ``invalid_input`` rows by ``skip_invalid`` (this run or earlier).
        repaired: what was cut off the output on open (a torn last line of an interrupted run), or None.
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
    failed: int = 0
    malformed: int = 0
    repaired: str | None = None

    @property
    def all_failed(self) -> bool:
        """True when the input had rows and not one of them has an ``ok`` result in the output."""
        return self.total > 0 and self.failed >= self.total


RETRY_STATUSES = frozenset({"engine_error"})
"""Statuses ``retry_errors`` judges again: only failures that can pass on a retry (the engine failed).
``invalid_input`` (the row itself is bad) and ``parse_error`` (the model answered) are final."""

MAX_LINE_BYTES = 256 * 1024 * 1024
"""Longest input line read (a line holds at most a few data-URL images); a longer one is a malformed line."""


def _key(value: Any) -> str | None:
    """The identity of an id (``1`` and ``"1"`` are the same), or None when it is not a valid id."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return str(value)


def _lines(handle: IO[bytes], max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line without its newline) of every line; None for a line longer than ``max_bytes``.

    A too-long line is skipped in chunks, so that it is never held in memory whole.
    """
    number = 0
    while True:
        raw = handle.readline(max_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = handle.readline(1 << 20)
            yield number, None
            continue
        yield number, raw.rstrip(b"\r\n")


@dataclass(frozen=True, slots=True)
class _Malformed:
    """An input line that is not a row, kept as an ``invalid_input`` row by ``skip_invalid``."""

    id: Any
    line: int
    error: str


def _parse_row(raw: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """(the row, None) or (None, what is wrong with the line)."""
    if raw is None:
        return None, f"the line is longer than {MAX_LINE_BYTES} bytes"
    try:  # UTF-8 only (json.loads would guess UTF-16/32 from NUL bytes); a byte-order mark is tolerated
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 ({exc})"
    try:
        row = json.loads(text)
    except RecursionError:
        return None, "not valid JSON (nested too deeply)"
    except ValueError as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(row, dict):
        return None, f"a row must be a JSON object, got {type(row).__name__}"
    problem = _check_id(row)
    return (None, problem) if problem else (row, None)


def _check_id(row: dict[str, Any]) -> str | None:
    """What is wrong with a row's ``id`` (missing, or not a non-empty string or an integer), or None."""
    if "id" not in row:
        return "no 'id'"
    if _key(row["id"]) is None:
        return f"'id' must be a non-empty string or an integer, got {_short(row['id'])}"
    return None


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        text = f"a deeply nested {type(value).__name__}"
    return text[:60]


def _scan(
    path: Path, *, skip_invalid: bool, max_line_bytes: int, spans: list[tuple[int, int]] | None = None
) -> tuple[list[str], dict[str, _Malformed]]:
    """The keys of the input's rows in order, and its malformed lines (see :func:`scan_input`).

    ``spans``, when given, receives ``(byte offset, length)`` of each row's line, one per key, so that a
    reader can fetch any row again without scanning the file (the Ray runner's readers do).
    """
    with path.open("rb") as handle:

        def entries() -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
            start = handle.tell()
            for number, raw in _lines(handle, max_line_bytes):
                end = handle.tell()  # _lines yields once the whole line is read: the next line starts here
                if raw is None or raw.strip():
                    if spans is not None:
                        spans.append((start, end - start))
                    yield (number, *_parse_row(raw))
                start = end

        return _collect(entries(), path, skip_invalid=skip_invalid)


def _collect(
    entries: Iterable[tuple[int, dict[str, Any] | None, str | None]], path: Any, *, skip_invalid: bool
) -> tuple[list[str], dict[str, _Malformed]]:
    """Keys and malformed rows from ``(line number, row or None, problem or None)``, by the id rules above.

    Shared by the JSONL scan and the Ray runner's Parquet scan (where the "line" is the row's number).
    """
    keys: list[str] = []
    first_line: dict[str, int] = {}
    problems: list[tuple[int, str]] = []
    for number, row, found in entries:
        problem = found
        if row is not None:
            key = str(row["id"])
            if key in first_line:
                problem = f"duplicate id {_short(row['id'])} (first on line {first_line[key]})"
            else:
                first_line[key] = number
                keys.append(key)
                continue
        problems.append((number, problem or ""))
        keys.append(f"line:{number}")  # where it goes in the output, if kept
    if problems and not skip_invalid:
        more = f"\n  ... and {len(problems) - _MAX_PROBLEMS} more" if len(problems) > _MAX_PROBLEMS else ""
        raise InvalidInputError(
            f"{path}: {len(problems)} problem(s) in the input, nothing was judged "
            "(--skip-invalid records them as invalid_input rows and goes on):\n  "
            + "\n  ".join(f"line {n}: {p}" for n, p in problems[:_MAX_PROBLEMS])
            + more
        )
    malformed: dict[str, _Malformed] = {}
    for number, problem in problems:
        key = f"line:{number}"
        if key in first_line:
            raise InvalidInputError(
                f"{path} line {number} is malformed, and its place-holder id {key!r} is a real id on line "
                f"{first_line[key]}; fix the line or rename that id"
            )
        malformed[key] = _Malformed(key, number, f"line {number}: {problem}")
    return keys, malformed


def scan_input(path: str | os.PathLike[str], *, skip_invalid: bool = False) -> list[str]:
    """Check an input file and return the keys of its rows, in order.

    With ``skip_invalid``, a line that is not a row (not JSON, not an object, no or a bad ``id``, a duplicate
    id, longer than :data:`MAX_LINE_BYTES`) does not stop the job: its key is ``"line:<number>"``, the id its
    ``invalid_input`` row gets in the output.

    Raises:
        InvalidInputError: the file cannot be read; without ``skip_invalid``, listing every malformed line.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"input file not found: {path}")
    return _scan(path, skip_invalid=skip_invalid, max_line_bytes=MAX_LINE_BYTES)[0]


@contextlib.contextmanager
def readable_input(path: str | os.PathLike[str], spool_dir: str | os.PathLike[str]) -> Iterator[tuple[Path, Path]]:
    """``(a regular file with the input, the folder relative image paths start from)``.

    ``-`` (stdin) and a FIFO can be read only once, so they are copied into a temporary file in ``spool_dir``
    first (removed afterwards); relative image paths then start from the working folder (stdin) or the
    FIFO's folder. A regular file is used as it is.

    Raises:
        InvalidInputError: no such file, or a folder or device that is not a stream of lines.
    """
    if str(path) != "-":
        source = Path(path)
        try:
            mode = source.stat().st_mode
        except OSError as exc:
            raise InvalidInputError(f"input file not found: {source} ({exc.strerror})") from None
        if stat.S_ISREG(mode):
            yield source, source.resolve().parent
            return
        if not stat.S_ISFIFO(mode):
            raise InvalidInputError(f"{source} is not a regular file, a FIFO or '-' (stdin)")
    spool_dir = Path(spool_dir)
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".moderate-file-input.", suffix=".spool", dir=spool_dir)
    spooled = Path(name)
    try:
        with os.fdopen(fd, "wb") as dst:
            if str(path) == "-":
                shutil.copyfileobj(sys.stdin.buffer, dst, 1 << 20)
                base = Path.cwd()
            else:
                with Path(path).open("rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
                base = Path(path).resolve().parent
        yield spooled, base
    finally:
        spooled.unlink(missing_ok=True)


@dataclass(slots=True)
class _Output:
    """What an existing output file holds: its rows in file order, by key, and their statuses."""

    keys: list[str] = field(default_factory=list)
    rows: dict[str, StoredRow] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)


def _index_output(store: JsonlStore, input_keys: set[str]) -> _Output:
    """Index the rows of the output (after the store cut a torn tail).

    Raises:
        InvalidInputError: a line is not a row of ours, an id is not in the input, or repeats.
    """
    out = _Output()
    try:
        for stored in store.rows():
            row = stored.data
            key = _key(row.get("id"))
            if key is None or key not in input_keys:
                raise InvalidInputError(
                    f"{store.path}, line {stored.line}: id {_short(row.get('id'))} is not in the input; this output "
                    "belongs to another input. Use another output file, or --overwrite to start again"
                )
            if key in out.rows:
                raise InvalidInputError(f"{store.path}, line {stored.line}: id {_short(row['id'])} appears twice")
            out.keys.append(key)
            out.rows[key] = stored
            out.statuses[key] = str(row.get("status", ""))
    except StoreCorruptError as exc:
        raise InvalidInputError(
            f"{exc}: not a row written by moderate-file; use another output file, or --overwrite to start again"
        ) from None
    return out


def _resolve_image(value: Any, base: Path) -> Any:
    if isinstance(value, list):  # one level: a list of images; anything deeper is the guard's to refuse
        return [_resolve_image(v, base) if isinstance(v, str) else v for v in value]
    if isinstance(value, str) and value and not value.startswith(("data:", "http://", "https://")):
        if "://" in value[:16]:
            return value  # an unsupported scheme: the guard says so
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)
    return value


def _row_data(row_id: Any, result: GuardResult, **extra: Any) -> dict[str, Any]:
    return {"id": row_id, **result.model_dump(mode="json"), **extra}


def moderate_file(
    guard: Any,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    batch_size: int = 16,
    overwrite: bool = False,
    retry_errors: bool = False,
    skip_invalid: bool = False,
    max_line_bytes: int = MAX_LINE_BYTES,
    image_base: str | os.PathLike[str] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """Judge every row of a JSONL file into another, resumably (see the module docs).

    Args:
        guard: the :class:`~guardreasoner_vl.Guard` that judges.
        input_path: the input JSONL; ``-`` reads stdin (see :func:`readable_input`).
        output_path: the output JSONL; if it exists, the run resumes it (ids already there are skipped).
        batch_size: rows per engine call, and per durable write.
        overwrite: start again: empty the output first.
        retry_errors: judge again the rows the output holds with a status in :data:`RETRY_STATUSES`.
        skip_invalid: record malformed input lines as ``invalid_input`` rows (id ``"line:<number>"`` when the
            line has no valid id of its own) instead of stopping before any work.
        max_line_bytes: longest input line read; a longer one is malformed.
        image_base: where relative image paths start (default: the input file's folder; stdin: the working
            folder).
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
    target = Path(output_path)
    with readable_input(input_path, target.parent) as (source, default_base):
        base = Path(image_base) if image_base is not None else default_base
        if target.exists() and os.path.samefile(source, target):
            raise InvalidInputError("the output file must not be the input file")
        keys, malformed = _scan(source, skip_invalid=skip_invalid, max_line_bytes=max_line_bytes)
        key_set = set(keys)
        with JsonlStore(target, fresh=overwrite, owner="moderate-file") as store:
            existing = _index_output(store, key_set)
            retried = 0
            if retry_errors:
                redo = {k for k in existing.keys if existing.statuses.get(k) in RETRY_STATUSES}
                if redo:
                    store.rewrite(existing.rows[k] for k in existing.keys if k not in redo)
                    retried = len(redo)
                    existing = _index_output(store, key_set)
            done = set(existing.rows)
            in_order = existing.keys == keys[: len(existing.keys)]
            if on_start is not None:
                on_start(len(keys), len(done))
            counts: Counter[str] = Counter()
            flagged = 0
            model = str(getattr(guard, "model_id", ""))

            def flush(batch: list[tuple[Any, dict[str, Any] | _Malformed]]) -> None:
                nonlocal flagged
                lines = []
                for result, line in _judge_rows(guard, batch, model):
                    lines.append(line)
                    counts[result.status] += 1
                    flagged += int(result.flagged)
                store.append(lines)
                if on_batch is not None:
                    on_batch(store.appended, flagged)

            batch: list[tuple[Any, dict[str, Any] | _Malformed]] = []
            seen: set[str] = set()
            with source.open("rb") as handle:
                for number, raw in _lines(handle, max_line_bytes):
                    if raw is not None and not raw.strip():
                        continue
                    row, _ = _parse_row(raw)
                    key = str(row["id"]) if row is not None else f"line:{number}"
                    if row is not None and key in seen:  # a duplicate: its line is the malformed one
                        key = f"line:{number}"
                    seen.add(key)
                    if key in done:
                        continue
                    if key in malformed:
                        batch.append((key, malformed[key]))
                    else:
                        assert row is not None
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
                final = _index_output(store, key_set)
                if final.keys != keys:
                    store.rewrite(final.rows[k] for k in keys if k in final.rows)
                    reordered = True
            failed = sum(1 for k in done if existing.statuses.get(k) != "ok")
            failed += sum(n for status, n in counts.items() if status != "ok")
            repaired = store.torn.describe() if store.torn is not None else None
            written = store.appended
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
        failed=failed,
        malformed=len(malformed),
        repaired=repaired,
    )


def _judge_rows(
    guard: Any, batch: list[tuple[Any, dict[str, Any] | _Malformed]], model: str
) -> list[tuple[GuardResult, dict[str, Any]]]:
    """Judge one batch of rows ``(id, item or malformed line)``: ``(result, output row)`` for each, in order.

    The items go to the engine in one call (:func:`_judge`); a malformed line is its ``invalid_input`` row.
    Shared by :func:`moderate_file` and the Ray runner's actors, so both write the same rows.
    """
    items = [item for _, item in batch if isinstance(item, dict)]
    judged = iter(_judge(guard, items) if items else [])
    out = []
    for row_id, item in batch:
        if isinstance(item, _Malformed):
            result = GuardResult(flagged=True, status="invalid_input", error=item.error, model=model)
            out.append((result, _row_data(row_id, result, line=item.line)))
        else:
            result = next(judged)
            out.append((result, _row_data(row_id, result)))
    return out


def _failure(guard: Any, status: Literal["invalid_input", "engine_error"], message: str) -> GuardResult:
    return GuardResult(flagged=True, status=status, error=message, model=str(getattr(guard, "model_id", "")))


def _judge(guard: Any, items: list[dict[str, Any]]) -> list[GuardResult]:
    """One engine call; never raises for one batch's failure, and one bad row never fails its neighbours.

    When the call raises, each row is prepared alone: a row that fails there (with any exception) is that
    row's ``invalid_input``, and the other rows are judged again without it. When every row prepares, the
    engine failed: every row records ``engine_error`` (retried by ``--retry-errors``).
    """
    try:
        return _call(guard, items)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        logger.exception("a batch of %d row(s) failed", len(items))
        message = f"{type(exc).__name__}: {exc}"
    bad: dict[int, GuardResult] = {}
    if not callable(getattr(guard, "prepare", None)):  # not a Guard: no way to tell the rows apart
        return [_failure(guard, "engine_error", message) for _ in items]
    for index, item in enumerate(items):
        try:
            guard.prepare(item["text"], item["image"], response=item["response"])
        except (KeyboardInterrupt, SystemExit):
            raise
        except InvalidInputError as exc:
            bad[index] = _failure(guard, "invalid_input", str(exc))
        except Exception as exc:
            bad[index] = _failure(guard, "invalid_input", f"{type(exc).__name__}: {exc}")
    if not bad:
        return [_failure(guard, "engine_error", message) for _ in items]
    rest = [i for i in range(len(items)) if i not in bad]
    again: list[GuardResult] = []
    if rest:
        try:
            again = _call(guard, [items[i] for i in rest])
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            logger.exception("a batch of %d row(s) failed again without its bad rows", len(rest))
            again = [_failure(guard, "engine_error", f"{type(exc).__name__}: {exc}") for _ in rest]
    results = dict(bad)
    results.update(zip(rest, again, strict=True))
    return [results[i] for i in range(len(items))]


def _call(guard: Any, items: list[dict[str, Any]]) -> list[GuardResult]:
    try:
        return list(guard.moderate_batch(items))
    except ParseError as exc:  # on_parse_error="raise": the results are all there
        if exc.results is not None:
            return list(exc.results)
        raise


# -- command line ------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``moderate-file`` to the ``guardreasoner-vl`` parser."""
    from guardreasoner_vl.cli import add_guard_options

    parser = subparsers.add_parser(
        "moderate-file",
        help="judge every row of a JSONL file (resumable: run it again to continue)",
        description="Judge each row {id, text, image?, response?} of a JSONL file into an output JSONL, one row "
        "per input row, in order. Interrupted? Run the same command again: finished ids are skipped. With --ray, "
        "the rows (JSONL or Parquet, a path or a URI) are judged by a pool of Ray actors, exactly once.",
    )
    parser.add_argument("input", help="input JSONL (rows with id, text, optional image and response)")
    parser.add_argument(
        "-o", "--output", required=True, help="output JSONL, resumed when it exists (with --ray: Parquet or a URI too)"
    )
    parser.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        help="judge again rows that failed with engine_error (invalid_input and parse_error rows are final)",
    )
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="record malformed input lines as invalid_input rows (id 'line:<number>') instead of stopping",
    )
    parser.add_argument("--allow-image-urls", action="store_true", help="download http(s) image URLs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_guard_options(parser)
    from guardreasoner_vl.distributed.cli import add_ray_options

    add_ray_options(parser, formats=True)
    parser.set_defaults(func=_cmd_moderate_file)


def _cmd_moderate_file(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from guardreasoner_vl.cli import guard_from_args
    from guardreasoner_vl.distributed.cli import check_ray_options, moderate_file_on_ray

    if args.ray:  # JSONL or Parquet, on a pool of Ray actors (guardreasoner_vl.distributed)
        return moderate_file_on_ray(args)
    check_ray_options(args)
    with readable_input(args.input, Path(args.output).parent) as (source, base):
        keys = scan_input(source, skip_invalid=args.skip_invalid)  # fail fast, before loading a model
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
                    source,
                    args.output,
                    image_base=base,
                    batch_size=args.batch_size,
                    overwrite=args.overwrite,
                    retry_errors=args.retry_errors,
                    skip_invalid=args.skip_invalid,
                    on_start=start,
                    on_batch=update,
                )
    notes = [f"{summary.output}: {summary.repaired}"] if summary.repaired else []
    return report_summary(summary, as_json=args.json, notes=notes)


def report_summary(summary: Any, *, as_json: bool, where: str = "", notes: Sequence[str] = ()) -> int:
    """Print a moderate-file summary (one line, or JSON on stdout) and return the exit status: 1 when every row
    failed, else 0. Shared by the one-process and the Ray runners.

    Args:
        summary: a :class:`BatchSummary` or the Ray runner's summary (the same fields, and more).
        as_json: print ``asdict(summary)`` plus ``all_failed`` as JSON on stdout.
        where: appended to the line (the Ray runner's actors and parts folder).
        notes: more lines for stderr (a repaired torn tail, rows found twice).
    """
    from dataclasses import asdict

    if as_json:
        print(json.dumps({**asdict(summary), "all_failed": summary.all_failed}))
    else:
        statuses = ", ".join(f"{k}={v}" for k, v in sorted(summary.by_status.items())) or "nothing to do"
        print(
            f"{summary.output}: wrote {summary.written} row(s) ({statuses}; {summary.flagged} flagged), "
            f"skipped {summary.skipped} already done, {summary.total} in all, {summary.elapsed_s:.1f}s{where}",
            file=sys.stderr,
        )
        for note in notes:
            print(note, file=sys.stderr)
    if summary.all_failed:
        print(
            f"error: every row failed ({summary.failed} of {summary.total} not ok); see {summary.output}",
            file=sys.stderr,
        )
        return 1
    return 0
