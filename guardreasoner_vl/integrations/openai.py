"""OpenAI-style chat pipelines (``pip install "guardreasoner-vl[openai]"``).

Three things:

* **Converters** between OpenAI chat messages and guard inputs. :func:`messages_to_item` takes a
  conversation (dicts or ``openai`` message objects; string or part-list content; ``image_url`` parts
  with ``data:`` or ``http(s)`` URLs) and returns the :class:`~guardreasoner_vl.ModerationItem` the guard
  judges: the **last user turn** (consecutive user messages at the end count as one turn), its images,
  and the assistant's reply after it as the response. :func:`item_to_messages` goes the other way.
  :func:`moderate_messages` / :func:`amoderate_messages` judge a conversation in one call. These need no
  ``openai`` package.
* :class:`GuardedOpenAI` / :class:`GuardedAsyncOpenAI` wrap an ``openai.OpenAI`` / ``AsyncOpenAI``
  client. ``client.chat.completions.create(...)`` judges the last user turn before the call and every
  choice of the reply (in the context of that turn) after it. On a violation it raises
  :class:`ChatCompletionBlocked` (a :class:`~guardreasoner_vl.errors.GuardViolation`), or with
  ``exit_behavior="refuse"`` returns a refusal in OpenAI's own shape: ``finish_reason="content_filter"``,
  ``message.content`` and ``message.refusal`` set to the refusal text; a blocked input never reaches the
  API. The guard's results are attached to what ``create`` returns as the attribute ``guardreasoner`` (a
  :class:`GuardReport`; on a completion it is also part of ``model_dump()``).
  **Streaming**: with ``stream=True`` and the output check on, the whole stream is read (buffered), judged,
  and then released as a :class:`GuardedStream` that replays the chunks (flagged choices replaced by a
  refusal chunk). Time to first token is therefore the full generation time plus the guard's. With
  ``check_output=False`` chunks pass through live.
  Only ``chat.completions.create`` is guarded: ``with_raw_response``, ``with_streaming_response``,
  ``parse`` and ``stream`` of ``chat.completions`` would bypass the check and raise ``AttributeError``; every
  other attribute is the wrapped client's, unguarded (``client.responses`` included).
* :func:`to_openai_moderation`, OpenAI's moderation schema for a :class:`GuardResult` (shared with the
  server; defined in :mod:`guardreasoner_vl.moderation`).

Example:
    >>> from guardreasoner_vl import Guard
    >>> messages = [
    ...     {"role": "system", "content": "Be helpful."},
    ...     {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
    ...                                  {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
    ...     {"role": "assistant", "content": "A cat."},
    ... ]
    >>> item = messages_to_item(messages)
    >>> item.text, item.image, item.response
    ('What is in this picture?', 'data:image/png;base64,iVBO', 'A cat.')
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from guardreasoner_vl.errors import GuardViolation, InvalidInputError, require
from guardreasoner_vl.inputs import encode_image_data_url, load_image
from guardreasoner_vl.integrations._common import (
    Call,
    Check,
    Drain,
    Extracted,
    GuardErrorPolicy,
    Judge,
    Plan,
    blocks,
    check_choice,
    format_violation,
    openai_content_parts,
    render_tool_calls,
    run_async,
    run_sync,
)
from guardreasoner_vl.moderation import ModerationResponse, to_openai_moderation, to_openai_moderation_result
from guardreasoner_vl.types import GuardResult, ModerationItem

if TYPE_CHECKING:
    from guardreasoner_vl.guard import Guard

__all__ = [
    "AsyncGuardedStream",
    "ChatCompletionBlocked",
    "GuardReport",
    "GuardedAsyncOpenAI",
    "GuardedOpenAI",
    "GuardedStream",
    "ModerationResponse",
    "amoderate_messages",
    "item_to_messages",
    "messages_to_item",
    "moderate_messages",
    "to_openai_moderation",
    "to_openai_moderation_result",
]

logger = logging.getLogger(__name__)

ExitBehavior = Literal["error", "refuse"]


# -- converters -----------------------------------------------------------------------------------------


def _as_dict(message: Any) -> Mapping[str, Any]:
    if isinstance(message, Mapping):
        return message
    if hasattr(message, "model_dump"):
        dumped: Mapping[str, Any] = message.model_dump(exclude_none=True)
        return dumped
    raise InvalidInputError(f"a chat message must be a dict or an openai message object, got {type(message).__name__}")


def _normalise(messages: Any) -> list[Mapping[str, Any]]:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
        raise InvalidInputError("messages must be a list of chat messages ({'role': ..., 'content': ...})")
    out = [_as_dict(m) for m in messages]
    for message in out:
        if "role" not in message:
            raise InvalidInputError(f"a chat message has no 'role': {dict(message)!r:.80}")
    return out


def _user_turn(messages: Sequence[Mapping[str, Any]]) -> tuple[Extracted, int] | None:
    """The last run of consecutive user messages, merged, and the index of its last message."""
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
    if last is None:
        return None
    first = last
    while first > 0 and messages[first - 1]["role"] == "user":
        first -= 1
    texts: list[str] = []
    images: list[str] = []
    for message in messages[first : last + 1]:
        extracted = openai_content_parts(message.get("content"), role="user")
        if extracted.text:
            texts.append(extracted.text)
        images.extend(extracted.images)
    text = "\n".join(texts)
    return Extracted(text if text.strip() else None, tuple(images)), last


def _assistant_text(message: Mapping[str, Any]) -> str | None:
    """An assistant message as the guard judges it: text, refusal, then one line per tool call."""
    extracted = openai_content_parts(message.get("content"), role="assistant")
    if extracted.images:
        raise InvalidInputError("the guard judges text responses; this assistant message contains images")
    lines = [extracted.text] if extracted.text else []
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip() and refusal != extracted.text:
        lines.append(refusal)
    calls = []
    for call in message.get("tool_calls") or []:
        call = _as_dict(call)
        function = _as_dict(call.get("function") or {})
        calls.append({"name": function.get("name"), "arguments": function.get("arguments", "")})
    legacy = message.get("function_call")
    if legacy:
        legacy = _as_dict(legacy)
        calls.append({"name": legacy.get("name"), "arguments": legacy.get("arguments", "")})
    lines.extend(render_tool_calls(calls))
    text = "\n".join(lines)
    return text if text.strip() else None


def messages_to_item(messages: Iterable[Any], *, response: str | None = None) -> ModerationItem:
    """The guard input for a conversation: the last user turn (text and images) and the reply after it.

    Args:
        messages: OpenAI chat messages (dicts or ``openai`` message objects), multi-turn.
        response: the assistant reply to judge; by default the last assistant message *after* the last user
            turn, if there is one.

    Returns:
        A :class:`~guardreasoner_vl.ModerationItem`; ``image`` is one URL string or a list (merged by the guard).

    Raises:
        InvalidInputError: no user message, an empty user turn, or content the guard cannot judge.
    """
    normalised = _normalise(messages)
    turn = _user_turn(normalised)
    if turn is None:
        raise InvalidInputError("the conversation has no user message to judge")
    request, last_user = turn
    if request.empty:
        raise InvalidInputError("the last user turn has neither text nor images")
    if response is None:
        after = [m for m in normalised[last_user + 1 :] if m["role"] == "assistant"]
        response = _assistant_text(after[-1]) if after else None
    return ModerationItem(text=request.text, image=request.image, response=response)


def item_to_messages(
    text: str | None = None, image: Any = None, *, response: str | None = None
) -> list[dict[str, Any]]:
    """OpenAI chat messages for a guard input: a user message (text and ``image_url`` parts), then the reply.

    ``data:`` and ``http(s)`` URL strings are kept as they are; other images (paths, bytes, PIL images,
    arrays) are loaded and sent as PNG ``data:`` URLs.

    Example:
        >>> item_to_messages("hi", response="hello")
        [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]
    """
    if text is None and image is None:
        raise InvalidInputError("give at least one of text and image")
    if image is None:
        content: Any = text
    else:
        sources = list(image) if isinstance(image, (list, tuple)) else [image]
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text is not None else []
        for source in sources:
            if isinstance(source, str) and source[:16].lower().startswith(("data:", "http://", "https://")):
                url = source
            else:
                url = encode_image_data_url(load_image(source))
            parts.append({"type": "image_url", "image_url": {"url": url}})
        content = parts
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


def moderate_messages(guard: Guard, messages: Iterable[Any], *, response: str | None = None) -> GuardResult:
    """Judge a conversation: :func:`messages_to_item` then :meth:`Guard.moderate`."""
    item = messages_to_item(messages, response=response)
    return guard.moderate(item.text, item.image, response=item.response)


async def amoderate_messages(guard: Guard, messages: Iterable[Any], *, response: str | None = None) -> GuardResult:
    """Async :func:`moderate_messages`."""
    item = messages_to_item(messages, response=response)
    return await guard.amoderate(item.text, item.image, response=item.response)


# -- results attached to responses -----------------------------------------------------------------------


class GuardReport(BaseModel):
    """What the guard decided about one ``chat.completions.create`` call (``response.guardreasoner``)."""

    model_config = ConfigDict(frozen=True)

    input: GuardResult | None = None
    """Judgement of the last user turn; ``None`` when the input check is off or there was no user turn."""
    output: dict[int, GuardResult] = Field(default_factory=dict)
    """Judgement of each choice's reply (in the context of the request), by choice index."""
    blocked: Literal["input", "output"] | None = None
    """Where the call was blocked, if it was."""
    blocked_choices: tuple[int, ...] = ()
    """Indexes of the choices replaced by a refusal (output stage)."""

    @property
    def flagged(self) -> bool:
        """True when something was blocked."""
        return self.blocked is not None


