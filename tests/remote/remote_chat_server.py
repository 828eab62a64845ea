"""A small, real OpenAI-compatible completion server on 127.0.0.1 for the remote backend's tests.

It stands in for ``vllm serve`` (which cannot run a VL model here): real HTTP over a real socket (uvicorn),
answering ``/v1/chat/completions`` and ``/v1/completions`` in OpenAI's format with canned guard outputs. It
records every request (path, headers, JSON body) and fails on cue, driven by markers in the user text:

* ``FAIL500`` -> HTTP 500 every time; ``BAD400`` -> HTTP 400 with an OpenAI error body;
* ``GARBAGE`` -> HTTP 200 with a body that is not JSON; ``SLOW`` -> answers after 2 s;
* ``FLAKY<n>`` -> HTTP 503 for the first n attempts of that text, then an answer;
* ``RETRYAFTER`` -> HTTP 429 with ``Retry-After: 1`` once, then an answer.

The canned answer is the family's own output format: request harmful when the user text holds "bomb".
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from guardreasoner_vl.backends.fake import verdict_output
from guardreasoner_vl.prompts import ModelFamily

PROMPT_TOKENS = 321
COMPLETION_TOKENS = 54


@dataclass
class Recorder:
    """What the fake server saw."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.attempts.clear()
            self.in_flight = 0
            self.max_in_flight = 0
            self.delay_s = 0.0


def _user_text(path: str, body: dict[str, Any]) -> str:
    if path.endswith("/chat/completions"):
        user = body["messages"][-1]["content"]
        if isinstance(user, str):
            return user
        return "".join(p.get("text", "") for p in user if p.get("type") == "text")
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt or []))


def make_chat_app(recorder: Recorder) -> Any:
    app = FastAPI()

    async def handle(request: Request, path: str) -> Response:
        body = await request.json()
        text = _user_text(path, body)
        with recorder.lock:
            recorder.requests.append({"path": path, "headers": dict(request.headers), "body": body})
            recorder.attempts[text] += 1
            attempt = recorder.attempts[text]
            recorder.in_flight += 1
            recorder.max_in_flight = max(recorder.max_in_flight, recorder.in_flight)
        try:
            if recorder.delay_s:
                await asyncio.sleep(recorder.delay_s)
            if "SLOW" in text:
                await asyncio.sleep(2.0)
            if "FAIL500" in text:
                return JSONResponse({"error": {"message": "engine crashed", "type": "server_error"}}, status_code=500)
            if "BAD400" in text:
                return JSONResponse(
                    {"error": {"message": "This model's maximum context length is 10 tokens", "type": "BadRequest"}},
                    status_code=400,
                )
            if "GARBAGE" in text:
                return Response(b"<html>not json</html>", status_code=200, media_type="text/html")
            flaky = re.search(r"FLAKY(\d+)", text)
            if flaky and attempt <= int(flaky.group(1)):
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if "RETRYAFTER" in text and attempt == 1:
                return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "1"})
            family = ModelFamily.VL if path.endswith("/chat/completions") else ModelFamily.TEXT
            harmful = "bomb" in text.lower()
            answer = verdict_output(
                family,
                request_harmful=harmful,
                response_harmful=False if "AI assistant:\nNone" not in text else None,
                refusal=True if "AI assistant:\nNone" not in text else None,
                reasoning=f"attempt {attempt}",
            )
            usage = {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            }
            if family is ModelFamily.VL:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": answer, "finish_reason": "stop"}
                obj = "text_completion"
            return JSONResponse(
                {"id": "cmpl-1", "object": obj, "model": body.get("model"), "choices": [choice], "usage": usage}
            )
        finally:
            with recorder.lock:
                recorder.in_flight -= 1

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await handle(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, "/v1/completions")

    return app


@dataclass
class ChatServer:
    url: str
    recorder: Recorder

    @property
    def base_url(self) -> str:
        return self.url + "/v1"
