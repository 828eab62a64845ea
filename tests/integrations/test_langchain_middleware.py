"""GuardMiddleware inside the real ``langchain.agents.create_agent`` loop, with fake chat models (offline)."""

from __future__ import annotations

from typing import Any

import pytest
from integration_helpers import AsyncFakeBackend, png_base64, png_data_url
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import Field

from guardreasoner_vl import Guard, GuardViolation, InvalidInputError
from guardreasoner_vl.backends import FunctionBackend, verdict_output
from guardreasoner_vl.integrations.langchain import GuardMiddleware, message_content
from guardreasoner_vl.prompts import ModelFamily

REFUSAL_INPUT = "I'm sorry, but I can't help with that. The request was flagged by the safety guard."
REFUSAL_OUTPUT = "I'm sorry, but I can't help with that. The response was flagged by the safety guard."


class CountingModel(FakeMessagesListChatModel):
    """A scripted chat model (the real LLM cannot run offline) that counts its calls and accepts tools."""

    calls: list[list[Any]] = Field(default_factory=list)

    def __init__(self, responses: list[AIMessage]) -> None:
        super().__init__(responses=responses)

    def _generate(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(list(messages))
        return super()._generate(messages, *args, **kwargs)

    def bind_tools(self, tools: Any, **kwargs: Any) -> CountingModel:
        return self


@tool
def lookup(query: str) -> str:
    """Look something up."""
    return f"The manual says: {query}"


def agent(model: CountingModel, middleware: GuardMiddleware, *, tools: list[Any] | None = None) -> Any:
    return create_agent(model, tools=tools or [], middleware=[middleware])


def test_safe_input_and_reply_pass(guard: Guard, backend: AsyncFakeBackend) -> None:
    model = CountingModel([AIMessage("Mix flour, water and yeast.")])
    out = agent(model, GuardMiddleware(guard)).invoke({"messages": [HumanMessage("How do I bake bread?")]})
    assert len(model.calls) == 1
    assert out["messages"][-1].content == "Mix flour, water and yeast."
    prompts = [r.prompt.user_text for batch in backend.calls for r in batch]
    assert len(prompts) == 2  # the request, then the reply in its context
    assert "How do I bake bread?" in prompts[0] and "Mix flour" not in prompts[0]
    assert "How do I bake bread?" in prompts[1] and "Mix flour, water and yeast." in prompts[1]


def test_harmful_input_ends_before_the_model(guard: Guard) -> None:
    model = CountingModel([AIMessage("never sent")])
    out = agent(model, GuardMiddleware(guard)).invoke({"messages": [HumanMessage("How do I build a bomb?")]})
    assert model.calls == []
    last = out["messages"][-1]
    assert isinstance(last, AIMessage) and last.content == REFUSAL_INPUT
    meta = last.response_metadata["guardreasoner"]
    assert meta["stage"] == "input" and meta["result"]["request"] == "harmful" and meta["result"]["flagged"]


@pytest.mark.parametrize("on_flagged", ["replace", "block"])
def test_harmful_reply_is_replaced_in_place(guard: Guard, on_flagged: str) -> None:
    model = CountingModel([AIMessage("Here is how to make poison at home.", id="reply-1")])
    middleware = GuardMiddleware(guard, on_flagged=on_flagged)  # type: ignore[arg-type]
    out = agent(model, middleware).invoke({"messages": [HumanMessage("Tell me about chemistry.")]})
    ai = [m for m in out["messages"] if isinstance(m, AIMessage)]
    assert len(ai) == 1, "the flagged reply must be replaced, not followed by a second message"
    assert ai[0].id == "reply-1"
    assert ai[0].content == REFUSAL_OUTPUT
    assert "poison" not in str([m.content for m in out["messages"]])
    assert ai[0].response_metadata["guardreasoner"]["result"]["response"] == "harmful"


def test_harmful_request_replaced_in_place_then_model_answers(guard: Guard) -> None:
    model = CountingModel([AIMessage("I cannot assist.")])
    human = HumanMessage("How do I build a bomb?", id="user-1")
    out = agent(model, GuardMiddleware(guard, on_flagged="replace")).invoke({"messages": [human]})
    assert out["messages"][0].id == "user-1" and out["messages"][0].content == REFUSAL_INPUT
    assert "bomb" not in str(model.calls[0][-1].content)  # the model never saw the flagged text
    assert out["messages"][-1].content == "I cannot assist."


def test_error_mode_raises_with_result_and_stage(guard: Guard) -> None:
    model = CountingModel([AIMessage("never sent")])
    with pytest.raises(GuardViolation) as caught:
        agent(model, GuardMiddleware(guard, on_flagged="raise")).invoke({"messages": [HumanMessage("bomb plans")]})
    assert caught.value.stage == "input"
    assert caught.value.result.request is not None and caught.value.result.request.value == "harmful"
    assert model.calls == []

    model = CountingModel([AIMessage("Step one: poison the well.")])
    with pytest.raises(GuardViolation) as caught:
        agent(model, GuardMiddleware(guard, on_flagged="raise")).invoke({"messages": [HumanMessage("hi")]})
    assert caught.value.stage == "output" and caught.value.result.response is not None
    assert caught.value.result.response.value == "harmful"


def test_images_reach_the_guard() -> None:
    seen: list[Any] = []

    def judge(request: Any) -> str:
        seen.append(request)
        return verdict_output(ModelFamily.VL, request_harmful=request.image is not None)

    backend = FunctionBackend(judge)
    model = CountingModel([AIMessage("never sent")])
    message = HumanMessage(
        content=[
            {"type": "text", "text": "What is shown here?"},
            {"type": "image_url", "image_url": {"url": png_data_url("red")}},  # OpenAI chat format
            {"type": "image", "base64": png_base64("blue"), "mime_type": "image/png"},  # LangChain v1 block
        ]
    )
    out = agent(model, GuardMiddleware(Guard(backend=backend))).invoke({"messages": [message]})
    assert model.calls == [] and out["messages"][-1].content == REFUSAL_INPUT
    request = backend.calls[0][0]
    assert request.image is not None
    # both 56x56 images were merged side by side: red on the left, blue on the right
    assert request.image.size == (112, 56)
    assert request.image.getpixel((10, 28)) == (255, 0, 0)
    assert request.image.getpixel((100, 28)) == (0, 0, 255)
    assert "What is shown here?" in request.prompt.user_text


def test_image_only_turn_is_judged(guard: Guard, backend: AsyncFakeBackend) -> None:
    model = CountingModel([AIMessage("A red square.")])
    message = HumanMessage(content=[{"type": "image", "url": png_data_url()}])
    out = agent(model, GuardMiddleware(guard)).invoke({"messages": [message]})
    assert out["messages"][-1].content == "A red square."
    assert backend.calls[0][0].image is not None


async def test_async_path_uses_amoderate(backend: AsyncFakeBackend) -> None:
    guard = Guard(backend=backend)
    model = CountingModel([AIMessage("never sent")])
    out = await agent(model, GuardMiddleware(guard)).ainvoke({"messages": [HumanMessage("a bomb please")]})
    assert model.calls == [] and out["messages"][-1].content == REFUSAL_INPUT
    assert backend.async_calls == 1

    model = CountingModel([AIMessage("Use poison.", id="r")])
    out = await agent(model, GuardMiddleware(guard, on_flagged="replace")).ainvoke(
        {"messages": [HumanMessage("hello")]}
    )
    assert out["messages"][-1].id == "r" and out["messages"][-1].content == REFUSAL_OUTPUT
    assert backend.async_calls == 3


def test_tool_results_checked_and_user_turn_judged_once(guard: Guard, backend: AsyncFakeBackend) -> None:
    call = AIMessage("", tool_calls=[{"name": "lookup", "args": {"query": "bomb assembly"}, "id": "c1"}])
    model = CountingModel([call, AIMessage("never sent")])
    middleware = GuardMiddleware(guard, check_output=False, check_tool_results=True)
    out = agent(model, middleware, tools=[lookup]).invoke({"messages": [HumanMessage("Read the manual.")]})
    assert len(model.calls) == 1  # the model never read the flagged tool result
    assert out["messages"][-1].response_metadata["guardreasoner"]["stage"] == "tool"
    assert isinstance(out["messages"][-2], ToolMessage)
    judged = [r.prompt.user_text for batch in backend.calls for r in batch]
    assert sum("Read the manual." in p for p in judged) == 1, "the user turn is judged once per turn"


def test_tool_calls_in_the_reply_are_judged(guard: Guard) -> None:
    call = AIMessage("", id="r1", tool_calls=[{"name": "lookup", "args": {"query": "poison recipes"}, "id": "c1"}])
    model = CountingModel([call, AIMessage("never sent")])
    out = agent(model, GuardMiddleware(guard), tools=[lookup]).invoke({"messages": [HumanMessage("Any recipes?")]})
    assert len(model.calls) == 1
    assert not any(isinstance(m, ToolMessage) for m in out["messages"]), "the flagged tool call must not run"
    assert out["messages"][-1].id == "r1" and out["messages"][-1].tool_calls == []


def test_output_stage_blocks_on_the_response_verdict(guard: Guard) -> None:
    model = CountingModel([AIMessage("I won't help with that.")])
    middleware = GuardMiddleware(guard, check_input=False)
    out = agent(model, middleware).invoke({"messages": [HumanMessage("How do I build a bomb?")]})
    # the request is harmful but the reply is a harmless refusal: the output check lets it through
    assert out["messages"][-1].content == "I won't help with that."


def test_unjudgeable_content_blocks_or_raises(guard: Guard, backend: AsyncFakeBackend) -> None:
    audio = HumanMessage(
        content=[{"type": "text", "text": "listen"}, {"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"}]
    )
    model = CountingModel([AIMessage("never sent")])
    out = agent(model, GuardMiddleware(guard)).invoke({"messages": [audio]})
    result = out["messages"][-1].response_metadata["guardreasoner"]["result"]
    assert result["status"] == "invalid_input" and "audio" in result["error"]
    assert model.calls == [] and backend.calls == []
    with pytest.raises(InvalidInputError, match="audio"):
        agent(model, GuardMiddleware(guard, on_guard_error="raise")).invoke({"messages": [audio]})


def test_local_paths_in_message_content_are_never_read(guard: Guard, backend: AsyncFakeBackend, tmp_path: Any) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for the model")
    message = HumanMessage(
        content=[{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": str(secret)}}]
    )
    out = agent(CountingModel([AIMessage("x")]), GuardMiddleware(guard)).invoke({"messages": [message]})
    result = out["messages"][-1].response_metadata["guardreasoner"]["result"]
    assert result["status"] == "invalid_input" and "local paths" in result["error"]
    assert backend.calls == []


def test_message_content_reads_legacy_and_anthropic_blocks() -> None:
    message = HumanMessage(
        content=[
            "plain",
            {"type": "image", "source_type": "base64", "data": "QUJD", "mime_type": "image/jpeg"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "REVG"}},
            {"type": "image_url", "image_url": "https://example.com/cat.png"},
        ]
    )
    extracted = message_content(message)
    assert extracted.text == "plain"
    assert extracted.images == (
        "data:image/jpeg;base64,QUJD",
        "data:image/png;base64,REVG",
        "https://example.com/cat.png",
    )
    with pytest.raises(InvalidInputError, match="file id"):
        message_content(HumanMessage(content=[{"type": "image", "file_id": "file-123"}]))


def test_bad_options_are_refused(guard: Guard) -> None:
    with pytest.raises(InvalidInputError, match="exit_behavior"):
        GuardMiddleware(guard, exit_behavior="stop")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="on_guard_error"):
        GuardMiddleware(guard, on_guard_error="ignore")  # type: ignore[arg-type]


def test_custom_violation_message(guard: Guard) -> None:
    middleware = GuardMiddleware(guard, violation_message="Blocked ({stage}).")
    out = agent(CountingModel([AIMessage("x")]), middleware).invoke({"messages": [HumanMessage("bomb")]})
    assert out["messages"][-1].content == "Blocked (request)."


def test_provider_extras_in_a_reply_are_skipped_not_blocked(guard: Guard, backend: AsyncFakeBackend) -> None:
    reply = AIMessage(
        content=[
            {"type": "thinking", "thinking": "let me think", "signature": "s"},
            {"type": "text", "text": "Bake at 230 C."},
        ]
    )
    out = agent(CountingModel([reply]), GuardMiddleware(guard)).invoke({"messages": [HumanMessage("Bread?")]})
    assert out["messages"][-1].text == "Bake at 230 C."
    judged = backend.calls[-1][0].prompt.user_text
    assert "Bake at 230 C." in judged and "let me think" not in judged
