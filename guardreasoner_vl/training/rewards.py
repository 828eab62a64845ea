"""The length-aware safety reward of GuardReasoner-VL, as TRL reward functions.

TRL calls a reward function as ``fn(prompts=..., completions=..., completion_ids=..., **columns)`` where
``columns`` are the dataset's other columns as lists (here ``request_label`` and ``response_label`` from
:func:`guardreasoner_vl.training.data.to_rl_record`). Completions are strings or conversational lists of
``{"role", "content"}`` messages; both are read. Everything here is a module-level function or a plain
class instance, so it pickles (DataLoader workers, ``accelerate`` launches).

The reward (paper, section 3.3)::

    r_safety = I_format * (0.5 * [request correct] + 0.5 * [response correct])
    r        = (r_safety - 1) / min(l_norm, beta) ** 2          beta = 1 (standard) or 1/6 (Eco)

A fully correct answer scores 0 at any length; a wrong one is punished less the longer it reasoned, up to
the cap ``beta``. Verdicts are read with the project's one parser, :func:`guardreasoner_vl.parsing.parse_output`.

Intended use with ``GRPOTrainer``: pass :class:`LengthAwareSafetyReward` with weight 1 and, to see each part
on its own in the logs, :func:`format_reward`, :func:`request_accuracy_reward` and
:func:`response_accuracy_reward` with weight 0 (TRL logs ``rewards/<name>/mean`` for every function, and a
weight of 0 keeps them out of the advantage). :func:`reward_functions` returns that list and the weights.
The main reward also reports its parts through TRL's ``log_metric`` hook when TRL passes one
(``length_aware/format``, ``length_aware/request_acc``, ``length_aware/response_acc``, ``length_aware/l_norm``).

Where this departs from the paper and the released code, and why:

* Length unit: the released EasyR1 reward counted *characters* / 3072 (and capped Eco at 500 characters,
  about 3072/6); ``unit="chars"`` reproduces that, and the RL config defaults to it (``length_unit: chars``).
  ``unit="tokens"`` (this class's default) measures ``len(completion_ids) / max_length``. The unit decides
  whether Eco does anything: outputs average about 208 tokens (~900 characters), so a cap of 1/6 binds above
  512 characters but only above 512 *tokens*, i.e. almost never. When a caller gives no ``completion_ids``
  (TRL always does), ``unit="tokens"`` falls back to characters / 4, with a warning logged once.
* ``length_aware=False`` gives the plain r_safety (the paper's ablation "w/o length-aware reward").
* Zero length: the length is floored at one unit before dividing, so ``l_norm`` lies in ``(0, 1]``
  (``1 / max_length`` for an empty completion). The released code divided by zero. An empty completion
  has no format, so r_safety = 0 and r = -1 / (1/max_length)^2 = -max_length^2, the largest penalty there is.
  The length is also capped at ``max_length`` (l_norm <= 1).
* Format indicator: 1 only when the completion is ``<think>`` reasoning ``</think>`` followed by
  ``<result>`` ... ``</result>`` (whitespace around them allowed, nothing else), the reasoning is not
  empty and the ``Request:`` verdict was read from that ``<result>`` block. The paper states it in words;
  this is the strict reading.
* No AI response in the row (``response_label`` None or ""): the response is correct when the model answers
  ``Response: None`` or ``Response: unharmful`` (the parser reads both as unharmful), since nothing harmful
  was said; ``Response: harmful`` or no Response line is wrong.
* Merged samples (safety-aware concatenation) are scored against the row's own labels, which the
  augmentation already OR-combined. The released code scored them against the first sample's labels.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.parsing import parse_output
from guardreasoner_vl.types import Verdict

__all__ = [
    "ECO_BETA",
    "LengthAwareSafetyReward",
    "RewardBreakdown",
    "completion_text",
    "format_ok",
    "format_reward",
    "length_aware_reward",
    "request_accuracy_reward",
    "response_accuracy_reward",
    "reward_functions",
    "score_completion",
]

logger = logging.getLogger(__name__)

ECO_BETA = 1 / 6
"""The Eco models' length cap (the released code used 500/3072 characters, about 1/6)."""
CHARS_PER_TOKEN_FALLBACK = 4
"""Characters per token assumed when token ids are not given (see the module note)."""

