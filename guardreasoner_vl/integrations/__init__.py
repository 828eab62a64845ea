"""Integrations with agent frameworks and chat APIs. Each lives in its own module and loads its framework
only when imported:

* :mod:`guardreasoner_vl.integrations.langchain` (``pip install "guardreasoner-vl[langchain]"``):
  ``GuardMiddleware`` for ``langchain.agents.create_agent``, ``GuardRunnable`` for LCEL pipelines.
* :mod:`guardreasoner_vl.integrations.openai` (``pip install "guardreasoner-vl[openai]"``):
  converters between OpenAI chat messages and guard inputs, ``GuardedOpenAI`` / ``GuardedAsyncOpenAI``
  client wrappers, and ``to_openai_moderation``.
* :mod:`guardreasoner_vl.integrations.litellm`: a guardrail for LiteLLM's proxy (Generic Guardrail API
  handler; ``litellm`` itself is not needed for it).

This package itself imports nothing heavy.
"""

__all__: list[str] = []
