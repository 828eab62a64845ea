"""Verdict scores (the rule in guardreasoner_vl.scores) and thresholds, scripted: no model, no torch."""

from __future__ import annotations

import math

import pytest

from guardreasoner_vl import Guard, GuardResult, InvalidInputError, ParseError
from guardreasoner_vl.backends import FunctionBackend, Generation, scored_generation, verdict_output
from guardreasoner_vl.parsing import parse_output
from guardreasoner_vl.prompts import ModelFamily
from guardreasoner_vl.scores import LogprobTrace, char_offsets, is_label_candidate, verdict_score, verdict_scores

VL = ModelFamily.VL
TEXT = ModelFamily.TEXT


def _trace_at(text: str, token_start: int, candidates: dict[str, float]) -> LogprobTrace:
    """A trace with one token boundary at ``token_start`` and candidate probabilities (not logs) there."""
    offsets = (0, token_start) if token_start else (0,)
    index = len(offsets) - 1
    return LogprobTrace(offsets=offsets, candidates={index: {t: math.log(p) for t, p in candidates.items()}})


# -- the rule -------------------------------------------------------------------------------------------


def test_score_normalises_over_the_tokens_that_speak_for_either_label() -> None:
    text = "<result>\nRequest: harmful\n</result>"
    label = text.index("harmful")
    # the token holding the label's first character starts at the space: prefix " "
    trace = _trace_at(text, label - 1, {" harmful": 0.5, " harm": 0.1, " un": 0.2, " unharmful": 0.1, " the": 0.1})
    assert verdict_score(text, label, "request", trace) == pytest.approx(0.6 / 0.9)


def test_candidates_that_do_not_write_the_prefix_do_not_count() -> None:
    text = "Request: harmful"
    label = text.index("harmful")
    trace = _trace_at(text, label - 1, {" harmful": 0.3, "harmful": 0.5, " unharmful": 0.1, "un": 0.1})
    assert verdict_score(text, label, "request", trace) == pytest.approx(0.3 / 0.4)


def test_label_at_a_token_start_has_an_empty_prefix() -> None:
    text = "Request: unharmful"
    label = text.index("unharmful")
    trace = _trace_at(text, label, {"unh": 0.6, "harmful": 0.2, " harmful": 0.2})
    assert verdict_score(text, label, "request", trace) == pytest.approx(0.2 / 0.8)


def test_a_label_word_followed_by_letters_speaks_for_nothing_but_punctuation_is_fine() -> None:
    text = "Request: harmful"
    label = text.index("harmful")
    trace = _trace_at(text, label - 1, {" harmful.": 0.2, " harmfulness": 0.5, " unharmful\n": 0.2})
    assert verdict_score(text, label, "request", trace) == pytest.approx(0.5)


def test_refusal_pair_and_case_is_ignored() -> None:
    text = "Completion: Refusal"
    label = text.index("Refusal")
    trace = _trace_at(text, label - 1, {" Ref": 0.3, " refusal": 0.3, " compliance": 0.2, " Comp": 0.2})
    assert verdict_score(text, label, "refusal", trace) == pytest.approx(0.6)


@pytest.mark.parametrize("label_text", ["harmless", "none", "None"])
def test_labels_outside_the_trained_pair_have_no_score(label_text: str) -> None:
    text = f"Request: {label_text}"
    label = text.index(label_text)
    trace = _trace_at(text, label - 1, {" harm": 0.5, " none": 0.3, " un": 0.2})
    assert verdict_score(text, label, "request", trace) is None


def test_no_candidates_or_nothing_that_speaks_gives_none() -> None:
    text = "Request: harmful"
    label = text.index("harmful")
    assert verdict_score(text, label, "request", LogprobTrace(offsets=(0, label - 1))) is None
    assert verdict_score(text, label, "request", _trace_at(text, label - 1, {" the": 0.9})) is None
    assert verdict_scores(text, {"request": label}, None, ["request"]) == {"request": None}


def test_only_one_label_reported_gives_a_certain_score() -> None:
    text = "Request: harmful"
    label = text.index("harmful")
    assert verdict_score(text, label, "request", _trace_at(text, label - 1, {" harmful": 0.4})) == 1.0


@pytest.mark.parametrize(
    ("token", "expected"),
    [(" harm", True), ("Un", True), (": refusal", True), ("**com", True), (" the", False), ("harmfulness", False)],
)
def test_label_candidates(token: str, expected: bool) -> None:
    assert is_label_candidate(token) is expected


def test_char_offsets_maps_bytes_to_characters_and_refuses_a_mismatch() -> None:
    euro = "€".encode()
    assert char_offsets([b"a", euro[:2], euro[2:], b"b"], "a€b") == (0, 1, 1, 2)
    assert char_offsets([b"ab", b"c"], "abc") == (0, 2)
    assert char_offsets([b"ab", b"c"], "abd") is None
    # invalid UTF-8 decodes with replacement characters, as tokenizers decode
    assert char_offsets([b"\xff", b"x"], "\ufffdx") == (0, 1)


def test_parser_reports_where_each_label_starts() -> None:
    text = "<think>Request: harmful?</think>\n<result>\nRequest: unharmful\nResponse: harmful\n</result>"
    parsed = parse_output(text, expect_response=True)
    assert text[parsed.label_offsets["request"] :].startswith("unharmful\nResponse")
    assert text[parsed.label_offsets["response"] :].startswith("harmful\n</result>")
    out = verdict_output(TEXT, request_harmful=True, response_harmful=False, refusal=True)
    parsed = parse_output(out, expect_response=True, expect_refusal=True)
    assert {k: out[v:].split("\n")[0] for k, v in parsed.label_offsets.items()} == {
        "request": "harmful",
        "response": "unharmful",
        "refusal": "refusal",
    }


