"""Verdict scores: the model's own probability for each verdict it states.

The model writes its verdicts as words (``Request: harmful``). Its probability for a verdict is read from
the next-token distribution at the position where it wrote the label, with no second forward pass:
every engine reports, for the generated tokens, where each token starts in the output and the
log-probabilities of some candidate tokens at that position (:class:`LogprobTrace`), and the core reads
the score from it with one rule, the same for every engine.

**The rule.** For a verdict whose label (as the parser read it) starts at character ``p`` of the output:

1. the label's position is the generated token that holds character ``p`` (the first character of the
   label); ``prefix`` is the text that token writes before ``p`` (often a space: Qwen's and Llama 3's
   vocabularies write ``" harmful"`` as one token);
2. a candidate token at that position *speaks for* a label word ``w`` when it writes ``prefix`` and then
   ``rest``, where ``rest`` is a non-empty beginning of ``w`` (``" un"`` for ``unharmful``, ``" harm"``
   for ``harmful``) or ``w`` itself followed by a non-letter (``" harmful."``); case is ignored;
3. the competing labels are the pair the model was trained to choose between: ``harmful`` / ``unharmful``
   for ``Request:`` and ``Response:``, ``refusal`` / ``compliance`` for ``Completion:``. No token speaks
   for both words of a pair (their first letters differ), so the first token decides the label;
4. the score is ``P(positive) / (P(positive) + P(negative))``, the probability of the tokens that speak
   for the positive word (``harmful``; ``refusal``) normalised over the tokens that speak for either.

A score is ``None`` -- never a made-up number -- when the engine reported no log-probabilities (a server
without ``logprobs``, a test double), when the label that was read is not one of the trained pair
(``harmless``, ``none``), or when no reported candidate speaks for either word. Engines that report only
the top-k tokens of a position (vLLM, remote servers) leave out candidates below the k-th; they count as 0,
an error of at most the k-th probability per candidate. The transformers engine reports every candidate
of the vocabulary (see :func:`is_label_candidate`).

Example:
    >>> text = "<result>\\nRequest: harmful\\n</result>"
    >>> start = text.index(" harmful")
    >>> trace = LogprobTrace(
    ...     offsets=(0, 9, start, start + 8),
    ...     candidates={2: {" harmful": math.log(0.6), " un": math.log(0.2), " the": math.log(0.2)}},
    ... )
    >>> round(verdict_score(text, start + 1, "request", trace), 6)
    0.75
"""

from __future__ import annotations

import bisect
import codecs
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "TASK_LABELS",
    "LogprobTrace",
    "add_logprobs",
    "char_offsets",
    "is_label_candidate",
    "label_side",
    "verdict_score",
    "verdict_scores",
]

TASK_LABELS: dict[str, tuple[str, str]] = {
    "request": ("harmful", "unharmful"),
    "response": ("harmful", "unharmful"),
    "refusal": ("refusal", "compliance"),
}
"""The label pair of each task, positive first (the score is the positive label's probability)."""

_LETTERS = re.compile(r"[A-Za-z]+")
_WORDS: tuple[str, ...] = tuple(sorted({w for pair in TASK_LABELS.values() for w in pair}))


@dataclass(frozen=True, slots=True)
class LogprobTrace:
    """Where each generated token starts in the output, and candidate log-probabilities at some positions.

    Attributes:
        offsets: for each generated token, the character offset in the generated text where it starts
            (non-decreasing; a token that writes nothing, such as a special token, has the next one's offset).
        candidates: position (index into ``offsets``) -> {token text: log-probability} of the candidate
            tokens the engine reported there. Only positions where a label can start need to be present
            (engines keep the positions whose chosen token :func:`is_label_candidate`). The values may be
            log-probabilities up to a constant of the position (the transformers engine keeps raw logits): a
            score only compares candidates of one position, so such a constant cancels.
    """

    offsets: tuple[int, ...]
    candidates: Mapping[int, Mapping[str, float]] = field(default_factory=dict)

    def position(self, char: int) -> int | None:
        """The index of the token that holds character ``char``, or None when it is outside the output."""
        if not self.offsets or char < self.offsets[0]:
            return None
        return bisect.bisect_right(self.offsets, char) - 1


