"""What the two TRL stages (R-SFT, GRPO) share: loading rows and models, TRL's config from our ``trl`` mapping,
the batch arithmetic, checkpoint resume, saving the final model for :class:`~guardreasoner_vl.Guard`, and the
one idiom that builds our TRL subclasses lazily.

:mod:`~guardreasoner_vl.training.sft` and :mod:`~guardreasoner_vl.training.rl` are the stages; this module
holds no stage logic. Importing it is cheap (torch, transformers and TRL load inside the functions).

Lazy TRL subclasses, one idiom: a module writes its subclass inside a builder decorated with
:func:`trl_subclass` (built once, on first use, with a proper ``__module__``/``__qualname__`` so it pickles)
and exposes it with ``__getattr__ = lazy_classes(__name__, Name=builder)``; the module's own code calls the
builder.

TRL private methods we override (checked against TRL 1.16, the range ``pyproject.toml`` pins):
``Trainer._load_from_checkpoint`` (:class:`ResumeWeightsMixin`), ``GRPOTrainer._compute_loss``
(:mod:`~guardreasoner_vl.training.clipping`), ``GRPOTrainer._get_per_token_logps_and_entropies`` and
``GRPOTrainer._tokenize_prompts`` (:mod:`~guardreasoner_vl.training.rl`).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.errors import InvalidInputError, ModelLoadError, require
from guardreasoner_vl.prompts import ModelFamily, detect_family

if TYPE_CHECKING:
    from guardreasoner_vl.training.config import RLConfig, SFTConfig, _TrainerFields
    from guardreasoner_vl.training.data import TrainSample

__all__ = [
    "ResumeWeightsMixin",
    "TrainResult",
    "accumulation_for",
    "count_image_tokens",
    "freeze_vision",
    "lazy_classes",
    "load_checkpoint_weights",
    "load_model",
    "load_training_samples",
    "lora_config",
    "model_family",
    "resolve_bf16",
    "resolve_resume",
    "save_for_guard",
    "train_and_save",
    "train_deps",
    "trl_arguments",
    "trl_subclass",
    "uses_cpu",
    "world_size",
]

logger = logging.getLogger(__name__)


def trl_subclass(builder: Callable[[], type]) -> Callable[[], type]:
    """Decorate the builder of a TRL subclass: built once on first call, named as if defined in its module."""

    @functools.cache
    def build() -> type:
        cls = builder()
        cls.__module__ = builder.__module__
        cls.__qualname__ = cls.__name__
        return cls

    functools.update_wrapper(build, builder)
    return build


def lazy_classes(module: str, **builders: Callable[[], type]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that returns each lazily built class by name (see :func:`trl_subclass`)."""

    def __getattr__(name: str) -> Any:
        builder = builders.get(name)
        if builder is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return builder()

    return __getattr__


