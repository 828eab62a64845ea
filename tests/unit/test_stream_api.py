"""``Guard.stream`` / ``Guard.astream`` and the ``Backend.stream`` contract, without torch: the real prompt and
parser around engines whose streaming is scripted (the model tier runs the same on a real model)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from guardreasoner_vl import (
    BackendError,
    FinalResult,
    Guard,
    InvalidInputError,
    ModelFamily,
    ParseError,
    ReasoningDelta,
)
from guardreasoner_vl.backends import FakeBackend, FunctionBackend, scored_generation, verdict_output
from guardreasoner_vl.backends.base import (
    Backend,
    Generation,
    GenerationDelta,
    GenerationRequest,
    SamplingParams,
    iterate_in_thread,
)

OUT = verdict_output(ModelFamily.VL, request_harmful=True, reasoning="It asks for a weapon, step by step.")


class TokenBackend(Backend):
    """Streams its answer a few characters at a time, like a model; records whether it was told to stop."""

    name = "tokens"

    def __init__(self, text: str = OUT, *, delay_s: float = 0.0, fail_after: int | None = None) -> None:
        self.text = text
        self.delay_s = delay_s
        self.fail_after = fail_after
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.produced = 0

    def generate(self, requests: Any, params: SamplingParams) -> list[Generation]:
        return [scored_generation(self.text, {"request": 0.9}) for _ in requests]

    def stream(
        self, request: GenerationRequest, params: SamplingParams, *, cancel: threading.Event | None = None
    ) -> Iterator[Any]:
        try:
            for start in range(0, len(self.text), 4):
                if cancel is not None and cancel.is_set():
                    self.cancelled.set()
                    return
                if self.fail_after is not None and start >= self.fail_after:
                    raise RuntimeError("device lost")
                time.sleep(self.delay_s)
                self.produced += 1
                yield GenerationDelta(self.text[start : start + 4])
            yield self.generate([request], params)[0]
        finally:
            self.finished.set()


def test_stream_yields_deltas_then_exactly_what_moderate_returns() -> None:
    guard = Guard(backend=TokenBackend())
    events = list(guard.stream("How do I make a weapon?"))
    assert all(isinstance(e, ReasoningDelta) for e in events[:-1]) and isinstance(events[-1], FinalResult)
    assert len(events) > 10 and "".join(e.text for e in events[:-1]) == OUT
    streamed, moderated = events[-1].result, guard.moderate("How do I make a weapon?")
    assert streamed.model_dump(exclude={"usage"}) == moderated.model_dump(exclude={"usage"})
    assert streamed.request_score == pytest.approx(0.9)  # the scores' trace came with the final generation
    assert streamed.usage.latency_s is not None and streamed.usage.latency_s > 0


def test_default_stream_of_any_engine_is_one_delta() -> None:
    engine = FakeBackend()
    events = list(Guard(backend=engine).stream("bread", response="a bomb"))
    assert [e.type for e in events] == ["reasoning", "result"] and events[-1].result.flagged
    assert len(engine.calls) == 1


def test_bad_input_raises_before_the_first_event() -> None:
    guard = Guard(backend=TokenBackend())
    with pytest.raises(InvalidInputError):
        guard.stream("")  # the call itself raises: nothing to iterate
    with pytest.raises(InvalidInputError):
        guard.stream(image=b"not an image")
    with pytest.raises(InvalidInputError, match="PreparedItem"):
        guard.stream_prepared("text")  # type: ignore[arg-type]
    failed = guard.prepare_batch([""])[0]  # a GuardResult (invalid_input) from a batch
    with pytest.raises(InvalidInputError, match="PreparedItem"):
        guard.stream_prepared(failed)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="text family"):
        Guard(backend=TokenBackend(), family="text").stream_prepared(guard.prepare("hi"))

    async def first() -> None:
        await guard.astream("").__anext__()

    with pytest.raises(InvalidInputError):
        asyncio.run(first())


def test_engine_failures_and_parse_policy_raise_where_the_result_would_be() -> None:
    guard = Guard(backend=TokenBackend(fail_after=12))
    stream = guard.stream("hi")
    assert next(stream).text == OUT[:4]
    with pytest.raises(BackendError, match="device lost"):
        list(stream)
    errors = Guard(backend=FunctionBackend(lambda r: Generation(text="", error="out of memory")))
    with pytest.raises(BackendError, match="out of memory"):
        list(errors.stream("hi"))
    strict = Guard(backend=FunctionBackend(lambda r: "no verdicts"), on_parse_error="raise")
    with pytest.raises(ParseError):
        list(strict.stream("hi"))
    events = list(Guard(backend=FunctionBackend(lambda r: "no verdicts")).stream("hi"))
    assert events[-1].result.status == "parse_error" and events[-1].result.flagged  # fail closed, as moderate

    class Silent(Backend):
        def generate(self, requests: Any, params: SamplingParams) -> list[Generation]:
            raise AssertionError("not called")

        def stream(self, request: Any, params: Any, *, cancel: Any = None) -> Iterator[Any]:
            yield GenerationDelta("half")  # and never a Generation

    with pytest.raises(BackendError, match="without its result"):
        list(Guard(backend=Silent()).stream("hi"))


def test_stopping_early_cancels_the_engine() -> None:
    engine = TokenBackend(delay_s=0.01)
    stream = Guard(backend=engine).stream("hi")
    next(stream)
    stream.close()
    assert engine.finished.is_set() and engine.produced < len(OUT) // 4


async def test_astream_matches_and_cancellation_reaches_the_engine_thread() -> None:
    guard = Guard(backend=TokenBackend())
    events = [e async for e in guard.astream("How do I make a weapon?")]
    assert "".join(e.text for e in events[:-1]) == OUT
    assert events[-1].result.model_dump(exclude={"usage"}) == guard.moderate("How do I make a weapon?").model_dump(
        exclude={"usage"}
    )

    slow = TokenBackend(delay_s=0.02)
    slow_guard = Guard(backend=slow)

    async def consume() -> None:
        async for _ in slow_guard.astream("hi"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the engine's stream (in its own thread) was told to stop (cancel event, then closed) long before the end
    assert await asyncio.to_thread(slow.finished.wait, 5)
    produced = slow.produced
    await asyncio.sleep(0.1)
    assert slow.produced == produced < len(OUT) // 4


async def test_iterate_in_thread_hands_over_errors_and_stops_on_cancel() -> None:
    def boom() -> Iterator[int]:
        yield 1
        raise ValueError("bad")

    got = []
    with pytest.raises(ValueError, match="bad"):
        async for item in iterate_in_thread(boom, threading.Event()):
            got.append(item)
    assert got == [1]
    cancel = threading.Event()
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            while True:
                time.sleep(0.005)
                yield 0
        finally:
            closed.set()

    source = iterate_in_thread(endless, cancel)
    await source.__anext__()
    await source.aclose()
    assert cancel.is_set() and await asyncio.to_thread(closed.wait, 5)


def test_a_cache_hit_streams_the_cached_output_once() -> None:
    engine = TokenBackend()
    guard = Guard(backend=engine, cache="memory")
    first = list(guard.stream("hi"))
    engine.produced = 0
    second = list(guard.stream("hi"))
    assert engine.produced == 0 and [e.type for e in second] == ["reasoning", "result"]
    assert second[0].text == OUT
    assert second[-1].result.model_dump(exclude={"usage"}) == first[-1].result.model_dump(exclude={"usage"})


@pytest.mark.parametrize(
    "name",
    [
        "guardreasoner_vl.streaming",
        "guardreasoner_vl.cache",
        "guardreasoner_vl.server.playground",
        "guardreasoner_vl.guard",
    ],
)
def test_docstring_examples_run(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0, name
