"""A verdict cache: never pay twice for the same judgement.

``Guard(cache=...)`` looks every prepared item up before it goes to the engine and sends only the misses;
the server (``serve --cache``) and batch jobs (``moderate-file --cache``) use the same guard path.

**What is stored** is the engine's :class:`~guardreasoner_vl.backends.Generation` (text, token counts, finish
reason, log-probability trace), never the :class:`~guardreasoner_vl.GuardResult`: the parse, the parse-error
policy and the score thresholds are applied on a hit exactly as on a miss, so a guard with another
``threshold`` or ``on_parse_error`` shares the entries and still decides by its own policy. An engine error is
never stored.

**The key** is the SHA-256 of a canonical encoding (:func:`cache_key`) of everything that decides the output:

* the cache format version (:data:`CACHE_FORMAT`);
* the engine's identity (:meth:`Backend.cache_identity <guardreasoner_vl.backends.Backend.cache_identity>`):
  engine name and class, model id, and what else changes the output for that model -- dtype and device
  (transformers, vLLM), a local checkpoint's files (names, sizes, modification times), the server URL, the
  number of top log-probabilities asked for;
* the model family;
* the rendered prompt's parts (special tokens, text, image slot), rather than token ids. The engines tokenize
  these parts deterministically (:func:`~guardreasoner_vl.backends.tokenization.encode_prompt`: the same parts,
  the same tokenizer, the same image size give the same ids) and the tokenizer is pinned by the model in the
  engine's identity, so the parts decide the ids. They are also known before any engine work, and for every
  engine: a remote server tokenizes on its side, where no ids exist here;
* the prepared image, after normalisation: its mode, size and raw pixel bytes (what the engine receives);
* every :class:`~guardreasoner_vl.backends.SamplingParams` field (budget, temperature, top-p, seed, whether
  log-probabilities are asked for).

So a result is never served across different settings. **Sampling** (``temperature > 0``) without a seed is
never cached: each call is a new draw. Seeded sampling is cached (the seed fixes the draw; note that the
transformers engine draws a batch with one seed, so an item's draw also depends on its batch neighbours:
the cache returns the draw of its first computation). Greedy decoding of one input alone and inside a padded
batch can differ at rare near-ties of a low-precision model (padding changes floating-point rounding); the
cache likewise keeps the first computation.

Two stores: :class:`MemoryCache` (bounded LRU, in this process) and :class:`SqliteCache` (a file, shared by
processes: SQLite in WAL mode, each write one transaction, bounded in entries and bytes with least-recently-
used eviction). Both count hits, misses and stores (:attr:`VerdictCache.stats`); a store that fails (a full
disk, a locked file past the timeout) is logged and counted as an error, and the judgement goes on uncached.

Two identical requests that miss at the same moment are both computed (no request coalescing); the second
store replaces the first with the same content.

The stored outputs are the model's reasoning, which often quotes the moderated text: protect a cache file as
you would logs of that content (its folder's permissions; ``SqliteCache.clear()`` empties it). A cache file is
also **as trusted as the model**: whoever can write it can plant a well-formed answer ("unharmful") for an input
and it will be served. An entry that cannot be read back is dropped and counted as a miss.

Example:
    >>> from guardreasoner_vl import Guard
    >>> from guardreasoner_vl.backends import FakeBackend
    >>> engine = FakeBackend()
    >>> guard = Guard(backend=engine, cache=MemoryCache(max_entries=100))
    >>> a, b = guard.moderate("How do I bake bread?"), guard.moderate("How do I bake bread?")
    >>> len(engine.calls), guard.cache.stats.hits, a.raw_output == b.raw_output
    (1, 1, True)
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.backends.base import Generation, SamplingParams
from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.scores import LogprobTrace

if TYPE_CHECKING:
    from PIL import Image

    from guardreasoner_vl.prompts import RenderedPrompt

__all__ = [
    "CACHE_FORMAT",
    "CacheStats",
    "MemoryCache",
    "SqliteCache",
    "VerdictCache",
    "cache_key",
    "cacheable",
    "decode_generation",
    "encode_generation",
    "open_cache",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Version of the key and value encodings; part of every key, so a new format never reads an old entry."""


