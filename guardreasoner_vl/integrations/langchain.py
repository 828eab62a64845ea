"""LangChain integration: agent middleware and LCEL runnables (``pip install "guardreasoner-vl[langchain]"``).

:class:`GuardMiddleware` plugs into :func:`langchain.agents.create_agent` the way LangChain's own
``OpenAIModerationMiddleware`` does (same options, same three exit behaviours) but judges **images too**:
the text and image content blocks of the user's turn (OpenAI ``image_url`` parts with ``data:`` or
``http(s)`` URLs, LangChain v1 ``image`` blocks with ``base64`` data or a ``url``, and the older v0 image
blocks) all reach the guard; several images are merged side by side by the guard.

What is judged follows the one conversation rule of :mod:`guardreasoner_vl.conversation` (the last user
turn is the request, earlier turns and tool results are context inside it, the reply is the response):

* ``before_model`` judges the conversation whenever it holds a message the middleware has not judged and
  the model did not write: a new user turn, and anything the caller put in the initial state (an
  ``AIMessage`` or ``ToolMessage`` the model never produced is *not* trusted as already judged). It does so
  once per turn, not again after every tool round. With ``check_tool_results=True`` it also judges the
  results of the model's own tool calls on their own, before the model reads them. The record of what was
  judged lives in a private state key (``guardreasoner_seen``) that the caller's input cannot set.
* ``after_model`` judges the model's reply **in the context of the conversation** (the guard's response
  task). Tool calls in the reply are shown to the guard as ``[tool call] name(arguments)`` lines, so a
  harmful action is caught before it runs.
* Every message class a provider sends as content is read (``HumanMessage``, ``ChatMessage`` with role
  ``user`` / ``human`` and the other standard roles, AI, tool and function messages, chunks); content
  blocks the guard cannot judge (audio, files, unknown types, non-string text) are refused, never skipped.

On a violation (``on_flagged``, the same words in every integration):

* ``"block"`` (default): the run ends with a refusal :class:`~langchain_core.messages.AIMessage`.
  At the output stage the flagged reply is replaced by the refusal (same message id), so harmful text never
  reaches the caller (LangChain's OpenAI middleware appends instead and leaves the reply in the state).
* ``"raise"``: raises :class:`~guardreasoner_vl.errors.GuardViolation` with ``result`` and ``stage``
  (``"input"``, ``"output"`` or ``"tool"``).
* ``"replace"``: the offending message(s) are replaced in place (same id) by the refusal text and the run
  goes on; a replaced reply loses its tool calls.

The old ``exit_behavior="end" | "error" | "replace"`` still works, with a ``DeprecationWarning``.

Every refusal message carries the guard's result in ``response_metadata["guardreasoner"]``
(``{"stage": ..., "result": GuardResult as JSON}``).

:class:`GuardRunnable` (also ``guard.as_runnable(model)``) wraps a chat model for LCEL pipelines.

Example:
    >>> from langchain.agents import create_agent
    >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
    >>> from guardreasoner_vl import Guard
    >>> from guardreasoner_vl.backends import FakeBackend
    >>> guard = Guard(backend=FakeBackend(harmful_keywords=["bomb"]))
    >>> agent = create_agent(FakeListChatModel(responses=["Sure!"]), middleware=[GuardMiddleware(guard)])
    >>> agent.invoke({"messages": [("user", "how do I build a bomb?")]})["messages"][-1].content
    "I'm sorry, but I can't help with that. The request was flagged by the safety guard."
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, NotRequired, cast

from guardreasoner_vl.conversation import Message, conversation_to_item, render_tool_calls
from guardreasoner_vl.errors import GuardViolation, InvalidInputError, require
from guardreasoner_vl.integrations._common import (
    Check,
    Extracted,
    GuardErrorPolicy,
    Invoke,
    Judge,
    OnFlagged,
    Plan,
    Stage,
    blocks,
    check_choice,
    check_timeout,
    format_violation,
    image_from_base64,
    image_from_url,
    openai_content_parts,
    resolve_on_flagged,
    run_async,
    run_sync,
    with_threshold,
)
from guardreasoner_vl.types import GuardResult

require("langchain_core", "langchain", package="langchain-core", feature="the LangChain integration")
require("langchain.agents.middleware", "langchain", package="langchain", feature="the LangChain integration")

from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config  # noqa: E402
from langchain.agents.middleware.types import PrivateStateAttr  # noqa: E402
from langchain_core.messages import (  # noqa: E402
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
)
from langchain_core.prompt_values import PromptValue  # noqa: E402
from langchain_core.runnables import Runnable, RunnableConfig  # noqa: E402
from langchain_core.runnables.config import patch_config  # noqa: E402

if TYPE_CHECKING:
    from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
    from langgraph.runtime import Runtime

    from guardreasoner_vl.guard import Guard

__all__ = [
    "GuardMiddleware",
    "GuardRunnable",
    "GuardState",
    "as_runnable",
    "message_content",
    "to_conversation",
    "to_messages",
]

logger = logging.getLogger(__name__)

_OPENAI_PART_TYPES = frozenset({"text", "input_text", "output_text", "refusal", "image_url", "input_image"})
_REPLY_ONLY_BLOCKS = frozenset(
    {"reasoning", "tool_call", "tool_call_chunk", "invalid_tool_call", "server_tool_call", "server_tool_result"}
)
"""Blocks of a model's reply that are not its answer (reasoning, tool calls judged from ``tool_calls``)."""
_REPLY_ONLY_PROVIDER_BLOCKS = frozenset({"thinking", "redacted_thinking", "reasoning", "tool_use", "server_tool_use"})
"""Provider blocks (``non_standard``) of a reply that are not its answer; any other unknown block is refused."""

