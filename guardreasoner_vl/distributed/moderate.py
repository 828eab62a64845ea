"""``moderate-file --ray``: judge a JSONL or Parquet dataset on a Ray cluster, exactly once, resumably.

The same job as :func:`guardreasoner_vl.batch.moderate_file`, the same input rules and the same output rows,
spread over a pool of actors that each load one :class:`~guardreasoner_vl.Guard` once (one per GPU, or
several on CPUs): see :mod:`guardreasoner_vl.distributed.pool` for the pipeline and
:mod:`guardreasoner_vl.distributed.parts` for how results are kept.

Guarantees:

* **The same rows.** Input scan, id rules and ``--skip-invalid`` are those of ``moderate-file`` (the same
  code); each row is judged by the same per-batch code (one bad row never fails its neighbours; a failing
  engine makes its rows ``engine_error``); the final file holds one row per input row, in input order, with
  the schema of ``moderate-file`` (``{"id": ..., **GuardResult}``, ``line`` on malformed lines).
* **Images travel with their row.** Image paths are read (within the guard's ``max_image_bytes``) on the
  driver's machine and sent with the row, so actors on other machines need no shared file system.
* **Exactly once, resumable.** Every input row has a stable id. A block of judged rows is committed as one
  part file, atomically, named after the ids it holds. A rerun reads the committed parts and judges only the
  rows that are missing, whatever killed the run before (``kill -9`` of the driver, a lost node). An actor
  that dies is restarted by Ray and its block retried; if the pipeline itself fails after judging rows (an
  actor gone for good), the driver starts it again for the rows still missing (``max_attempts``); one that
  judged nothing (a guard that cannot load) stops the job at once with the cause. At the end every input id
  is checked to have exactly one row before the final file is written (atomically).
* **Exit status** (CLI): 1 when the input had rows and none of them is ``ok``, 2 on a bad input or option.

Example:
    >>> from guardreasoner_vl.distributed import GuardSpec, moderate_dataset
    >>> spec = GuardSpec("yueliu1999/GuardReasoner-VL-3B", backend="vllm", batch_size=64)
    >>> summary = moderate_dataset(spec, "s3://bucket/requests.parquet", "s3://bucket/verdicts.parquet",
    ...                            replicas=8, gpus_per_replica=1, address="auto")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from guardreasoner_vl.batch import (
    MAX_LINE_BYTES,
    RETRY_STATUSES,
    BatchSummary,
    _check_id,
    _collect,
    _key,
    _Malformed,
    _scan,
    readable_input,
)
from guardreasoner_vl.distributed.parts import (
    OutputStore,
    PartsIndex,
    is_uri,
    ordered_rows,
    parquet_bytes,
    parquet_chunks,
    part_name,
)
from guardreasoner_vl.distributed.pool import ModerateActor, PoolOptions, RayCluster, Source, run_blocks
from guardreasoner_vl.distributed.spec import GuardSpec
from guardreasoner_vl.errors import BackendError, GuardError, InvalidInputError

__all__ = ["DistributedSummary", "moderate_dataset"]

logger = logging.getLogger(__name__)

Format = Literal["jsonl", "parquet"]


@dataclass(frozen=True, slots=True)
class DistributedSummary(BatchSummary):
    """What one :func:`moderate_dataset` run did: the fields of
    :class:`~guardreasoner_vl.batch.BatchSummary`, then the Ray job's own.

    Attributes:
        replicas: actors in the pool.
        parts: the parts folder (the job's durable state; keep it to resume or retry).
        duplicates: rows found in more than one part (each input row keeps one).
        attempts: how many times the pipeline was started (more than 1 after a pipeline failure).
        ray_init_s: seconds ``ray.init`` took (0 when Ray was already initialised).
        actors_ready_s: for each actor, seconds from the start of the pipeline to its guard being loaded
            (worker start-up and model load).
        actor_load_s: for each actor, seconds its guard took to load.
        actor_rows: for each actor, rows of this run it judged (in the same order).
        timeline: ``(seconds from the start of the pipeline, rows committed so far)`` after each commit.
        finalize_s: seconds spent checking the parts and writing the final file.
    """

    replicas: int = 1
    parts: str = ""
    duplicates: int = 0
    attempts: int = 0
    ray_init_s: float = 0.0
    actors_ready_s: tuple[float, ...] = ()
    actor_load_s: tuple[float, ...] = ()
    actor_rows: tuple[int, ...] = ()
    timeline: tuple[tuple[float, int], ...] = field(default=())
    finalize_s: float = 0.0


def brief(failure: BaseException | None, limit: int = 1500) -> str:
    """A failure in a few lines: its type and the end of its message (Ray puts the root cause last)."""
    if failure is None:
        return "rows missing, no error"
    text = " ".join(str(failure).split())
    return f"{type(failure).__name__}: {text if len(text) <= limit else '...' + text[-limit:]}"


def default_block_rows(batch_size: int) -> int:
    """Rows per block when not given: four engine batches (whole batches keep one-process batch boundaries)."""
    return 4 * max(1, batch_size)


def format_of(location: str | os.PathLike[str], given: str | None = None) -> Format:
    """``"parquet"`` for ``.parquet`` / ``.pq`` names (or when ``given`` says so), else ``"jsonl"``.

    Example:
        >>> format_of("s3://b/x.parquet"), format_of("out.jsonl"), format_of("-")
        ('parquet', 'jsonl', 'jsonl')
    """
    if given is not None:
        if given not in ("jsonl", "parquet"):
            raise InvalidInputError(f"format must be 'jsonl' or 'parquet', got {given!r}")
        return "parquet" if given == "parquet" else "jsonl"
    return "parquet" if str(location).lower().endswith((".parquet", ".pq")) else "jsonl"


@contextlib.contextmanager
def _small_row_groups(path: Path, block_rows: int) -> Iterator[Path]:
    """``path``, or a temporary copy of it whose row groups hold ``block_rows`` rows when its own are much larger.

    A reader of one block decodes every row group the block touches; with the writer defaults (up to a
    million rows a group) each block of a few dozen rows would decode a whole group.
    """
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception:  # not Parquet: the scan says so
        yield path
        return
    groups = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    if not groups or max(groups) <= 4 * block_rows:
        yield path
        return
    folder = Path(tempfile.mkdtemp(prefix="grvl-ray-parquet."))
    try:
        copy = folder / "input.parquet"
        with pq.ParquetWriter(copy, parquet.schema_arrow) as writer:
            for batch in parquet.iter_batches(batch_size=block_rows):
                writer.write_batch(batch, row_group_size=block_rows)
        logger.info("%s: row groups of up to %d rows, copied into groups of %d", path, max(groups), block_rows)
        yield copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _local_input(location: str | os.PathLike[str], spool_dir: Path) -> Iterator[tuple[Path, Path]]:
    """``(a local regular file with the input, the folder relative image paths start from)``.

    A URI is copied to a temporary file first (relative image paths then start from the working folder);
    ``-`` and FIFOs are spooled by :func:`~guardreasoner_vl.batch.readable_input`.
    """
    if not is_uri(location):
        with readable_input(location, spool_dir) as found:
            yield found
        return
    from guardreasoner_vl.distributed.parts import _pyarrow_fs

    filesystem, path = _pyarrow_fs().FileSystem.from_uri(str(location))
    folder = Path(tempfile.mkdtemp(prefix="grvl-ray-input."))
    local = folder / "input"
    try:
        try:
            with filesystem.open_input_stream(path) as src, local.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        except (OSError, FileNotFoundError) as exc:
            raise InvalidInputError(f"cannot read input {location}: {exc}") from None
        yield local, Path.cwd()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _scan_parquet(path: Path, *, skip_invalid: bool) -> tuple[list[str], dict[str, _Malformed]]:
    """The Parquet counterpart of ``moderate-file``'s scan: the ``id`` column, checked by the same rules
    (the "line" of a row is its 1-based row number)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise InvalidInputError(f"{path}: not a Parquet file ({type(exc).__name__}: {exc})") from None
    if "id" not in parquet.schema_arrow.names:
        raise InvalidInputError(f"{path}: no 'id' column (columns: {', '.join(parquet.schema_arrow.names)})")

    def entries() -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
        number = 0
        for batch in parquet.iter_batches(columns=["id"], batch_size=65536):
            for value in batch.column(0).to_pylist():
                number += 1
                row = {"id": value}
                problem = _check_id(row)
                yield (number, None, problem) if problem else (number, row, None)

    return _collect(entries(), path, skip_invalid=skip_invalid)


def _block_tables(
    pending: Sequence[int],
    keys: Sequence[str],
    spans: Sequence[tuple[int, int]],
    malformed: dict[str, _Malformed],
    block_rows: int,
) -> list[Any]:
    """One Arrow table per block of pending rows: where each row is, or why it is malformed."""
    import pyarrow as pa

    tables = []
    for block, start in enumerate(range(0, len(pending), block_rows)):
        members = pending[start : start + block_rows]
        bad = [malformed.get(keys[i]) for i in members]
        tables.append(
            pa.table(
                {
                    "block": pa.array([block] * len(members), pa.int64()),
                    "block_rows": pa.array([len(members)] * len(members), pa.int64()),
                    "index": pa.array(members, pa.int64()),
                    "key": pa.array([keys[i] for i in members], pa.string()),
                    "offset": pa.array([spans[i][0] for i in members], pa.int64()),
                    "length": pa.array([spans[i][1] for i in members], pa.int64()),
                    "line": pa.array([m.line if m else 0 for m in bad], pa.int64()),
                    "error": pa.array([m.error if m else None for m in bad], pa.string()),
                }
            )
        )
    return tables


def _drop_for_retry(store: OutputStore, index: PartsIndex, index_of: dict[str, int]) -> int:
    """Rewrite the parts that hold rows to judge again (status in ``RETRY_STATUSES``) without those rows.

    The new part is committed before the old one is removed: a crash in between leaves a row in two parts,
    which the index resolves (the row with a final status wins, then the part first by name).
    """
    from guardreasoner_vl.jsonl_store import _loads_object

    redo = {k for k, status in index.statuses.items() if status in RETRY_STATUSES}
    if not redo:
        return 0
    for name in sorted({index.winner[k] for k in redo}):
        kept: list[tuple[int, str, bytes]] = []
        for line in store.read(name).splitlines():
            row = _loads_object(line) if line.strip() else None
            key = _key(row.get("id")) if row is not None else None
            if key is not None and key not in redo and index.winner.get(key) == name:
                kept.append((index_of[key], key, line + b"\n"))
        if kept:
            kept.sort()
            renamed = part_name(kept[0][0], [k for _, k, _ in kept])
            store.commit(renamed, b"".join(line for _, _, line in kept))
            if renamed != name:
                store.remove(name)
        else:
            store.remove(name)
    return len(redo)


@dataclass
class _Run:
    """Counters of the rows this run committed."""

    counts: Counter[str] = field(default_factory=Counter)
    flagged: int = 0
    written: int = 0
    committed: set[str] = field(default_factory=set)
    ready: dict[str, tuple[float, float]] = field(default_factory=dict)
    rows_by_actor: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, int]] = field(default_factory=list)