class ChatCompletionBlocked(GuardViolation):
    """The guard blocked a chat completion (``exit_behavior="error"``).

    Attributes:
        result: the flagging result (the input's, or the first flagged choice's).
        stage: ``"input"`` (the API was not called) or ``"output"``.
        report: every result of the call.
        completion: at the output stage, the blocked completion (or the list of stream chunks) as the API
            returned it, for logging; ``None`` at the input stage.
    """

    def __init__(
        self, message: str, *, result: GuardResult, stage: str, report: GuardReport, completion: Any = None
    ) -> None:
        super().__init__(message, result=result, stage=stage)
        self.report = report
        self.completion = completion


class GuardedStream:
    """A chat-completion stream released by the guard: iterate it like ``openai.Stream``.

    Attributes:
        guardreasoner: the :class:`GuardReport` of the call.
    """

    def __init__(self, chunks: Iterable[Any], report: GuardReport, *, source: Any = None) -> None:
        self._iterator: Iterator[Any] = iter(chunks)
        self._source = source
        self.guardreasoner = report

    def __iter__(self) -> Iterator[Any]:
        return self

    def __getattr__(self, name: str) -> Any:
        # ``response`` (the HTTP response) and the rest of ``openai.Stream``, when there is one underneath
        source = self.__dict__.get("_source")
        if source is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(source, name)

    def __next__(self) -> Any:
        return next(self._iterator)

    def close(self) -> None:
        """Close the underlying HTTP stream, if it is still open."""
        if self._source is not None and hasattr(self._source, "close"):
            self._source.close()

    def __enter__(self) -> GuardedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGuardedStream:
    """Async :class:`GuardedStream` (``async for chunk in stream``)."""

    def __init__(self, chunks: Any, report: GuardReport, *, source: Any = None) -> None:
        self._chunks = chunks
        self._iterator: AsyncIterator[Any] | None = None
        self._source = source
        self.guardreasoner = report

    def __aiter__(self) -> AsyncGuardedStream:
        return self

    def __getattr__(self, name: str) -> Any:
        source = self.__dict__.get("_source")
        if source is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(source, name)

    async def __anext__(self) -> Any:
        if self._iterator is None:
            self._iterator = _aiter(self._chunks)
        return await self._iterator.__anext__()

    async def close(self) -> None:
        """Close the underlying HTTP stream, if it is still open."""
        if self._source is not None and hasattr(self._source, "close"):
            await self._source.close()

    async def __aenter__(self) -> AsyncGuardedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _aiter(chunks: Any) -> AsyncIterator[Any]:
    if hasattr(chunks, "__aiter__"):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk


