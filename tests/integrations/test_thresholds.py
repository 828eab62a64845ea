"""Every integration passes a verdict-score threshold to the guard (``threshold=``): with the same guard
output, "unharmful" at P(harmful)=0.8, the default passes and ``threshold=0.5`` blocks.

The engine is scripted (``scored_generation``: the family's verdict text plus chosen label probabilities), so the
test is about the integrations; the real packages are used around it (``create_agent``, the ``openai`` client).
"""

from __future__ import annotations

import asyncio

import pytest
from integration_helpers import FakeOpenAIServer, sync_client
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FunctionBackend, scored_generation, verdict_output
from guardreasoner_vl.integrations.langchain import GuardMiddleware, GuardRunnable
from guardreasoner_vl.integrations.nemo import GuardReasonerRails
from guardreasoner_vl.integrations.openai import GuardedOpenAI
from guardreasoner_vl.prompts import ModelFamily

BENIGN_LABEL_RISKY_SCORE = verdict_output(ModelFamily.VL, request_harmful=False, response_harmful=False)


@pytest.fixture
def guard() -> Guard:
    backend = FunctionBackend(lambda r: scored_generation(BENIGN_LABEL_RISKY_SCORE, {"request": 0.8, "response": 0.8}))
    return Guard(backend=backend)


def test_guard_itself_is_left_unchanged(guard: Guard) -> None:
    GuardMiddleware(guard, threshold=0.5)
    assert guard.thresholds == {}
    assert guard.moderate("hello").flagged is False


@pytest.mark.parametrize(("threshold", "blocked"), [(None, False), (0.5, True), (0.9, False)])
def test_langchain_agent_middleware(guard: Guard, threshold: float | None, blocked: bool) -> None:
    model = FakeMessagesListChatModel(responses=[AIMessage(content="Sure, here you go.")])
    agent = create_agent(model, tools=[], middleware=[GuardMiddleware(guard, threshold=threshold)])
    state = agent.invoke({"messages": [HumanMessage("hello")]})
    last = state["messages"][-1].content
    assert ("flagged" in last) is blocked, last


@pytest.mark.parametrize(("threshold", "blocked"), [(None, False), ({"request": 0.7}, True)])
def test_langchain_runnable(guard: Guard, threshold: object, blocked: bool) -> None:
    model = FakeMessagesListChatModel(responses=[AIMessage(content="Sure.")])
    out = GuardRunnable(guard, model, threshold=threshold).invoke([HumanMessage("hello")])  # type: ignore[arg-type]
    assert ("flagged" in str(out.content)) is blocked


@pytest.mark.parametrize(("threshold", "blocked"), [(None, False), (0.5, True)])
def test_openai_client(guard: Guard, threshold: float | None, blocked: bool) -> None:
    server = FakeOpenAIServer()
    client = GuardedOpenAI(sync_client(server), guard, threshold=threshold)
    completion = client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "hello"}])
    assert (completion.choices[0].finish_reason == "content_filter") is blocked
    assert (server.requests == []) is blocked  # blocked at the input stage, before the API


@pytest.mark.parametrize(("threshold", "allowed"), [(None, True), (0.5, False)])
def test_nemo_rail(guard: Guard, threshold: float | None, allowed: bool) -> None:
    rail = GuardReasonerRails(guard, threshold=threshold)
    events = [{"type": "UtteranceUserActionFinished", "final_transcript": "hello"}]
    assert asyncio.run(rail.check_input(events=events)) is allowed
    assert rail.last_results["input"].request_score == pytest.approx(0.8)
