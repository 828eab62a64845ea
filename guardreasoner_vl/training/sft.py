"""Stage 1, R-SFT: TRL's ``SFTTrainer`` on reasoning + result targets, loss on the assistant turn only.

:func:`run_sft` loads and validates the data (:mod:`guardreasoner_vl.training.data`), loads the base model,
freezes the vision tower and projector (paper default), optionally wraps it in a LoRA adapter (peft),
trains with ``trl.SFTTrainer`` (checkpoints, resume, TensorBoard through ``report_to``) and saves the final
model in the Hub layout :class:`~guardreasoner_vl.Guard` loads (LoRA merged first).

How a row becomes a training sequence (:class:`GuardSFTCollator`): the prompt is the *exact inference
prompt* rendered by :mod:`guardreasoner_vl.prompts` and tokenized by the same code the transformers backend
uses (:func:`guardreasoner_vl.backends.tokenization.encode_prompt`), the image is prepared by
:func:`guardreasoner_vl.inputs.prepare_image` with the training pixel cap, and the labels are the target
tokens plus the end-of-turn token ``<|im_end|>``; every prompt token is masked (-100). Train and serve
therefore see identical prompt token ids by construction.

Where this departs from the paper (LLaMA-Factory) and from TRL's defaults, and why:

* TRL's own vision collator renders the chat template and tokenizes it as one string: special-token
  strings inside user text (``<|im_end|>`` ...) would become control tokens, and it needs
  ``AutoProcessor`` (torchvision). Its ``assistant_only_loss`` would work with the Qwen2.5-VL template (TRL
  swaps in a training template with generation markers), but the prompt would then be tokenized
  differently from the guard at inference. Our collator is passed to ``SFTTrainer`` instead.
* Cutoff (2048 tokens): a sequence longer than the cutoff keeps its whole prompt and loses the end of the
  target (LLaMA-Factory splits the cut between prompt and target, which can cut image tokens); a row whose
  prompt alone does not fit is dropped before training and counted in the result.
* Master weights stay in float32 with bf16 autocast by default (``model_dtype``), as DeepSpeed does in the
  paper's setup; ``model_dtype: bfloat16`` trades precision for memory.
* The final model's processor files (``preprocessor_config.json``, chat template, tokenizer) are copied
  from the base checkpoint unchanged: the 768x768 training cap is a training choice, not a serving setting.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.errors import InvalidInputError, ModelLoadError, require
from guardreasoner_vl.prompts import IM_END, NO_RESPONSE, ModelFamily, detect_family, render_prompt
from guardreasoner_vl.training.config import RLConfig, SFTConfig, _TrainerFields

if TYPE_CHECKING:
    from guardreasoner_vl.training.data import TrainSample

__all__ = [
    "GuardSFTCollator",
    "TrainResult",
    "count_image_tokens",
    "freeze_vision",
    "load_training_samples",
    "resolve_resume",
    "run_sft",
    "save_for_guard",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
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


def _train_deps(*, lora: bool = False) -> tuple[Any, Any, Any]:
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
    torch, transformers, _ = _train_deps()
    dtype = getattr(torch, config.model_dtype)
    cls = transformers.AutoModelForImageTextToText if family is ModelFamily.VL else transformers.AutoModelForCausalLM
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


def trainer_kwargs(config: SFTConfig | RLConfig, *, bf16: bool, gradient_accumulation_steps: int) -> dict[str, Any]:
    """Arguments shared by TRL's ``SFTConfig`` and ``GRPOConfig``."""
    import dataclasses

    transformers = require("transformers", "train")
    fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    # transformers 5.x renamed gradient_checkpointing to activation_checkpointing (the old name warns).
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    passthrough = dict(config.trl_args)
    return {
        checkpointing: config.gradient_checkpointing,
        "output_dir": config.output_dir,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "num_train_epochs": config.num_train_epochs,
        "max_steps": config.max_steps,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler_type,
        "warmup_steps": config.warmup_ratio,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "bf16": bf16,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "report_to": config.report_to,
        "seed": config.seed,
        "dataloader_num_workers": config.dataloader_num_workers,
        "use_cpu": config.use_cpu,
        "deepspeed": config.deepspeed,
        **passthrough,
    }


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
    torch, transformers, _ = _train_deps()
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
        cls = (
            transformers.AutoModelForImageTextToText if family is ModelFamily.VL else transformers.AutoModelForCausalLM
        )
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


