"""OpenAI's moderation schema, and the one converter from :class:`GuardResult` to it.

Shared by the server (``/v1/moderations``) and the OpenAI integration; imports no ``openai``.

How a guard verdict maps onto OpenAI's schema (documented in the README, never faked):

* ``flagged`` is :attr:`GuardResult.flagged` (request or response harmful, or could not judge under the
  default fail-closed policy).
* GuardReasoner judges harm as a whole and has **no categories**: every category in ``categories`` is
  ``false``, every entry of ``category_scores`` is ``null`` (the model produced no score, so none is
  made up), and ``category_applied_input_types`` lists no input types.
* Our own field ``guardreasoner`` carries what the model did say: the request and response verdicts,
  the refusal verdict, the judgement status and error, and the reasoning. Clients that do not know it
  ignore it.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from guardreasoner_vl.types import GuardResult, RefusalVerdict, ResultStatus, Verdict

__all__ = [
    "OPENAI_CATEGORIES",
    "GuardReasonerFields",
    "ModerationResponse",
    "ModerationResult",
    "to_openai_moderation",
    "to_openai_moderation_result",
]

OPENAI_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
"""The category names of OpenAI's moderation schema (omni-moderation)."""


class GuardReasonerFields(BaseModel):
    """What the guard actually concluded (our extension of the OpenAI schema)."""

    model_config = ConfigDict(frozen=True)

    request: Verdict | None
    response: Verdict | None
    refusal: RefusalVerdict | None
    status: ResultStatus
    error: str | None
    reasoning: str


class ModerationResult(BaseModel):
    """One entry of ``results`` in OpenAI's moderation response."""

    model_config = ConfigDict(frozen=True)

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float | None]
    category_applied_input_types: dict[str, list[Literal["text", "image"]]]
    guardreasoner: GuardReasonerFields


class ModerationResponse(BaseModel):
    """OpenAI's ``ModerationCreateResponse``: ``{"id", "model", "results": [...]}``."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=lambda: f"modr-{uuid.uuid4().hex}")
    model: str
    results: list[ModerationResult]


def to_openai_moderation_result(result: GuardResult) -> ModerationResult:
    """Convert one :class:`GuardResult` to an OpenAI moderation result (see the module docs).

    Example:
        >>> from guardreasoner_vl.types import GuardResult, Verdict
        >>> r = to_openai_moderation_result(GuardResult(request=Verdict.HARMFUL, flagged=True))
        >>> r.flagged, r.categories["hate"], r.category_scores["hate"], r.guardreasoner.request.value
        (True, False, None, 'harmful')
    """
    return ModerationResult(
        flagged=result.flagged,
        categories=dict.fromkeys(OPENAI_CATEGORIES, False),
        category_scores=dict.fromkeys(OPENAI_CATEGORIES, None),
        category_applied_input_types={name: [] for name in OPENAI_CATEGORIES},
        guardreasoner=GuardReasonerFields(
            request=result.request,
            response=result.response,
            refusal=result.refusal,
            status=result.status,
            error=result.error,
            reasoning=result.reasoning,
        ),
    )


def to_openai_moderation(results: GuardResult | list[GuardResult], *, model: str | None = None) -> ModerationResponse:
    """Convert results to OpenAI's moderation response (one entry per result, in order)."""
    items = [results] if isinstance(results, GuardResult) else list(results)
    name = model or (items[0].model if items else "guardreasoner-vl")
    return ModerationResponse(model=name, results=[to_openai_moderation_result(r) for r in items])
