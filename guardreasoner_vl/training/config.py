"""Typed configs of the four training stages, with the paper's settings as defaults.

One pydantic model per stage: :class:`SFTConfig` (R-SFT), :class:`MiningConfig` (hard-sample mining),
:class:`AugmentConfig` (safety-aware concatenation) and :class:`RLConfig` (GRPO). They are loaded from
YAML (:func:`load_config`) and changed with ``key=value`` overrides (``lora.r=32``,
``trl.report_to=[tensorboard]``; values are read as YAML). Unknown keys are errors that name the closest
allowed key, so a typo never silently trains with a default.

Only our own fields are typed here (data, model, what the paper's method adds: global batches, the reward,
dynamic clipping, image bounds, freezing, ablation switches). TRL's own settings (learning rate, epochs,
``num_generations``, ``temperature``, ``epsilon``, logging, vLLM ...) sit in one ``trl:`` mapping that is
passed to TRL's ``SFTConfig``/``GRPOConfig``, which validate it; the paper's values are its defaults
(``TRL_DEFAULTS`` of each stage) and a given mapping is laid over them key by key.

Departures from the paper, and why:

* Batch sizes are global and hardware-independent: ``global_batch_size`` (R-SFT, paper 192) and
  ``rollout_batch_size``/``actor_batch_size`` (RL, in prompts; paper 512/256) are turned into gradient
  accumulation (and TRL's ``steps_per_generation``) for the number of processes actually running, so a
  recipe reproduces the paper's optimisation on 1 GPU or 64. Set them to ``null`` to use the raw TRL knobs.
* RL ``max_prompt_length`` is enforced by dropping over-long prompts before training (counted and logged):
  TRL 1.16 has no prompt truncation for vision prompts, and truncating would cut the image.
* Mining keeps exactly the samples wrong in every pass (the paper); the released code also kept every
  image-only sample regardless (``keep_image_only: true`` reproduces that) and sub-sampled the pool to
  12,000 (``cap: 12000``). Both are off by default: the paper's RL set size (about 12K, 20% merged) is set
  where it is reached, by the augment stage's ``total: 12000`` (9,600 hard + 2,400 merged).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guardreasoner_vl.errors import InvalidInputError

__all__ = [
    "STAGES",
    "AugmentConfig",
    "LoraSettings",
    "MiningConfig",
    "RLConfig",
    "SFTConfig",
    "apply_overrides",
    "config_class",
    "load_config",
    "parse_overrides",
]

SFT_MAX_PIXELS = 768 * 768
"""R-SFT image cap (the paper trained with images capped at 768x768 pixels)."""
RL_MIN_PIXELS = 512 * 512
RL_MAX_PIXELS = 2048 * 2048
"""RL images are resized into [512x512, 2048x2048] pixels (paper)."""

LANGUAGE_LINEAR_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
"""Default LoRA targets: every linear layer of the language model, none of the vision tower."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class LoraSettings(_Strict):
    """LoRA adapter settings (used when ``finetuning: lora``); the adapter is merged into the final model."""

    r: int = Field(default=16, ge=1)
    """Adapter rank."""
    alpha: int = Field(default=32, ge=1)
    """LoRA scaling numerator (``lora_alpha``)."""
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""
    target_modules: str | list[str] = LANGUAGE_LINEAR_MODULES
    """peft ``target_modules``: a regex or a list of module names (default: the language model's linear layers)."""


class _StageBase(_Strict):
    """Fields every stage has."""

    stage: str = ""
    """Which stage this file configures (``sft``, ``mine``, ``augment``, ``rl``); checked when loading."""
    seed: int = 42
    """Seed of everything random in the stage."""


class _DataFields(_Strict):
    data: list[str] = Field(default_factory=list)
    """Training data: JSONL/JSON files or folders (GuardReasoner-VLTrain splits or our JSONL format)."""
    data_format: Literal["auto", "jsonl", "vltrain"] = "auto"
    """Format of ``data`` (``auto``: records with ``messages`` are GuardReasoner-VLTrain, others our JSONL)."""
    image_root: str | None = None
    """Folder that relative image paths are resolved against (default: each data file's folder)."""
    strict_data: bool = True
    """Refuse the whole dataset when a row is invalid (else skip bad rows and report them)."""
    max_samples: int | None = Field(default=None, ge=1)
    """Use only the first N valid rows (quick runs and smoke tests)."""

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        if isinstance(value, (str, os.PathLike)):
            return [os.fspath(value)]
        return value