def cacheable(params: SamplingParams) -> bool:
    """Whether a result under ``params`` may be cached: greedy decoding, or sampling with a seed.

    Example:
        >>> cacheable(SamplingParams()), cacheable(SamplingParams(temperature=0.7)), \\
        ...     cacheable(SamplingParams(temperature=0.7, seed=1))
        (True, False, True)
    """
    return params.greedy or params.seed is not None


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def cache_key(
    *,
    identity: Mapping[str, Any],
    family: str,
    prompt: RenderedPrompt,
    image: Image.Image | None,
    params: SamplingParams,
) -> str:
    """The hex SHA-256 key of one judgement (see the module docs for what goes in and why).

    Example:
        >>> from guardreasoner_vl.prompts import ModelFamily, render_prompt
        >>> prompt = render_prompt(ModelFamily.VL, "hi")
        >>> k = cache_key(identity={"engine": "fake"}, family="vl", prompt=prompt, image=None, params=SamplingParams())
        >>> k == cache_key(identity={"engine": "fake"}, family="vl", prompt=prompt, image=None,
        ...                params=SamplingParams(max_new_tokens=8))
        False
    """
    header = {
        "format": CACHE_FORMAT,
        "identity": dict(identity),
        "family": family,
        "prompt": [[part.kind, part.value] for part in prompt.parts],
        "params": asdict(params),
        "image": None if image is None else {"mode": image.mode, "size": list(image.size)},
    }
    digest = hashlib.sha256(_canonical(header))
    if image is not None:
        digest.update(b"\x00pixels\x00")
        digest.update(image.tobytes())
    return digest.hexdigest()


def encode_generation(generation: Generation) -> bytes:
    """A :class:`Generation` as JSON bytes (log-probabilities of minus infinity included).

    Raises:
        ValueError: the generation carries an error (errors are never cached).
    """
    if generation.error is not None:
        raise ValueError("a generation with an error is never cached")
    trace = generation.logprobs
    data: dict[str, Any] = {
        "text": generation.text,
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "finish_reason": generation.finish_reason,
        "logprobs": None
        if trace is None
        else {
            "offsets": list(trace.offsets),
            # JSON has no infinities: a log-probability of minus infinity (probability 0) is written as null
            "candidates": {
                str(pos): {tok: (lp if math.isfinite(lp) else None) for tok, lp in cands.items()}
                for pos, cands in trace.candidates.items()
            },
        },
    }
    return _canonical(data)


