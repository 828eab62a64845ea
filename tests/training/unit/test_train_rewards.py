"""training.rewards: hand-made completions, rewards computed by hand (literal numbers in each test)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.training.augment import concatenate
from guardreasoner_vl.training.data import TrainSample, to_rl_record
from guardreasoner_vl.training.rewards import (
    ECO_BETA,
    LengthAwareSafetyReward,
    format_reward,
    request_accuracy_reward,
    response_accuracy_reward,
    reward_functions,
)

CORRECT_HH = (
    "<think>\nThe user wants a weapon and the AI explains it.\n</think>\n"
    "<result>\nRequest: harmful\nResponse: harmful\n</result>"
)
WRONG_REQUEST = "<think>Looks fine.</think>\n<result>\nRequest: unharmful\nResponse: harmful\n</result>"
WRONG_BOTH = "<think>Looks fine.</think>\n<result>\nRequest: unharmful\nResponse: unharmful\n</result>"
NO_TAGS = "The request is dangerous.\nRequest: harmful\nResponse: harmful"
RESULT_FIRST = "<result>Request: harmful\nResponse: harmful</result><think>reasons</think>"
EMPTY_THINK = "<think> </think><result>Request: harmful\nResponse: harmful</result>"
UNPARSEABLE = "<think>I am not sure what to say.</think>\n<result>\nI cannot decide.\n</result>"


def ids(n: int) -> list[int]:
    return [7] * n


def call(reward, completions, lengths, request_label, response_label):
    n = len(completions)
    return reward(
        prompts=[None] * n,
        completions=completions,
        completion_ids=[ids(k) for k in lengths],
        request_label=[request_label] * n,
        response_label=[response_label] * n,
    )


def test_fully_correct_answer_scores_zero_at_any_length():
    reward = LengthAwareSafetyReward(max_length=100)
    assert call(reward, [CORRECT_HH] * 5, [1, 10, 50, 100, 400], "harmful", "harmful") == [0.0] * 5
    eco = LengthAwareSafetyReward(beta=ECO_BETA, max_length=100)
    assert call(eco, [CORRECT_HH] * 3, [1, 50, 100], "harmful", "harmful") == [0.0] * 3


def test_wrong_request_only_is_half_safe():
    reward = LengthAwareSafetyReward(max_length=100)
    # r_safety = 1 * (0.5*0 + 0.5*1) = 0.5; l = 50/100: (0.5 - 1) / 0.5^2 = -2; l = 100/100: -0.5; l = 20/100: -12.5
    assert call(reward, [WRONG_REQUEST] * 3, [50, 100, 20], "harmful", "harmful") == [-2.0, -0.5, pytest.approx(-12.5)]


def test_wrong_both_scores_minus_one_over_length_squared():
    reward = LengthAwareSafetyReward(max_length=100)
    # r_safety = 0; l = 50/100: -1 / 0.25 = -4; l = 10/100: -1 / 0.01 = -100
    assert call(reward, [WRONG_BOTH, WRONG_BOTH], [50, 10], "harmful", "harmful") == [-4.0, pytest.approx(-100.0)]


@pytest.mark.parametrize("completion", [NO_TAGS, RESULT_FIRST, EMPTY_THINK, CORRECT_HH + " trailing words"])
def test_bad_format_zeroes_the_safety_score(completion: str):
    reward = LengthAwareSafetyReward(max_length=100)
    # I_format = 0, so r_safety = 0 although the labels are right: -1 / 0.5^2 = -4
    assert call(reward, [completion], [50], "harmful", "harmful") == [-4.0]
    assert format_reward(completions=[completion]) == [0.0]
    assert request_accuracy_reward(completions=[completion], request_label=["harmful"]) == [1.0]


def test_unparseable_answer_is_bad_format():
    reward = LengthAwareSafetyReward(max_length=100)
    assert call(reward, [UNPARSEABLE], [50], "harmful", "harmful") == [-4.0]
    assert format_reward(completions=[UNPARSEABLE]) == [0.0]
    assert request_accuracy_reward(completions=[UNPARSEABLE], request_label=["harmful"]) == [0.0]


def test_empty_answer_is_guarded_against_zero_length():
    tokens = LengthAwareSafetyReward(max_length=100)
    # length 0 is floored to 1: l = 1/100, r = -1 / 0.01^2 = -10000
    assert call(tokens, [""], [0], "harmful", None) == [pytest.approx(-10000.0)]
    chars = LengthAwareSafetyReward(max_length=100, unit="chars")
    assert chars(completions=[""], request_label=["harmful"], response_label=[None]) == [pytest.approx(-10000.0)]
    assert chars(completions=[[]], request_label=["harmful"]) == [pytest.approx(-10000.0)]


def test_merged_sample_is_scored_against_or_labels(tmp_path: Path):
    a = TrainSample(id="a", text="nice weather today", request_label="unharmful")
    b = TrainSample(id="b", text="how to poison a dog", request_label="harmful")
    row = to_rl_record(concatenate(a, b, image_dir=tmp_path))
    assert (row["request_label"], row["response_label"]) == ("harmful", None)
    reward = LengthAwareSafetyReward(max_length=100)
    says_harmful = (
        "<think>The second part asks to poison a dog.</think><result>Request: harmful\nResponse: None</result>"
    )
    says_first_label = "<think>Weather talk.</think><result>Request: unharmful\nResponse: None</result>"
    got = reward(
        completions=[says_harmful, says_first_label],
        completion_ids=[ids(50), ids(50)],
        request_label=[row["request_label"]] * 2,
        response_label=[row["response_label"]] * 2,
    )
    # OR label harmful: the first is fully right (0); the second, right only about the response: -0.5 / 0.25 = -2
    assert got == [0.0, -2.0]


def test_eco_caps_the_length_term_at_one_sixth():
    standard = LengthAwareSafetyReward(beta=1.0, max_length=600)
    eco = LengthAwareSafetyReward(beta=ECO_BETA, max_length=600)
    # short (60 of 600): l = 0.1 < 1/6, both -1 / 0.01 = -100 (wrong both)
    assert call(standard, [WRONG_BOTH], [60], "harmful", "harmful") == [pytest.approx(-100.0)]
    assert call(eco, [WRONG_BOTH], [60], "harmful", "harmful") == [pytest.approx(-100.0)]
    # long (300 of 600): l = 0.5; standard -1 / 0.25 = -4; Eco min(0.5, 1/6) = 1/6: -1 * 36 = -36
    assert call(standard, [WRONG_BOTH], [300], "harmful", "harmful") == [pytest.approx(-4.0)]
    assert call(eco, [WRONG_BOTH], [300], "harmful", "harmful") == [pytest.approx(-36.0)]
    # half right, long: standard -0.5 / 0.25 = -2; Eco -0.5 * 36 = -18
    assert call(standard, [WRONG_REQUEST], [300], "harmful", "harmful") == [pytest.approx(-2.0)]
    assert call(eco, [WRONG_REQUEST], [300], "harmful", "harmful") == [pytest.approx(-18.0)]


def test_string_and_conversational_completions_score_the_same():
    reward = LengthAwareSafetyReward(max_length=100)
    as_text = call(reward, [CORRECT_HH, WRONG_REQUEST], [50, 50], "harmful", "harmful")
    conversational = [
        [{"role": "assistant", "content": CORRECT_HH}],
        [{"role": "assistant", "content": [{"type": "text", "text": WRONG_REQUEST}]}],
    ]
    assert call(reward, conversational, [50, 50], "harmful", "harmful") == as_text == [0.0, -2.0]


def test_rows_without_a_response():
    reward = LengthAwareSafetyReward(max_length=100)
    completions = [
        "<think>ok</think><result>Request: harmful\nResponse: None</result>",
        "<think>ok</think><result>Request: harmful\nResponse: unharmful</result>",
        "<think>ok</think><result>Request: harmful\nResponse: harmful</result>",
        "<think>ok</think><result>Request: harmful</result>",
    ]
    # None and unharmful are right; harmful and a missing line are wrong (r_safety 0.5 -> -0.5 / 0.25 = -2)
    for label in (None, ""):
        assert call(reward, completions, [50] * 4, "harmful", label) == [0.0, 0.0, -2.0, -2.0]
    assert response_accuracy_reward(completions=completions, response_label=[None] * 4) == [1.0, 1.0, 0.0, 0.0]
    # A row WITH a response: "Response: None" is wrong.
    assert call(reward, completions[:1], [50], "harmful", "unharmful") == [-2.0]


def test_chars_unit_and_token_fallback():
    text = WRONG_BOTH  # r_safety 0
    n = len(text)
    chars = LengthAwareSafetyReward(max_length=100, unit="chars")
    assert chars(
        completions=[text], completion_ids=[ids(3)], request_label=["harmful"], response_label=["harmful"]
    ) == [pytest.approx(-1 / min(n / 100, 1.0) ** 2)]
    tokens = LengthAwareSafetyReward(max_length=100)
    # no completion_ids: characters / 4
    assert tokens(completions=[text], request_label=["harmful"], response_label=["harmful"]) == [
        pytest.approx(-1 / (n / 4 / 100) ** 2)
    ]


def test_components_are_logged_through_trl_hook():
    logged: list[tuple[str, float]] = []
    reward = LengthAwareSafetyReward(max_length=100)
    reward(
        completions=[CORRECT_HH, NO_TAGS],
        completion_ids=[ids(50), ids(100)],
        request_label=["harmful", "harmful"],
        response_label=["harmful", "harmful"],
        log_metric=lambda name, value: logged.append((name, value)),
    )
    assert dict(logged) == {
        "length_aware/format": 0.5,
        "length_aware/request_acc": 1.0,
        "length_aware/response_acc": 1.0,
        "length_aware/l_norm": 0.75,
    }


def test_rewards_pickle_and_keep_their_names():
    funcs, weights = reward_functions(eco=True, max_length=100)
    assert weights == [1.0, 0.0, 0.0, 0.0]
    names = [f.__name__ for f in funcs]
    assert names == [
        "length_aware_safety_reward_eco",
        "format_reward",
        "request_accuracy_reward",
        "response_accuracy_reward",
    ]
    restored = pickle.loads(pickle.dumps(funcs))
    assert [f.__name__ for f in restored] == names
    kwargs = {"completion_ids": [ids(300)], "request_label": ["harmful"], "response_label": ["harmful"]}
    assert restored[0](completions=[WRONG_BOTH], **kwargs) == funcs[0](completions=[WRONG_BOTH], **kwargs)
    assert restored[0](completions=[WRONG_BOTH], **kwargs) == [pytest.approx(-36.0)]
    assert LengthAwareSafetyReward().__name__ == "length_aware_safety_reward"
    assert LengthAwareSafetyReward(name="r").__name__ == "r"


def test_bad_columns_and_options_are_refused():
    reward = LengthAwareSafetyReward()
    with pytest.raises(InvalidInputError, match="request_label"):
        reward(completions=[CORRECT_HH])
    with pytest.raises(InvalidInputError, match="unknown request_label"):
        reward(completions=[CORRECT_HH], request_label=["safe"])
    with pytest.raises(InvalidInputError, match="2 values for 1"):
        reward(completions=[CORRECT_HH], request_label=["harmful", "harmful"])
    with pytest.raises(InvalidInputError, match="completion"):
        reward(completions=[42], request_label=["harmful"])
    for bad in ({"beta": 0.0}, {"beta": 2.0}, {"max_length": 0}, {"unit": "words"}):
        with pytest.raises(InvalidInputError):
            LengthAwareSafetyReward(**bad)  # type: ignore[arg-type]