SERVING_FILES = (
    "preprocessor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
"""Files copied from the base checkpoint into the final model (when the base has them)."""


@dataclass(frozen=True)
class TrainResult:
    """What a training stage did.

    Attributes:
        output_dir: the run folder (checkpoints, logs).
        final_model: the saved model in the Hub layout, or None when not saved.
        global_step: optimizer steps done (counting the steps of a resumed checkpoint).
        metrics: TRL's final training metrics (``train_loss``, ``train_runtime`` ...).
        num_samples: rows trained on.
        dropped: rows left out before training, by reason.
        resumed_from: the checkpoint the run resumed from, if any.
        clip_history: RL only: ``(s, epsilon_low, epsilon_high)`` of every loss call of this process
            (``s`` is the schedule step; see :mod:`guardreasoner_vl.training.clipping`).
        clip_total: RL only: T, the schedule's total number of steps.
    """

    output_dir: Path
    final_model: Path | None
    global_step: int
    metrics: dict[str, float]
    num_samples: int
    dropped: dict[str, int] = field(default_factory=dict)
    resumed_from: str | None = None
    clip_history: tuple[tuple[int, float, float], ...] = ()
    clip_total: int | None = None


# ------------------------------------------------------------------------------------------- helpers


def train_deps(*, lora: bool = False) -> tuple[Any, Any, Any]:
    torch = require("torch", "train", feature="guardreasoner_vl.training")
    transformers = require("transformers", "train", feature="guardreasoner_vl.training")
    trl = require("trl", "train", feature="guardreasoner_vl.training")
    require("datasets", "train", feature="guardreasoner_vl.training")
    if lora:
        require("peft", "train", feature="LoRA training")
    return torch, transformers, trl


def world_size() -> int:
    """Processes in this run (``WORLD_SIZE``, set by ``accelerate launch``/``torchrun``; 1 otherwise)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def accumulation_for(global_batch: int, per_device: int, processes: int, *, what: str) -> int:
    """Gradient accumulation steps so that ``per_device * processes * steps == global_batch``.

    Raises:
        InvalidInputError: ``global_batch`` is not a multiple of ``per_device * processes``.

    Example:
        >>> accumulation_for(192, 6, 4, what="global_batch_size")
        8
    """
    step = per_device * processes
    if global_batch % step:
        raise InvalidInputError(
            f"{what}={global_batch} is not a multiple of per_device_train_batch_size x processes "
            f"= {per_device} x {processes} = {step}; change one of them (or set {what}=null and give "
            "gradient_accumulation_steps)"
        )
    return global_batch // step


def resolve_bf16(setting: bool | str, *, use_cpu: bool) -> bool:
    """``auto`` -> True on a CUDA GPU with bf16 support (never on CPU)."""
    if setting != "auto":
        return bool(setting)
    if use_cpu:
        return False
    torch = require("torch", "train")
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_resume(setting: str | bool | None, output_dir: str | os.PathLike[str]) -> str | None:
    """The checkpoint to resume from: ``True`` -> the last ``checkpoint-N`` (error if none), ``"auto"`` ->
    the last one if any, a path -> that path, ``None`` -> start fresh."""
    if setting is None or setting is False:
        return None
    if setting is True or setting == "auto":
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
        if last is None and setting is True:
            raise InvalidInputError(f"resume_from_checkpoint=true but {output_dir} holds no checkpoint-N folder")
        return last
    path = Path(str(setting)).expanduser()
    if not path.is_dir():
        raise InvalidInputError(f"resume_from_checkpoint: {path} is not a checkpoint folder")
    return str(path)


def load_training_samples(config: Any) -> tuple[list[TrainSample], dict[str, Any]]:
    """Load and validate every file of ``config.data``; apply ``max_samples``; return rows and counts."""
    from guardreasoner_vl.training.data import load_samples

    if not config.data:
        raise InvalidInputError("no training data: set data (a file, a folder, or a list of them)")
    samples: list[TrainSample] = []
    errors = 0
    for path in config.data:
        report = load_samples(path, format=config.data_format, image_root=config.image_root, strict=config.strict_data)
        samples.extend(report.samples)
        errors += len(report.errors)
        logger.info("loaded %s: %s", path, report.summary())
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise InvalidInputError(f"duplicate sample ids across the data files: {dupes}")
    if config.max_samples is not None:
        samples = samples[: config.max_samples]
    if not samples:
        raise InvalidInputError(f"no valid rows in {config.data}")
    return samples, {"invalid_rows": errors}


def count_image_tokens(path: str, *, min_pixels: int, max_pixels: int) -> int:
    """Image pad tokens a Qwen2.5-VL prompt gets for the image at ``path`` (read from the header only)."""
    from PIL import Image

    from guardreasoner_vl.inputs import smart_resize

    try:
        with Image.open(path) as image:
            width, height = image.size
    except OSError as exc:
        raise InvalidInputError(f"cannot read image {path}: {exc}") from exc
    h, w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    return (h // 28) * (w // 28)


def freeze_vision(model: Any, *, tower: bool, projector: bool) -> dict[str, int]:
    """Freeze the vision encoder and/or the projector (``visual.merger``) of a Qwen2.5-VL model.

    Returns:
        Parameter counts ``{"frozen": n, "trainable": m}`` after freezing.
    """
    visual = getattr(model, "visual", None)
    if visual is None:
        visual = getattr(getattr(model, "model", None), "visual", None)
    if visual is not None:
        for name, param in visual.named_parameters():
            is_projector = name.startswith("merger.")
            if (is_projector and projector) or (not is_projector and tower):
                param.requires_grad_(False)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"frozen": frozen, "trainable": trainable}


def model_family(model_path: str) -> ModelFamily:
    """The prompt family of a checkpoint (VL for Qwen2.5-VL, text for Llama-style GuardReasoner)."""
    try:
        return detect_family(model_path)
    except InvalidInputError:
        transformers = require("transformers", "train")
        config = transformers.AutoConfig.from_pretrained(model_path)
        return detect_family(model_path, model_type=getattr(config, "model_type", None))


def load_model(config: _TrainerFields, family: ModelFamily) -> Any:
    """Load the model to train, with weights in ``config.model_dtype``."""
    torch, transformers, _ = train_deps()
    dtype = getattr(torch, config.model_dtype)
    cls = getattr(transformers, family.spec.model_class)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    try:
        return cls.from_pretrained(config.model, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {config.model!r} for training: {exc}") from exc


def lora_config(config: _TrainerFields) -> Any:
    """The peft ``LoraConfig`` of ``config.lora``."""
    peft = require("peft", "train", feature="LoRA training")
    return peft.LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def trl_arguments(config: SFTConfig | RLConfig, cls: Any, **stage: Any) -> Any:
    """TRL's config object (``cls``: ``trl.SFTConfig`` or ``trl.GRPOConfig``) built from ``config.trl`` plus the
    values the stage computes (``stage``: batch plan, bf16, reward weights ...), validated by TRL itself.

    ``null`` values in ``config.trl`` are left out (TRL's default applies). ``gradient_checkpointing`` is passed
    under transformers 5's name ``activation_checkpointing`` where that exists (the old name warns).

    Raises:
        InvalidInputError: a key TRL's config does not have (with the closest one), or a value TRL refuses
            (TRL's own message).
    """
    import dataclasses
    import difflib

    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in config.trl.items() if v is not None}
    for key in given:
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f" (did you mean 'trl.{close[0]}'?)" if close else ""
            raise InvalidInputError(
                f"unknown key 'trl.{key}': TRL's {cls.__name__} has no field {key!r}{hint}; the trl mapping takes "
                f"{cls.__name__}'s fields (TRL {_trl_version()})"
            )
    if "gradient_checkpointing" in given and "activation_checkpointing" in fields:
        given["activation_checkpointing"] = given.pop("gradient_checkpointing")
    kwargs = {"save_strategy": "steps", **given, "output_dir": config.output_dir, "seed": config.seed, **stage}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"TRL's {cls.__name__} refused the trl settings: {exc}") from exc


def _trl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trl")
    except PackageNotFoundError:
        return "not installed"


def uses_cpu(config: SFTConfig | RLConfig) -> bool:
    """Train on CPU: ``trl.use_cpu`` is set, or no CUDA GPU is visible."""
    torch = require("torch", "train")
    return bool(config.trl_value("use_cpu", False)) or not torch.cuda.is_available()


def _copy_serving_files(base: str, out: Path, tokenizer: Any) -> None:
    from transformers.utils import cached_file

    copied = set()
    for name in SERVING_FILES:
        try:
            source = cached_file(
                base, name, _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False
            )
        except (OSError, ValueError):
            source = None
        if source:
            shutil.copyfile(source, out / name)
            copied.add(name)
    if "tokenizer.json" not in copied and tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    if "preprocessor_config.json" not in copied and "chat_template.json" not in copied:
        logger.warning("%s has no preprocessor_config.json/chat_template.json to copy into %s", base, out)


def _recast(out: Path, cls: Any, dtype: Any, name: str) -> None:
    """Rewrite the weights in ``out`` in ``dtype`` (through a temporary folder: the old files may be mapped)."""
    import json

    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    if config.get("dtype", config.get("torch_dtype")) == name:
        return
    tmp = out.parent / f".{out.name}.recast"
    shutil.rmtree(tmp, ignore_errors=True)
    model = cls.from_pretrained(str(out), dtype=dtype)
    model.save_pretrained(str(tmp), safe_serialization=True)
    del model
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    for new in tmp.iterdir():
        if new.name.startswith("model") or new.name in ("config.json", "generation_config.json"):
            shutil.move(str(new), str(out / new.name))
    shutil.rmtree(tmp, ignore_errors=True)


def save_for_guard(
    trainer: Any,
    out_dir: str | os.PathLike[str],
    *,
    base_model: str,
    tokenizer: Any = None,
    final_dtype: str | None = "bfloat16",
) -> Path:
    """Save the trained model in the Hub layout :class:`~guardreasoner_vl.Guard` loads.

    Full fine-tuning: ``trainer.save_model`` (gathers ZeRO-3 / FSDP shards). LoRA: the adapter is saved, then
    merged into a fresh copy of the base weights on the main process. Then the processor files of the base
    checkpoint are copied (``preprocessor_config.json``, chat template, tokenizer) and the weights are cast to
    ``final_dtype`` (bfloat16, as the released checkpoints; ``None`` keeps the training dtype).

    Returns:
        The folder written (on every process; only the main process writes).
    """
    torch, transformers, _ = train_deps()
    out = Path(out_dir)
    model = trainer.model
    is_peft = hasattr(model, "peft_config")
    if is_peft:
        adapter_dir = out.parent / (out.name + "-adapter")
        trainer.save_model(str(adapter_dir))
    else:
        trainer.save_model(str(out))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        dtype = getattr(torch, final_dtype) if final_dtype else None
        family = model_family(base_model)
        cls = getattr(transformers, family.spec.model_class)
        if is_peft:
            peft = require("peft", "train", feature="LoRA training")
            base = cls.from_pretrained(base_model, dtype=torch.float32)
            merged = peft.PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
            if dtype is not None:
                merged = merged.to(dtype)
            merged.save_pretrained(str(out), safe_serialization=True)
            del base, merged
        elif dtype is not None:
            _recast(out, cls, dtype, final_dtype or "")
        for stale in ("training_args.bin",):
            (out / stale).unlink(missing_ok=True)
        _copy_serving_files(base_model, out, tokenizer)
        logger.info("saved the final model for Guard in %s", out)
    trainer.accelerator.wait_for_everyone()
    return out


# ------------------------------------------------------------------------------------ resume fix


def train_and_save(
    trainer: Any,
    config: SFTConfig | RLConfig,
    *,
    resume: str | None,
    tokenizer: Any,
    final_dtype: str | None,
    num_samples: int,
    dropped: dict[str, int],
) -> TrainResult:
    """Train (resuming when asked), save the final model for ``Guard`` if configured, and report (R-SFT, GRPO)."""
    output = trainer.train(resume_from_checkpoint=resume)
    final = None
    if config.save_final_model:
        final = save_for_guard(
            trainer,
            Path(config.output_dir) / "final",
            base_model=config.model,
            tokenizer=tokenizer,
            final_dtype=final_dtype,
        )
    metrics = {k: float(v) for k, v in (output.metrics or {}).items() if isinstance(v, int | float)}
    return TrainResult(
        output_dir=Path(config.output_dir),
        final_model=final,
        global_step=int(trainer.state.global_step),
        metrics=metrics,
        num_samples=num_samples,
        dropped=dropped,
        resumed_from=resume,
    )


def load_checkpoint_weights(model: Any, checkpoint: str | os.PathLike[str]) -> bool:
    """Load ``checkpoint``'s ``model.safetensors`` (single or sharded) into ``model``, renaming saved keys.

    transformers saves Qwen2.5-VL checkpoints in the original key layout (``visual.*``, ``model.layers.*``)
    but ``Trainer`` resumes with a plain ``load_state_dict`` on the in-memory layout (``model.visual.*``,
    ``model.language_model.*``), so a resumed run silently kept its starting weights (transformers issue
    #43701). Here each in-memory key is mapped to its saved name with transformers' own
    ``revert_weight_conversion`` (what ``save_pretrained`` applies) before loading.

    Returns:
        False when there is nothing to do here (no safetensors weights: the caller falls back to transformers).

    Raises:
        InvalidInputError: the checkpoint's weights do not match the model.
    """
    import json

    from safetensors.torch import load_file
    from transformers.core_model_loading import revert_weight_conversion

    folder = Path(checkpoint)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        files = [folder / name for name in sorted(set(shards))]
    else:
        return False
    current = model.state_dict()
    saved_to_current: dict[str, str] = {}
    for name, tensor in current.items():
        for saved in revert_weight_conversion(model, {name: tensor}):
            saved_to_current[saved] = name
    state: dict[str, Any] = {}
    unknown: list[str] = []
    for file in files:
        for key, tensor in load_file(str(file), device="cpu").items():
            target = saved_to_current.get(key, key)
            if target in current:
                state[target] = tensor
            else:
                unknown.append(key)
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in result.missing_keys if k not in tied and not k.endswith("lm_head.weight")]
    if unknown or missing:
        raise InvalidInputError(
            f"checkpoint {folder} does not match the model: {len(missing)} weights missing "
            f"(e.g. {missing[:3]}), {len(unknown)} unknown (e.g. {unknown[:3]})"
        )
    logger.info("resumed the weights of %d tensors from %s", len(state), folder)
    return True


class ResumeWeightsMixin:
    """Trainer mixin: resume plain (non-DeepSpeed, non-FSDP, non-PEFT) checkpoints with key renaming."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        target = model if model is not None else self.model  # type: ignore[attr-defined]
        plain = not (
            getattr(self, "is_deepspeed_enabled", False)
            or getattr(self, "is_fsdp_enabled", False)
            or hasattr(target, "peft_config")
        )
        if plain and load_checkpoint_weights(target, resume_from_checkpoint):
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[misc]
