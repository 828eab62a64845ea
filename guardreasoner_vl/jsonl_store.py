"""One resumable JSONL file: whole-line durable appends, one torn-tail rule, one writer, atomic rewrites.

Every resumable writer of the package (``moderate-file``, the evaluation runner, hard-sample mining, and
anything new) keeps its rows in a :class:`JsonlStore`, so they all follow the same rules:

* **Whole lines, durable per batch.** :meth:`JsonlStore.append` encodes a batch of rows as complete lines
  (one JSON object a line; U+2028/U+2029 escaped so that no reader splits a row) and writes them with one
  ``O_APPEND`` write loop, then ``fsync``. A crash can therefore leave at most one *torn tail*: a last line
  cut short.
* **One torn-tail rule.** On open, the last line is a torn tail when it has no newline (whatever it
  holds: a row is written newline last, so a cut write always loses it), or when it ends with a newline
  but is not a JSON object and looks like the remains of a cut write (it starts with ``{``, or is only NUL
  bytes, the fill a crashed file system can leave). A torn tail is cut off (``truncate`` + ``fsync``),
  logged as a warning and reported in :attr:`JsonlStore.torn`, so that the caller can show it in its
  summary; the rows before it are kept. Any other bad line -- anywhere, the last one included -- is not a
  torn write but a damaged or foreign file: :meth:`JsonlStore.rows` raises :class:`StoreCorruptError`,
  naming the line, instead of guessing or deleting someone's data.
* **Done ids on open.** :meth:`JsonlStore.rows` reads the complete rows back (after the repair), in file order,
  with their byte spans; :meth:`JsonlStore.done_ids` is the set of ids already written.
* **One writer.** An advisory lock (POSIX ``flock``) on ``.<name>.lock`` beside the file is held from open to
  close; a second writer gets :class:`StoreLockedError` at once instead of interleaving its lines. The lock
  file is removed on close. (No lock on platforms without ``fcntl``.)
* **Atomic rewrite.** :meth:`JsonlStore.rewrite` replaces the whole file (for example to put rows back into
  input order): temporary file beside it, ``fsync``, ``rename``, ``fsync`` of the folder. A crash leaves
  either the old file or the new one; a temporary file left by a killed rewrite is removed on the next open.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> with JsonlStore(path) as store:
    ...     _ = store.append([{"id": "a", "ok": True}, {"id": "b", "ok": False}])
    >>> with JsonlStore(path) as store:
    ...     sorted(store.done_ids()), store.torn is None
    (['a', 'b'], True)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from guardreasoner_vl.errors import InvalidInputError

__all__ = ["JsonlStore", "StoreCorruptError", "StoreLockedError", "StoredRow", "TornTail", "encode_line"]

logger = logging.getLogger(__name__)

_TAIL_CHUNK = 1 << 16


class StoreLockedError(InvalidInputError):
    """Another writer holds the file's lock."""


class StoreCorruptError(InvalidInputError):
    """A complete line that is not the last one is not a JSON object: the file is damaged, not torn."""


@dataclass(frozen=True, slots=True)
class TornTail:
    """A torn last line that :class:`JsonlStore` cut off on open.

    Attributes:
        line: its line number (1-based).
        offset: the byte offset where it began (the new size of the file).
        size: how many bytes were cut.
        reason: ``"no newline"`` or ``"a cut-off row"`` (a complete line that is a row's broken start or NUL bytes).
        preview: its first bytes, for the log.
    """

    line: int
    offset: int
    size: int
    reason: str
    preview: str

    def describe(self) -> str:
        return f"cut a torn last line {self.line} ({self.size} bytes, {self.reason}) left by an interrupted run"


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One complete row of a store: where it is and what it holds."""

    line: int
    offset: int
    length: int
    data: dict[str, Any]


def encode_line(row: Mapping[str, Any]) -> bytes:
    """One row as one line of UTF-8 JSON, newline included, never split by any line reader."""
    text = json.dumps(dict(row), ensure_ascii=False)
    # json.dumps escapes \n; U+2028/U+2029 it keeps, and str.splitlines splits on them.
    return (text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n").encode("utf-8")


def _loads_object(raw: bytes) -> dict[str, Any] | None:
    """The JSON object on a line, or None when the line is not one (bad UTF-8, bad JSON, too deep, a list)."""
    try:  # UTF-8 only: json.loads(bytes) would guess UTF-16/32 from NUL bytes
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def _looks_cut(line: bytes) -> bool:
    """A complete but invalid last line that is the remains of a cut write: a row's start, or NUL fill."""
    body = line.rstrip(b"\r\n")
    return body.startswith(b"{") or (bool(body) and not body.strip(b"\x00"))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/filesystem allows it
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]


