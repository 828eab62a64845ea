"""LiteLLM's ``CustomGuardrail`` backed by a :class:`~guardreasoner_vl.Guard` (``pip install
"guardreasoner-vl[litellm]"``); import it as ``guardreasoner_vl.integrations.litellm.GuardReasonerGuardrail``.

This module imports ``litellm``, so it is loaded only when that name is asked for. The class implements
LiteLLM's unified ``apply_guardrail`` hook: the proxy reads every endpoint it serves (chat completions, the
Responses API, Anthropic messages, ...) into ``texts`` / ``images`` / ``structured_messages`` /
``tool_calls`` and calls it for ``pre_call``, ``during_call`` and ``post_call``. The judgement is the one of
the Generic Guardrail API handler (:func:`guardreasoner_vl.integrations.litellm.ahandle_guardrail_request`,
the same plan), with one addition only an in-process hook can make: at the response stage the reply is
judged in the context of the request's conversation (``messages``, or a Responses ``input`` and
``instructions``), which the proxy does not send to a Generic Guardrail API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.errors import require
from guardreasoner_vl.integrations._common import (
    GuardErrorPolicy,
    check_choice,
    check_timeout,
    run_async,
    with_threshold,
)

if TYPE_CHECKING:
    from guardreasoner_vl.guard import Guard

require("litellm", "litellm", feature="the LiteLLM CustomGuardrail")

from litellm.exceptions import GuardrailRaisedException  # noqa: E402
from litellm.integrations.custom_guardrail import CustomGuardrail  # noqa: E402
from litellm.types.guardrails import GuardrailEventHooks  # noqa: E402

__all__ = ["GuardReasonerGuardrail"]


class GuardReasonerGuardrail(CustomGuardrail):  # type: ignore[misc]
    """A LiteLLM ``CustomGuardrail`` that judges requests and replies with GuardReasoner(-VL).

    In a proxy ``config.yaml`` (LiteLLM loads ``guardrail: <file>.<class>`` from a Python file beside the
    config, so ship a one-line file that imports this class, as ``integrations/litellm/`` in this repository
    does):

    .. code-block:: yaml

        guardrails:
          - guardrail_name: guardreasoner
            litellm_params:
              guardrail: guardreasoner_guardrail.GuardReasonerGuardrail
              mode: [pre_call, post_call]        # or during_call (judged beside the LLM call)
              default_on: true
              guard_model: yueliu1999/GuardReasoner-VL-3B
              guard_backend: auto                 # or remote, with guard_options.backend_options.base_url
              guard_options: {max_new_tokens: 2048}
              on_guard_error: block

    A flagged request or reply raises LiteLLM's ``GuardrailRaisedException`` (the proxy answers HTTP 400 with
    the refusal as the error message); content the guard cannot judge is blocked as well
    (``on_guard_error="block"``, the default) or the guard's error is raised (``"raise"``, the proxy answers
    with an error too). It never rewrites content.

    Args:
        guard: the :class:`~guardreasoner_vl.Guard` to use; built from ``guard_model``, ``guard_backend`` and
            ``guard_options`` when not given (a proxy config can only give those).
        guard_model: model id or checkpoint for the guard (default: ``Guard``'s default model).
        guard_backend: the guard's engine name (``"auto"``, ``"transformers"``, ``"vllm"``, ``"remote"``,
            ``"fake"``, ...).
        guard_options: other :class:`~guardreasoner_vl.Guard` keyword arguments (``backend_options``,
            ``max_new_tokens``, ``batch_size``, ...).
        violation_message: the refusal text; ``{stage}`` becomes ``request`` or ``response``.
        on_guard_error: ``"block"`` (default, fail closed) or ``"raise"``.
        guard_timeout_s: longest wait for one guard call (``None``: no limit); a timeout follows
            ``on_guard_error``.
        threshold: flag by verdict score (see :class:`~guardreasoner_vl.Guard`); None: by label.
        **kwargs: LiteLLM's own guardrail settings (``guardrail_name``, ``event_hook``, ``default_on``, ...),
            passed to ``CustomGuardrail``.

    Example:
        >>> from guardreasoner_vl import Guard
        >>> from guardreasoner_vl.integrations.litellm import GuardReasonerGuardrail
        >>> rail = GuardReasonerGuardrail(Guard(backend="fake"), guardrail_name="guardreasoner",
        ...                               event_hook="pre_call", default_on=True)
        >>> import asyncio
        >>> inputs = {"texts": ["hello"], "structured_messages": [{"role": "user", "content": "hello"}]}
        >>> asyncio.run(rail.apply_guardrail(inputs, {}, "request")) == inputs
        True
    """

    #: One guard call per streamed reply, at its end (LiteLLM would otherwise judge every fifth chunk).
    streaming_end_of_stream_only = True

    def __init__(
        self,
        guard: Guard | None = None,
        *,
        guard_model: str | None = None,
        guard_backend: str = "auto",
        guard_options: Mapping[str, Any] | None = None,
        violation_message: str | None = None,
        on_guard_error: GuardErrorPolicy = "block",
        guard_timeout_s: float | None = None,
        threshold: float | Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        check_choice("on_guard_error", on_guard_error, ("block", "raise"))
        kwargs.setdefault(
            "supported_event_hooks",
            [GuardrailEventHooks.pre_call, GuardrailEventHooks.during_call, GuardrailEventHooks.post_call],
        )
        super().__init__(**kwargs)
        if guard is None:
            from guardreasoner_vl.guard import Guard
            from guardreasoner_vl.prompts import DEFAULT_MODEL

            guard = Guard(guard_model or DEFAULT_MODEL, backend=guard_backend, **dict(guard_options or {}))
        self.guard = with_threshold(guard, threshold)
        self.violation_message = violation_message
        self.on_guard_error: GuardErrorPolicy = on_guard_error
        self.guard_timeout_s = check_timeout(guard_timeout_s)

    async def apply_guardrail(
        self,
        inputs: Any,
        request_data: dict[str, Any],
        input_type: str,
        logging_obj: Any = None,
    ) -> Any:
        """Judge what LiteLLM extracted from a request (``input_type="request"``) or a reply (``"response"``).

        Returns:
            ``inputs`` unchanged when nothing is flagged.

        Raises:
            GuardrailRaisedException: the content is flagged (or could not be judged, under
                ``on_guard_error="block"``); the proxy answers HTTP 400 with the refusal.
        """
        from guardreasoner_vl.integrations.litellm import _answer, _plan, _request_context

        payload = {
            "texts": inputs.get("texts"),
            "images": inputs.get("images"),
            "structured_messages": inputs.get("structured_messages"),
            "tool_calls": inputs.get("tool_calls"),
            "input_type": input_type,
        }
        context = (lambda: _request_context(request_data)) if input_type == "response" else None
        outcome = await run_async(
            _plan(payload, context), self.guard, self.on_guard_error, timeout_s=self.guard_timeout_s
        )
        answer = _answer(outcome, self.violation_message)
        if answer["action"] == "BLOCKED":
            raise GuardrailRaisedException(
                guardrail_name=self.guardrail_name,
                message=answer["blocked_reason"],
                should_wrap_with_default_message=False,
            )
        return inputs
