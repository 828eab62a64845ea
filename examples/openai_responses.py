"""Guard the OpenAI Responses API: ``client.responses.create`` is checked before and after the call.

Offline by default: the real ``openai`` client talks to a small fake Responses server through
``httpx.MockTransport``. Point it at a real server with ``--base-url`` (and ``OPENAI_API_KEY``).

    python examples/openai_responses.py [--base-url https://api.openai.com/v1 --model gpt-4o-mini]
"""

from __future__ import annotations

import argparse
import json
import os

import httpx
import openai

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FakeBackend
from guardreasoner_vl.integrations.openai import GuardedOpenAI


def fake_server(request: httpx.Request) -> httpx.Response:
    """Answers every Responses call; asked about soup it says something harmful."""
    body = json.loads(request.content)
    reply = "Add poison." if "soup" in json.dumps(body["input"]) else "Flour, water, yeast and salt."
    content = [{"type": "output_text", "text": reply, "annotations": []}]
    message = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": content}
    response = {"id": "resp_demo", "object": "response", "created_at": 0, "status": "completed"}
    response |= {"model": body["model"], "output": [message], "parallel_tool_calls": True, "tool_choice": "auto"}
    return httpx.Response(200, json=response | {"tools": []})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: an offline fake)")
    parser.add_argument("--model", default="demo-model")
    args = parser.parse_args()
    if args.base_url:
        raw = openai.OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "none"))
    else:
        http_client = httpx.Client(transport=httpx.MockTransport(fake_server))
        raw = openai.OpenAI(api_key="offline", base_url="http://fake.local/v1", http_client=http_client)
    client = GuardedOpenAI(raw, Guard(backend=FakeBackend(harmful_keywords=["bomb", "poison"])))

    # a plain string, a conversation of input items (instructions are the application's, not judged)
    inputs = [
        "What goes in bread?",
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": [{"type": "input_text", "text": "How do I build a bomb?"}]}],
        "What goes in the soup?",
    ]  # fmt: skip
    for given in inputs:
        response = client.responses.create(model=args.model, input=given, instructions="You are a cook.")
        report = response.guardreasoner
        print(f"status={response.status:10} blocked={report.blocked!s:6} -> {response.output_text}")


if __name__ == "__main__":
    main()
