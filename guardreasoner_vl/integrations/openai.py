"""OpenAI-style chat pipelines (``pip install "guardreasoner-vl[openai]"``).

Three things:

* **Converters** between OpenAI chat messages and guard inputs. :func:`messages_to_item` takes a
  conversation (dicts or ``openai`` message objects; string or part-list content; ``image_url`` parts
  with ``data:`` or ``http(s)`` URLs) and returns the :class:`~guardreasoner_vl.ModerationItem` the guard
  judges, by the rule of :mod:`guardreasoner_vl.conversation` shared by every integration: the **last user
  turn** is the request, the final assistant message after it the response, earlier turns and tool results
  are context inside the request text. :func:`item_to_messages` goes the other way.
  :func:`moderate_messages` / :func:`amoderate_messages` judge a conversation in one call. These need no
  ``openai`` package.
* :class:`GuardedOpenAI` / :class:`GuardedAsyncOpenAI` wrap an ``openai.OpenAI`` / ``AsyncOpenAI``
  client. ``client.chat.completions.create(...)`` judges the conversation that will be sent (the
  ``messages`` keyword, or ``extra_body["messages"]``, which the client sends in its place; other content
  fields in ``extra_body`` are refused) before the call, and every choice of the reply (in the context of
  the conversation; text, refusal, tool calls, the transcript of an audio reply) after it. On a violation,
  with ``on_flagged="block"`` (the default) it returns a refusal in OpenAI's own shape:
  ``finish_reason="content_filter"``, ``message.content`` and ``message.refusal`` set to the refusal text;
  with ``on_flagged="raise"`` it raises :class:`ChatCompletionBlocked` (a
  :class:`~guardreasoner_vl.errors.GuardViolation`). A blocked input never reaches the API. (Before this
  vocabulary the default was to raise; ``exit_behavior="error"`` / ``"refuse"`` still work, deprecated.)
  The guard's results are attached to what ``create`` returns as the attribute ``guardreasoner`` (a
  :class:`GuardReport`; on a completion it is also part of ``model_dump()``).
  **Streaming** (``stream=True`` with the output check on) releases the reply in **judged chunks**
  (``stream_check="chunks"``, the default): the chunks are held until the reply so far reaches a judgement point
  -- ``stream_chunk_chars`` new characters ending a sentence (or twice that with no sentence end), and the end
  of the stream -- then the whole reply so far is judged in the context of the conversation, and the held
  chunks are released if it passes. The moment a judged prefix is flagged the stream stops with the refusal
  (a chunk with ``finish_reason="content_filter"``, or :class:`ChatCompletionBlocked` raised from the
  iterator with ``on_flagged="raise"``) and the API's stream is closed. Cost: about one guard call per
  ``stream_chunk_chars`` characters of reply instead of one (each judging the whole prefix); the caller
  waits for the first judgement instead of the whole reply. Limit: a prefix judged safe is already with the
  caller; a later flag stops the rest but cannot take it back. ``stream_check="buffered"`` keeps the earlier
  behaviour: the whole stream is read, judged once, and replayed (:class:`GuardedStream`; flagged choices
  replaced by a refusal chunk), so time to first token is the full generation time plus the guard's. With
  ``check_output=False`` chunks pass through live.
  ``client.responses.create(...)`` (the Responses API) is guarded the same way: its ``input`` (a string, or
  ``message`` / ``function_call`` / ``function_call_output`` / ``reasoning`` items with ``input_text`` and
  ``input_image`` parts) and ``instructions`` are read by the same conversation rule before the call, the
  reply (text, refusals, function calls) after it; a refusal is a ``Response`` with ``status="incomplete"``
  and ``incomplete_details.reason="content_filter"``, or :class:`ResponseBlocked` with ``on_flagged="raise"``;
  ``stream=True`` is released in judged chunks like a chat stream (the text deltas count; a flag mid-stream ends
  the events with a refusal message and ``response.incomplete``), or buffered with ``stream_check="buffered"``.
  Only ``chat.completions.create`` and ``responses.create`` are guarded: ``with_raw_response``,
  ``with_streaming_response``, ``parse`` and ``stream`` of either would bypass the check and raise
  ``AttributeError``; every other attribute is the wrapped client's, unguarded.
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
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from guardreasoner_vl.conversation import Message, conversation_to_item
from guardreasoner_vl.errors import GuardViolation, InvalidInputError, require
from guardreasoner_vl.inputs import encode_image_data_url, load_image
from guardreasoner_vl.integrations._common import (
    Call,
    Check,
    Drain,
    GuardErrorPolicy,
    Judge,
    OnFlagged,
    Plan,
    _judge_async,
    _judge_sync,
    blocks,
    check_choice,
    check_timeout,
    format_violation,
    openai_assistant_message,
    openai_messages,
    resolve_on_flagged,
    responses_input_messages,
    responses_output_message,
    run_async,
    run_sync,
    with_threshold,
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
    "ResponseBlocked",
    "amoderate_messages",
    "item_to_messages",
    "messages_to_item",
    "moderate_messages",
    "to_openai_moderation",
    "to_openai_moderation_result",
]

logger = logging.getLogger(__name__)

_ON_FLAGGED = ("block", "raise")

_BODY_CONTENT_KEYS = frozenset({"prompt", "input", "instructions", "contents", "conversation", "previous_response_id"})
"""Fields that would carry content the guard does not read if they came in through ``extra_body``."""


# -- converters -----------------------------------------------------------------------------------------


def messages_to_item(messages: Iterable[Any], *, response: str | None = None) -> ModerationItem:
    """The guard input for a conversation, by the one rule of :mod:`guardreasoner_vl.conversation`.

    The request is the last user turn (consecutive user messages are one turn, text and images); the response
    is the final assistant message after it; earlier turns, tool results and the steps of the current turn
    are written into the request text as context; system and developer messages are not judged.

    Args:
        messages: OpenAI chat messages (dicts or ``openai`` message objects), multi-turn.
        response: the assistant reply to judge; by default the final assistant message after the last user
            turn, if there is one.

    Returns:
        A :class:`~guardreasoner_vl.ModerationItem`; ``image`` is one URL string or a list (merged by the guard).

    Raises:
        InvalidInputError: no user message, an empty user turn, or content the guard cannot judge.
    """
    return conversation_to_item(openai_messages(messages), response=response)


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
    output_checks: int = 0
    """Guard calls made on the reply of a stream released in judged chunks (each judges every choice that grew);
    0 for other calls (the reply is judged once)."""

    @property
    def flagged(self) -> bool:
        """True when something was blocked."""
        return self.blocked is not None


class ChatCompletionBlocked(GuardViolation):
    """The guard blocked a chat completion (``on_flagged="raise"``).

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


