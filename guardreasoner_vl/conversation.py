"""What the guard judges when its input is a conversation: one rule, used by every integration.

The guard's models were trained on one exchange, ``"Human user:\\n{prompt}\\n\\nAI assistant:\\n{response}\\n"``.
Agents and chat APIs send whole conversations: earlier turns, system prompts, tool calls and tool results,
images anywhere. :func:`conversation_to_item` maps a conversation, given as neutral :class:`Message`
objects (each integration reads its framework's messages into them), to the one
:class:`~guardreasoner_vl.ModerationItem` the guard judges:

* **The request** is the last user turn: the last run of consecutive ``user`` messages (merged, text joined
  with newlines).
* **The response** is the last message when it is an ``assistant`` message after the request (its text,
  then one ``[tool call] name(arguments)`` line per tool call), or the ``response`` the caller passes.
  The response must be text: an assistant reply carrying images is refused.
* **Everything else that the model being guarded will read** goes inside ``{prompt}``, before or after the
  request, in this deterministic form (one line per message header, the message text below it):

  .. code-block:: text

      [Earlier conversation]
      User: first question
      Assistant: first answer
      Tool result (search): ...
      [Current request]
      the last user turn
      [Steps in this turn]
      Assistant: [tool call] search({"q": "x"})
      Tool result (search): ...

  With no earlier turns and no steps, ``{prompt}`` is the request text alone, exactly as in the single-turn
  case. An earlier message with images is written ``User: [image] ...``.
* **Content the model was not trained on:** tool results are judged as context text (``Tool result``);
  ``system`` and ``developer`` messages are the application's own instructions, not user or model content,
  and are not judged; images from every judged message are merged side by side (in order of appearance)
  with the request's, as the guard merges any list of images.
* Nothing is cut: a conversation longer than the guard's text limit is refused
  (:class:`~guardreasoner_vl.errors.InvalidInputError`), which every integration treats as flagged under
  its default ``on_guard_error="block"``.

Example:
    >>> from guardreasoner_vl.conversation import Message, conversation_to_item
    >>> item = conversation_to_item([Message("user", "hi"), Message("assistant", "hello"),
    ...                              Message("user", "and now?"), Message("assistant", "now this")])
    >>> print(item.text)
    [Earlier conversation]
    User: hi
    Assistant: hello
    [Current request]
    and now?
    >>> item.response
    'now this'
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.types import ModerationItem

__all__ = ["Message", "Role", "conversation_to_item", "render_tool_calls", "split_conversation"]

Role = Literal["system", "user", "assistant", "tool"]
"""The neutral roles: ``tool`` covers tool and (legacy) function results; ``system`` covers ``developer``."""

_ROLES = frozenset({"system", "user", "assistant", "tool"})
_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool result"}


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation, as the guard reads it (framework-neutral).

    Attributes:
        role: ``"system"``, ``"user"``, ``"assistant"`` or ``"tool"``.
        text: the text content (``None`` when there is none).
        images: images as ``data:`` / ``http(s)`` URL strings.
        tool_calls: for an assistant message, its tool calls rendered by :func:`render_tool_calls`.
        name: for a tool result, the tool's name (shown in the context line), if known.
    """

    role: Role
    text: str | None = None
    images: tuple[str, ...] = ()
    tool_calls: tuple[str, ...] = ()
    name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise InvalidInputError(f"message role must be one of {sorted(_ROLES)}, got {self.role!r}")

    @property
    def empty(self) -> bool:
        """No text, no images and no tool calls."""
        return not (self.text and self.text.strip()) and not self.images and not self.tool_calls

    def body(self) -> str | None:
        """Text then tool-call lines, as the guard reads this message (``None`` when empty)."""
        lines = [self.text] if self.text and self.text.strip() else []
        lines.extend(self.tool_calls)
        joined = "\n".join(lines)
        return joined if joined.strip() else None


