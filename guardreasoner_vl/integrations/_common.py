"""What the integrations share: content parsing, guard calls with one error policy, and a sync/async driver.

Nothing here imports a framework. The integrations write their logic once, as a *plan*: a generator that
yields effects (:class:`Judge` some inputs, :class:`Invoke` a runnable, :class:`Call` a function,
:class:`Drain` a stream) and receives their results. :func:`run_sync` and :func:`run_async` execute the
same plan with ``guard.moderate_batch`` / ``guard.amoderate_batch`` and plain / awaited calls, so the sync
and async paths cannot drift apart.

Images in message content are only ever taken from ``data:`` URLs, inline base64 or ``http(s)`` URLs (the
latter fetched only when the guard's :class:`~guardreasoner_vl.inputs.InputLimits` allow URLs). A string
that is neither is refused: text that arrives in a chat message must never make the guard read a local file.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from guardreasoner_vl.conversation import Message, render_tool_calls
from guardreasoner_vl.errors import BackendError, GuardClosedError, GuardError, InvalidInputError, ParseError
from guardreasoner_vl.types import GuardResult, ModerationItem, Verdict

if TYPE_CHECKING:
    from guardreasoner_vl.guard import Guard

__all__ = [
    "DEFAULT_VIOLATION_MESSAGE",
    "Call",
    "Check",
    "Drain",
    "Extracted",
    "GuardErrorPolicy",
    "Invoke",
    "Judge",
    "OnFlagged",
    "Stage",
    "blocks",
    "format_violation",
    "image_from_url",
    "openai_content_parts",
    "openai_messages",
    "render_tool_calls",
    "resolve_on_flagged",
    "responses_input_messages",
    "responses_output_message",
    "run_async",
    "run_sync",
]

logger = logging.getLogger("guardreasoner_vl.integrations")

Stage = Literal["input", "output", "tool"]
"""Where content was checked: the user's request, the model's reply, or a tool's result."""

GuardErrorPolicy = Literal["block", "raise"]
"""When the guard cannot judge (bad image, unsupported content, engine failure of any kind, a guard timeout,
``ParseError``): ``block`` treats the content as flagged (fail closed, the default), ``raise`` raises a
:class:`~guardreasoner_vl.errors.GuardError` (an engine's own exception arrives wrapped in
:class:`~guardreasoner_vl.errors.BackendError`, the original as ``__cause__``)."""

OnFlagged = Literal["block", "raise", "replace"]
"""What an integration does with flagged content, the same words everywhere (default ``"block"``):
``block`` stops it and answers with a refusal in the framework's own shape, ``raise`` raises
:class:`~guardreasoner_vl.errors.GuardViolation`, ``replace`` (agent middleware only) swaps the offending
message for the refusal and lets the run go on."""

_LEGACY_ON_FLAGGED: dict[str, OnFlagged] = {"end": "block", "refuse": "block", "error": "raise", "replace": "replace"}

DEFAULT_VIOLATION_MESSAGE = "I'm sorry, but I can't help with that. The {stage} was flagged by the safety guard."
"""Default refusal text; ``{stage}`` becomes ``request``, ``response`` or ``tool result``."""

_STAGE_NOUN: dict[str, str] = {"input": "request", "output": "response", "tool": "tool result"}

T = TypeVar("T")


# -- content ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Extracted:
    """Text and images pulled out of one message (images as ``data:`` / ``http(s)`` URL strings)."""

    text: str | None
    images: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self.text is None and not self.images

    @property
    def image(self) -> str | list[str] | None:
        """The images in the shape :meth:`Guard.moderate` takes (one, a list merged side by side, or None)."""
        if not self.images:
            return None
        return self.images[0] if len(self.images) == 1 else list(self.images)


