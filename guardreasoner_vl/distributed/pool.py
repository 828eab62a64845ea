"""The Ray pieces shared by moderation and evaluation: the cluster, the readers and the actor pool.

The pipeline of one job is three Ray Data operators::

    blocks (from_arrow: one Arrow table per block of rows to judge; ids, where to read each row)
      -> read   (Ray tasks, zero CPUs, on the driver's node for local inputs): each row's item, its images
                 read into bytes so that they travel with the row to any machine
      -> judge  (map_batches over ActorPoolStrategy(size=replicas), num_gpus per actor): each actor loads one
                 Guard once and judges whole blocks, batch_size rows per engine call
      -> the driver (iter_batches): commits each complete block

Nothing here is a scheduler of its own: Ray Data schedules, backpressures, restarts dead actors (``max_restarts``)
and retries their tasks, and reports progress (rows, rows/s) with its own progress bars.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from guardreasoner_vl.errors import InvalidInputError, require

if TYPE_CHECKING:
    from guardreasoner_vl.distributed.spec import GuardSpec
    from guardreasoner_vl.inputs import InputLimits

__all__ = ["PoolOptions", "RayCluster", "Source", "carry_images", "require_ray", "run_blocks"]

logger = logging.getLogger(__name__)

_FEATURE = "running on Ray (--ray)"


def require_ray() -> Any:
    """``ray``, with Ray Data importable, or :class:`~guardreasoner_vl.errors.MissingDependencyError` naming
    ``pip install "guardreasoner-vl[ray]"``."""
    ray = require("ray", "ray", feature=_FEATURE)
    require("ray.data", "ray", package="ray[data]", feature=_FEATURE)
    return ray


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """The actor pool: how many guards, and what each one reserves.

    Attributes:
        replicas: actors, each loading one guard (one model replica).
        gpus_per_replica: GPUs each actor reserves (``num_gpus``); 0 for CPU engines or the remote engine.
            For vLLM with tensor parallelism, reserve the GPUs of one replica here and pass
            ``tensor_parallel_size`` as a backend option.
        cpus_per_replica: CPUs each actor reserves.
        block_rows: rows per block: the unit of work of one actor call and of one atomic commit. A multiple of
            the guard's batch size keeps engine batches the same as in one process.
        tasks_in_flight: blocks queued per actor, so that it never waits between blocks.
    """

    replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    block_rows: int = 64
    tasks_in_flight: int = 2

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise InvalidInputError(f"replicas must be at least 1, got {self.replicas}")
        if self.gpus_per_replica < 0 or self.cpus_per_replica < 0:
            raise InvalidInputError("gpus_per_replica and cpus_per_replica must be 0 or more")
        if self.block_rows < 1:
            raise InvalidInputError(f"block_rows must be at least 1, got {self.block_rows}")
        if self.tasks_in_flight < 1:
            raise InvalidInputError("tasks_in_flight must be at least 1")


class RayCluster:
    """Join the Ray cluster a job runs on: the one already initialised in this process, the one at
    ``address`` (``"auto"``, ``"ray://head:10001"``, ``"host:6379"``), or a new local one.

    A cluster this object started is shut down on exit; one it joined is left running.

    Attributes:
        init_s: seconds ``ray.init`` took (0 when the process was already connected).
    """

    def __init__(self, address: str | None = None, init_options: dict[str, Any] | None = None) -> None:
        self.address = address
        self.init_options = dict(init_options or {})
        self.started = False
        self.init_s = 0.0
        self._ray: Any = None

    def __enter__(self) -> RayCluster:
        ray = self._ray = require_ray()
        if ray.is_initialized():
            if self.address is not None:
                logger.info("Ray is already initialised in this process; address=%r is not used", self.address)
            return self
        start = time.perf_counter()
        ray.init(address=self.address, **self.init_options)
        self.init_s = time.perf_counter() - start
        self.started = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self._ray.shutdown()
            self.started = False

    @property
    def client_mode(self) -> bool:
        """True when connected through Ray Client (``ray://``): the driver's files are not on the cluster."""
        try:
            from ray.util.client import ray as client

            return bool(client.is_connected())
        except ImportError:  # pragma: no cover - Ray builds without the client
            return False

    def node_id(self) -> str:
        return str(self._ray.get_runtime_context().get_node_id())


# -- reading rows ---------------------------------------------------------------------------------------


def carry_images(value: Any, limits: InputLimits) -> Any:
    """``value`` with every local image file replaced by its bytes, so that the image travels with its row.

    ``data:`` and ``http(s)`` URLs, bytes and anything else are kept (the guard reads them where it runs). A
    file that cannot be read within ``limits.max_image_bytes`` keeps its path, so that the guard reports it by
    its own rules (on the same file system, with the same message). A list longer than ``limits.max_images``
    is left alone: the guard refuses it anyway.

    Example:
        >>> from guardreasoner_vl.inputs import DEFAULT_LIMITS
        >>> carry_images("data:image/png;base64,AAAA", DEFAULT_LIMITS)
        'data:image/png;base64,AAAA'
        >>> carry_images("/no/such/file.png", DEFAULT_LIMITS)
        '/no/such/file.png'
    """
    if isinstance(value, list):
        if len(value) > limits.max_images:
            return value
        return [_carry_one(v, limits) for v in value]
    return _carry_one(value, limits)


def _carry_one(value: Any, limits: InputLimits) -> Any:
    from guardreasoner_vl.inputs import _read_file

    if not isinstance(value, str) or not value or value.startswith(("data:", "http://", "https://")):
        return value
    if "://" in value[:16]:
        return value  # an unsupported scheme: the guard says so
    try:
        return _read_file(Path(value), limits)
    except Exception:  # unreadable here: the guard reads it again and records why, as in one process
        return value


def _image_value(value: Any) -> Any:
    """A Hugging Face ``datasets`` image (``{"bytes": ..., "path": ...}``, as Parquet stores it) as bytes or a path."""
    if isinstance(value, dict) and set(value) <= {"bytes", "path"}:
        return value.get("bytes") or value.get("path")
    if isinstance(value, list):
        return [_image_value(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Source:
    """How the read operator gets the rows of a block.

    Attributes:
        kind: ``"jsonl"`` (each row's line at a byte offset of ``path``), ``"parquet"`` (row numbers of
            ``path``) or ``"items"`` (the block carries its items, pickled, in a ``payload`` column).
        path: the input file (a local file on the driver's node).
        image_base: where relative image paths start.
        limits: the guard's input limits (``max_image_bytes`` bounds the images carried).
        max_line_bytes: longest JSONL line read.
    """

    kind: Literal["jsonl", "parquet", "items"]
    path: str | None
    image_base: str | None
    limits: InputLimits
    max_line_bytes: int = 0

    def read(self, table: Any) -> Any:
        """The block ``table`` with a ``payload`` column: each row pickled as ``(id, item or malformed line)``."""
        import pyarrow as pa

        from guardreasoner_vl.batch import _Malformed

        rows = table.to_pylist()
        if self.kind == "items":
            payloads = [self._carried(pickle.loads(r["payload"])) for r in rows]
            return table.set_column(table.schema.get_field_index("payload"), "payload", pa.array(payloads, pa.binary()))
        good = [r for r in rows if r["error"] is None]
        found = self._read_jsonl(good) if self.kind == "jsonl" else self._read_parquet(good)
        payloads = []
        for r in rows:
            if r["error"] is not None:
                payloads.append(pickle.dumps((r["key"], _Malformed(r["key"], r["line"], r["error"]))))
            else:
                payloads.append(self._carried(found[r["index"]]))
        return table.append_column("payload", pa.array(payloads, pa.binary()))

    def _carried(self, entry: tuple[Any, Any]) -> bytes:
        from guardreasoner_vl.batch import _resolve_image

        row_id, item = entry
        if isinstance(item, dict):
            image = _image_value(item.get("image"))
            if self.image_base is not None:
                image = _resolve_image(image, Path(self.image_base))
            item = {**item, "image": carry_images(image, self.limits)}
        return pickle.dumps((row_id, item))

    def _read_jsonl(self, rows: list[dict[str, Any]]) -> dict[int, tuple[Any, Any]]:
        from guardreasoner_vl.batch import _parse_row

        out: dict[int, tuple[Any, Any]] = {}
        assert self.path is not None
        with open(self.path, "rb") as handle:
            for r in rows:
                handle.seek(r["offset"])
                raw = handle.read(r["length"]).rstrip(b"\r\n")
                row, problem = _parse_row(raw)
                if row is None:  # the file changed since it was scanned
                    raise InvalidInputError(f"{self.path} changed while the job ran (byte {r['offset']}: {problem})")
                item = {"text": row.get("text"), "image": row.get("image"), "response": row.get("response")}
                out[r["index"]] = (row["id"], item)
        return out

    def _read_parquet(self, rows: list[dict[str, Any]]) -> dict[int, tuple[Any, Any]]:
        import pyarrow.parquet as pq

        out: dict[int, tuple[Any, Any]] = {}
        if not rows:
            return out
        assert self.path is not None
        parquet = pq.ParquetFile(self.path)
        columns = [c for c in ("id", "text", "image", "response") if c in parquet.schema_arrow.names]
        starts, total = [], 0
        for group in range(parquet.num_row_groups):
            starts.append(total)
            total += parquet.metadata.row_group(group).num_rows
        wanted: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            number = r["offset"]  # the row's position in the file
            group = max(g for g, s in enumerate(starts) if s <= number)
            wanted.setdefault(group, []).append(r)
        for group, members in wanted.items():
            data = parquet.read_row_group(group, columns=columns).to_pylist()
            for r in members:
                row = data[r["offset"] - starts[group]]
                item = {"text": row.get("text"), "image": row.get("image"), "response": row.get("response")}
                out[r["index"]] = (row["id"], item)
        return out


def _read_block(table: Any, source: Source) -> Any:
    return source.read(table)


# -- judging --------------------------------------------------------------------------------------------


class _GuardActor:
    """Loads one guard when the actor starts and keeps it for every block (Ray Data calls it per batch)."""

    def __init__(self, spec: GuardSpec) -> None:
        started = time.time()
        self.guard = spec.build()
        self.ready_at = time.time()
        self.load_s = self.ready_at - started
        self.chunk_rows = spec.batch_size
        self.actor = f"{os.uname().nodename}:{os.getpid()}"
        logger.info("actor %s loaded %s in %.2fs", self.actor, self.guard.model_id, self.load_s)

    def _groups(self, table: Any) -> Iterator[tuple[list[int], list[Any]]]:
        """``(positions, payloads)`` per chunk: batch_size rows of one block, never across blocks."""
        blocks = table.column("block").to_pylist()
        payloads = table.column("payload").to_pylist()
        start = 0
        while start < len(blocks):
            end = start
            while end < len(blocks) and blocks[end] == blocks[start] and end - start < self.chunk_rows:
                end += 1
            yield list(range(start, end)), [pickle.loads(p) for p in payloads[start:end]]
            start = end

    def _timing(self, n: int) -> dict[str, Any]:
        return {"actor": [self.actor] * n, "ready_at": [self.ready_at] * n, "load_s": [self.load_s] * n}


class ModerateActor(_GuardActor):
    """Judges blocks of ``moderate-file`` rows: the same rows :func:`~guardreasoner_vl.batch.moderate_file` writes."""

    def __init__(self, spec: GuardSpec) -> None:
        super().__init__(spec)
        self.model = str(self.guard.model_id)

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        from guardreasoner_vl.batch import _judge_rows
        from guardreasoner_vl.jsonl_store import encode_line

        lines: list[bytes] = [b""] * table.num_rows
        statuses: list[str] = [""] * table.num_rows
        flagged: list[bool] = [False] * table.num_rows
        for positions, batch in self._groups(table):
            for position, (result, row) in zip(positions, _judge_rows(self.guard, batch, self.model), strict=True):
                lines[position] = encode_line(row)
                statuses[position] = result.status
                flagged[position] = result.flagged
        return pa.table(
            {
                "block": table.column("block"),
                "block_rows": table.column("block_rows"),
                "index": table.column("index"),
                "key": table.column("key"),
                "line": pa.array(lines, pa.binary()),
                "status": pa.array(statuses, pa.string()),
                "flagged": pa.array(flagged, pa.bool_()),
                **self._timing(table.num_rows),
            }
        )


class EvalActor(_GuardActor):
    """Judges benchmark samples the way the evaluation runner does: prepared once, the prompt logged with it."""

    def __init__(self, spec: GuardSpec) -> None:
        super().__init__(spec)
        if self.guard.on_parse_error == "raise":
            self.guard = self.guard.with_options(on_parse_error="flag")  # failures are scored, not raised

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        from guardreasoner_vl.guard import PreparedItem

        results: list[str] = [""] * table.num_rows
        prompts: list[str] = [""] * table.num_rows
        for positions, batch in self._groups(table):
            prepared = self.guard.prepare_batch([item for _, item in batch])
            judged = self.guard.run_prepared(prepared)
            for position, item, result in zip(positions, prepared, judged, strict=True):
                results[position] = result.model_dump_json()
                prompts[position] = item.prompt.text if isinstance(item, PreparedItem) else ""
        n = table.num_rows
        guard = self.guard
        return pa.table(
            {
                "block": table.column("block"),
                "block_rows": table.column("block_rows"),
                "index": table.column("index"),
                "key": table.column("key"),
                "result": pa.array(results, pa.string()),
                "prompt": pa.array(prompts, pa.string()),
                "model": [str(guard.model_id)] * n,
                "family": [guard.family.value] * n,
                "backend": [guard.backend.name] * n,
                "max_new_tokens": [guard.params.max_new_tokens] * n,
                **self._timing(n),
            }
        )


def run_blocks(
    tables: Sequence[Any],
    *,
    source: Source,
    actor: type[_GuardActor],
    spec: GuardSpec,
    pool: PoolOptions,
    cluster: RayCluster,
    progress: bool | None = None,
) -> Iterator[Any]:
    """Run the pipeline over ``tables`` (one per block) and yield the judged rows as Arrow tables.

    Rows come back in no particular order and a block may come back in pieces; the caller assembles blocks
    by their ``block`` and ``block_rows`` columns.

    Args:
        progress: show Ray Data's progress bars (rows done, rows/s) for this job; None leaves Ray Data's own
            setting (``DataContext.enable_progress_bars``) as it is.
    """
    import ray.data

    if cluster.client_mode:
        # Ray Client: the driver's files are not on the cluster, so the driver reads and ships the rows itself.
        tables = [source.read(t) for t in tables]
    ds: Any = ray.data.from_arrow(list(tables))
    if not cluster.client_mode:
        # The input (spooled locally when it was a URI or stdin) and the image files it names are on the
        # driver's machine: the readers run there, and the rows (images included) travel to the actors.
        ds = ds.map_batches(
            _read_block,
            fn_kwargs={"source": source},
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=0,  # reading is I/O; with zero CPUs it never waits behind the actors for a core
            compute=ray.data.TaskPoolStrategy(size=max(2, pool.replicas)),
            udf_modifying_row_count=False,
            label_selector={"ray.io/node-id": cluster.node_id()},
        )
    ds = ds.map_batches(
        actor,
        fn_constructor_args=(spec,),
        batch_size=pool.block_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool.replicas, max_tasks_in_flight_per_actor=pool.tasks_in_flight),
        num_cpus=pool.cpus_per_replica,
        num_gpus=pool.gpus_per_replica or None,
        udf_modifying_row_count=False,
    )
    context = ray.data.DataContext.get_current()
    before = context.enable_progress_bars
    if progress is not None:
        context.enable_progress_bars = progress
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
    finally:
        context.enable_progress_bars = before
