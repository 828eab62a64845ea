"""The LiteLLM Generic Guardrail API handler and its FastAPI app (checked against LiteLLM's documented
contract; LiteLLM itself is not installed: its proxy is the caller, replaced here by HTTP requests)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from integration_helpers import AsyncFakeBackend, png_base64, png_data_url

from guardreasoner_vl import Guard
from guardreasoner_vl.integrations.litellm import (
    GUARDRAIL_PATH,
    ahandle_guardrail_request,
    create_app,
    handle_guardrail_request,
)


def test_request_stage(guard: Guard, backend: AsyncFakeBackend) -> None:
    blocked = handle_guardrail_request(guard, {"texts": ["How do I build a bomb?"], "input_type": "request"})
    assert blocked["action"] == "BLOCKED" and "request was flagged" in blocked["blocked_reason"]
    assert blocked["guardreasoner"]["request"] == "harmful"
    ok = handle_guardrail_request(guard, {"texts": ["Bake bread?"], "images": [png_base64()], "input_type": "request"})
    assert ok["action"] == "NONE"
    assert backend.calls[-1][0].image is not None and backend.calls[-1][0].image.size == (56, 56)


def test_structured_messages_pick_the_last_user_turn(guard: Guard, backend: AsyncFakeBackend) -> None:
    payload = {
        "texts": ["Never mention bombs.", "Hello there"],
        "structured_messages": [
            {"role": "system", "content": "Never mention bombs."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hello there"},
                    {"type": "image_url", "image_url": {"url": png_data_url()}},
                ],
            },
        ],
        "input_type": "request",
    }
    assert handle_guardrail_request(guard, payload)["action"] == "NONE"  # the system prompt is not the request
    assert backend.calls[-1][0].image is not None


def test_response_stage_judges_the_reply_in_context(guard: Guard, backend: AsyncFakeBackend) -> None:
    context = [{"role": "user", "content": "What goes in soup?"}]
    harmful = {"texts": ["Add poison."], "input_type": "response", "structured_messages": context}
    assert handle_guardrail_request(guard, harmful)["action"] == "BLOCKED"
    assert "What goes in soup?" in backend.calls[-1][0].prompt.user_text
    refusal = {
        "texts": ["I can't help."],
        "input_type": "response",
        "structured_messages": [{"role": "user", "content": "bomb?"}],
    }
    assert handle_guardrail_request(guard, refusal)["action"] == "NONE"  # harmful request, harmless reply
    alone = {"texts": ["Add poison."], "input_type": "response"}
    assert handle_guardrail_request(guard, alone)["action"] == "BLOCKED"


def test_bad_images_fail_closed(guard: Guard) -> None:
    answer = handle_guardrail_request(guard, {"texts": ["hi"], "images": ["/etc/hosts"], "input_type": "request"})
    assert answer["action"] == "BLOCKED" and answer["guardreasoner"]["status"] == "invalid_input"
    assert handle_guardrail_request(guard, {"texts": [], "input_type": "request"}) == {"action": "NONE"}


async def test_async_handler(backend: AsyncFakeBackend) -> None:
    guard = Guard(backend=backend)
    answer = await ahandle_guardrail_request(guard, {"texts": ["poison recipe"], "input_type": "request"})
    assert answer["action"] == "BLOCKED" and backend.async_calls == 1


def test_app_over_http(guard: Guard) -> None:
    with TestClient(create_app(guard, api_key="secret")) as client:
        body = {
            "texts": ["bomb"],
            "input_type": "request",
            "request_data": {"user_api_key_hash": "x"},
            "litellm_call_id": "abc",
            "additional_provider_specific_params": {},
        }
        assert client.post(GUARDRAIL_PATH, json=body).status_code == 401
        headers = {"Authorization": "Bearer secret"}
        response = client.post(GUARDRAIL_PATH, json=body, headers=headers)
        assert response.status_code == 200 and response.json()["action"] == "BLOCKED"
        assert client.post(GUARDRAIL_PATH, json={"texts": "bomb"}, headers=headers).json()["action"] == "BLOCKED"
        assert client.post(GUARDRAIL_PATH, content=b"{", headers=headers).status_code == 400
        assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("payload", [[], "x"])
def test_non_object_payload_is_an_error(guard: Guard, payload: object) -> None:
    from guardreasoner_vl import InvalidInputError

    with pytest.raises(InvalidInputError, match="JSON object"):
        handle_guardrail_request(guard, payload)  # type: ignore[arg-type]


def test_response_stage_reads_the_replys_tool_calls(guard: Guard, backend: AsyncFakeBackend) -> None:
    context = [{"role": "user", "content": "Shop for me"}]
    calls = [{"id": "c1", "type": "function", "function": {"name": "buy", "arguments": '{"item": "poison"}'}}]
    payload = {"texts": ["Ordering."], "tool_calls": calls, "input_type": "response", "structured_messages": context}
    answer = handle_guardrail_request(guard, payload)
    assert answer["action"] == "BLOCKED" and "response was flagged" in answer["blocked_reason"]
    assert backend.calls[-1][0].prompt.user_text.endswith('Ordering.\n[tool call] buy({"item": "poison"})\n')
    # a reply judged without its request (LiteLLM sends none to the Generic API) is still named a response
    alone = handle_guardrail_request(guard, {"texts": ["Add poison."], "input_type": "response"})
    assert "response was flagged" in alone["blocked_reason"]


@pytest.mark.parametrize(
    "request_data",
    [
        {"messages": [{"role": "system", "content": "Cook."}, {"role": "user", "content": "What goes in soup?"}]},
        {"input": [{"role": "user", "content": "What goes in soup?"}], "instructions": "Cook."},
        {"input": "What goes in soup?"},
    ],
)
def test_the_custom_guardrail_judges_a_reply_in_its_requests_context(
    guard: Guard, backend: AsyncFakeBackend, request_data: dict[str, object]
) -> None:
    # GuardReasonerGuardrail (which needs litellm, so it runs in tests/integrations/test_litellm_proxy.py) hands
    # the proxied request to this same plan; here the plan runs without litellm.
    from guardreasoner_vl.integrations._common import run_sync
    from guardreasoner_vl.integrations.litellm import _answer, _plan, _request_context

    payload = {"texts": ["Carrots and salt."], "input_type": "response"}
    answer = _answer(run_sync(_plan(payload, lambda: _request_context(request_data)), guard, "block"), None)
    assert answer["action"] == "NONE"
    judged = backend.calls[-1][0].prompt.user_text
    assert judged == "Human user:\nWhat goes in soup?\n\nAI assistant:\nCarrots and salt.\n"
    assert _request_context({"messages": [{"role": "system", "content": "x"}]}) is None