def image_from_url(url: object) -> str:
    """Accept an image reference found in message content: a ``data:`` URL or an ``http(s)`` URL.

    Raises:
        InvalidInputError: anything else (a local path, another scheme, not a string).
    """
    if not isinstance(url, str) or not url:
        raise InvalidInputError(f"an image URL must be a non-empty string, got {type(url).__name__}")
    head = url[:16].lower()
    if head.startswith("data:") or head.startswith(("http://", "https://")):
        return url
    raise InvalidInputError(
        f"unsupported image URL {url[:40]!r}: message images must be data: URLs, inline base64 or http(s) URLs "
        "(local paths in message content are never read)"
    )


def image_from_base64(data: object, mime_type: object = None) -> str:
    """Wrap inline base64 image data in a ``data:`` URL (the guard decodes and sniffs the format)."""
    if not isinstance(data, str) or not data:
        raise InvalidInputError("an inline base64 image must be a non-empty string")
    mime = mime_type if isinstance(mime_type, str) and mime_type.startswith("image/") else "image/png"
    return f"data:{mime};base64,{data}"


def _image_url_value(value: object) -> object:
    """``image_url`` is ``{"url": ...}`` in chat completions and a bare string in some clients."""
    if isinstance(value, Mapping):
        return value.get("url")
    return value


def openai_content_parts(content: object, *, role: str = "user") -> Extracted:
    """Read OpenAI-style message content: a string, or a list of parts.

    Parts understood: ``text`` / ``input_text`` / ``output_text`` (text), ``refusal`` (text),
    ``image_url`` (``{"url": ...}`` or a string) / ``input_image`` (``image_url`` string). Text parts are
    joined with newlines. ``None`` or empty content gives an empty :class:`Extracted`.

    Raises:
        InvalidInputError: a part the guard cannot judge (audio, files, ...): never silently dropped.
    """
    if content is None:
        return Extracted(None)
    if isinstance(content, str):
        return Extracted(content if content.strip() else None)
    if isinstance(content, Mapping) or not isinstance(content, Iterable):
        raise InvalidInputError(
            f"{role} message content must be a string or a list of parts, got {type(content).__name__}"
        )
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        if hasattr(part, "model_dump"):
            part = part.model_dump(exclude_none=True)
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, Mapping):
            raise InvalidInputError(f"a content part must be a dict, got {type(part).__name__}")
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            texts.append(str(part.get("text") or ""))
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        elif kind in ("image_url", "input_image"):
            images.append(image_from_url(_image_url_value(part.get("image_url"))))
        else:
            raise InvalidInputError(
                f"content part of type {kind!r} in a {role} message cannot be judged by the guard; "
                "supported parts: text, image_url (data: or http(s) URLs)"
            )
    return _join(texts, images)


def _join(texts: Sequence[str], images: Sequence[str]) -> Extracted:
    text = "\n".join(t for t in texts if t)
    return Extracted(text if text.strip() else None, tuple(images))


def _content_message(role: str, content: object, name: object = None) -> Message:
    extracted = openai_content_parts(content, role=role)
    return Message(
        "tool" if role in ("tool", "function") else "user",
        extracted.text,
        extracted.images,
        name=name if isinstance(name, str) and name else None,
    )


def openai_assistant_message(message: Mapping[str, Any]) -> Message:
    """An OpenAI assistant message (or a completion's message) as a neutral :class:`Message`.

    Its text, its refusal, the transcript of an audio reply, and one line per tool / function call.

    Raises:
        InvalidInputError: audio with no transcript (the guard cannot judge audio), or unsupported parts.
    """
    extracted = openai_content_parts(message.get("content"), role="assistant")
    lines = [extracted.text] if extracted.text else []
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip() and refusal != extracted.text:
        lines.append(refusal)
    audio = message.get("audio")
    if audio is not None:
        audio = _as_mapping(audio)
        transcript = audio.get("transcript")
        if not isinstance(transcript, str) or not transcript.strip():
            raise InvalidInputError(
                "an assistant message carries audio without a transcript; the guard judges text, so it cannot "
                "judge this audio (ask for a transcript, or send the reply as text)"
            )
        lines.append(transcript)
    calls = []
    for call in message.get("tool_calls") or []:
        call = _as_mapping(call)
        function = _as_mapping(call.get("function") or {})
        calls.append({"name": function.get("name"), "arguments": function.get("arguments", "")})
    legacy = message.get("function_call")
    if legacy:
        legacy = _as_mapping(legacy)
        calls.append({"name": legacy.get("name"), "arguments": legacy.get("arguments", "")})
    text = "\n".join(lines)
    return Message("assistant", text if text.strip() else None, extracted.images, render_tool_calls(calls))