# -- the client wrappers ---------------------------------------------------------------------------------

_BYPASSES = frozenset({"with_raw_response", "with_streaming_response", "parse", "stream"})


def _choices_text_from_completion(completion: Any) -> dict[int, str | None]:
    out: dict[int, str | None] = {}
    for choice in completion.choices:
        out[choice.index] = _assistant_text(_as_dict(choice.message))
    return out


def _choices_text_from_chunks(chunks: Sequence[Any]) -> dict[int, str | None]:
    content: dict[int, list[str]] = {}
    refusal: dict[int, list[str]] = {}
    calls: dict[int, dict[int, dict[str, str]]] = {}
    for chunk in chunks:
        for choice in getattr(chunk, "choices", None) or []:
            delta = choice.delta
            content.setdefault(choice.index, [])
            if delta is None:
                continue
            if delta.content:
                content[choice.index].append(delta.content)
            if getattr(delta, "refusal", None):
                refusal.setdefault(choice.index, []).append(delta.refusal)
            for call in getattr(delta, "tool_calls", None) or []:
                slot = calls.setdefault(choice.index, {}).setdefault(call.index, {"name": "", "arguments": ""})
                if call.function is not None:
                    slot["name"] += call.function.name or ""
                    slot["arguments"] += call.function.arguments or ""
    out: dict[int, str | None] = {}
    for index in content:
        message: dict[str, Any] = {
            "content": "".join(content[index]) or None,
            "refusal": "".join(refusal.get(index, [])) or None,
            "tool_calls": [{"function": slot} for _, slot in sorted(calls.get(index, {}).items())],
        }
        out[index] = _assistant_text(message)
    return out