LengthUnit = Literal["tokens", "chars"]

_FORMAT = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<result>(?P<result>.*?)</result>\s*", re.DOTALL)
_warned_fallback = False


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or the last assistant message of a conversational completion.

    Example:
        >>> completion_text([{"role": "assistant", "content": "hi"}])
        'hi'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list):
        if not completion:
            return ""
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"] or messages
        if not assistant:
            raise InvalidInputError(f"cannot read a completion from {completion!r:.80}")
        content = assistant[-1].get("content")
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise InvalidInputError(
        f"a completion must be a string or a list of chat messages, got {type(completion).__name__}"
    )


def format_ok(text: str) -> bool:
    """The format indicator: non-empty ``<think>`` reasoning, then ``<result>`` holding the Request verdict.

    Example:
        >>> format_ok("<think>fine</think><result>Request: unharmful\\nResponse: None</result>")
        True
        >>> format_ok("Request: unharmful")
        False
    """
    match = _FORMAT.fullmatch(text)
    if match is None or not match.group("think").strip():
        return False
    return parse_output(text).source == "result"


def _label(value: Any, name: str, *, optional: bool) -> str | None:
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise InvalidInputError(f"{name} is missing for a row: every RL row needs a request_label")
    if isinstance(value, Verdict):
        return value.value
    if isinstance(value, str) and value.strip().lower() in ("harmful", "unharmful"):
        return value.strip().lower()
    raise InvalidInputError(f"unknown {name} {value!r}: allowed labels are 'harmful' and 'unharmful'")


def _request_ok(text: str, request_label: str) -> bool:
    parsed = parse_output(text, lenient=True)  # accuracy apart from format: I_format scores the structure
    return parsed.request is not None and parsed.request.value == request_label


def _response_ok(text: str, response_label: str | None) -> bool:
    parsed = parse_output(text, lenient=True)
    if response_label is None:
        # No response in the prompt: "Response: None" or "unharmful" is right (the parser reads both as unharmful).
        return parsed.response is Verdict.UNHARMFUL
    return parsed.response is not None and not parsed.response_said_none and parsed.response.value == response_label


def length_aware_reward(r_safety: float, l_norm: float, beta: float) -> float:
    """``(r_safety - 1) / min(l_norm, beta)^2``.

    Example:
        >>> length_aware_reward(0.5, 0.5, 1.0)
        -2.0
    """
    if not 0 < l_norm <= 1:
        raise InvalidInputError(f"l_norm must be in (0, 1], got {l_norm}")
    if not 0 < beta <= 1:
        raise InvalidInputError(f"beta must be in (0, 1], got {beta}")
    return (r_safety - 1.0) / min(l_norm, beta) ** 2


@dataclass(frozen=True, slots=True)
class RewardBreakdown:
    """Every part of the reward of one completion.

    Attributes:
        format: the format indicator I_format (0 or 1).
        request_correct: the request verdict equals the label.
        response_correct: the response verdict equals the label (see the module note for rows without one).
        r_safety: ``format * (0.5 * request_correct + 0.5 * response_correct)``.
        length: the completion length in the reward's unit (before flooring at 1).
        l_norm: the normalised length in ``(0, 1]``.
        reward: the final reward.
    """

    format: float
    request_correct: bool
    response_correct: bool
    r_safety: float
    length: float
    l_norm: float
    reward: float


