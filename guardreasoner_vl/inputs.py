"""Normalise and validate what callers give the guard: text and images.

Images may be a file path (``str`` or :class:`pathlib.Path`), ``bytes``, a ``data:`` URL, a PIL image,
a numpy array (HxW or HxWxC, uint8), or, when :attr:`InputLimits.allow_urls` is set, an ``http(s)`` URL.
A list of images is merged into one, side by side (see :func:`merge_images`), because the released
checkpoints read one image per request.

What happens to every image, in order:

1. checks before decoding: the encoded size must be at most ``max_image_bytes``, and the header's pixel
   count at most ``max_decoded_pixels`` and its decoded bytes at most ``max_image_memory`` (a decompression
   bomb is refused without decoding it); only :data:`SUPPORTED_FORMATS` are opened. Files are read
   non-blocking and must be regular files (a FIFO or device is refused, never waited on);
2. decoding; an animated image (GIF, APNG, WebP) uses its **first frame**; a JPEG is decoded at a reduced
   DCT scale when it is far larger than needed;
3. converted to RGB (transparency composited on white, as Qwen's loader does; 16-bit greyscale by its high
   byte, 32-bit and float greyscale scaled into 0..255), strip by strip, box-reduced on the way when the
   image is at least twice its target size; then the EXIF orientation is applied;
4. Qwen's smart resize: each side a multiple of 28, pixel count in ``[min_pixels, max_pixels]``
   (by default the reference inference bounds ``[4*28*28, 16384*28*28]``).

Memory is bounded by bytes: for a list, the merge geometry is computed from the headers, and the images
are decoded one at a time, each shrunk to its share of the merged canvas (itself checked against the
limits). Preparing one request peaks at about ``2 * max_image_memory + 96 MiB`` whatever the number of
images (tests/adversarial/test_images.py measures it). :func:`prepared_nbytes` gives the bytes a prepared
image holds. Every failure to read or decode an image, of whatever type, is an :class:`InvalidInputError`
saying what was wrong, with the original exception chained.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import re
import stat
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.prompts import ModelFamily

__all__ = [
    "DEFAULT_LIMITS",
    "IMAGE_FACTOR",
    "SUPPORTED_FORMATS",
    "InputLimits",
    "encode_image_data_url",
    "load_image",
    "merge_images",
    "prepare_image",
    "prepared_nbytes",
    "smart_resize",
    "validate_text",
]

IMAGE_FACTOR = ModelFamily.VL.spec.image_factor
"""Patch size (14) x spatial merge (2) of Qwen2.5-VL (from its family spec): each resized side is a multiple of it."""
MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_PIXELS = 16384 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_ASPECT_RATIO = 200


@dataclass(frozen=True, slots=True)
class InputLimits:
    """Bounds on what the guard accepts. Every field has a safe default.

    Attributes:
        max_text_chars: longest text or response, in characters.
        max_image_bytes: largest encoded image (file, bytes, data URL, download).
        max_decoded_pixels: largest image, in pixels, read from the header *before* decoding.
        max_image_memory: most bytes one decoded image may take (Pillow keeps 4 bytes per pixel for RGB,
            RGBA, P, CMYK, ...; 1 for L and 1-bit; 2 for 16-bit greyscale), also checked from the header,
            and for the merged canvas. Peak memory of preparing one request is about 2.5x this.
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
    max_image_memory: int = 256 * 1024 * 1024
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
        for name in ("max_text_chars", "max_image_bytes", "max_decoded_pixels", "max_image_memory", "max_images"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive")
        if len(self.merge_max_size) != 2 or min(self.merge_max_size) <= 0:
            raise InvalidInputError(f"merge_max_size must be (width, height) > 0, got {self.merge_max_size}")


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

SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "TGA", "ICO")
"""Encoded formats the loader opens (JPEG includes MPO); others (EPS, PDF, WMF, PSD, ...) are refused before
their plug-ins run."""

_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