class _Guarded:
    """What the sync and async wrappers share: options, the plan of one ``create`` call, refusals."""

    _async: bool = False

    def __init__(
        self,
        client: Any,
        guard: Guard,
        *,
        check_input: bool = True,
        check_output: bool = True,
        exit_behavior: ExitBehavior = "error",
        violation_message: str | None = None,
        on_guard_error: GuardErrorPolicy = "block",
    ) -> None:
        openai = require("openai", "openai", feature="the OpenAI integration")
        expected, other, other_name = (
            (openai.AsyncOpenAI, openai.OpenAI, "GuardedOpenAI")
            if self._async
            else (openai.OpenAI, openai.AsyncOpenAI, "GuardedAsyncOpenAI")
        )
        if not isinstance(client, expected):
            hint = f"; use {other_name} for this client" if isinstance(client, other) else ""
            raise InvalidInputError(
                f"{type(self).__name__} wraps an openai.{expected.__name__} client, got {type(client).__name__}{hint}"
            )
        check_choice("exit_behavior", exit_behavior, ("error", "refuse"))
        check_choice("on_guard_error", on_guard_error, ("block", "raise"))
        self._client = client
        self.guard = guard
        self.check_input = check_input
        self.check_output = check_output
        self.exit_behavior: ExitBehavior = exit_behavior
        self.violation_message = violation_message
        self.on_guard_error: GuardErrorPolicy = on_guard_error
        self.chat = _GuardedChat(self)

    @property
    def unwrapped(self) -> Any:
        """The wrapped ``openai`` client (calls on it are not guarded)."""
        return self._client

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_client":
            raise AttributeError(name)
        return getattr(self._client, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._client!r}, guard={self.guard!r})"

    # -- one create() call, as a plan ---------------------------------------------------------------

    def _create_plan(self, kwargs: dict[str, Any]) -> Plan[Any]:
        if "messages" in kwargs:
            kwargs["messages"] = list(kwargs["messages"])
        stream = bool(kwargs.get("stream"))
        request: Extracted | None = None
        request_error: InvalidInputError | None = None
        try:
            turn = _user_turn(_normalise(kwargs.get("messages", [])))
            request = turn[0] if turn is not None and not turn[0].empty else None
        except InvalidInputError as exc:
            request_error = exc
        if request is None and request_error is None:
            logger.warning("no user turn in the messages: the guard does not judge this call")

        input_result: GuardResult | None = None
        if self.check_input and (request is not None or request_error is not None):
            check = Check(error=request_error) if request is None else Check.of(request)
            (input_result,) = yield Judge((check,))
            if blocks(input_result, "input"):
                report = GuardReport(input=input_result, blocked="input")
                return self._refuse_input(kwargs, input_result, report, stream=stream)

        create = self._client.chat.completions.create
        response = yield Call(create, create, kwargs=kwargs)
        if not self.check_output or (request is None and request_error is None):
            report = GuardReport(input=input_result)
            if stream:
                return self._stream(response, report, source=response)
            response.guardreasoner = report
            return response

        chunks: list[Any] = []
        if stream:
            chunks = yield Drain(response)
            texts = _choices_text_from_chunks(chunks)
        else:
            texts = _choices_text_from_completion(response)
        indexes: list[int] = []
        checks: list[Check] = []
        for index, text in sorted(texts.items()):
            if text is None:
                continue
            indexes.append(index)
            if request is None:
                checks.append(Check(error=request_error))
            else:
                checks.append(Check.of(request, response=text))
        results: list[GuardResult] = (yield Judge(tuple(checks))) if checks else []
        output = dict(zip(indexes, results, strict=True))
        flagged = tuple(i for i, r in output.items() if blocks(r, "output"))
        report = GuardReport(
            input=input_result, output=output, blocked="output" if flagged else None, blocked_choices=flagged
        )
        if flagged:
            text = format_violation(self.violation_message, "output")
            if self.exit_behavior == "error":
                raise ChatCompletionBlocked(
                    text,
                    result=output[flagged[0]],
                    stage="output",
                    report=report,
                    completion=chunks if stream else response,
                )
            if stream:
                chunks = self._refuse_chunks(chunks, flagged, text)
            else:
                response = self._refuse_choices(response, flagged, text)
        if stream:
            return self._stream(chunks, report)
        response.guardreasoner = report
        return response

    def _stream(self, chunks: Any, report: GuardReport, *, source: Any = None) -> Any:
        return (AsyncGuardedStream if self._async else GuardedStream)(chunks, report, source=source)

    # -- refusals -----------------------------------------------------------------------------------

    def _refuse_input(
        self, kwargs: Mapping[str, Any], result: GuardResult, report: GuardReport, *, stream: bool
    ) -> Any:
        text = format_violation(self.violation_message, "input")
        if self.exit_behavior == "error":
            raise ChatCompletionBlocked(text, result=result, stage="input", report=report)
        from openai.types.chat import ChatCompletion, ChatCompletionChunk

        n = int(kwargs.get("n") or 1)
        ident, created, model = f"chatcmpl-guard-{uuid.uuid4().hex}", int(time.time()), str(kwargs.get("model", ""))
        if stream:
            chunks = [
                ChatCompletionChunk(
                    id=ident,
                    object="chat.completion.chunk",
                    created=created,
                    model=model,
                    choices=[_refusal_chunk_choice(i, text)],
                )
                for i in range(n)
            ]
            return self._stream(chunks, report)
        completion = ChatCompletion(
            id=ident,
            object="chat.completion",
            created=created,
            model=model,
            choices=[_refusal_choice(i, text) for i in range(n)],
        )
        completion.guardreasoner = report  # type: ignore[attr-defined]
        return completion

    @staticmethod
    def _refuse_choices(completion: Any, flagged: Sequence[int], text: str) -> Any:
        choices = [_refusal_choice(c.index, text) if c.index in flagged else c for c in completion.choices]
        return completion.model_copy(update={"choices": choices})

    @staticmethod
    def _refuse_chunks(chunks: Sequence[Any], flagged: Sequence[int], text: str) -> list[Any]:
        out: list[Any] = []
        template = None
        for chunk in chunks:
            choices = getattr(chunk, "choices", None) or []
            if template is None and choices:
                template = chunk
            kept = [c for c in choices if c.index not in flagged]
            if choices and not kept and getattr(chunk, "usage", None) is None:
                continue
            out.append(chunk.model_copy(update={"choices": kept}) if len(kept) != len(choices) else chunk)
        for index in flagged:
            if template is None:  # pragma: no cover - a flagged choice always came from a chunk
                break
            refusal = template.model_copy(update={"choices": [_refusal_chunk_choice(index, text)], "usage": None})
            # Keep the usage-only final chunk (stream_options.include_usage) last.
            position = len(out) - 1 if out and not getattr(out[-1], "choices", None) else len(out)
            out.insert(position, refusal)
        return out