RESERVED_TRL_KEYS: dict[str, str] = {
    "output_dir": "set output_dir at the top level",
    "seed": "set seed at the top level",
    "bf16": "set bf16 at the top level (true, false or auto)",
    "resume_from_checkpoint": "set resume_from_checkpoint at the top level",
    "reward_weights": "the stage sets the reward weights (main reward 1, logged components 0)",
    "remove_unused_columns": "the stage needs every dataset column",
    "dataset_kwargs": "the stage prepares its own dataset",
    "max_length": "set max_length at the top level (the collator's cutoff; the prompt is never cut)",
    "max_prompt_length": "set max_prompt_length at the top level (over-long prompts are dropped, never cut)",
}
"""TRL fields the stages set themselves, so a ``trl:`` mapping may not give them (with what to do instead)."""


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class _TrainerFields(_Strict):
    """Fields shared by the two TRL trainers (R-SFT and GRPO): only ours; TRL's own settings go in ``trl``."""

    model: str = ""
    """Base checkpoint: a directory or a Hub id (R-SFT: Qwen2.5-VL-3B/7B-Instruct; RL: the R-SFT output)."""
    output_dir: str = ""
    """Where checkpoints (``checkpoint-N``), TensorBoard logs (``runs/``) and the final model (``final/``) go."""
    finetuning: Literal["full", "lora"] = "full"
    """Full fine-tuning (the paper) or a LoRA adapter (merged into the final model)."""
    lora: LoraSettings = LoraSettings()
    """LoRA settings, used when ``finetuning: lora``."""
    bf16: bool | Literal["auto"] = "auto"
    """bfloat16 mixed precision; ``auto``: on when a CUDA GPU with bf16 is present (never on CPU)."""
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the weights being trained: float32 master weights with bf16 autocast (default, like DeepSpeed's
    bf16 mode), or bfloat16 weights (half the memory; tiny updates such as RL's lr 1e-6 may round away)."""
    attn_implementation: str | None = "sdpa"
    """``sdpa``, ``flash_attention_2`` (GPU), ``eager``."""
    resume_from_checkpoint: str | bool | None = None
    """``true``: resume from the last ``checkpoint-N`` in ``output_dir``; a path: from that checkpoint;
    ``auto``: resume when a checkpoint exists, else start; ``null``: start fresh."""
    save_final_model: bool = True
    """Save the final model (LoRA merged) in the Hub layout :class:`~guardreasoner_vl.Guard` loads, in ``final/``."""
    trl: dict[str, Any] = Field(default_factory=dict)
    """TRL's own settings, passed to ``trl.SFTConfig`` / ``trl.GRPOConfig`` which validate them (an unknown key
    or a bad value is an error naming the key). The stage's paper values are the defaults (see the class's
    ``TRL_DEFAULTS``); a mapping given here is laid over them key by key, and ``null`` leaves a key to TRL's
    own default. Example: ``trl: {learning_rate: 1.0e-5, logging_steps: 1}``, or ``trl.max_steps=10``."""

    TRL_DEFAULTS: ClassVar[dict[str, Any]] = {}

    @field_validator("resume_from_checkpoint", mode="before")
    @classmethod
    def _resume(cls, value: object) -> object:
        if isinstance(value, str) and value.lower() in ("true", "false", "none", "null", ""):
            return {"true": True, "false": None, "none": None, "null": None, "": None}[value.lower()]
        if value is False:
            return None
        return value

    @model_validator(mode="before")
    @classmethod
    def _trl_over_defaults(cls, data: object) -> object:
        if not isinstance(data, Mapping):
            return data
        given = data.get("trl") or {}
        if not isinstance(given, Mapping) or not all(isinstance(k, str) for k in given):
            raise ValueError(f"trl must be a mapping of TRL config fields, got {type(given).__name__}")
        for key in given:
            if key in RESERVED_TRL_KEYS:
                raise ValueError(f"trl.{key} is set by the stage: {RESERVED_TRL_KEYS[key]}")
        # YAML 1.1 reads 1e-5 (no dot) as a string; TRL's dataclasses would not convert it.
        given = {k: float(v) if isinstance(v, str) and _FLOAT.fullmatch(v.strip()) else v for k, v in given.items()}
        return {**data, "trl": {**cls.TRL_DEFAULTS, **given}}

    def trl_value(self, key: str, default: Any = None) -> Any:
        """``trl[key]``, or ``default`` when absent or ``null``."""
        value = self.trl.get(key)
        return default if value is None else value

    def trl_int(self, key: str) -> int:
        """``trl[key]`` as a positive integer (the batch plan needs it), else an error saying so."""
        value = self.trl.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"trl.{key} must be a positive integer (the batch plan reads it), got {value!r}")
        return value