def _consume(
    tables: Iterator[Any],
    store: OutputStore,
    run: _Run,
    started: float,
    on_batch: Callable[[int, int], None] | None,
) -> None:
    """Assemble the judged rows into blocks and commit each complete block as one part."""
    buffers: dict[int, dict[int, tuple[str, bytes, str, bool, str]]] = {}
    sizes: dict[int, int] = {}
    done_blocks: set[int] = set()
    for table in tables:
        columns = table.to_pydict()
        for i in range(table.num_rows):
            block = columns["block"][i]
            if block in done_blocks:
                continue  # delivered again (a retried task): already committed
            sizes[block] = columns["block_rows"][i]
            buffers.setdefault(block, {})[columns["index"][i]] = (
                columns["key"][i],
                columns["line"][i],
                columns["status"][i],
                bool(columns["flagged"][i]),
                columns["actor"][i],
            )
            run.ready.setdefault(columns["actor"][i], (columns["ready_at"][i] - started, columns["load_s"][i]))
        for block in [b for b, rows in buffers.items() if len(rows) == sizes[b]]:
            rows = buffers.pop(block)
            ordered = [rows[i] for i in sorted(rows)]
            store.commit(part_name(min(rows), [r[0] for r in ordered]), b"".join(r[1] for r in ordered))
            done_blocks.add(block)
            for key, _, status, flagged, actor in ordered:
                run.committed.add(key)
                run.rows_by_actor[actor] += 1
                run.counts[status] += 1
                run.flagged += int(flagged)
            run.written += len(ordered)
            run.timeline.append((round(time.time() - started, 3), run.written))
            if on_batch is not None:
                on_batch(run.written, run.flagged)


