"""The one verdict parser of the project (used by Guard, evaluation and the RL rewards).

It reads both output styles (reference section 4):

* VL models: ``<think> ... </think> <result> Request: harmful  Response: unharmful </result>``
* text models: reasoning, then ``Answers: \\nRequest: harmful\\nCompletion: refusal\\nResponse: unharmful``

Where it looks, for each key (``Request:``, ``Response:``, ``Completion:``) on its own: the last
``<result>`` block (an unclosed one at the end counts), then what follows the last ``Answers:`` (or an
``# Answers`` heading line), then the whole output. The first of these regions that holds the key is used,
and inside it the *last* match wins, because the reasoning before the answer can itself say
"Request: harmful". (Real 1B outputs sometimes write one ``Answers:`` block per task, so the keys of one
answer can sit in different blocks.) Matching is case-insensitive; ``none`` and ``harmless`` mean unharmful.
Output without the verdicts that were asked for is a parse failure with a reason, never "safe".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from guardreasoner_vl.types import RefusalVerdict, Verdict

__all__ = ["ParsedOutput", "parse_output"]

Source = Literal["result", "answers", "anywhere"]

_RESULT_BLOCK = re.compile(r"<result>(.*?)(?:</result>|\Z)", re.IGNORECASE | re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>(.*?)(?:</think>|(?=<result>)|\Z)", re.IGNORECASE | re.DOTALL)
# "Answers:" (the trained layout) or a heading such as "# Answers" on a line of its own.
_ANSWERS = re.compile(r"^[ \t#*_]*answers?[ \t*_]*(?::|$)", re.IGNORECASE | re.MULTILINE)
_KEY_PREFIX = r"(?<![a-z])"  # "Request:" but not "subrequest:"
_DECOR = r"[\s*_`#]*"  # markdown decoration such as **Request:** harmful
_HARM_LABELS = r"(unharmful|harmful|harmless|none)"
_REQUEST = re.compile(_KEY_PREFIX + r"request" + _DECOR + ":" + _DECOR + _HARM_LABELS + r"\b", re.IGNORECASE)
_RESPONSE = re.compile(_KEY_PREFIX + r"response" + _DECOR + ":" + _DECOR + _HARM_LABELS + r"\b", re.IGNORECASE)
_COMPLETION = re.compile(
    _KEY_PREFIX + r"completion" + _DECOR + ":" + _DECOR + r"(refusal|compliance|none)\b", re.IGNORECASE
)

_HARM = {
    "harmful": Verdict.HARMFUL,
    "unharmful": Verdict.UNHARMFUL,
    "harmless": Verdict.UNHARMFUL,
    "none": Verdict.UNHARMFUL,
}
_REFUSAL = {"refusal": RefusalVerdict.REFUSAL, "compliance": RefusalVerdict.COMPLIANCE}


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    """What :func:`parse_output` read.

    Attributes:
        request: the request verdict, or None if not found.
        response: the response verdict, or None if not found (``Response: None`` reads as unharmful).
        refusal: refusal or compliance (text family), None if absent or ``Completion: None``.
        response_said_none: the model wrote ``Response: None`` (it saw no response).
        reasoning: the reasoning text (the ``<think>`` block, or what precedes the answers).
        source: which region the verdicts came from, or None when nothing was found.
        error: why the output could not be judged, or None when every expected verdict was found.
    """

    request: Verdict | None
    response: Verdict | None
    refusal: RefusalVerdict | None
    response_said_none: bool
    reasoning: str
    source: Source | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    found = None
    for found_match in pattern.finditer(text):
        found = found_match.group(1).lower()
    return found


def _regions(text: str) -> list[tuple[Source, str, int]]:
    """Candidate regions (source, text, start offset), most preferred first."""
    regions: list[tuple[Source, str, int]] = []
    blocks = list(_RESULT_BLOCK.finditer(text))
    if blocks:
        last = blocks[-1]
        regions.append(("result", last.group(1), last.start()))
    answers = list(_ANSWERS.finditer(text))
    if answers:
        regions.append(("answers", text[answers[-1].end() :], answers[-1].start()))
    regions.append(("anywhere", text, len(text)))
    return regions


def _reasoning(text: str, answer_start: int) -> str:
    thinks = list(_THINK_BLOCK.finditer(text))
    if thinks:
        return thinks[-1].group(1).strip()
    head = text[:answer_start].rstrip()
    if head.endswith("---"):
        head = head[:-3]
    return head.strip()


def parse_output(text: str, *, expect_response: bool = False, expect_refusal: bool = False) -> ParsedOutput:
    """Read the verdicts from a guard model's output.

    Args:
        text: what the model generated.
        expect_response: a response was moderated, so a ``Response:`` verdict is required.
        expect_refusal: a ``Completion:`` (refusal/compliance) verdict is required.

    Returns:
        A :class:`ParsedOutput`; ``error`` says what was missing when it is not ``ok``.

    Example:
        >>> p = parse_output("<think>a recipe</think><result>Request: unharmful\\nResponse: None</result>")
        >>> p.request.value, p.source, p.ok
        ('unharmful', 'result', True)
        >>> parse_output("I cannot decide.").error
        'no Request verdict found in the output'
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_output expects a str, got {type(text).__name__}")
    if not text.strip():
        return ParsedOutput(None, None, None, False, "", None, "the output is empty")

    regions = _regions(text)

    def find(pattern: re.Pattern[str]) -> tuple[str | None, Source | None, int]:
        for name, body, start in regions:
            label = _last(pattern, body)
            if label is not None:
                return label, name, start
        return None, None, len(text)

    request, source, region_start = find(_REQUEST)
    response, _, _ = find(_RESPONSE)
    completion, _, _ = find(_COMPLETION)

    errors = []
    if request is None:
        errors.append("no Request verdict found in the output")
    if expect_response and response is None:
        errors.append("no Response verdict found in the output")
    if expect_refusal and completion is None:
        errors.append("no Completion (refusal/compliance) verdict found in the output")
    return ParsedOutput(
        request=_HARM.get(request) if request else None,
        response=_HARM.get(response) if response else None,
        refusal=_REFUSAL.get(completion) if completion else None,
        response_said_none=response == "none",
        reasoning=_reasoning(text, region_start),
        source=source,
        error="; ".join(errors) or None,
    )