@cache
def _sft_trainer_class() -> type:
    base: Any = require("trl", "train").SFTTrainer

    class GuardSFTTrainer(ResumeWeightsMixin, base):  # type: ignore[misc]
        """``trl.SFTTrainer`` that resumes Qwen2.5-VL checkpoints with their weights (:class:`ResumeWeightsMixin`)."""

    GuardSFTTrainer.__module__ = __name__
    return GuardSFTTrainer


# ------------------------------------------------------------------------------------------ collator


class GuardSFTCollator:
    """Builds SFT batches: exact inference prompt (masked) + target + end-of-turn (trained).

    Args:
        tokenizer: the model's fast tokenizer.
        image_processor: the Qwen2.5-VL image processor (None for the text family).
        family: the prompt family.
        max_length: cutoff in tokens; the target is cut at the end to fit (the prompt never is).
        min_pixels, max_pixels: image resize bounds (training cap).

    Rows are dicts with ``text``, ``image`` (path or None), ``response`` and ``target``, as written by
    :meth:`TrainSample.model_dump`. The result has ``input_ids``, ``attention_mask``, ``labels`` and, when
    a row has an image, ``pixel_values``, ``image_grid_thw`` and ``mm_token_type_ids``.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_processor: Any = None,
        *,
        family: ModelFamily = ModelFamily.VL,
        max_length: int | None = 2048,
        min_pixels: int = 4 * 28 * 28,
        max_pixels: int = 768 * 768,
    ) -> None:
        from guardreasoner_vl.backends.tokenization import PlainEncoder
        from guardreasoner_vl.inputs import InputLimits

        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.family = ModelFamily(family)
        self.max_length = max_length
        self.limits = InputLimits(min_pixels=min_pixels, max_pixels=max_pixels)
        self.encoder = PlainEncoder(tokenizer)
        if self.family is ModelFamily.VL:
            self.end_ids = [self.encoder.token_id(IM_END)]
        else:
            eos = tokenizer.eos_token_id
            if eos is None:
                raise ModelLoadError("the tokenizer has no eos_token; the target needs an end token")
            self.end_ids = [int(eos)]
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.end_ids[0])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("encoder", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from guardreasoner_vl.backends.tokenization import PlainEncoder

        self.__dict__.update(state)
        self.encoder = PlainEncoder(self.tokenizer)

    def encode_row(self, row: dict[str, Any]) -> tuple[list[int], list[int], list[int], dict[str, Any] | None]:
        """``(input_ids, labels, image_mask, vision_inputs)`` of one row, before padding."""
        from guardreasoner_vl.backends.tokenization import encode_prompt
        from guardreasoner_vl.inputs import prepare_image

        image = row.get("image")
        target = row.get("target")
        if not target:
            raise InvalidInputError(f"row {row.get('id')!r} has no target: R-SFT needs reasoning + result targets")
        prompt = render_prompt(self.family, row.get("text"), response=row.get("response"), has_image=bool(image))
        vision = None
        n_image = 0
        if image:
            if self.image_processor is None:
                raise InvalidInputError("a row has an image but this model has no image processor")
            prepared = prepare_image(image, limits=self.limits)
            vision = self.image_processor(images=[prepared], return_tensors="pt")
            merge = int(getattr(self.image_processor, "merge_size", 2))
            n_image = int(vision["image_grid_thw"][0].prod().item()) // (merge * merge)
        encoded = encode_prompt(
            self.encoder, prompt, num_image_tokens=n_image, add_prefix=self.family is ModelFamily.TEXT
        )
        target_ids = self.encoder.encode(target) + self.end_ids
        prompt_ids = encoded.input_ids
        if self.max_length is not None:
            room = self.max_length - len(prompt_ids)
            if room < 1:
                raise InvalidInputError(
                    f"row {row.get('id')!r}: the prompt has {len(prompt_ids)} tokens, more than max_length="
                    f"{self.max_length} (such rows are dropped by run_sft before training)"
                )
            target_ids = target_ids[:room]
        ids = prompt_ids + target_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids
        mask = encoded.image_mask + [0] * len(target_ids)
        return ids, labels, mask, vision

    def prompt_length(self, row: dict[str, Any], *, image_tokens: int = 0) -> int:
        """Prompt tokens of a row (image tokens given by the caller), without loading the image."""
        from guardreasoner_vl.backends.tokenization import encode_prompt

        prompt = render_prompt(
            self.family, row.get("text"), response=row.get("response"), has_image=bool(row.get("image"))
        )
        encoded = encode_prompt(
            self.encoder, prompt, num_image_tokens=image_tokens, add_prefix=self.family is ModelFamily.TEXT
        )
        return len(encoded.input_ids)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        torch = require("torch", "train")
        encoded = [self.encode_row(row) for row in rows]
        longest = max(len(ids) for ids, _, _, _ in encoded)
        input_ids, labels, attention, mm = [], [], [], []
        for ids, lab, mask, _ in encoded:
            pad = longest - len(ids)
            input_ids.append(ids + [self.pad_id] * pad)
            labels.append(lab + [IGNORE_INDEX] * pad)
            attention.append([1] * len(ids) + [0] * pad)
            mm.append(mask + [0] * pad)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        visions = [v for _, _, _, v in encoded if v is not None]
        if visions:
            batch["pixel_values"] = torch.cat([v["pixel_values"] for v in visions])
            batch["image_grid_thw"] = torch.cat([v["image_grid_thw"] for v in visions])
            batch["mm_token_type_ids"] = torch.tensor(mm, dtype=torch.int)
        return batch


# ------------------------------------------------------------------------------------------------ run


def label_only_target(sample: TrainSample) -> str:
    """The target of the ablation "R-SFT w/o reasoning": the ``<result>`` block of the gold labels, no reasoning.

    Example:
        >>> from guardreasoner_vl.training.data import TrainSample
        >>> print(label_only_target(TrainSample(id="a", text="hi", request_label="harmful")))
        <result>
        Request: harmful
        Response: None
        </result>
    """
    response = sample.response_label or NO_RESPONSE
    return f"<result>\nRequest: {sample.request_label}\nResponse: {response}\n</result>"


def training_targets(samples: Sequence[TrainSample], mode: str) -> list[TrainSample]:
    """The rows with the targets R-SFT trains on: as loaded (``reasoning``) or label-only (``label_only``).

    Raises:
        InvalidInputError: an unknown mode, or (``reasoning``) rows without a target.
    """
    if mode == "label_only":
        return [s.model_copy(update={"target": label_only_target(s)}) for s in samples]
    if mode != "reasoning":
        raise InvalidInputError(f"targets must be 'reasoning' or 'label_only', got {mode!r}")
    missing = [s.id for s in samples if not s.target]
    if missing:
        raise InvalidInputError(
            f"{len(missing)} rows have no target (reasoning + result), e.g. {missing[:3]}; R-SFT needs one per row "
            "(or set targets: label_only to train on the labels alone)"
        )
    return list(samples)


def _fits(collator: GuardSFTCollator, samples: list[TrainSample], config: SFTConfig) -> tuple[list[TrainSample], int]:
    kept: list[TrainSample] = []
    dropped = 0
    for sample in samples:
        image_tokens = 0
        if sample.image:
            image_tokens = count_image_tokens(
                sample.image, min_pixels=config.image_min_pixels, max_pixels=config.image_max_pixels
            )
        length = collator.prompt_length(sample.model_dump(), image_tokens=image_tokens)
        if length + 1 > config.max_length:
            dropped += 1
            continue
        kept.append(sample)
    if dropped:
        logger.warning("dropped %d rows whose prompt alone exceeds max_length=%d tokens", dropped, config.max_length)
    return kept, dropped


def run_sft(
    config: SFTConfig,
    *,
    callbacks: Sequence[Any] = (),
    final_dtype: str | None = "bfloat16",
) -> TrainResult:
    """Run R-SFT as configured and return what it did.

    Args:
        config: the stage config (paper defaults; see :class:`SFTConfig`).
        callbacks: extra ``transformers.TrainerCallback`` objects (progress, early stopping, tests).
        final_dtype: dtype of the saved final model (``None``: as trained).

    Returns:
        A :class:`TrainResult`; the final model (``<output_dir>/final``) loads with
        ``Guard(path, backend="transformers")``.

    Raises:
        InvalidInputError: a bad config or bad data (with what to change).
        ModelLoadError: the base model cannot be loaded.

    Example:
        >>> from guardreasoner_vl.training.config import load_config        # doctest: +SKIP
        >>> cfg = load_config("training/qwen2.5-vl-3b/sft.yaml", "sft")     # doctest: +SKIP
        >>> run_sft(cfg).final_model                                       # doctest: +SKIP
    """
    if not config.model:
        raise InvalidInputError("set model (the base checkpoint, e.g. Qwen/Qwen2.5-VL-3B-Instruct)")
    if not config.output_dir:
        raise InvalidInputError("set output_dir (where checkpoints and the final model go)")
    if not config.data:
        raise InvalidInputError("no training data: set data (a file, a folder, or a list of them)")
    torch, transformers, trl = _train_deps(lora=config.finetuning == "lora")
    datasets = require("datasets", "train")

    family = model_family(config.model)
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir)
    samples, counts = load_training_samples(config)
    samples = training_targets(samples, config.targets)
    if family is ModelFamily.TEXT and any(s.image for s in samples):
        raise InvalidInputError(f"{config.model} is a text-only model; the data has image rows")

    from guardreasoner_vl.training.processing import load_processor

    if family is ModelFamily.VL:
        processor = load_processor(config.model, min_pixels=config.image_min_pixels, max_pixels=config.image_max_pixels)
        tokenizer, image_processor = processor.tokenizer, processor.image_processor
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(config.model)
        processor, image_processor = tokenizer, None
    collator = GuardSFTCollator(
        tokenizer,
        image_processor,
        family=family,
        max_length=config.max_length,
        min_pixels=config.image_min_pixels,
        max_pixels=config.image_max_pixels,
    )
    samples, too_long = _fits(collator, samples, config)
    if not samples:
        raise InvalidInputError(f"no row fits in max_length={config.max_length} tokens")
    rows = [s.model_dump(mode="json") for s in samples]
    dataset = datasets.Dataset.from_list(rows)

    use_cpu = config.use_cpu or not torch.cuda.is_available()
    bf16 = resolve_bf16(config.bf16, use_cpu=use_cpu)
    processes = world_size()
    accumulation = (
        accumulation_for(
            config.global_batch_size, config.per_device_train_batch_size, processes, what="global_batch_size"
        )
        if config.global_batch_size is not None
        else config.gradient_accumulation_steps
    )
    kwargs = trainer_kwargs(config, bf16=bf16, gradient_accumulation_steps=accumulation)
    kwargs.update(
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,  # the collator applies the cutoff (prompt kept whole)
    )
    kwargs["use_cpu"] = use_cpu
    # The training arguments exist before the model is loaded, so that DeepSpeed ZeRO-3 partitions it at load.
    args = trl.SFTConfig(**kwargs)
    model = load_model(config, family)
    if config.finetuning == "full":
        counts_frozen = freeze_vision(model, tower=config.freeze_vision_tower, projector=config.freeze_projector)
        logger.info("parameters: %s", counts_frozen)
    elif not (config.freeze_vision_tower and config.freeze_projector):
        logger.warning("with LoRA only the adapter trains; freeze_vision_tower/freeze_projector=false have no effect")
    trainer = _sft_trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        data_collator=collator,
        peft_config=lora_config(config) if config.finetuning == "lora" else None,
        callbacks=list(callbacks) or None,
    )
    logger.info(
        "R-SFT: %d rows, %d processes x %d per device x %d accumulation, bf16=%s, resume=%s",
        len(rows),
        processes,
        config.per_device_train_batch_size,
        accumulation,
        bf16,
        resume,
    )
    return train_and_save(
        trainer,
        config,
        resume=resume,
        tokenizer=tokenizer,
        final_dtype=final_dtype,
        num_samples=len(rows),
        dropped={"too_long": too_long, **counts},
    )
