"""Typed results and inputs.

:class:`GuardResult` is what every engine, integration and the server return. It is frozen, JSON
round-trips (``GuardResult.model_validate_json(r.model_dump_json()) == r``) and has one polarity:
``flagged=True`` means *unsafe*.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, Union

from pydantic import BaseModel, ConfigDict, Field, computed_field

__all__ = [
    "GuardResult",
    "ImageInput",
    "ModerationItem",
    "OnParseError",
    "RefusalVerdict",
    "ResultStatus",
    "Usage",
    "Verdict",
]


if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    ImageInput: TypeAlias = Union[str, Path, bytes, Image.Image, np.ndarray, Sequence["ImageInput"]]  # noqa: UP007
else:  # at run time the alias is Any, so that numpy and PIL are not imported for it
    ImageInput = Any
"""An image the guard accepts: a path, bytes, a ``data:`` (or allowed ``http(s)``) URL, a PIL image, a numpy
array, or a sequence of them (merged side by side). See :func:`guardreasoner_vl.inputs.load_image`."""


class Verdict(StrEnum):
    """Whether a request or a response is harmful."""

    HARMFUL = "harmful"
    UNHARMFUL = "unharmful"


class RefusalVerdict(StrEnum):
    """Whether the AI's response refused or complied (text family only)."""

    REFUSAL = "refusal"
    COMPLIANCE = "compliance"


ResultStatus = Literal["ok", "parse_error", "invalid_input", "engine_error"]
"""``ok``: judged. ``parse_error``: the model answered but its verdicts could not be read.
``invalid_input``: this item of a batch was rejected before the model saw it.
``engine_error``: the engine failed on this item. Anything but ``ok`` means *could not judge*."""

OnParseError = Literal["flag", "allow", "raise"]
"""What to do with output that cannot be parsed: ``flag`` (fail closed, the default), ``allow``
(fail open: flagged only if a verdict that *was* read is harmful) or ``raise`` a ``ParseError``."""


class Usage(BaseModel):
    """Cost of one judgement."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: int | None = None
    """Tokens in the rendered prompt (image tokens included), when the engine reports it."""
    completion_tokens: int | None = None
    """Tokens the model generated, when the engine reports it."""
    latency_s: float | None = None
    """Wall time of the engine call that produced this result, in seconds (shared by a batch)."""


class GuardResult(BaseModel):
    """The guard's judgement of one request (and optionally the AI's response to it).

    Example:
        >>> r = GuardResult(request=Verdict.HARMFUL, flagged=True, model="m")
        >>> r.judged, r.flagged
        (True, True)
        >>> GuardResult.model_validate_json(r.model_dump_json()) == r
        True
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    request: Verdict | None = None
    """Is the user's request harmful? ``None`` only when it could not be judged."""
    response: Verdict | None = None
    """Is the AI's response harmful? ``None`` when no response was given or it could not be judged."""
    refusal: RefusalVerdict | None = None
    """Did the AI refuse? Text family only, and only when a response was given; else ``None``."""
    flagged: bool
    """True = unsafe: the request or the response is harmful, or (by default) it could not be judged."""
    status: ResultStatus = "ok"
    """``ok`` when judged; otherwise why it could not be judged (see :data:`ResultStatus`)."""
    error: str | None = None
    """What went wrong when ``status`` is not ``ok``."""
    reasoning: str = ""
    """The model's step-by-step reasoning (the ``<think>`` block, or the text before the answers)."""
    raw_output: str = ""
    """Everything the model generated, untouched."""
    model: str = ""
    """The model id or path that produced this result."""
    request_score: float | None = Field(default=None, ge=0.0, le=1.0)
    """The model's probability that the request is harmful, read from its next-token distribution where it
    wrote the ``Request:`` label (:mod:`guardreasoner_vl.scores`). None when the engine reported no
    log-probabilities, the verdict was not read, or its label is not ``harmful``/``unharmful``."""
    response_score: float | None = Field(default=None, ge=0.0, le=1.0)
    """The model's probability that the response is harmful (``Response:`` label); None as for
    :attr:`request_score`, and when no response was given."""
    refusal_score: float | None = Field(default=None, ge=0.0, le=1.0)
    """The model's probability that the AI refused (``Completion:`` label; text family only)."""
    usage: Usage = Field(default_factory=Usage)
    """Token counts and latency."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def judged(self) -> bool:
        """True when the guard produced every verdict it was asked for."""
        return self.status == "ok"

    @property
    def request_harmful(self) -> bool | None:
        return None if self.request is None else self.request is Verdict.HARMFUL

    @property
    def response_harmful(self) -> bool | None:
        return None if self.response is None else self.response is Verdict.HARMFUL


class ModerationItem(BaseModel):
    """One input for :meth:`Guard.moderate_batch` (a dict with these keys works too).

    ``image`` accepts anything :func:`guardreasoner_vl.inputs.load_image` does: a path, bytes, a
    ``data:`` URL, a PIL image, a numpy array, or a list of them (merged side by side).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")

    text: str | None = None
    image: ImageInput | None = None
    response: str | None = None
