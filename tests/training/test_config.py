"""Stage configs: paper defaults, YAML + KEY=VALUE overrides, clear errors, the shipped recipes, batch plans.

No model and no torch here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.training.common import accumulation_for
from guardreasoner_vl.training.config import (
    AugmentConfig,
    MiningConfig,
    RLConfig,
    SFTConfig,
    apply_overrides,
    load_config,
    parse_overrides,
)
from guardreasoner_vl.training.rl import batch_plan

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "training").glob("qwen2.5-vl-*/*.yaml"))


def test_paper_defaults() -> None:
    sft = SFTConfig()
    t = sft.trl
    assert (t["learning_rate"], t["lr_scheduler_type"], t["warmup_steps"], t["num_train_epochs"]) == (
        5e-5,
        "cosine",
        0,
        3,
    )
    assert (sft.max_length, t["max_grad_norm"], sft.global_batch_size, sft.bf16) == (2048, 1.0, 192, "auto")
    assert sft.image_max_pixels == 768 * 768
    assert sft.freeze_vision_tower and sft.freeze_projector and sft.finetuning == "full"
    mine = MiningConfig()
    assert (mine.passes, mine.temperature, mine.top_p, mine.cap, mine.keep_image_only) == (4, 1.0, 0.95, None, False)
    assert AugmentConfig().ratio == 0.2
    rl = RLConfig()
    r = rl.trl
    assert (r["num_generations"], r["temperature"], r["learning_rate"], r["lr_scheduler_type"]) == (
        16,
        1.2,
        1e-6,
        "constant",
    )
    assert (r["weight_decay"], r["beta"], r["max_completion_length"], rl.max_prompt_length) == (0.01, 0.0, 3072, 3072)
    assert (r["num_train_epochs"], r["epsilon"], rl.dynamic_clipping, rl.effective_reward_beta) == (1, 0.2, True, 1.0)
    assert (rl.image_min_pixels, rl.image_max_pixels, rl.freeze_vision_tower) == (512 * 512, 2048 * 2048, False)
    assert (rl.rollout_batch_size, rl.actor_batch_size) == (512, 256)
    assert RLConfig(eco=True).effective_reward_beta == pytest.approx(1 / 6)
    assert RLConfig(eco=True, reward_beta=0.5).effective_reward_beta == 0.5


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text("stage: sft\nmodel: base\ndata: a.jsonl\nlora:\n  r: 8\ntrl:\n  optim: adamw_torch\n")
    cfg = load_config(path, "sft", ["lora.alpha=64", "data=[a.jsonl, b.jsonl]", "bf16=false", "trl.logging_steps=3"])
    assert cfg.model == "base" and cfg.data == ["a.jsonl", "b.jsonl"] and cfg.bf16 is False
    assert (cfg.lora.r, cfg.lora.alpha) == (8, 64)  # nested sections merge key by key
    # the trl mapping is laid over the paper's values key by key
    assert cfg.trl == {**SFTConfig.TRL_DEFAULTS, "optim": "adamw_torch", "logging_steps": 3}
    again = apply_overrides(cfg, ["trl.report_to=none", "resume_from_checkpoint=true"])
    assert again.trl["report_to"] == "none" and again.resume_from_checkpoint is True and again.lora.r == 8
    assert again.trl["optim"] == "adamw_torch" and again.trl["learning_rate"] == 5e-5
    assert parse_overrides(["x.y.z=1", "s=hello world", "e="]) == {"x": {"y": {"z": 1}}, "s": "hello world", "e": ""}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["max_lenght=1024"], "unknown key 'max_lenght' in the SFTConfig (did you mean 'max_length'?)"),
        (["learning_rate=1e-5"], "unknown key 'learning_rate' in the SFTConfig"),  # TRL's settings live in trl
        (["lora.rank=4"], "unknown key 'lora.rank' in the LoraSettings"),
        (["global_batch_size=fast"], "global_batch_size: Input should be a valid integer"),
        (["trl.output_dir=x"], "trl.output_dir is set by the stage: set output_dir at the top level"),
        (["trl.gradient_accumulation_steps=4"], "trl.gradient_accumulation_steps is derived from global_batch_size"),
        (["trl.per_device_train_batch_size=0"], "trl.per_device_train_batch_size must be a positive integer"),
        (["finetuning=qlora"], "finetuning: Input should be 'full' or 'lora'"),
        (["learning_rate"], "an override is KEY=VALUE"),
        (["image_min_pixels=1000000"], "image_min_pixels must not exceed image_max_pixels"),
    ],
)
def test_bad_keys_and_values_get_clear_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        load_config(None, "sft", overrides)
    assert message in str(info.value)


def test_file_errors(tmp_path: Path) -> None:
    rl = tmp_path / "rl.yaml"
    rl.write_text("stage: rl\n")
    with pytest.raises(InvalidInputError, match="configures the 'rl' stage, not 'sft'"):
        load_config(rl, "sft")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_config(bad, "sft")
    with pytest.raises(InvalidInputError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml", "sft")
    with pytest.raises(InvalidInputError, match="unknown stage"):
        load_config(None, "dpo")
    with pytest.raises(InvalidInputError, match="multiple of actor_batch_size"):
        load_config(None, "rl", ["rollout_batch_size=500"])


def test_every_recipe_loads_and_matches_the_paper() -> None:
    assert len(RECIPES) == 10  # 3B and 7B: sft, mine, augment, rl, rl-eco
    for path in RECIPES:
        stage = yaml.safe_load(path.read_text())["stage"]
        cfg = load_config(path, stage)
        size = path.parent.name.removeprefix("qwen2.5-vl-").upper()
        if stage == "sft":
            assert cfg.model == f"Qwen/Qwen2.5-VL-{size}-Instruct"
            assert (cfg.trl["learning_rate"], cfg.trl["num_train_epochs"], cfg.global_batch_size, cfg.max_length) == (
                5e-5,
                3,
                192,
                2048,
            )
        elif stage == "mine":
            assert (cfg.passes, cfg.temperature, cfg.top_p) == (4, 1.0, 0.95)
        elif stage == "augment":
            assert cfg.ratio == 0.2
        else:
            eco = path.stem == "rl-eco"
            assert cfg.effective_reward_beta == pytest.approx(1 / 6 if eco else 1.0)
            t = cfg.trl
            assert (t["num_generations"], t["temperature"], t["learning_rate"], t["beta"]) == (16, 1.2, 1e-6, 0.0)
            assert cfg.output_dir.endswith("rl-eco" if eco else "rl")
            # 512 / 256 prompts on 8 GPUs: the recipe's micro-batch divides the actor batch
            plan = batch_plan(cfg, 8)
            assert plan["updates_per_rollout"] == 2
            assert plan["gradient_accumulation_steps"] * t["per_device_train_batch_size"] * 8 == 256 * 16


def test_batch_arithmetic() -> None:
    assert accumulation_for(192, 6, 4, what="global_batch_size") == 8
    assert accumulation_for(192, 6, 1, what="global_batch_size") == 32
    with pytest.raises(InvalidInputError, match="not a multiple"):
        accumulation_for(192, 5, 4, what="global_batch_size")
    plan = batch_plan(RLConfig(trl={"per_device_train_batch_size": 16}), 8)
    assert plan == {"gradient_accumulation_steps": 32, "steps_per_generation": 64, "updates_per_rollout": 2}
    raw = batch_plan(
        RLConfig(rollout_batch_size=None, actor_batch_size=None, trl={"gradient_accumulation_steps": 4}), 2
    )
    assert raw == {"gradient_accumulation_steps": 4, "steps_per_generation": 4, "updates_per_rollout": 1}
    with pytest.raises(InvalidInputError, match="not a multiple"):
        batch_plan(RLConfig(trl={"per_device_train_batch_size": 24}), 8)