_ROLE_OF_CHAT = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}


# -- reading messages ------------------------------------------------------------------------------


def message_content(message: BaseMessage) -> Extracted:
    """The text and images of one LangChain message, as the guard will see them.

    Text blocks are joined with newlines. Images come from LangChain v1 ``image`` blocks (``base64`` data or
    a ``url``), legacy v0 image blocks, Anthropic-style ``source`` blocks and OpenAI ``image_url`` /
    ``input_image`` parts. Reasoning and tool-call blocks are skipped (tool calls are judged from
    ``AIMessage.tool_calls``).

    Raises:
        InvalidInputError: content the guard cannot judge (audio, video, files, an image given only as a
            provider ``file_id``, a local path as image URL).

    Example:
        >>> from langchain_core.messages import HumanMessage
        >>> m = HumanMessage(content=[{"type": "text", "text": "what is this?"},
        ...                           {"type": "image", "base64": "iVBORw0KGgo=", "mime_type": "image/png"}])
        >>> message_content(m)
        Extracted(text='what is this?', images=('data:image/png;base64,iVBORw0KGgo=',))
    """
    content = message.content
    if isinstance(content, str):
        return Extracted(content if content.strip() else None)
    texts: list[str] = []
    images: list[str] = []
    role = message.type
    reply = isinstance(message, AIMessage)
    for block in message.content_blocks:
        kind = block.get("type")
        if kind in ("text", "text-plain"):
            text = block.get("text")
            if not isinstance(text, str):
                raise InvalidInputError(
                    f"a {kind} block in a {role} message has no string 'text' (got {type(text).__name__}); "
                    "the guard reads text blocks whose text is a string"
                )
            texts.append(text)
        elif kind == "image":
            if block.get("base64"):
                images.append(image_from_base64(block.get("base64"), block.get("mime_type")))
            elif block.get("url"):
                images.append(image_from_url(block.get("url")))
            else:
                raise InvalidInputError(
                    f"an image block in a {role} message has neither base64 data nor a URL "
                    "(provider file ids cannot be read by the guard)"
                )
        elif kind == "non_standard":
            value = block.get("value")
            if reply and isinstance(value, Mapping) and value.get("type") in _REPLY_ONLY_PROVIDER_BLOCKS:
                continue  # provider extras in a reply (e.g. un-translated "thinking" blocks) are not the answer
            extracted = openai_content_parts([value], role=role)
            texts.extend([extracted.text] if extracted.text else [])
            images.extend(extracted.images)
        elif reply and kind in _REPLY_ONLY_BLOCKS:
            continue
        else:
            raise InvalidInputError(
                f"content block of type {kind!r} in a {role} message cannot be judged by the guard; "
                "supported: text and image blocks"
            )
    text = "\n".join(t for t in texts if t)
    return Extracted(text if text.strip() else None, tuple(images))


