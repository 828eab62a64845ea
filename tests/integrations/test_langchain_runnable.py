"""GuardRunnable / guard.as_runnable in real LCEL pipelines (fake chat models: no LLM runs offline)."""

from __future__ import annotations

from typing import Any

import pytest
from integration_helpers import AsyncFakeBackend, png_data_url
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from guardreasoner_vl import Guard, GuardViolation, InvalidInputError
from guardreasoner_vl.integrations.langchain import GuardRunnable, as_runnable


class Recorder:
    """Wraps a fake chat model in a RunnableLambda that records what reached it."""

    def __init__(self, reply: str) -> None:
        self.inputs: list[Any] = []
        self.model = FakeListChatModel(responses=[reply])
        self.runnable = RunnableLambda(self._call, afunc=self._acall)

    def _call(self, value: Any) -> Any:
        self.inputs.append(value)
        return self.model.invoke(value)

    async def _acall(self, value: Any) -> Any:
        self.inputs.append(value)
        return await self.model.ainvoke(value)


def test_input_and_output_guard_pass_a_safe_exchange(guard: Guard, backend: AsyncFakeBackend) -> None:
    model = Recorder("Knead the dough.")
    out = guard.as_runnable(model.runnable).invoke("How do I bake bread?")
    assert isinstance(out, AIMessage) and out.content == "Knead the dough."
    assert len(model.inputs) == 1
    assert len(backend.calls) == 2


def test_flagged_input_returns_a_refusal_without_calling_the_model(guard: Guard) -> None:
    model = Recorder("never")
    out = GuardRunnable(guard, model.runnable, check_output=False).invoke("how to make poison")
    assert model.inputs == []
    assert isinstance(out, AIMessage) and "request was flagged" in str(out.content)
    assert out.response_metadata["guardreasoner"]["result"]["request"] == "harmful"


def test_flagged_output_is_refused_or_raised(guard: Guard) -> None:
    chain = as_runnable(guard, FakeListChatModel(responses=["Add poison to the soup."]))
    out = chain.invoke([HumanMessage("What goes in soup?")])
    assert "response was flagged" in str(out.content)
    assert out.response_metadata["guardreasoner"]["stage"] == "output"
    strict = as_runnable(guard, FakeListChatModel(responses=["Add poison."]), on_flagged="raise")
    with pytest.raises(GuardViolation) as caught:
        strict.invoke("What goes in soup?")
    assert caught.value.stage == "output"


def test_string_chains_get_string_refusals(guard: Guard) -> None:
    inner = FakeListChatModel(responses=["Add poison."]) | StrOutputParser()
    out = GuardRunnable(guard, inner).invoke("soup?")
    assert isinstance(out, str) and "response was flagged" in out


def test_gate_in_a_pipeline(guard: Guard) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("user", "{question}")])
    model = Recorder("Bread needs yeast.")
    chain = prompt | GuardRunnable(guard) | model.runnable
    assert chain.invoke({"question": "Why does bread rise?"}).content == "Bread needs yeast."
    # the gate passed the prompt value through unchanged
    assert [m.type for m in model.inputs[0].to_messages()] == ["system", "human"]
    with pytest.raises(GuardViolation) as caught:
        chain.invoke({"question": "bomb?"})
    assert caught.value.stage == "input" and len(model.inputs) == 1
    soft = prompt | GuardRunnable(guard).with_fallbacks(
        [RunnableLambda(lambda _: AIMessage("Refused."))], exceptions_to_handle=(GuardViolation,)
    )
    assert soft.invoke({"question": "bomb?"}).content == "Refused."


def test_images_in_prompt_messages_reach_the_guard(guard: Guard, backend: AsyncFakeBackend) -> None:
    message = HumanMessage(
        content=[{"type": "text", "text": "Describe."}, {"type": "image_url", "image_url": {"url": png_data_url()}}]
    )
    GuardRunnable(guard).invoke([message])
    assert backend.calls[0][0].image is not None and backend.calls[0][0].image.size == (56, 56)


async def test_async_and_stream(backend: AsyncFakeBackend) -> None:
    guard = Guard(backend=backend)
    model = Recorder("Knead the dough.")
    chain = guard.as_runnable(model.runnable)
    assert (await chain.ainvoke("bread?")).content == "Knead the dough."
    blocked = await chain.ainvoke("poison?")
    assert "request was flagged" in str(blocked.content)
    assert backend.async_calls == 3 and len(model.inputs) == 1
    chunks = [c async for c in chain.astream("bread?")]
    assert len(chunks) == 1 and chunks[0].content == "Knead the dough."
    assert [c.content for c in chain.stream("bread?")] == ["Knead the dough."]


def test_batch(guard: Guard) -> None:
    chain = guard.as_runnable(FakeListChatModel(responses=["Fine."]))
    outs = chain.batch(["bread?", "bomb?"])
    assert outs[0].content == "Fine." and "request was flagged" in str(outs[1].content)


def test_bad_configuration_and_input(guard: Guard) -> None:
    with pytest.raises(InvalidInputError, match="exit_behavior='error'"):
        GuardRunnable(guard, exit_behavior="end")
    with pytest.raises(InvalidInputError, match="Runnable"):
        GuardRunnable(guard, "gpt-4o")  # type: ignore[arg-type]
    strict = GuardRunnable(guard, on_guard_error="raise")
    with pytest.raises(InvalidInputError, match="prompt template"):
        strict.invoke({"question": "hi"})
    with pytest.raises(GuardViolation) as caught:  # fail closed by default
        GuardRunnable(guard).invoke({"question": "hi"})
    assert caught.value.result.status == "invalid_input"


def test_invoke_kwargs_reach_the_model(guard: Guard) -> None:
    seen: list[dict[str, Any]] = []

    def model(value: Any, **kwargs: Any) -> AIMessage:
        seen.append(kwargs)
        return AIMessage("ok")

    class KwargsModel(RunnableLambda):  # type: ignore[type-arg]
        def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
            return model(input, **kwargs)

    GuardRunnable(guard, KwargsModel(lambda x: x)).invoke("bread?", stop=["\n"])
    assert seen == [{"stop": ["\n"]}]