def _as_mapping(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if hasattr(value, "model_dump"):
        dumped: Mapping[str, Any] = value.model_dump(exclude_none=True)
        return dumped
    raise InvalidInputError(f"expected a JSON object or an openai object, got {type(value).__name__}")


def openai_messages(messages: Any) -> list[Message]:
    """Read OpenAI chat messages (dicts or ``openai`` objects) into neutral :class:`Message` objects.

    Roles: ``user``; ``assistant``; ``tool`` and legacy ``function`` results (judged as tool results);
    ``system`` and ``developer`` (the application's instructions: kept as ``system``, not judged).

    Raises:
        InvalidInputError: not a list of messages, a message without a role, an unknown role, or content the
            guard cannot judge.
    """
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
        raise InvalidInputError("messages must be a list of chat messages ({'role': ..., 'content': ...})")
    out: list[Message] = []
    for raw in messages:
        try:
            message = _as_mapping(raw)
        except InvalidInputError:
            raise InvalidInputError(
                f"a chat message must be a dict or an openai message object, got {type(raw).__name__}"
            ) from None
        role = message.get("role")
        if role is None:
            raise InvalidInputError(f"a chat message has no 'role': {dict(message)!r:.80}")
        if role in ("system", "developer"):
            out.append(Message("system"))
        elif role == "user":
            out.append(_content_message("user", message.get("content")))
        elif role == "assistant":
            out.append(openai_assistant_message(message))
        elif role in ("tool", "function"):
            out.append(_content_message(role, message.get("content"), message.get("name")))
        else:
            raise InvalidInputError(
                f"unknown chat message role {role!r}: allowed roles are system, developer, user, assistant, "
                "tool and function"
            )
    return out


# -- the OpenAI Responses API -------------------------------------------------------------------------------

_RESPONSES_ROLES = frozenset({"user", "assistant", "system", "developer"})
_RESPONSES_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


def _responses_parts(content: object, *, role: str) -> Extracted:
    """Responses content: a string or a list of ``input_text`` / ``output_text`` / ``refusal`` /
    ``input_image`` parts (an ``input_image`` given only as a ``file_id`` cannot be judged)."""
    if isinstance(content, (list, tuple)):
        parts = [_as_mapping(part) if not isinstance(part, str) else part for part in content]
        for part in parts:
            if isinstance(part, Mapping) and part.get("type") == "input_image" and not part.get("image_url"):
                raise InvalidInputError(
                    f"an input_image in a {role} message has no image_url (a file_id cannot be read by the guard); "
                    "send the image as a data: or http(s) URL"
                )
        content = parts
    return openai_content_parts(content, role=role)


def _tool_output_text(output: object) -> Extracted:
    """A ``function_call_output`` / ``custom_tool_call_output``: a string, or a list of content parts."""
    if output is None or isinstance(output, str):
        return Extracted(output if isinstance(output, str) and output.strip() else None)
    return _responses_parts(output, role="tool")


def responses_input_messages(input: Any, instructions: Any = None) -> list[Message]:
    """Read a Responses API ``input`` (and ``instructions``) into neutral :class:`Message` objects.

    The same rule as chat messages (:mod:`guardreasoner_vl.conversation`): ``instructions`` and
    ``system`` / ``developer`` messages are the application's instructions (kept as ``system``, not
    judged); ``message`` items (or bare ``{"role", "content"}`` items) with ``input_text``, ``output_text``,
    ``refusal`` and ``input_image`` parts are user or assistant turns; ``function_call`` and
    ``custom_tool_call`` items are the assistant's tool calls (``[tool call] name(arguments)``);
    ``function_call_output`` and ``custom_tool_call_output`` items are tool results (named after their call);
    ``reasoning`` items add their summary text to the assistant's turn.

    Raises:
        InvalidInputError: an item the guard cannot judge (audio, files, an ``item_reference`` to content
            stored on the server, other built-in tool calls such as ``computer_call``), or malformed input.

    Example:
        >>> [m.role for m in responses_input_messages(
        ...     [{"role": "user", "content": "weather?"},
        ...      {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
        ...      {"type": "function_call_output", "call_id": "c1", "output": "sunny"}],
        ...     instructions="Be brief.")]
        ['system', 'user', 'assistant', 'tool']
    """
    out: list[Message] = []
    if instructions is not None:
        if not isinstance(instructions, str):
            # a list of input items, as the API echoes them back; read with the same rule
            out.extend(responses_input_messages(instructions))
        else:
            out.append(Message("system"))
    if input is None:
        return out
    if isinstance(input, str):
        out.append(Message("user", input if input.strip() else None))
        return out
    if isinstance(input, (bytes, Mapping)) or not isinstance(input, Iterable):
        raise InvalidInputError("Responses input must be a string or a list of input items")
    names: dict[str, str] = {}
    for raw in input:
        item = _as_mapping(raw)
        kind = item.get("type")
        role = item.get("role")
        if kind in (None, "message") and role is not None:
            if role not in _RESPONSES_ROLES:
                raise InvalidInputError(
                    f"unknown Responses message role {role!r}: allowed roles are user, assistant, system and developer"
                )
            if role in ("system", "developer"):
                out.append(Message("system"))
                continue
            extracted = _responses_parts(item.get("content"), role=role)
            out.append(Message("user" if role == "user" else "assistant", extracted.text, extracted.images))
        elif kind in ("function_call", "custom_tool_call"):
            name = item.get("name") or ""
            if isinstance(item.get("call_id"), str):
                names[item["call_id"]] = name
            arguments = item.get("arguments", "") if kind == "function_call" else item.get("input", "")
            out.append(Message("assistant", tool_calls=render_tool_calls([{"name": name, "arguments": arguments}])))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            extracted = _tool_output_text(item.get("output"))
            name = names.get(item.get("call_id") or "")
            out.append(Message("tool", extracted.text, extracted.images, name=name or None))
        elif kind == "reasoning":
            summary = [_as_mapping(part) for part in item.get("summary") or []]
            texts = [str(part.get("text") or "") for part in summary if part.get("type") in _RESPONSES_TEXT_PARTS]
            text = "\n".join(t for t in texts if t.strip())
            if text:
                out.append(Message("assistant", text))
        else:
            raise InvalidInputError(
                f"Responses input item of type {kind!r} cannot be judged by the guard; supported items: message, "
                "function_call, function_call_output, custom_tool_call, custom_tool_call_output, reasoning"
            )
    return out


def responses_output_message(output: Any) -> Message:
    """A Responses API ``output`` (the list of output items of a ``Response``) as one assistant :class:`Message`.

    Its text (``output_text`` and ``refusal`` parts of ``message`` items) and one line per tool call
    (``function_call``, ``custom_tool_call``); ``reasoning`` items are the model's own notes and are not
    part of the reply.

    Raises:
        InvalidInputError: an output item the guard cannot judge (an image generation, a computer action, ...).
    """
    texts: list[str] = []
    images: list[str] = []
    calls: list[dict[str, Any]] = []
    for raw in output or []:
        item = _as_mapping(raw)
        kind = item.get("type")
        if kind == "message":
            extracted = _responses_parts(item.get("content"), role="assistant")
            if extracted.text:
                texts.append(extracted.text)
            images.extend(extracted.images)
        elif kind == "function_call":
            calls.append({"name": item.get("name"), "arguments": item.get("arguments", "")})
        elif kind == "custom_tool_call":
            calls.append({"name": item.get("name"), "arguments": item.get("input", "")})
        elif kind == "reasoning":
            continue
        else:
            raise InvalidInputError(
                f"Responses output item of type {kind!r} cannot be judged by the guard; judged items: message, "
                "function_call, custom_tool_call"
            )
    text = "\n".join(texts)
    return Message("assistant", text if text.strip() else None, tuple(images), render_tool_calls(calls))


# -- effects and drivers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One thing to judge: request text/images and optionally the response; or an error found while reading it."""

    text: str | None = None
    image: Any = None
    response: str | None = None
    error: GuardError | None = None

    @classmethod
    def of(cls, request: Extracted, *, response: str | None = None) -> Check:
        return cls(text=request.text, image=request.image, response=response)

    @classmethod
    def from_item(cls, item: ModerationItem) -> Check:
        return cls(text=item.text, image=item.image, response=item.response)

    @classmethod
    def build(cls, make: Callable[[], ModerationItem]) -> Check:
        """The check for ``make()``, or a check carrying the :class:`InvalidInputError` it raised."""
        try:
            return cls.from_item(make())
        except InvalidInputError as exc:
            return cls(error=exc)


@dataclass(frozen=True, slots=True)
class Judge:
    """Effect: judge these checks; the plan receives one :class:`GuardResult` per check, in order."""

    checks: tuple[Check, ...]


@dataclass(frozen=True, slots=True)
class Call:
    """Effect: call ``sync(*args, **kwargs)`` (sync driver) or await ``async_(*args, **kwargs)`` (async driver)."""

    sync: Callable[..., Any]
    async_: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Invoke:
    """Effect: ``runnable.invoke(input, config, **kwargs)`` or ``await runnable.ainvoke(...)``."""

    runnable: Any
    input: Any
    config: Any = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Drain:
    """Effect: read a stream to its end (``list(stream)`` or ``[c async for c in stream]``)."""

    stream: Any


Effect = Judge | Call | Invoke | Drain
Plan = Generator[Effect, Any, T]


def _error_result(guard: Guard, exc: GuardError) -> GuardResult:
    return GuardResult(
        flagged=True,
        status="invalid_input" if isinstance(exc, InvalidInputError) else "engine_error",
        error=f"{type(exc).__name__}: {exc}",
        model=guard.model_id,
    )


def _split(checks: Sequence[Check], guard: Guard, policy: GuardErrorPolicy) -> tuple[list[Any], list[int]]:
    items: list[Any] = []
    positions: list[int] = []
    for index, check in enumerate(checks):
        if check.error is not None:
            if policy == "raise":
                raise check.error
            continue
        items.append({"text": check.text, "image": check.image, "response": check.response})
        positions.append(index)
    return items, positions


def _merge(
    guard: Guard,
    checks: Sequence[Check],
    positions: list[int],
    judged: Sequence[GuardResult],
    policy: GuardErrorPolicy,
) -> list[GuardResult]:
    out: list[GuardResult | None] = [None] * len(checks)
    for index, check in enumerate(checks):
        if check.error is not None:
            out[index] = _error_result(guard, check.error)
    for index, result in zip(positions, judged, strict=True):
        if result.status in ("invalid_input", "engine_error"):
            if policy == "raise":
                raise (InvalidInputError if result.status == "invalid_input" else BackendError)(result.error or "")
            logger.warning("guard could not judge (%s): %s; treating as flagged", result.status, result.error)
        elif result.status == "parse_error":
            logger.warning("guard output could not be parsed: %s", result.error)
        out[index] = result
    return [r for r in out if r is not None]


def _recover(guard: Guard, exc: GuardError, n_items: int, policy: GuardErrorPolicy) -> list[GuardResult]:
    """Results to use when the guard call failed, or re-raise (shared by the sync and async paths)."""
    if isinstance(exc, GuardClosedError):  # a closed guard is the caller's bug, not content to block
        raise exc
    if isinstance(exc, ParseError):
        if policy == "raise" or exc.results is None:
            raise exc
        return exc.results
    if policy == "raise":
        raise exc
    logger.warning("guard failed: %s; treating as flagged", exc)
    return [_error_result(guard, exc) for _ in range(n_items)]


def _engine_failure(exc: BaseException) -> GuardError:
    """Any exception from the guard call, as a :class:`GuardError` (an engine's own kept as ``__cause__``)."""
    if isinstance(exc, GuardError):
        return exc
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, FutureTimeout)):
        failure = BackendError(f"the guard did not answer within its timeout ({exc or 'timed out'})")
    else:
        failure = BackendError(f"the guard's engine failed: {type(exc).__name__}: {exc}")
    failure.__cause__ = exc
    return failure


