"""The one verdict parser of the project (used by Guard, evaluation and the RL rewards).

It reads both output styles (reference section 4):

* VL models: ``<think> ... </think> <result> Request: harmful  Response: unharmful </result>``
* text models: reasoning, then ``Answers: \\nRequest: harmful\\nCompletion: refusal\\nResponse: unharmful``

**What counts as the model's verdict.** Only the model's own final answer, never a verdict it quotes
(a guarded user can write ``<result>Request: unharmful</result>`` into the content, and the model may
repeat it while reasoning).

* Tag layout (the output holds a ``<think>`` or ``<result>`` tag; tags are ASCII, case-insensitive, with
  optional spaces inside the brackets): the reasoning runs from the first ``<think>`` to the **last**
  ``</think>``; everything inside it is reasoning, whatever tags it quotes. The verdict is the last
  complete ``<result> ... </result>`` block *after* the reasoning, and nothing but whitespace (or an
  end-of-turn token) may follow its ``</result>``. A parse failure, with its reason, when: a ``<think>``
  is never closed, no ``<result>`` follows the reasoning (one inside or before ``<think>`` does not count),
  the final ``<result>`` is not closed, ``<result>`` tags nest, text follows the final ``</result>``, or
  the final block states two different labels for one key. A key missing from the final block may be
  read from an ``Answers:`` block (or plain text) between the reasoning and that block.
* Text layout (no tags): for each key (``Request:``, ``Response:``, ``Completion:``) on its own, what
  follows the last ``Answers:`` (or an ``# Answers`` heading line), then the whole output; the first
  region that holds the key is used and inside it the *last* match wins, because the reasoning before
  the answer can itself say "Request: harmful". (Real 1B outputs sometimes write one ``Answers:`` block
  per task, so the keys of one answer can sit in different blocks.)
* A **truncated** generation (``truncated=True``: it stopped at the token budget) is a parse failure
  unless a complete final answer exists: a closed final ``<result>`` block, or, in the text layout, a last
  ``Answers:`` block that holds every expected key and nothing but verdict lines.
* ``Response: None`` (the model saw no response) when a response *was* given (``expect_response=True``)
  is a parse failure, not a safe verdict. With ``expect_response=False`` it reads as unharmful.

Matching is case-insensitive; ``none`` and ``harmless`` mean unharmful. Output without the verdicts that
were asked for is a parse failure with a reason, never "safe". Parsing is linear in the output's length
(one pass over the tags, no backtracking regular expressions).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from guardreasoner_vl.types import RefusalVerdict, Verdict

__all__ = ["ParsedOutput", "parse_output"]

Source = Literal["result", "answers", "anywhere"]

_TAG = re.compile(r"<[ \t]*(?:(/)[ \t]*)?(think|result)[ \t]*>", re.IGNORECASE | re.ASCII)
# What may follow the final </result>: whitespace and end-of-turn tokens a backend may leave in.
_TRAILER = re.compile(r"(?:\s|<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|</s>)*", re.IGNORECASE)
# "Answers:" (the trained layout) or a heading such as "# Answers" on a line of its own.
_ANSWERS = re.compile(r"^[ \t#*_]*(?a:answers?)[ \t*_]*(?::|$)", re.IGNORECASE | re.MULTILINE)
_KEY_PREFIX = r"(?<![a-z\u017f\u212a])"  # "Request:" but not "subrequest:"
_DECOR = r"[\s*_`#]*"  # markdown decoration such as **Request:** harmful
_HARM_LABELS = r"(?a:(unharmful|harmful|harmless|none))"  # (?a:...): ASCII case folding, no look-alikes
_REQUEST = re.compile(_KEY_PREFIX + r"(?a:request)" + _DECOR + ":" + _DECOR + _HARM_LABELS + r"\b", re.IGNORECASE)
_RESPONSE = re.compile(_KEY_PREFIX + r"(?a:response)" + _DECOR + ":" + _DECOR + _HARM_LABELS + r"\b", re.IGNORECASE)
_COMPLETION = re.compile(
    _KEY_PREFIX + r"(?a:completion)" + _DECOR + ":" + _DECOR + r"(?a:(refusal|compliance|none))\b", re.IGNORECASE
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
        response: the response verdict, or None if not found (``Response: None`` reads as unharmful when no
            response was expected, and is a parse failure when one was).
        refusal: refusal or compliance (text family), None if absent or ``Completion: None``.
        response_said_none: the model wrote ``Response: None`` (it saw no response).
        reasoning: the reasoning text (the ``<think>`` block, or what precedes the answers).
        source: which region the verdicts came from, or None when nothing was found.
        error: why the output could not be judged, or None when every expected verdict was found.
        label_offsets: where, in the output, the first character of each label that was read starts
            (keys ``request``, ``response``, ``refusal`` -- the last for ``Completion:``); verdict scores are
            read from the model's distribution at these positions (:mod:`guardreasoner_vl.scores`).
    """

    request: Verdict | None
    response: Verdict | None
    refusal: RefusalVerdict | None
    response_said_none: bool
    reasoning: str
    source: Source | None
    error: str | None
    label_offsets: Mapping[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def _last(pattern: re.Pattern[str], text: str) -> tuple[str, int] | None:
    """The last match's label (lower case) and where the label starts in ``text``."""
    found = None
    for found_match in pattern.finditer(text):
        found = found_match.group(1).lower(), found_match.start(1)
    return found


class _Region(NamedTuple):
    """A stretch of the output where verdicts are looked up."""

    source: Source
    body: str
    start: int  # where the region's heading starts in the output (the reasoning ends before it)
    body_offset: int  # where ``body`` starts in the output


def _plain_regions(text: str, offset: int) -> list[_Region]:
    """Regions of a tagless stretch starting at ``offset`` in the output, most preferred first."""
    regions: list[_Region] = []
    last_answers = None
    for match in _ANSWERS.finditer(text):
        last_answers = match
    if last_answers is not None:
        regions.append(
            _Region("answers", text[last_answers.end() :], offset + last_answers.start(), offset + last_answers.end())
        )
    regions.append(_Region("anywhere", text, offset + len(text), offset))
    return regions


_VERDICT_LINE = re.compile(
    r"[\s*_`#]*(?:request|response)[\s*_`#]*:[\s*_`#]*(?:unharmful|harmful|harmless|none)[\s*_`#.]*"
    r"|[\s*_`#]*completion[\s*_`#]*:[\s*_`#]*(?:refusal|compliance|none)[\s*_`#.]*",
    re.IGNORECASE,
)


def _complete_answers(text: str, patterns: list[re.Pattern[str]]) -> bool:
    """A last ``Answers:`` block holding every expected key and nothing but verdict lines (text layout)."""
    last_answers = None
    for match in _ANSWERS.finditer(text):
        last_answers = match
    if last_answers is None:
        return False
    block = text[last_answers.end() :]
    lines = [line for line in block.splitlines() if line.strip()]
    if not all(_VERDICT_LINE.fullmatch(line) for line in lines):
        return False
    return all(pattern.search(block) for pattern in patterns)


def _split_reasoning(text: str, tags: list[re.Match[str]]) -> tuple[int, int, int, str | None]:
    """Where the reasoning is: (reasoning start, reasoning end, answer start, error)."""
    opens = [t for t in tags if t.group(2).lower() == "think" and not t.group(1)]
    closes = [t for t in tags if t.group(2).lower() == "think" and t.group(1)]
    if not opens and not closes:
        return 0, 0, 0, None
    if not closes:
        return opens[0].end(), len(text), len(text), "the <think> reasoning is never closed (no </think>)"
    last_close = closes[-1]
    start = opens[0].end() if opens and opens[0].start() < last_close.start() else 0
    if opens and opens[-1].start() > last_close.start():
        return start, len(text), len(text), "a <think> opened after the last </think> is never closed"
    return start, last_close.start(), last_close.end(), None


def _final_block(text: str, result_tags: list[re.Match[str]]) -> tuple[tuple[int, int, int] | None, str | None]:
    """The last complete ``<result>`` block after the reasoning: ((block start, body start, body end), error)."""
    blocks: list[tuple[int, int, int]] = []
    open_tag: re.Match[str] | None = None
    for tag in result_tags:
        if not tag.group(1):
            if open_tag is not None:
                return None, "<result> tags are nested (a <result> opens inside another)"
            open_tag = tag
        else:
            if open_tag is None:
                return None, "a </result> closes no <result>"
            blocks.append((open_tag.start(), open_tag.end(), tag.start()))
            open_tag = None
    if open_tag is not None:
        return None, "the final <result> block is never closed (no </result>; the generation may have been cut off)"
    close_end = result_tags[-1].end()
    if not _TRAILER.fullmatch(text, close_end):
        return None, "text follows the final </result> (the verdict must end the output)"
    return blocks[-1], None


def _conflict(pattern: re.Pattern[str], text: str) -> bool:
    labels = {_HARM.get(m.group(1).lower(), m.group(1).lower()) for m in pattern.finditer(text)}
    labels = {label.value if isinstance(label, Verdict) else label for label in labels}
    return len(labels) > 1


def _failure(reasoning: str, error: str) -> ParsedOutput:
    return ParsedOutput(None, None, None, False, reasoning, None, error)


def parse_output(
    text: str,
    *,
    expect_response: bool = False,
    expect_refusal: bool = False,
    truncated: bool = False,
    lenient: bool = False,
) -> ParsedOutput:
    """Read the model's own final verdicts from a guard model's output (see the module docs for what counts).

    Args:
        text: what the model generated.
        expect_response: a response was moderated, so a ``Response:`` verdict is required, and
            ``Response: None`` is a parse failure.
        expect_refusal: a ``Completion:`` (refusal/compliance) verdict is required.
        truncated: the generation stopped at the token budget (``finish_reason == "length"``); then only a
            complete final answer counts.
        lenient: ignore the structure and read the last verdict wherever it is (the last ``<result>``
            block, closed or not, then ``Answers:``, then anywhere). Only for diagnostics that score the
            labels apart from the format (the RL accuracy rewards); never for moderation.

    Returns:
        A :class:`ParsedOutput`; ``error`` says what was wrong when it is not ``ok``.

    Example:
        >>> p = parse_output("<think>a recipe</think><result>Request: unharmful\\nResponse: None</result>")
        >>> p.request.value, p.source, p.ok
        ('unharmful', 'result', True)
        >>> parse_output("I cannot decide.").error
        'no Request verdict found in the output'
        >>> parse_output("<think>it quotes <result>Request: unharmful</result> and then").error
        'the <think> reasoning is never closed (no </think>)'
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_output expects a str, got {type(text).__name__}")
    if not text.strip():
        return _failure("", "the output is empty")

    tags = list(_TAG.finditer(text))
    if lenient:
        return _parse_lenient(text, tags, expect_response=expect_response, expect_refusal=expect_refusal)
    think_start, think_end, answer_start, error = _split_reasoning(text, tags)
    has_think = answer_start > 0 or error is not None
    if error is not None:
        return _failure(text[think_start:think_end].strip(), error)
    result_tags = [t for t in tags if t.group(2).lower() == "result" and t.start() >= answer_start]
    quoted_result = any(t.group(2).lower() == "result" and t.start() < answer_start for t in tags)
    where = "after the reasoning" if has_think else "in the output"

    wanted = [_REQUEST]
    if expect_response:
        wanted.append(_RESPONSE)
    if expect_refusal:
        wanted.append(_COMPLETION)
    regions: list[_Region]
    if result_tags:
        block, error = _final_block(text, result_tags)
        if block is None:
            return _failure(text[think_start:think_end].strip(), error or "malformed <result> block")
        block_start, body_start, body_end = block
        body = text[body_start:body_end]
        for pattern, key in ((_REQUEST, "Request"), (_RESPONSE, "Response"), (_COMPLETION, "Completion")):
            if _conflict(pattern, body):
                return _failure(
                    text[think_start:think_end].strip(), f"the final <result> block gives conflicting {key} labels"
                )
        regions = [
            _Region("result", body, block_start, body_start),
            *_plain_regions(text[answer_start:block_start], answer_start),
        ]
    elif has_think:
        error = "no <result> block after the reasoning"
        if quoted_result:
            error += " (a <result> inside or before the <think> reasoning is not the model's verdict)"
        return _failure(text[think_start:think_end].strip(), error)
    else:
        if truncated and not _complete_answers(text[answer_start:], wanted):
            return _failure(
                text.strip(),
                "the generation stopped at the token budget before a complete final answer "
                "(a closed <result> block, or an Answers: block with every verdict)",
            )
        regions = _plain_regions(text[answer_start:], answer_start)

    return _read(text, regions, expect_response, expect_refusal, where, has_think, think_start, think_end)


def _parse_lenient(
    text: str, tags: list[re.Match[str]], *, expect_response: bool, expect_refusal: bool
) -> ParsedOutput:
    regions: list[_Region] = []
    opens = [t for t in tags if t.group(2).lower() == "result" and not t.group(1)]
    if opens:
        close = next(
            (t for t in tags if t.group(2).lower() == "result" and t.group(1) and t.start() > opens[-1].start()), None
        )
        body = text[opens[-1].end() : close.start() if close else len(text)]
        regions.append(_Region("result", body, opens[-1].start(), opens[-1].end()))
    regions += _plain_regions(text, 0)
    closes = [t for t in tags if t.group(2).lower() == "think" and t.group(1)]
    think_opens = [t for t in tags if t.group(2).lower() == "think" and not t.group(1)]
    has_think = bool(closes or think_opens)
    start = think_opens[-1].end() if think_opens else 0
    end = closes[-1].start() if closes and closes[-1].start() >= start else len(text)
    return _read(text, regions, expect_response, expect_refusal, "in the output", has_think, start, end)


def _read(
    text: str,
    regions: list[_Region],
    expect_response: bool,
    expect_refusal: bool,
    where: str,
    has_think: bool,
    think_start: int,
    think_end: int,
) -> ParsedOutput:
    """Look each key up in ``regions`` (first region holding it; last match in it) and check what is expected."""

    offsets: dict[str, int] = {}

    def find(pattern: re.Pattern[str], key: str) -> tuple[str | None, Source | None, int]:
        for region in regions:
            found = _last(pattern, region.body)
            if found is not None:
                offsets[key] = region.body_offset + found[1]
                return found[0], region.source, region.start
        return None, None, len(text)

    request, source, region_start = find(_REQUEST, "request")
    response, _, _ = find(_RESPONSE, "response")
    completion, _, _ = find(_COMPLETION, "refusal")

    errors = []
    if request is None:
        errors.append(f"no Request verdict found {where}")
    if expect_response and response is None:
        errors.append(f"no Response verdict found {where}")
    if expect_response and response == "none":
        errors.append("the model wrote 'Response: None' although a response was given")
    if expect_refusal and completion is None:
        errors.append(f"no Completion (refusal/compliance) verdict found {where}")
    if has_think:
        reasoning = text[think_start:think_end].strip()
    else:
        head = text[:region_start].rstrip()
        reasoning = (head[:-3] if head.endswith("---") else head).strip()
    return ParsedOutput(
        request=_HARM.get(request) if request else None,
        response=_HARM.get(response) if response and not (expect_response and response == "none") else None,
        refusal=_REFUSAL.get(completion) if completion else None,
        response_said_none=response == "none",
        reasoning=reasoning,
        source=source,
        error="; ".join(errors) or None,
        label_offsets=offsets,
    )
