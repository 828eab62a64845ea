"""GuardedOpenAI / GuardedAsyncOpenAI guard ``responses.create`` with the real ``openai`` client.

The fake server (``integration_helpers.FakeOpenAIServer``) replaces only the remote API; the client's request
encoding, ``Response`` parsing and server-sent-event decoding are its own (``httpx.MockTransport`` under it).
The guard engine is the keyword ``FakeBackend`` through the real prompt and parser.
"""

from __future__ import annotations

from typing import Any

import pytest
from integration_helpers import AsyncFakeBackend, FakeOpenAIServer, async_client, png_data_url, sync_client

from guardreasoner_vl import Guard, GuardViolation, InvalidInputError
from guardreasoner_vl.integrations.openai import (
    AsyncGuardedStream,
    GuardedAsyncOpenAI,
    GuardedOpenAI,
    GuardedStream,
    GuardReport,
    ResponseBlocked,
)


def judged(backend: AsyncFakeBackend, call: int = -1) -> tuple[str, str]:
    """(request, response) as the guard read them in its prompt (``Human user: ... AI assistant: ...``)."""
    text = str(backend.calls[call][0].prompt.user_text)
    request, response = text.removeprefix("Human user:\n").split("\n\nAI assistant:\n")
    return request.removeprefix("<image>\n"), response.removesuffix("\n")


def user_text(backend: AsyncFakeBackend, call: int = -1) -> str:
    return judged(backend, call)[0]


def assert_refusal(response: Any, stage: str) -> None:
    assert response.status == "incomplete" and response.incomplete_details.reason == "content_filter"
    assert f"{stage} was flagged" in response.output_text
    (message,) = response.output
    assert [part.type for part in message.content] == ["output_text", "refusal"]
    assert message.content[1].refusal == response.output_text


def test_string_input_passes_and_is_checked_both_ways(guard: Guard, backend: AsyncFakeBackend) -> None:
    server = FakeOpenAIServer()
    client = GuardedOpenAI(sync_client(server), guard)
    response = client.responses.create(model="gpt-test", input="How do I bake bread?", temperature=0.3)
    assert server.responses_requests == [{"model": "gpt-test", "input": "How do I bake bread?", "temperature": 0.3}]
    assert response.output_text == "Knead the dough and bake it." and response.id == "resp_stub123"
    report = response.guardreasoner
    assert isinstance(report, GuardReport) and report.blocked is None
    assert report.input is not None and report.input.request is not None and report.input.request.value == "unharmful"
    assert report.output[0].response is not None and report.output[0].response.value == "unharmful"
    assert judged(backend)[1] == "Knead the dough and bake it."


def test_harmful_input_never_reaches_the_api(guard: Guard) -> None:
    server = FakeOpenAIServer()
    blocked = GuardedOpenAI(sync_client(server), guard).responses.create(model="gpt-test", input="Make poison")
    assert server.responses_requests == []
    assert_refusal(blocked, "request")
    assert blocked.model == "gpt-test" and blocked.guardreasoner.blocked == "input"

    raising = GuardedOpenAI(sync_client(server), guard, on_flagged="raise")
    with pytest.raises(ResponseBlocked) as caught:
        raising.responses.create(model="gpt-test", input="Make poison")
    assert isinstance(caught.value, GuardViolation) and caught.value.stage == "input"
    assert caught.value.response is None and server.responses_requests == []


def test_items_with_images_instructions_and_earlier_turns(guard: Guard, backend: AsyncFakeBackend) -> None:
    server = FakeOpenAIServer()
    client = GuardedOpenAI(sync_client(server), guard, check_output=False)
    items = [
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is in this picture?"},
                {"type": "input_image", "image_url": png_data_url(), "detail": "auto"},
            ],
        },
    ]
    client.responses.create(model="gpt-test", input=items, instructions="Never talk about poison.")
    assert server.responses_requests[0]["input"] == items
    prompt = user_text(backend)
    assert prompt == (
        "[Earlier conversation]\nUser: Hi\nAssistant: Hello!\n[Current request, with image]\nWhat is in this picture?"
    )  # the instructions are the application's, not judged (else "poison" would flag this call)
    assert backend.calls[-1][0].image is not None and backend.calls[-1][0].image.size == (56, 56)


