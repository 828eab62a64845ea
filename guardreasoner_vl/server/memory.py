"""The server's memory budget: bytes of request bodies and decoded images held at once.

A request's images are tiny on the wire and large in memory: an all-zero 8192x8192 PNG is a few hundred
kilobytes of base64 and 256 MiB once decoded. Counting requests or queued items therefore bounds nothing, so
the server counts *bytes* instead, in one budget shared by every request:

* the request body, while it is read and parsed (the JSON strings live as long as the request);
* before any image is decoded, an estimate of what preparing it will hold at its peak, read from the image
  header alone (:func:`estimate_prepare_bytes`: the decoded pixels in the stored mode, the RGB copy, the
  side-by-side canvas of several images and the resized image);
* once an item is prepared, the size of its prepared image (:func:`~guardreasoner_vl.inputs.prepared_nbytes`),
  held while it waits in the queue and while it is judged, until the request is answered.

A request that cannot reserve what it needs is refused before it allocates anything: HTTP 413 when it
would not fit even in an empty budget, HTTP 429 (with ``Retry-After``) when other requests hold the memory
now. The process therefore holds at most ``max_memory_bytes`` of request data and images, whatever clients
send (plus the model, the Python runtime and small per-request objects).

PIL keeps every multi-band 8-bit image (RGB included) at 4 bytes per pixel, single-band 8-bit images at 1
and 16-bit ones at 2: the estimates use those sizes, not 3 bytes per RGB pixel.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from PIL import Image

from guardreasoner_vl.inputs import InputLimits, prepared_nbytes

__all__ = ["PREPARE_OVERHEAD_BYTES", "MemoryBudget", "MemoryReservation", "estimate_prepare_bytes", "prepared_nbytes"]

PREPARE_OVERHEAD_BYTES = 96 * 1024 * 1024
"""Beyond ``2 * max_image_memory``, what preparing one request may hold (strips, the final resize); the bound
:mod:`guardreasoner_vl.inputs` states and tests/adversarial/test_images.py measures."""

_HEADER_B64_CHARS = 512 * 1024
"""Base64 characters decoded to read an image header (JPEG headers can follow long EXIF/ICC blocks)."""
_DATA_URL = re.compile(r"^data:[^,]*?;base64,", re.IGNORECASE)


class MemoryBudget:
    """A count of bytes that many requests reserve from and release to; it never blocks and never goes over.

    Thread-safe: requests reserve from the event loop (bodies) and from preparation threads (images).

    Example:
        >>> budget = MemoryBudget(100)
        >>> budget.try_acquire(60), budget.try_acquire(60), budget.used
        (True, False, 60)
        >>> budget.release(60); budget.used
        0
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self.peak = 0
        """The most bytes reserved at once so far."""
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used

    def try_acquire(self, n: int) -> bool:
        """Reserve ``n`` bytes if they fit now; False (nothing reserved) otherwise."""
        if n <= 0:
            return True
        with self._lock:
            if self._used + n > self.limit:
                return False
            self._used += n
            self.peak = max(self.peak, self._used)
            return True

    def release(self, n: int) -> None:
        """Give back ``n`` reserved bytes."""
        if n <= 0:
            return
        with self._lock:
            self._used = max(0, self._used - n)


class MemoryOverLimit(Exception):
    """A reservation did not fit: ``fits_at_all`` says whether it could ever fit (429) or not (413)."""

    def __init__(self, needed: int, budget: MemoryBudget) -> None:
        super().__init__(f"{needed} bytes needed")
        self.needed = needed
        self.fits_at_all = needed <= budget.limit
        self.used = budget.used
        self.limit = budget.limit