class ResponseBlocked(GuardViolation):
    """The guard blocked a Responses API call (``responses.create`` with ``on_flagged="raise"``).

    Attributes:
        result: the flagging result.
        stage: ``"input"`` (the API was not called) or ``"output"``.
        report: every result of the call (the reply is ``report.output[0]``).
        response: at the output stage, the blocked ``Response`` (or the list of stream events) as the API
            returned it, for logging; ``None`` at the input stage.
    """

    def __init__(
        self, message: str, *, result: GuardResult, stage: str, report: GuardReport, response: Any = None
    ) -> None:
        super().__init__(message, result=result, stage=stage)
        self.report = report
        self.response = response


class GuardedStream:
    """A chat-completion (or Responses event) stream released by the guard: iterate it like ``openai.Stream``.

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


def _reply(message: Mapping[str, Any]) -> str | InvalidInputError | None:
    """A reply as the guard judges it (text, refusal, audio transcript, tool calls), or why it cannot be."""
    try:
        reply = openai_assistant_message(message)
    except InvalidInputError as exc:
        return exc
    if reply.images:
        return InvalidInputError("the guard judges text responses; this assistant message contains images")
    return reply.body()


def _choices_text_from_completion(completion: Any) -> dict[int, str | InvalidInputError | None]:
    out: dict[int, str | InvalidInputError | None] = {}
    for choice in completion.choices:
        message = choice.message.model_dump(exclude_none=True) if hasattr(choice.message, "model_dump") else {}
        out[choice.index] = _reply(message)
    return out


def _choices_text_from_chunks(chunks: Sequence[Any]) -> dict[int, str | InvalidInputError | None]:
    content: dict[int, list[str]] = {}
    refusal: dict[int, list[str]] = {}
    calls: dict[int, dict[int, dict[str, str]]] = {}
    audio: dict[int, list[str]] = {}
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
            sound = getattr(delta, "audio", None)  # audio replies stream their transcript beside the data
            if sound is not None:
                pieces = audio.setdefault(choice.index, [])
                transcript = (
                    sound.get("transcript") if isinstance(sound, Mapping) else getattr(sound, "transcript", None)
                )
                if isinstance(transcript, str):
                    pieces.append(transcript)
            for call in getattr(delta, "tool_calls", None) or []:
                slot = calls.setdefault(choice.index, {}).setdefault(call.index, {"name": "", "arguments": ""})
                if call.function is not None:
                    slot["name"] += call.function.name or ""
                    slot["arguments"] += call.function.arguments or ""
    out: dict[int, str | InvalidInputError | None] = {}
    for index in content:
        message: dict[str, Any] = {
            "content": "".join(content[index]) or None,
            "refusal": "".join(refusal.get(index, [])) or None,
            "tool_calls": [{"function": slot} for _, slot in sorted(calls.get(index, {}).items())],
        }
        if index in audio:
            message["audio"] = {"transcript": "".join(audio[index])}
        out[index] = _reply(message)
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
        on_flagged: OnFlagged | None = None,
        violation_message: str | None = None,
        on_guard_error: GuardErrorPolicy = "block",
        guard_timeout_s: float | None = None,
        threshold: float | Mapping[str, float] | None = None,
        exit_behavior: str | None = None,
        stream_check: StreamCheck = "chunks",
        stream_chunk_chars: int = 400,
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
        self.on_flagged: OnFlagged = resolve_on_flagged(on_flagged, exit_behavior, allowed=_ON_FLAGGED)
        check_choice("on_guard_error", on_guard_error, ("block", "raise"))
        self._client = client
        self.guard = with_threshold(guard, threshold)
        self.check_input = check_input
        self.check_output = check_output
        self.violation_message = violation_message
        self.on_guard_error: GuardErrorPolicy = on_guard_error
        self.guard_timeout_s = check_timeout(guard_timeout_s)
        check_choice("stream_check", stream_check, ("chunks", "buffered"))
        if isinstance(stream_chunk_chars, bool) or not isinstance(stream_chunk_chars, int) or stream_chunk_chars < 1:
            raise InvalidInputError(f"stream_chunk_chars must be a positive integer, got {stream_chunk_chars!r}")
        self.stream_check: StreamCheck = stream_check
        self.stream_chunk_chars = stream_chunk_chars
        self.chat = _GuardedChat(self)
        if hasattr(client, "responses"):  # openai >= 1.66
            self.responses = _GuardedResponses(self)

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

    def _input_stage(
        self, read: Callable[[], list[Message]], nothing_to_judge: str
    ) -> Plan[tuple[list[Message] | None, InvalidInputError | None, GuardResult | None]]:
        """The input check shared by chat completions and Responses: ``(conversation, why it could not be read,
        the input's result)``. A conversation of system/developer instructions only is not judged (``None``, with
        a warning); one that cannot be read is judged as an error (fail closed under ``on_guard_error``)."""
        conversation: list[Message] | None = None
        request_error: InvalidInputError | None = None
        try:
            conversation = read()
            if all(m.role == "system" for m in conversation):
                conversation = None  # only the application's own instructions: nothing to judge
        except InvalidInputError as exc:
            request_error = exc
        if conversation is None and request_error is None:
            logger.warning(nothing_to_judge)
        input_result: GuardResult | None = None
        if self.check_input and (conversation is not None or request_error is not None):
            if conversation is None:
                check = Check(error=request_error)
            else:
                sent = conversation
                check = Check.build(lambda: conversation_to_item(sent))
            (input_result,) = yield Judge((check,))
        return conversation, request_error, input_result

    def _unchecked(self, response: Any, report: GuardReport, *, stream: bool) -> Any:
        """The API's answer released without an output check (``check_output=False``, or nothing was judged)."""
        if stream:
            return self._stream(response, report, source=response)
        response.guardreasoner = report
        return response

    def _create_plan(self, kwargs: dict[str, Any]) -> Plan[Any]:
        if "messages" in kwargs:
            kwargs["messages"] = list(kwargs["messages"])
        stream = bool(kwargs.get("stream"))
        conversation, request_error, input_result = yield from self._input_stage(
            lambda: openai_messages(_sent_messages(kwargs)),
            "the messages hold only system/developer instructions: the guard does not judge this call",
        )
        if input_result is not None and blocks(input_result, "input"):
            report = GuardReport(input=input_result, blocked="input")
            return self._refuse_input(kwargs, input_result, report, stream=stream)

        create = self._client.chat.completions.create
        response = yield Call(create, create, kwargs=kwargs)
        if not self.check_output or (conversation is None and request_error is None):
            return self._unchecked(response, GuardReport(input=input_result), stream=stream)

        if stream and self.stream_check == "chunks":
            return self._judged_stream(
                lambda publish: self._judged_chat(kwargs, conversation, request_error, input_result, publish),
                response,
                GuardReport(input=input_result),
            )
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
            if isinstance(text, InvalidInputError):
                checks.append(Check(error=text))
            elif conversation is None:
                checks.append(Check(error=request_error))
            else:
                checks.append(_reply_check(conversation, text))
        results: list[GuardResult] = (yield Judge(tuple(checks))) if checks else []
        output = dict(zip(indexes, results, strict=True))
        flagged = tuple(i for i, r in output.items() if blocks(r, "output"))
        report = GuardReport(
            input=input_result, output=output, blocked="output" if flagged else None, blocked_choices=flagged
        )
        if flagged:
            text = format_violation(self.violation_message, "output")
            if self.on_flagged == "raise":
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

    # -- streams released in judged chunks ----------------------------------------------------------------

    def _judged_stream(self, make_plan: Any, source: Any, report: GuardReport) -> Any:
        """A stream whose items come from a judged-stream plan run over ``source`` (see the module docs)."""
        stream = self._stream([], report, source=source)

        def publish(new: GuardReport) -> None:
            stream.guardreasoner = new

        plan = make_plan(publish)
        if self._async:
            stream._chunks = _drive_async(plan, source, self.guard, self.on_guard_error, self.guard_timeout_s)
        else:
            stream._iterator = _drive_sync(plan, source, self.guard, self.on_guard_error, self.guard_timeout_s)
        return stream

    def _reply_checks(
        self, conversation: list[Message] | None, request_error: InvalidInputError | None, replies: Sequence[Any]
    ) -> tuple[Check, ...]:
        checks: list[Check] = []
        for reply in replies:
            if isinstance(reply, InvalidInputError):
                checks.append(Check(error=reply))
            elif conversation is None:
                checks.append(Check(error=request_error))
            else:
                checks.append(_reply_check(conversation, reply))
        return tuple(checks)

    def _judged_chat(
        self,
        kwargs: Mapping[str, Any],
        conversation: list[Message] | None,
        request_error: InvalidInputError | None,
        input_result: GuardResult | None,
        publish: Any,
    ) -> _StreamPlan:
        """Chat chunks, held until the reply so far is judged at a sentence boundary (see the module docs)."""
        pace = _Pace(self.stream_chunk_chars)
        received: list[Any] = []  # every chunk of the API, for the judge and for ChatCompletionBlocked
        pending: list[Any] = []  # chunks held until the next judgement
        size: dict[int, int] = {}  # characters of each choice's reply so far
        judged: dict[int, int] = {}  # ... when it was last judged
        content: dict[int, str] = {}  # each choice's text so far (for sentence boundaries)
        output: dict[int, GuardResult] = {}
        blocked: list[int] = []
        checks_made = 0
        template: Any = None
        while True:
            chunk = yield _Pull()
            ended = chunk is _END
            if not ended:
                received.append(chunk)
                choices = getattr(chunk, "choices", None) or []
                if template is None and choices:
                    template = chunk
                kept = [c for c in choices if c.index not in blocked]
                if choices and not kept and getattr(chunk, "usage", None) is None:
                    continue  # only refused choices' content: dropped
                if len(kept) != len(choices):
                    chunk = chunk.model_copy(update={"choices": kept})
                grew = False
                for choice in kept:
                    added = _delta_size(choice.delta)
                    size[choice.index] = size.get(choice.index, 0) + added
                    written = getattr(choice.delta, "content", None) or ""
                    content[choice.index] = content.get(choice.index, "") + written
                    grew = grew or added > 0
                if not grew and not pending:
                    yield _Emit(chunk)  # no reply content (the role, a finish reason, usage): nothing to judge
                    continue
                pending.append(chunk)
            due = ended or any(
                pace.due(content.get(i, ""), size[i] - judged.get(i, 0)) for i in size if i not in blocked
            )
            grown = [i for i in sorted(size) if i not in blocked and size[i] > judged.get(i, 0)]
            if due and grown:
                texts = _choices_text_from_chunks(received)
                indexes = [i for i in grown if texts.get(i) is not None]
                results: list[GuardResult] = (
                    (yield Judge(self._reply_checks(conversation, request_error, [texts[i] for i in indexes])))
                    if indexes
                    else []
                )
                checks_made += 1
                for i in grown:
                    judged[i] = size[i]
                output.update(zip(indexes, results, strict=True))
                flagged = [i for i, r in zip(indexes, results, strict=True) if blocks(r, "output")]
                if flagged:
                    blocked.extend(flagged)
                    report = self._stream_report(input_result, output, blocked, checks_made)
                    publish(report)
                    text = format_violation(self.violation_message, "output")
                    if self.on_flagged == "raise":
                        raise ChatCompletionBlocked(
                            text, result=output[flagged[0]], stage="output", report=report, completion=received
                        )
                    pending = self._refuse_chunks(pending, flagged, text) if template is not None else pending
                    if not pending or not any(getattr(c, "choices", None) for c in pending):
                        pending.extend(
                            template.model_copy(update={"choices": [_refusal_chunk_choice(i, text)], "usage": None})
                            for i in flagged
                        )
                    if all(i in blocked for i in size):  # nothing left to stream: stop paying for the rest
                        for held in pending:
                            yield _Emit(held)
                        return
                publish(self._stream_report(input_result, output, blocked, checks_made))
                for held in pending:
                    yield _Emit(held)
                pending = []
            if ended:
                for held in pending:
                    yield _Emit(held)
                publish(self._stream_report(input_result, output, blocked, checks_made))
                return

    def _judged_responses(
        self,
        kwargs: Mapping[str, Any],
        conversation: list[Message] | None,
        request_error: InvalidInputError | None,
        input_result: GuardResult | None,
        publish: Any,
    ) -> _StreamPlan:
        """Responses events, held until the reply so far is judged (see the module docs)."""
        pace = _Pace(self.stream_chunk_chars)
        received: list[Any] = []  # every event of the API
        pending: list[Any] = []  # events held until the next judgement
        text = ""  # the output text so far (for sentence boundaries)
        size = judged = 0  # characters of reply so far, and when last judged
        last_reply: Any = None
        output: dict[int, GuardResult] = {}
        checks_made = 0
        created: Any = None  # the Response of response.created (ids and model for a refusal)
        sequence = -1  # the last sequence number released
        items = 0  # output items released (a refusal message comes after them)
        while True:
            event = yield _Pull()
            ended = event is _END
            if not ended:
                received.append(event)
                kind = _event_type(event)
                if kind == "response.created":
                    created = getattr(event, "response", None)
                added = _event_delta_size(event)
                size += added
                if kind == "response.output_text.delta":
                    text += getattr(event, "delta", "") or ""
                if not pending and kind in _RESPONSES_HEAD_EVENTS:
                    sequence = max(sequence, _sequence(event))
                    yield _Emit(event)  # the stream's opening (created, in progress): no reply in it
                    continue
                pending.append(event)
                if not (size > judged and pace.due(text, size - judged)):
                    continue
            reply: str | InvalidInputError | None
            if ended:
                final = _final_response(received)
                try:
                    message = responses_output_message(
                        final.output if final is not None else _output_items_from_events(received)
                    )
                    reply = (
                        InvalidInputError("the guard judges text responses; this reply contains images")
                        if message.images
                        else message.body()
                    )
                except InvalidInputError as exc:
                    reply = exc
            else:
                reply = _partial_reply(received)
            if reply is not None and not (isinstance(reply, str) and reply == last_reply):
                (result,) = yield Judge(self._reply_checks(conversation, request_error, [reply]))
                checks_made += 1
                judged, last_reply, output[0] = size, reply, result
                if blocks(result, "output"):
                    report = self._stream_report(input_result, output, [0], checks_made)
                    publish(report)
                    refusal = format_violation(self.violation_message, "output")
                    if self.on_flagged == "raise":
                        raise ResponseBlocked(refusal, result=result, stage="output", report=report, response=received)
                    for item in _refusal_events(
                        refusal, kwargs, base=created, output_index=items, first_sequence=sequence + 1
                    ):
                        yield _Emit(item)
                    return
            publish(self._stream_report(input_result, output, [], checks_made))
            for held in pending:
                items += _event_type(held) == "response.output_item.added"
                sequence = max(sequence, _sequence(held))
                yield _Emit(held)
            pending = []
            if ended:
                return

    @staticmethod
    def _stream_report(
        input_result: GuardResult | None, output: Mapping[int, GuardResult], blocked: Sequence[int], checks: int
    ) -> GuardReport:
        return GuardReport(
            input=input_result,
            output=dict(output),
            blocked="output" if blocked else None,
            blocked_choices=tuple(blocked),
            output_checks=checks,
        )

    # -- one responses.create() call, as a plan -------------------------------------------------------

    def _responses_plan(self, kwargs: dict[str, Any]) -> Plan[Any]:
        stream = bool(kwargs.get("stream"))
        if kwargs.get("background") and self.check_output:
            raise InvalidInputError(
                "responses.create(background=True) returns before the reply exists, so the guard cannot check it; "
                "use check_output=False (and check the reply you retrieve later), or call without background"
            )
        conversation, request_error, input_result = yield from self._input_stage(
            lambda: responses_input_messages(*_sent_responses_input(kwargs)),
            "the input holds no user or model content: the guard does not judge this call",
        )
        if input_result is not None and blocks(input_result, "input"):
            report = GuardReport(input=input_result, blocked="input")
            return self._refuse_response_input(kwargs, input_result, report, stream=stream)

        create = self._client.responses.create
        response = yield Call(create, create, kwargs=kwargs)
        if not self.check_output or (conversation is None and request_error is None):
            return self._unchecked(response, GuardReport(input=input_result), stream=stream)

        if stream and self.stream_check == "chunks":
            return self._judged_stream(
                lambda publish: self._judged_responses(kwargs, conversation, request_error, input_result, publish),
                response,
                GuardReport(input=input_result),
            )
        events: list[Any] = []
        if stream:
            events = yield Drain(response)
            final = _final_response(events)
            output: Any = final.output if final is not None else _output_items_from_events(events)
        else:
            final, output = response, response.output
        reply: str | InvalidInputError | None
        try:
            message = responses_output_message(output)
            reply = (
                InvalidInputError("the guard judges text responses; this reply contains images")
                if message.images
                else message.body()
            )
        except InvalidInputError as exc:
            reply = exc
        output_results: dict[int, GuardResult] = {}
        if reply is not None:
            if isinstance(reply, InvalidInputError):
                check = Check(error=reply)
            elif conversation is None:
                check = Check(error=request_error)
            else:
                check = _reply_check(conversation, reply)
            (output_results[0],) = yield Judge((check,))
        flagged = tuple(i for i, r in output_results.items() if blocks(r, "output"))
        report = GuardReport(
            input=input_result, output=output_results, blocked="output" if flagged else None, blocked_choices=flagged
        )
        if flagged:
            text = format_violation(self.violation_message, "output")
            if self.on_flagged == "raise":
                blocked = events if stream else response
                raise ResponseBlocked(text, result=output_results[0], stage="output", report=report, response=blocked)
            if stream:
                events = _refusal_events(text, kwargs, base=final, head=_head_events(events))
            else:
                response = _refused_response(text, kwargs, base=response)
        if stream:
            return self._stream(events, report)
        response.guardreasoner = report
        return response

    def _refuse_response_input(
        self, kwargs: Mapping[str, Any], result: GuardResult, report: GuardReport, *, stream: bool
    ) -> Any:
        text = format_violation(self.violation_message, "input")
        if self.on_flagged == "raise":
            raise ResponseBlocked(text, result=result, stage="input", report=report)
        if stream:
            return self._stream(_refusal_events(text, kwargs), report)
        response = _refused_response(text, kwargs)
        response.guardreasoner = report
        return response

    # -- refusals -----------------------------------------------------------------------------------

    def _refuse_input(
        self, kwargs: Mapping[str, Any], result: GuardResult, report: GuardReport, *, stream: bool
    ) -> Any:
        text = format_violation(self.violation_message, "input")
        if self.on_flagged == "raise":
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


