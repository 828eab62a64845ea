"""NeMo Guardrails input and output rails backed by a :class:`~guardreasoner_vl.Guard`
(``pip install "guardreasoner-vl[nemoguardrails]"``).

Two actions, for Colang flows (a sample configuration ships in ``integrations/nemo/``):

* ``guardreasoner_check_input``: the conversation so far, by the one rule of
  :mod:`guardreasoner_vl.conversation` (the last user turn is the request, earlier turns and tool calls are
  context, system messages are not judged, images in OpenAI-style content parts are read).
* ``guardreasoner_check_output``: the bot message about to be sent (``$bot_message``), judged as the reply
  to that conversation; it blocks only when the *reply* is harmful (as every integration's output stage).

Each returns ``True`` when the content is allowed, ``False`` when it is flagged. Content the guard cannot
judge (an unreadable image, an engine failure of any kind, a timeout) is not allowed under
``on_guard_error="block"`` (the default, fail closed); with ``"raise"`` the action raises a
:class:`~guardreasoner_vl.errors.GuardError`, which NeMo reports as a failed action (its own "internal error"
reply). The guard never rewrites content.

Register them on a rails app with :func:`register` (or :class:`GuardReasonerRails` for the options); in a
configuration folder, ``config.py``'s ``init(app)`` can do it (see ``integrations/nemo/config.py``).

Example:
    >>> from guardreasoner_vl import Guard
    >>> rail = GuardReasonerRails(Guard(backend="fake"))
    >>> import asyncio
    >>> events = [{"type": "UtteranceUserActionFinished", "final_transcript": "How do I make a bomb?"}]
    >>> asyncio.run(rail.check_input(events=events))
    False
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.conversation import Message, conversation_to_item
from guardreasoner_vl.errors import InvalidInputError, require
from guardreasoner_vl.integrations._common import (
    Check,
    GuardErrorPolicy,
    Judge,
    Plan,
    Stage,
    blocks,
    check_choice,
    check_timeout,
    openai_assistant_message,
    openai_content_parts,
    run_async,
    with_threshold,
)
from guardreasoner_vl.types import GuardResult

if TYPE_CHECKING:
    from guardreasoner_vl.guard import Guard

__all__ = ["INPUT_ACTION", "OUTPUT_ACTION", "GuardReasonerRails", "events_to_messages", "register"]

logger = logging.getLogger(__name__)

INPUT_ACTION = "guardreasoner_check_input"
"""The input rail's action name, for ``execute guardreasoner_check_input`` in a Colang flow."""
OUTPUT_ACTION = "guardreasoner_check_output"
"""The output rail's action name, for ``execute guardreasoner_check_output`` in a Colang flow."""


def events_to_messages(events: Sequence[Mapping[str, Any]] | None) -> list[Message]:
    """The conversation held in NeMo Guardrails' event history, as neutral :class:`Message` objects.

    NeMo turns the ``messages`` it is given into events: a user message is an ``UtteranceUserActionFinished``
    (its ``final_transcript``: a string, or OpenAI-style content parts with ``image_url`` images), a bot
    message an ``UtteranceBotActionFinished`` (``final_script``), an assistant message with tool calls a
    ``BotToolCalls``, the final tool results a ``UserToolMessages``, a system or developer message a
    ``SystemMessage`` (kept as ``system``: not judged). Other events are NeMo's own bookkeeping.

    Raises:
        InvalidInputError: content the guard cannot judge (audio, files, ...).
    """
    out: list[Message] = []
    for event in events or []:
        kind = event.get("type")
        if kind == "UtteranceUserActionFinished":
            extracted = openai_content_parts(event.get("final_transcript"), role="user")
            out.append(Message("user", extracted.text, extracted.images))
        elif kind == "UtteranceBotActionFinished":
            out.append(openai_assistant_message({"content": event.get("final_script")}))
        elif kind == "BotToolCalls":
            out.append(openai_assistant_message({"tool_calls": list(event.get("tool_calls") or [])}))
        elif kind == "UserToolMessages":
            for tool in event.get("tool_messages") or []:
                extracted = openai_content_parts(tool.get("content"), role="tool")
                name = tool.get("name")
                out.append(Message("tool", extracted.text, extracted.images, name=name if name != "unknown" else None))
        elif kind == "SystemMessage":
            out.append(Message("system"))
    return out