class SFTConfig(_StageBase, _DataFields, _TrainerFields):
    """Stage 1, R-SFT: supervised fine-tuning on reasoning + result targets (paper section 5.2 defaults).

    Example:
        >>> cfg = SFTConfig(model="Qwen/Qwen2.5-VL-3B-Instruct", data=["train.jsonl"], output_dir="out/sft")
        >>> cfg.trl["learning_rate"], cfg.trl["lr_scheduler_type"], cfg.trl["num_train_epochs"], cfg.max_length
        (5e-05, 'cosine', 3.0, 2048)
    """

    stage: Literal["sft"] = "sft"
    TRL_DEFAULTS: ClassVar[dict[str, Any]] = {
        "learning_rate": 5e-5,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.0,
        "num_train_epochs": 3.0,
        "max_steps": -1,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "per_device_train_batch_size": 6,
        "gradient_checkpointing": True,
        "logging_steps": 10,
        "save_steps": 500,
        "report_to": ["tensorboard"],
    }
    """The paper's R-SFT settings (section 5.2), laid under the ``trl`` mapping."""
    global_batch_size: int | None = Field(default=192, ge=1)
    """Sequences per optimizer step across all processes (paper: 6 x 8 accumulation x 4 GPUs = 192).
    Gradient accumulation is derived from it; ``null`` uses ``trl.gradient_accumulation_steps`` as given."""
    max_length: int = Field(default=2048, ge=16)
    """Cutoff in tokens (prompt with image tokens + target). Longer targets are cut at the end; rows whose
    prompt alone does not fit are dropped and counted."""
    image_max_pixels: int = Field(default=SFT_MAX_PIXELS, ge=28 * 28)
    """Images are smart-resized to at most this many pixels (paper: 768x768)."""
    image_min_pixels: int = Field(default=4 * 28 * 28, ge=28 * 28)
    targets: Literal["reasoning", "label_only"] = "reasoning"
    """``reasoning``: train on the whole ``<think>...</think><result>...</result>`` target (R-SFT, the paper);
    ``label_only``: train on the ``<result>`` block built from the gold labels alone (ablation "R-SFT w/o
    reasoning", plain SFT)."""
    freeze_vision_tower: bool = True
    """Keep the vision encoder (``model.visual`` blocks and patch embedding) frozen (paper)."""
    freeze_projector: bool = True
    """Keep the vision-language projector (``model.visual.merger``) frozen (paper)."""

    @model_validator(mode="after")
    def _check(self) -> SFTConfig:
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError("image_min_pixels must not exceed image_max_pixels")
        if self.global_batch_size is not None and self.trl.get("gradient_accumulation_steps") is not None:
            raise ValueError(
                "trl.gradient_accumulation_steps is derived from global_batch_size; set global_batch_size: null "
                "to give it yourself"
            )
        self.trl_int("per_device_train_batch_size")
        return self


class MiningConfig(_StageBase, _DataFields):
    """Hard-sample mining (rejection sampling): k sampled passes of the R-SFT model over the training set.

    A sample is hard when it is wrong in every pass: its request label, or its response label when it has
    a response, differs from the gold label, or the output could not be parsed.

    Example:
        >>> MiningConfig(model="out/sft/final", data=["train.jsonl"], output_dir="out/mine").passes
        4
    """

    stage: Literal["mine"] = "mine"
    model: str = ""
    """The R-SFT model (a checkpoint directory or Hub id)."""
    output_dir: str = ""
    """Per-pass results (``pass-1.jsonl`` ...), ``hard.jsonl`` and ``report.json`` go here."""
    passes: int = Field(default=4, ge=1)
    """Sampled passes over the data (paper: 4)."""
    temperature: float = Field(default=1.0, gt=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=4096, ge=1)
    """Generation budget per sample (the reference decoding budget)."""
    batch_size: int = Field(default=64, ge=1)
    """Samples per ``moderate_batch`` call; results are written to disk after each call (resume granularity)."""
    backend: str = "auto"
    """Any :class:`~guardreasoner_vl.Guard` backend: ``auto``, ``vllm`` (fast), ``transformers``, ``remote``."""
    backend_options: dict[str, Any] = Field(default_factory=dict)
    """Extra engine options (e.g. ``tensor_parallel_size`` for vLLM, ``base_url`` for remote)."""
    engine_batch_size: int = Field(default=8, ge=1)
    """Prompts per engine call (the Guard's ``batch_size``; vLLM batches internally anyway)."""
    device: str | None = None
    dtype: str | None = None
    max_pixels: int | None = Field(default=None, ge=28 * 28)
    """Smart-resize upper bound of images (default: the inference default)."""
    cap: int | None = Field(default=None, ge=1)
    """Keep at most this many hard samples, drawn at random with ``seed`` (the released code used 12,000)."""
    keep_image_only: bool = False
    """Also keep every image-only sample whatever the passes say (the released code's behaviour, not the paper's)."""
    save_outputs: bool = False
    """Store the raw generated text in the per-pass files (large)."""


