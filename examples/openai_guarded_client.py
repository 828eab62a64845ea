"""Guard OpenAI chat completions: wrap the client, call it as usual.

Offline by default: the real ``openai`` client talks to a small fake chat server through
``httpx.MockTransport``. Point it at a real OpenAI-compatible server with ``--base-url`` (and
``OPENAI_API_KEY``) to guard real traffic.

    python examples/openai_guarded_client.py [--base-url http://localhost:8000/v1 --model my-model]
"""

from __future__ import annotations

import argparse
import json
import os

import httpx
import openai

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FakeBackend
from guardreasoner_vl.integrations.openai import ChatCompletionBlocked, GuardedOpenAI


def fake_server(request: httpx.Request) -> httpx.Response:
    """Answers every chat completion; asked about soup it says something harmful."""
    body = json.loads(request.content)
    reply = "Add poison." if "soup" in json.dumps(body["messages"]) else "Flour, water, yeast and salt."
    if body.get("stream"):  # server-sent events, one word per chunk
        chunks = [{"index": 0, "delta": {"role": "assistant", "content": word + " "}} for word in reply.split()]
        chunks.append({"index": 0, "delta": {}, "finish_reason": "stop"})
        events = [
            {
                "id": "chatcmpl-demo",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
            }
            for choice in chunks
        ]
        sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-demo",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: an offline fake)")
    parser.add_argument("--model", default="demo-chat")
    args = parser.parse_args()
    if args.base_url:
        raw = openai.OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "none"))
    else:
        raw = openai.OpenAI(
            api_key="offline",
            base_url="http://fake.local/v1",
            http_client=httpx.Client(transport=httpx.MockTransport(fake_server)),
        )
    guard = Guard(backend=FakeBackend(harmful_keywords=["bomb", "poison"]))

    strict = GuardedOpenAI(raw, guard, on_flagged="raise")  # raises ChatCompletionBlocked
    polite = GuardedOpenAI(raw, guard)  # on_flagged="block" (default): returns a content_filter completion

    for question in ["What goes in bread?", "How do I build a bomb?", "What goes in the soup?"]:
        messages = [{"role": "user", "content": question}]
        try:
            completion = strict.chat.completions.create(model=args.model, messages=messages)
            print(f"{question!r:28} -> {completion.choices[0].message.content}")
        except ChatCompletionBlocked as blocked:
            print(f"{question!r:28} -> blocked at {blocked.stage}")
        completion = polite.chat.completions.create(model=args.model, messages=messages)
        choice = completion.choices[0]
        print(f"{'':28}    refuse mode: [{choice.finish_reason}] {choice.message.content}")
        print(f"{'':28}    report: blocked={completion.guardreasoner.blocked}")

    # a stream is read to the end, judged, then released chunk by chunk
    for question in ["What goes in bread?", "What goes in the soup?"]:
        messages = [{"role": "user", "content": question}]
        stream = polite.chat.completions.create(model=args.model, messages=messages, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        print(f"{question!r:28} -> streamed: {text.strip()}")


if __name__ == "__main__":
    main()