def _speaks(rest: str, word: str) -> bool:
    rest = rest.lower()
    if not rest:
        return False
    if len(rest) <= len(word):
        return word.startswith(rest)
    return rest.startswith(word) and not rest[len(word)].isalpha()


@functools.lru_cache(maxsize=65536)
def label_side(rest: str, task: str) -> int | None:
    """0 when ``rest`` (a candidate's text after the prefix) speaks for the task's positive word, 1 for the
    negative word, None for neither.

    Example:
        >>> label_side(" un"[1:], "request"), label_side("harm", "request"), label_side("the", "request")
        (1, 0, None)
    """
    positive, negative = TASK_LABELS[task]
    if _speaks(rest, positive):
        return 0
    if _speaks(rest, negative):
        return 1
    return None


def is_label_candidate(token_text: str) -> bool:
    """Whether a token can start a label: after its leading non-letters, it speaks for some label word.

    Engines use it to pick which vocabulary entries to record at every step (transformers) or which
    positions to keep (vLLM, remote).

    Example:
        >>> [is_label_candidate(t) for t in (" harm", "Un", ": refusal", " the", "harmfulness", "")]
        [True, True, True, False, False, False]
    """
    index = 0
    while index < len(token_text) and not token_text[index].isalpha():
        index += 1
    rest = token_text[index:]
    return any(_speaks(rest, word) for word in _WORDS)


def add_logprobs(a: float, b: float) -> float:
    """``log(exp(a) + exp(b))``: two tokens that write the same text add up as one candidate."""
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high)) if math.isfinite(low) else high


def verdict_score(text: str, label_offset: int, task: str, trace: LogprobTrace) -> float | None:
    """The positive label's probability for the verdict of ``task`` whose label starts at ``label_offset``.

    See the module docs for the rule; None when it cannot be read.
    """
    label = _LETTERS.match(text, label_offset)
    if label is None or label.group(0).lower() not in TASK_LABELS[task]:
        return None  # the label read is not one of the trained pair ("harmless", "none")
    index = trace.position(label_offset)
    if index is None:
        return None
    candidates = trace.candidates.get(index)
    if not candidates:
        return None
    prefix = text[trace.offsets[index] : label_offset]
    sides: tuple[list[float], list[float]] = ([], [])
    for token, logprob in candidates.items():
        if not token.startswith(prefix) or not math.isfinite(logprob):
            continue
        side = label_side(token[len(prefix) :], task)
        if side is not None:
            sides[side].append(logprob)
    if not sides[0] and not sides[1]:
        return None
    top = max(sides[0] + sides[1])
    mass = [sum(math.exp(lp - top) for lp in values) for values in sides]
    return mass[0] / (mass[0] + mass[1])


def verdict_scores(
    text: str, label_offsets: Mapping[str, int], trace: LogprobTrace | None, tasks: Sequence[str]
) -> dict[str, float | None]:
    """Scores of ``tasks`` (``request``, ``response``, ``refusal``) from the parser's label offsets."""
    out: dict[str, float | None] = dict.fromkeys(tasks)
    if trace is None:
        return out
    for task in tasks:
        offset = label_offsets.get(task)
        if offset is not None:
            out[task] = verdict_score(text, offset, task, trace)
    return out


def char_offsets(pieces: Sequence[bytes], text: str) -> tuple[int, ...] | None:
    """Character offset in ``text`` where each UTF-8 byte piece starts, or None when the pieces do not
    spell ``text`` (decoded together with invalid bytes replaced, as tokenizers decode).

    A piece that starts inside a multi-byte character gets that character's offset.

    Example:
        >>> char_offsets([b"a", "é".encode()[:1], "é".encode()[1:], b"b"], "aéb")
        (0, 1, 1, 2)
    """
    joined = b"".join(pieces)
    if joined.isascii():  # one byte, one character
        if len(joined) != len(text) or joined.decode("ascii") != text:
            return None
        position, starts = 0, []
        for piece in pieces:
            starts.append(position)
            position += len(piece)
        return tuple(starts)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    offsets: list[int] = []
    written = 0
    for piece in pieces:
        offsets.append(written)  # characters complete before this piece (an unfinished one starts here)
        written += len(decoder.decode(piece))
    written += len(decoder.decode(b"", final=True))
    if written != len(text) or joined.decode("utf-8", "replace") != text:
        return None
    return tuple(offsets)