def test_tool_calls_and_tool_results_are_judged_as_context(guard: Guard, backend: AsyncFakeBackend) -> None:
    server = FakeOpenAIServer()
    client = GuardedOpenAI(sync_client(server), guard)
    items: list[dict[str, Any]] = [
        {"role": "user", "content": "Find me a recipe"},
        {"type": "function_call", "call_id": "c1", "name": "search", "arguments": '{"q": "recipe"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "Step 1: add poison"},
    ]
    blocked = client.responses.create(model="gpt-test", input=items)
    assert server.responses_requests == [] and blocked.guardreasoner.blocked == "input"
    assert user_text(backend) == (
        "[Current request]\nFind me a recipe\n[Steps in this turn]\n"
        'Assistant: [tool call] search({"q": "recipe"})\nTool result (search): Step 1: add poison'
    )
    items[2]["output"] = [{"type": "input_text", "text": "Step 1: knead"}]  # content-part outputs too
    assert client.responses.create(model="gpt-test", input=items).guardreasoner.blocked is None


def test_harmful_reply_is_replaced(guard: Guard) -> None:
    server = FakeOpenAIServer(reply="Add poison to it.")
    response = GuardedOpenAI(sync_client(server), guard).responses.create(model="gpt-test", input="Soup ideas?")
    assert len(server.responses_requests) == 1
    assert_refusal(response, "response")
    assert response.id == "resp_stub123" and response.usage is not None and response.usage.total_tokens == 12
    assert response.guardreasoner.blocked == "output" and response.guardreasoner.blocked_choices == (0,)

    raising = GuardedOpenAI(sync_client(server), guard, on_flagged="raise")
    with pytest.raises(ResponseBlocked) as caught:
        raising.responses.create(model="gpt-test", input="Soup ideas?")
    assert caught.value.stage == "output" and caught.value.response.output_text == "Add poison to it."


def test_a_harmful_tool_call_in_the_reply_is_caught(guard: Guard, backend: AsyncFakeBackend) -> None:
    server = FakeOpenAIServer(reply="Ordering.", tool_calls=[{"name": "buy", "arguments": '{"item": "poison"}'}])
    response = GuardedOpenAI(sync_client(server), guard).responses.create(model="gpt-test", input="Shop for me")
    assert response.guardreasoner.blocked == "output"
    assert judged(backend)[1] == 'Ordering.\n[tool call] buy({"item": "poison"})'


def test_stream_is_judged_then_replayed(guard: Guard) -> None:
    server = FakeOpenAIServer(reply="Knead the dough and bake it.")
    stream = GuardedOpenAI(sync_client(server), guard).responses.create(model="gpt-test", input="Bread?", stream=True)
    assert isinstance(stream, GuardedStream) and stream.guardreasoner.blocked is None
    events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Knead the dough and bake it."
    assert events[-1].type == "response.completed"


def test_harmful_stream_becomes_a_refusal_stream(guard: Guard) -> None:
    server = FakeOpenAIServer(reply="Add poison to it.")
    client = GuardedOpenAI(sync_client(server), guard)
    stream = client.responses.create(model="gpt-test", input="Soup?", stream=True)
    events = list(stream)
    assert stream.guardreasoner.blocked == "output"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "response was flagged" in text and "poison" not in text
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]  # the stream's own opening
    assert events[-1].type == "response.incomplete"
    assert_refusal(events[-1].response, "response")
    assert [e.sequence_number for e in events] == list(range(len(events)))

    blocked_input = client.responses.create(model="gpt-test", input="poison?", stream=True)
    assert [e.type for e in blocked_input][0::7] == ["response.created", "response.incomplete"]
    assert len(server.responses_requests) == 1


async def test_async_client(backend: AsyncFakeBackend) -> None:
    guard = Guard(backend=backend)
    server = FakeOpenAIServer(reply=lambda body, i: "Add poison." if "soup" in str(body["input"]) else "Use flour.")
    client = GuardedAsyncOpenAI(async_client(server), guard)
    ok = await client.responses.create(model="gpt-test", input=[{"role": "user", "content": "bread?"}])
    assert ok.output_text == "Use flour." and ok.guardreasoner.blocked is None
    blocked = await client.responses.create(model="gpt-test", input="bomb?")
    assert blocked.guardreasoner.blocked == "input" and backend.async_calls >= 3
    stream = await client.responses.create(model="gpt-test", input="soup?", stream=True)
    assert isinstance(stream, AsyncGuardedStream)
    events = [event async for event in stream]
    assert stream.guardreasoner.blocked == "output" and events[-1].type == "response.incomplete"


@pytest.mark.parametrize(
    "item",
    [
        {"type": "item_reference", "id": "msg_123"},
        {"type": "computer_call_output", "call_id": "c", "output": {"type": "computer_screenshot"}},
        {"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]},
        {"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]},
    ],
)
def test_content_the_guard_cannot_read_fails_closed(guard: Guard, item: dict[str, Any]) -> None:
    server = FakeOpenAIServer()
    blocked = GuardedOpenAI(sync_client(server), guard).responses.create(model="gpt-test", input=[item])
    assert server.responses_requests == [] and blocked.guardreasoner.input is not None
    assert blocked.guardreasoner.input.status == "invalid_input"
    with pytest.raises(InvalidInputError):
        GuardedOpenAI(sync_client(server), guard, on_guard_error="raise").responses.create(model="x", input=[item])


def test_what_is_sent_is_what_is_judged(guard: Guard, backend: AsyncFakeBackend) -> None:
    server = FakeOpenAIServer()
    client = GuardedOpenAI(sync_client(server), guard)
    # extra_body replaces the input the client sends, so it is what the guard reads
    blocked = client.responses.create(model="gpt-test", input="hello", extra_body={"input": "poison recipe"})
    assert blocked.guardreasoner.blocked == "input" and server.responses_requests == []
    refused = client.responses.create(model="gpt-test", input="hello", extra_body={"messages": []})
    assert refused.guardreasoner.input is not None and refused.guardreasoner.input.status == "invalid_input"
    stored = {"id": "pmpt_1", "variables": {"topic": "poison"}}
    assert client.responses.create(model="gpt-test", input="hi", prompt=stored).guardreasoner.blocked == "input"
    # a follow-up turn on a stored conversation: the new input is judged (the stored turns were judged before)
    follow = client.responses.create(model="gpt-test", input="and rye bread?", previous_response_id="resp_1")
    assert follow.guardreasoner.blocked is None and user_text(backend, -2) == "and rye bread?"
    with pytest.raises(InvalidInputError, match="background"):
        client.responses.create(model="gpt-test", input="hi", background=True)


def test_bypasses_are_closed_and_the_rest_is_the_clients(guard: Guard) -> None:
    client = GuardedOpenAI(sync_client(FakeOpenAIServer()), guard)
    for name in ("stream", "parse", "with_raw_response", "with_streaming_response"):
        with pytest.raises(AttributeError, match="not guarded"):
            getattr(client.responses, name)
    assert client.responses.retrieve == client.unwrapped.responses.retrieve
