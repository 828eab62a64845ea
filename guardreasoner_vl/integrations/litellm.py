"""A guardrail for LiteLLM's proxy, through its Generic Guardrail API (``litellm`` itself is not needed).

LiteLLM's proxy calls ``POST /beta/litellm_basic_guardrail_api`` on a guardrail service with the text and
images it extracted from a call, and acts on the answer. This module implements that contract:

* request fields read: ``texts`` (list of strings), ``images`` (base64 data, ``data:`` URLs or ``http(s)``
  URLs), ``input_type`` (``"request"`` or ``"response"``), ``structured_messages`` (the conversation in
  OpenAI chat format, when LiteLLM sends it); other fields (``request_data``, ``tools``,
  ``litellm_call_id``, ``additional_provider_specific_params`` ...) are accepted and ignored;
* answer: ``{"action": "NONE"}`` or ``{"action": "BLOCKED", "blocked_reason": ...}``, plus our own field
  ``guardreasoner`` with the full result. The guard never rewrites text, so it never answers
  ``GUARDRAIL_INTERVENED``.

What is judged: for ``input_type="request"``, the conversation in ``structured_messages`` when present,
by the rule of :mod:`guardreasoner_vl.conversation` shared with every integration (last user turn as the
request, earlier turns and tool results as context, images merged), else all ``texts`` joined; for
``"response"``, the joined ``texts`` as the response, in the context of that conversation. Without that
context the response text is judged on its own, as a request (the only task the guard can run without the request).

:func:`create_app` serves it with FastAPI (``pip install "guardreasoner-vl[server]"``): the endpoint is a
router of the main moderation server, so ``guardreasoner-vl serve`` serves it too, behind the same API key
(``x-api-key`` as LiteLLM sends it, or ``Authorization: Bearer``), body limit, memory budget and batcher.
Configure LiteLLM with ``guardrail: generic_guardrail_api`` and ``api_base`` pointing at the server.
:func:`handle_guardrail_request` and :func:`ahandle_guardrail_request` are the framework-free handlers.

This follows LiteLLM's documented (beta) contract; it is tested against that contract offline, not against
a running LiteLLM proxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.conversation import Message, conversation_to_item
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


def _with_images(item: ModerationItem, images: list[str]) -> ModerationItem:
    if not images or item.image is not None:
        return item
    return item.model_copy(update={"image": images[0] if len(images) == 1 else images})


def _plan(payload: Mapping[str, Any]) -> Plan[tuple[Stage, Any]]:
    if not isinstance(payload, Mapping):
        raise InvalidInputError("the guardrail request must be a JSON object")
    stage: Stage = "output" if payload.get("input_type") == "response" else "input"
    try:
        images = _images(payload.get("images"))
        texts = _texts(payload.get("texts"))
        conversation = _conversation(payload.get("structured_messages"))
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
            stage = "input"  # no request to judge the response against: judge the text itself
            check = Check.of(Extracted(texts, tuple(images)))
    except InvalidInputError as exc:
        check = Check(error=exc)
    if check is None:
        return stage, None
    (result,) = yield Judge((check,))
    return stage, result


def _answer(outcome: tuple[Stage, Any], violation_message: str | None) -> dict[str, Any]:
    stage, result = outcome
    if result is None:
        return {"action": "NONE"}
    answer: dict[str, Any] = {"action": "NONE", "guardreasoner": result.model_dump(mode="json")}
    if blocks(result, stage):
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
