"""A small, real OpenAI-compatible completion server on 127.0.0.1 for the remote backend's tests.

It stands in for ``vllm serve`` (which cannot run a VL model here): real HTTP over a real socket (uvicorn),
answering ``/v1/chat/completions`` and ``/v1/completions`` in OpenAI's format with canned guard outputs. It
records every request (path, headers, JSON body) and fails on cue, driven by markers in the user text:

* ``FAIL500`` -> HTTP 500 every time; ``BAD400`` -> HTTP 400 with an OpenAI error body;
* ``GARBAGE`` -> HTTP 200 with a body that is not JSON; ``SLOW`` -> answers after 2 s;
* ``FLAKY<n>`` -> HTTP 503 for the first n attempts of that text, then an answer;
* ``RETRYAFTER`` -> HTTP 429 with ``Retry-After: 1`` once, then an answer;
* ``"stream": true`` in the body -> the answer as server-sent events, one word token per chunk, as vLLM streams
  (chat: ``delta.content`` and ``logprobs.content``; completions: ``text`` and per-chunk ``logprobs`` lists with
  running ``text_offset``), a usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``;
  ``BREAKSTREAM`` -> the connection breaks after three chunks; ``SLOWSTREAM`` -> 0.2 s between chunks, and a
  client that leaves midway is counted in ``Recorder.streams_aborted``;
* ``LOGPROBS`` -> when the request asks for log-probabilities, the answer carries them in OpenAI's format
  (chat: ``content`` entries with ``bytes``; completions: ``tokens`` / ``top_logprobs`` / ``text_offset``),
  the answer split into word tokens, with P(" harmful") = :data:`HARMFUL_P` at each label. Without the marker
  the server ignores the request for log-probabilities, as servers that do not support them do.

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
from fastapi.responses import JSONResponse, Response, StreamingResponse

from guardreasoner_vl.backends.fake import verdict_output
from guardreasoner_vl.prompts import ModelFamily

PROMPT_TOKENS = 321
COMPLETION_TOKENS = 54
HARMFUL_P = 0.8


def _logprobs(answer: str, *, chat: bool, top: int) -> dict[str, Any]:
    """OpenAI-format log-probabilities for ``answer`` split into word tokens (see the module docs)."""
    import math

    tokens = re.findall(r"\s*\S+|\s+", answer)
    first: list[tuple[str, float]] = []
    entries = []
    for token in tokens:
        word = token.strip().lower()
        if word in ("harmful", "unharmful"):
            lead = token[: len(token) - len(token.lstrip())]
            options = [(lead + "harmful", math.log(HARMFUL_P)), (lead + "unharmful", math.log(1 - HARMFUL_P))]
        else:
            options = [(token, -0.01), (" the", -5.0)]
        chosen = dict(options)[token] if token in dict(options) else options[0][1]
        options = options[:top]
        entries.append((token, chosen, options))
        first.append((token, chosen))
    if chat:
        return {
            "content": [
                {
                    "token": t,
                    "logprob": lp,
                    "bytes": list(t.encode()),
                    "top_logprobs": [{"token": o, "logprob": v, "bytes": list(o.encode())} for o, v in options],
                }
                for t, lp, options in entries
            ]
        }
    offsets, position = [], 0
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [lp for _, lp in first],
        "top_logprobs": [dict(options) for _, _, options in entries],
        "text_offset": offsets,
    }


@dataclass
class Recorder:
    """What the fake server saw."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    delay_s: float = 0.0
    streams_aborted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.attempts.clear()
            self.in_flight = 0
            self.max_in_flight = 0
            self.delay_s = 0.0
            self.streams_aborted = 0


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
                if "LOGPROBS" in text and body.get("logprobs"):
                    choice["logprobs"] = _logprobs(answer, chat=True, top=int(body.get("top_logprobs") or 1))
            else:
                choice = {"index": 0, "text": answer, "finish_reason": "stop"}
                obj = "text_completion"
                if "LOGPROBS" in text and body.get("logprobs"):
                    choice["logprobs"] = _logprobs(answer, chat=False, top=int(body["logprobs"]))
            if body.get("stream"):
                return StreamingResponse(
                    _sse_chunks(answer, choice, body, usage, text, recorder), media_type="text/event-stream"
                )
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


async def _sse_chunks(
    answer: str, choice: dict[str, Any], body: dict[str, Any], usage: dict[str, Any], text: str, recorder: Recorder
) -> Any:
    """The answer streamed as vLLM streams it (see the module docs)."""
    import json

    chat = "message" in choice
    tokens = re.findall(r"\s*\S+|\s+", answer)
    logprobs = choice.get("logprobs")
    kind = "chat.completion.chunk" if chat else "text_completion"
    finished = False

    def event(data: dict[str, Any]) -> bytes:
        return f"data: {json.dumps({'id': 'cmpl-1', 'object': kind, 'model': body.get('model'), **data})}\n\n".encode()

    try:
        if chat:
            opening = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            yield event({"choices": [opening]})
        offset = 0
        for i, token in enumerate(tokens):
            if "BREAKSTREAM" in text and i == 3:
                raise RuntimeError("the connection breaks")
            if "SLOWSTREAM" in text:
                await asyncio.sleep(0.2)
            if chat:
                piece: dict[str, Any] = {"index": 0, "delta": {"content": token}, "finish_reason": None}
                if logprobs:
                    piece["logprobs"] = {"content": [logprobs["content"][i]]}
            else:
                piece = {"index": 0, "text": token, "finish_reason": None}
                if logprobs:
                    piece["logprobs"] = {
                        "tokens": [token],
                        "token_logprobs": [logprobs["token_logprobs"][i]],
                        "top_logprobs": [logprobs["top_logprobs"][i]],
                        "text_offset": [offset],
                    }
            offset += len(token)
            yield event({"choices": [piece]})
        last: dict[str, Any] = {"index": 0, "finish_reason": "stop", **({"delta": {}} if chat else {"text": ""})}
        yield event({"choices": [last]})
        if (body.get("stream_options") or {}).get("include_usage"):
            yield event({"choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"
        finished = True
    finally:
        if not finished and "BREAKSTREAM" not in text:
            with recorder.lock:
                recorder.streams_aborted += 1


@dataclass
class ChatServer:
    url: str
    recorder: Recorder

    @property
    def base_url(self) -> str:
        return self.url + "/v1"
