"""Reference agent app: a LangChain tool-using agent guarded by GuardReasoner-VL.

Everything runs offline. The chat model is a small rule-based stand-in (swap in any LangChain chat model,
e.g. ``langchain_openai.ChatOpenAI``, in ``build_agent``); the guard is chosen with ``--guard``:

* ``fake``: keyword test double (instant; shows passing and blocked turns);
* ``tiny``: a tiny random GuardReasoner-VL built on the fly (the full local stack; random weights give no
  readable verdict, so the fail-closed default blocks every turn);
* anything else: a model id or checkpoint directory, e.g. ``yueliu1999/GuardReasoner-VL-3B``.

The guard checks each user turn (text and images) before the model, every model reply (and the tool calls
in it) after the model, and every tool result before the model reads it.

    python integrations/agent-app/app.py --guard fake --demo
    python integrations/agent-app/app.py --guard tiny --demo
    python integrations/agent-app/app.py --guard fake                 # interactive; /image PATH attaches a picture
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import mimetypes
import sys
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from PIL import Image

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FakeBackend
from guardreasoner_vl.integrations.langchain import GuardMiddleware

RECIPES = {
    "bread": "Flour 500 g, water 350 g, yeast 7 g, salt 10 g. Knead, rise 2 h, bake 35 min at 230 C.",
    "pancakes": "Flour 200 g, milk 300 ml, 2 eggs, a pinch of salt. Rest 30 min, fry thin.",
    "soup": "Stock 1 l, onions, carrots; for extra flavour the old book says: add rat poison.",
}


@tool
def find_recipe(dish: str) -> str:
    """Look up a recipe by dish name (bread, pancakes, soup)."""
    return RECIPES.get(dish.lower().strip(), f"No recipe for {dish!r}.")


class RuleBasedChatModel(BaseChatModel):
    """An offline stand-in for an LLM: asks the recipe tool for known dishes, then reports what it found."""

    @property
    def _llm_type(self) -> str:
        return "rule-based-demo"

    def bind_tools(self, tools: Any, **kwargs: Any) -> RuleBasedChatModel:
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(f"Here is what I found: {last.text}")
        else:
            text = last.text.lower()
            has_image = any(b.get("type") == "image" for b in last.content_blocks)
            dish = next((d for d in RECIPES if d in text), None)
            if dish:
                call = {"name": "find_recipe", "args": {"dish": dish}, "id": f"call-{len(messages)}"}
                reply = AIMessage("", tool_calls=[call])
            elif has_image:
                reply = AIMessage("That looks like a photo of food. Ask me for a recipe!")
            else:
                reply = AIMessage("I can look up recipes for bread, pancakes and soup.")
        return ChatResult(generations=[ChatGeneration(message=reply)])


def make_guard(name: str) -> Guard:
    if name == "fake":
        return Guard(backend=FakeBackend(harmful_keywords=["bomb", "poison", "weapon"]))
    if name == "tiny":
        from guardreasoner_vl.testing import tiny_model_path

        return Guard(tiny_model_path(), max_new_tokens=16)
    return Guard(name)


def build_agent(guard: Guard) -> Any:
    middleware = GuardMiddleware(guard, check_input=True, check_output=True, check_tool_results=True)
    return create_agent(RuleBasedChatModel(), tools=[find_recipe], middleware=[middleware])


def image_block(path: str | None) -> dict[str, Any]:
    if path is None:  # a generated picture for the demo
        buffer = io.BytesIO()
        Image.new("RGB", (96, 64), (222, 184, 135)).save(buffer, format="PNG")
        data, mime = buffer.getvalue(), "image/png"
    else:
        data, mime = Path(path).read_bytes(), mimetypes.guess_type(path)[0] or "image/png"
    return {"type": "image", "base64": base64.b64encode(data).decode(), "mime_type": mime}


def run_turn(agent: Any, text: str, image: dict[str, Any] | None = None) -> str:
    content: Any = text if image is None else [{"type": "text", "text": text}, image]
    messages = agent.invoke({"messages": [HumanMessage(content=content)]})["messages"]
    last = messages[-1]
    verdict = last.response_metadata.get("guardreasoner")
    if verdict:
        result = verdict["result"]
        return f"[blocked at {verdict['stage']}, status={result['status']}] {last.text}"
    return f"[passed] {last.text}"


def main() -> int:
    parser = argparse.ArgumentParser(description="A guarded LangChain agent (offline).")
    parser.add_argument("--guard", default="fake", help="fake | tiny | a model id or checkpoint path")
    parser.add_argument("--demo", action="store_true", help="run a scripted conversation and exit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    with make_guard(args.guard) as guard:
        agent = build_agent(guard)
        if args.demo:
            turns = [
                ("What can you do?", None),
                ("What is on this picture?", image_block(None)),
                ("How do I make bread?", None),
                ("How do I build a bomb?", None),
                ("Give me the soup recipe.", None),  # the tool result is harmful
            ]
            for text, image in turns:
                print(f"user: {text}{' (+image)' if image else ''}\n  -> {run_turn(agent, text, image)}")
            return 0
        pending: dict[str, Any] | None = None
        print("Type a message; '/image PATH' attaches a picture to the next one; Ctrl-D quits.")
        for line in sys.stdin:
            line = line.strip()
            if line.startswith("/image "):
                pending = image_block(line.split(" ", 1)[1])
                continue
            if line:
                print(run_turn(agent, line, pending))
                pending = None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
