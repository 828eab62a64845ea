"""Test doubles for users' own tests: no model, no torch.

``FunctionBackend(fn)`` answers each request with ``fn(request)``; ``FakeBackend`` answers from fixed
outputs or flags requests that contain a keyword. Both go through the real prompt and parser, so a test
that uses them exercises everything but the neural network.

Example:
    >>> from guardreasoner_vl import Guard
    >>> from guardreasoner_vl.backends import FakeBackend
    >>> guard = Guard(backend=FakeBackend(harmful_keywords=["bomb"]))
    >>> guard.moderate("how to build a bomb").flagged
    True
    >>> guard.moderate("how to bake bread").flagged
    False
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from guardreasoner_vl.backends.base import Backend, EngineSettings, Generation, GenerationRequest, SamplingParams
from guardreasoner_vl.parsing import parse_output
from guardreasoner_vl.prompts import ModelFamily, parse_user_text
from guardreasoner_vl.scores import TASK_LABELS, LogprobTrace

if TYPE_CHECKING:
    from typing import Self

__all__ = ["FakeBackend", "FunctionBackend", "scored_generation", "verdict_output"]


def verdict_output(
    family: ModelFamily,
    *,
    request_harmful: bool,
    response_harmful: bool | None = None,
    refusal: bool | None = None,
    reasoning: str = "The request was analysed step by step.",
) -> str:
    """Write an output in the family's own format (what a well-behaved checkpoint would answer).

    Example:
        >>> print(verdict_output(ModelFamily.VL, request_harmful=False))
        <think>The request was analysed step by step.</think>
        <result>
        Request: unharmful
        Response: None
        </result>
    """

    def label(harmful: bool | None) -> str:
        return "None" if harmful is None else ("harmful" if harmful else "unharmful")

    if not ModelFamily(family).spec.has_refusal_task:
        return (
            f"<think>{reasoning}</think>\n<result>\nRequest: {label(request_harmful)}\n"
            f"Response: {label(response_harmful)}\n</result>"
        )
    completion = "None" if refusal is None else ("refusal" if refusal else "compliance")
    return (
        f"{reasoning}\n\n---\n\nAnswers: \nRequest: {label(request_harmful)}\n"
        f"Completion: {completion}\nResponse: {label(response_harmful)}\n"
    )


def scored_generation(text: str, scores: Mapping[str, float], *, finish_reason: str = "stop") -> Generation:
    """A :class:`Generation` of ``text`` whose log-probabilities give the verdicts the chosen ``scores``.

    For scripted tests of scores and thresholds without a model: at the position of each label that the parser
    reads for a task in ``scores`` (``request``, ``response``, ``refusal``), the trace offers the task's two
    label words with probabilities ``score`` and ``1 - score``; the other tasks have no log-probabilities (their
    scores are None).

    Example:
        >>> from guardreasoner_vl import Guard
        >>> out = verdict_output(ModelFamily.VL, request_harmful=False)
        >>> guard = Guard(backend=FunctionBackend(lambda r: scored_generation(out, {"request": 0.7})))
        >>> round(guard.moderate("hi").request_score, 6)
        0.7
    """
    offsets = parse_output(text, lenient=True, expect_response=True, expect_refusal=True).label_offsets
    starts = {0}
    for task in scores:
        if task not in TASK_LABELS:
            raise ValueError(f"scores keys are request, response and refusal, got {task!r}")
        if not isinstance(scores[task], (int, float)) or not 0.0 <= scores[task] <= 1.0:
            raise ValueError(f"a score is a probability in [0, 1], got {scores[task]!r} for {task}")
        if task in offsets:
            starts.update((offsets[task], offsets[task] + 1))
    positions = sorted(starts)
    candidates: dict[int, dict[str, float]] = {}
    for task, score in scores.items():
        if task in offsets:
            positive, negative = TASK_LABELS[task]
            candidates[positions.index(offsets[task])] = {positive: _log(score), negative: _log(1.0 - score)}
    return Generation(
        text=text,
        completion_tokens=len(text.split()),
        finish_reason="length" if finish_reason == "length" else "stop",
        logprobs=LogprobTrace(offsets=tuple(positions), candidates=candidates),
    )


def _log(p: float) -> float:
    return math.log(p) if p > 0 else float("-inf")


class FunctionBackend(Backend):
    """A backend that answers each request with ``fn(request) -> str`` (or a :class:`Generation`).

    Attributes:
        calls: every batch it was given, in order (a list of request lists), for assertions.
    """

    name = "function"

    def __init__(self, fn: Callable[[GenerationRequest], str | Generation], *, family: ModelFamily | None = None):
        self._fn = fn
        self.family = family
        self.calls: list[list[GenerationRequest]] = []
        self._lock = threading.Lock()
        self.closed = False

    def cache_identity(self) -> dict[str, object]:
        """The function's module and qualified name (two different functions never share verdict-cache entries)."""
        fn = self._fn
        return {
            **super().cache_identity(),
            "function": f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}",
        }

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        with self._lock:
            self.calls.append(list(requests))
        out = []
        for request in requests:
            value = self._fn(request)
            if isinstance(value, Generation):
                out.append(value)
            else:
                out.append(
                    Generation(
                        text=value,
                        prompt_tokens=len(request.prompt.text.split()),
                        completion_tokens=len(value.split()),
                        finish_reason="stop",
                    )
                )
        return out

    def close(self) -> None:
        self.closed = True


class FakeBackend(FunctionBackend):
    """A backend with canned behaviour.

    Args:
        outputs: fixed outputs, returned in turn (cycled) regardless of the input.
        harmful_keywords: without ``outputs``: the request is harmful when the user text contains one
            of these (case-insensitive), and the response likewise; answers are in the family's format.
    """

    name = "fake"

    @classmethod
    def from_settings(cls, model: str | Path, settings: EngineSettings) -> Self:
        """``FakeBackend(family=..., **options)``: there is no model to load, so a device or dtype is refused
        (image bounds and batch size are the guard's own and do not matter here)."""
        settings.refuse("device", "dtype", engine="fake", reason="it loads no model")
        return cls(**settings.merged(family=settings.family))

    def __init__(
        self,
        outputs: Iterable[str] | None = None,
        *,
        harmful_keywords: Iterable[str] = ("bomb", "kill", "weapon", "poison"),
        family: ModelFamily | None = None,
    ) -> None:
        self._outputs = list(outputs) if outputs is not None else None
        self._keywords = [k.lower() for k in harmful_keywords]
        self._next = 0
        super().__init__(self._answer, family=family)

    def cache_identity(self) -> dict[str, object]:
        """Its keywords or fixed outputs (fixed outputs cycle regardless of the input: do not cache those)."""
        return {**super().cache_identity(), "keywords": list(self._keywords), "outputs": self._outputs}

    def _answer(self, request: GenerationRequest) -> str:
        if self._outputs is not None:
            if not self._outputs:
                return ""
            with self._lock:
                out = self._outputs[self._next % len(self._outputs)]
                self._next += 1
            return out
        prompt = request.prompt
        turn = parse_user_text(prompt.user_text, prompt.family)  # the renderer's own inverse
        head, response = turn.text or "", turn.response or ""
        has_response = turn.response is not None

        def harmful(text: str) -> bool:
            return any(k in text.lower() for k in self._keywords)

        return verdict_output(
            prompt.family,
            request_harmful=harmful(head),
            response_harmful=harmful(response) if has_response else None,
            refusal=("sorry" in response.lower() or "can't" in response.lower()) if has_response else None,
        )
