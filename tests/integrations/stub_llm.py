"""A stub OpenAI-compatible LLM: the one part of a real pipeline that cannot run here (there is no LLM).

Its answers follow a rule given by the test (``reply(user_text) -> str``), so a test decides what the "model"
says. It speaks chat completions and the Responses API, JSON and server-sent events, the way OpenAI's API
does, so the real ``openai`` client and a real LiteLLM proxy can talk to it:

* :func:`responses_payload` / :func:`responses_events` build Responses API bodies (also used under
  ``httpx.MockTransport`` by ``integration_helpers.FakeOpenAIServer``);
* :class:`StubLLMServer` serves ``POST /v1/chat/completions`` and ``POST /v1/responses`` over HTTP on
  127.0.0.1 in a thread, recording each request body and its headers.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[str], str]


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message (chat ``messages``, or Responses ``input``)."""
    messages = body.get("messages")
    if messages is None:
        items = body.get("input")
        if isinstance(items, str):
            return items
        messages = [i for i in items or [] if isinstance(i, dict) and i.get("role")]
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return "\n".join(str(p.get("text") or "") for p in content or [] if isinstance(p, dict))
    return ""


def responses_payload(
    body: dict[str, Any], text: str | None, *, tool_calls: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """A completed ``Response`` body: one message with ``text`` (if any), then ``function_call`` items."""
    output: list[dict[str, Any]] = []
    if text is not None:
        content = [{"type": "output_text", "text": text, "annotations": []}]
        output.append(
            {"id": "msg_stub1", "type": "message", "role": "assistant", "status": "completed", "content": content}
        )
    for i, call in enumerate(tool_calls or []):
        output.append(
            {
                "id": f"fc_stub{i}",
                "type": "function_call",
                "call_id": f"call_{i}",
                "name": call["name"],
                "arguments": call["arguments"],
                "status": "completed",
            }
        )
    return {
        "id": "resp_stub123",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": body.get("model", "stub"),
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 5,
            "output_tokens": 7,
            "total_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def responses_events(body: dict[str, Any], text: str) -> list[dict[str, Any]]:
    """The server-sent events of a streamed ``Response`` whose message is ``text`` (one delta per word)."""
    final = responses_payload(body, text)
    started = final | {"status": "in_progress", "output": [], "usage": None}
    item = final["output"][0]
    where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": item | {"status": "in_progress", "content": []},
        },
        {
            "type": "response.content_part.added",
            "part": {"type": "output_text", "text": "", "annotations": []},
            **where,
        },
    ]
    words = text.split(" ")
    for i, word in enumerate(words):
        delta = word if i == len(words) - 1 else word + " "
        events.append({"type": "response.output_text.delta", "delta": delta, "logprobs": [], **where})
    events += [
        {"type": "response.output_text.done", "text": text, "logprobs": [], **where},
        {"type": "response.content_part.done", "part": item["content"][0], **where},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": final},
    ]
    return [event | {"sequence_number": n} for n, event in enumerate(events)]


def chat_payload(body: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-stub{uuid.uuid4().hex[:8]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "stub"),
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": text},
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


def chat_events(body: dict[str, Any], text: str) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": int(time.time()), "model": "stub"}
    words = text.split(" ")
    events = [base | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    for i, word in enumerate(words):
        piece = word if i == len(words) - 1 else word + " "
        events.append(base | {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    events.append(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return events


class StubLLMServer:
    """An OpenAI-compatible HTTP server on 127.0.0.1 whose "model" answers ``reply(last user text)``.

    Attributes:
        url: ``http://127.0.0.1:<port>/v1``.
        requests: ``(path, headers, body)`` of every request, in order.
    """

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._json({"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "t"}]})
                else:
                    self._json({"error": {"message": "not found"}}, status=404)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                owner.requests.append((self.path, dict(self.headers.items()), body))
                text = owner.reply(last_user_text(body))
                if self.path.rstrip("/").endswith("/chat/completions"):
                    if body.get("stream"):
                        self._sse([json.dumps(e) for e in chat_events(body, text)], done=True)
                    else:
                        self._json(chat_payload(body, text))
                elif self.path.rstrip("/").endswith("/responses"):
                    if body.get("stream"):
                        self._sse([json.dumps(e) for e in responses_events(body, text)], done=False, named=True)
                    else:
                        self._json(responses_payload(body, text))
                else:
                    self._json({"error": {"message": f"no route {self.path}"}}, status=404)

            def _json(self, payload: dict[str, Any], status: int = 200) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _sse(self, events: list[str], *, done: bool, named: bool = False) -> None:
                lines = []
                for event in events:
                    name = f"event: {json.loads(event)['type']}\n" if named else ""
                    lines.append(f"{name}data: {event}\n\n")
                if done:
                    lines.append("data: [DONE]\n\n")
                data = "".join(lines).encode()
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="stub-llm", daemon=True)

    def __enter__(self) -> StubLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