def _reply_check(conversation: list[Message], reply: str) -> Check:
    return Check.build(lambda: conversation_to_item(conversation, response=reply))


def _sent_messages(kwargs: Mapping[str, Any]) -> Any:
    """The messages the API will receive: ``extra_body`` is merged into the request body last, so its
    ``messages`` replace the keyword; content fields the guard does not read are refused there."""
    extra = kwargs.get("extra_body")
    if extra is None:
        return kwargs.get("messages", [])
    if not isinstance(extra, Mapping):
        raise InvalidInputError(f"extra_body must be a dict, got {type(extra).__name__}")
    unread = sorted(k for k in extra if k in _BODY_CONTENT_KEYS)
    if unread:
        raise InvalidInputError(
            f"extra_body carries {', '.join(map(repr, unread))}, content the guard does not judge; "
            "send the conversation as messages"
        )
    return extra["messages"] if "messages" in extra else kwargs.get("messages", [])


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


# -- the Responses API: what is sent, what came back, refusals in its own shape -------------------------

_RESPONSES_BODY_CONTENT_KEYS = frozenset({"messages", "prompt", "contents"})
"""Fields that would carry content the guard does not read if they came in through ``extra_body``."""

_RESPONSES_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")
_RESPONSES_HEAD_EVENTS = ("response.created", "response.in_progress", "response.queued")


