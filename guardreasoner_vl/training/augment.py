"""Safety-aware concatenation: join pairs of hard samples into harder, merged ones (paper, section 3.2).

Two hard samples a and b become one: texts joined with one space, images side by side (the shorter one
padded with white at the bottom to the taller height, then the row shrunk to fit in 1024x1024, by
:func:`guardreasoner_vl.inputs.merge_images`), a text-only partner keeps the other's image, and the labels
are OR-combined: the merged request is harmful if either request is, and likewise the response.
:func:`augment` adds merged samples to a pool of hard samples until they make up ``ratio`` of the result
(20% in the paper), choosing the pairs with a seeded generator so a run is reproducible. With ``total`` (the
augment stage's default 12,000, the paper's RL set) the pool is first drawn down to ``total * (1 - ratio)``
hard rows, so the set holds 9,600 hard + 2,400 merged rows whatever the mining pool's size.

Where this departs from the paper and the released code, and why:

* AI responses are joined like the texts (one space), and the response label is the OR of the partners'
  response labels; a partner without a response contributes nothing to it. A merged row has a response
  label exactly when at least one partner had a response. (The paper states only the OR rule.)
* Labels are stored on the merged row itself (``request_label``, ``response_label``, ``merged_from``), so the
  reward scores it against the OR-combined labels. The released code scored merged samples against the
  first sample's labels.
* Merged images are written as PNG files (lossless) under ``image_dir``, named after the pair, so rows keep
  pointing at files like every other row. Each pair is used at most once; a sample may appear in several
  pairs (the paper picks pairs at random with replacement of samples).
* Merged rows have no SFT target: they are for the RL stage only, as in the paper.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.inputs import load_image, merge_images
from guardreasoner_vl.training.data import TrainSample

__all__ = ["DEFAULT_RATIO", "augment", "concatenate", "merged_count", "rl_set_sizes"]

logger = logging.getLogger(__name__)

DEFAULT_RATIO = 0.2
"""Share of merged samples in the RL set (the paper's 20%)."""


def _or_label(a: str | None, b: str | None) -> str | None:
    labels = [x for x in (a, b) if x is not None]
    if not labels:
        return None
    return "harmful" if "harmful" in labels else "unharmful"


def _join(a: str | None, b: str | None) -> str | None:
    parts = [x for x in (a, b) if x is not None]
    return " ".join(parts) if parts else None


def _image_name(merged_id: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", merged_id)[:80]
    digest = hashlib.sha256(merged_id.encode("utf-8")).hexdigest()[:12]
    return f"{stem}-{digest}.png"


def concatenate(
    a: TrainSample,
    b: TrainSample,
    *,
    image_dir: str | os.PathLike[str],
    max_size: tuple[int, int] = (1024, 1024),
) -> TrainSample:
    """Join two samples into one merged sample with OR-combined labels.

    Args:
        a, b: the two samples (a's text and image come first).
        image_dir: folder where a merged image (both partners have one) is written as PNG.
        max_size: the merged image is shrunk, aspect ratio kept, to fit in this ``(width, height)``.

    Returns:
        A :class:`TrainSample` with ``merged_from`` set to the ids of the original samples, ``source="augment"``
        and no target.

    Raises:
        InvalidInputError: a sample is joined with itself, or an image cannot be read.

    Example:
        >>> a = TrainSample(id="a", text="how to make a bomb", request_label="harmful")
        >>> b = TrainSample(id="b", text="nice weather", request_label="unharmful")
        >>> m = concatenate(a, b, image_dir="/tmp")
        >>> m.text, m.request_label, m.merged_from
        ('how to make a bomb nice weather', 'harmful', ('a', 'b'))
    """
    if a.id == b.id:
        raise InvalidInputError(f"cannot join sample {a.id!r} with itself")
    merged_id = f"merge:{a.id}+{b.id}"
    if a.image is not None and b.image is not None:
        out_dir = Path(image_dir).expanduser()
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / _image_name(merged_id)
        merged = merge_images([load_image(a.image), load_image(b.image)], max_size=max_size)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        merged.save(tmp, format="PNG")
        os.replace(tmp, target)
        image: str | None = str(target.resolve())
    else:
        image = a.image if a.image is not None else b.image  # a text-only partner keeps the other's image
    return TrainSample(
        id=merged_id,
        text=_join(a.text, b.text),
        image=image,
        response=_join(a.response, b.response),
        request_label=_or_label(a.request_label, b.request_label),  # type: ignore[arg-type]
        response_label=_or_label(a.response_label, b.response_label),  # type: ignore[arg-type]
        target=None,
        source="augment",
        merged_from=(*(a.merged_from or (a.id,)), *(b.merged_from or (b.id,))),
    )


def merged_count(n_samples: int, ratio: float) -> int:
    """How many merged samples make them ``ratio`` of ``n_samples + merged`` (rounded half up).

    Example:
        >>> merged_count(8, 0.2), merged_count(100, 0.2), merged_count(10, 0.0)
        (2, 25, 0)
    """
    if not isinstance(ratio, int | float) or not 0 <= ratio < 1:
        raise InvalidInputError(f"ratio must be in [0, 1), got {ratio!r}")
    if n_samples < 0:
        raise InvalidInputError(f"n_samples must be >= 0, got {n_samples}")
    return math.floor(ratio * n_samples / (1 - ratio) + 0.5)


def rl_set_sizes(available: int, total: int | None, ratio: float) -> tuple[int, int]:
    """``(hard rows, merged rows)`` of an RL set of ``total`` rows, ``ratio`` of them merged, from a pool of
    ``available`` hard samples. ``total=None`` or a pool smaller than ``total - round(total * ratio)``: the
    whole pool and :func:`merged_count` merged rows.

    Example:
        >>> rl_set_sizes(15000, 12000, 0.2), rl_set_sizes(5000, 12000, 0.2), rl_set_sizes(15000, None, 0.2)
        ((9600, 2400), (5000, 1250), (15000, 3750))
    """
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
        raise InvalidInputError(f"total must be a positive integer or None, got {total!r}")
    n_merged = merged_count(available, ratio)  # validates ratio
    if total is None:
        return available, n_merged
    want_merged = math.floor(total * ratio + 0.5)
    want_hard = total - want_merged
    if available >= want_hard:
        return want_hard, want_merged
    logger.warning(
        "augment: only %d hard samples for an RL set of %d (%d hard + %d merged); using all of them and %d merged",
        available,
        total,
        want_hard,
        want_merged,
        n_merged,
    )
    return available, n_merged


def augment(
    hard: Sequence[TrainSample],
    *,
    ratio: float = DEFAULT_RATIO,
    seed: int = 0,
    image_dir: str | os.PathLike[str],
    max_size: tuple[int, int] = (1024, 1024),
    total: int | None = None,
) -> list[TrainSample]:
    """Build the RL set: the hard samples plus merged pairs of them, the merged ones ``ratio`` of the result.

    Args:
        hard: the hard samples (unique ids). Merged inputs are allowed but not usually wanted.
        ratio: share of merged samples in the returned set (default 0.2: N hard samples get N/4 merged ones).
        seed: seed of the pair choice; the same inputs and seed give the same rows and images.
        image_dir: where merged images are written.
        max_size: bound of a merged image.
        total: size of the RL set (see :func:`rl_set_sizes`): the hard rows are then a seeded random draw
            of ``total - round(total * ratio)`` rows of ``hard``, kept in their order; ``None``: all of them.

    Returns:
        The RL set: the (drawn) hard samples in their order, followed by the merged samples.

    Raises:
        InvalidInputError: bad ratio, duplicate ids, or more merged samples asked than distinct pairs exist.
    """
    samples = list(hard)
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InvalidInputError(f"duplicate sample id {dup!r}: augmentation needs unique ids")
    rng = random.Random(seed)
    n_hard, n_merged = rl_set_sizes(len(samples), total, ratio)
    if n_hard < len(samples):
        keep = set(rng.sample(range(len(samples)), n_hard))
        samples = [s for i, s in enumerate(samples) if i in keep]
    n_pairs = len(samples) * (len(samples) - 1) // 2
    if n_merged > n_pairs:
        raise InvalidInputError(
            f"{n_merged} merged samples asked from {len(samples)} samples, which form only {n_pairs} distinct pairs; "
            "lower the ratio or give more samples"
        )
    chosen: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(chosen) < n_merged:
        i, j = rng.sample(range(len(samples)), 2)
        key = (min(i, j), max(i, j))
        if key in seen:
            continue
        seen.add(key)
        chosen.append((i, j))
    merged = [concatenate(samples[i], samples[j], image_dir=image_dir, max_size=max_size) for i, j in chosen]
    logger.info("augment: %d hard samples + %d merged (ratio %.3f, seed %d)", len(samples), len(merged), ratio, seed)
    return samples + merged