def _moderate_with_timeout(guard: Guard, items: list[Any], timeout_s: float | None) -> list[GuardResult]:
    if timeout_s is None:
        return guard.moderate_batch(items)
    # The engine call cannot be interrupted: it finishes in its thread; the caller stops waiting for it.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grvl-guard-timeout")
    try:
        future = pool.submit(guard.moderate_batch, items)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            raise TimeoutError(f"no verdict after {timeout_s:g}s") from None
    finally:
        pool.shutdown(wait=False)


def _judge_sync(
    guard: Guard, checks: Sequence[Check], policy: GuardErrorPolicy, timeout_s: float | None = None
) -> list[GuardResult]:
    items, positions = _split(checks, guard, policy)
    judged: list[GuardResult] = []
    if items:
        try:
            judged = _moderate_with_timeout(guard, items, timeout_s)
        except Exception as exc:
            judged = _recover(guard, _engine_failure(exc), len(items), policy)
    return _merge(guard, checks, positions, judged, policy)


async def _judge_async(
    guard: Guard, checks: Sequence[Check], policy: GuardErrorPolicy, timeout_s: float | None = None
) -> list[GuardResult]:
    items, positions = _split(checks, guard, policy)
    judged: list[GuardResult] = []
    if items:
        try:
            if timeout_s is None:
                judged = await guard.amoderate_batch(items)
            else:
                try:
                    judged = await asyncio.wait_for(guard.amoderate_batch(items), timeout_s)
                except TimeoutError:
                    raise TimeoutError(f"no verdict after {timeout_s:g}s") from None
        except Exception as exc:
            judged = _recover(guard, _engine_failure(exc), len(items), policy)
    return _merge(guard, checks, positions, judged, policy)