def _neutral(message: BaseMessage) -> Message:
    """One LangChain message as the guard reads it (see :func:`to_conversation`)."""
    if isinstance(message, HumanMessage):
        role = "user"
    elif isinstance(message, AIMessage):
        role = "assistant"
    elif isinstance(message, SystemMessage):
        return Message("system")
    elif isinstance(message, (ToolMessage, FunctionMessage)):
        role = "tool"
    elif isinstance(message, ChatMessage):
        mapped = _ROLE_OF_CHAT.get(str(message.role).lower())
        if mapped is None:
            raise InvalidInputError(
                f"ChatMessage role {message.role!r} is not one the guard can place; allowed: "
                + ", ".join(sorted(_ROLE_OF_CHAT))
            )
        if mapped == "system":
            return Message("system")
        role = mapped
    else:
        raise InvalidInputError(
            f"a {type(message).__name__} is not a chat message the guard can judge; allowed: human, AI, system, "
            "tool, function and chat messages (and their chunks)"
        )
    extracted = message_content(message)
    calls: tuple[str, ...] = ()
    if isinstance(message, AIMessage) and message.tool_calls:
        calls = render_tool_calls(cast("list[Mapping[str, Any]]", message.tool_calls))
    name = getattr(message, "name", None)
    return Message(role, extracted.text, extracted.images, calls, name if isinstance(name, str) else None)  # type: ignore[arg-type]


def to_conversation(messages: Sequence[BaseMessage]) -> list[Message]:
    """LangChain messages as neutral :class:`~guardreasoner_vl.conversation.Message` objects.

    Every class a provider sends as content is read: human messages, ``ChatMessage`` with role ``user`` /
    ``human`` (or ``assistant`` / ``ai``, ``tool`` / ``function``, ``system`` / ``developer``), AI messages,
    tool and function results, and the chunk variants of each. System messages are kept as ``system``
    (not judged). Anything else (e.g. ``RemoveMessage``, a ``ChatMessage`` with another role) is refused.

    Raises:
        InvalidInputError: a message or content block the guard cannot judge.
    """
    return [_neutral(m) for m in messages]


def _reply_text(message: BaseMessage) -> str | None:
    """The reply as the guard judges it: its text, then one line per tool call."""
    reply = _neutral(message)
    if reply.images:
        raise InvalidInputError("the guard judges text responses; this reply contains images")
    return reply.body()


def _metadata(message: BaseMessage, stage: Stage, result: GuardResult) -> dict[str, Any]:
    meta = dict(message.response_metadata or {})
    meta["guardreasoner"] = {"stage": stage, "result": result.model_dump(mode="json")}
    return meta


def to_messages(value: Any) -> list[BaseMessage]:
    """Turn what an LCEL step receives into messages: a string, a message, a list, a prompt value, ``{"messages"}``.

    Raises:
        InvalidInputError: another type (put the guard after the prompt template).
    """
    if isinstance(value, str):
        return [HumanMessage(value)]
    if isinstance(value, BaseMessage):
        return [value]
    if isinstance(value, PromptValue):
        return list(value.to_messages())
    if isinstance(value, Mapping) and "messages" in value:
        value = value["messages"]
    if isinstance(value, (list, tuple)):
        try:
            return convert_to_messages(value)
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise InvalidInputError(f"could not read the input as chat messages: {exc}") from exc
    raise InvalidInputError(
        f"cannot judge an input of type {type(value).__name__}: give a string, messages, a prompt value or "
        '{"messages": [...]} (place the guard after the prompt template)'
    )


# -- agent middleware ----------------------------------------------------------------------------------


