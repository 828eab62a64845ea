"""Normalise and validate what callers give the guard: text and images.

Images may be a file path (``str`` or :class:`pathlib.Path`), ``bytes``, a ``data:`` URL, a PIL image,
a numpy array (HxW or HxWxC, uint8), or, when :attr:`InputLimits.allow_urls` is set, an ``http(s)`` URL.
A list of images is merged into one, side by side (see :func:`merge_images`), because the released
checkpoints read one image per request.

What happens to every image, in order:

1. size checks before decoding: the encoded size must be at most ``max_image_bytes`` and the pixel
   count in the header at most ``max_decoded_pixels`` (a decompression bomb is refused without
   decoding it);
2. decoding; an animated image (GIF, APNG, WebP) uses its **first frame**;
3. EXIF orientation applied; converted to RGB (transparency composited on white, as Qwen's loader does);
4. Qwen's smart resize: each side a multiple of 28, pixel count in ``[min_pixels, max_pixels]``
   (by default the reference inference bounds ``[4*28*28, 16384*28*28]``).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from guardreasoner_vl.errors import InvalidInputError

__all__ = [
    "DEFAULT_LIMITS",
    "IMAGE_FACTOR",
    "InputLimits",
    "encode_image_data_url",
    "load_image",
    "merge_images",
    "prepare_image",
    "smart_resize",
    "validate_text",
]

IMAGE_FACTOR = 28
"""Patch size (14) x spatial merge (2) of Qwen2.5-VL: each resized side is a multiple of it."""
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28
MAX_ASPECT_RATIO = 200


@dataclass(frozen=True, slots=True)
class InputLimits:
    """Bounds on what the guard accepts. Every field has a safe default.

    Attributes:
        max_text_chars: longest text or response, in characters.
        max_image_bytes: largest encoded image (file, bytes, data URL, download).
        max_decoded_pixels: largest image, in pixels, read from the header *before* decoding.
        min_pixels: smart-resize lower bound (reference: 4*28*28).
        max_pixels: smart-resize upper bound (reference: 16384*28*28); lowering it is a speed knob.
        max_images: most images merged into one request.
        merge_max_size: the merged image is shrunk to fit in this (width, height).
        allow_urls: fetch ``http(s)`` image URLs (off by default).
        url_timeout_s: timeout of one download.
    """

    max_text_chars: int = 200_000
    max_image_bytes: int = 32 * 1024 * 1024
    max_decoded_pixels: int = 64 * 1024 * 1024
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    max_images: int = 8
    merge_max_size: tuple[int, int] = (1024, 1024)
    allow_urls: bool = False
    url_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.min_pixels < IMAGE_FACTOR * IMAGE_FACTOR or self.max_pixels < self.min_pixels:
            raise InvalidInputError(
                f"need {IMAGE_FACTOR * IMAGE_FACTOR} <= min_pixels <= max_pixels, "
                f"got min_pixels={self.min_pixels}, max_pixels={self.max_pixels}"
            )
        for name in ("max_text_chars", "max_image_bytes", "max_decoded_pixels", "max_images"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive")


DEFAULT_LIMITS = InputLimits()


def validate_text(value: object, *, name: str, limits: InputLimits = DEFAULT_LIMITS) -> str | None:
    """Check one text field; returns it unchanged (prompts must stay byte-exact) or None.

    Raises:
        InvalidInputError: not a string, empty, or longer than ``limits.max_text_chars``.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string or None, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError(f"{name} is empty; pass None to leave it out")
    if len(value) > limits.max_text_chars:
        raise InvalidInputError(
            f"{name} has {len(value):,} characters, more than the limit of {limits.max_text_chars:,} "
            "(raise InputLimits.max_text_chars to allow it)"
        )
    return value