class JsonlStore:
    """A resumable JSONL file with one writer (see the module docs for the rules).

    Args:
        path: the file; created (with its folder) when missing.
        fresh: start again: empty the file on open.
        owner: who writes it, for the lock error (``"another <owner> job is writing <path>"``).
        lock: take the advisory lock (keep it on; off only for read-only inspection).

    Use it as a context manager, or call :meth:`open` and :meth:`close`.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fresh: bool = False, owner: str = "writer", lock: bool = True
    ) -> None:
        self.path = Path(path)
        self.owner = owner
        self.torn: TornTail | None = None
        self.appended = 0
        self._fresh = fresh
        self._lock = lock
        self._lock_handle: IO[bytes] | None = None
        self._fd: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> JsonlStore:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> JsonlStore:
        """Lock, create or empty the file, remove stale temporary files, and cut a torn tail."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._lock:
            self._acquire()
        try:
            for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # left by a killed rewrite
                with contextlib.suppress(OSError):
                    stale.unlink()
            if self._fresh or not self.path.exists():
                with self.path.open("wb") as handle:
                    os.fsync(handle.fileno())
                _fsync_dir(self.path.parent)
            self.torn = self._repair_tail()
        except BaseException:
            self._release()
            raise
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._release()

    def _acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock
            return
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        while True:
            handle = lock_path.open("ab")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise StoreLockedError(
                    f"another {self.owner} job is writing {self.path}; wait for it or stop it"
                ) from None
            # The holder before us may have unlinked the lock file between our open and our flock:
            # then we hold a lock nobody else can see; take it again on the file now at that path.
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(lock_path))
            except FileNotFoundError:
                same = False
            if same:
                self._lock_handle = handle
                return
            handle.close()

    def _release(self) -> None:
        handle, self._lock_handle = self._lock_handle, None
        if handle is None:
            return
        import fcntl

        with contextlib.suppress(OSError):
            self.path.with_name(f".{self.path.name}.lock").unlink()  # still holding it: nobody can race us
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()

    # -- torn tail ---------------------------------------------------------------------------------------

    def _repair_tail(self) -> TornTail | None:
        with self.path.open("r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return None
            # Find the start of the last line: read backwards from the end (ignoring a final newline).
            end = size - 1 if self._byte_at(handle, size - 1) == b"\n" else size
            start = end
            while start > 0:
                step = min(_TAIL_CHUNK, start)
                handle.seek(start - step)
                chunk = handle.read(step)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    start = start - step + cut + 1
                    break
                start -= step
            handle.seek(start)
            last = handle.read(size - start)
            if last.endswith(b"\n"):
                if not last.strip() or _loads_object(last) is not None or not _looks_cut(last):
                    return None  # a good row, or a bad line that is not ours: rows() says so
                reason = "a cut-off row"
            else:
                reason = "no newline"
            line = self._count_lines(handle, start) + 1
            handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())
        torn = TornTail(line, start, size - start, reason, last[:60].decode("utf-8", "replace"))
        logger.warning("%s: %s", self.path, torn.describe())
        return torn

    @staticmethod
    def _byte_at(handle: IO[bytes], offset: int) -> bytes:
        handle.seek(offset)
        return handle.read(1)

    @staticmethod
    def _count_lines(handle: IO[bytes], end: int) -> int:
        handle.seek(0)
        count, left = 0, end
        while left > 0:
            chunk = handle.read(min(_TAIL_CHUNK, left))
            if not chunk:
                break
            count += chunk.count(b"\n")
            left -= len(chunk)
        return count

    # -- reading -----------------------------------------------------------------------------------------

    def rows(self) -> Iterator[StoredRow]:
        """Every complete row, in file order (blank lines skipped).

        Raises:
            StoreCorruptError: a line is not a JSON object (only the last line can be torn, and open cut it).
        """
        with self.path.open("rb") as handle:
            offset = 0
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    data = _loads_object(raw)
                    if data is None:
                        raise StoreCorruptError(
                            f"{self.path}, line {number}: not a JSON object ({raw[:40]!r}); the file is damaged "
                            "or was written by something else"
                        )
                    yield StoredRow(number, offset, len(raw), data)
                offset += len(raw)

    def done_ids(
        self,
        *,
        key: Callable[[dict[str, Any]], Any] | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> set[str]:
        """The ids (``str(row["id"])``, or ``key(row)``) of the rows written, optionally only rows ``where`` holds."""
        get = key or (lambda row: row.get("id"))
        return {str(get(r.data)) for r in self.rows() if get(r.data) is not None and (where is None or where(r.data))}

    # -- writing -----------------------------------------------------------------------------------------

    def append(self, rows: Iterable[Mapping[str, Any] | bytes]) -> int:
        """Append rows (mappings, or lines from :func:`encode_line`) with one write and one fsync.

        Returns:
            The number of rows appended.
        """
        lines = [r if isinstance(r, bytes) else encode_line(r) for r in rows]
        for line in lines:
            if not line.endswith(b"\n") or b"\n" in line[:-1]:
                raise ValueError("a stored row must be exactly one line ending with a newline")
        if not lines:
            return 0
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _write_all(self._fd, b"".join(lines))
        os.fsync(self._fd)
        self.appended += len(lines)
        return len(lines)

    def rewrite(self, lines: Iterable[StoredRow | Mapping[str, Any] | bytes]) -> None:
        """Replace the file's content with ``lines`` atomically (temporary file, fsync, rename, folder fsync).

        A :class:`StoredRow` is copied byte for byte from the current file (so rows can be reordered or
        dropped without re-encoding them); a mapping is encoded with :func:`encode_line`; bytes are one line.
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with self.path.open("rb") as src, tmp.open("wb") as dst:
                for line in lines:
                    if isinstance(line, StoredRow):
                        src.seek(line.offset)
                        dst.write(src.read(line.length))
                    else:
                        dst.write(line if isinstance(line, bytes) else encode_line(line))
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(self.path.parent)