def _refusal_choice(index: int, text: str) -> Any:
    from openai.types.chat import ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice

    message = ChatCompletionMessage(role="assistant", content=text, refusal=text)
    return Choice(index=index, finish_reason="content_filter", message=message, logprobs=None)


def _refusal_chunk_choice(index: int, text: str) -> Any:
    from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

    return Choice(
        index=index, delta=ChoiceDelta(role="assistant", content=text, refusal=text), finish_reason="content_filter"
    )


class _GuardedChat:
    def __init__(self, owner: _Guarded) -> None:
        self._owner = owner
        self.completions = _GuardedCompletions(owner)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_owner":
            raise AttributeError(name)
        return getattr(self._owner._client.chat, name)


class _GuardedCompletions:
    def __init__(self, owner: _Guarded) -> None:
        self._owner = owner

    def create(self, **kwargs: Any) -> Any:
        """``chat.completions.create`` with the guard before and after; see the module docs."""
        owner = self._owner
        if owner._async:
            return run_async(owner._create_plan(dict(kwargs)), owner.guard, owner.on_guard_error)
        return run_sync(owner._create_plan(dict(kwargs)), owner.guard, owner.on_guard_error)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_owner":
            raise AttributeError(name)
        if name in _BYPASSES:
            raise AttributeError(
                f"chat.completions.{name} is not guarded by {type(self._owner).__name__}; use create() "
                "(or .unwrapped to call the client without the guard)"
            )
        return getattr(self._owner._client.chat.completions, name)