def run_sync(plan: Plan[T], guard: Guard, policy: GuardErrorPolicy, *, timeout_s: float | None = None) -> T:
    """Run a plan, executing its effects synchronously (``timeout_s`` bounds each guard call)."""
    value: Any = None
    try:
        while True:
            effect = plan.send(value)
            if isinstance(effect, Judge):
                value = _judge_sync(guard, effect.checks, policy, timeout_s)
            elif isinstance(effect, Invoke):
                value = effect.runnable.invoke(effect.input, effect.config, **effect.kwargs)
            elif isinstance(effect, Call):
                value = effect.sync(*effect.args, **effect.kwargs)
            else:
                value = list(effect.stream)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def run_async(plan: Plan[T], guard: Guard, policy: GuardErrorPolicy, *, timeout_s: float | None = None) -> T:
    """Run the same plan with awaited effects (``amoderate_batch``, ``ainvoke``, async clients)."""
    value: Any = None
    try:
        while True:
            effect = plan.send(value)
            if isinstance(effect, Judge):
                value = await _judge_async(guard, effect.checks, policy, timeout_s)
            elif isinstance(effect, Invoke):
                value = await effect.runnable.ainvoke(effect.input, effect.config, **effect.kwargs)
            elif isinstance(effect, Call):
                value = await effect.async_(*effect.args, **effect.kwargs)
            else:
                value = [chunk async for chunk in effect.stream]
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


