"""Micro-batching: concurrent requests are gathered into one engine call.

Every HTTP request puts its items (one per moderation input) on one bounded queue and waits for their
results. A worker takes the first waiting item, then keeps taking items until it holds ``max_batch_size`` of
them or ``max_wait_ms`` has passed since it took the first, and runs them as one batch. While a batch runs,
new items queue up, so under load batches fill without waiting at all.

The queue is bounded in *items*: :meth:`MicroBatcher.submit` raises :class:`QueueFullError` (the server
answers 429) when the waiting items plus the new ones would exceed ``max_queue``. Items already inside a
running batch do not count; at most ``workers * max_batch_size`` of them exist at once.

An item whose caller went away (its HTTP request was cancelled) is dropped before its batch runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from guardreasoner_vl.errors import GuardError, InvalidInputError
from guardreasoner_vl.server.metrics import ServerMetrics

__all__ = ["BatcherClosedError", "MicroBatcher", "QueueFullError"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class QueueFullError(GuardError):
    """The queue holds ``max_queue`` items already: try again later (HTTP 429)."""


class BatcherClosedError(GuardError):
    """The batcher is stopped (the server is shutting down): HTTP 503."""


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[T, R]):
    """Gathers items submitted concurrently into batches for ``run_batch``.

    Args:
        run_batch: ``async (items) -> results``, one result per item, in order. If it raises, every item of
            that batch fails with the exception.
        max_batch_size: most items per call.
        max_wait_ms: how long the first item of a batch waits for more (0: take only what is waiting).
        max_queue: most items waiting at once; beyond it :meth:`submit` raises :class:`QueueFullError`.
        workers: batches that may run at once (1 for a local engine; more for a remote one).
        metrics: where to record batch sizes, latency and queue depth.

    Example:
        >>> import asyncio
        >>> async def double(items):
        ...     return [2 * i for i in items]
        >>> async def main():
        ...     batcher = MicroBatcher(double, max_batch_size=4, max_wait_ms=5)
        ...     await batcher.start()
        ...     out = await asyncio.gather(*(batcher.submit([i]) for i in range(6)))
        ...     await batcher.stop()
        ...     return out, batcher.batch_sizes
        >>> asyncio.run(main())
        ([[0], [2], [4], [6], [8], [10]], [4, 2])
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        workers: int = 1,
        metrics: ServerMetrics | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise InvalidInputError("max_batch_size must be at least 1")
        if max_wait_ms < 0:
            raise InvalidInputError("max_wait_ms must be 0 or more")
        if max_queue < 1:
            raise InvalidInputError("max_queue must be at least 1")
        if workers < 1:
            raise InvalidInputError("workers must be at least 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.workers = workers
        self.metrics = metrics
        self._queue: deque[_Pending[T, R]] = deque()
        self._ready: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._closed = False
        self.batch_sizes: list[int] = []
        """Size of every batch run so far (the last 10,000), for tests and benchmarks."""
        self.max_depth_seen = 0
        """The highest queue depth seen (never above ``max_queue``)."""

    # -- state --------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Items waiting for a batch now."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Items inside running batches now."""
        return self._in_flight

    @property
    def running(self) -> bool:
        """True while the workers run."""
        return bool(self._tasks) and not self._closed and not any(t.done() for t in self._tasks)

    def has_room(self, n: int) -> bool:
        """Whether ``n`` more items would fit in the queue now."""
        return self.depth + n <= self.max_queue

    def _record_depth(self) -> None:
        depth = len(self._queue)
        self.max_depth_seen = max(self.max_depth_seen, depth)
        if self.metrics is not None:
            self.metrics.set_queue_depth(depth)
            self.metrics.in_flight.set(self._in_flight)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers on the running event loop."""
        if self._tasks:
            return
        self._closed = False
        self._ready = asyncio.Event()
        self._tasks = [asyncio.create_task(self._worker(), name=f"grvl-batcher-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        """Stop the workers; items still waiting fail with :class:`BatcherClosedError`."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # pragma: no cover - a worker never raises
                logger.exception("batcher worker failed")
        self._tasks = []
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(BatcherClosedError("the server is shutting down"))
        self._record_depth()

    # -- submitting ---------------------------------------------------------------------------------

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Queue ``items`` and wait for their results (in order).

        Raises:
            QueueFullError: the queue has no room for all of them (nothing is queued).
            BatcherClosedError: the batcher is not running.
            Exception: whatever ``run_batch`` raised for the batch an item was in.
        """
        if self._closed or not self._tasks or self._ready is None:
            raise BatcherClosedError("the server is not accepting requests (shutting down or not started)")
        if not items:
            return []
        if not self.has_room(len(items)):
            raise QueueFullError(
                f"the queue is full ({self.depth} of {self.max_queue} items waiting); retry after a short wait"
            )
        loop = asyncio.get_running_loop()
        pendings: list[_Pending[T, R]] = [_Pending(item, loop.create_future()) for item in items]
        self._queue.extend(pendings)
        self._record_depth()
        self._ready.set()
        return list(await asyncio.gather(*(p.future for p in pendings)))

    # -- working ------------------------------------------------------------------------------------

    def _take(self) -> _Pending[T, R] | None:
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():  # a cancelled caller's item is dropped here
                return pending
        return None

    async def _next_batch(self) -> list[_Pending[T, R]]:
        assert self._ready is not None  # set by start()
        loop = asyncio.get_running_loop()
        first = None
        while first is None:
            first = self._take()
            if first is None:
                self._ready.clear()
                self._record_depth()
                await self._ready.wait()
        batch = [first]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            nxt = self._take()
            if nxt is not None:
                batch.append(nxt)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), remaining)
            except TimeoutError:
                break
        if self._queue:  # more work for another worker
            self._ready.set()
        return batch

    async def _worker(self) -> None:
        while True:
            batch = await self._next_batch()
            self._in_flight += len(batch)
            self._record_depth()
            try:
                await self._run(batch)
            finally:
                self._in_flight -= len(batch)
                self._record_depth()

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        self.batch_sizes.append(len(batch))
        if len(self.batch_sizes) > 10_000:
            del self.batch_sizes[:5_000]
        start = time.perf_counter()
        try:
            results = await self._run_batch([p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(BatcherClosedError("the server is shutting down"))
            raise
        except Exception as exc:
            logger.exception("a batch of %d item(s) failed", len(batch))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        else:
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
        finally:
            if self.metrics is not None:
                self.metrics.batches.inc()
                self.metrics.batch_size.observe(len(batch))
                self.metrics.batch_latency.observe(time.perf_counter() - start)
