"""Where a Ray moderation job keeps its results: a folder of committed parts, then one final file.

``OUT`` (a local path or a URI that :mod:`pyarrow.fs` opens: ``s3://``, ``gs://``, ``hdfs://``, ``file://``,
...) gets a sibling folder ``OUT.parts/``:

* **A part is one judged block**, one JSONL row per input row (the rows of ``moderate-file``), named
  ``part-<first input index>-<digest of its ids>.jsonl``. The name is a function of the rows it holds, so a
  block judged twice (a Ray retry delivering the same block again) overwrites itself instead of adding a
  copy.
* **A commit is atomic**: the part is written under a temporary name (``.part-....tmp``) and renamed into
  place (after ``fsync`` on a local disk), so a part is visible complete or not at all; a temporary file
  left by a killed run is removed on the next start. On object stores the rename is a server-side copy of a
  finished object: the part appears in one step too.
* **The final file** (JSONL, or Parquet) is written from the parts, in input order, under a temporary name
  and renamed over ``OUT`` the same way.
* **One writer** (local outputs): the job holds an advisory lock on ``OUT.parts/runs.jsonl`` (the
  :class:`~guardreasoner_vl.jsonl_store.JsonlStore` lock), which logs one line per run. Two jobs on one URI
  output are not detected: run one at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardreasoner_vl.batch import RETRY_STATUSES, _key, _short
from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.jsonl_store import JsonlStore, _fsync_dir, _loads_object

__all__ = ["PART_PATTERN", "OutputStore", "PartsIndex", "is_uri", "part_name"]

logger = logging.getLogger(__name__)

PART_PATTERN = re.compile(r"^part-(\d{12})-([0-9a-f]{16})\.jsonl$")
"""File names of committed parts; anything else in the folder is ignored (temporary files are removed)."""

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` (opened with :mod:`pyarrow.fs`), False for a plain path.

    Example:
        >>> is_uri("s3://bucket/out.jsonl"), is_uri("out/verdicts.jsonl")
        (True, False)
    """
    return bool(_URI.match(str(location)))


def part_name(first_index: int, keys: Sequence[str]) -> str:
    """The name of the part holding the rows ``keys`` (in order), the first of which is input row ``first_index``.

    Example:
        >>> part_name(32, ["a", "b"])[:18]
        'part-000000000032-'
    """
    digest = hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()[:16]
    return f"part-{first_index:012d}-{digest}.jsonl"


def _pyarrow_fs() -> Any:
    from guardreasoner_vl.errors import require

    return require("pyarrow.fs", "ray", package="pyarrow", feature="reading and writing URIs")