class AugmentConfig(_StageBase):
    """Safety-aware concatenation: merge pairs of hard samples into extra RL rows.

    Example:
        >>> AugmentConfig(hard="out/mine/hard.jsonl", output="out/rl_data.jsonl").ratio
        0.2
    """

    stage: Literal["augment"] = "augment"
    hard: str = ""
    """The hard samples (``hard.jsonl`` written by ``train mine``)."""
    output: str = ""
    """The RL set to write (JSONL): the hard samples plus the merged ones."""
    image_dir: str | None = None
    """Where merged images are written (default: ``<output folder>/merged_images``)."""
    ratio: float = Field(default=0.2, ge=0.0, lt=1.0)
    """Share of merged samples in the resulting RL set (paper: 20%; ``0``: the ablation "w/o data
    concatenation", the RL set is hard samples only)."""
    total: int | None = Field(default=12000, ge=1)
    """Size of the RL set (paper: about 12K, 20% of them merged). It is reached as ``round(total * ratio)``
    merged rows (2,400) plus ``total - merged`` hard rows (9,600) drawn at random with ``seed`` from the mined
    pool; a smaller pool is used whole, with ``ratio`` kept (and a warning). ``null``: every mined row plus
    ``ratio`` merged ones (the set then grows with the pool: 12,000 mined rows gave 15,000 and T = 29
    rollout rounds instead of the paper's 23)."""
    max_width: int = Field(default=1024, ge=28)
    max_height: int = Field(default=1024, ge=28)
    """Merged images are shrunk to fit in max_width x max_height (paper: 1024x1024)."""
    image_root: str | None = None
    """Folder that relative image paths in ``hard`` are resolved against."""