def _bytes_per_pixel(mode: str) -> int:
    """What Pillow stores per pixel: 1 byte for 1/L/P, 2 for 16-bit greyscale, 4 for every other mode (RGB too)."""
    if mode in _ONE_BYTE_MODES:
        return 1
    return 2 if mode in _SIXTEEN_BIT_MODES else 4


def prepared_nbytes(image: Image.Image | None) -> int:
    """The bytes a prepared (or any) PIL image holds in memory: ``width * height * bytes per pixel``.

    Pillow stores RGB with 4 bytes per pixel, so the largest prepared image at the default ``max_pixels``
    (16384*28*28 pixels) holds about 49 MiB. Use it to bound queues by memory rather than by items.

    Example:
        >>> from PIL import Image
        >>> prepared_nbytes(Image.new("RGB", (28, 56))), prepared_nbytes(None)
        (6272, 0)
    """
    if image is None:
        return 0
    return image.width * image.height * _bytes_per_pixel(image.mode)


def _read_file(path: Path, limits: InputLimits) -> bytes:
    """Read a regular file, never blocking on a FIFO or device (opened non-blocking, checked with fstat)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise InvalidInputError(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise InvalidInputError(f"image path is not a file: {path} is a directory") from None
    except PermissionError as exc:
        raise InvalidInputError(f"cannot read image file {path}: permission denied") from exc
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read image file {path}: {exc}") from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InvalidInputError(f"image path is not a file: {path} is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInputError(f"image path is not a file: {path} is a special file (FIFO, device or socket)")
        if info.st_size > limits.max_image_bytes:
            raise InvalidInputError(_too_big(info.st_size, limits))
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, limits.max_image_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limits.max_image_bytes:
                raise InvalidInputError(_too_big(total, limits))
        return b"".join(chunks)
    except OSError as exc:
        raise InvalidInputError(f"cannot read image file {path}: {exc}") from exc
    finally:
        os.close(fd)


def _read_bytes(source: str | Path, limits: InputLimits) -> bytes:
    if isinstance(source, str):
        if source[:5].lower() == "data:":
            return _data_url_bytes(source, limits)
        if source.startswith(("http://", "https://")):
            return _download(source, limits)
        if "://" in source[:16]:
            raise InvalidInputError(f"unsupported image URL scheme in {source[:40]!r}; use a path, bytes or data: URL")
        if not source:
            raise InvalidInputError("image path is empty")
    return _read_file(Path(source), limits)


def _data_url_bytes(source: str, limits: InputLimits) -> bytes:
    match = _DATA_URL.match(source[:512])
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
        raise InvalidInputError(f"data: URL holds invalid base64 (only A-Z a-z 0-9 + / = allowed): {exc}") from exc


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
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        raise InvalidInputError(f"could not download image {url!r}: {exc}") from exc
    if len(data) > limits.max_image_bytes:
        raise InvalidInputError(_too_big(len(data), limits))
    return data


def _check_pixels(width: int, height: int, limits: InputLimits, mode: str = "RGB") -> None:
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"image has an empty side ({width}x{height})")
    if width * height > limits.max_decoded_pixels:
        raise InvalidInputError(
            f"image is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{limits.max_decoded_pixels:,} (possible decompression bomb; raise InputLimits.max_decoded_pixels "
            "to allow it)"
        )
    nbytes = width * height * _bytes_per_pixel(mode)
    if nbytes > limits.max_image_memory:
        raise InvalidInputError(
            f"image is {width}x{height} in mode {mode}, {nbytes:,} bytes decoded, more than the limit of "
            f"{limits.max_image_memory:,} (raise InputLimits.max_image_memory to allow it)"
        )


@contextmanager
def _decoding(what: str = "image") -> Iterator[None]:
    """The one place decoder failures become :class:`InvalidInputError` (original exception chained)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except InvalidInputError:
        raise
    except MemoryError:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(f"{what} refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidInputError(
            f"{what} could not be decoded: not a supported image format (supported: {', '.join(SUPPORTED_FORMATS)})"
        ) from exc
    except Exception as exc:  # any decoder failure: truncated data, corrupt EXIF, odd palettes, plug-in bugs
        raise InvalidInputError(f"{what} could not be decoded ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True, slots=True)
class _Header:
    """What an image's header says, before its pixels are decoded."""

    image: Image.Image | None  # opened lazily (encoded sources) or in memory; None: re-read ``source`` to decode
    orientation: int
    size: tuple[int, int]  # (width, height) as displayed, after the EXIF orientation
    owned: bool = False  # opened here from encoded bytes (so it may be decoded at a reduced scale)
    source: Any = None

    def light(self) -> _Header:
        """Drop the encoded bytes of a path or data: URL (re-read at decode time), keep them otherwise."""
        if isinstance(self.source, (str, Path)) and not str(self.source).startswith(("http://", "https://")):
            return _Header(None, self.orientation, self.size, self.owned, self.source)
        return self


def _header(source: Any, limits: InputLimits) -> _Header:
    """Open one image without decoding its pixels, and check its size in pixels and decoded bytes."""
    owned = not isinstance(source, Image.Image)
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _open_encoded(bytes(source), limits)
    elif isinstance(source, (str, Path)):
        image = _open_encoded(_read_bytes(source, limits), limits)
    elif hasattr(source, "__array_interface__") or type(source).__module__.startswith("numpy"):
        image = _from_array(source, limits)
        owned = False
    else:
        raise InvalidInputError(
            f"unsupported image type {type(source).__name__}: give a path, bytes, a data: URL, a PIL image "
            "or a numpy array"
        )
    with _decoding():
        _check_pixels(image.width, image.height, limits, image.mode)
        # Pillow decodes a whole PNG to look for an eXIf chunk after the pixels: only one before them is read.
        orientation = 1 if image.format == "PNG" and "exif" not in image.info else image.getexif().get(0x0112, 1)
        if not isinstance(orientation, int) or orientation not in range(1, 9):
            orientation = 1  # a nonsense orientation tag is ignored, as Pillow's exif_transpose does
    width, height = image.size
    size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return _Header(image, orientation, size, owned, source)


def _open_encoded(data: bytes, limits: InputLimits) -> Image.Image:
    if not data:
        raise InvalidInputError("image is empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise InvalidInputError(_too_big(len(data), limits))
    with _decoding():
        return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)


def _decode(header: _Header, target: tuple[int, int] | None = None) -> Image.Image:
    """Decode to RGB (first frame, EXIF orientation, transparency on white), shrinking early toward ``target``.

    ``target`` is the (width, height) the caller will resize to. A JPEG is decoded at a reduced DCT scale
    (never below twice the target), and an image at least twice the target on both sides is box-reduced by
    an integer factor while it is converted, strip by strip (:func:`_flatten`). Memory: the decoded image
    (at most ``max_image_memory``) plus its RGB output (the same size at most, usually far smaller).
    """
    image = header.image
    if image is None:
        raise InvalidInputError("internal: image header without pixels")  # _merge re-reads light headers
    with _decoding():
        if getattr(image, "is_animated", False):
            image.seek(0)
        raw_target = None
        if target is not None:
            tw, th = target
            raw_target = (th, tw) if header.orientation in (5, 6, 7, 8) else (tw, th)
            if header.owned and image.format in ("JPEG", "MPO") and image.mode in ("RGB", "L", "CMYK", "YCbCr"):
                image.draft(image.mode, (2 * raw_target[0], 2 * raw_target[1]))
        image.load()
        factor = 1
        if raw_target is not None:
            factor = max(1, min(image.width // raw_target[0], image.height // raw_target[1]))
        image = _flatten(image, factor)
        transpose = _ORIENTATION.get(header.orientation)
        return image.transpose(transpose) if transpose is not None else image


_STRIP_PIXELS = 1 << 22
"""Pixels converted at a time by :func:`_flatten` (16 MiB of RGBA)."""


def _flatten(image: Image.Image, factor: int) -> Image.Image:
    """RGB (alpha on white, 16-bit/float scaled to 8-bit), box-reduced by ``factor``, one strip at a time.

    Converting or reducing a whole image at once would make full-size copies (Pillow premultiplies RGBA into
    a copy before reducing); strips of about ``_STRIP_PIXELS`` keep the extra memory to the (reduced) output.
    """
    if image.mode == "RGB" and factor == 1:
        return image
    scale = _wide_scale(image) if image.mode in ("I", "F") else None
    width, height = image.size
    if width * height <= _STRIP_PIXELS:
        rgb = _to_rgb(image, scale)
        return rgb.reduce(factor) if factor > 1 else rgb
    step = max(factor, _STRIP_PIXELS // width // factor * factor)
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)), (255, 255, 255))
    for top in range(0, height, step):
        piece = _to_rgb(image.crop((0, top, width, min(height, top + step))), scale)
        out.paste(piece.reduce(factor) if factor > 1 else piece, (0, top // factor))
    return out


def _sixteen_to_l(image: Image.Image) -> Image.Image:
    """16-bit greyscale (any byte order) to 8-bit by its high byte: 0 -> 0, 32768 -> 128, 65535 -> 255."""
    raw = image.tobytes()  # two bytes a pixel, in the mode's own byte order
    high = 0 if image.mode == "I;16B" or (image.mode == "I;16N" and sys.byteorder == "big") else 1
    return Image.frombytes("L", image.size, raw[high::2])


def _wide_scale(image: Image.Image) -> tuple[float, float]:
    """(offset, scale) taking 32-bit integer or float greyscale to 0..255: values already in 0..255 kept,
    0..1 floats and 16-bit ranges scaled, anything else stretched from its minimum to its maximum."""
    extrema = image.getextrema()
    low, high = float(extrema[0]), float(extrema[1])  # type: ignore[arg-type]
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InvalidInputError(f"{image.mode} image holds NaN or infinite values")
    if low >= 0 and high <= 1 and image.mode == "F":
        return 0.0, 255.0
    if low >= 0 and high <= 255:
        return 0.0, 1.0
    if low >= 0 and high <= 65535:
        return 0.0, 255 / 65535
    return low, 255 / (high - low)


def _to_rgb(image: Image.Image, scale: tuple[float, float] | None = None) -> Image.Image:
    """RGB with transparency composited on white, as Qwen's loader does."""
    if image.mode == "RGB":
        return image
    if image.mode in ("La", "RGBa"):
        image = image.convert("RGBA" if image.mode == "RGBa" else "LA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_to_l(image)
    elif image.mode in ("I", "F"):
        offset, factor = scale if scale is not None else _wide_scale(image)
        image = image.point(lambda v: (v - offset) * factor).convert("L")  # type: ignore[arg-type,operator]
    return image.convert("RGB")


def _from_array(array: Any, limits: InputLimits) -> Image.Image:
    try:
        shape = tuple(int(n) for n in array.shape)
        dtype = str(array.dtype)
    except Exception as exc:
        raise InvalidInputError(f"numpy image has no usable shape/dtype: {exc}") from exc
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise InvalidInputError(f"numpy image must be HxW or HxWxC with C in 1, 3, 4; got shape {shape}")
    _check_pixels(shape[1], shape[0], limits, "RGBA" if len(shape) == 3 and shape[2] == 4 else "RGB")
    if dtype != "uint8":
        raise InvalidInputError(
            f"numpy image must have dtype uint8 (values 0..255), got {dtype}; convert it first, "
            "e.g. (array * 255).clip(0, 255).astype('uint8') for floats in 0..1"
        )
    if len(shape) == 3 and shape[2] == 1:
        array = array[:, :, 0]
    with _decoding("numpy image"):
        return Image.fromarray(array)


def load_image(source: Any, *, limits: InputLimits = DEFAULT_LIMITS) -> Image.Image:
    """Load one image into an RGB PIL image, enforcing ``limits`` (no resize).

    Raises:
        InvalidInputError: unsupported type, unreadable, undecodable or oversized image, URL not allowed.

    Example:
        >>> from PIL import Image
        >>> load_image(Image.new("RGBA", (4, 4))).mode
        'RGB'
    """
    return _decode(_header(source, limits))


def _merge_layout(
    sizes: Sequence[tuple[int, int]], max_size: tuple[int, int]
) -> tuple[tuple[int, int], list[tuple[int, int, int]]]:
    """Canvas size and (x, width, height) of each image: padded to the tallest, side by side, fit in max_size."""
    height = max(h for _, h in sizes)
    width = sum(w for w, _ in sizes)
    max_w, max_h = max_size
    scale = min(1.0, max_w / width, max_h / height)
    canvas = (max(1, round(width * scale)), max(1, round(height * scale)))
    places, edge = [], 0
    for w, h in sizes:
        left, edge = round(edge * scale), edge + w
        places.append((left, max(1, round(edge * scale) - left), max(1, round(h * scale))))
    return canvas, places


def _merge(headers: Sequence[_Header], max_size: tuple[int, int], limits: InputLimits = DEFAULT_LIMITS) -> Image.Image:
    """Merge images one at a time: each is decoded, shrunk to its share of the canvas, pasted, and dropped."""
    (width, height), places = _merge_layout([h.size for h in headers], max_size)
    _check_pixels(width, height, limits, "RGB")
    merged = Image.new("RGB", (width, height), (255, 255, 255))
    for header, (x, w, h) in zip(headers, places, strict=True):
        if header.image is None:  # a path or data: URL: read again now, one image in memory at a time
            fresh = _header(header.source, limits)
            if fresh.size != header.size:
                raise InvalidInputError(f"image changed while it was being read ({header.size} then {fresh.size})")
            header = fresh
        image = _decode(header, target=(w, h))
        if image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BICUBIC)
        merged.paste(image, (x, 0))
        del image
    return merged


def merge_images(images: Sequence[Image.Image], *, max_size: tuple[int, int] = (1024, 1024)) -> Image.Image:
    """Join images side by side the way the paper's data concatenation does.

    Shorter images are padded at the bottom with white to the tallest height, the row is concatenated
    left to right, and the result is shrunk (aspect ratio kept) to fit in ``max_size``. Each image is shrunk
    to its share of the final canvas *before* it is pasted, so no full-size canvas is ever built.

    Example:
        >>> from PIL import Image
        >>> merge_images([Image.new("RGB", (10, 20)), Image.new("RGB", (30, 10))]).size
        (40, 20)
    """
    if not images:
        raise InvalidInputError("no images to merge")
    if len(images) == 1:
        merged = _to_rgb(images[0])
        (width, height), _ = _merge_layout([merged.size], max_size)
        return merged if merged.size == (width, height) else merged.resize((width, height), Image.Resampling.BICUBIC)
    return _merge([_Header(im, 1, im.size) for im in images], max_size)


def prepare_image(source: Any, *, limits: InputLimits = DEFAULT_LIMITS) -> Image.Image:
    """Load (and merge, for a list) then smart-resize: the image exactly as the model will see it.

    Memory is bounded by bytes: every header is checked (pixels and decoded bytes) before any pixel is
    decoded, the resize geometry is computed from the headers, and each image is shrunk to its share of
    the result while it is decoded, one image at a time. See :func:`prepared_nbytes`.

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
        if len(source) > 1:
            headers = [_header(s, limits).light() for s in source]
            (canvas_w, canvas_h), _ = _merge_layout([h.size for h in headers], limits.merge_max_size)
            smart_resize(canvas_h, canvas_w, min_pixels=limits.min_pixels, max_pixels=limits.max_pixels)  # aspect
            return _smart_resized(_merge(headers, limits.merge_max_size, limits), limits)
        source = source[0]
    header = _header(source, limits)
    width, height = header.size
    target_h, target_w = smart_resize(height, width, min_pixels=limits.min_pixels, max_pixels=limits.max_pixels)
    return _smart_resized(_decode(header, target=(target_w, target_h)), limits)


def _smart_resized(image: Image.Image, limits: InputLimits) -> Image.Image:
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