def smart_resize(
    height: int,
    width: int,
    *,
    factor: int = IMAGE_FACTOR,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen2.5-VL's resize rule: sides divisible by ``factor``, pixels in ``[min_pixels, max_pixels]``.

    Example:
        >>> smart_resize(100, 200)
        (112, 196)
    """
    if min(height, width) <= 0:
        raise InvalidInputError(f"image has an empty side ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InvalidInputError(
            f"image aspect ratio {max(height, width) / min(height, width):.0f}:1 is above {MAX_ASPECT_RATIO}:1"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]*)(?P<params>(;[^;,]*)*?)(?P<b64>;base64)?,", re.IGNORECASE)


def _read_bytes(source: str | Path, limits: InputLimits) -> bytes:
    if isinstance(source, str):
        if source.startswith("data:"):
            match = _DATA_URL.match(source)
            if not match:
                raise InvalidInputError("malformed data: URL (expected data:<mime>;base64,<data>)")
            payload = source[match.end() :]
            if len(payload) * 3 // 4 > limits.max_image_bytes:
                raise InvalidInputError(_too_big(len(payload) * 3 // 4, limits))
            if not match.group("b64"):
                from urllib.parse import unquote_to_bytes

                return unquote_to_bytes(payload)
            try:
                return base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidInputError(f"data: URL holds invalid base64: {exc}") from exc
        if source.startswith(("http://", "https://")):
            return _download(source, limits)
        if "://" in source[:16]:
            raise InvalidInputError(f"unsupported image URL scheme in {source[:40]!r}; use a path, bytes or data: URL")
    path = Path(source)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InvalidInputError(f"image file not found: {path}") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read image file {path}: {exc}") from exc
    if not path.is_file():
        raise InvalidInputError(f"image path is not a file: {path}")
    if size > limits.max_image_bytes:
        raise InvalidInputError(_too_big(size, limits))
    return path.read_bytes()


def _too_big(size: int, limits: InputLimits) -> str:
    return (
        f"image is {size:,} bytes, more than the limit of {limits.max_image_bytes:,} "
        "(raise InputLimits.max_image_bytes to allow it)"
    )


def _download(url: str, limits: InputLimits) -> bytes:
    if not limits.allow_urls:
        raise InvalidInputError(
            "image URLs are not fetched unless allowed: pass limits=InputLimits(allow_urls=True), "
            "or give a path, bytes or data: URL"
        )
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "guardreasoner-vl"})
    try:
        with urllib.request.urlopen(request, timeout=limits.url_timeout_s) as resp:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limits.max_image_bytes:
                raise InvalidInputError(_too_big(int(declared), limits))
            data: bytes = resp.read(limits.max_image_bytes + 1)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise InvalidInputError(f"could not download image {url!r}: {exc}") from exc
    if len(data) > limits.max_image_bytes:
        raise InvalidInputError(_too_big(len(data), limits))
    return data


def _open(data: bytes, limits: InputLimits) -> Image.Image:
    if not data:
        raise InvalidInputError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(f"image refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError:
        raise InvalidInputError("image could not be decoded: not a known image format") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInputError(f"image could not be decoded: {exc}") from exc
    _check_pixels(image.width, image.height, limits)
    return image


def _check_pixels(width: int, height: int, limits: InputLimits) -> None:
    if width * height > limits.max_decoded_pixels:
        raise InvalidInputError(
            f"image is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{limits.max_decoded_pixels:,} (possible decompression bomb; raise InputLimits.max_decoded_pixels "
            "to allow it)"
        )
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"image has an empty side ({width}x{height})")


def _to_rgb(image: Image.Image) -> Image.Image:
    """First frame, EXIF orientation applied, RGB with transparency on white."""
    try:
        if getattr(image, "is_animated", False):
            image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image) or image
        if image.mode == "RGB":
            return image
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            return canvas
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = image.point(lambda v: v / 256).convert("L")  # type: ignore[arg-type,operator]
        return image.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(f"image refused as a decompression bomb: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidInputError(f"image could not be decoded: {exc}") from exc


def _from_array(array: Any, limits: InputLimits) -> Image.Image:
    shape = getattr(array, "shape", None)
    if shape is None or len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise InvalidInputError(f"numpy image must be HxW or HxWxC with C in 1, 3, 4; got shape {shape}")
    _check_pixels(int(shape[1]), int(shape[0]), limits)
    if str(getattr(array, "dtype", "")) != "uint8":
        raise InvalidInputError(f"numpy image must have dtype uint8, got {getattr(array, 'dtype', None)}")
    if len(shape) == 3 and shape[2] == 1:
        array = array[:, :, 0]
    try:
        image = Image.fromarray(array)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"numpy image could not be converted: {exc}") from exc
    return _to_rgb(image)


def load_image(source: Any, *, limits: InputLimits = DEFAULT_LIMITS) -> Image.Image:
    """Load one image into an RGB PIL image, enforcing ``limits`` (no resize).

    Raises:
        InvalidInputError: unsupported type, unreadable or oversized image, URL not allowed.

    Example:
        >>> from PIL import Image
        >>> load_image(Image.new("RGBA", (4, 4))).mode
        'RGB'
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, limits)
        return _to_rgb(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > limits.max_image_bytes:
            raise InvalidInputError(_too_big(len(data), limits))
        return _to_rgb(_open(data, limits))
    if isinstance(source, (str, Path)):
        return _to_rgb(_open(_read_bytes(source, limits), limits))
    if hasattr(source, "__array_interface__") or type(source).__module__.startswith("numpy"):
        return _from_array(source, limits)
    raise InvalidInputError(
        f"unsupported image type {type(source).__name__}: give a path, bytes, a data: URL, a PIL image or a numpy array"
    )


def merge_images(images: Sequence[Image.Image], *, max_size: tuple[int, int] = (1024, 1024)) -> Image.Image:
    """Join images side by side the way the paper's data concatenation does.

    Shorter images are padded at the bottom with white to the tallest height, the row is concatenated
    left to right, and the result is shrunk (aspect ratio kept) to fit in ``max_size``.

    Example:
        >>> from PIL import Image
        >>> merge_images([Image.new("RGB", (10, 20)), Image.new("RGB", (30, 10))]).size
        (40, 20)
    """
    if not images:
        raise InvalidInputError("no images to merge")
    if len(images) == 1:
        merged = images[0]
    else:
        height = max(im.height for im in images)
        width = sum(im.width for im in images)
        merged = Image.new("RGB", (width, height), (255, 255, 255))
        x = 0
        for im in images:
            merged.paste(im.convert("RGB"), (x, 0))
            x += im.width
    max_w, max_h = max_size
    if merged.width > max_w or merged.height > max_h:
        scale = min(max_w / merged.width, max_h / merged.height)
        merged = merged.resize(
            (max(1, round(merged.width * scale)), max(1, round(merged.height * scale))),
            Image.Resampling.BICUBIC,
        )
    return merged


def prepare_image(source: Any, *, limits: InputLimits = DEFAULT_LIMITS) -> Image.Image:
    """Load (and merge, for a list) then smart-resize: the image exactly as the model will see it.

    Example:
        >>> from PIL import Image
        >>> prepare_image(Image.new("RGB", (100, 50))).size
        (112, 56)
    """
    if isinstance(source, (list, tuple)):
        if not source:
            raise InvalidInputError("empty image list; pass None for no image")
        if len(source) > limits.max_images:
            raise InvalidInputError(f"{len(source)} images given, at most {limits.max_images} are merged")
        loaded = [load_image(s, limits=limits) for s in source]
        image = merge_images(loaded, max_size=limits.merge_max_size) if len(loaded) > 1 else loaded[0]
    else:
        image = load_image(source, limits=limits)
    height, width = smart_resize(image.height, image.width, min_pixels=limits.min_pixels, max_pixels=limits.max_pixels)
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return image


def encode_image_data_url(image: Image.Image, *, format: str = "PNG") -> str:
    """Encode a PIL image as a ``data:`` URL (PNG by default: lossless, so the server sees our pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    mime = "image/png" if format.upper() == "PNG" else f"image/{format.lower()}"
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
