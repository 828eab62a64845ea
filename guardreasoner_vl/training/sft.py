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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.errors import InvalidInputError, ModelLoadError, require
from guardreasoner_vl.prompts import IM_END, NO_RESPONSE, ModelFamily, render_prompt
from guardreasoner_vl.training.common import (
    ResumeWeightsMixin,
    TrainResult,
    accumulation_for,
    count_image_tokens,
    freeze_vision,
    lazy_classes,
    load_model,
    load_training_samples,
    lora_config,
    model_family,
    resolve_bf16,
    resolve_resume,
    train_and_save,
    train_deps,
    trl_arguments,
    trl_subclass,
    uses_cpu,
    world_size,
)
from guardreasoner_vl.training.config import SFTConfig

if TYPE_CHECKING:
    from guardreasoner_vl.training.data import TrainSample

__all__ = [  # noqa: F822 (GuardSFTTrainer is built on first access, see __getattr__)
    "GuardSFTCollator",
    "GuardSFTTrainer",
    "label_only_target",
    "run_sft",
    "training_targets",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@trl_subclass
def _sft_trainer_class() -> type:
    base: Any = require("trl", "train").SFTTrainer

    class GuardSFTTrainer(ResumeWeightsMixin, base):  # type: ignore[misc]
        """``trl.SFTTrainer`` that resumes Qwen2.5-VL checkpoints with their weights (:class:`ResumeWeightsMixin`)."""

    return GuardSFTTrainer


__getattr__ = lazy_classes(__name__, GuardSFTTrainer=_sft_trainer_class)


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
        if self.family.spec.supports_images:
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
        encoded = encode_prompt(self.encoder, prompt, num_image_tokens=n_image, add_prefix=self.family.spec.adds_bos)
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
            self.encoder, prompt, num_image_tokens=image_tokens, add_prefix=self.family.spec.adds_bos
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
    _, transformers, trl = train_deps(lora=config.finetuning == "lora")
    datasets = require("datasets", "train")
    use_cpu = uses_cpu(config)
    processes = world_size()
    per_device = config.trl_int("per_device_train_batch_size")
    accumulation = (
        accumulation_for(config.global_batch_size, per_device, processes, what="global_batch_size")
        if config.global_batch_size is not None
        else int(config.trl_value("gradient_accumulation_steps", 1))
    )
    bf16 = resolve_bf16(config.bf16, use_cpu=use_cpu)
    # Built first: TRL validates the trl mapping before any data or model is loaded, and the training arguments
    # exist before the model is loaded, so that DeepSpeed ZeRO-3 partitions it at load.
    args = trl_arguments(
        config,
        trl.SFTConfig,
        bf16=bf16,
        use_cpu=use_cpu,
        gradient_accumulation_steps=accumulation,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,  # the collator applies the cutoff (prompt kept whole)
    )

    family = model_family(config.model)
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir)
    samples, counts = load_training_samples(config)
    samples = training_targets(samples, config.targets)
    if not family.spec.supports_images and any(s.image for s in samples):
        raise InvalidInputError(f"{config.model} is a text-only model; the data has image rows")

    from guardreasoner_vl.training.processing import load_processor

    if family.spec.supports_images:
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
    if not family.spec.supports_images:
        # TRL 1.16's SFTTrainer takes any dataset with an "image" column for a vision one and refuses a text model.
        for row in rows:
            del row["image"]
    dataset = datasets.Dataset.from_list(rows)

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
        per_device,
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
