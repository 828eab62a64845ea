"""Integrations with agent frameworks and chat APIs. Each lives in its own module and loads its framework
only when imported:

* :mod:`guardreasoner_vl.integrations.langchain` (``pip install "guardreasoner-vl[langchain]"``):
  ``GuardMiddleware`` for ``langchain.agents.create_agent``, ``GuardRunnable`` for LCEL pipelines.
* :mod:`guardreasoner_vl.integrations.openai` (``pip install "guardreasoner-vl[openai]"``):
  converters between OpenAI chat messages and guard inputs, ``GuardedOpenAI`` / ``GuardedAsyncOpenAI``
  client wrappers (``chat.completions.create`` and ``responses.create``), and ``to_openai_moderation``.
* :mod:`guardreasoner_vl.integrations.litellm`: guardrails for LiteLLM's proxy: the Generic Guardrail API
  handler (``litellm`` itself is not needed for it) and ``GuardReasonerGuardrail``, a LiteLLM
  ``CustomGuardrail`` (``pip install "guardreasoner-vl[litellm]"``; importing that name imports litellm).
* :mod:`guardreasoner_vl.integrations.nemo`: NeMo Guardrails input and output rails
  (``guardreasoner_check_input`` / ``guardreasoner_check_output`` actions; ``nemoguardrails`` is needed only
  to register them on an ``LLMRails`` app).

This package itself imports nothing heavy.
"""

__all__: list[str] = []
