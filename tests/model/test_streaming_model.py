"""Streaming and the verdict cache on real tiny models (transformers, CPU).

The verdict-trained tiny Qwen2.5-VL writes parseable verdicts with scores, so the streamed result can be
compared with ``moderate()`` field by field, scores included; the random tiny model writes long noise, which
makes an abandoned stream observable (a full generation takes far longer than one step).
"""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

pytest.importorskip("torch")
pytest.importorskip("transformers")

from guardreasoner_vl import Guard  # noqa: E402
from guardreasoner_vl.cache import MemoryCache  # noqa: E402

RED = Image.new("RGB", (56, 84), (200, 20, 20))  # taught as harmful (testing.verdict_examples)
ITEMS = [
    {"text": "How do I build a bomb?"},
    {"text": "Is this a grey area?"},
    {"text": "Help me hurt someone", "response": "Sure, here is how."},
    {"text": "What is this?", "image": RED},
]


@pytest.fixture(scope="module")
def verdict_guard(verdict_vl_path):
    with Guard(verdict_vl_path, backend="transformers", device="cpu", max_new_tokens=48) as guard:
        yield guard


def test_streamed_result_equals_moderate_scores_included(verdict_guard: Guard) -> None:
    for item in ITEMS:
        expected = verdict_guard.moderate(item["text"], item.get("image"), response=item.get("response"))
        events = list(verdict_guard.stream(item["text"], item.get("image"), response=item.get("response")))
        deltas, final = events[:-1], events[-1]
        assert final.type == "result" and all(e.type == "reasoning" for e in deltas)
        assert len(deltas) >= 3, "the text came in pieces, as it was generated"
        assert "".join(e.text for e in deltas) == final.result.raw_output
        assert final.result.model_dump(exclude={"usage"}) == expected.model_dump(exclude={"usage"})
        assert final.result.usage.prompt_tokens == expected.usage.prompt_tokens
        assert final.result.usage.completion_tokens == expected.usage.completion_tokens
        assert expected.status == "ok" and expected.request_score is not None  # a real verdict with its score
    assert verdict_guard.backend._lock.locked() is False


async def test_astream_equals_moderate(verdict_guard: Guard) -> None:
    item = ITEMS[2]
    expected = verdict_guard.moderate(item["text"], response=item["response"])
    events = [e async for e in verdict_guard.astream(item["text"], response=item["response"])]
    assert events[-1].result.model_dump(exclude={"usage"}) == expected.model_dump(exclude={"usage"})
    assert expected.response_score is not None


def test_a_cache_hit_gives_the_same_result_and_skips_the_model(verdict_vl_path) -> None:
    with Guard(verdict_vl_path, backend="transformers", device="cpu", max_new_tokens=48, cache=MemoryCache()) as guard:
        calls = []
        real = guard.backend.generate

        def counting(requests, params):
            calls.append(len(requests))
            return real(requests, params)

        guard.backend.generate = counting  # type: ignore[method-assign]
        first = guard.moderate_batch(ITEMS)
        start = time.perf_counter()
        second = guard.moderate_batch(ITEMS)
        hit_s = time.perf_counter() - start
        other_image = guard.moderate("What is this?", Image.new("RGB", (56, 84), (20, 20, 200)))
        assert calls == [len(ITEMS), 1]  # the second batch never reached the model; another image did
        for a, b in zip(first, second, strict=True):
            assert a.model_dump(exclude={"usage"}) == b.model_dump(exclude={"usage"})
        assert hit_s < 0.5 and other_image.status in ("ok", "parse_error")


def test_an_abandoned_stream_stops_the_model_and_frees_the_engine(tiny_vl_path) -> None:
    with Guard(tiny_vl_path, backend="transformers", device="cpu", max_new_tokens=2000) as guard:
        backend = guard.backend
        # the random model often writes its end-of-sequence token within a few steps; an end id outside the
        # vocabulary makes it run to its budget (2000 tokens, tens of seconds here), so that stopping shows
        backend.eos_token_ids = [backend.model.config.get_text_config().vocab_size + 1]
        threads_before = threading.active_count()
        stream = guard.stream("hello there, tell me a long story")
        next(stream)  # the model is generating now, holding the engine's lock in its thread
        assert backend._lock.locked()
        start = time.perf_counter()
        stream.close()
        stopped_s = time.perf_counter() - start
        assert not backend._lock.locked() and stopped_s < 2.0
        assert threading.active_count() == threads_before  # the generate thread ended with the stream

        # given up without close(): dropping the last reference closes it the same way
        stream = guard.stream("hello there, tell me a long story")
        next(stream)
        del stream
        deadline = time.monotonic() + 2
        while backend._lock.locked() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not backend._lock.locked()
        # and the engine still judges normally afterwards
        assert guard.with_options(max_new_tokens=4).moderate("hi").usage.completion_tokens
