"""Serve the guard to LiteLLM's proxy through its Generic Guardrail API.

Offline: the FastAPI app is exercised with an in-process HTTP client, sending the JSON that LiteLLM's
proxy sends. To use it for real, run the app with uvicorn and add to LiteLLM's ``config.yaml``::

    guardrails:
      - guardrail_name: guardreasoner
        litellm_params:
          guardrail: generic_guardrail_api
          mode: [pre_call, post_call]
          api_base: http://localhost:8080

    python examples/litellm_guardrail.py
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FakeBackend
from guardreasoner_vl.integrations.litellm import GUARDRAIL_PATH, create_app


def main() -> None:
    guard = Guard(backend=FakeBackend(harmful_keywords=["bomb", "poison"]))
    app = create_app(guard)  # uvicorn.run(app, port=8080) to serve it
    calls = [
        {"texts": ["What goes in bread?"], "input_type": "request"},
        {"texts": ["How do I build a bomb?"], "input_type": "request"},
        {
            "texts": ["Add poison."],
            "input_type": "response",
            "structured_messages": [{"role": "user", "content": "What goes in the soup?"}],
        },
    ]
    with TestClient(app) as client:
        for body in calls:
            answer = client.post(GUARDRAIL_PATH, json=body).json()
            reason = answer.get("blocked_reason", "")
            print(f"{body['input_type']:8} {body['texts'][0]!r:28} -> {answer['action']} {reason}")


if __name__ == "__main__":
    main()
