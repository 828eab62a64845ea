"""The paper's settings that a run could silently miss: Eco's length unit, the RL set size, the ablation
switches (each must change what the reward / data / trainer actually use), and the VLTrain system turn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.prompts import VL_INSTRUCTION
from guardreasoner_vl.training.augment import augment, rl_set_sizes
from guardreasoner_vl.training.config import AugmentConfig, RLConfig, SFTConfig, load_config
from guardreasoner_vl.training.data import TrainSample, load_samples, samples_from_records
from guardreasoner_vl.training.mining import run_augment
from guardreasoner_vl.training.rl import build_rewards
from guardreasoner_vl.training.sft import label_only_target, training_targets

RECIPES = Path(__file__).resolve().parents[3] / "training"

# A wrong-on-the-request answer of typical length: ~900 characters (outputs average ~208 tokens).
REASONING = "The user asks about something. " * 29
TYPICAL_WRONG = f"<think>\n{REASONING}\n</think>\n<result>\nRequest: unharmful\nResponse: None\n</result>"


def _main_reward(config: RLConfig, text: str, *, tokens: int, request: str = "harmful") -> float:
    funcs, weights = build_rewards(config)
    assert weights[0] == 1.0
    return funcs[0](completions=[text], completion_ids=[[1] * tokens], request_label=[request], response_label=[""])[0]


def test_eco_differs_from_standard_on_a_typical_length_output():
    assert 850 < len(TYPICAL_WRONG) < 1000
    standard, eco = RLConfig(), RLConfig(eco=True)
    assert standard.length_unit == eco.length_unit == "chars"  # the authors' unit is the default
    l_norm = len(TYPICAL_WRONG) / 3072
    # r_safety = 0.5 (the response part is right): standard (0.5 - 1) / l_norm^2, Eco (0.5 - 1) / (1/6)^2 = -18
    assert _main_reward(standard, TYPICAL_WRONG, tokens=208) == pytest.approx(-0.5 / l_norm**2)
    assert _main_reward(eco, TYPICAL_WRONG, tokens=208) == pytest.approx(-18.0)
    # Measured in tokens, 208 tokens is below the 512-token Eco cap: both variants give the same reward.
    tok_std = _main_reward(RLConfig(length_unit="tokens"), TYPICAL_WRONG, tokens=208)
    tok_eco = _main_reward(RLConfig(length_unit="tokens", eco=True), TYPICAL_WRONG, tokens=208)
    assert tok_std == tok_eco == pytest.approx(-0.5 / (208 / 3072) ** 2)


def test_zero_length_completion_is_finite_and_the_worst_reward():
    for unit in ("chars", "tokens"):
        value = _main_reward(RLConfig(length_unit=unit), "", tokens=0)
        assert value == pytest.approx(-(3072.0**2))


def test_recipes_measure_length_in_characters():
    for path in sorted(RECIPES.glob("qwen2.5-vl-*/rl*.yaml")):
        config = load_config(path, "rl")
        assert config.length_unit == "chars", path
        assert config.reward == "length_aware", path


def test_plain_safety_reward_switch_drops_the_length_term():
    config = RLConfig(reward="safety")
    funcs, _ = build_rewards(config)
    assert funcs[0].__name__ == "safety_reward"
    # r_safety of the typical wrong answer is 0.5 whatever its length; a right one is 1.
    assert _main_reward(config, TYPICAL_WRONG, tokens=208) == 0.5
    right = TYPICAL_WRONG.replace("Request: unharmful", "Request: harmful")
    assert _main_reward(config, right, tokens=208) == 1.0
    assert _main_reward(RLConfig(), right, tokens=208) == 0.0  # the length-aware reward scores it 0


def test_rl_set_is_the_papers_twelve_thousand():
    assert rl_set_sizes(15000, 12000, 0.2) == (9600, 2400)
    assert rl_set_sizes(9600, 12000, 0.2) == (9600, 2400)
    assert AugmentConfig().total == 12000 and AugmentConfig().ratio == 0.2
    for path in sorted(RECIPES.glob("qwen2.5-vl-*/augment.yaml")):
        config = load_config(path, "augment")
        assert rl_set_sizes(15000, config.total, config.ratio) == (9600, 2400), path
    with pytest.raises(InvalidInputError):
        rl_set_sizes(10, 0, 0.2)


def _hard_pool(n: int) -> list[TrainSample]:
    labels = ("harmful", "unharmful")
    return [
        TrainSample.model_validate({"id": f"h{i}", "text": f"q{i}", "request_label": labels[i % 2]}) for i in range(n)
    ]


def test_augment_draws_the_pool_down_to_the_total(tmp_path: Path):
    pool = _hard_pool(30)
    rows = augment(pool, ratio=0.2, seed=5, image_dir=tmp_path, total=20)
    hard = [r for r in rows if not r.is_merged]
    merged = [r for r in rows if r.is_merged]
    assert (len(hard), len(merged), len(rows)) == (16, 4, 20)
    order = [r.id for r in pool]
    assert [r.id for r in hard] == sorted((r.id for r in hard), key=order.index)  # kept in pool order
    assert {m for r in merged for m in r.merged_from} <= {r.id for r in hard}  # pairs come from the draw
    assert [r.id for r in augment(pool, ratio=0.2, seed=5, image_dir=tmp_path, total=20)] == [r.id for r in rows]
    # a pool smaller than the hard share is used whole, ratio kept
    small = augment(pool[:8], ratio=0.2, seed=5, image_dir=tmp_path, total=20)
    assert (len(small), sum(r.is_merged for r in small)) == (10, 2)


def test_no_concatenation_ablation_writes_hard_rows_only(tmp_path: Path):
    from guardreasoner_vl.training.data import save_samples

    save_samples(_hard_pool(30), tmp_path / "hard.jsonl")
    counts = run_augment(
        AugmentConfig(hard=str(tmp_path / "hard.jsonl"), output=str(tmp_path / "rl.jsonl"), ratio=0.0, total=20)
    )
    assert (counts["hard"], counts["merged"], counts["total"], counts["pool"]) == (20, 0, 20, 30)
    rows = load_samples(tmp_path / "rl.jsonl").samples
    assert len(rows) == 20 and not any(r.is_merged for r in rows)
    paper = run_augment(AugmentConfig(hard=str(tmp_path / "hard.jsonl"), output=str(tmp_path / "rl2.jsonl"), total=20))
    assert (paper["hard"], paper["merged"]) == (16, 4)


def test_label_only_targets_replace_the_reasoning():
    rows = [
        TrainSample(
            id="a", text="q", request_label="harmful", target="<think>x</think><result>Request: harmful</result>"
        ),
        TrainSample(id="b", text="q", response="r", request_label="unharmful", response_label="harmful"),
    ]
    assert SFTConfig().targets == "reasoning"
    assert training_targets(rows[:1], "reasoning") == rows[:1]
    with pytest.raises(InvalidInputError, match="label_only"):
        training_targets(rows, "reasoning")  # row b has no target
    plain = training_targets(rows, SFTConfig(targets="label_only").targets)
    assert [r.target for r in plain] == [
        "<result>\nRequest: harmful\nResponse: None\n</result>",
        "<result>\nRequest: unharmful\nResponse: harmful\n</result>",
    ]
    assert label_only_target(rows[1]) == plain[1].target
    assert all("<think>" not in (r.target or "") for r in plain)


def test_dynamic_clipping_and_rl_without_sft_are_config_values(tmp_path: Path):
    assert RLConfig().dynamic_clipping is True
    assert RLConfig(dynamic_clipping=False).dynamic_clipping is False
    # "RL w/o R-SFT": the RL stage starts from the base model; only the model path changes.
    config = load_config(RECIPES / "qwen2.5-vl-3b" / "rl.yaml", "rl", ["model=Qwen/Qwen2.5-VL-3B-Instruct"])
    assert config.model == "Qwen/Qwen2.5-VL-3B-Instruct"


def _record(system: str | None) -> dict[str, Any]:
    turns = [
        {"role": "user", "content": "Human user:\nhello\n\nAI assistant:\nNone\n"},
        {"role": "assistant", "content": "<think>fine</think><result>Request: unharmful\nResponse: None</result>"},
    ]
    if system is not None:
        turns.insert(0, {"role": "system", "content": system})
    return {"messages": turns, "images": []}


def test_system_turn_must_be_the_vl_instruction():
    ok = samples_from_records([_record(VL_INSTRUCTION), _record(None), _record(VL_INSTRUCTION + "\n")], strict=False)
    assert len(ok.samples) == 3 and ok.errors == []
    wrong = VL_INSTRUCTION.replace("Task 1: determine", "Task 1, determine")
    report = samples_from_records([_record(wrong)], strict=False)
    assert report.samples == []
    message = report.errors[0][1]
    assert "system turn is not the GuardReasoner-VL instruction" in message
    assert "Task 1: determine" in message and "Task 1, determine" in message  # expected vs found


def test_strict_loader_says_what_layout_it_expected_and_found(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"messages": [_record(None)["messages"][1], _record(None)["messages"][0]]}]))
    with pytest.raises(InvalidInputError) as info:
        load_samples(path, format="vltrain")
    text = str(info.value)
    assert "expected a GuardReasoner-VLTrain record" in text and "found turns ['assistant', 'user']" in text