def score_completion(
    text: str,
    *,
    request_label: str,
    response_label: str | None,
    length: float,
    beta: float = 1.0,
    max_length: int = 3072,
) -> RewardBreakdown:
    """Score one completion whose length (in the reward's unit) is already known.

    Example:
        >>> score_completion("<think>ok</think><result>Request: harmful\\nResponse: None</result>",
        ...                  request_label="harmful", response_label=None, length=10).reward
        0.0
    """
    request = _label(request_label, "request_label", optional=False) or ""
    response = _label(response_label, "response_label", optional=True)
    fmt = 1.0 if format_ok(text) else 0.0
    request_ok, response_ok = _request_ok(text, request), _response_ok(text, response)
    r_safety = fmt * (0.5 * request_ok + 0.5 * response_ok)
    l_norm = min(max(float(length), 1.0), float(max_length)) / max_length
    return RewardBreakdown(
        fmt, request_ok, response_ok, r_safety, float(length), l_norm, length_aware_reward(r_safety, l_norm, beta)
    )


def _column(kwargs: dict[str, Any], name: str, n: int, *, required: bool) -> list[Any]:
    values = kwargs.get(name)
    if values is None:
        if required:
            raise InvalidInputError(
                f"the reward needs a {name!r} dataset column "
                "(build rows with guardreasoner_vl.training.data.to_rl_record)"
            )
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise InvalidInputError(f"{name} has {len(values)} values for {n} completions")
    return values


def _lengths(texts: Sequence[str], completion_ids: Sequence[Any] | None, unit: LengthUnit) -> list[float]:
    global _warned_fallback
    if unit == "chars":
        return [float(len(t)) for t in texts]
    if completion_ids is not None:
        if len(completion_ids) != len(texts):
            raise InvalidInputError(f"{len(completion_ids)} completion_ids for {len(texts)} completions")
        return [float(len(ids)) for ids in completion_ids]
    if not _warned_fallback:
        logger.warning(
            "length-aware reward: no completion_ids given; measuring length as characters / %d",
            CHARS_PER_TOKEN_FALLBACK,
        )
        _warned_fallback = True
    return [len(t) / CHARS_PER_TOKEN_FALLBACK for t in texts]


class LengthAwareSafetyReward:
    """The GuardReasoner-VL RL reward as a TRL reward function (picklable, named).

    Args:
        beta: length cap: 1.0 for the standard models, :data:`ECO_BETA` (1/6) for Eco.
        max_length: the length that normalises to 1 (the maximum completion length, 3072 in the paper).
        unit: ``"tokens"`` (from TRL's ``completion_ids``) or ``"chars"`` (the released code's unit).
        name: the name TRL logs it under (default ``length_aware_safety_reward``, ``..._eco`` for beta 1/6,
            ``safety_reward`` without the length term).
        length_aware: False: the reward is r_safety alone, in [0, 1] (ablation "w/o length-aware reward").

    Example:
        >>> reward = LengthAwareSafetyReward(beta=1.0, max_length=100)
        >>> good = "<think>a question about bread</think><result>Request: unharmful\\nResponse: None</result>"
        >>> reward(completions=[good, "no idea"], completion_ids=[[0] * 50, [0] * 50],
        ...        request_label=["unharmful", "unharmful"], response_label=[None, None])
        [0.0, -4.0]
    """

    def __init__(
        self,
        *,
        beta: float = 1.0,
        max_length: int = 3072,
        unit: LengthUnit = "tokens",
        name: str | None = None,
        length_aware: bool = True,
    ) -> None:
        if not 0 < beta <= 1:
            raise InvalidInputError(f"beta must be in (0, 1] (1 standard, 1/6 Eco), got {beta}")
        if not isinstance(max_length, int) or max_length < 1:
            raise InvalidInputError(f"max_length must be a positive integer, got {max_length!r}")
        if unit not in ("tokens", "chars"):
            raise InvalidInputError(f"unit must be 'tokens' or 'chars', got {unit!r}")
        self.beta = float(beta)
        self.max_length = max_length
        self.unit: LengthUnit = unit
        self.length_aware = bool(length_aware)
        default = "length_aware_safety_reward" if beta == 1.0 else "length_aware_safety_reward_eco"
        self.__name__ = name or (default if self.length_aware else "safety_reward")

    def __repr__(self) -> str:
        plain = "" if self.length_aware else ", length_aware=False"
        return f"LengthAwareSafetyReward(beta={self.beta:g}, max_length={self.max_length}, unit={self.unit!r}{plain})"

    def breakdown(
        self, completions: Sequence[Any], completion_ids: Sequence[Any] | None = None, **kwargs: Any
    ) -> list[RewardBreakdown]:
        """Every part of the reward for each completion (same arguments as a call)."""
        texts = [completion_text(c) for c in completions]
        requests = _column(kwargs, "request_label", len(texts), required=True)
        responses = _column(kwargs, "response_label", len(texts), required=False)
        lengths = _lengths(texts, completion_ids, self.unit)
        return [
            score_completion(
                t, request_label=rq, response_label=rs, length=n, beta=self.beta, max_length=self.max_length
            )
            for t, rq, rs, n in zip(texts, requests, responses, lengths, strict=True)
        ]

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] = (),
        completion_ids: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        parts = self.breakdown(completions, completion_ids, **kwargs)
        log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
        if log_metric is not None and parts:
            n = len(parts)
            log_metric("length_aware/format", sum(p.format for p in parts) / n)
            log_metric("length_aware/request_acc", sum(p.request_correct for p in parts) / n)
            log_metric("length_aware/response_acc", sum(p.response_correct for p in parts) / n)
            log_metric("length_aware/l_norm", sum(p.l_norm for p in parts) / n)
        return [p.reward if self.length_aware else p.r_safety for p in parts]