class RLConfig(_StageBase, _DataFields, _TrainerFields):
    """Stage 2: online RL with GRPO, no KL, dynamic clipping and the length-aware safety reward (paper 5.4).

    Example:
        >>> cfg = RLConfig(model="out/sft/final", data=["out/rl.jsonl"], output_dir="out/rl")
        >>> cfg.trl["num_generations"], cfg.trl["temperature"], cfg.trl["learning_rate"], cfg.effective_reward_beta
        (16, 1.2, 1e-06, 1.0)
        >>> RLConfig(eco=True).effective_reward_beta
        0.16666666666666666
    """

    stage: Literal["rl"] = "rl"
    TRL_DEFAULTS: ClassVar[dict[str, Any]] = {
        "learning_rate": 1e-6,
        "lr_scheduler_type": "constant",
        "weight_decay": 1e-2,
        "num_train_epochs": 1.0,
        "max_steps": -1,
        "per_device_train_batch_size": 16,
        "num_generations": 16,
        "temperature": 1.2,
        "top_p": 1.0,
        "beta": 0.0,
        "epsilon": 0.2,
        "max_completion_length": 3072,
        "loss_type": "dapo",
        "scale_rewards": "group",
        "mask_truncated_completions": False,
        "gradient_checkpointing": True,
        "logging_steps": 10,
        "save_steps": 5,
        "report_to": ["tensorboard"],
    }
    """The paper's GRPO settings (section 5.4), laid under the ``trl`` mapping: G = 16 rollouts
    (``num_generations``; ``per_device_train_batch_size`` counts completions, 16 = one prompt's group) at
    temperature 1.2, lr 1e-6 constant, weight decay 1e-2, no KL (``beta: 0``), clip range 0.2 (``epsilon``),
    rollouts up to 3072 tokens, ``dapo`` loss (token mean over the accumulated batch, like verl's default) and
    group-scaled advantages."""
    dynamic_clipping: bool = True
    """Apply the paper's shrinking clip bound B_s = eps * prod_{i<=s}(1 - i/T) (eps = ``trl.epsilon``) at every
    step (``false``: a constant ``epsilon``, the ablation "w/o dynamic clipping")."""
    max_prompt_length: int | None = Field(default=3072, ge=16)
    """Prompts longer than this (text + image tokens) are dropped before training and counted (paper: 3072)."""
    rollout_batch_size: int | None = Field(default=512, ge=1)
    """Prompts per generation round across all processes (paper: 512). With ``actor_batch_size`` it sets
    gradient accumulation and TRL's ``steps_per_generation``; ``null`` uses the raw TRL fields."""
    actor_batch_size: int | None = Field(default=256, ge=1)
    """Prompts per optimizer step across all processes (paper: 256; the released code used 128)."""
    eco: bool = False
    """Eco variant: the reward's length cap beta is 1/6 instead of 1 (unless ``reward_beta`` is given); measured in
    ``length_unit`` (characters by default, as the authors did)."""
    reward_beta: float | None = Field(default=None, gt=0.0, le=1.0)
    """Length cap beta of the reward; ``null``: 1 (standard) or 1/6 (``eco: true``)."""
    reward_max_length: int = Field(default=3072, ge=1)
    """Length normaliser of the reward (l_norm = length / reward_max_length)."""
    length_unit: Literal["chars", "tokens"] = "chars"
    """Unit of the reward's length term: ``chars`` (the released EasyR1 reward: ``len(text) / 3072``, Eco capped
    at 500 characters ~ 3072/6) or ``tokens`` (``len(completion_ids) / reward_max_length``). With tokens the
    Eco cap binds only above 3072/6 = 512 tokens, while outputs average about 208 tokens, so Eco would train
    the standard model; with characters it binds above 512 characters (a typical output has ~900)."""
    reward: Literal["length_aware", "safety"] = "length_aware"
    """``length_aware``: the paper's reward; ``safety``: the plain r_safety (ablation "w/o length-aware reward")."""
    image_min_pixels: int = Field(default=RL_MIN_PIXELS, ge=28 * 28)
    image_max_pixels: int = Field(default=RL_MAX_PIXELS, ge=28 * 28)
    """Images are resized into [image_min_pixels, image_max_pixels] (paper: [512x512, 2048x2048])."""
    freeze_vision_tower: bool = False
    """The paper trains the vision tower in RL."""

    @property
    def effective_reward_beta(self) -> float:
        """``reward_beta`` when given, else 1/6 for Eco and 1 otherwise."""
        if self.reward_beta is not None:
            return self.reward_beta
        return 1.0 / 6.0 if self.eco else 1.0

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError("image_min_pixels must not exceed image_max_pixels")
        if (self.rollout_batch_size is None) != (self.actor_batch_size is None):
            raise ValueError("set both rollout_batch_size and actor_batch_size, or neither")
        if (
            self.rollout_batch_size is not None
            and self.actor_batch_size is not None
            and self.rollout_batch_size % self.actor_batch_size
        ):
            raise ValueError(
                f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                f"actor_batch_size ({self.actor_batch_size})"
            )
        if self.rollout_batch_size is not None:
            given = [k for k in ("gradient_accumulation_steps", "steps_per_generation") if self.trl.get(k) is not None]
            if given:
                raise ValueError(
                    f"trl.{given[0]} is derived from rollout_batch_size and actor_batch_size; set both to null "
                    "to give it yourself"
                )
        self.trl_int("per_device_train_batch_size")
        self.trl_int("num_generations")
        return self


STAGES: dict[str, type[_StageBase]] = {
    "sft": SFTConfig,
    "mine": MiningConfig,
    "augment": AugmentConfig,
    "rl": RLConfig,
}
"""Stage name -> config class."""

C = TypeVar("C", bound=BaseModel)


def config_class(stage: str) -> type[_StageBase]:
    """The config class of ``stage`` (``sft``, ``mine``, ``augment``, ``rl``)."""
    try:
        return STAGES[stage]
    except KeyError:
        raise InvalidInputError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}") from None


def _field_names(cls: type[BaseModel]) -> list[str]:
    return list(cls.model_fields)