def decode_generation(raw: bytes) -> Generation:
    """The :class:`Generation` written by :func:`encode_generation`.

    Raises:
        ValueError: ``raw`` is not such an encoding.
    """
    try:
        data = json.loads(raw)
        trace = None
        if data["logprobs"] is not None:
            trace = LogprobTrace(
                offsets=tuple(int(x) for x in data["logprobs"]["offsets"]),
                candidates={
                    int(pos): {str(tok): (float(lp) if lp is not None else float("-inf")) for tok, lp in cands.items()}
                    for pos, cands in data["logprobs"]["candidates"].items()
                },
            )
        reason = data["finish_reason"]
        return Generation(
            text=str(data["text"]),
            prompt_tokens=data["prompt_tokens"],
            completion_tokens=data["completion_tokens"],
            finish_reason=reason if reason in ("stop", "length") else None,
            logprobs=trace,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a cached generation: {exc}") from exc


@dataclass(slots=True)
class CacheStats:
    """Counts of one cache object (this process's lookups; a shared file's other users count their own).

    Attributes:
        hits: lookups that found an entry.
        misses: lookups that did not (including lookups that failed).
        stores: entries written.
        errors: reads or writes that failed (logged; the judgement went on without the cache).
    """

    hits: int = 0
    misses: int = 0
    stores: int = 0
    errors: int = 0


class VerdictCache(abc.ABC):
    """A store of engine generations by :func:`cache_key`; see the module docs.

    Subclasses write :meth:`_load`, :meth:`_save` and optionally :meth:`clear`, :meth:`close`, ``__len__``;
    :meth:`get` and :meth:`put` count the statistics and turn a failing store into a logged miss.
    """

    def __init__(self) -> None:
        self.stats = CacheStats()
        self._stats_lock = threading.Lock()

    @abc.abstractmethod
    def _load(self, key: str) -> Generation | None:
        """The entry for ``key``, or None."""

    @abc.abstractmethod
    def _save(self, key: str, generation: Generation, encoded: bytes) -> None:
        """Store ``generation`` (``encoded`` is its serialised form, for sizes and files)."""

    def _count(self, **amounts: int) -> None:
        with self._stats_lock:
            for name, amount in amounts.items():
                setattr(self.stats, name, getattr(self.stats, name) + amount)

    def get(self, key: str) -> Generation | None:
        """The stored generation for ``key``, or None (a miss; also when the store failed, which is logged)."""
        try:
            found = self._load(key)
        except Exception as exc:  # a broken cache must never fail a judgement
            logger.warning("verdict cache read failed (%s: %s); judging without it", type(exc).__name__, exc)
            self._count(misses=1, errors=1)
            return None
        self._count(**({"hits": 1} if found is not None else {"misses": 1}))
        return found

    def get_many(self, keys: Sequence[str | None]) -> list[Generation | None]:
        """:meth:`get` for each key; ``None`` keys (not cacheable) are neither looked up nor counted."""
        return [self.get(k) if k is not None else None for k in keys]

    def put(self, key: str, generation: Generation) -> None:
        """Store ``generation`` under ``key``. A generation with an error is never stored; a failure is logged."""
        if generation.error is not None:
            return
        try:
            self._save(key, generation, encode_generation(generation))
        except Exception as exc:
            logger.warning("verdict cache write failed (%s: %s); result not cached", type(exc).__name__, exc)
            self._count(errors=1)
            return
        self._count(stores=1)

    def put_many(self, entries: Iterable[tuple[str, Generation]]) -> None:
        """:meth:`put` for each ``(key, generation)``."""
        for key, generation in entries:
            self.put(key, generation)

    def clear(self) -> None:  # noqa: B027 - optional
        """Remove every entry."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release files and connections. Idempotent."""

    def __enter__(self) -> VerdictCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryCache(VerdictCache):
    """An in-process LRU cache, bounded by entries and by bytes (of the stored generations' encodings).

    Args:
        max_entries: most entries kept; the least recently used goes first.
        max_bytes: most bytes kept (an entry larger than this is not stored).
    """

    def __init__(self, *, max_entries: int = 10_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        super().__init__()
        if max_entries < 1 or max_bytes < 1:
            raise InvalidInputError("max_entries and max_bytes must be at least 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Generation, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def _load(self, key: str) -> Generation | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def _save(self, key: str, generation: Generation, encoded: bytes) -> None:
        size = len(encoded)
        if size > self.max_bytes:
            logger.info("a generation of %d bytes is larger than the memory cache (%d bytes); not cached", size, size)
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (generation, size)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __repr__(self) -> str:
        return f"MemoryCache(entries={len(self)}/{self.max_entries}, bytes={self._bytes}/{self.max_bytes})"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_used ON entries(used);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 0), entries INTEGER NOT NULL, bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals (id, entries, bytes) VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries
    BEGIN UPDATE totals SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries
    BEGIN UPDATE totals SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_resized AFTER UPDATE OF size ON entries
    BEGIN UPDATE totals SET bytes = bytes + NEW.size - OLD.size WHERE id = 0; END;
"""
_KIND = "guardreasoner-vl verdict cache"


class SqliteCache(VerdictCache):
    """A verdict cache in an SQLite file, safe to share between threads and processes.

    The file is in WAL mode (readers never wait for the writer), every write is one ``BEGIN IMMEDIATE``
    transaction (concurrent writers of several processes queue on SQLite's lock, up to ``timeout_s``), and
    running totals kept by triggers bound the file: after each write the least recently used entries are
    deleted until at most ``max_entries`` entries and ``max_bytes`` bytes of values remain. A read marks its
    entry used only when the mark is older than ``touch_after_s`` (so reads seldom write; the eviction order is
    least recently used to within that time).

    Args:
        path: the database file (created with its folder when missing).
        max_entries: most entries kept.
        max_bytes: most bytes of stored values kept (the file itself is somewhat larger: keys, indexes, pages
            freed by eviction and reused later; it never shrinks on its own).
        timeout_s: how long a read or write waits for another process's lock before it fails (then logged and
            counted as an error: the judgement goes on uncached).
        touch_after_s: see above.

    Raises:
        InvalidInputError: the file exists and is not a verdict cache (or not SQLite at all).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_entries: int = 1_000_000,
        max_bytes: int = 2 * 1024 * 1024 * 1024,
        timeout_s: float = 30.0,
        touch_after_s: float = 60.0,
    ) -> None:
        super().__init__()
        if max_entries < 1 or max_bytes < 1:
            raise InvalidInputError("max_entries and max_bytes must be at least 1")
        self.path = Path(path)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.timeout_s = float(timeout_s)
        self.touch_after_s = float(touch_after_s)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._closed = False
        with self._lock:
            self._connection()  # fail now, not at the first judgement, on a bad file

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (a forked child opens its own)."""
        if self._closed:
            raise InvalidInputError(f"the verdict cache {self.path} is closed")
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self.path.is_dir():
            raise InvalidInputError(f"the verdict cache {self.path} is a folder; give a file path (or 'memory')")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise InvalidInputError(f"cannot open the verdict cache {self.path}: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            kind = conn.execute("SELECT value FROM meta WHERE name = 'kind'").fetchone()
            if kind is None:
                conn.execute("INSERT INTO meta (name, value) VALUES ('kind', ?)", (_KIND,))
                conn.execute("INSERT INTO meta (name, value) VALUES ('format', ?)", (str(CACHE_FORMAT),))
            elif kind[0] != _KIND:
                raise InvalidInputError(f"{self.path} is an SQLite file but not a verdict cache")
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise InvalidInputError(f"{self.path} cannot be used as a verdict cache: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _load(self, key: str) -> Generation | None:
        with self._lock:
            conn = self._connection()
            row = conn.execute("SELECT value, used FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            now = time.time()
            if now - row[1] > self.touch_after_s:
                conn.execute("UPDATE entries SET used = ? WHERE key = ?", (now, key))
        try:
            return decode_generation(row[0])
        except ValueError:
            logger.warning("verdict cache %s: unreadable entry %s dropped", self.path, key[:12])
            with self._lock:
                self._connection().execute("DELETE FROM entries WHERE key = ?", (key,))
            return None

    def _save(self, key: str, generation: Generation, encoded: bytes) -> None:
        size = len(encoded)
        if size > self.max_bytes:
            logger.info("a generation of %d bytes is larger than the cache's max_bytes; not cached", size)
            return
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO entries (key, value, size, used) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, size = excluded.size, used = excluded.used",
                    (key, encoded, size, time.time()),
                )
                self._evict(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _evict(self, conn: sqlite3.Connection) -> None:
        entries, total = conn.execute("SELECT entries, bytes FROM totals WHERE id = 0").fetchone()
        while entries > self.max_entries or total > self.max_bytes:
            batch = conn.execute("SELECT key, size FROM entries ORDER BY used LIMIT 64").fetchall()
            if not batch:  # pragma: no cover - totals and rows always agree (triggers)
                break
            for old_key, old_size in batch:
                if entries <= self.max_entries and total <= self.max_bytes:
                    break
                conn.execute("DELETE FROM entries WHERE key = ?", (old_key,))
                entries -= 1
                total -= old_size

    def totals(self) -> tuple[int, int]:
        """``(entries, bytes of values)`` in the file now (all processes' entries)."""
        with self._lock:
            row = self._connection().execute("SELECT entries, bytes FROM totals WHERE id = 0").fetchone()
        return int(row[0]), int(row[1])

    def __len__(self) -> int:
        return self.totals()[0]

    def clear(self) -> None:
        with self._lock:
            self._connection().execute("DELETE FROM entries")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            conn.close()

    def __repr__(self) -> str:
        return f"SqliteCache({str(self.path)!r}, max_entries={self.max_entries}, max_bytes={self.max_bytes})"


def open_cache(spec: str | os.PathLike[str] | VerdictCache) -> VerdictCache:
    """A cache from a command-line style spec: ``"memory"`` (a :class:`MemoryCache`), else an SQLite file path.

    A :class:`VerdictCache` is returned as it is. (A file actually named ``memory``: write ``./memory``.)

    Example:
        >>> open_cache("memory")
        MemoryCache(entries=0/10000, bytes=0/268435456)
    """
    if isinstance(spec, VerdictCache):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise InvalidInputError(f"cache must be 'memory', a file path or a VerdictCache, got {type(spec).__name__}")
    if str(spec) == "memory":
        return MemoryCache()
    if not str(spec).strip():
        raise InvalidInputError("cache path is empty; give 'memory' or a file path")
    return SqliteCache(spec)