class GuardState(AgentState[Any]):
    """The agent state with the middleware's private record of the messages it has judged or seen the model
    write (never taken from the caller's input, never returned in the output)."""

    guardreasoner_seen: NotRequired[Annotated[list[str], PrivateStateAttr]]


def _seen(state: Mapping[str, Any]) -> list[str]:
    return list(state.get("guardreasoner_seen") or [])


class GuardMiddleware(AgentMiddleware[GuardState, Any]):
    """Guard an agent's requests, replies and (optionally) tool results with GuardReasoner(-VL).

    Args:
        guard: the :class:`~guardreasoner_vl.Guard` that judges.
        check_input: judge the conversation before the model answers it whenever it holds a message the
            guard has not judged and the model did not write (a new user turn, or anything the caller put in
            the initial state: forged assistant turns and tool results included).
        check_output: judge each model reply in the context of the conversation.
        check_tool_results: judge the results of the model's own tool calls before the model reads them.
        on_flagged: ``"block"`` (default: stop with a refusal message), ``"raise"`` (raise
            :class:`~guardreasoner_vl.errors.GuardViolation`) or ``"replace"`` (swap the offending
            message(s), same id, for the refusal and go on).
        violation_message: refusal text; ``{stage}`` is replaced by ``request``, ``response`` or
            ``tool result``.
        on_guard_error: ``"block"`` (default): content the guard cannot judge (unsupported content,
            unreadable image, an engine failure of any kind, a timeout) counts as flagged; ``"raise"``: a
            :class:`~guardreasoner_vl.GuardError` propagates.
        guard_timeout_s: longest wait for one guard call, in seconds (``None``: no limit); a timeout follows
            ``on_guard_error``.
        threshold: flag by verdict score instead of by label (a value in [0, 1], or per task); the guard's
            own setting when None. See :class:`~guardreasoner_vl.Guard`.
        exit_behavior: deprecated spelling of ``on_flagged`` (``"end"`` = block, ``"error"`` = raise).

    Example:
        >>> from guardreasoner_vl import Guard
        >>> GuardMiddleware(Guard(backend="fake"), on_flagged="raise").on_flagged
        'raise'
    """

    state_schema = GuardState

    def __init__(
        self,
        guard: Guard,
        *,
        check_input: bool = True,
        check_output: bool = True,
        check_tool_results: bool = False,
        on_flagged: OnFlagged | None = None,
        violation_message: str | None = None,
        on_guard_error: GuardErrorPolicy = "block",
        guard_timeout_s: float | None = None,
        threshold: float | Mapping[str, float] | None = None,
        exit_behavior: str | None = None,
    ) -> None:
        super().__init__()
        self.on_flagged: OnFlagged = resolve_on_flagged(
            on_flagged, exit_behavior, allowed=("block", "raise", "replace")
        )
        check_choice("on_guard_error", on_guard_error, ("block", "raise"))
        self.guard = with_threshold(guard, threshold)
        self.check_input = check_input
        self.check_output = check_output
        self.check_tool_results = check_tool_results
        self.violation_message = violation_message
        self.on_guard_error: GuardErrorPolicy = on_guard_error
        self.guard_timeout_s = check_timeout(guard_timeout_s)

    # The four hooks share the two plans below; only the driver differs.

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: GuardState, runtime: Runtime[Any]) -> dict[str, Any] | None:  # type: ignore[override]
        """Judge unjudged content (new user turn, caller-supplied messages) and new tool results."""
        return run_sync(self._input_plan(state), self.guard, self.on_guard_error, timeout_s=self.guard_timeout_s)

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: GuardState, runtime: Runtime[Any]) -> dict[str, Any] | None:  # type: ignore[override]
        """Async :meth:`before_model` (the guard runs through ``amoderate_batch``)."""
        return await run_async(self._input_plan(state), self.guard, self.on_guard_error, timeout_s=self.guard_timeout_s)

    @hook_config(can_jump_to=["end"])
    def after_model(self, state: GuardState, runtime: Runtime[Any]) -> dict[str, Any] | None:  # type: ignore[override]
        """Judge the model's latest reply in the context of the conversation."""
        return run_sync(self._output_plan(state), self.guard, self.on_guard_error, timeout_s=self.guard_timeout_s)

    @hook_config(can_jump_to=["end"])
    async def aafter_model(self, state: GuardState, runtime: Runtime[Any]) -> dict[str, Any] | None:  # type: ignore[override]
        """Async :meth:`after_model`."""
        return await run_async(
            self._output_plan(state), self.guard, self.on_guard_error, timeout_s=self.guard_timeout_s
        )

    # -- plans --------------------------------------------------------------------------------------

    def _input_plan(self, state: Mapping[str, Any]) -> Plan[dict[str, Any] | None]:
        messages: list[BaseMessage] = list(state.get("messages") or [])
        seen = _seen(state)
        known = set(seen)
        model_calls = {
            call.get("id")
            for m in messages
            if isinstance(m, AIMessage) and m.id in known
            for call in m.tool_calls
            if call.get("id")
        }
        fresh = [i for i, m in enumerate(messages) if m.id is None or m.id not in known]
        tool_results = [i for i in fresh if _answers(messages[i], model_calls)]
        untrusted = [i for i in fresh if i not in tool_results and not isinstance(messages[i], SystemMessage)]
        record = seen + [str(messages[i].id) for i in fresh if messages[i].id is not None]
        updates: dict[int, BaseMessage] = {}
        checks = {i: _tool_check(messages[i]) for i in tool_results} if self.check_tool_results else {}
        tool_results = [i for i, c in checks.items() if c is not None]
        if tool_results:
            results = yield Judge(tuple(c for c in checks.values() if c is not None))
            for index, result in zip(tool_results, results, strict=True):
                if blocks(result, "tool"):
                    action = self._violation([messages[index]], "tool", result)
                    if "jump_to" in action:
                        return self._with_record(action, record)
                    updates[index] = action["messages"][0]
        if self.check_input and untrusted:
            (result,) = yield Judge((Check.build(lambda: conversation_to_item(to_conversation(messages))),))
            if blocks(result, "input"):
                action = self._violation([messages[i] for i in untrusted], "input", result)
                if "jump_to" in action:
                    return self._with_record(action, record)
                updates.update(zip(untrusted, action["messages"], strict=True))
        update: dict[str, Any] = {"guardreasoner_seen": record} if record != seen else {}
        if updates:
            update["messages"] = [updates[i] for i in sorted(updates)]
        return update or None

    def _output_plan(self, state: Mapping[str, Any]) -> Plan[dict[str, Any] | None]:
        messages: list[BaseMessage] = list(state.get("messages") or [])
        if not messages or not isinstance(messages[-1], AIMessage):
            return None
        reply = messages[-1]
        seen = _seen(state)
        record = [*seen, str(reply.id)] if reply.id is not None and reply.id not in seen else seen
        update: dict[str, Any] | None = {"guardreasoner_seen": record} if record != seen else None
        if not self.check_output:
            return update
        try:
            response = _reply_text(reply)
        except InvalidInputError as exc:
            check = Check(error=exc)
        else:
            if response is None:
                return update
            check = Check.build(lambda: conversation_to_item(to_conversation(messages[:-1]), response=response))
        (result,) = yield Judge((check,))
        if not blocks(result, "output"):
            return update
        return self._with_record(self._violation([reply], "output", result), record)

    # -- violations ---------------------------------------------------------------------------------

    @staticmethod
    def _with_record(action: dict[str, Any], record: list[str]) -> dict[str, Any]:
        extra = [str(m.id) for m in action.get("messages", []) if m.id is not None and str(m.id) not in record]
        return {**action, "guardreasoner_seen": record + extra}

    def _violation(self, offending: Sequence[BaseMessage], stage: Stage, result: GuardResult) -> dict[str, Any]:
        text = format_violation(self.violation_message, stage)
        logger.info("guard flagged the %s (status=%s)", stage, result.status)
        if self.on_flagged == "raise":
            raise GuardViolation(text, result=result, stage=stage, message_id=offending[-1].id)
        if self.on_flagged == "block" and stage != "output":
            refusal = AIMessage(
                content=text,
                id=f"guardreasoner-{uuid.uuid4().hex}",
                response_metadata=_metadata(AIMessage(""), stage, result),
            )
            return {"jump_to": "end", "messages": [refusal]}
        replaced = []
        for message in offending:
            update: dict[str, Any] = {"content": text, "response_metadata": _metadata(message, stage, result)}
            if isinstance(message, AIMessage):
                update.update(tool_calls=[], invalid_tool_calls=[])
            replaced.append(message.model_copy(update=update))
        if self.on_flagged == "block":
            return {"jump_to": "end", "messages": replaced}
        return {"messages": replaced}


