"""``guardreasoner_vl.training``: the GuardReasoner-VL recipe (R-SFT, hard-sample mining, safety-aware
concatenation, GRPO with dynamic clipping and the length-aware reward) as a thin typed layer over TRL.

Importing this package is cheap: no torch, transformers or TRL is loaded until a trainer, the clipping
trainer or the processor loader is used. Install the extra for those: ``pip install "guardreasoner-vl[train]"``.

Modules:
    data: load and validate rows (GuardReasoner-VLTrain records or our JSONL), convert them for TRL.
    augment: safety-aware concatenation of hard samples.
    rewards: the length-aware safety reward and its components, as TRL reward functions.
    clipping: the dynamic clip schedule and a ``GRPOTrainer`` that applies it at every loss call.
    processing: the Qwen2.5-VL processor without torchvision.
    config: typed stage configs (``SFTConfig``, ``MiningConfig``, ``AugmentConfig``, ``RLConfig``, ``load_config``).
    sft, rl: the two TRL stages (``run_sft``, ``run_rl``); mining: ``run_mining``, ``run_augment``.
    common: what the two TRL stages share (TRL config from the ``trl`` mapping, resume, saving for Guard).
    cli: the ``train`` commands.

Where each module departs from the paper (and from the released code) is written at its top.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AugmentConfig",
    "LengthAwareSafetyReward",
    "LoadReport",
    "MiningConfig",
    "RLConfig",
    "SFTConfig",
    "TrainResult",
    "TrainSample",
    "concatenate",
    "dynamic_clip_epsilon",
    "format_reward",
    "load_config",
    "load_samples",
    "request_accuracy_reward",
    "response_accuracy_reward",
    "run_augment",
    "run_mining",
    "run_rl",
    "run_sft",
    "save_samples",
    "to_rl_record",
    "to_sft_record",
]

_LAZY = {
    "LoadReport": "data",
    "TrainSample": "data",
    "load_samples": "data",
    "save_samples": "data",
    "to_rl_record": "data",
    "to_sft_record": "data",
    "concatenate": "augment",
    "LengthAwareSafetyReward": "rewards",
    "format_reward": "rewards",
    "request_accuracy_reward": "rewards",
    "response_accuracy_reward": "rewards",
    "dynamic_clip_epsilon": "clipping",
    "SFTConfig": "config",
    "MiningConfig": "config",
    "AugmentConfig": "config",
    "RLConfig": "config",
    "load_config": "config",
    "TrainResult": "common",
    "run_sft": "sft",
    "run_rl": "rl",
    "run_mining": "mining",
    "run_augment": "mining",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
