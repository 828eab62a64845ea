"""Guardrails for LiteLLM's proxy: its Generic Guardrail API, and a ``CustomGuardrail`` class.

Two ways to put the guard in a LiteLLM proxy, with one judgement (the same plan):

* **Generic Guardrail API** (``litellm`` not needed here): the proxy posts what it extracted from a call to
  ``POST /beta/litellm_basic_guardrail_api`` on a guard server and acts on the answer. Request fields read:
  ``texts`` (list of strings), ``images`` (base64 data, ``data:`` URLs or ``http(s)`` URLs), ``input_type``
  (``"request"`` or ``"response"``), ``structured_messages`` (the conversation in OpenAI chat format, which
  LiteLLM sends with requests), ``tool_calls`` (the tool calls of a reply); other fields (``request_data``,
  ``request_headers``, ``tools``, ``litellm_call_id``, ``additional_provider_specific_params`` ...) are
  accepted and ignored. Answer: ``{"action": "NONE"}`` or ``{"action": "BLOCKED", "blocked_reason": ...}``,
  plus our own field ``guardreasoner`` with the full result; never ``GUARDRAIL_INTERVENED`` (the guard does
  not rewrite text). :func:`create_app` serves it with FastAPI (``pip install "guardreasoner-vl[server]"``):
  the endpoint is a router of the main moderation server, so ``guardreasoner-vl serve`` serves it too,
  behind the same API key (``x-api-key``, which is how LiteLLM sends the guardrail's ``api_key``, or
  ``Authorization: Bearer``), body limit, memory budget and batcher. :func:`handle_guardrail_request` and
  :func:`ahandle_guardrail_request` are the framework-free handlers.
* **``GuardReasonerGuardrail``** (``pip install "guardreasoner-vl[litellm]"``): a LiteLLM ``CustomGuardrail``
  that the proxy loads from its config and runs in its own process (``pre_call``, ``during_call``,
  ``post_call``); see :class:`guardreasoner_vl.integrations._litellm_custom.GuardReasonerGuardrail`. Importing
  that name imports ``litellm``; nothing else in this module does.

What is judged: for ``input_type="request"``, the conversation in ``structured_messages`` when present, by
the rule of :mod:`guardreasoner_vl.conversation` shared with every integration (last user turn as the
request, earlier turns and tool results as context, images merged), else all ``texts`` joined; for
``"response"``, the joined ``texts`` and one ``[tool call] name(arguments)`` line per tool call, as the reply
in the context of that conversation. LiteLLM does not send the conversation with a response to a Generic
Guardrail API, so there the reply is judged on its own, as a request (the only task the guard can run
without the request); ``GuardReasonerGuardrail`` reads it from the proxied request and judges the reply in
context.

Tested against a real LiteLLM proxy (``tests/integrations/test_litellm_proxy.py``; the version is in
``integrations/tested-versions.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.conversation import Message, conversation_to_item, render_tool_calls
from guardreasoner_vl.errors import InvalidInputError, require
from guardreasoner_vl.integrations._common import (
    Check,
    Extracted,
    GuardErrorPolicy,
    Judge,
    Plan,
    Stage,
    blocks,
    check_timeout,
    format_violation,
    image_from_base64,
    image_from_url,
    openai_messages,
    responses_input_messages,
    run_async,
    run_sync,
)
from guardreasoner_vl.types import ModerationItem

if TYPE_CHECKING:
    from guardreasoner_vl.guard import Guard

__all__ = ["GUARDRAIL_PATH", "ahandle_guardrail_request", "create_app", "handle_guardrail_request"]

GUARDRAIL_PATH = "/beta/litellm_basic_guardrail_api"
"""The path LiteLLM's Generic Guardrail API posts to."""


def _images(values: Any) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, list):
        raise InvalidInputError("'images' must be a list of strings")
    out = []
    for value in values:
        if isinstance(value, str) and value[:16].lower().startswith(("data:", "http://", "https://")):
            out.append(image_from_url(value))
        else:
            out.append(image_from_base64(value))
    return out


def _texts(values: Any) -> str | None:
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidInputError("'texts' must be a list of strings")
    text = "\n".join(v for v in values if v.strip())
    return text or None


def _conversation(messages: Any) -> list[Message] | None:
    """``structured_messages`` as neutral messages; ``None`` when absent or holding no user/model content."""
    if messages is None:
        return None
    conversation = openai_messages(messages)
    return None if all(m.role == "system" for m in conversation) else conversation


def _request_context(request_data: Any) -> list[Message] | None:
    """The conversation of a proxied request, for judging its reply in context: chat ``messages``, or a
    Responses ``input`` and ``instructions`` (``None`` when there is none, or only instructions)."""
    if not isinstance(request_data, Mapping):
        return None
    if request_data.get("messages") is not None:
        conversation = openai_messages(request_data["messages"])
    elif request_data.get("input") is not None:
        conversation = responses_input_messages(request_data["input"], request_data.get("instructions"))
    else:
        return None
    return None if all(m.role == "system" for m in conversation) else conversation


def _with_images(item: ModerationItem, images: list[str]) -> ModerationItem:
    if not images or item.image is not None:
        return item
    return item.model_copy(update={"image": images[0] if len(images) == 1 else images})


def _reply_tool_calls(values: Any) -> tuple[str, ...]:
    """The ``tool_calls`` LiteLLM extracted from a reply (OpenAI ``{"function": {"name", "arguments"}}`` or
    flat ``{"name", "arguments"}`` objects) as ``[tool call] name(arguments)`` lines."""
    if values is None:
        return ()
    if not isinstance(values, list):
        raise InvalidInputError("'tool_calls' must be a list of tool calls")
    calls = []
    for value in values:
        if not isinstance(value, Mapping):
            raise InvalidInputError("each tool call must be a JSON object")
        function = value.get("function")
        calls.append(function if isinstance(function, Mapping) else value)
    return render_tool_calls(calls)