# -- scores and thresholds through Guard (scripted engine outputs) ---------------------------------------


def _guard(output: str, scores: dict[str, float] | None, **options: object) -> Guard:
    def answer(_: object) -> Generation:
        if scores is None:
            return Generation(text=output, finish_reason="stop")
        return scored_generation(output, scores)

    return Guard(backend=FunctionBackend(answer), **options)  # type: ignore[arg-type]


def test_scores_reach_the_result_and_round_trip() -> None:
    out = verdict_output(VL, request_harmful=True, response_harmful=False)
    result = _guard(out, {"request": 0.8, "response": 0.25}).moderate("q", response="a")
    assert (result.request_score, result.response_score, result.refusal_score) == pytest.approx((0.8, 0.25, None))
    assert GuardResult.model_validate_json(result.model_dump_json()) == result


def test_default_threshold_keeps_the_label_whatever_the_score() -> None:
    out = verdict_output(VL, request_harmful=False)
    result = _guard(out, {"request": 0.9}).moderate("q")
    assert result.request_score == pytest.approx(0.9)
    assert result.flagged is False  # no threshold: the greedy label decides, as before


@pytest.mark.parametrize(
    ("label_harmful", "score", "threshold", "flagged"),
    [
        (False, 0.9, 0.5, True),  # score above: flagged although the label says unharmful
        (True, 0.3, 0.5, False),  # score below: not flagged although the label says harmful
        (True, 0.5, 0.5, True),  # the bound itself flags
        (False, 0.02, 0.01, True),  # a strict operating point
    ],
)
def test_threshold_flags_by_score(label_harmful: bool, score: float, threshold: float, flagged: bool) -> None:
    out = verdict_output(VL, request_harmful=label_harmful)
    result = _guard(out, {"request": score}, threshold=threshold).moderate("q")
    assert result.flagged is flagged
    assert result.request is (result.request.HARMFUL if label_harmful else result.request.UNHARMFUL)  # type: ignore[union-attr]
    assert result.status == "ok"


def test_threshold_without_a_score_falls_back_to_the_label() -> None:
    harmful = verdict_output(VL, request_harmful=True)
    assert _guard(harmful, None, threshold=0.99).moderate("q").flagged is True
    benign = verdict_output(VL, request_harmful=False)
    assert _guard(benign, None, threshold=0.0).moderate("q").flagged is False


def test_per_task_thresholds() -> None:
    out = verdict_output(VL, request_harmful=False, response_harmful=False)
    scores = {"request": 0.4, "response": 0.4}
    assert _guard(out, scores, threshold={"response": 0.3}).moderate("q", response="a").flagged is True
    assert _guard(out, scores, threshold={"request": 0.5}).moderate("q", response="a").flagged is False
    # the response task has no threshold: its unharmful label decides
    assert _guard(out, scores, threshold={"request": 0.3}).moderate("q", response="a").flagged is True


def test_parse_failure_follows_the_policy_with_thresholds() -> None:
    broken = "<think>The user asks something"  # never closed: no verdict
    assert _guard(broken, {"request": 0.01}, threshold=0.5).moderate("q").flagged is True  # fail closed
    allowed = _guard(broken, {"request": 0.01}, threshold=0.5, on_parse_error="allow").moderate("q")
    assert (allowed.status, allowed.flagged, allowed.request_score) == ("parse_error", False, None)
    with pytest.raises(ParseError):
        _guard(broken, {"request": 0.9}, threshold=0.5, on_parse_error="raise").moderate("q")


def test_allow_policy_uses_the_score_of_a_verdict_that_was_read() -> None:
    # the response verdict is missing (parse error), the request one was read with a high score
    out = "<think>x</think>\n<result>\nRequest: unharmful\n</result>"
    result = _guard(out, {"request": 0.95}, threshold=0.5, on_parse_error="allow").moderate("q", response="a")
    assert (result.status, result.request_score, result.flagged) == ("parse_error", pytest.approx(0.95), True)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, {"prompt": 0.5}, {"request": 2}])
def test_bad_thresholds_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="threshold"):
        Guard(backend="fake", threshold=bad)  # type: ignore[arg-type]


def test_with_options_changes_threshold_and_scores() -> None:
    out = verdict_output(VL, request_harmful=False)
    guard = _guard(out, {"request": 0.7})
    strict = guard.with_options(threshold=0.6)
    assert (guard.moderate("q").flagged, strict.moderate("q").flagged) == (False, True)
    assert guard.params.logprobs is True
    assert guard.with_options(scores=False).params.logprobs is False


def test_scores_off_asks_the_engine_for_no_logprobs() -> None:
    seen: list[bool] = []

    class Engine(FunctionBackend):
        def generate(self, requests, params):  # type: ignore[no-untyped-def]
            seen.append(params.logprobs)
            return super().generate(requests, params)

    out = verdict_output(VL, request_harmful=False)
    Guard(backend=Engine(lambda r: out), scores=False).moderate("q")
    Guard(backend=Engine(lambda r: out)).moderate("q")
    assert seen == [False, True]
