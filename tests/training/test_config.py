"""Stage configs: paper defaults, YAML + KEY=VALUE overrides, clear errors, the shipped recipes, batch plans.

No model and no torch here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from guardreasoner_vl.errors import InvalidInputError
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
from guardreasoner_vl.training.sft import accumulation_for

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "training").glob("qwen2.5-vl-*/*.yaml"))


def test_paper_defaults() -> None:
    sft = SFTConfig()
    assert (sft.learning_rate, sft.lr_scheduler_type, sft.warmup_ratio, sft.num_train_epochs) == (5e-5, "cosine", 0, 3)
    assert (sft.max_length, sft.max_grad_norm, sft.global_batch_size, sft.bf16) == (2048, 1.0, 192, "auto")
    assert sft.image_max_pixels == 768 * 768
    assert sft.freeze_vision_tower and sft.freeze_projector and sft.finetuning == "full"
    mine = MiningConfig()
    assert (mine.passes, mine.temperature, mine.top_p, mine.cap, mine.keep_image_only) == (4, 1.0, 0.95, None, False)
    assert AugmentConfig().ratio == 0.2
    rl = RLConfig()
    assert (rl.num_generations, rl.temperature, rl.learning_rate, rl.lr_scheduler_type) == (16, 1.2, 1e-6, "constant")
    assert (rl.weight_decay, rl.beta, rl.max_completion_length, rl.max_prompt_length) == (0.01, 0.0, 3072, 3072)
    assert (rl.num_train_epochs, rl.epsilon, rl.dynamic_clipping, rl.effective_reward_beta) == (1, 0.2, True, 1.0)
    assert (rl.image_min_pixels, rl.image_max_pixels, rl.freeze_vision_tower) == (512 * 512, 2048 * 2048, False)
    assert (rl.rollout_batch_size, rl.actor_batch_size) == (512, 256)
    assert RLConfig(eco=True).effective_reward_beta == pytest.approx(1 / 6)
    assert RLConfig(eco=True, reward_beta=0.5).effective_reward_beta == 0.5


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text("stage: sft\nmodel: base\ndata: a.jsonl\nlora:\n  r: 8\ntrl_args:\n  optim: adamw_torch\n")
    cfg = load_config(path, "sft", ["lora.alpha=64", "data=[a.jsonl, b.jsonl]", "bf16=false", "trl_args.seed=3"])
    assert cfg.model == "base" and cfg.data == ["a.jsonl", "b.jsonl"] and cfg.bf16 is False
    assert (cfg.lora.r, cfg.lora.alpha) == (8, 64)  # nested sections merge key by key
    assert cfg.trl_args == {"optim": "adamw_torch", "seed": 3}
    again = apply_overrides(cfg, ["report_to=none", "resume_from_checkpoint=true"])
    assert again.report_to == ["none"] and again.resume_from_checkpoint is True and again.lora.r == 8
    assert parse_overrides(["x.y.z=1", "s=hello world", "e="]) == {"x": {"y": {"z": 1}}, "s": "hello world", "e": ""}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learing_rate=1e-5"], "unknown key 'learing_rate' in the SFTConfig (did you mean 'learning_rate'?)"),
        (["lora.rank=4"], "unknown key 'lora.rank' in the LoraSettings"),
        (["learning_rate=fast"], "learning_rate: Input should be a valid number"),
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
            assert (cfg.learning_rate, cfg.num_train_epochs, cfg.global_batch_size, cfg.max_length) == (
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
            assert (cfg.num_generations, cfg.temperature, cfg.learning_rate, cfg.beta) == (16, 1.2, 1e-6, 0.0)
            assert cfg.output_dir.endswith("rl-eco" if eco else "rl")
            # 512 / 256 prompts on 8 GPUs: the recipe's micro-batch divides the actor batch
            plan = batch_plan(cfg, 8)
            assert plan["updates_per_rollout"] == 2
            assert plan["gradient_accumulation_steps"] * cfg.per_device_train_batch_size * 8 == 256 * 16


def test_batch_arithmetic() -> None:
    assert accumulation_for(192, 6, 4, what="global_batch_size") == 8
    assert accumulation_for(192, 6, 1, what="global_batch_size") == 32
    with pytest.raises(InvalidInputError, match="not a multiple"):
        accumulation_for(192, 5, 4, what="global_batch_size")
    plan = batch_plan(RLConfig(per_device_train_batch_size=16), 8)
    assert plan == {"gradient_accumulation_steps": 32, "steps_per_generation": 64, "updates_per_rollout": 2}
    raw = batch_plan(RLConfig(rollout_batch_size=None, actor_batch_size=None, gradient_accumulation_steps=4), 2)
    assert raw == {"gradient_accumulation_steps": 4, "steps_per_generation": 4, "updates_per_rollout": 1}
    with pytest.raises(InvalidInputError, match="not a multiple"):
        batch_plan(RLConfig(per_device_train_batch_size=24), 8)