def _answers(message: BaseMessage, model_calls: set[Any]) -> bool:
    """Whether ``message`` is the result of one of the model's own tool calls."""
    return isinstance(message, ToolMessage) and message.tool_call_id in model_calls


def _tool_check(message: BaseMessage) -> Check | None:
    """A tool result judged on its own, as the request (what the model is about to read); None when empty."""
    try:
        neutral = _neutral(message)
    except InvalidInputError as exc:
        return Check(error=exc)
    if neutral.empty:
        return None
    return Check.build(lambda: conversation_to_item([Message("user", neutral.text, neutral.images)]))


# -- LCEL runnables ---------------------------------------------------------------------------------


class GuardRunnable(Runnable[Any, Any]):
    """An LCEL step that guards a chat model, or gates a pipeline when given no model.

    With a ``model``: the input (string, messages, prompt value or ``{"messages": [...]}``) is judged
    (last user turn, text and images); if flagged the model is **not called**. Otherwise the model runs and
    its reply is judged in the context of the request. Returns the model's output, or a refusal: an
    :class:`~langchain_core.messages.AIMessage` (a ``str`` when the model returned a string) carrying the
    result in ``response_metadata["guardreasoner"]``. With ``on_flagged="raise"`` it raises
    :class:`~guardreasoner_vl.errors.GuardViolation` instead.

    Without a model it is a gate: ``prompt | GuardRunnable(guard) | model`` passes the input through
    unchanged or raises :class:`GuardViolation` (stage ``"input"``); add ``.with_fallbacks(...,
    exceptions_to_handle=(GuardViolation,))`` for a soft refusal.

    ``stream`` and ``astream`` deliver the guarded output as one chunk, after the check.

    Args:
        guard: the guard.
        model: the runnable to guard (a chat model, or any runnable returning a message or a string).
        check_input: judge the request before the model.
        check_output: judge the reply (only with a model).
        on_flagged: ``"block"`` (return a refusal; the default with a model) or ``"raise"`` (raise; the
            only choice, and the default, without a model).
        violation_message: refusal text; ``{stage}`` becomes ``request`` or ``response``.
        on_guard_error: ``"block"`` (default, fail closed) or ``"raise"``; see :class:`GuardMiddleware`.
        guard_timeout_s: longest wait for one guard call (``None``: no limit); a timeout follows ``on_guard_error``.
        threshold: flag by verdict score instead of by label (a value in [0, 1], or per task); the guard's
            own setting when None. See :class:`~guardreasoner_vl.Guard`.
        exit_behavior: deprecated spelling of ``on_flagged`` (``"end"`` = block, ``"error"`` = raise).

    Example:
        >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
        >>> from guardreasoner_vl import Guard
        >>> chain = Guard(backend="fake").as_runnable(FakeListChatModel(responses=["Knead the dough."]))
        >>> chain.invoke("how do I bake bread?").content
        'Knead the dough.'
        >>> chain.invoke("how do I make poison?").response_metadata["guardreasoner"]["stage"]
        'input'
    """

    def __init__(
        self,
        guard: Guard,
        model: Runnable[Any, Any] | None = None,
        *,
        check_input: bool = True,
        check_output: bool = True,
        on_flagged: OnFlagged | None = None,
        violation_message: str | None = None,
        on_guard_error: GuardErrorPolicy = "block",
        guard_timeout_s: float | None = None,
        threshold: float | Mapping[str, float] | None = None,
        exit_behavior: str | None = None,
    ) -> None:
        behavior = resolve_on_flagged(
            on_flagged, exit_behavior, allowed=("block", "raise"), default="block" if model is not None else "raise"
        )
        check_choice("on_guard_error", on_guard_error, ("block", "raise"))
        if model is None and behavior != "raise":
            raise InvalidInputError(
                "without a model a GuardRunnable can only raise on a flagged input: use on_flagged='raise' "
                "(formerly exit_behavior='error'; add .with_fallbacks for a soft refusal), or pass the model to guard"
            )
        if model is not None and not isinstance(model, Runnable):
            raise InvalidInputError(f"model must be a LangChain Runnable, got {type(model).__name__}")
        if model is None and not check_input:
            raise InvalidInputError("a GuardRunnable without a model checks the input: check_input must be True")
        self.guard = with_threshold(guard, threshold)
        self.model = model
        self.check_input = check_input
        self.check_output = check_output and model is not None
        self.on_flagged: OnFlagged = behavior
        self.violation_message = violation_message
        self.on_guard_error: GuardErrorPolicy = on_guard_error
        self.guard_timeout_s = check_timeout(guard_timeout_s)
        self.name = "GuardRunnable"

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Judge, call the model, judge its reply; see the class docs."""
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async :meth:`invoke` (``amoderate_batch`` and the model's ``ainvoke``)."""
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    def _invoke(
        self, input: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Any:
        child = patch_config(config, callbacks=run_manager.get_child())
        return run_sync(
            self._plan(input, child, kwargs), self.guard, self.on_guard_error, timeout_s=self.guard_timeout_s
        )

    async def _ainvoke(
        self, input: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Any:
        child = patch_config(config, callbacks=run_manager.get_child())
        return await run_async(
            self._plan(input, child, kwargs), self.guard, self.on_guard_error, timeout_s=self.guard_timeout_s
        )

    def _plan(self, input: Any, config: RunnableConfig, kwargs: Mapping[str, Any]) -> Plan[Any]:
        conversation: list[Message] = []
        request_error: InvalidInputError | None = None
        try:
            conversation = to_conversation(to_messages(input))
        except InvalidInputError as exc:
            request_error = exc
        if self.check_input:
            if request_error is not None:
                check = Check(error=request_error)
            else:
                check = Check.build(lambda: conversation_to_item(conversation))
            (result,) = yield Judge((check,))
            if blocks(result, "input"):
                return self._refuse("input", result, as_string=False)
        if self.model is None:
            return input
        output = yield Invoke(self.model, input, config, kwargs)
        if not self.check_output:
            return output
        if request_error is not None:
            check = Check(error=request_error)
        else:
            try:
                reply = output if isinstance(output, str) else _reply_text(_as_message(output))
            except InvalidInputError as exc:
                check = Check(error=exc)
            else:
                if reply is None or not reply.strip():
                    return output
                check = Check.build(lambda: conversation_to_item(conversation, response=reply))
        (result,) = yield Judge((check,))
        if blocks(result, "output"):
            return self._refuse("output", result, as_string=isinstance(output, str))
        return output

    def _refuse(self, stage: Stage, result: GuardResult, *, as_string: bool) -> Any:
        text = format_violation(self.violation_message, stage)
        if self.on_flagged == "raise":
            raise GuardViolation(text, result=result, stage=stage)
        if as_string:
            return text
        return AIMessage(
            content=text,
            response_metadata={"guardreasoner": {"stage": stage, "result": result.model_dump(mode="json")}},
        )


def _as_message(output: Any) -> BaseMessage:
    if isinstance(output, BaseMessage):
        return output
    raise InvalidInputError(
        f"the guarded model returned {type(output).__name__}; the output check needs a message or a string"
    )


def as_runnable(guard: Guard, model: Runnable[Any, Any] | None = None, **options: Any) -> GuardRunnable:
    """Build a :class:`GuardRunnable` (what :meth:`Guard.as_runnable` calls)."""
    return GuardRunnable(guard, model, **options)
