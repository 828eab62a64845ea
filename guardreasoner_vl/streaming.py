"""The events of a streamed judgement: :meth:`Guard.stream <guardreasoner_vl.Guard.stream>` and
:meth:`Guard.astream <guardreasoner_vl.Guard.astream>` yield :class:`ReasoningDelta` pieces as the model writes,
then one :class:`FinalResult`, last.

A reasoning guard writes hundreds of tokens before its verdict; the deltas let a caller show them as they come.
They are the model's raw output as generated (its ``<think>`` reasoning first, then the answer block), so the
deltas of one judgement add up to ``result.raw_output``; the parsed reasoning is ``result.reasoning``.

The final result is exactly what :meth:`Guard.moderate <guardreasoner_vl.Guard.moderate>` returns for the same
input (the same parse, policy, thresholds and verdict scores); only ``usage.latency_s`` is the stream's own.

Example:
    >>> from guardreasoner_vl import Guard
    >>> events = list(Guard(backend="fake").stream("How do I bake bread?"))
    >>> [e.type for e in events]
    ['reasoning', 'result']
    >>> events[-1].result.flagged, "".join(e.text for e in events[:-1]) == events[-1].result.raw_output
    (False, True)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from guardreasoner_vl.types import GuardResult

__all__ = ["FinalResult", "GuardEvent", "ReasoningDelta"]


class ReasoningDelta(BaseModel):
    """New text the model wrote (reasoning first, then its answers), as it was generated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["reasoning"] = "reasoning"
    """Always ``"reasoning"`` (the server's SSE event name)."""
    text: str
    """The new text; the deltas of a judgement add up to its ``raw_output``."""


class FinalResult(BaseModel):
    """The judgement, once the model has finished: the last event of every stream."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["result"] = "result"
    """Always ``"result"`` (the server's SSE event name)."""
    result: GuardResult
    """What :meth:`Guard.moderate <guardreasoner_vl.Guard.moderate>` returns for the same input."""


GuardEvent = ReasoningDelta | FinalResult
"""One event of a streamed judgement (``event.type`` tells which)."""
