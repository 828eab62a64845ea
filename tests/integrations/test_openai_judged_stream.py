"""GuardedOpenAI streams released in judged chunks (``stream_check="chunks"``, the default).

The real ``openai`` client reads real server-sent events from the fake OpenAI server (``FakeOpenAIServer``, a
stand-in for the remote API only); the guard is the keyword ``AsyncFakeBackend`` through the real prompt and
parser, so every judgement the stream made can be read back from the prompts the guard received.
"""

from __future__ import annotations

from typing import Any

import pytest
from integration_helpers import AsyncFakeBackend, FakeOpenAIServer, async_client, sync_client

from guardreasoner_vl import Guard, InvalidInputError
from guardreasoner_vl.integrations.openai import (
    ChatCompletionBlocked,
    GuardedAsyncOpenAI,
    GuardedOpenAI,
    ResponseBlocked,
)

SAFE = [{"role": "user", "content": "How do I bake bread?"}]
LONG = " ".join(f"Step {i}: knead the dough for one more minute." for i in range(16))  # ~750 characters
TAINTED = " ".join(f"Step {i}: stir the soup." for i in range(8)) + " Then add the poison. " + LONG


def judged_reply(backend: AsyncFakeBackend, call: int = -1) -> str:
    """The AI response the guard read in its prompt for one call."""
    text = str(backend.calls[call][0].prompt.user_text)
    return text.split("\n\nAI assistant:\n", 1)[1].removesuffix("\n")


def content(chunk: Any, index: int = 0) -> str:
    return "".join(c.delta.content or "" for c in chunk.choices if c.index == index and c.delta is not None)


def test_chat_stream_is_released_in_judged_chunks() -> None:
    backend = AsyncFakeBackend(harmful_keywords=["poison"])
    client = GuardedOpenAI(sync_client(FakeOpenAIServer(reply=LONG)), Guard(backend=backend), stream_chunk_chars=120)
    stream = client.chat.completions.create(
        model="fake-chat", messages=SAFE, stream=True, stream_options={"include_usage": True}
    )
    assert len(backend.calls) == 1  # the input check only: nothing of the reply is held or judged yet
    released = ""
    calls_at_first_text = None
    for chunk in stream:
        piece = "".join(content(chunk, c.index) for c in chunk.choices)
        if piece and calls_at_first_text is None:
            calls_at_first_text = len(backend.calls)
        released += piece
        if piece:  # every character the caller holds was part of a reply the guard had judged
            assert judged_reply(backend).startswith(released.strip()), (released[-40:], judged_reply(backend)[-40:])
    assert released.strip() == LONG
    assert calls_at_first_text == 2  # input + the first judged chunk: the caller did not wait for the whole reply
    report = stream.guardreasoner
    assert report.blocked is None and report.output[0].response is not None
    assert report.output[0].response.value == "unharmful"
    # the cost: about one guard call per 120 new characters (each at a sentence end), plus the end of the stream
    assert report.output_checks == len(backend.calls) - 1
    assert 4 <= report.output_checks <= len(LONG) // 120 + 2
    assert judged_reply(backend).strip() == LONG  # the last judgement saw the whole reply
    for call in range(2, len(backend.calls)):  # each judgement saw a longer prefix, ending at a sentence
        assert judged_reply(backend, call).startswith(judged_reply(backend, call - 1))
        assert judged_reply(backend, call - 1).rstrip().endswith(".")


def test_chat_stream_stops_with_a_refusal_the_moment_a_prefix_is_flagged() -> None:
    backend = AsyncFakeBackend(harmful_keywords=["poison"])
    server = FakeOpenAIServer(reply=TAINTED)
    client = GuardedOpenAI(sync_client(server), Guard(backend=backend), stream_chunk_chars=60)
    stream = client.chat.completions.create(model="fake-chat", messages=SAFE, stream=True)
    chunks = list(stream)
    text = "".join(content(c) for c in chunks)
    before = TAINTED[: TAINTED.index("Then add the poison")]
    assert "poison" not in text.split("I'm sorry")[0]
    assert text.startswith(before[:40])  # the judged prefix was released before the flag
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert "response was flagged" in (chunks[-1].choices[0].delta.refusal or "")
    assert stream.guardreasoner.blocked == "output" and stream.guardreasoner.blocked_choices == (0,)
    assert "poison" in judged_reply(backend) and "Step 15" not in judged_reply(backend)  # judged where it turned
    assert stream._source.response.is_closed  # the API's stream was closed: the rest was never read

    raising = GuardedOpenAI(sync_client(server), Guard(backend=backend), stream_chunk_chars=60, on_flagged="raise")
    released = ""
    with pytest.raises(ChatCompletionBlocked) as caught:
        for chunk in raising.chat.completions.create(model="fake-chat", messages=SAFE, stream=True):
            released += content(chunk)
    assert caught.value.stage == "output" and "poison" not in released and released.strip()
    assert isinstance(caught.value.completion, list)


