"""A recording OpenAI-compatible stub for the fleet tests, run as its own process so a test can ``kill -9`` it.

``python fleet_server.py PORT DELAY_S`` serves on 127.0.0.1:PORT: ``POST /v1/chat/completions`` answers after
``DELAY_S`` with the VL verdict format (request harmful when the text holds "bomb") and the user text echoed
in the reasoning, so a test can tell which request each result answers; ``GET /v1/models`` is the health
probe; ``GET /stats`` says how many completions this process answered. Prints ``ready`` once it listens.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from guardreasoner_vl.backends.fake import verdict_output
from guardreasoner_vl.prompts import ModelFamily


def make_app(delay_s: float) -> Any:
    app = FastAPI()
    served: list[str] = []

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "stub", "object": "model"}]}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {"served": len(served)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        user = body["messages"][-1]["content"]
        text = user if isinstance(user, str) else "".join(p.get("text", "") for p in user if p.get("type") == "text")
        await asyncio.sleep(delay_s)
        answer = verdict_output(ModelFamily.VL, request_harmful="bomb" in text, reasoning=f"echo {text!r}")
        served.append(text)
        choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        return JSONResponse({"id": "x", "object": "chat.completion", "choices": [choice], "usage": usage})

    return app


if __name__ == "__main__":
    from guardreasoner_vl.server.runner import serve_in_thread

    port, delay = int(sys.argv[1]), float(sys.argv[2])
    with serve_in_thread(make_app(delay), port=port):
        print("ready", flush=True)
        threading.Event().wait()
