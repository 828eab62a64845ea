"""Our configs hold only our fields; the ``trl`` mapping reaches TRL's own SFTConfig / GRPOConfig, which
validate it, and TRL's refusals come back as InvalidInputError naming the key. No model is built here."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.training.common import trl_arguments
from guardreasoner_vl.training.config import RLConfig, SFTConfig, load_config
from guardreasoner_vl.training.rl import batch_plan

trl = pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[2]


def test_paper_values_reach_trls_config(tmp_path: Path) -> None:
    sft = SFTConfig(output_dir=str(tmp_path / "sft"), seed=3, trl={"use_cpu": True})
    args = trl_arguments(sft, trl.SFTConfig, gradient_accumulation_steps=8, bf16=False)
    assert isinstance(args, trl.SFTConfig)
    assert (args.learning_rate, args.lr_scheduler_type, args.num_train_epochs) == (5e-5, "cosine", 3.0)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.seed) == (6, 8, 3)
    assert args.output_dir == str(tmp_path / "sft") and args.use_cpu is True

    rl = load_config(ROOT / "training" / "qwen2.5-vl-3b" / "rl-eco.yaml", "rl", [f"output_dir={tmp_path / 'rl'}"])
    plan = batch_plan(rl, 8)
    args = trl_arguments(
        rl,
        trl.GRPOConfig,
        bf16=False,
        use_cpu=True,
        reward_weights=[1.0, 0.0, 0.0, 0.0],
        gradient_accumulation_steps=plan["gradient_accumulation_steps"],
        steps_per_generation=plan["steps_per_generation"],
    )
    assert (args.num_generations, args.temperature, args.beta, args.epsilon) == (16, 1.2, 0.0, 0.2)
    assert (args.learning_rate, args.weight_decay, args.max_completion_length) == (1e-6, 0.01, 3072)
    assert (args.gradient_accumulation_steps, args.steps_per_generation) == (32, 64)
    assert args.loss_type == "dapo"


def test_unknown_trl_key_names_the_closest_field(tmp_path: Path) -> None:
    config = SFTConfig(output_dir=str(tmp_path), trl={"learnig_rate": 1e-5})
    with pytest.raises(InvalidInputError, match=r"unknown key 'trl.learnig_rate'.*did you mean 'trl.learning_rate'"):
        trl_arguments(config, trl.SFTConfig)


def test_trls_own_refusal_is_an_invalid_input_error(tmp_path: Path) -> None:
    config = RLConfig(output_dir=str(tmp_path), trl={"lr_scheduler_type": "sometimes", "use_cpu": True})
    with pytest.raises(InvalidInputError, match="TRL's GRPOConfig refused the trl settings"):
        trl_arguments(config, trl.GRPOConfig)


def test_null_leaves_a_key_to_trls_default(tmp_path: Path) -> None:
    config = SFTConfig(output_dir=str(tmp_path), trl={"lr_scheduler_type": None, "use_cpu": True})
    assert config.trl["lr_scheduler_type"] is None
    default = trl.SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False).lr_scheduler_type
    assert trl_arguments(config, trl.SFTConfig, bf16=False).lr_scheduler_type == default != "cosine"


def test_lazy_trainer_classes_are_built_once_and_pickle_by_name() -> None:
    import pickle

    from guardreasoner_vl.training import clipping, rl, sft

    for module, name in ((sft, "GuardSFTTrainer"), (rl, "GuardGRPOTrainer"), (clipping, "DynamicClipGRPOTrainer")):
        cls = getattr(module, name)
        assert cls is getattr(module, name)
        assert (cls.__module__, cls.__qualname__) == (module.__name__, name)
        assert pickle.loads(pickle.dumps(cls)) is cls
    assert issubclass(rl.GuardGRPOTrainer, clipping.DynamicClipGRPOTrainer)
    assert issubclass(sft.GuardSFTTrainer, trl.SFTTrainer)
    with pytest.raises(AttributeError):
        _ = sft.NoSuchTrainer