def render_tool_calls(calls: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """One line per tool call, ``[tool call] name(arguments)``, so the guard judges what the model wants to do.

    Each call is a mapping with ``name`` and ``args`` or ``arguments`` (a JSON string or an object).
    """
    lines = []
    for call in calls:
        name = call.get("name") or ""
        args = call.get("args", call.get("arguments", ""))
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False, sort_keys=True, default=str)
        lines.append(f"[tool call] {name}({args})")
    return tuple(lines)


@dataclass(frozen=True, slots=True)
class _Split:
    before: tuple[Message, ...]
    request: tuple[Message, ...]
    steps: tuple[Message, ...]
    response: Message | None


def split_conversation(messages: Sequence[Message]) -> tuple[int, int, int | None]:
    """Where the request and response are: ``(first, last)`` indexes of the request turn, and the response's.

    Raises:
        InvalidInputError: the conversation has no user message.
    """
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None)
    if last is None:
        raise InvalidInputError("the conversation has no user message to judge")
    first = last
    while first > 0 and messages[first - 1].role == "user":
        first -= 1
    tail = len(messages) - 1
    response = tail if tail > last and messages[tail].role == "assistant" else None
    return first, last, response


def _split(messages: Sequence[Message]) -> _Split:
    judged = [m for m in messages if m.role != "system"]
    first, last, response = split_conversation(judged)
    end = response if response is not None else len(judged)
    return _Split(
        before=tuple(judged[:first]),
        request=tuple(judged[first : last + 1]),
        steps=tuple(judged[last + 1 : end]),
        response=judged[response] if response is not None else None,
    )


def _context_lines(messages: Iterable[Message]) -> list[str]:
    lines = []
    for message in messages:
        if message.empty:
            continue
        label = _LABELS[message.role]
        if message.role == "tool" and message.name:
            label += f" ({message.name})"
        body = message.body() or ""
        marker = "[image] " * len(message.images)
        lines.append(f"{label}: {marker}{body}".rstrip())
    return lines


def conversation_to_item(messages: Sequence[Message], *, response: str | None = None) -> ModerationItem:
    """The guard input for a conversation; see the module docs for the rule.

    Args:
        messages: the conversation, oldest first.
        response: the reply to judge; by default the last message when it is an assistant message after the
            request. When given, a trailing assistant message is treated as a step of the turn instead.

    Returns:
        A :class:`~guardreasoner_vl.ModerationItem`: ``text`` (request, with context when there is any),
        ``image`` (one URL, a list merged by the guard, or ``None``), ``response``.

    Raises:
        InvalidInputError: no user message, an empty conversation (no text and no image to judge), or an
            assistant reply with images.
    """
    parts = _split(messages)
    steps = parts.steps
    reply = response
    if reply is None and parts.response is not None:
        if parts.response.images:
            raise InvalidInputError("the guard judges text responses; this assistant message contains images")
        reply = parts.response.body()
    elif parts.response is not None:
        steps = (*steps, parts.response)
    request_texts = [m.text for m in parts.request if m.text and m.text.strip()]
    request_text = "\n".join(request_texts) if request_texts else None
    images = [image for m in (*parts.before, *parts.request, *steps) for image in m.images]
    earlier, later = _context_lines(parts.before), _context_lines(steps)
    request_images = sum(len(m.images) for m in parts.request)
    if request_text is None and not request_images and not (earlier or later):
        raise InvalidInputError("the last user turn has neither text nor images")
    if earlier or later:
        blocks = ["[Earlier conversation]", *earlier] if earlier else []
        if request_text is None:
            blocks.append("[Current request: image only]" if request_images else "[Current request: empty]")
        else:
            blocks.extend(["[Current request, with image]" if request_images else "[Current request]", request_text])
        if later:
            blocks.extend(["[Steps in this turn]", *later])
        text: str | None = "\n".join(blocks)
    else:
        text = request_text
    image: Any = None if not images else images[0] if len(images) == 1 else images
    return ModerationItem(text=text, image=image, response=reply)
