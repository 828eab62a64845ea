"""training.augment: safety-aware concatenation on real images."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.training.augment import augment, concatenate, merged_count
from guardreasoner_vl.training.data import TrainSample

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def test_images_side_by_side_with_white_padding(tmp_path: Path, make_image):
    a = TrainSample(id="a", text="first", image=str(make_image("a.png", (100, 50), RED)), request_label="unharmful")
    b = TrainSample(id="b", text="second", image=str(make_image("b.png", (60, 80), BLUE)), request_label="harmful")
    merged = concatenate(a, b, image_dir=tmp_path / "merged")
    assert merged.image is not None and Path(merged.image).parent == (tmp_path / "merged").resolve()
    with Image.open(merged.image) as image:
        assert image.format == "PNG"
        assert image.size == (160, 80)  # widths add up, height is the taller one
        rgb = image.convert("RGB")
        assert rgb.getpixel((10, 10)) == RED
        assert rgb.getpixel((99, 49)) == RED
        assert rgb.getpixel((50, 50)) == WHITE  # under the shorter (red) image: white padding
        assert rgb.getpixel((99, 79)) == WHITE
        assert rgb.getpixel((100, 0)) == BLUE
        assert rgb.getpixel((159, 79)) == BLUE
    assert merged.text == "first second"
    assert merged.request_label == "harmful"
    assert merged.merged_from == ("a", "b")
    assert merged.source == "augment" and merged.target is None


def test_large_merge_is_shrunk_to_fit_1024(tmp_path: Path, make_image):
    a = TrainSample(id="a", image=str(make_image("a.png", (900, 600), RED)), request_label="unharmful")
    b = TrainSample(id="b", image=str(make_image("b.png", (700, 800), BLUE)), request_label="unharmful")
    merged = concatenate(a, b, image_dir=tmp_path)
    with Image.open(merged.image or "") as image:
        # 1600x800 scaled by min(1024/1600, 1024/800) = 0.64 -> 1024x512
        assert image.size == (1024, 512)
    assert merged.text is None and merged.modality == "image"


def test_text_only_partner_keeps_the_other_image(tmp_path: Path, make_image):
    img = str(make_image("only.png", (30, 30), RED))
    text_only = TrainSample(id="t", text="hello", request_label="unharmful")
    with_image = TrainSample(id="i", text="what is it", image=img, request_label="harmful")
    for a, b, text in ((text_only, with_image, "hello what is it"), (with_image, text_only, "what is it hello")):
        merged = concatenate(a, b, image_dir=tmp_path / "out")
        assert merged.image == img
        assert merged.text == text
        assert merged.request_label == "harmful"
    assert not (tmp_path / "out").exists()  # nothing to merge, nothing written


@pytest.mark.parametrize(
    ("a_labels", "b_labels", "expected"),
    [
        (("unharmful", None), ("unharmful", None), ("unharmful", None)),
        (("harmful", None), ("unharmful", None), ("harmful", None)),
        (("unharmful", "unharmful"), ("unharmful", None), ("unharmful", "unharmful")),
        (("unharmful", None), ("unharmful", "harmful"), ("unharmful", "harmful")),
        (("unharmful", "unharmful"), ("harmful", "harmful"), ("harmful", "harmful")),
        (("unharmful", "harmful"), ("unharmful", "unharmful"), ("unharmful", "harmful")),
    ],
)
def test_labels_are_or_combined(tmp_path: Path, a_labels, b_labels, expected):
    def sample(name: str, labels: tuple[str, str | None]) -> TrainSample:
        response = None if labels[1] is None else f"answer {name}"
        return TrainSample(
            id=name, text=f"q {name}", response=response, request_label=labels[0], response_label=labels[1]
        )

    merged = concatenate(sample("a", a_labels), sample("b", b_labels), image_dir=tmp_path)
    assert (merged.request_label, merged.response_label) == expected
    responses = [f"answer {n}" for n, lab in (("a", a_labels), ("b", b_labels)) if lab[1] is not None]
    assert merged.response == (" ".join(responses) if responses else None)


def test_ratio_arithmetic():
    # merged / (hard + merged) = ratio  ->  merged = ratio * hard / (1 - ratio)
    assert merged_count(8, 0.2) == 2  # 2 / 10 = 0.2
    assert merged_count(100, 0.2) == 25  # 25 / 125 = 0.2
    assert merged_count(12000, 0.2) == 3000
    assert merged_count(3, 0.5) == 3
    assert merged_count(10, 0.0) == 0
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(InvalidInputError):
            merged_count(10, bad)


def _pool(make_image, n: int) -> list[TrainSample]:
    out = []
    for i in range(n):
        image = str(make_image(f"p{i}.png", (20 + i, 10 + 2 * i), (10 * i, 0, 0))) if i % 2 else None
        out.append(
            TrainSample(
                id=f"s{i}", text=f"text {i}", image=image, request_label="harmful" if i % 3 == 0 else "unharmful"
            )
        )
    return out


def test_augment_builds_the_rl_set_with_the_ratio(tmp_path: Path, make_image):
    hard = _pool(make_image, 8)
    rl_set = augment(hard, ratio=0.2, seed=0, image_dir=tmp_path / "m")
    assert rl_set[:8] == hard
    merged = rl_set[8:]
    assert len(merged) == 2 and len(merged) / len(rl_set) == 0.2
    by_id = {s.id: s for s in hard}
    for m in merged:
        a, b = (by_id[i] for i in m.merged_from)
        assert m.request_label == ("harmful" if "harmful" in (a.request_label, b.request_label) else "unharmful")
    assert len({frozenset(m.merged_from) for m in merged}) == 2  # distinct pairs


def test_augment_is_seeded_and_reproducible(tmp_path: Path, make_image):
    hard = _pool(make_image, 12)
    first = augment(hard, ratio=0.4, seed=7, image_dir=tmp_path / "one")
    second = augment(hard, ratio=0.4, seed=7, image_dir=tmp_path / "two")
    other = augment(hard, ratio=0.4, seed=8, image_dir=tmp_path / "three")
    assert len(first) == 12 + 8
    assert [s.merged_from for s in first] == [s.merged_from for s in second]
    assert [s.merged_from for s in first] != [s.merged_from for s in other]
    written = 0
    for x, y in zip(first[12:], second[12:], strict=True):
        assert x.model_dump(exclude={"image"}) == y.model_dump(exclude={"image"})
        if x.image and Path(x.image).parent.name == "one":
            written += 1
            assert Path(x.image).read_bytes() == Path(y.image or "").read_bytes()
    assert written > 0  # some pair had two images, so a merged file was compared


def test_augment_refuses_bad_input(tmp_path: Path):
    a = TrainSample(id="a", text="x", request_label="harmful")
    with pytest.raises(InvalidInputError, match="itself"):
        concatenate(a, a, image_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="duplicate sample id"):
        augment([a, a, a, a], image_dir=tmp_path)
    b = TrainSample(id="b", text="y", request_label="harmful")
    with pytest.raises(InvalidInputError, match="distinct pairs"):
        augment([a, b], ratio=0.75, image_dir=tmp_path)  # 6 merged from 1 pair
    missing = TrainSample(id="m", text="z", image=str(tmp_path / "gone.png"), request_label="harmful")
    with_image = TrainSample(id="w", text="z", image=str(tmp_path / "gone2.png"), request_label="harmful")
    with pytest.raises(InvalidInputError, match="not found"):
        concatenate(missing, with_image, image_dir=tmp_path)
