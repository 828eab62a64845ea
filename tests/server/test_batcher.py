"""The micro-batcher and the metrics on their own (no HTTP)."""

from __future__ import annotations

import asyncio
import time

import pytest

from guardreasoner_vl import InvalidInputError
from guardreasoner_vl.server.batcher import BatcherClosedError, MicroBatcher, QueueFullError
from guardreasoner_vl.server.metrics import Histogram, ServerMetrics


class Engine:
    """Records batches; can be held shut so that items pile up."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.running = 0
        self.max_running = 0

    async def __call__(self, items: list[int]) -> list[int]:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.gate.wait()
            self.batches.append(list(items))
            if any(i < 0 for i in items):
                raise RuntimeError("negative input")
            return [i * 10 for i in items]
        finally:
            self.running -= 1


async def started(engine: Engine, **kw: object) -> MicroBatcher[int, int]:
    batcher: MicroBatcher[int, int] = MicroBatcher(engine, **kw)  # type: ignore[arg-type]
    await batcher.start()
    return batcher


async def test_gathers_concurrent_items_up_to_max_batch_size() -> None:
    engine = Engine()
    batcher = await started(engine, max_batch_size=4, max_wait_ms=20)
    out = await asyncio.gather(*(batcher.submit([i]) for i in range(10)))
    assert out == [[i * 10] for i in range(10)]
    assert [len(b) for b in engine.batches] == [4, 4, 2]
    assert sorted(i for b in engine.batches for i in b) == list(range(10))
    await batcher.stop()


async def test_one_request_with_many_items_keeps_its_order() -> None:
    engine = Engine()
    batcher = await started(engine, max_batch_size=3, max_wait_ms=0)
    assert await batcher.submit([5, 1, 4, 2, 3]) == [50, 10, 40, 20, 30]
    assert all(len(b) <= 3 for b in engine.batches)
    await batcher.stop()


async def test_max_wait_bounds_how_long_a_lone_item_waits() -> None:
    engine = Engine()
    batcher = await started(engine, max_batch_size=8, max_wait_ms=150)
    start = time.perf_counter()
    assert await batcher.submit([1]) == [10]
    assert 0.13 <= time.perf_counter() - start < 1.0
    await batcher.stop()
    batcher = await started(engine, max_batch_size=8, max_wait_ms=0)
    start = time.perf_counter()
    await batcher.submit([1])
    assert time.perf_counter() - start < 0.1
    await batcher.stop()


async def test_queue_bound_raises_queue_full_without_queueing() -> None:
    engine = Engine()
    engine.gate.clear()
    metrics = ServerMetrics(model="m", backend="b", max_queue=3)
    batcher = await started(engine, max_batch_size=1, max_wait_ms=0, max_queue=3, metrics=metrics)
    first = asyncio.create_task(batcher.submit([1]))
    await asyncio.sleep(0.02)  # taken into the (held) batch: no longer waiting
    waiting = asyncio.create_task(batcher.submit([2, 3]))
    await asyncio.sleep(0.02)
    assert batcher.depth == 2
    with pytest.raises(QueueFullError, match="2 of 3"):
        await batcher.submit([4, 5])
    assert batcher.depth == 2  # the refused items were not queued
    third = asyncio.create_task(batcher.submit([6]))
    await asyncio.sleep(0.01)
    assert batcher.depth == 3 and batcher.max_depth_seen == 3
    assert metrics.queue_depth.value() == 3 and metrics.in_flight.value() == 1
    engine.gate.set()
    assert await first == [10] and await waiting == [20, 30] and await third == [60]
    await batcher.stop()


async def test_a_failing_batch_fails_only_its_own_items() -> None:
    engine = Engine()
    batcher = await started(engine, max_batch_size=2, max_wait_ms=0)
    with pytest.raises(RuntimeError, match="negative input"):
        await batcher.submit([-1])
    assert await batcher.submit([7]) == [70]
    await batcher.stop()


async def test_cancelled_callers_items_are_dropped() -> None:
    engine = Engine()
    engine.gate.clear()
    batcher = await started(engine, max_batch_size=4, max_wait_ms=0)
    blocker = asyncio.create_task(batcher.submit([1]))
    await asyncio.sleep(0.02)
    gone = asyncio.create_task(batcher.submit([2]))
    kept = asyncio.create_task(batcher.submit([3]))
    await asyncio.sleep(0.02)
    gone.cancel()
    engine.gate.set()
    assert await blocker == [10] and await kept == [30]
    assert [i for b in engine.batches for i in b] == [1, 3]
    await batcher.stop()


async def test_stop_fails_waiting_items_and_refuses_new_ones() -> None:
    engine = Engine()
    engine.gate.clear()
    batcher = await started(engine, max_batch_size=1, max_wait_ms=0)
    in_batch = asyncio.create_task(batcher.submit([1]))
    await asyncio.sleep(0.02)
    waiting = asyncio.create_task(batcher.submit([2]))
    await asyncio.sleep(0.02)
    await batcher.stop()
    for task in (in_batch, waiting):
        with pytest.raises(BatcherClosedError):
            await task
    with pytest.raises(BatcherClosedError):
        await batcher.submit([3])
    assert not batcher.running


async def test_several_workers_run_batches_at_once() -> None:
    engine = Engine()
    engine.gate.clear()
    batcher = await started(engine, max_batch_size=1, max_wait_ms=0, workers=3)
    tasks = [asyncio.create_task(batcher.submit([i])) for i in range(6)]
    await asyncio.sleep(0.05)
    assert engine.running == 3 and batcher.in_flight == 3 and batcher.depth == 3
    engine.gate.set()
    assert [await t for t in tasks] == [[i * 10] for i in range(6)]
    assert engine.max_running == 3
    await batcher.stop()


def test_bad_settings_are_refused() -> None:
    async def noop(items: list[int]) -> list[int]:
        return items

    for kw in ({"max_batch_size": 0}, {"max_wait_ms": -1}, {"max_queue": 0}, {"workers": 0}):
        with pytest.raises(InvalidInputError):
            MicroBatcher(noop, **kw)  # type: ignore[arg-type]


def test_histogram_and_label_escaping_parse_with_prometheus_client() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = ServerMetrics(model='we"ird\\name\nx', backend="b", max_queue=9)
    for size in (1, 3, 3, 200):
        metrics.batch_size.observe(size)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render())}
    buckets = {
        s.labels["le"]: s.value for s in families["guardreasoner_batch_size"].samples if s.name.endswith("_bucket")
    }
    assert buckets["1"] == 1 and buckets["2"] == 1 and buckets["4"] == 3 and buckets["128"] == 3
    assert buckets["+Inf"] == 4
    assert families["guardreasoner_info"].samples[0].labels["model"] == 'we"ird\\name\nx'
    hist = Histogram("h", "help", buckets=(1.0,))
    hist.observe(0.5)
    assert hist.count() == 1