class OutputStore:
    """The parts folder and final file of one output (see the module docs).

    Args:
        output: the final file: a local path or a URI.

    Use it as a context manager (:meth:`open` locks a local output and cleans up after a killed run).
    """

    def __init__(self, output: str | os.PathLike[str]) -> None:
        self.output = str(output)
        self.remote = is_uri(self.output)
        self._fs: Any = None
        if self.remote:
            self._fs, self._final = _pyarrow_fs().FileSystem.from_uri(self.output)
        else:
            self._final = str(Path(self.output))
        self._parts = self._final.rstrip("/") + ".parts"
        self.parts_location = self.output.rstrip("/") + ".parts"
        self._log: JsonlStore | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> OutputStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, *, fresh: bool = False, note: dict[str, Any] | None = None) -> OutputStore:
        """Create the parts folder, take the lock (local outputs), remove temporary files of killed runs.

        Args:
            fresh: start again: remove every part and the final file.
            note: what to log about this run in ``runs.jsonl`` (local outputs).

        Raises:
            StoreLockedError: another job writes this output.
        """
        self._mkdir(self._parts)
        if not self.remote:
            self._log = JsonlStore(Path(self._parts) / "runs.jsonl", owner="moderate-file --ray")
            self._log.open()
        for name in self._listdir(self._parts):
            if name.startswith(".part-") and name.endswith(".tmp"):
                self._remove(f"{self._parts}/{name}")
        if fresh:
            for name in self.names():
                self._remove(f"{self._parts}/{name}")
            self._remove(self._final)
        if self._log is not None:
            self._log.append([{"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid(), **(note or {})}])
        return self

    def close(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()

    # -- parts -------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The committed parts, sorted by name (so by their first input index)."""
        return sorted(n for n in self._listdir(self._parts) if PART_PATTERN.match(n))

    def read(self, name: str) -> bytes:
        """The content of one committed part."""
        return self._read(f"{self._parts}/{name}")

    def commit(self, name: str, data: bytes) -> None:
        """Write a part atomically (temporary name, then rename); an existing part of that name is replaced."""
        if not PART_PATTERN.match(name):
            raise ValueError(f"not a part name: {name!r}")
        self._write_atomic(f"{self._parts}/{name}", [data], tmp_dir=self._parts, tmp_name=f".{name}")

    def remove(self, name: str) -> None:
        self._remove(f"{self._parts}/{name}")

    # -- final file --------------------------------------------------------------------------------------

    def write_final(self, chunks: Iterable[bytes]) -> None:
        """Replace the final file with ``chunks`` atomically (temporary file beside it, then rename)."""
        parent, _, base = self._final.rpartition("/")
        if not self.remote:
            parent, base = str(Path(self._final).parent), Path(self._final).name
        self._write_atomic(self._final, chunks, tmp_dir=parent or ".", tmp_name=f".{base}")

    def final_exists(self) -> bool:
        if self.remote:
            info = self._fs.get_file_info(self._final)
            return bool(info.type == _pyarrow_fs().FileType.File)
        return Path(self._final).is_file()

    # -- file system -------------------------------------------------------------------------------------

    def _mkdir(self, path: str) -> None:
        if self.remote:
            self._fs.create_dir(path, recursive=True)
        else:
            Path(path).mkdir(parents=True, exist_ok=True)

    def _listdir(self, path: str) -> list[str]:
        if self.remote:
            pafs = _pyarrow_fs()
            infos = self._fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
            return [info.base_name for info in infos if info.type == pafs.FileType.File]
        try:
            return [entry.name for entry in os.scandir(path) if entry.is_file()]
        except FileNotFoundError:
            return []

    def _read(self, path: str) -> bytes:
        if self.remote:
            with self._fs.open_input_stream(path) as stream:
                return bytes(stream.read())
        return Path(path).read_bytes()

    def _remove(self, path: str) -> None:
        if self.remote:
            with contextlib.suppress(FileNotFoundError, OSError):
                self._fs.delete_file(path)
        else:
            Path(path).unlink(missing_ok=True)

    def _write_atomic(self, path: str, chunks: Iterable[bytes], *, tmp_dir: str, tmp_name: str) -> None:
        tmp = f"{tmp_dir}/{tmp_name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            if self.remote:
                with self._fs.open_output_stream(tmp) as stream:
                    for chunk in chunks:
                        stream.write(chunk)
                self._fs.move(tmp, path)
            else:
                with open(tmp, "wb") as handle:
                    for chunk in chunks:
                        handle.write(chunk)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
                _fsync_dir(Path(tmp_dir))
        except BaseException:
            self._remove(tmp)
            raise


@dataclass
class PartsIndex:
    """What the committed parts hold, checked against the input.

    Attributes:
        winner: for each input key found, the part whose row counts (see :meth:`OutputStore` docs: a key
            in two parts keeps the row whose status is final, then the part first by name).
        statuses: the status of each winning row.
        flagged: the ``flagged`` of each winning row.
        duplicates: rows found in more than one part (only the winner counts).
        parts: per part name, the input indexes of its winning rows, ascending.
    """

    winner: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    flagged: dict[str, bool] = field(default_factory=dict)
    duplicates: int = 0
    parts: dict[str, list[int]] = field(default_factory=dict)
    int_ids: bool = True

    @classmethod
    def build(cls, store: OutputStore, index_of: dict[str, int]) -> PartsIndex:
        """Read every committed part and check it belongs to this input.

        Raises:
            InvalidInputError: a part holds a line that is not a row, or an id that is not in the input.
        """
        out = cls()
        seen: dict[str, tuple[str, str, bool]] = {}
        for name in store.names():
            for number, line in enumerate(store.read(name).splitlines(), start=1):
                if not line.strip():
                    continue
                row = _loads_object(line)
                if row is None:
                    raise InvalidInputError(
                        f"{store.parts_location}/{name}, line {number}: not a JSON object; the parts folder is "
                        "damaged or was written by something else (use --overwrite to start again)"
                    )
                key = _key(row.get("id"))
                if key is None or key not in index_of:
                    raise InvalidInputError(
                        f"{store.parts_location}/{name}, line {number}: id {_short(row.get('id'))} is not in the "
                        "input; this output belongs to another input. Use another output, or --overwrite to start "
                        "again"
                    )
                status = str(row.get("status", ""))
                if key in seen:
                    out.duplicates += 1
                    if seen[key][1] in RETRY_STATUSES and status not in RETRY_STATUSES:
                        seen[key] = (name, status, bool(row.get("flagged")))
                    continue
                seen[key] = (name, status, bool(row.get("flagged")))
                if isinstance(row.get("id"), bool) or not isinstance(row.get("id"), int):
                    out.int_ids = False
        for key, (name, status, flagged) in seen.items():
            out.winner[key] = name
            out.statuses[key] = status
            out.flagged[key] = flagged
            out.parts.setdefault(name, []).append(index_of[key])
        for indexes in out.parts.values():
            indexes.sort()
        if out.duplicates:
            logger.warning(
                "%s: %d row(s) were found in more than one part (a retried row, or a run stopped while it "
                "replaced a part); each input row keeps one of them",
                store.parts_location,
                out.duplicates,
            )
        return out


def ordered_rows(store: OutputStore, index: PartsIndex, keys: Sequence[str]) -> Iterator[bytes]:
    """The winning row of every input key, as a JSONL line, in input order.

    Parts are read once each, in order of their first row, and dropped once emitted, so memory holds only the
    parts whose rows interleave at the current position.

    Raises:
        InvalidInputError: a key has no row (the caller checks completeness first).
    """
    order = sorted(index.parts, key=lambda name: index.parts[name][0])
    position = 0
    loaded: dict[int, bytes] = {}
    index_of = {k: i for i, k in enumerate(keys)}
    for i, key in enumerate(keys):
        while position < len(order) and index.parts[order[position]][0] <= i:
            name = order[position]
            position += 1
            for line in store.read(name).splitlines():
                row = _loads_object(line) if line.strip() else None
                if row is None:
                    continue
                row_key = _key(row.get("id"))
                if row_key is not None and index.winner.get(row_key) == name:
                    loaded[index_of[row_key]] = line + b"\n"
        found = loaded.pop(i, None)
        if found is None:
            raise InvalidInputError(f"{store.parts_location}: no row for input id {key!r}")
        yield found


def parquet_chunks(lines: Iterable[bytes], *, int_ids: bool, rows_per_group: int = 4096) -> Iterator[Any]:
    """Arrow tables of the rows (for a Parquet final file): ``id`` is int64 when every id is an integer, else
    a string (an integer id ``7`` is written ``"7"``); other columns come from the rows themselves."""
    import pyarrow as pa

    def table(rows: list[dict[str, Any]]) -> Any:
        columns = list(dict.fromkeys(k for row in rows for k in row))  # every key, first seen first
        return pa.table({k: [row.get(k) for row in rows] for k in columns})

    batch: list[dict[str, Any]] = []
    for line in lines:
        row = json.loads(line)
        if not int_ids:
            row["id"] = str(row["id"])
        batch.append(row)
        if len(batch) >= rows_per_group:
            yield table(batch)
            batch = []
    if batch:
        yield table(batch)


def parquet_bytes(tables: Iterable[Any]) -> bytes:
    """One Parquet file of the tables (their schemas unified: a column null in one chunk takes the others' type)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = list(tables)
    if not tables:
        table = pa.table({"id": pa.array([], pa.string())})
    else:
        table = pa.concat_tables(tables, promote_options="permissive")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())