def _reply_text(texts: str | None, tool_calls: tuple[str, ...]) -> str | None:
    lines = ([texts] if texts else []) + list(tool_calls)
    return "\n".join(lines) if lines else None


def _plan(
    payload: Mapping[str, Any], context: Callable[[], list[Message] | None] | None = None
) -> Plan[tuple[Stage, Stage, Any]]:
    """The one judgement of a guardrail call; ``context`` is the conversation of the request when the caller
    knows it and the payload does not carry it (LiteLLM's ``CustomGuardrail`` at the response stage)."""
    if not isinstance(payload, Mapping):
        raise InvalidInputError("the guardrail request must be a JSON object")
    stage: Stage = "output" if payload.get("input_type") == "response" else "input"
    rule: Stage = stage  # which blocking rule applies (``blocks``); ``stage`` names what was judged
    try:
        images = _images(payload.get("images"))
        texts = _texts(payload.get("texts"))
        if stage == "output":
            texts = _reply_text(texts, _reply_tool_calls(payload.get("tool_calls")))
        conversation = _conversation(payload.get("structured_messages"))
        if conversation is None and context is not None:
            conversation = context()
        if stage == "input":
            if conversation is not None:
                check: Check | None = Check.from_item(_with_images(conversation_to_item(conversation), images))
            else:
                request = Extracted(texts, tuple(images))
                check = None if request.empty else Check.of(request)
        elif texts is None:
            check = None
        elif conversation is not None:
            check = Check.from_item(conversation_to_item(conversation, response=texts))
        else:
            rule = "input"  # no request to judge the response against: judge the text itself, flagged or not
            check = Check.of(Extracted(texts, tuple(images)))
    except InvalidInputError as exc:
        check = Check(error=exc)
    if check is None:
        return stage, rule, None
    (result,) = yield Judge((check,))
    return stage, rule, result


def _answer(outcome: tuple[Stage, Stage, Any], violation_message: str | None) -> dict[str, Any]:
    stage, rule, result = outcome
    if result is None:
        return {"action": "NONE"}
    answer: dict[str, Any] = {"action": "NONE", "guardreasoner": result.model_dump(mode="json")}
    if blocks(result, rule):
        reason = format_violation(violation_message, stage)
        if not result.judged:
            reason += f" (could not judge: {result.status})"
        answer.update(action="BLOCKED", blocked_reason=reason)
    return answer


def handle_guardrail_request(
    guard: Guard,
    payload: Mapping[str, Any],
    *,
    violation_message: str | None = None,
    on_guard_error: GuardErrorPolicy = "block",
    guard_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Answer one Generic Guardrail API call.

    ``on_guard_error`` and ``guard_timeout_s`` mean what they mean in every integration: content the guard
    cannot judge (any engine failure, a timeout) is answered ``BLOCKED`` (``"block"``) or raises.

    Example:
        >>> from guardreasoner_vl import Guard
        >>> guard = Guard(backend="fake")
        >>> handle_guardrail_request(guard, {"texts": ["how to make a bomb"], "input_type": "request"})["action"]
        'BLOCKED'
        >>> handle_guardrail_request(guard, {"texts": ["hello"], "input_type": "request"})["action"]
        'NONE'
    """
    timeout = check_timeout(guard_timeout_s)
    return _answer(run_sync(_plan(payload), guard, on_guard_error, timeout_s=timeout), violation_message)


async def ahandle_guardrail_request(
    guard: Guard,
    payload: Mapping[str, Any],
    *,
    violation_message: str | None = None,
    on_guard_error: GuardErrorPolicy = "block",
    guard_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Async :func:`handle_guardrail_request` (``Guard.amoderate_batch``)."""
    timeout = check_timeout(guard_timeout_s)
    return _answer(await run_async(_plan(payload), guard, on_guard_error, timeout_s=timeout), violation_message)


def __getattr__(name: str) -> Any:
    # ``GuardReasonerGuardrail`` subclasses LiteLLM's ``CustomGuardrail``, so it needs ``litellm``: it is
    # imported only when asked for, and everything else in this module works without litellm.
    if name == "GuardReasonerGuardrail":
        from guardreasoner_vl.integrations._litellm_custom import GuardReasonerGuardrail

        return GuardReasonerGuardrail
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_app(guard: Guard, *, api_key: str | None = None, violation_message: str | None = None) -> Any:
    """The moderation server (:func:`guardreasoner_vl.server.create_app`), which serves this endpoint too.

    ``POST /beta/litellm_basic_guardrail_api`` is a router of the main server app, so it shares the server's
    API key, body limit, memory budget and micro-batcher; ``/health``, ``/v1/moderations`` and the rest are
    served beside it. The guard is not closed when the app stops (it is the caller's).

    Args:
        guard: the guard.
        api_key: when set, requests must send ``x-api-key: <api_key>`` (what LiteLLM sends for the guardrail's
            ``api_key``) or ``Authorization: Bearer <api_key>``.
        violation_message: the ``blocked_reason`` text; ``{stage}`` becomes ``request`` or ``response``.
    """
    require("fastapi", "server", feature="the LiteLLM guardrail app")
    from guardreasoner_vl.server import ServerSettings
    from guardreasoner_vl.server import create_app as create_server_app

    settings = ServerSettings(api_key=api_key, violation_message=violation_message, close_guard=False)
    return create_server_app(guard, settings=settings)