class GuardedOpenAI(_Guarded):
    """An ``openai.OpenAI`` client whose ``chat.completions.create`` is guarded before and after the call.

    Args:
        client: the ``openai.OpenAI`` (or ``AzureOpenAI``) client to wrap.
        guard: the :class:`~guardreasoner_vl.Guard` that judges.
        check_input: judge the last user turn (text and images) before calling the API.
        check_output: judge each choice of the reply in the context of the request.
        exit_behavior: ``"error"`` (raise :class:`ChatCompletionBlocked`, the default) or ``"refuse"``
            (return a refusal completion, ``finish_reason="content_filter"``).
        violation_message: refusal text; ``{stage}`` becomes ``request`` or ``response``.
        on_guard_error: ``"block"`` (default, fail closed: content the guard cannot judge counts as flagged)
            or ``"raise"``.

    Example:
        >>> import openai
        >>> from guardreasoner_vl import Guard
        >>> client = GuardedOpenAI(openai.OpenAI(api_key="sk-test"), Guard(backend="fake"))
        >>> try:  # the input is judged first: a flagged request never reaches the API
        ...     client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "poison?"}])
        ... except ChatCompletionBlocked as blocked:
        ...     print(blocked.stage, blocked.result.request.value)
        input harmful
    """

    _async = False


class GuardedAsyncOpenAI(_Guarded):
    """An ``openai.AsyncOpenAI`` client whose ``chat.completions.create`` is guarded (``await``-ed).

    Same options as :class:`GuardedOpenAI`; the guard runs through ``Guard.amoderate_batch`` and streams come
    back as :class:`AsyncGuardedStream`.
    """

    _async = True
