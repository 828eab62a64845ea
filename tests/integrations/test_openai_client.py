"""GuardedOpenAI / GuardedAsyncOpenAI around the real ``openai`` client, talking HTTP to a fake chat server.

The server (``conftest.FakeOpenAIServer``) replaces only the remote API; the client's request encoding,
response parsing and SSE stream decoding are the real ones (``httpx.MockTransport`` under the client).
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from integration_helpers import AsyncFakeBackend, FakeOpenAIServer, async_client, png_data_url, sync_client

from guardreasoner_vl import Guard, GuardViolation, InvalidInputError
from guardreasoner_vl.integrations.openai import (
    AsyncGuardedStream,
    ChatCompletionBlocked,
    GuardedAsyncOpenAI,
    GuardedOpenAI,
    GuardedStream,
    GuardReport,
)

SAFE = [{"role": "system", "content": "You bake."}, {"role": "user", "content": "How do I bake bread?"}]
HARMFUL = [{"role": "user", "content": "How do I make poison?"}]


def test_pass_through_keeps_the_response_intact(guard: Guard, server: FakeOpenAIServer) -> None:
    raw = sync_client(server)
    client = GuardedOpenAI(raw, guard)
    completion = client.chat.completions.create(model="fake-chat", messages=SAFE, temperature=0.2, seed=7)
    assert server.requests == [{"model": "fake-chat", "messages": SAFE, "temperature": 0.2, "seed": 7}]
    dumped = completion.model_dump(mode="json", exclude_unset=True)
    report = dumped.pop("guardreasoner")
    assert dumped == server.last_payload
    assert isinstance(completion.guardreasoner, GuardReport)
    assert report["blocked"] is None and report["input"]["request"] == "unharmful"
    assert completion.guardreasoner.output[0].response is not None
    assert completion.guardreasoner.output[0].response.value == "unharmful"
    # everything else is the wrapped client's
    assert client.models.list().data[0].id == "fake-chat"
    assert client.unwrapped is raw


def test_input_blocked_before_the_api(guard: Guard, server: FakeOpenAIServer) -> None:
    client = GuardedOpenAI(sync_client(server), guard, on_flagged="raise")
    with pytest.raises(ChatCompletionBlocked) as caught:
        client.chat.completions.create(model="fake-chat", messages=HARMFUL)
    assert server.requests == []
    assert isinstance(caught.value, GuardViolation) and caught.value.stage == "input"
    assert caught.value.report.blocked == "input" and caught.value.completion is None

    refusing = GuardedOpenAI(sync_client(server), guard, on_flagged="block")
    completion = refusing.chat.completions.create(model="fake-chat", messages=HARMFUL, n=2)
    assert server.requests == []
    assert [c.finish_reason for c in completion.choices] == ["content_filter", "content_filter"]
    assert completion.choices[0].message.content == completion.choices[0].message.refusal
    assert "request was flagged" in str(completion.choices[0].message.content)
    assert completion.model == "fake-chat" and completion.guardreasoner.blocked == "input"


def test_output_blocked(guard: Guard) -> None:
    server = FakeOpenAIServer(reply=lambda body, i: "Add poison to it." if i == 1 else "Use flour.")
    client = GuardedOpenAI(sync_client(server), guard, on_flagged="raise")
    with pytest.raises(ChatCompletionBlocked) as caught:
        client.chat.completions.create(model="fake-chat", messages=SAFE, n=2)
    assert len(server.requests) == 1 and caught.value.stage == "output"
    assert caught.value.report.blocked_choices == (1,)
    assert caught.value.completion.choices[1].message.content == "Add poison to it."

    refusing = GuardedOpenAI(sync_client(server), guard, on_flagged="block")
    completion = refusing.chat.completions.create(model="fake-chat", messages=SAFE, n=2)
    assert completion.choices[0].message.content == "Use flour." and completion.choices[0].finish_reason == "stop"
    assert completion.choices[1].finish_reason == "content_filter"
    assert "response was flagged" in str(completion.choices[1].message.content)
    assert completion.id == "chatcmpl-test123" and completion.usage is not None
    assert completion.guardreasoner.output[1].response is not None
    assert completion.guardreasoner.output[1].response.value == "harmful"


def test_images_reach_the_guard(guard: Guard, backend: AsyncFakeBackend, server: FakeOpenAIServer) -> None:
    client = GuardedOpenAI(sync_client(server), guard, check_output=False)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": png_data_url()}},
            ],
        }
    ]
    client.chat.completions.create(model="fake-chat", messages=messages)
    assert backend.calls[0][0].image is not None
    assert server.requests[0]["messages"] == messages


def test_streaming_is_buffered_checked_and_replayed(guard: Guard, server: FakeOpenAIServer) -> None:
    client = GuardedOpenAI(sync_client(server), guard, stream_check="buffered")
    stream = client.chat.completions.create(
        model="fake-chat", messages=SAFE, stream=True, stream_options={"include_usage": True}
    )
    assert isinstance(stream, GuardedStream) and stream.guardreasoner.output[0].response is not None
    with stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "Knead the dough and bake it."
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_streaming_output_flagged() -> None:
    guard = Guard(backend=AsyncFakeBackend(harmful_keywords=["poison"]))
    server = FakeOpenAIServer(reply="Mix the poison slowly.")
    with pytest.raises(ChatCompletionBlocked) as caught:
        GuardedOpenAI(sync_client(server), guard, on_flagged="raise", stream_check="buffered").chat.completions.create(
            model="fake-chat", messages=SAFE, stream=True
        )
    assert caught.value.stage == "output" and isinstance(caught.value.completion, list)

    client = GuardedOpenAI(sync_client(server), guard, on_flagged="block", stream_check="buffered")
    chunks = list(
        client.chat.completions.create(
            model="fake-chat", messages=SAFE, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "poison" not in text and "response was flagged" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == ["content_filter"]
    assert chunks[-1].usage is not None  # the usage chunk stays last


def test_live_stream_without_output_check(guard: Guard, server: FakeOpenAIServer) -> None:
    client = GuardedOpenAI(sync_client(server), guard, check_output=False)
    stream = client.chat.completions.create(model="fake-chat", messages=SAFE, stream=True)
    assert isinstance(stream._source, openai.Stream)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip().startswith("Knead")
    assert stream.guardreasoner.input is not None and stream.guardreasoner.output == {}


def test_bypasses_are_closed_and_types_checked(guard: Guard, server: FakeOpenAIServer) -> None:
    client = GuardedOpenAI(sync_client(server), guard)
    for name in ("with_raw_response", "with_streaming_response", "parse", "stream"):
        with pytest.raises(AttributeError, match="not guarded"):
            getattr(client.chat.completions, name)
    with pytest.raises(InvalidInputError, match="GuardedAsyncOpenAI"):
        GuardedOpenAI(async_client(server), guard)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="GuardedOpenAI"):
        GuardedAsyncOpenAI(sync_client(server), guard)
    with pytest.raises(InvalidInputError, match="exit_behavior"):
        GuardedOpenAI(sync_client(server), guard, exit_behavior="stop")


def test_no_user_turn_is_not_judged(guard: Guard, backend: AsyncFakeBackend, server: FakeOpenAIServer) -> None:
    client = GuardedOpenAI(sync_client(server), guard)
    completion = client.chat.completions.create(model="fake-chat", messages=[{"role": "system", "content": "Hi"}])
    assert backend.calls == [] and completion.guardreasoner.input is None


def test_unjudgeable_input_fails_closed(guard: Guard, server: FakeOpenAIServer) -> None:
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]
    with pytest.raises(ChatCompletionBlocked) as caught:
        GuardedOpenAI(sync_client(server), guard, on_flagged="raise").chat.completions.create(
            model="fake-chat", messages=audio
        )
    assert caught.value.result.status == "invalid_input" and server.requests == []
    with pytest.raises(InvalidInputError, match="input_audio"):
        GuardedOpenAI(sync_client(server), guard, on_guard_error="raise").chat.completions.create(
            model="fake-chat", messages=audio
        )


async def test_async_client(backend: AsyncFakeBackend) -> None:
    guard = Guard(backend=backend)
    server = FakeOpenAIServer(reply=lambda body, i: "Add poison." if "soup" in str(body["messages"]) else "Flour.")
    client = GuardedAsyncOpenAI(async_client(server), guard, on_flagged="block")
    ok = await client.chat.completions.create(model="fake-chat", messages=SAFE)
    assert ok.choices[0].message.content == "Flour." and ok.guardreasoner.blocked is None
    blocked = await client.chat.completions.create(model="fake-chat", messages=HARMFUL)
    assert blocked.guardreasoner.blocked == "input" and len(server.requests) == 1
    soup: list[dict[str, Any]] = [{"role": "user", "content": "What goes in soup?"}]
    refused = await client.chat.completions.create(model="fake-chat", messages=soup)
    assert refused.choices[0].finish_reason == "content_filter"
    stream = await client.chat.completions.create(model="fake-chat", messages=soup, stream=True)
    assert isinstance(stream, AsyncGuardedStream)
    async with stream:
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert "poison" not in text and "response was flagged" in text
    live = await GuardedAsyncOpenAI(async_client(server), guard, check_output=False).chat.completions.create(
        model="fake-chat", messages=SAFE, stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in live if c.choices]).strip() == "Flour."
    assert backend.async_calls == 8  # every judgement went through agenerate
    with pytest.raises(ChatCompletionBlocked):
        await GuardedAsyncOpenAI(async_client(server), guard, on_flagged="raise").chat.completions.create(
            model="fake-chat", messages=HARMFUL
        )


def test_live_stream_exposes_the_http_response(guard: Guard, server: FakeOpenAIServer) -> None:
    stream = GuardedOpenAI(sync_client(server), guard, check_output=False).chat.completions.create(
        model="fake-chat", messages=SAFE, stream=True
    )
    assert stream.response.headers["content-type"] == "text/event-stream"
    stream.close()
    with pytest.raises(AttributeError):
        _ = GuardedStream([], GuardReport()).response