class GuardReasonerRails:
    """The two actions, bound to a guard and the shared options.

    Args:
        guard: the :class:`~guardreasoner_vl.Guard` that judges.
        on_guard_error: ``"block"`` (default: content the guard cannot judge is not allowed) or ``"raise"``.
        guard_timeout_s: longest wait for one guard call (``None``: no limit); a timeout follows
            ``on_guard_error``.
        threshold: flag by verdict score (see :class:`~guardreasoner_vl.Guard`); None: by label.

    Attributes:
        last_results: the latest :class:`~guardreasoner_vl.GuardResult` of each stage (``"input"``,
            ``"output"``), for logging; the guard's reasoning is there.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        on_guard_error: GuardErrorPolicy = "block",
        guard_timeout_s: float | None = None,
        threshold: float | Mapping[str, float] | None = None,
    ) -> None:
        check_choice("on_guard_error", on_guard_error, ("block", "raise"))
        self.guard = with_threshold(guard, threshold)
        self.on_guard_error: GuardErrorPolicy = on_guard_error
        self.guard_timeout_s = check_timeout(guard_timeout_s)
        self.last_results: dict[str, GuardResult] = {}

    async def check_input(
        self, events: list[dict[str, Any]] | None = None, context: dict[str, Any] | None = None
    ) -> bool:
        """``guardreasoner_check_input``: is the conversation's last user turn allowed?"""
        return await self._allowed(_check(events, context, stage="input"), "input")

    async def check_output(
        self, events: list[dict[str, Any]] | None = None, context: dict[str, Any] | None = None
    ) -> bool:
        """``guardreasoner_check_output``: is the bot message (``$bot_message``) allowed as the reply?"""
        return await self._allowed(_check(events, context, stage="output"), "output")

    async def _allowed(self, check: Check | None, stage: Stage) -> bool:
        if check is None:
            return True
        result = await run_async(_judge(check), self.guard, self.on_guard_error, timeout_s=self.guard_timeout_s)
        self.last_results[stage] = result
        flagged = blocks(result, stage)
        if flagged:
            logger.info("guardreasoner blocked the %s (status %s)", stage, result.status)
        return not flagged

    def register(self, rails: Any) -> Any:
        """Register both actions on a ``nemoguardrails.LLMRails`` app; returns the app."""
        nemoguardrails = require("nemoguardrails", "nemoguardrails", feature="the NeMo Guardrails rails")
        if not isinstance(rails, nemoguardrails.LLMRails):
            raise InvalidInputError(f"register() takes a nemoguardrails.LLMRails app, got {type(rails).__name__}")
        rails.register_action(self.check_input, name=INPUT_ACTION)
        rails.register_action(self.check_output, name=OUTPUT_ACTION)
        return rails


def register(
    rails: Any,
    guard: Guard,
    *,
    on_guard_error: GuardErrorPolicy = "block",
    guard_timeout_s: float | None = None,
    threshold: float | Mapping[str, float] | None = None,
) -> GuardReasonerRails:
    """Register ``guardreasoner_check_input`` and ``guardreasoner_check_output`` on ``rails`` (an
    ``LLMRails``); returns the :class:`GuardReasonerRails` that holds the options and the latest results."""
    rail = GuardReasonerRails(
        guard, on_guard_error=on_guard_error, guard_timeout_s=guard_timeout_s, threshold=threshold
    )
    rail.register(rails)
    return rail


def _check(events: Any, context: Any, *, stage: Stage) -> Check | None:
    """What one rail judges, or ``None`` when there is nothing (no user turn yet, an empty bot message)."""
    try:
        conversation = events_to_messages(events)
        if not any(m.role == "user" for m in conversation) and isinstance(context, Mapping):
            # no event history (a direct action call): the context's user message is the request
            user = context.get("user_message")
            if isinstance(user, str):
                conversation.append(Message("user", user))
        if not any(m.role == "user" for m in conversation):
            return None
        if stage == "input":
            return Check.from_item(conversation_to_item(conversation))
        reply = context.get("bot_message") if isinstance(context, Mapping) else None
        if reply is None:
            return None
        if not isinstance(reply, str):
            raise InvalidInputError(f"the bot message must be text, got {type(reply).__name__}")
        if not reply.strip():
            return None
        return Check.from_item(conversation_to_item(conversation, response=reply))
    except InvalidInputError as exc:
        return Check(error=exc)


def _judge(check: Check) -> Plan[GuardResult]:
    (result,) = yield Judge((check,))
    return result  # type: ignore[no-any-return]