class MemoryReservation:
    """What one request holds from a :class:`MemoryBudget`; released all at once by :meth:`close`."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        """Reserve ``n`` more bytes for this request.

        Raises:
            MemoryOverLimit: they do not fit (nothing more is reserved).
        """
        if n <= 0:
            return
        if not self.budget.try_acquire(n):
            raise MemoryOverLimit(self.held + n, self.budget)
        with self._lock:
            self.held += n

    def give_back(self, n: int) -> None:
        """Release ``n`` of the bytes this request holds (e.g. an estimate replaced by the real size)."""
        with self._lock:
            n = min(n, self.held)
            self.held -= n
        self.budget.release(n)

    def close(self) -> None:
        """Release everything this request holds."""
        self.give_back(self.held)

    def __enter__(self) -> MemoryReservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bytes_per_pixel(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4  # RGB, RGBA, LA, CMYK, YCbCr, I, F ...: PIL stores these at 4 bytes per pixel


def _header_bytes(source: Any) -> bytes | None:
    """Enough leading bytes of an encoded image to read its header, or None when it is not inline data."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:_HEADER_B64_CHARS])
    if isinstance(source, str):
        match = _DATA_URL.match(source)
        if match is None:
            return None
        payload = source[match.end() : match.end() + _HEADER_B64_CHARS]
        payload = payload[: len(payload) // 4 * 4]
        try:
            return base64.b64decode(payload)
        except (binascii.Error, ValueError):
            return b""
    return None


def _image_size(source: Any) -> tuple[int, int, str] | None:
    """``(width, height, mode)`` from the header alone, or None when it cannot be read."""
    if isinstance(source, Image.Image):
        return source.width, source.height, source.mode
    shape = getattr(source, "shape", None)
    if shape is not None and len(shape) in (2, 3):
        return int(shape[1]), int(shape[0]), "RGBA"
    head = _header_bytes(source)
    if not head:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(head)) as image:  # reads the header only
                return image.width, image.height, image.mode
    except Exception:
        return None


def _chain_bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel alive at once while one image is decoded and turned into RGB.

    The decoded image, an RGBA copy and a white canvas for transparency, an RGB conversion, and an
    allowance for the rotated copy EXIF orientation makes.
    """
    stored = _bytes_per_pixel(mode)
    alpha = 8 if ("A" in mode or mode in ("P", "PA")) else 0
    converted = 0 if (mode == "RGB" or alpha) else 4  # with alpha, the white canvas is the RGB result
    return stored + alpha + converted + 4


def estimate_prepare_bytes(image: Any, limits: InputLimits) -> int:
    """Peak bytes that preparing ``image`` (one source or a list merged side by side) may hold.

    Read from headers, without decoding: each image's decode-and-convert chain (the largest one is alive at
    a time, the RGB results of all are kept), the side-by-side canvas of several images, the resize's
    intermediate and its output; capped at the bound :mod:`guardreasoner_vl.inputs` states for one request
    (``2 * max_image_memory + 96 MiB``), since it decodes one image at a time and shrinks each early. A
    source whose size the header does not give (an ``http(s)`` URL) is charged the largest image ``limits``
    allows; one that is not an image at all, or is over the pixel limit, is charged nothing, because the
    guard refuses it from its header, before decoding.

    Example:
        >>> from PIL import Image
        >>> estimate_prepare_bytes(Image.new("RGB", (1000, 1000)), InputLimits()) // 1_000_000
        16
    """
    if image is None:
        return 0
    sources: Sequence[Any] = image if isinstance(image, (list, tuple)) else [image]
    sizes: list[tuple[int, int, str]] = []
    for source in sources:
        size = _image_size(source)
        if size is None:
            if isinstance(source, str) and source.startswith(("http://", "https://")):
                sizes.append((limits.max_decoded_pixels, 1, "RGBA"))
            continue
        width, height, _ = size
        if 0 < width * height <= limits.max_decoded_pixels:
            sizes.append(size)
    if not sizes:
        return 0
    pixels = [w * h for w, h, _ in sizes]
    chain = max(p * _chain_bytes_per_pixel(mode) for p, (_, _, mode) in zip(pixels, sizes, strict=True))
    kept = 4 * sum(pixels) if len(sizes) > 1 else 0  # every loaded image waits for the merge
    canvas = sum(w for w, _, _ in sizes) * max(h for _, h, _ in sizes) if len(sizes) > 1 else pixels[0]
    resize = 4 * canvas + 4 * min(canvas, limits.max_pixels)  # the canvas (or image), the resampled pass
    naive = chain + kept + resize + (4 * canvas if len(sizes) > 1 else 0)
    # inputs.py decodes one image at a time, shrinks each to its share of the canvas while converting it
    # strip by strip, and checks the canvas: one request never holds more than its stated bound.
    return min(naive, 2 * limits.max_image_memory + PREPARE_OVERHEAD_BYTES)