def _sent_responses_input(kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(input, instructions)`` as the API will receive them (``extra_body`` is merged last, so its ``input``
    and ``instructions`` replace the keywords). A stored prompt with variables is refused: its variables
    carry content the guard does not read. Earlier turns kept on the server (``previous_response_id``,
    ``conversation``) are not fetched: they were judged when they were sent."""
    prompt = kwargs.get("prompt")
    body: dict[str, Any] = {"input": kwargs.get("input"), "instructions": kwargs.get("instructions")}
    extra = kwargs.get("extra_body")
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise InvalidInputError(f"extra_body must be a dict, got {type(extra).__name__}")
        unread = sorted(k for k in extra if k in _RESPONSES_BODY_CONTENT_KEYS)
        if unread:
            raise InvalidInputError(
                f"extra_body carries {', '.join(map(repr, unread))}, content the guard does not judge; "
                "send the conversation as input"
            )
        body.update({k: extra[k] for k in ("input", "instructions") if k in extra})
    if isinstance(prompt, Mapping) and prompt.get("variables"):
        raise InvalidInputError(
            "a stored prompt with variables carries content the guard does not read; send that content in input"
        )
    return body["input"], body["instructions"]


def _event_type(event: Any) -> Any:
    return event.get("type") if isinstance(event, Mapping) else getattr(event, "type", None)


def _final_response(events: Sequence[Any]) -> Any:
    """The ``Response`` carried by the stream's closing event (``response.completed`` / ``incomplete`` /
    ``failed``), or ``None`` when the stream ended without one."""
    for event in reversed(events):
        if _event_type(event) in _RESPONSES_FINAL_EVENTS:
            return getattr(event, "response", None)
    return None


def _output_items_from_events(events: Sequence[Any]) -> list[Any]:
    """The output items of a stream that ended without a closing event, from its ``output_item.done``
    events (text deltas of items that never finished count as a message too)."""
    items = [getattr(e, "item", None) for e in events if _event_type(e) == "response.output_item.done"]
    done = [item for item in items if item is not None]
    if done:
        return done
    text = "".join(getattr(e, "delta", "") or "" for e in events if _event_type(e) == "response.output_text.delta")
    if not text:
        return []
    return [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]


def _head_events(events: Sequence[Any]) -> list[Any]:
    """The opening events of a stream (created / in progress), kept before a refusal."""
    return [e for e in events if _event_type(e) in _RESPONSES_HEAD_EVENTS]


def _refusal_message(text: str) -> dict[str, Any]:
    return {
        "id": f"msg_guard_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "status": "incomplete",
        "content": [
            {"type": "output_text", "text": text, "annotations": []},
            {"type": "refusal", "refusal": text},
        ],
    }


def _refused_response(text: str, kwargs: Mapping[str, Any], *, base: Any = None) -> Any:
    """A ``Response`` holding only the refusal: ``status="incomplete"``, ``incomplete_details.reason=
    "content_filter"`` (the Responses API's own words for filtered output), one assistant message whose
    content is the refusal as ``output_text`` (so ``response.output_text`` shows it) and as ``refusal``.
    At the output stage the API's ``Response`` is kept otherwise (id, model, usage)."""
    from openai.types.responses import Response, ResponseOutputMessage
    from openai.types.responses.response import IncompleteDetails

    message = ResponseOutputMessage.model_validate(_refusal_message(text))
    update = {
        "output": [message],
        "status": "incomplete",
        "incomplete_details": IncompleteDetails(reason="content_filter"),
    }
    if base is not None:
        return base.model_copy(update=update)
    data = {
        "id": f"resp_guard_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": int(time.time()),
        "model": str(kwargs.get("model", "")),
        "parallel_tool_calls": bool(kwargs.get("parallel_tool_calls", True)),
        "tool_choice": kwargs.get("tool_choice", "auto"),
        "tools": [],
        "output": [],
    }
    return Response.model_validate(data).model_copy(update=update)


def _refusal_events(
    text: str,
    kwargs: Mapping[str, Any],
    *,
    base: Any = None,
    head: Sequence[Any] = (),
    output_index: int = 0,
    first_sequence: int | None = None,
) -> list[Any]:
    """The events of a streamed refusal: the stream's opening events (or a new ``response.created``), the
    refusal message streamed as text, and ``response.incomplete`` with the refused ``Response``.

    ``first_sequence`` set: the stream is already open (a judged stream stopped midway); no opening events, the
    refusal message is output item ``output_index`` and the sequence numbers go on from ``first_sequence``."""
    from openai.types.responses import (
        ResponseContentPartAddedEvent,
        ResponseContentPartDoneEvent,
        ResponseCreatedEvent,
        ResponseIncompleteEvent,
        ResponseOutputItemAddedEvent,
        ResponseOutputItemDoneEvent,
        ResponseTextDeltaEvent,
        ResponseTextDoneEvent,
    )

    refused = _refused_response(text, kwargs, base=base)
    message = refused.output[0].model_dump(mode="json", exclude_none=True)
    opening = message | {"status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": message["id"], "output_index": output_index, "content_index": 0}
    events: list[tuple[Any, dict[str, Any]]] = [
        (
            ResponseOutputItemAddedEvent,
            {"type": "response.output_item.added", "output_index": output_index, "item": opening},
        ),
        (ResponseContentPartAddedEvent, {"type": "response.content_part.added", "part": part, **where}),
        (ResponseTextDeltaEvent, {"type": "response.output_text.delta", "delta": text, "logprobs": [], **where}),
        (ResponseTextDoneEvent, {"type": "response.output_text.done", "text": text, "logprobs": [], **where}),
        (ResponseContentPartDoneEvent, {"type": "response.content_part.done", "part": part | {"text": text}, **where}),
        (
            ResponseOutputItemDoneEvent,
            {"type": "response.output_item.done", "output_index": output_index, "item": message},
        ),
        (ResponseIncompleteEvent, {"type": "response.incomplete", "response": refused}),
    ]
    if first_sequence is not None:
        return [
            cls.model_validate(data | {"sequence_number": first_sequence + i}) for i, (cls, data) in enumerate(events)
        ]
    if head:
        out = list(head)
    else:
        started = refused.model_copy(update={"status": "in_progress", "output": [], "incomplete_details": None})
        out = [
            ResponseCreatedEvent.model_validate({"type": "response.created", "response": started, "sequence_number": 0})
        ]
    first = len(out)
    out.extend(cls.model_validate(data | {"sequence_number": first + i}) for i, (cls, data) in enumerate(events))
    return out


class _GuardedResponses:
    def __init__(self, owner: _Guarded) -> None:
        self._owner = owner

    def create(self, **kwargs: Any) -> Any:
        """``responses.create`` with the guard before and after; see the module docs."""
        owner = self._owner
        runner = run_async if owner._async else run_sync
        return runner(
            owner._responses_plan(dict(kwargs)), owner.guard, owner.on_guard_error, timeout_s=owner.guard_timeout_s
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_owner":
            raise AttributeError(name)
        if name in _BYPASSES:
            raise AttributeError(
                f"responses.{name} is not guarded by {type(self._owner).__name__}; use create() "
                "(or .unwrapped to call the client without the guard)"
            )
        return getattr(self._owner._client.responses, name)


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
            return run_async(
                owner._create_plan(dict(kwargs)), owner.guard, owner.on_guard_error, timeout_s=owner.guard_timeout_s
            )
        return run_sync(
            owner._create_plan(dict(kwargs)), owner.guard, owner.on_guard_error, timeout_s=owner.guard_timeout_s
        )

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
    """An ``openai.OpenAI`` client whose ``chat.completions.create`` and ``responses.create`` are guarded before
    and after the call.

    Args:
        client: the ``openai.OpenAI`` (or ``AzureOpenAI``) client to wrap.
        guard: the :class:`~guardreasoner_vl.Guard` that judges.
        check_input: judge the last user turn (text and images) before calling the API.
        check_output: judge each choice of the reply in the context of the request.
        on_flagged: ``"block"`` (default: return a refusal completion, ``finish_reason="content_filter"``)
            or ``"raise"`` (raise :class:`ChatCompletionBlocked`).
        violation_message: refusal text; ``{stage}`` becomes ``request`` or ``response``.
        on_guard_error: ``"block"`` (default, fail closed: content the guard cannot judge, an engine failure
            of any kind or a timeout counts as flagged) or ``"raise"`` (a :class:`~guardreasoner_vl.GuardError`).
        guard_timeout_s: longest wait for one guard call, in seconds (``None``: no limit); a timeout follows
            ``on_guard_error``.
        threshold: flag by verdict score instead of by label (a value in [0, 1], or per task); the guard's
            own setting when None. See :class:`~guardreasoner_vl.Guard`.
        exit_behavior: deprecated spelling of ``on_flagged`` (``"error"`` = raise, ``"refuse"`` = block).

    Example:
        >>> import openai
        >>> from guardreasoner_vl import Guard
        >>> client = GuardedOpenAI(openai.OpenAI(api_key="sk-test"), Guard(backend="fake"), on_flagged="raise")
        >>> try:  # the input is judged first: a flagged request never reaches the API
        ...     client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "poison?"}])
        ... except ChatCompletionBlocked as blocked:
        ...     print(blocked.stage, blocked.result.request.value)
        input harmful
        >>> client = GuardedOpenAI(openai.OpenAI(api_key="sk-test"), Guard(backend="fake"))
        >>> refused = client.responses.create(model="gpt-4o-mini", input="How do I make poison?")  # never sent
        >>> refused.status, refused.incomplete_details.reason, refused.guardreasoner.blocked
        ('incomplete', 'content_filter', 'input')
    """

    _async = False


class GuardedAsyncOpenAI(_Guarded):
    """An ``openai.AsyncOpenAI`` client whose ``chat.completions.create`` and ``responses.create`` are guarded
    (``await``-ed).

    Same options as :class:`GuardedOpenAI`; the guard runs through ``Guard.amoderate_batch`` and streams come
    back as :class:`AsyncGuardedStream`.
    """

    _async = True


# -- streams released in judged chunks: the plan's effects and their drivers ----------------------------------

StreamCheck = Literal["chunks", "buffered"]
"""How a guarded stream is checked: ``"chunks"`` (released in judged chunks) or ``"buffered"`` (read whole,
judged once, replayed)."""

_END = object()
"""What :class:`_Pull` receives when the API's stream has ended."""


@dataclass(frozen=True, slots=True)
class _Pull:
    """Effect: the next item of the API's stream (or :data:`_END`)."""


@dataclass(frozen=True, slots=True)
class _Emit:
    """Effect: hand ``item`` to the caller."""

    item: Any


_StreamPlan = Generator["_Pull | _Emit | Judge", Any, None]

_SENTENCE_END = re.compile(r"""(?:[.!?…。！？;:]["')\]»”’]*|\n)\s*$""")


class _Pace:
    """When the reply so far is judged: ``chars`` new characters ending at a sentence boundary, or ``2 * chars``
    new characters whatever they end with."""

    def __init__(self, chars: int) -> None:
        self.chars = chars

    def due(self, text: str, new_chars: int) -> bool:
        if new_chars >= 2 * self.chars:
            return True
        return new_chars >= self.chars and bool(_SENTENCE_END.search(text[-64:]))


def _delta_size(delta: Any) -> int:
    """Characters of reply content in a chat chunk's delta (text, refusal, tool-call names and arguments, an
    audio transcript)."""
    if delta is None:
        return 0
    total = len(getattr(delta, "content", None) or "") + len(getattr(delta, "refusal", None) or "")
    for call in getattr(delta, "tool_calls", None) or []:
        function = getattr(call, "function", None)
        if function is not None:
            total += len(getattr(function, "name", None) or "") + len(getattr(function, "arguments", None) or "")
    audio = getattr(delta, "audio", None)
    transcript = audio.get("transcript") if isinstance(audio, Mapping) else getattr(audio, "transcript", None)
    return total + (len(transcript) if isinstance(transcript, str) else 0)


_REPLY_DELTAS = (
    "response.output_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.audio.transcript.delta",
)
def _event_delta_size(event: Any) -> int:
    if _event_type(event) in _REPLY_DELTAS:
        return len(getattr(event, "delta", "") or "")
    return 0


def _sequence(event: Any) -> int:
    value = event.get("sequence_number") if isinstance(event, Mapping) else getattr(event, "sequence_number", None)
    return value if isinstance(value, int) else -1


def _partial_reply(events: Sequence[Any]) -> str | None:
    """The reply written so far in a Responses stream: its text, refusal and function-call argument deltas."""
    pieces = [getattr(e, "delta", "") or "" for e in events if _event_type(e) in _REPLY_DELTAS]
    text = "".join(pieces)
    return text or None


def _drive_sync(
    plan: _StreamPlan, source: Any, guard: Guard, policy: GuardErrorPolicy, timeout_s: float | None
) -> Iterator[Any]:
    """Run a judged-stream plan: pull from ``source``, judge with the guard, yield what the plan emits. The API's
    stream is closed when the plan ends (a flag stops it early) or the caller stops iterating."""
    iterator = iter(source)
    value: Any = None
    try:
        while True:
            try:
                effect = plan.send(value)
            except StopIteration:
                return
            value = None
            if isinstance(effect, _Emit):
                yield effect.item
            elif isinstance(effect, _Pull):
                value = next(iterator, _END)
            else:
                value = _judge_sync(guard, effect.checks, policy, timeout_s)
    finally:
        plan.close()
        close = getattr(source, "close", None)
        if close is not None:
            close()


async def _drive_async(
    plan: _StreamPlan, source: Any, guard: Guard, policy: GuardErrorPolicy, timeout_s: float | None
) -> AsyncIterator[Any]:
    """Async :func:`_drive_sync` (``amoderate_batch``, the async client's stream)."""
    iterator = source.__aiter__() if hasattr(source, "__aiter__") else None
    plain = iter(source) if iterator is None else None
    value: Any = None
    try:
        while True:
            try:
                effect = plan.send(value)
            except StopIteration:
                return
            value = None
            if isinstance(effect, _Emit):
                yield effect.item
            elif isinstance(effect, _Pull):
                if iterator is not None:
                    try:
                        value = await iterator.__anext__()
                    except StopAsyncIteration:
                        value = _END
                else:
                    value = next(plain, _END)  # type: ignore[arg-type]
            else:
                value = await _judge_async(guard, effect.checks, policy, timeout_s)
    finally:
        plan.close()
        close = getattr(source, "close", None)
        if close is not None:
            outcome = close()
            if hasattr(outcome, "__await__"):
                await outcome
