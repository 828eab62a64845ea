"""LiteLLM loads a custom guardrail from a Python file beside its config (``guardrail: <file>.<class>``):
this file makes ``guardreasoner_guardrail.GuardReasonerGuardrail`` point at the class the package ships."""

from guardreasoner_vl.integrations.litellm import GuardReasonerGuardrail

__all__ = ["GuardReasonerGuardrail"]
