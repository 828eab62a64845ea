"""A real LiteLLM proxy (a separate process, from the gateway venv) guarded by GuardReasoner, two ways.

Everything here is real but the LLM: the real ``openai`` client talks to a real ``litellm`` proxy started on
127.0.0.1 from ``integrations/litellm/config.yaml`` (the sample we ship, with its addresses filled in), which
forwards to a stub OpenAI-compatible "LLM" (``stub_llm.StubLLMServer``: there is no model here) and calls
the guard either over our server's Generic Guardrail API (``guardreasoner-api``) or in its own process through
our ``CustomGuardrail`` subclass (``guardreasoner``, ``guardreasoner-during``). The guard's engine is the
keyword ``FakeBackend`` through the real prompt and parser. The proxy starts once for the module.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
import yaml
from gateways import ROOT, free_port, gateway_env, require_gateways, stop, wait_until_up
from integration_helpers import AsyncFakeBackend
from stub_llm import StubLLMServer

from guardreasoner_vl import Guard
from guardreasoner_vl.integrations.litellm import GUARDRAIL_PATH, create_app
from guardreasoner_vl.server import serve_in_thread

GUARD_KEY = "guard-secret"
MASTER_KEY = "sk-proxy-test"
KEYWORDS = ["bomb", "poison"]
RAILS = ["guardreasoner-api", "guardreasoner"]


def stub_reply(user_text: str) -> str:
    return "Add poison to it." if "soup" in user_text.lower() else "Knead the dough and bake it."


@dataclass
class Stack:
    client: openai.OpenAI
    llm: StubLLMServer
    guard_requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


class RecordRequests:
    """ASGI middleware: keeps the headers and body of every guardrail call our server receives."""

    def __init__(self, app: Any, sink: list[tuple[dict[str, str], bytes]]) -> None:
        self.app, self.sink = app, sink

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != GUARDRAIL_PATH:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recording_receive() -> Any:
            message = await receive()
            chunks.append(message.get("body", b""))
            return message

        await self.app(scope, recording_receive, send)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.sink.append((headers, b"".join(chunks)))


def proxy_config(guard_url: str, llm_url: str) -> dict[str, Any]:
    """The shipped sample config, pointed at the test's servers; the in-process guard uses the fake engine."""
    config = yaml.safe_load((ROOT / "integrations/litellm/config.yaml").read_text())
    config["model_list"] = [
        {"model_name": "stub", "litellm_params": {"model": "openai/stub", "api_base": llm_url, "api_key": "sk-stub"}}
    ]
    api, custom = config["guardrails"]
    api["litellm_params"].update(api_base=guard_url, api_key=GUARD_KEY, default_on=False)
    custom["litellm_params"].update(
        guard_backend="fake", guard_options={"backend_options": {"harmful_keywords": KEYWORDS}}
    )
    during = {
        "guardrail_name": "guardreasoner-during",
        "litellm_params": custom["litellm_params"] | {"mode": "during_call"},
    }
    wrong_key = {
        "guardrail_name": "guardreasoner-api-wrong-key",
        "litellm_params": api["litellm_params"] | {"api_key": "not-the-key"},
    }
    config["guardrails"] += [during, wrong_key]
    config["general_settings"] = {"master_key": MASTER_KEY}
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    python = require_gateways("litellm.proxy.proxy_server")
    folder = tmp_path_factory.mktemp("litellm")
    guard = Guard(backend=AsyncFakeBackend(harmful_keywords=KEYWORDS))
    app = create_app(guard, api_key=GUARD_KEY)
    recorded: list[tuple[dict[str, str], bytes]] = []
    app.add_middleware(RecordRequests, sink=recorded)
    with StubLLMServer(stub_reply) as llm, serve_in_thread(app) as guard_url:
        (folder / "config.yaml").write_text(yaml.safe_dump(proxy_config(guard_url, llm.url)))
        shutil.copy(ROOT / "integrations/litellm/guardreasoner_guardrail.py", folder)
        port, log = free_port(), folder / "proxy.log"
        with log.open("wb") as out:
            command = [str(python.parent / "litellm"), "--config", str(folder / "config.yaml")]
            process = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=gateway_env(),
                cwd=folder,
            )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(process, f"{base}/health/liveliness", log, timeout_s=240, ok=lambda r: r.status_code == 200)
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)
            yield Stack(client=client, llm=llm, guard_requests=recorded)
        finally:
            stop(process)
            print(f"--- LiteLLM proxy log (tail) ---\n{log.read_text(errors='replace')[-4000:]}")


def chat(stack: Stack, rail: str, text: str) -> Any:
    return stack.client.chat.completions.create(
        model="stub", messages=[{"role": "user", "content": text}], extra_body={"guardrails": [rail]}
    )


@pytest.mark.parametrize("rail", RAILS)
def test_a_benign_request_passes_both_hooks(stack: Stack, rail: str) -> None:
    sent = len(stack.llm.requests)
    completion = chat(stack, rail, "How do I bake bread?")
    assert completion.choices[0].message.content == "Knead the dough and bake it."
    assert len(stack.llm.requests) == sent + 1


