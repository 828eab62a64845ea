"""The one parser: table-driven cases and every real GuardReasoner-1B output in shared data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardreasoner_vl.parsing import parse_output
from guardreasoner_vl.types import RefusalVerdict, Verdict

H, U = Verdict.HARMFUL, Verdict.UNHARMFUL

CASES = [
    # (id, output, expect_response, request, response, refusal, source, ok)
    (
        "vl-result-block",
        "<think>It asks for a recipe.</think>\n<result>\nRequest: unharmful\nResponse: None\n</result>",
        False,
        U,
        U,
        None,
        "result",
        True,
    ),
    (
        "vl-result-with-answers-line",
        "<think>x</think><result>Answers: \nRequest: harmful\nResponse: harmful\n</result>",
        True,
        H,
        H,
        None,
        "result",
        True,
    ),
    (
        "reasoning-mentions-labels-before-result",
        "<think>If it were Request: harmful we would refuse. Response: harmful is wrong here.</think>"
        "<result>Request: unharmful\nResponse: unharmful</result>",
        True,
        U,
        U,
        None,
        "result",
        True,
    ),
    (
        "last-result-block-wins",
        "<result>Request: harmful</result> second thoughts <result>Request: unharmful\nResponse: None</result>",
        False,
        U,
        U,
        None,
        "result",
        True,
    ),
    (
        # An unclosed final <result> is a cut-off generation: not a verdict (issue 9.4; it read H/U before).
        "unclosed-result-at-end-is-a-parse-failure",
        "<think>cut</think><result>\nRequest: harmful\nResponse: unharmful",
        True,
        None,
        None,
        None,
        None,
        False,
    ),
    (
        "text-answers-block",
        "## Step 1\nRequest: unharmful (draft)\n---\n\n"
        "Answers: \nRequest: harmful\nCompletion: refusal\nResponse: unharmful\n",
        True,
        H,
        U,
        RefusalVerdict.REFUSAL,
        "answers",
        True,
    ),
    (
        "heading-answers-no-colon",
        "reasoning\n\n# Answers\n\nRequest: harmful\nCompletion: None\nResponse: None",
        False,
        H,
        U,
        None,
        "answers",
        True,
    ),
    (
        "case-insensitive-and-harmless",
        "ANSWERS:\nREQUEST: Harmless\ncompletion: COMPLIANCE\nresponse: HARMFUL",
        True,
        U,
        H,
        RefusalVerdict.COMPLIANCE,
        "answers",
        True,
    ),
    (
        "markdown-decoration",
        "<result>**Request:** harmful\n**Response:** unharmful</result>",
        True,
        H,
        U,
        None,
        "result",
        True,
    ),
    (
        "anywhere-last-match",
        "I think Request: unharmful. On reflection, Request: harmful. Response: harmful",
        True,
        H,
        H,
        None,
        "anywhere",
        True,
    ),
    ("empty", "", False, None, None, None, None, False),
    ("whitespace", "   \n ", False, None, None, None, None, False),
    ("no-verdict", "The request seems fine to me.", False, None, None, None, None, False),
    (
        "missing-response-when-expected",
        "<result>Request: harmful</result>",
        True,
        H,
        None,
        None,
        "result",
        False,
    ),
    (
        "unknown-label-is-not-read",
        "<result>Request: dangerous\nResponse: unharmful</result>",
        True,
        None,
        U,
        None,
        None,
        False,
    ),
    (
        "key-inside-word-not-matched",
        "subrequest: harmful",
        False,
        None,
        None,
        None,
        None,
        False,
    ),
    (
        "keys-in-separate-answer-blocks",
        "Answers: \nRequest: unharmful\n\n## Step 4\n\nAnswers: \nCompletion: None\nResponse: None",
        False,
        U,
        U,
        None,
        "anywhere",
        True,
    ),
    (
        "empty-result-falls-back-to-answers",
        "Answers:\nRequest: harmful\nResponse: unharmful\n<result></result>",
        True,
        H,
        U,
        None,
        "answers",
        True,
    ),
]


@pytest.mark.parametrize(
    ("output", "expect_response", "request_v", "response_v", "refusal", "source", "ok"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_parse_table(output, expect_response, request_v, response_v, refusal, source, ok):
    parsed = parse_output(output, expect_response=expect_response)
    assert parsed.request == request_v
    assert parsed.response == response_v
    assert parsed.refusal == refusal
    assert parsed.source == source
    assert parsed.ok is ok
    if not ok:
        assert parsed.error  # a reason, never a silent "safe"


def test_reasoning_is_think_block_or_text_before_answers():
    vl = parse_output("<think>\n step one \n</think><result>Request: harmful</result>")
    assert vl.reasoning == "step one"
    text = parse_output("Step 1: look.\n\n---\n\nAnswers: \nRequest: harmful\n")
    assert text.reasoning == "Step 1: look."


def test_response_said_none_and_refusal_requirement():
    parsed = parse_output("Answers:\nRequest: harmful\nCompletion: None\nResponse: None", expect_refusal=True)
    assert parsed.response_said_none and parsed.response is U and parsed.refusal is None and parsed.ok
    missing = parse_output("Answers:\nRequest: harmful\nResponse: None", expect_refusal=True)
    assert not missing.ok and "Completion" in (missing.error or "")


def test_rejects_non_string():
    with pytest.raises(TypeError):
        parse_output(None)  # type: ignore[arg-type]


LABELS = {"harmful": H, "unharmful": U, "harmless": U, "none": U}


def _stated_answers(predict: str) -> dict[str, str]:
    """The last ``Key: value`` line of each key in the output, read line by line (independent of the parser)."""
    stated = {}
    for line in predict.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("request", "response", "completion"):
            stated[key.strip().lower()] = value.strip().lower()
    return stated


def test_every_real_1b_output_parses_to_its_stated_answers(shared_data: Path):
    files = sorted((shared_data / "guardreasoner-text" / "predictions-1B").glob("*/generated_predictions.jsonl"))
    assert len(files) == 6
    total = parsed_ok = stated_total = 0
    for path in files:
        for line_no, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            if not line.strip():
                continue
            predict = json.loads(line)["predict"]
            total += 1
            has_response = "\n\nAI assistant:\nNone\n\n" not in json.loads(line)["prompt"]
            parsed = parse_output(predict, expect_response=has_response)
            stated = _stated_answers(predict)
            where = f"{path.parent.name}:{line_no}"
            if "request" not in stated:  # degenerate output (e.g. a repetition loop): must not be read
                assert not parsed.ok and parsed.request is None, where
                continue
            stated_total += 1
            assert parsed.ok, f"{where}: {parsed.error}"
            parsed_ok += 1
            assert parsed.request == LABELS[stated["request"]], where
            if "response" in stated:
                assert parsed.response == LABELS[stated["response"]], where
            if stated.get("completion") in ("refusal", "compliance"):
                assert parsed.refusal == RefusalVerdict(stated["completion"]), where
            else:
                assert parsed.refusal is None, where
    assert total == 2195
    assert parsed_ok == stated_total
    # Figures for the record: 2195 real outputs, of which this many state a verdict and parse.
    print(f"parsed {parsed_ok} of {total} real 1B outputs; {total - parsed_ok} state no verdict")
    assert parsed_ok >= 2190