def format_reward(
    prompts: Any = None, completions: Sequence[Any] = (), completion_ids: Any = None, **kwargs: Any
) -> list[float]:
    """1.0 when a completion has the ``<think>...</think><result>...</result>`` format, else 0.0 (for logging)."""
    return [1.0 if format_ok(completion_text(c)) else 0.0 for c in completions]


def request_accuracy_reward(
    prompts: Any = None, completions: Sequence[Any] = (), completion_ids: Any = None, **kwargs: Any
) -> list[float]:
    """1.0 when the request verdict equals the row's ``request_label`` (format not required), else 0.0."""
    texts = [completion_text(c) for c in completions]
    labels = _column(kwargs, "request_label", len(texts), required=True)
    out = []
    for text, label in zip(texts, labels, strict=True):
        out.append(1.0 if _request_ok(text, _label(label, "request_label", optional=False) or "") else 0.0)
    return out


def response_accuracy_reward(
    prompts: Any = None, completions: Sequence[Any] = (), completion_ids: Any = None, **kwargs: Any
) -> list[float]:
    """1.0 when the response verdict is right for the row's ``response_label`` (format not required), else 0.0."""
    texts = [completion_text(c) for c in completions]
    labels = _column(kwargs, "response_label", len(texts), required=False)
    return [
        1.0 if _response_ok(text, _label(label, "response_label", optional=True)) else 0.0
        for text, label in zip(texts, labels, strict=True)
    ]


def reward_functions(
    *, eco: bool = False, max_length: int = 3072, unit: LengthUnit = "tokens", components: bool = True
) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """The reward functions and weights to give ``GRPOTrainer`` (``reward_funcs=``, ``GRPOConfig(reward_weights=)``).

    Returns:
        ``([main, format, request_acc, response_acc], [1, 0, 0, 0])``; only the main reward with ``components=False``.

    Example:
        >>> funcs, weights = reward_functions(eco=True)
        >>> [getattr(f, "__name__") for f in funcs]
        ['length_aware_safety_reward_eco', 'format_reward', 'request_accuracy_reward', 'response_accuracy_reward']
        >>> weights
        [1.0, 0.0, 0.0, 0.0]
    """
    main = LengthAwareSafetyReward(beta=ECO_BETA if eco else 1.0, max_length=max_length, unit=unit)
    if not components:
        return [main], [1.0]
    return [main, format_reward, request_accuracy_reward, response_accuracy_reward], [1.0, 0.0, 0.0, 0.0]
