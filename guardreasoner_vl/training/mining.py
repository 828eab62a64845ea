"""Hard-sample mining (rejection sampling): keep the samples the R-SFT model gets wrong in every pass.

:func:`mine_hard_samples` runs ``passes`` sampled passes (paper: 4, temperature 1.0, top_p 0.95) of a model
over the training rows through any :class:`~guardreasoner_vl.Guard` backend (``vllm`` for speed,
``transformers``, ``remote`` to a served model, or a fake in tests) with
``Guard.moderate_batch(items, sampling=SamplingParams(...))``, so the prompts and the parser are exactly
those of inference. A sample is *wrong* in a pass when its request verdict differs from the gold label, or
(when the sample has an AI response) its response verdict does; an output that cannot be parsed is wrong.
Hard samples are the ones wrong in every pass.

Resumable: each pass appends one JSON line per sample to ``<output_dir>/pass-<k>.jsonl`` after every
batch (a :class:`~guardreasoner_vl.jsonl_store.JsonlStore`: whole lines, fsync per batch, one writer), and a
rerun skips the samples already judged. A last line cut short by a crash is cut off, logged and counted in
``report.json`` (``repaired_tails``), and its sample is redone; a damaged line elsewhere stops the run
with its line number instead of silently dropping everything after it. ``hard.jsonl`` (the hard rows, in
the data format :func:`~guardreasoner_vl.training.data.load_samples` reads) and ``report.json`` (counts) are
written at the end.

Where this departs from the paper and the released code, and why:

* Rows without an AI response are judged on the request alone (the guard reports no response verdict).
  The released script filled missing response labels from request labels, a bug.
* The released script kept every image-only sample whatever the passes said, and sub-sampled the pool to
  12,000. Neither is in the paper; ``keep_image_only=True`` and ``cap=12000`` reproduce them.
* A pass result that is not a judgement (``engine_error``/``invalid_input``: the engine failed, or the
  input was refused before the model saw it) is not "wrong": such samples are left out of the hard set and
  counted in ``report.json`` (``not_judged``), with a warning, instead of being mistaken for hard ones.
* Sampling seeds are derived per pass and batch from ``seed``; a resumed pass continues with fresh batches,
  so it is reproducible as a whole only when it ran uninterrupted.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.backends.base import SamplingParams
from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.jsonl_store import JsonlStore
from guardreasoner_vl.types import GuardResult

if TYPE_CHECKING:
    from guardreasoner_vl.guard import Guard
    from guardreasoner_vl.training.config import AugmentConfig, MiningConfig
    from guardreasoner_vl.training.data import TrainSample

__all__ = ["MiningReport", "PassRecord", "is_wrong", "mine_hard_samples", "run_augment", "run_mining"]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, int], None]
"""``progress(pass_index, done_in_pass, total)``: called after every batch (1-based pass index)."""


@dataclass(frozen=True, slots=True)
class PassRecord:
    """The outcome of one sample in one pass (one line of ``pass-<k>.jsonl``)."""

    id: str
    wrong: bool
    judged: bool
    status: str
    request: str | None
    response: str | None
    raw_output: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "wrong": self.wrong,
            "judged": self.judged,
            "status": self.status,
            "request": self.request,
            "response": self.response,
        }
        if self.raw_output is not None:
            data["raw_output"] = self.raw_output
        return data


@dataclass(frozen=True)
class MiningReport:
    """What :func:`mine_hard_samples` found.

    Attributes:
        hard: the hard samples kept (after ``keep_image_only`` and ``cap``), in data order.
        total: samples mined.
        passes: number of passes.
        wrong_per_pass: samples wrong in each pass.
        wrong_in_all: samples wrong in every pass (before ``keep_image_only`` and ``cap``).
        not_judged: samples with at least one pass that produced no judgement (left out).
        repaired_tails: pass files whose torn last line (left by a crash) was cut off when resuming.
        kept_image_only: image-only samples added by ``keep_image_only``.
        capped_from: the pool size before ``cap`` was applied (None when no cap applied).
        output_dir: where the pass files, ``hard.jsonl`` and ``report.json`` are.
    """

    hard: list[TrainSample]
    total: int
    passes: int
    wrong_per_pass: list[int]
    wrong_in_all: int
    not_judged: int = 0
    repaired_tails: int = 0
    kept_image_only: int = 0
    capped_from: int | None = None
    output_dir: Path | None = None
    by_modality: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        """The report as a JSON-able dict (what ``report.json`` holds)."""
        return {
            "total": self.total,
            "passes": self.passes,
            "wrong_per_pass": self.wrong_per_pass,
            "wrong_in_all_passes": self.wrong_in_all,
            "not_judged": self.not_judged,
            "repaired_tails": self.repaired_tails,
            "kept_image_only": self.kept_image_only,
            "capped_from": self.capped_from,
            "hard": len(self.hard),
            "hard_by_modality": self.by_modality,
        }


def is_wrong(sample: TrainSample, result: GuardResult) -> bool:
    """True when ``result`` gets ``sample`` wrong: request label wrong, or response label wrong (when the
    sample has a response), or the output could not be parsed."""
    if result.status == "parse_error" or result.request is None:
        return True
    if result.request.value != sample.request_label:
        return True
    if sample.response_label is not None:
        return result.response is None or result.response.value != sample.response_label
    return False


def _pass_record(data: dict[str, Any]) -> PassRecord:
    return PassRecord(
        id=str(data["id"]),
        wrong=bool(data["wrong"]),
        judged=bool(data["judged"]),
        status=str(data["status"]),
        request=data.get("request"),
        response=data.get("response"),
        raw_output=data.get("raw_output"),
    )


def _read_pass(store: JsonlStore) -> dict[str, PassRecord]:
    """The judged records of a pass file (a later record of an id wins: a not-judged one is redone).

    Raises:
        InvalidInputError: a line is not a pass record (a damaged file: only a torn last line is repaired).
    """
    done: dict[str, PassRecord] = {}
    for row in store.rows():
        try:
            record = _pass_record(row.data)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"{store.path}, line {row.line}: not a mining pass record (missing {exc}); remove the file to redo "
                "the pass"
            ) from None
        if record.judged:
            done[record.id] = record
    return done


def _item(sample: TrainSample) -> dict[str, Any]:
    return {"text": sample.text, "image": sample.image, "response": sample.response}


def _batch_seed(seed: int | None, pass_index: int, batch_start: int) -> int | None:
    if seed is None:
        return None
    return (seed * 1_000_003 + pass_index * 7_919 + batch_start) % (2**31 - 1)


def mine_hard_samples(
    guard: Guard,
    samples: Sequence[TrainSample],
    *,
    output_dir: str | os.PathLike[str],
    passes: int = 4,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_new_tokens: int = 4096,
    batch_size: int = 64,
    seed: int | None = 0,
    cap: int | None = None,
    keep_image_only: bool = False,
    save_outputs: bool = False,
    progress: ProgressFn | None = None,
) -> MiningReport:
    """Run ``passes`` sampled passes of ``guard`` over ``samples`` and keep those wrong in every pass.

    Args:
        guard: a :class:`~guardreasoner_vl.Guard` on the R-SFT model (any backend).
        samples: the training rows (each needs an ``id``; labels are the gold labels).
        output_dir: folder for ``pass-<k>.jsonl``, ``hard.jsonl`` and ``report.json`` (resumes from them).
        passes: sampled passes (paper: 4).
        temperature, top_p: sampling (paper: 1.0, 0.95).
        max_new_tokens: generation budget per sample.
        batch_size: samples per ``moderate_batch`` call (results are flushed to disk after each).
        seed: base seed of the sampling and of ``cap``'s draw (``None``: unseeded sampling).
        cap: keep at most this many hard samples, drawn at random with ``seed``.
        keep_image_only: also keep every image-only sample (the released code's behaviour).
        save_outputs: store raw outputs in the pass files.
        progress: called as ``progress(pass_index, done, total)`` after each batch.

    Returns:
        A :class:`MiningReport`; ``hard.jsonl`` holds the same rows.

    Raises:
        InvalidInputError: bad arguments or duplicate sample ids.

    Example:
        >>> from guardreasoner_vl import Guard
        >>> from guardreasoner_vl.backends import FunctionBackend
        >>> from guardreasoner_vl.backends.fake import verdict_output
        >>> from guardreasoner_vl.prompts import ModelFamily
        >>> from guardreasoner_vl.training.data import TrainSample
        >>> import tempfile
        >>> always_safe = FunctionBackend(lambda request: verdict_output(ModelFamily.VL, request_harmful=False))
        >>> rows = [TrainSample(id="a", text="bake bread", request_label="unharmful"),
        ...         TrainSample(id="b", text="make a bomb", request_label="harmful")]
        >>> report = mine_hard_samples(Guard(backend=always_safe), rows, output_dir=tempfile.mkdtemp(), passes=2)
        >>> [s.id for s in report.hard], report.wrong_per_pass
        (['b'], [1, 1])
    """
    from guardreasoner_vl.training.data import save_samples

    if passes < 1:
        raise InvalidInputError("passes must be at least 1")
    if batch_size < 1:
        raise InvalidInputError("batch_size must be at least 1")
    if cap is not None and cap < 1:
        raise InvalidInputError("cap must be at least 1 (or None for no cap)")
    if temperature <= 0:
        raise InvalidInputError("mining samples: temperature must be > 0 (paper: 1.0)")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise InvalidInputError("sample ids must be unique: mining results are keyed by id")
    out = Path(output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    total = len(samples)
    results: list[dict[str, PassRecord]] = []
    repaired = 0
    known = set(ids)
    for k in range(1, passes + 1):
        path = out / f"pass-{k}.jsonl"
        with JsonlStore(path, owner="mining") as store:
            if store.torn is not None:
                repaired += 1
            done = {i: r for i, r in _read_pass(store).items() if i in known}
            todo = [s for s in samples if s.id not in done]
            if done:
                logger.info("pass %d/%d: %d of %d samples already done, resuming", k, passes, len(done), total)
            if progress is not None:
                progress(k, len(done), total)
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                params = SamplingParams(
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    seed=_batch_seed(seed, k, len(done)),
                )
                outcomes = guard.moderate_batch([_item(s) for s in chunk], sampling=params)
                lines = []
                for sample, result in zip(chunk, outcomes, strict=True):
                    judged = result.status in ("ok", "parse_error")
                    record = PassRecord(
                        id=sample.id,
                        wrong=is_wrong(sample, result) if judged else False,
                        judged=judged,
                        status=result.status,
                        request=result.request.value if result.request else None,
                        response=result.response.value if result.response else None,
                        raw_output=result.raw_output if save_outputs else None,
                    )
                    lines.append(record.to_dict())
                    if judged:
                        done[sample.id] = record
                    else:
                        logger.warning(
                            "pass %d: sample %s not judged (%s): %s", k, sample.id, result.status, result.error
                        )
                store.append(lines)
                if progress is not None:
                    progress(k, len(done), total)
        wrong = sum(1 for r in done.values() if r.wrong)
        logger.info("pass %d/%d: %d of %d samples wrong", k, passes, wrong, total)
        results.append(done)

    not_judged = [s for s in samples if any(s.id not in r for r in results)]
    hard = [s for s in samples if all(s.id in r and r[s.id].wrong for r in results)]
    wrong_in_all = len(hard)
    kept_image_only = 0
    if keep_image_only:
        hard_ids = {s.id for s in hard}
        extra = [s for s in samples if s.modality == "image" and s.id not in hard_ids]
        kept_image_only = len(extra)
        hard_ids.update(s.id for s in extra)
        hard = [s for s in samples if s.id in hard_ids]
    capped_from = None
    if cap is not None and len(hard) > cap:
        capped_from = len(hard)
        chosen = set(random.Random(seed).sample(range(len(hard)), cap))
        hard = [s for i, s in enumerate(hard) if i in chosen]
    by_modality: dict[str, int] = {}
    for s in hard:
        by_modality[s.modality] = by_modality.get(s.modality, 0) + 1
    if not_judged:
        logger.warning("%d samples were not judged in every pass and are left out of the hard set", len(not_judged))
    report = MiningReport(
        hard=hard,
        total=total,
        passes=passes,
        wrong_per_pass=[sum(1 for r in res.values() if r.wrong) for res in results],
        wrong_in_all=wrong_in_all,
        not_judged=len(not_judged),
        repaired_tails=repaired,
        kept_image_only=kept_image_only,
        capped_from=capped_from,
        output_dir=out,
        by_modality=by_modality,
    )
    save_samples(hard, out / "hard.jsonl")
    (out / "report.json").write_text(json.dumps(report.counts(), indent=2) + "\n", encoding="utf-8")
    logger.info("mining: %s", report.counts())
    return report


def run_mining(config: MiningConfig, *, guard: Guard | None = None, progress: ProgressFn | None = None) -> MiningReport:
    """Run the mining stage as configured (builds the :class:`~guardreasoner_vl.Guard` unless one is given).

    Raises:
        InvalidInputError: missing model, data or output_dir, or bad data.
    """
    from guardreasoner_vl.guard import Guard
    from guardreasoner_vl.inputs import InputLimits
    from guardreasoner_vl.training.common import load_training_samples

    if not config.output_dir:
        raise InvalidInputError("set output_dir (pass files, hard.jsonl and report.json go there)")
    if guard is None and not config.model:
        raise InvalidInputError("set model (the R-SFT checkpoint to mine with)")
    samples, _ = load_training_samples(config)
    owned = guard is None
    if guard is None:
        guard = Guard(
            config.model,
            backend=config.backend,
            device=config.device,
            dtype=config.dtype,
            max_new_tokens=config.max_new_tokens,
            limits=InputLimits(max_pixels=config.max_pixels) if config.max_pixels else None,
            batch_size=config.engine_batch_size,
            backend_options=config.backend_options,
        )
    try:
        return mine_hard_samples(
            guard,
            samples,
            output_dir=config.output_dir,
            passes=config.passes,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            seed=config.seed,
            cap=config.cap,
            keep_image_only=config.keep_image_only,
            save_outputs=config.save_outputs,
            progress=progress,
        )
    finally:
        if owned:
            guard.close()


def run_augment(config: AugmentConfig) -> dict[str, Any]:
    """Build the RL set from the mined hard samples: :func:`~guardreasoner_vl.training.augment.augment`,
    written to ``config.output`` (JSONL), merged images under ``config.image_dir``.

    Returns:
        Counts: ``hard``, ``merged``, ``total`` and the paths written.

    Raises:
        InvalidInputError: missing paths or bad rows.
    """
    from guardreasoner_vl.training.augment import augment
    from guardreasoner_vl.training.data import load_samples, save_samples

    if not config.hard:
        raise InvalidInputError("set hard (the hard.jsonl written by train mine)")
    if not config.output:
        raise InvalidInputError("set output (the RL set JSONL to write)")
    output = Path(config.output).expanduser()
    image_dir = Path(config.image_dir).expanduser() if config.image_dir else output.parent / "merged_images"
    report = load_samples(config.hard, format="jsonl", image_root=config.image_root)
    rows = augment(
        report.samples,
        ratio=config.ratio,
        seed=config.seed,
        image_dir=image_dir,
        max_size=(config.max_width, config.max_height),
        total=config.total,
    )
    save_samples(rows, output)
    merged = sum(1 for r in rows if r.is_merged)
    counts = {
        "hard": len(rows) - merged,
        "merged": merged,
        "total": len(rows),
        "pool": len(report.samples),
        "output": str(output),
        "image_dir": str(image_dir),
    }
    logger.info("augment: %s", counts)
    return counts