def _nested_class(cls: type[BaseModel], name: str) -> type[BaseModel] | None:
    annotation = cls.model_fields[name].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _check_keys(cls: type[BaseModel], data: Mapping[str, Any], prefix: str = "") -> None:
    allowed = _field_names(cls)
    for key, value in data.items():
        if not isinstance(key, str) or key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            raise InvalidInputError(
                f"unknown key {prefix + str(key)!r} in the {cls.__name__}{hint}; allowed keys: {', '.join(allowed)}"
            )
        nested = _nested_class(cls, key)
        if nested is not None and isinstance(value, Mapping):
            _check_keys(nested, value, prefix=f"{prefix}{key}.")


def _validation_message(cls: type[BaseModel], exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(config)"
        lines.append(f"  {loc}: {str(err['msg']).removeprefix('Value error, ')}")
    return f"invalid {cls.__name__}:\n" + "\n".join(lines)


def _build(cls: type[C], data: Mapping[str, Any]) -> C:
    _check_keys(cls, data)
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidInputError(_validation_message(cls, exc)) from None


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["lora.r=32", "report_to=[none]"]`` into a nested dict (values read as YAML).

    Raises:
        InvalidInputError: an item is not ``key=value``.

    Example:
        >>> parse_overrides(["lora.r=32", "bf16=false", "data=[a.jsonl, b.jsonl]"])
        {'lora': {'r': 32}, 'bf16': False, 'data': ['a.jsonl', 'b.jsonl']}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise InvalidInputError(f"an override is KEY=VALUE (e.g. learning_rate=1e-5 or lora.r=32), got {item!r}")
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InvalidInputError(f"override {item!r} conflicts with an earlier override of {part!r}")
            node = child
        node[parts[-1]] = _parse_value(value)
    return out


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any], cls: type[BaseModel] | None) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        nested = _nested_class(cls, key) if cls is not None and key in cls.model_fields else None
        # Mapping fields (trl, backend_options) and nested sections merge key by key.
        is_mapping_field = (
            cls is not None
            and key in cls.model_fields
            and "dict" in str(cls.model_fields[key].annotation)
            and isinstance(value, Mapping)
        )
        if isinstance(value, Mapping) and isinstance(merged.get(key), (Mapping, BaseModel)):
            current = merged[key]
            current_map = current.model_dump() if isinstance(current, BaseModel) else current
            merged[key] = _merge(current_map, value, nested) if (nested or is_mapping_field) else dict(value)
        else:
            merged[key] = value
    return merged


def apply_overrides(config: C, overrides: Mapping[str, Any] | Sequence[str]) -> C:
    """A copy of ``config`` with ``overrides`` (a nested dict, or ``key=value`` strings) applied and validated.

    Raises:
        InvalidInputError: an unknown key (with the closest allowed one) or an invalid value.

    Example:
        >>> cfg = apply_overrides(SFTConfig(), ["trl.learning_rate=1e-5", "finetuning=lora", "lora.r=8"])
        >>> cfg.trl["learning_rate"], cfg.finetuning, cfg.lora.r
        (1e-05, 'lora', 8)
    """
    changes = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    cls = type(config)
    _check_keys(cls, changes)
    data = _merge(config.model_dump(exclude_unset=False), changes, cls)
    return _build(cls, data)


def load_config(
    path: str | os.PathLike[str] | None,
    stage: str,
    overrides: Mapping[str, Any] | Sequence[str] = (),
) -> Any:
    """Load the config of ``stage`` from a YAML file (or from overrides alone) and apply ``overrides``.

    Args:
        path: a YAML file whose top-level keys are the stage's fields (``None``: defaults + overrides).
        stage: ``sft``, ``mine``, ``augment`` or ``rl``; a ``stage:`` key in the file must agree.
        overrides: ``key=value`` strings (dotted keys for nested sections) or a nested dict.

    Raises:
        InvalidInputError: unreadable file, wrong stage, unknown key, invalid value.
    """
    cls = config_class(stage)
    data: dict[str, Any] = {}
    if path is not None:
        import yaml

        file = Path(path).expanduser()
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidInputError(f"cannot read config {file}: {exc}") from None
        except yaml.YAMLError as exc:
            raise InvalidInputError(f"{file} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise InvalidInputError(f"{file} must hold a mapping of config keys, got {type(loaded).__name__}")
        data = dict(loaded)
        declared = data.get("stage")
        if declared is not None and declared != stage:
            raise InvalidInputError(f"{file} configures the {declared!r} stage, not {stage!r}")
    changes = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    _check_keys(cls, data)
    _check_keys(cls, changes)
    merged = _merge(data, changes, cls)
    return _build(cls, merged)
