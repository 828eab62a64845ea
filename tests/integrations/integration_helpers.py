"""Helpers for the integration tests: small images, a recording guard backend, a fake OpenAI chat server.

The fake OpenAI server is a stand-in only for the remote API (which cannot be reached offline); the real
``openai`` client talks to it over HTTP through ``httpx.MockTransport``, so request encoding, response
parsing and server-sent-event streaming are the client's own.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from PIL import Image
from stub_llm import responses_events, responses_payload

from guardreasoner_vl.backends import FakeBackend
from guardreasoner_vl.backends.base import GenerationRequest


def png_data_url(color: str = "red", size: tuple[int, int] = (56, 56)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def png_base64(color: str = "blue", size: tuple[int, int] = (56, 56)) -> str:
    return png_data_url(color, size).split(",", 1)[1]


class AsyncFakeBackend(FakeBackend):
    """FakeBackend with an ``agenerate``, recording which path the guard took."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.async_calls = 0

    async def agenerate(self, requests: list[GenerationRequest], params: Any) -> Any:
        self.async_calls += 1
        return self.generate(requests, params)


class FakeOpenAIServer:
    """Answers ``POST /v1/chat/completions`` and ``POST /v1/responses`` like OpenAI: JSON, or server-sent
    events when ``stream`` is set.

    Args:
        reply: the assistant text for choice ``i`` of a request, ``reply(body, i)`` (``i`` is 0 for Responses).
        tool_calls: function calls a Responses reply adds after its text, ``[{"name", "arguments"}]``.
    """

    def __init__(
        self,
        reply: Callable[[dict[str, Any], int], str] | str = "Knead the dough and bake it.",
        *,
        tool_calls: list[dict[str, str]] | None = None,
    ) -> None:
        self.reply = reply if callable(reply) else (lambda body, i, text=reply: text)
        self.tool_calls = tool_calls
        self.requests: list[dict[str, Any]] = []
        self.responses_requests: list[dict[str, Any]] = []
        self.last_payload: dict[str, Any] | None = None

    def handle_responses(self, body: dict[str, Any]) -> httpx.Response:
        self.responses_requests.append(body)
        text = self.reply(body, 0)
        if body.get("stream"):
            events = responses_events(body, text)
            sse = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
            return httpx.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
        payload = responses_payload(body, text, tool_calls=self.tool_calls)
        self.last_payload = payload
        return httpx.Response(200, json=payload)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(
                200,
                json={
                    "object": "list",
                    "data": [{"id": "fake-chat", "object": "model", "created": 0, "owned_by": "test"}],
                },
            )
        body = json.loads(request.content)
        if request.url.path.endswith("/responses"):
            return self.handle_responses(body)
        assert request.url.path.endswith("/chat/completions"), request.url.path
        self.requests.append(body)
        n = int(body.get("n") or 1)
        texts = [self.reply(body, i) for i in range(n)]
        ident, created, model = "chatcmpl-test123", int(time.time()), body["model"]
        if body.get("stream"):
            events = []
            for i, text in enumerate(texts):
                first = {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                events.append(
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [first],
                    }
                )
                for word in text.split(" "):
                    piece = {"index": i, "delta": {"content": word + " "}, "finish_reason": None}
                    events.append(
                        {
                            "id": ident,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [piece],
                        }
                    )
                last = {"index": i, "delta": {}, "finish_reason": "stop"}
                events.append(
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [last],
                    }
                )
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append(
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
                    }
                )
            sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
        payload = {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_test",
            "choices": [
                {
                    "index": i,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                }
                for i, text in enumerate(texts)
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }
        self.last_payload = payload
        return httpx.Response(200, json=payload)


def sync_client(server: FakeOpenAIServer) -> Any:
    """The real ``openai.OpenAI`` client, talking to ``server`` over ``httpx.MockTransport``."""
    import openai

    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://fake.test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=server.transport()),
    )


def async_client(server: FakeOpenAIServer) -> Any:
    """The real ``openai.AsyncOpenAI`` client, talking to ``server`` over ``httpx.MockTransport``."""
    import openai

    return openai.AsyncOpenAI(
        api_key="sk-test",
        base_url="http://fake.test/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=server.transport()),
    )
