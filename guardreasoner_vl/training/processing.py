"""The Qwen2.5-VL processor for training, without torchvision (for the trainer modules: use :func:`load_processor`).

``AutoProcessor`` builds Qwen2.5-VL's video processor too, which needs torchvision; torchvision cannot be
installed beside the CPU torch used here and in CI. TRL's trainers need a processor object (the
``processing_class``) that tokenizes text with the image placeholders expanded and returns
``pixel_values`` and ``image_grid_thw``. :func:`load_processor` builds one from the checkpoint's image
processor (the PIL one without torchvision, the fast one with it) and tokenizer: a ``Qwen2_5_VLProcessor``
minus the video processor, saved under the standard class name so that ``AutoProcessor`` loads the result.

It also accepts ``None`` for a prompt without an image inside a batch of images (``images=[[img], None]``).
TRL 1.16's GRPO passes exactly that for batches that mix image and text-only prompts, which the stock
processor refuses (``fetch_images`` TypeError); the GuardReasoner-VL RL set always mixes them.

Departures from the paper: none in behaviour. The processor cannot process videos, which GuardReasoner-VL
never uses. Pixel bounds are the checkpoint's unless ``min_pixels``/``max_pixels`` are given: the paper
trained R-SFT with images capped at 768x768 and RL within [512x512, 2048x2048]; the trainer configs pass those.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from guardreasoner_vl.errors import ModelLoadError, require

__all__ = ["load_processor"]


@cache
def _image_text_processor_class() -> type:
    transformers = require("transformers", "train", feature="guardreasoner_vl.training")
    base = transformers.Qwen2_5_VLProcessor
    mixin = transformers.ProcessorMixin

    class Qwen2_5_VLImageTextProcessor(base):  # type: ignore[misc, valid-type]
        """``Qwen2_5_VLProcessor`` minus the video processor (which needs torchvision)."""

        def __init__(
            self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any
        ):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
                self.image_token
            )
            self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
                self.video_token
            )
            mixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

        def __call__(self, images: Any = None, text: Any = None, *args: Any, **kwargs: Any) -> Any:
            if isinstance(images, list | tuple) and any(x is None for x in images):
                images = [[] if x is None else x for x in images]  # a text-only prompt in a batch with images
                if all(isinstance(x, list | tuple) and not x for x in images):
                    images = None
            return super().__call__(images, text, *args, **kwargs)

        def to_dict(self) -> dict[str, Any]:
            out: dict[str, Any] = super().to_dict()
            # Saved checkpoints name the standard processor, so AutoProcessor loads them where torchvision exists.
            out["processor_class"] = "Qwen2_5_VLProcessor"
            return out

    # A module-level name, so processors pickle and copy like any other.
    Qwen2_5_VLImageTextProcessor.__module__ = __name__
    Qwen2_5_VLImageTextProcessor.__qualname__ = "Qwen2_5_VLImageTextProcessor"
    globals()["Qwen2_5_VLImageTextProcessor"] = Qwen2_5_VLImageTextProcessor
    return Qwen2_5_VLImageTextProcessor


def _torchvision_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def load_processor(
    path: str | os.PathLike[str],
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Any:
    """Load the processor of a Qwen2.5-VL checkpoint for TRL (``processing_class``), with or without torchvision.

    Args:
        path: checkpoint directory or Hub id (offline: a directory).
        min_pixels, max_pixels: image pixel bounds (default: the checkpoint's ``preprocessor_config.json``).

    Returns:
        A ``Qwen2_5_VLProcessor`` without the video processor: ``tokenizer``, ``image_processor``,
        ``apply_chat_template``, ``__call__(images=, text=)`` and ``save_pretrained``.

    Raises:
        ModelLoadError: the checkpoint has no tokenizer or image processor.
    """
    transformers = require("transformers", "train", feature="guardreasoner_vl.training")
    source = str(path)
    pixel_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    backend = {} if _torchvision_available() else {"backend": "pil"}
    try:
        image_processor = transformers.AutoImageProcessor.from_pretrained(source, **backend, **pixel_kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer or image processor of {source}: {exc}") from exc
    if pixel_kwargs:
        # The image processor resizes by ``size``; keep it in agreement with the pixel bounds.
        size = dict(getattr(image_processor, "size", None) or {})
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        if size:
            image_processor.size = size
    chat_template = getattr(tokenizer, "chat_template", None)
    template_file = os.path.join(source, "chat_template.json")
    if os.path.isfile(template_file):
        import json

        with open(template_file, encoding="utf-8") as handle:
            chat_template = json.load(handle).get("chat_template", chat_template)
    processor_class = _image_text_processor_class()
    return processor_class(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def __getattr__(name: str) -> Any:
    # Lets a fresh process (spawned worker, unpickling) find the processor class, which is built on first use.
    if name == "Qwen2_5_VLImageTextProcessor":
        return _image_text_processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