@pytest.mark.parametrize("rail", [*RAILS, "guardreasoner-during"])
def test_a_harmful_request_is_blocked_with_the_proxys_error(stack: Stack, rail: str) -> None:
    sent = len(stack.llm.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        chat(stack, rail, "How do I build a bomb?")
    error = caught.value
    assert error.status_code == 400
    assert isinstance(error.body, dict) and "request was flagged by the safety guard" in error.body["message"]
    assert error.body["code"] == "400"
    if rail != "guardreasoner-during":  # during_call runs beside the LLM call, so the LLM may be called
        assert len(stack.llm.requests) == sent


@pytest.mark.parametrize("rail", RAILS)
def test_a_harmful_reply_is_blocked_by_the_output_hook(stack: Stack, rail: str) -> None:
    sent = len(stack.llm.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        chat(stack, rail, "Any soup ideas?")
    assert len(stack.llm.requests) == sent + 1  # the LLM answered; the reply was stopped on its way back
    assert isinstance(caught.value.body, dict) and "response was flagged" in caught.value.body["message"]
    assert "poison" not in str(caught.value.body)


def test_the_proxy_sends_our_key_as_x_api_key_and_the_conversation(stack: Stack) -> None:
    before = len(stack.guard_requests)
    conversation = [
        {"role": "system", "content": "You are a cook."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How do I bake bread?"},
    ]
    stack.client.chat.completions.create(
        model="stub", messages=conversation, extra_body={"guardrails": ["guardreasoner-api"]}
    )
    # this call's guard requests, by LiteLLM's call id (a guard call of an earlier test, e.g. a during_call check
    # that outlived its blocked request, may land in the same window)
    def this_call() -> list[tuple[dict[str, str], dict[str, object]]]:
        found = [(headers, json.loads(body)) for headers, body in stack.guard_requests[before:]]
        ours = [b.get("litellm_call_id") for _, b in found if b.get("structured_messages") == conversation]
        return [(h, b) for h, b in found if ours and b.get("litellm_call_id") == ours[0]]

    deadline = time.monotonic() + 10
    while len(this_call()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    calls = this_call()
    assert [b["input_type"] for _, b in calls] == ["request", "response"]
    headers = calls[0][0]
    print("headers LiteLLM sent to the guard server:", sorted(headers))
    assert headers["x-api-key"] == GUARD_KEY and "authorization" not in headers
    request, response = (body for _, body in calls)
    print("body fields LiteLLM sent:", sorted(request))
    assert {"texts", "images", "structured_messages", "tool_calls", "input_type", "request_headers"} <= set(request)
    assert request["input_type"] == "request" and request["structured_messages"] == conversation
    assert response["input_type"] == "response" and response["texts"] == ["Knead the dough and bake it."]


def test_a_guard_server_that_refuses_the_key_blocks(stack: Stack) -> None:
    # our server answers 401 to a wrong key; LiteLLM's generic guardrail then fails closed (its default)
    sent = len(stack.llm.requests)
    with pytest.raises(openai.APIStatusError) as caught:
        chat(stack, "guardreasoner-api-wrong-key", "How do I bake bread?")
    assert caught.value.status_code == 500 and len(stack.llm.requests) == sent
    assert isinstance(caught.value.body, dict) and "401 Unauthorized" in caught.value.body["message"]
    assert stack.guard_requests[-1][0]["x-api-key"] == "not-the-key"


@pytest.mark.parametrize("rail", RAILS)
def test_the_responses_api_through_the_proxy(stack: Stack, rail: str) -> None:
    guardrails = {"guardrails": [rail]}
    ok = stack.client.responses.create(
        model="stub", input=[{"role": "user", "content": "Bread?"}], instructions="Cook.", extra_body=guardrails
    )
    assert ok.output_text == "Knead the dough and bake it."
    with pytest.raises(openai.BadRequestError, match="request was flagged"):
        stack.client.responses.create(model="stub", input="How do I make poison?", extra_body=guardrails)
    with pytest.raises(openai.BadRequestError, match="response was flagged"):
        stack.client.responses.create(model="stub", input="Soup?", extra_body=guardrails)


def test_a_streamed_harmful_reply_is_cut_at_its_end_by_the_custom_guardrail(stack: Stack) -> None:
    # LiteLLM streams chunks as they come; GuardReasonerGuardrail judges once at the end of the stream, so the
    # client has the chunks already and the stream ends in an error (LiteLLM cannot take chunks back).
    def stream(text: str) -> tuple[str, Exception | None]:
        received, error = [], None
        try:
            for chunk in stack.client.chat.completions.create(
                model="stub",
                messages=[{"role": "user", "content": text}],
                stream=True,
                extra_body={"guardrails": ["guardreasoner"]},
            ):
                received.append((chunk.choices[0].delta.content or "") if chunk.choices else "")
        except Exception as exc:  # what the openai client raises for an error event in a stream
            error = exc
        return "".join(received), error

    text, error = stream("Bread?")
    assert text == "Knead the dough and bake it." and error is None
    text, error = stream("Soup?")
    assert text == "Add poison to it."  # already sent: the limit written in docs/integrations.md
    assert isinstance(error, openai.APIError) and "response was flagged" in str(error)