# -- decisions ----------------------------------------------------------------------------------------


def blocks(result: GuardResult, stage: Stage) -> bool:
    """Whether ``result`` blocks content at ``stage``.

    The request and tool stages block on ``flagged``. The output stage judges the reply in the context of
    the request, so it blocks when the *response* is harmful, or when the guard could not judge and its
    policy flags that (a harmful request answered by a harmless refusal is not blocked here: that is the
    input stage's job).
    """
    if stage != "output" or not result.judged:
        return result.flagged
    return result.response is Verdict.HARMFUL


def format_violation(template: str | None, stage: Stage) -> str:
    """Fill ``{stage}`` in a refusal template; a template with other braces is used as is."""
    text = template or DEFAULT_VIOLATION_MESSAGE
    try:
        return text.format(stage=_STAGE_NOUN[stage])
    except (KeyError, IndexError, ValueError):
        return text


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    """Raise :class:`InvalidInputError` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise InvalidInputError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def check_timeout(timeout_s: float | None) -> float | None:
    """Validate a guard timeout option (seconds, positive, or ``None`` for no limit)."""
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise InvalidInputError(f"guard_timeout_s must be a positive number of seconds or None; got {timeout_s!r}")
    return float(timeout_s)


def with_threshold(guard: Guard, threshold: float | Mapping[str, float] | None) -> Guard:
    """The guard an integration judges with: ``guard`` itself, or (with a ``threshold``) a clone sharing its
    engine that flags by verdict score (:meth:`Guard.with_options <guardreasoner_vl.Guard.with_options>`)."""
    if threshold is None:
        return guard
    return guard.with_options(threshold=threshold)


def resolve_on_flagged(
    on_flagged: str | None, exit_behavior: str | None, *, allowed: Sequence[str], default: OnFlagged = "block"
) -> OnFlagged:
    """The ``on_flagged`` choice, accepting the deprecated ``exit_behavior`` names with a warning.

    Old names: ``"end"`` and ``"refuse"`` mean ``"block"``, ``"error"`` means ``"raise"``.

    Raises:
        InvalidInputError: a value outside ``allowed``, or both options given with different meanings.
    """
    legacy: OnFlagged | None = None
    if exit_behavior is not None:
        warnings.warn(
            "exit_behavior is deprecated; use on_flagged='block' | 'raise' | 'replace' "
            "(old 'end' and 'refuse' mean 'block', 'error' means 'raise')",
            DeprecationWarning,
            stacklevel=3,
        )
        if exit_behavior not in _LEGACY_ON_FLAGGED:
            raise InvalidInputError(
                f"exit_behavior must be one of {', '.join(map(repr, _LEGACY_ON_FLAGGED))}; got {exit_behavior!r}"
            )
        legacy = _LEGACY_ON_FLAGGED[exit_behavior]
    if on_flagged is not None and legacy is not None and on_flagged != legacy:
        raise InvalidInputError(f"on_flagged={on_flagged!r} and exit_behavior={exit_behavior!r} disagree; give one")
    value = on_flagged if on_flagged is not None else legacy if legacy is not None else default
    if legacy is not None and legacy not in allowed:
        raise InvalidInputError(
            f"exit_behavior={exit_behavior!r} (on_flagged={legacy!r}) is not available here; "
            f"on_flagged must be one of {', '.join(map(repr, allowed))}"
        )
    check_choice("on_flagged", value, allowed)
    return value  # type: ignore[return-value]
