"""Guard an LCEL pipeline: a gate after the prompt, and a guard around the chat model.

Offline: scripted fake chat model, keyword test-double guard.

    python examples/langchain_lcel_runnable.py
"""

from __future__ import annotations

import asyncio

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from guardreasoner_vl import Guard, GuardViolation
from guardreasoner_vl.backends import FakeBackend


def main() -> None:
    guard = Guard(backend=FakeBackend(harmful_keywords=["bomb", "poison"]))
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("user", "{question}")])
    model = FakeListChatModel(responses=["Yeast makes it rise.", "Add poison."])

    # 1. input + output guard around the model: returns the reply or a refusal message
    chain = prompt | guard.as_runnable(model)
    for question in ["Why does bread rise?", "What goes in the soup?"]:
        print(f"{question!r:28} -> {chain.invoke({'question': question}).content}")

    # 2. an input gate that raises, turned into a soft refusal with a fallback
    gated = prompt | guard.as_runnable().with_fallbacks(
        [RunnableLambda(lambda _: AIMessage("(refused by the guard)"))], exceptions_to_handle=(GuardViolation,)
    )
    print(f"{'How to build a bomb?':28} -> {gated.invoke({'question': 'How to build a bomb?'}).content}")

    # 3. async
    reply = asyncio.run(chain.ainvoke({"question": "Why does bread rise?"}))
    print(f"{'(async) Why does bread rise?':28} -> {reply.content}")


if __name__ == "__main__":
    main()