def test_one_flagged_choice_of_two_is_refused_and_the_other_streams_on() -> None:
    backend = AsyncFakeBackend(harmful_keywords=["poison"])
    server = FakeOpenAIServer(reply=lambda body, i: TAINTED if i == 1 else LONG)
    client = GuardedOpenAI(sync_client(server), Guard(backend=backend), stream_chunk_chars=100)
    chunks = list(client.chat.completions.create(model="fake-chat", messages=SAFE, stream=True, n=2))
    assert "".join(content(c, 0) for c in chunks).strip() == LONG
    refused = [c for c in chunks for ch in c.choices if ch.index == 1 and ch.finish_reason == "content_filter"]
    assert len(refused) == 1
    assert "poison" not in "".join(content(c, 1) for c in chunks)
    finishes = {ch.index: ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason}
    assert finishes == {0: "stop", 1: "content_filter"}


async def test_async_chat_stream_in_judged_chunks() -> None:
    backend = AsyncFakeBackend(harmful_keywords=["poison"])
    client = GuardedAsyncOpenAI(
        async_client(FakeOpenAIServer(reply=TAINTED)), Guard(backend=backend), stream_chunk_chars=60
    )
    stream = await client.chat.completions.create(model="fake-chat", messages=SAFE, stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(content(c) for c in chunks)
    assert text.strip() and "poison" not in text.split("I'm sorry")[0]
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert stream.guardreasoner.output_checks >= 2 and backend.async_calls == len(backend.calls)


def test_responses_stream_is_released_in_judged_chunks() -> None:
    backend = AsyncFakeBackend(harmful_keywords=["poison"])
    client = GuardedOpenAI(sync_client(FakeOpenAIServer(reply=LONG)), Guard(backend=backend), stream_chunk_chars=120)
    stream = client.responses.create(model="gpt-test", input="Bread?", stream=True)
    released = ""
    events = []
    for event in stream:
        events.append(event)
        if event.type == "response.output_text.delta":
            released += event.delta
            assert judged_reply(backend).startswith(released.strip())
    assert released == LONG and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert stream.guardreasoner.output_checks >= 4 and judged_reply(backend).strip() == LONG


def test_responses_stream_flagged_midway_ends_with_a_refusal() -> None:
    backend = AsyncFakeBackend(harmful_keywords=["poison"])
    client = GuardedOpenAI(sync_client(FakeOpenAIServer(reply=TAINTED)), Guard(backend=backend), stream_chunk_chars=60)
    events = list(client.responses.create(model="gpt-test", input="Soup?", stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas[-1] != "" and "response was flagged" in deltas[-1]  # the refusal message, streamed as text
    assert "poison" not in "".join(deltas[:-1]) and "".join(deltas[:-1]).strip()  # a judged prefix came first
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "content_filter"
    refusal_items = [e for e in events if e.type == "response.output_item.added"]
    assert [e.output_index for e in refusal_items] == [0, 1]  # the refusal is an item of its own after the text
    assert [e.sequence_number for e in events] == list(range(len(events)))

    raising = GuardedOpenAI(
        sync_client(FakeOpenAIServer(reply=TAINTED)), Guard(backend=backend), stream_chunk_chars=60, on_flagged="raise"
    )
    with pytest.raises(ResponseBlocked) as caught:
        list(raising.responses.create(model="gpt-test", input="Soup?", stream=True))
    assert caught.value.stage == "output"


def test_stream_options_are_checked() -> None:
    guard = Guard(backend=AsyncFakeBackend())
    raw = sync_client(FakeOpenAIServer())
    with pytest.raises(InvalidInputError, match="stream_check"):
        GuardedOpenAI(raw, guard, stream_check="live")  # type: ignore[arg-type]
    for bad in (0, -5, 2.5, True):
        with pytest.raises(InvalidInputError, match="stream_chunk_chars"):
            GuardedOpenAI(raw, guard, stream_chunk_chars=bad)  # type: ignore[arg-type]
