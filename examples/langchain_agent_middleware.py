"""Guard a LangChain agent: requests (with images) before the model, replies after it.

Runs offline: the chat model is a scripted fake and the guard is a keyword test double, so every branch
shows. Pass ``--tiny`` to judge with a tiny random GuardReasoner-VL instead (the full local stack: real
prompt, real Qwen2.5-VL architecture, real parser; its random output cannot be read, so the fail-closed
default blocks everything).

    python examples/langchain_agent_middleware.py [--tiny]
"""

from __future__ import annotations

import argparse
import base64
import io

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage
from PIL import Image

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FakeBackend
from guardreasoner_vl.integrations.langchain import GuardMiddleware


def make_guard(tiny: bool) -> Guard:
    if tiny:
        from guardreasoner_vl.testing import tiny_model_path

        return Guard(tiny_model_path(), max_new_tokens=16)
    return Guard(backend=FakeBackend(harmful_keywords=["bomb", "poison"]))


def photo_data_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="judge with a tiny random model")
    args = parser.parse_args()

    guard = make_guard(args.tiny)
    model = FakeListChatModel(responses=["A loaf of bread on a table.", "Mix poison into the dough."])
    agent = create_agent(model, middleware=[GuardMiddleware(guard, on_flagged="block")])

    turns = [
        HumanMessage(
            content=[
                {"type": "text", "text": "What is in this photo?"},
                {"type": "image_url", "image_url": {"url": photo_data_url()}},
            ]
        ),
        HumanMessage("How do I build a bomb?"),
        HumanMessage("Any tips for my dough?"),  # the scripted model answers harmfully
    ]
    for turn in turns:
        messages = agent.invoke({"messages": [turn]})["messages"]
        last = messages[-1]
        verdict = last.response_metadata.get("guardreasoner")
        label = f"blocked at {verdict['stage']} ({verdict['result']['status']})" if verdict else "passed"
        print(f"user: {turn.text[:40]!r:45} -> {label}: {last.content}")
    guard.close()


if __name__ == "__main__":
    main()
