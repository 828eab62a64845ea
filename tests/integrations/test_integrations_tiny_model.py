"""The full local stack under the integrations: a tiny random Qwen2.5-VL judging through each adapter.

Random weights produce no readable verdict, so every judgement is a ``parse_error`` and the fail-closed
default (``on_parse_error="flag"``) blocks it: the point is the wiring (prompt with the image, real model,
parser, policy), not the verdict.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from integration_helpers import FakeOpenAIServer, png_data_url
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage

from guardreasoner_vl import Guard
from guardreasoner_vl.integrations.langchain import GuardMiddleware
from guardreasoner_vl.integrations.litellm import handle_guardrail_request
from guardreasoner_vl.integrations.openai import GuardedOpenAI

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_guard(tiny_vl_path: Path) -> Guard:
    guard = Guard(tiny_vl_path, max_new_tokens=8)
    yield guard
    guard.close()


def test_agent_with_image_is_blocked_fail_closed(tiny_guard: Guard) -> None:
    model = FakeListChatModel(responses=["never sent"])
    agent = create_agent(model, middleware=[GuardMiddleware(tiny_guard)])
    message = HumanMessage(
        content=[{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": png_data_url()}}]
    )
    last = agent.invoke({"messages": [message]})["messages"][-1]
    result = last.response_metadata["guardreasoner"]["result"]
    assert result["status"] == "parse_error" and result["flagged"] is True
    assert result["usage"]["prompt_tokens"] > 20  # the image tokens were in the prompt
    assert result["model"] == str(tiny_guard.model_id)


async def test_async_agent_and_allow_policy(tiny_guard: Guard) -> None:
    lenient = tiny_guard.with_options(on_parse_error="allow")
    agent = create_agent(FakeListChatModel(responses=["Hello!"]), middleware=[GuardMiddleware(lenient)])
    out = await agent.ainvoke({"messages": [HumanMessage("hi")]})
    assert out["messages"][-1].content == "Hello!"  # fail open: nothing readable, nothing flagged


def test_openai_client_and_litellm_handler(tiny_guard: Guard) -> None:
    server = FakeOpenAIServer()
    raw = openai.OpenAI(
        api_key="sk-test", base_url="http://fake.test/v1", http_client=httpx.Client(transport=server.transport())
    )
    completion = GuardedOpenAI(raw, tiny_guard, on_flagged="block").chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "hello"}]
    )
    assert completion.choices[0].finish_reason == "content_filter" and server.requests == []
    assert completion.guardreasoner.input is not None and completion.guardreasoner.input.status == "parse_error"
    answer = handle_guardrail_request(tiny_guard, {"texts": ["hello"], "input_type": "request"})
    assert answer["action"] == "BLOCKED" and "could not judge" in answer["blocked_reason"]
