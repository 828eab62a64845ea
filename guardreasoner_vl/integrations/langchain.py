"""LangChain integration: agent middleware and LCEL runnables (``pip install "guardreasoner-vl[langchain]"``).

:class:`GuardMiddleware` plugs into :func:`langchain.agents.create_agent` the way LangChain's own
``OpenAIModerationMiddleware`` does (same options, same three exit behaviours) but judges **images too**:
the text and image content blocks of the user's turn (OpenAI ``image_url`` parts with ``data:`` or
``http(s)`` URLs, LangChain v1 ``image`` blocks with ``base64`` data or a ``url``, and the older v0 image
blocks) all reach the guard; several images are merged side by side by the guard.

* ``before_model`` judges the latest user turn while it is unanswered (once per turn, not again after
  every tool round), and, with ``check_tool_results=True``, the tool results that arrived since the
  model's last message.
* ``after_model`` judges the model's reply **in the context of the request** (the guard's response task:
  ``moderate(text=user_text, image=user_images, response=reply)``). Tool calls in the reply are shown to
  the guard as ``[tool call] name(arguments)`` lines, so a harmful action is caught before it runs.

On a violation:

* ``exit_behavior="end"`` (default): the run ends with a refusal :class:`~langchain_core.messages.AIMessage`.
  At the output stage the flagged reply is replaced by the refusal (same message id), so harmful text never
  reaches the caller (LangChain's OpenAI middleware appends instead and leaves the reply in the state).
* ``"error"``: raises :class:`~guardreasoner_vl.errors.GuardViolation` with ``result`` and ``stage``
  (``"input"``, ``"output"`` or ``"tool"``).
* ``"replace"``: the offending message is replaced in place (same id) by the refusal text and the run goes
  on; a replaced reply loses its tool calls.

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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

from guardreasoner_vl.errors import GuardViolation, InvalidInputError, require
from guardreasoner_vl.integrations._common import (
    Check,
    Extracted,
    GuardErrorPolicy,
    Invoke,
    Judge,
    Plan,
    Stage,
    blocks,
    check_choice,
    format_violation,
    image_from_base64,
    image_from_url,
    openai_content_parts,
    render_tool_calls,
    run_async,
    run_sync,
)
from guardreasoner_vl.types import GuardResult

require("langchain_core", "langchain", package="langchain-core", feature="the LangChain integration")
require("langchain.agents.middleware", "langchain", package="langchain", feature="the LangChain integration")

from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config  # noqa: E402
from langchain_core.messages import (  # noqa: E402
    AIMessage,
    BaseMessage,
    HumanMessage,
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
    "as_runnable",
    "message_content",
    "to_messages",
]

logger = logging.getLogger(__name__)

ExitBehavior = Literal["end", "error", "replace"]

_OPENAI_PART_TYPES = frozenset({"text", "input_text", "output_text", "refusal", "image_url", "input_image"})
_SKIPPED_BLOCKS = frozenset(
    {"reasoning", "tool_call", "tool_call_chunk", "invalid_tool_call", "server_tool_call", "server_tool_result"}
)


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
    for block in message.content_blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
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
        elif kind == "text-plain":
            texts.append(str(block.get("text") or ""))
        elif kind == "non_standard":
            value = block.get("value")
            if isinstance(message, AIMessage) and (
                not isinstance(value, Mapping) or value.get("type") not in _OPENAI_PART_TYPES
            ):
                continue  # provider extras in a reply (e.g. un-translated "thinking" blocks) are not the answer
            extracted = openai_content_parts([value], role=role)
            texts.extend([extracted.text] if extracted.text else [])
            images.extend(extracted.images)
        elif kind in _SKIPPED_BLOCKS:
            continue
        else:
            raise InvalidInputError(
                f"content block of type {kind!r} in a {role} message cannot be judged by the guard; "
                "supported: text and image blocks"
            )
    text = "\n".join(t for t in texts if t)
    return Extracted(text if text.strip() else None, tuple(images))


def _reply_text(message: BaseMessage) -> str | None:
    """The reply as the guard judges it: its text, then one line per tool call."""
    lines = []
    extracted = message_content(message)
    if extracted.images:
        raise InvalidInputError("the guard judges text responses; this reply contains images")
    if extracted.text:
        lines.append(extracted.text)
    if isinstance(message, AIMessage) and message.tool_calls:
        lines.extend(render_tool_calls(cast("list[Mapping[str, Any]]", message.tool_calls)))
    text = "\n".join(lines)
    return text if text.strip() else None


def _last_index(messages: Sequence[BaseMessage], kind: type[BaseMessage], *, before: int | None = None) -> int | None:
    stop = len(messages) if before is None else before
    for index in range(stop - 1, -1, -1):
        if isinstance(messages[index], kind):
            return index
    return None


def _request_check(message: BaseMessage) -> Check:
    try:
        extracted = message_content(message)
    except InvalidInputError as exc:
        return Check(error=exc)
    return Check.of(extracted)


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


class GuardMiddleware(AgentMiddleware[AgentState[Any], Any]):
    """Guard an agent's requests, replies and (optionally) tool results with GuardReasoner(-VL).

    Args:
        guard: the :class:`~guardreasoner_vl.Guard` that judges.
        check_input: judge the latest user turn (text and images) before the model answers it.
        check_output: judge each model reply in the context of the user's request.
        check_tool_results: judge tool results before the model reads them.
        exit_behavior: ``"end"`` (stop with a refusal message), ``"error"`` (raise
            :class:`~guardreasoner_vl.errors.GuardViolation`) or ``"replace"`` (swap the offending
            message, same id, for the refusal and go on).
        violation_message: refusal text; ``{stage}`` is replaced by ``request``, ``response`` or
            ``tool result``.
        on_guard_error: ``"block"`` (default): content the guard cannot judge (unsupported content,
            unreadable image, engine failure) counts as flagged; ``"raise"``: the error propagates.

    Example:
        >>> from guardreasoner_vl import Guard
        >>> GuardMiddleware(Guard(backend="fake"), exit_behavior="error").exit_behavior
        'error'
    """

    def __init__(
        self,
        guard: Guard,
        *,
        check_input: bool = True,
        check_output: bool = True,
        check_tool_results: bool = False,
        exit_behavior: ExitBehavior = "end",
        violation_message: str | None = None,
        on_guard_error: GuardErrorPolicy = "block",
    ) -> None:
        super().__init__()
        check_choice("exit_behavior", exit_behavior, ("end", "error", "replace"))
        check_choice("on_guard_error", on_guard_error, ("block", "raise"))
        self.guard = guard
        self.check_input = check_input
        self.check_output = check_output
        self.check_tool_results = check_tool_results
        self.exit_behavior: ExitBehavior = exit_behavior
        self.violation_message = violation_message
        self.on_guard_error: GuardErrorPolicy = on_guard_error

    # The four hooks share the two plans below; only the driver differs.

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:  # type: ignore[override]
        """Judge the unanswered user turn and new tool results before the model is called."""
        return run_sync(self._input_plan(state), self.guard, self.on_guard_error)

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:  # type: ignore[override]
        """Async :meth:`before_model` (the guard runs through ``amoderate_batch``)."""
        return await run_async(self._input_plan(state), self.guard, self.on_guard_error)

    @hook_config(can_jump_to=["end"])
    def after_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:  # type: ignore[override]
        """Judge the model's latest reply in the context of the user's request."""
        return run_sync(self._output_plan(state), self.guard, self.on_guard_error)

    @hook_config(can_jump_to=["end"])
    async def aafter_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:  # type: ignore[override]
        """Async :meth:`after_model`."""
        return await run_async(self._output_plan(state), self.guard, self.on_guard_error)

    # -- plans --------------------------------------------------------------------------------------

    def _input_plan(self, state: Mapping[str, Any]) -> Plan[dict[str, Any] | None]:
        messages: list[BaseMessage] = list(state.get("messages") or [])
        last_ai = _last_index(messages, AIMessage)
        updates: dict[int, BaseMessage] = {}
        if self.check_tool_results and last_ai is not None:
            indexes = [i for i in range(last_ai + 1, len(messages)) if isinstance(messages[i], ToolMessage)]
            checks = [_request_check(messages[i]) for i in indexes]
            judged = [(i, c) for i, c in zip(indexes, checks, strict=True) if c.error is not None or not _empty(c)]
            if judged:
                results = yield Judge(tuple(c for _, c in judged))
                for (index, _), result in zip(judged, results, strict=True):
                    if blocks(result, "tool"):
                        action = self._violation(messages[index], "tool", result)
                        if "jump_to" in action:
                            return action
                        updates[index] = action["messages"][0]
        if self.check_input:
            human = _last_index(messages, HumanMessage)
            if human is not None and (last_ai is None or human > last_ai):
                check = _request_check(messages[human])
                if check.error is not None or not _empty(check):
                    (result,) = yield Judge((check,))
                    if blocks(result, "input"):
                        action = self._violation(messages[human], "input", result)
                        if "jump_to" in action:
                            return action
                        updates[human] = action["messages"][0]
        return {"messages": [updates[i] for i in sorted(updates)]} if updates else None

    def _output_plan(self, state: Mapping[str, Any]) -> Plan[dict[str, Any] | None]:
        if not self.check_output:
            return None
        messages: list[BaseMessage] = list(state.get("messages") or [])
        index = _last_index(messages, AIMessage)
        if index is None:
            return None
        reply = messages[index]
        human = _last_index(messages, HumanMessage, before=index)
        try:
            response = _reply_text(reply)
            request = message_content(messages[human]) if human is not None else Extracted(None)
            if response is None:
                return None
            if request.empty:
                logger.warning("no user request to judge the reply against; output check skipped")
                return None
            check = Check.of(request, response=response)
        except InvalidInputError as exc:
            check = Check(error=exc)
        (result,) = yield Judge((check,))
        if not blocks(result, "output"):
            return None
        return self._violation(reply, "output", result)

    # -- violations ---------------------------------------------------------------------------------

    def _violation(self, message: BaseMessage, stage: Stage, result: GuardResult) -> dict[str, Any]:
        text = format_violation(self.violation_message, stage)
        logger.info("guard flagged the %s (status=%s)", stage, result.status)
        if self.exit_behavior == "error":
            raise GuardViolation(text, result=result, stage=stage, message_id=message.id)
        if self.exit_behavior == "end" and stage != "output":
            refusal = AIMessage(content=text, response_metadata=_metadata(AIMessage(""), stage, result))
            return {"jump_to": "end", "messages": [refusal]}
        update: dict[str, Any] = {"content": text, "response_metadata": _metadata(message, stage, result)}
        if isinstance(message, AIMessage):
            update.update(tool_calls=[], invalid_tool_calls=[])
        replaced = message.model_copy(update=update)
        if self.exit_behavior == "end":
            return {"jump_to": "end", "messages": [replaced]}
        return {"messages": [replaced]}


def _empty(check: Check) -> bool:
    return check.text is None and check.image is None


# -- LCEL runnables ---------------------------------------------------------------------------------


class GuardRunnable(Runnable[Any, Any]):
    """An LCEL step that guards a chat model, or gates a pipeline when given no model.

    With a ``model``: the input (string, messages, prompt value or ``{"messages": [...]}``) is judged
    (last user turn, text and images); if flagged the model is **not called**. Otherwise the model runs and
    its reply is judged in the context of the request. Returns the model's output, or a refusal: an
    :class:`~langchain_core.messages.AIMessage` (a ``str`` when the model returned a string) carrying the
    result in ``response_metadata["guardreasoner"]``. With ``exit_behavior="error"`` it raises
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
        exit_behavior: ``"end"`` (return a refusal; the default with a model) or ``"error"`` (raise; the
            only choice without a model).
        violation_message: refusal text; ``{stage}`` becomes ``request`` or ``response``.
        on_guard_error: ``"block"`` (default, fail closed) or ``"raise"``; see :class:`GuardMiddleware`.

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
        exit_behavior: Literal["end", "error"] | None = None,
        violation_message: str | None = None,
        on_guard_error: GuardErrorPolicy = "block",
    ) -> None:
        behavior = exit_behavior or ("end" if model is not None else "error")
        check_choice("exit_behavior", behavior, ("end", "error"))
        check_choice("on_guard_error", on_guard_error, ("block", "raise"))
        if model is None and behavior != "error":
            raise InvalidInputError(
                "without a model a GuardRunnable can only raise on a flagged input: use exit_behavior='error' "
                "(and .with_fallbacks for a soft refusal), or pass the model to guard"
            )
        if model is not None and not isinstance(model, Runnable):
            raise InvalidInputError(f"model must be a LangChain Runnable, got {type(model).__name__}")
        if model is None and not check_input:
            raise InvalidInputError("a GuardRunnable without a model checks the input: check_input must be True")
        self.guard = guard
        self.model = model
        self.check_input = check_input
        self.check_output = check_output and model is not None
        self.exit_behavior: Literal["end", "error"] = behavior
        self.violation_message = violation_message
        self.on_guard_error: GuardErrorPolicy = on_guard_error
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
        return run_sync(self._plan(input, child, kwargs), self.guard, self.on_guard_error)

    async def _ainvoke(
        self, input: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Any:
        child = patch_config(config, callbacks=run_manager.get_child())
        return await run_async(self._plan(input, child, kwargs), self.guard, self.on_guard_error)

    def _plan(self, input: Any, config: RunnableConfig, kwargs: Mapping[str, Any]) -> Plan[Any]:
        request = Extracted(None)
        request_error: InvalidInputError | None = None
        try:
            messages = to_messages(input)
            human = _last_index(messages, HumanMessage)
            request = message_content(messages[human]) if human is not None else Extracted(None)
        except InvalidInputError as exc:
            request_error = exc
        if self.check_input:
            if request_error is not None:
                check = Check(error=request_error)
            elif request.empty:
                check = Check(error=InvalidInputError("the input has no user message (text or image) to judge"))
            else:
                check = Check.of(request)
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
                if request.empty:
                    logger.warning("no user request to judge the reply against; output check skipped")
                    return output
                check = Check.of(request, response=reply)
        (result,) = yield Judge((check,))
        if blocks(result, "output"):
            return self._refuse("output", result, as_string=isinstance(output, str))
        return output

    def _refuse(self, stage: Stage, result: GuardResult, *, as_string: bool) -> Any:
        text = format_violation(self.violation_message, stage)
        if self.exit_behavior == "error":
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
