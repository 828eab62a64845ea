"""OpenAI's moderation schema, and the one converter from :class:`GuardResult` to it.

Shared by the server (``/v1/moderations``) and the OpenAI integration; imports no ``openai``.

How a guard verdict maps onto OpenAI's schema (documented in the README, never faked):

* ``flagged`` is :attr:`GuardResult.flagged` (request or response harmful, or could not judge under the
  default fail-closed policy).
* GuardReasoner judges harm as a whole and has **no categories**: every category in ``categories`` is
  ``false`` (no category is claimed) and ``category_applied_input_types`` lists no input types.
* ``category_scores`` (``category_scores="harm"``, the default): every entry is the same number, the
  result's **harm score** (:func:`harm_score`: the model's probability that the request is harmful, or,
  when a response was judged too, the larger of that and the response's). It is *not* a per-category
  probability: it is the one number a client that thresholds OpenAI scores can use, and thresholding any
  entry at ``t`` flags exactly what ``Guard(threshold=t)`` flags. When the engine gave no score, every
  entry is ``null`` (never made up). ``category_scores="none"``: always ``null``, for clients that read the
  entries as per-category probabilities.
* Our own field ``guardreasoner`` carries what the model did say: the request and response verdicts, the
  refusal verdict, their scores and the harm score, the judgement status and error, and the reasoning.
  Clients that do not know it ignore it.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from guardreasoner_vl.types import GuardResult, RefusalVerdict, ResultStatus, Verdict

__all__ = [
    "OPENAI_CATEGORIES",
    "CategoryScores",
    "GuardReasonerFields",
    "ModerationResponse",
    "ModerationResult",
    "harm_score",
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

CategoryScores = Literal["harm", "none"]
"""What ``category_scores`` holds: ``"harm"`` (the harm score under every category) or ``"none"`` (nulls)."""


def harm_score(result: GuardResult) -> float | None:
    """The one number to threshold: the larger of the request's and (when judged) the response's harmful
    probability; None when neither has a score or the result could not be judged.

    A result is harmful at threshold ``t`` (``Guard(threshold=t)``) exactly when ``harm_score >= t``.

    Example:
        >>> harm_score(GuardResult(request=Verdict.UNHARMFUL, flagged=False, request_score=0.2, response_score=0.7))
        0.7
    """
    if result.status != "ok":
        return None
    scores = [s for s in (result.request_score, result.response_score) if s is not None]
    return max(scores) if scores else None


class GuardReasonerFields(BaseModel):
    """What the guard actually concluded (our extension of the OpenAI schema)."""

    model_config = ConfigDict(frozen=True)

    request: Verdict | None
    response: Verdict | None
    refusal: RefusalVerdict | None
    status: ResultStatus
    error: str | None
    reasoning: str
    request_score: float | None = None
    response_score: float | None = None
    refusal_score: float | None = None
    harm_score: float | None = None


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


def to_openai_moderation_result(result: GuardResult, *, category_scores: CategoryScores = "harm") -> ModerationResult:
    """Convert one :class:`GuardResult` to an OpenAI moderation result (see the module docs).

    Example:
        >>> from guardreasoner_vl.types import GuardResult, Verdict
        >>> r = to_openai_moderation_result(GuardResult(request=Verdict.HARMFUL, flagged=True))
        >>> r.flagged, r.categories["hate"], r.category_scores["hate"], r.guardreasoner.request.value
        (True, False, None, 'harmful')
        >>> scored = GuardResult(request=Verdict.HARMFUL, flagged=True, request_score=0.93)
        >>> to_openai_moderation_result(scored).category_scores["violence"]
        0.93
        >>> to_openai_moderation_result(scored, category_scores="none").category_scores["violence"] is None
        True
    """
    if category_scores not in ("harm", "none"):
        raise ValueError(f"category_scores must be 'harm' or 'none', got {category_scores!r}")
    harm = harm_score(result)
    return ModerationResult(
        flagged=result.flagged,
        categories=dict.fromkeys(OPENAI_CATEGORIES, False),
        category_scores=dict.fromkeys(OPENAI_CATEGORIES, harm if category_scores == "harm" else None),
        category_applied_input_types={name: [] for name in OPENAI_CATEGORIES},
        guardreasoner=GuardReasonerFields(
            request=result.request,
            response=result.response,
            refusal=result.refusal,
            status=result.status,
            error=result.error,
            reasoning=result.reasoning,
            request_score=result.request_score,
            response_score=result.response_score,
            refusal_score=result.refusal_score,
            harm_score=harm,
        ),
    )


def to_openai_moderation(
    results: GuardResult | list[GuardResult], *, model: str | None = None, category_scores: CategoryScores = "harm"
) -> ModerationResponse:
    """Convert results to OpenAI's moderation response (one entry per result, in order)."""
    items = [results] if isinstance(results, GuardResult) else list(results)
    name = model or (items[0].model if items else "guardreasoner-vl")
    converted = [to_openai_moderation_result(r, category_scores=category_scores) for r in items]
    return ModerationResponse(model=name, results=converted)
