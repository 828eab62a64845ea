"""Input normalisation and limits: every image form, bad images, bombs, text checks, smart resize, merging."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.inputs import (
    InputLimits,
    encode_image_data_url,
    load_image,
    merge_images,
    prepare_image,
    smart_resize,
    validate_text,
)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny file whose header claims width x height pixels (never decoded by a correct loader)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


RED = Image.new("RGB", (40, 30), (255, 0, 0))


@pytest.mark.parametrize("form", ["pil", "path", "str", "bytes", "data_url", "numpy", "numpy_gray"])
def test_every_image_form_loads_as_rgb(form, tmp_path: Path):
    file = tmp_path / "red.png"
    file.write_bytes(_png(RED))
    source = {
        "pil": RED,
        "path": file,
        "str": str(file),
        "bytes": _png(RED),
        "data_url": "data:image/png;base64," + base64.b64encode(_png(RED)).decode(),
        "numpy": np.full((30, 40, 3), [255, 0, 0], dtype=np.uint8),
        "numpy_gray": np.full((30, 40), 76, dtype=np.uint8),
    }[form]
    image = load_image(source)
    assert image.mode == "RGB" and image.size == (40, 30)
    if form != "numpy_gray":
        assert image.getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (b"not an image at all", "could not be decoded"),
        (b"", "empty"),
        (_png(RED)[:60], "could not be decoded"),
        ("data:image/png;base64,@@@@", "invalid base64"),
        ("data:garbage", "malformed data"),
        ("ftp://example.com/x.png", "unsupported image URL scheme"),
        ("https://example.com/x.png", "not fetched unless allowed"),
        ("/nonexistent/file.png", "not found"),
        (12345, "unsupported image type"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "HxW or HxWxC"),
        (np.zeros((4, 4, 3), dtype=np.float32), "uint8"),
    ],
    ids=[
        "garbage",
        "empty",
        "truncated",
        "bad-base64",
        "bad-data-url",
        "ftp",
        "https-not-allowed",
        "missing-file",
        "int",
        "numpy-2ch",
        "numpy-float",
    ],
)
def test_bad_images_get_clear_errors(source, match):
    with pytest.raises(InvalidInputError, match=match):
        load_image(source)


def test_directory_is_not_an_image(tmp_path: Path):
    with pytest.raises(InvalidInputError, match="not a file"):
        load_image(tmp_path)


def test_decompression_bomb_refused_before_decoding():
    bomb = _bomb_png(100_000, 100_000)
    assert len(bomb) < 200
    with pytest.raises(InvalidInputError, match="decompression bomb"):
        load_image(bomb)
    # the limit is configurable
    small = _bomb_png(300, 300)
    with pytest.raises(InvalidInputError, match="more than the limit of 10,000"):
        load_image(small, limits=InputLimits(max_decoded_pixels=10_000))


def test_pil_image_and_numpy_over_pixel_limit():
    with pytest.raises(InvalidInputError, match="pixels"):
        load_image(Image.new("RGB", (200, 200)), limits=InputLimits(max_decoded_pixels=1000))
    with pytest.raises(InvalidInputError, match="pixels"):
        load_image(np.zeros((200, 200, 3), dtype=np.uint8), limits=InputLimits(max_decoded_pixels=1000))


def test_file_size_cap(tmp_path: Path):
    file = tmp_path / "big.png"
    file.write_bytes(_png(Image.effect_noise((300, 300), 100).convert("RGB")))
    limits = InputLimits(max_image_bytes=1000)
    for source in (file, file.read_bytes(), "data:image/png;base64," + base64.b64encode(file.read_bytes()).decode()):
        with pytest.raises(InvalidInputError, match="more than the limit"):
            load_image(source, limits=limits)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (20, 20), color) for color in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = load_image(buffer.getvalue())
    r, _, b = image.getpixel((10, 10))
    assert r > 200 and b < 50


def test_exif_orientation_applied():
    image = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert load_image(buffer.getvalue()).size == (20, 40)


def test_transparency_composited_on_white_and_modes_converted():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    for mode in ("L", "P", "CMYK", "I;16", "1"):
        assert load_image(Image.new(mode, (8, 8))).mode == "RGB"


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (100, 200, (112, 196)),  # rounded to multiples of 28
        (10, 10, (56, 56)),  # raised to at least 4*28*28 pixels
        (28, 28, (56, 56)),
        (1000, 1000, (1008, 1008)),
        (5000, 5000, (3556, 3556)),  # lowered to at most 16384*28*28 pixels (floor: 127 * 28)
    ],
)
def test_smart_resize_rules(height, width, expected):
    h, w = smart_resize(height, width)
    assert (h, w) == expected
    assert h % 28 == 0 and w % 28 == 0
    assert 4 * 28 * 28 <= h * w <= 16384 * 28 * 28


def test_smart_resize_rejects_extreme_aspect():
    with pytest.raises(InvalidInputError, match="aspect ratio"):
        smart_resize(10, 5000)


def test_prepare_image_resizes_with_configurable_max_pixels():
    image = Image.new("RGB", (1000, 800))
    assert prepare_image(image).size == (1008, 812)
    small = prepare_image(image, limits=InputLimits(max_pixels=256 * 28 * 28))
    assert small.width * small.height <= 256 * 28 * 28 and small.width % 28 == 0


def test_merge_images_side_by_side_with_white_padding():
    left, right = Image.new("RGB", (30, 40), (255, 0, 0)), Image.new("RGB", (50, 20), (0, 0, 255))
    merged = merge_images([left, right])
    assert merged.size == (80, 40)
    assert merged.getpixel((10, 10)) == (255, 0, 0)
    assert merged.getpixel((40, 10)) == (0, 0, 255)
    assert merged.getpixel((40, 30)) == (255, 255, 255)  # padding under the shorter image
    big = merge_images([Image.new("RGB", (1000, 500)), Image.new("RGB", (1000, 800))])
    assert big.size == (1024, 410)  # 2000x800 shrunk to fit 1024x1024


def test_prepare_image_merges_lists_and_caps_count():
    merged = prepare_image([RED, RED])
    assert merged.width % 28 == 0
    with pytest.raises(InvalidInputError, match="at most 2"):
        prepare_image([RED, RED, RED], limits=InputLimits(max_images=2))
    with pytest.raises(InvalidInputError, match="empty image list"):
        prepare_image([])


def test_validate_text():
    assert validate_text("  keep  me ", name="text") == "  keep  me "  # never altered
    assert validate_text(None, name="text") is None
    with pytest.raises(InvalidInputError, match="empty"):
        validate_text("   ", name="text")
    with pytest.raises(InvalidInputError, match="must be a string"):
        validate_text(b"bytes", name="text")
    with pytest.raises(InvalidInputError, match="characters"):
        validate_text("x" * 11, name="response", limits=InputLimits(max_text_chars=10))


def test_limits_validation():
    with pytest.raises(InvalidInputError):
        InputLimits(min_pixels=10)
    with pytest.raises(InvalidInputError):
        InputLimits(max_text_chars=0)


def test_data_url_round_trip():
    url = encode_image_data_url(RED)
    assert url.startswith("data:image/png;base64,")
    assert load_image(url).getpixel((0, 0)) == (255, 0, 0)