def moderate_dataset(
    spec: GuardSpec,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    cpus_per_replica: float = 1.0,
    block_rows: int | None = None,
    input_format: Format | None = None,
    output_format: Format | None = None,
    overwrite: bool = False,
    retry_errors: bool = False,
    skip_invalid: bool = False,
    image_base: str | os.PathLike[str] | None = None,
    address: str | None = None,
    init_options: dict[str, Any] | None = None,
    progress: bool | None = None,
    max_attempts: int = 3,
    on_batch: Callable[[int, int], None] | None = None,
) -> DistributedSummary:
    """Judge every row of a JSONL or Parquet file on a Ray actor pool into a JSONL or Parquet file.

    Args:
        spec: the guard each actor loads (:class:`~guardreasoner_vl.distributed.GuardSpec`).
        input_path: JSONL or Parquet rows ``{id, text, image?, response?}``: a local path, ``-`` (stdin), or a
            URI :mod:`pyarrow.fs` opens (``s3://``, ``gs://``, ``hdfs://`` ...; copied to a local temporary file
            first). A Parquet ``image`` may be a path, a ``data:`` URL, bytes, a list, or a Hugging Face
            ``{"bytes", "path"}`` image.
        output_path: the final file, a local path or a URI; its parts folder is ``<output>.parts``.
        replicas: actors, each loading one guard.
        gpus_per_replica: GPUs each actor reserves (0 for CPU engines and the remote engine).
        cpus_per_replica: CPUs each actor reserves.
        block_rows: rows per block (one actor call, one atomic commit); default 4 x the guard's batch size.
        input_format, output_format: ``"jsonl"`` or ``"parquet"``; default from the name (``.parquet``).
        overwrite: start again: remove the parts and the final file first.
        retry_errors: judge again the rows whose status is ``engine_error``.
        skip_invalid: record malformed input lines as ``invalid_input`` rows instead of stopping.
        image_base: where relative image paths start (default: the input file's folder; stdin and URIs: the
            working folder).
        address: the Ray cluster (``"auto"``, ``"ray://head:10001"``); default: the one this process is
            connected to, else ``RAY_ADDRESS``, else a new local one.
        init_options: more keyword arguments for ``ray.init`` (``runtime_env``, ``num_cpus`` ...).
        progress: show Ray Data's progress bars; None leaves Ray Data's setting as it is.
        max_attempts: how many times the pipeline is started when it fails after judging rows (each start
            judges only the rows still missing; a start that judged nothing is not repeated).
        on_batch: called after each commit with ``(rows written so far, rows flagged so far)``.

    Returns:
        A :class:`DistributedSummary`.

    Raises:
        InvalidInputError: a bad input file (nothing is judged), a bad option, or an output that belongs to
            another input.
        MissingDependencyError: Ray is not installed (``pip install "guardreasoner-vl[ray]"``).
        BackendError: the pipeline failed ``max_attempts`` times (what was committed stays committed).
    """
    if not isinstance(spec, GuardSpec):
        raise InvalidInputError(f"moderate_dataset takes a GuardSpec (the guard each actor loads), got {type(spec)}")
    if max_attempts < 1:
        raise InvalidInputError("max_attempts must be at least 1")
    pool = PoolOptions(
        replicas=replicas,
        gpus_per_replica=gpus_per_replica,
        cpus_per_replica=cpus_per_replica,
        block_rows=block_rows or default_block_rows(spec.batch_size),
    )
    in_format = format_of(input_path, input_format)
    out_format = format_of(output_path, output_format)
    start = time.perf_counter()
    spool_dir = Path(tempfile.gettempdir()) if is_uri(output_path) else Path(output_path).resolve().parent
    with contextlib.ExitStack() as stack:
        source_path, default_base = stack.enter_context(_local_input(input_path, spool_dir))
        if not is_uri(output_path) and Path(output_path).exists() and os.path.samefile(source_path, output_path):
            raise InvalidInputError("the output file must not be the input file")
        if in_format == "parquet":
            source_path = stack.enter_context(_small_row_groups(source_path, pool.block_rows))
        base = Path(image_base) if image_base is not None else default_base
        spans: list[tuple[int, int]] = []
        if in_format == "parquet":
            keys, malformed = _scan_parquet(source_path, skip_invalid=skip_invalid)
            spans = [(i, 0) for i in range(len(keys))]
        else:
            keys, malformed = _scan(source_path, skip_invalid=skip_invalid, max_line_bytes=MAX_LINE_BYTES, spans=spans)
        index_of = {k: i for i, k in enumerate(keys)}
        with OutputStore(output_path) as store:
            store.open(fresh=overwrite, note={"input": str(input_path), "rows": len(keys)})
            index = PartsIndex.build(store, index_of)
            retried = _drop_for_retry(store, index, index_of) if retry_errors else 0
            if retried:
                index = PartsIndex.build(store, index_of)
            skipped = len(index.winner)
            pending = [i for i, k in enumerate(keys) if k not in index.winner]
            run = _Run()
            attempts = 0
            ray_init_s = 0.0
            pipeline_start = time.time()
            if pending:
                source = Source(
                    kind=in_format,
                    path=str(source_path),
                    image_base=str(base),
                    limits=spec.limits,
                    max_line_bytes=MAX_LINE_BYTES,
                )
                with RayCluster(address, init_options) as cluster:
                    ray_init_s = cluster.init_s
                    pipeline_start = time.time()
                    while pending:
                        attempts += 1
                        before = run.written
                        tables = _block_tables(pending, keys, spans, malformed, pool.block_rows)
                        try:
                            stream = run_blocks(
                                tables,
                                source=source,
                                actor=ModerateActor,
                                spec=spec,
                                pool=pool,
                                cluster=cluster,
                                progress=progress,
                            )
                            _consume(stream, store, run, pipeline_start, on_batch)
                            failure: Exception | None = None
                        except (GuardError, KeyboardInterrupt):
                            raise
                        except Exception as exc:  # a Ray failure: what was committed stays; go on with the rest
                            failure = exc
                        pending = [i for i in pending if keys[i] not in run.committed]
                        if not pending:
                            break
                        if attempts >= max_attempts or run.written == before:
                            # out of attempts, or this one judged nothing (an actor that cannot start, say):
                            # starting again would fail the same way
                            raise BackendError(
                                f"the Ray job stopped with {len(pending)} of {len(keys)} row(s) not judged after "
                                f"{attempts} attempt(s) ({brief(failure)}); what was judged is kept: run the same "
                                "command again to judge only the missing rows"
                            ) from failure
                        logger.warning(
                            "the Ray pipeline stopped (%s: %s); starting it again for the %d row(s) not committed",
                            type(failure).__name__ if failure else "rows missing",
                            failure,
                            len(pending),
                        )
            finalize = time.perf_counter()
            final = PartsIndex.build(store, index_of)
            missing = [k for k in keys if k not in final.winner]
            if missing:  # pragma: no cover - a bug: every row was committed above
                raise BackendError(f"{len(missing)} input row(s) have no committed result (first: {missing[0]!r})")
            lines = ordered_rows(store, final, keys)
            if out_format == "parquet":
                store.write_final([parquet_bytes(parquet_chunks(lines, int_ids=final.int_ids))])
            else:
                store.write_final(lines)
            finalize_s = time.perf_counter() - finalize
            failed = sum(1 for k in keys if final.statuses.get(k) != "ok")
            actors = sorted(run.ready, key=lambda a: run.ready[a])
    return DistributedSummary(
        total=len(keys),
        skipped=skipped,
        written=run.written,
        by_status=dict(run.counts),
        flagged=run.flagged,
        retried=retried,
        elapsed_s=round(time.perf_counter() - start, 3),
        output=str(output_path),
        failed=failed,
        malformed=len(malformed),
        replicas=pool.replicas,
        parts=store.parts_location,
        duplicates=final.duplicates,
        attempts=attempts,
        ray_init_s=round(ray_init_s, 3),
        actors_ready_s=tuple(round(run.ready[a][0], 3) for a in actors),
        actor_load_s=tuple(round(run.ready[a][1], 3) for a in actors),
        actor_rows=tuple(run.rows_by_actor[a] for a in actors),
        timeline=tuple(run.timeline),
        finalize_s=round(finalize_s, 3),
    )
