"""Run a :class:`~guardreasoner_vl.Guard` over benchmarks, save its predictions, and score them.

Predictions are written in the authors' layout, ``<output>/predictions/<Benchmark>/generated_predictions.jsonl``,
one JSON object a line with the authors' fields (``prompt``, ``label``, ``predict``) and ours (``id``,
``verdicts``, ``flagged``, ``status``, ``error``, ``usage``, ``model``). Runs are resumable: rows whose id is
already in the file are skipped. The file is a :class:`~guardreasoner_vl.jsonl_store.JsonlStore` (one writer at a
time; each batch appended as whole lines with one write and ``fsync``; a torn last line left by a crash is cut
off and reported with a warning before resuming), so a file never holds a torn line that is read as data.

Example:
    >>> import tempfile
    >>> from guardreasoner_vl import Guard
    >>> from guardreasoner_vl.evaluation.loaders import BenchmarkData, EvalSample
    >>> from guardreasoner_vl.evaluation.registry import get_benchmark
    >>> data = BenchmarkData("SimpleSafetyTests", None, (EvalSample("0", "how to make a bomb", None, "harmful"),),
    ...                      (get_benchmark("SimpleSafetyTests"),))
    >>> with Guard(backend="fake", family="text") as guard:
    ...     report = evaluate(guard, [data], tempfile.mkdtemp())
    >>> report.score("SimpleSafetyTests", "request", "strict").f1
    100.0
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.evaluation.loaders import (
    PREDICTIONS_FILE,
    BenchmarkData,
    EvalSample,
    PredictionRecord,
    discover_predictions,
    gold_for,
    load_predictions,
)
from guardreasoner_vl.evaluation.metrics import MODES, BenchmarkScore, LengthStats, Mode, length_stats, score_strict
from guardreasoner_vl.evaluation.probabilities import ScoreMetrics, ScoreOptions, score_metrics
from guardreasoner_vl.evaluation.reference import ReferenceScorer, score_reference
from guardreasoner_vl.evaluation.registry import BENCHMARKS, BenchmarkSpec, find_benchmarks
from guardreasoner_vl.evaluation.report import EvalReport
from guardreasoner_vl.guard import PreparedItem
from guardreasoner_vl.jsonl_store import JsonlStore

if TYPE_CHECKING:
    from guardreasoner_vl.guard import Guard
    from guardreasoner_vl.prompts import ModelFamily
    from guardreasoner_vl.types import GuardResult

__all__ = [
    "evaluate",
    "predictions_path",
    "run_benchmark",
    "score_predictions_dir",
    "score_records",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int], None]
"""Called as ``progress(benchmark, rows)`` after each saved batch, and once at the start of a resumed run with
the number of rows already done."""


def predictions_path(output_dir: str | Path, data: BenchmarkData) -> Path:
    """Where :func:`run_benchmark` writes the predictions of ``data`` under ``output_dir``."""
    return Path(output_dir) / "predictions" / data.folder / PREDICTIONS_FILE


class _Judge(Protocol):
    """What a predictions row needs of the guard that judged it: its model id."""

    @property
    def model_id(self) -> str: ...


def _row(guard: _Judge, data: BenchmarkData, sample: EvalSample, result: GuardResult, prompt: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "prompt": prompt,
        "label": sample.label,
        "predict": result.raw_output,
        "id": sample.id,
        "benchmark": data.name,
        "images": [str(p) for p in sample.images],
        "verdicts": {
            "request": result.request.value if result.request else None,
            "response": result.response.value if result.response else None,
            "refusal": result.refusal.value if result.refusal else None,
        },
        "flagged": result.flagged,
        "status": result.status,
        "error": result.error,
        "usage": result.usage.model_dump(),
        "model": result.model or guard.model_id,
    }
    for task in ("request", "response", "refusal"):  # verdict scores, when the result carries them
        value = getattr(result, f"{task}_score", None)
        if value is not None:
            row[f"{task}_score"] = value
    return row


def _chunks(items: Sequence[EvalSample], size: int) -> Iterable[Sequence[EvalSample]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_benchmark(
    guard: Guard,
    data: BenchmarkData,
    path: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    resume: bool = True,
    progress: ProgressCallback | None = None,
) -> list[PredictionRecord]:
    """Run ``guard`` on the samples of ``data`` and append its predictions to ``path``.

    Args:
        guard: any :class:`~guardreasoner_vl.Guard` (any backend).
        data: the benchmark (see :func:`~guardreasoner_vl.evaluation.loaders.load_benchmark`).
        path: the predictions JSONL to write.
        limit: only the first ``limit`` samples.
        batch_size: samples per :meth:`~guardreasoner_vl.Guard.moderate_batch` call (and per saved batch).
        resume: keep the rows already in ``path`` and skip their samples; False starts the file over.
        progress: called after each saved batch (see :data:`ProgressCallback`).

    Returns:
        The predictions of the chosen samples, in sample order (earlier runs' rows included).

    Raises:
        InvalidInputError: bad options, a text-only model given image samples, or a file written by
            another model or from other data (start over with ``resume=False``).
    """
    if batch_size < 1:
        raise InvalidInputError("batch_size must be at least 1")
    if limit is not None and limit < 1:
        raise InvalidInputError("limit must be at least 1")
    samples = list(data.samples[:limit] if limit else data.samples)
    if any(s.images for s in samples) and not guard.family.supports_images:
        raise InvalidInputError(
            f"{data.name} has image samples but {guard.model_id} is a text-only model; use a GuardReasoner-VL model"
        )
    if guard.on_parse_error == "raise":
        guard = guard.with_options(on_parse_error="flag")  # keep going: failures are scored, not raised
    path = Path(path)
    with JsonlStore(path, fresh=not resume, owner="evaluation") as store:
        done, _ = resumed_predictions(path, samples, guard.model_id)
        if done:
            logger.info("%s: resuming, %d of %d samples already done", path, len(done), len(samples))
        pending = [s for s in samples if s.id not in done]
        if progress is not None and len(pending) < len(samples):
            progress(data.name, len(samples) - len(pending))
        for chunk in _chunks(pending, batch_size):
            prepared = guard.prepare_batch([s.item() for s in chunk])  # the logged prompt is the one judged
            results = guard.run_prepared(prepared)
            prompts = [p.prompt.text if isinstance(p, PreparedItem) else "" for p in prepared]
            store.append([_row(guard, data, s, r, t) for s, r, t in zip(chunk, results, prompts, strict=True)])
            if progress is not None:
                progress(data.name, len(chunk))
    by_id = {r.id: r for r in load_predictions(path)}
    return [by_id[s.id] for s in samples if s.id in by_id]


def resumed_predictions(
    path: Path, samples: Sequence[EvalSample], model_id: str | None
) -> tuple[dict[str, PredictionRecord], set[str]]:
    """The predictions already in ``path`` (by sample id) and the models that wrote them, checked for resuming.

    Args:
        model_id: the model of this run; None skips that check (the caller checks the models returned).

    Raises:
        InvalidInputError: a row of another model, a row without an id, or a gold label that is not the
            benchmark file's.
    """
    done: dict[str, PredictionRecord] = {}
    models: set[str] = set()
    wanted = {s.id: s for s in samples}
    for record in load_predictions(path):
        model = record.extra.get("model")
        if model is not None:
            check_model(path, str(model), model_id)
            models.add(str(model))
        if record.id is None:
            raise InvalidInputError(f"{path} line {record.line} has no id; it cannot be resumed (start over)")
        sample = wanted.get(record.id)
        if sample is not None and record.label != sample.label:
            raise InvalidInputError(
                f"{path} line {record.line}: sample {record.id!r} has another gold label than the benchmark "
                "file; it was written from other data (start over)"
            )
        done[record.id] = record
    return done, models


def check_model(path: Path, found: str, model_id: str | None) -> None:
    """Refuse to resume ``path`` (written by ``found``) with another model."""
    if model_id is not None and found != model_id:
        raise InvalidInputError(
            f"{path} holds predictions of {found!r}, not {model_id!r}; use another output folder "
            "or start over (resume=False / --overwrite)"
        )


def _order(spec: BenchmarkSpec) -> int:
    try:
        return BENCHMARKS.index(spec)
    except ValueError:
        return len(BENCHMARKS)


def score_records(
    records: Sequence[PredictionRecord],
    spec: BenchmarkSpec,
    *,
    modes: Iterable[Mode] = MODES,
    reference_scorer: ReferenceScorer | Literal["auto"] = "auto",
    source: str | None = None,
) -> list[BenchmarkScore]:
    """Score one predictions file for one benchmark/task in each requested mode."""
    out = []
    for mode in modes:
        if mode == "strict":
            out.append(score_strict(records, spec, source=source))
        elif mode == "reference":
            out.append(score_reference(records, spec, scorer=reference_scorer, source=source))
        else:
            raise InvalidInputError(f"unknown scoring mode {mode!r}; choose from {', '.join(MODES)}")
    return out


def _build_report(
    entries: Sequence[tuple[BenchmarkSpec, Sequence[PredictionRecord], str]],
    *,
    name: str,
    modes: Sequence[Mode],
    reference_scorer: ReferenceScorer | Literal["auto"],
    meta: dict[str, Any],
    unknown: Sequence[str] = (),
    notes: Sequence[str] = (),
    thresholds: ScoreOptions | None = None,
) -> EvalReport:
    scores: list[BenchmarkScore] = []
    lengths: dict[str, LengthStats] = {}
    by_score: list[ScoreMetrics] = []
    options = thresholds or ScoreOptions()
    notes = list(notes)
    for spec, records, source in sorted(entries, key=lambda e: _order(e[0])):
        if not records:
            notes.append(f"{spec.key}: no predictions in {source}; not scored")
            continue
        if all(gold_for(r.label, spec) is None for r in records):
            notes.append(f"{spec.key}: no row has a gold label for this task; not scored")
            continue
        scores.extend(score_records(records, spec, modes=modes, reference_scorer=reference_scorer, source=source))
        measured = score_metrics(
            records,
            spec,
            threshold=options.threshold,
            target_fpr=options.target_fpr,
            bins=options.bins,
            source=source,
        )
        if measured is not None:
            by_score.append(measured)
        stats = length_stats(records)
        if stats is not None:
            lengths.setdefault(spec.name, stats)
    meta = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "modes": list(modes),
        "reference_scorer": reference_scorer,
        **meta,
    }
    if by_score:
        meta |= {"threshold": options.threshold, "target_fpr": options.target_fpr, "ece_bins": options.bins}
    for note in notes:
        logger.warning(note)
    return EvalReport.build(
        name=name,
        scores=scores,
        lengths=lengths,
        meta=meta,
        unknown=tuple(unknown),
        notes=tuple(notes),
        score_metrics=by_score,
    )


def _check_modes(modes: Iterable[Mode]) -> list[Mode]:
    modes = list(modes)
    if not modes or any(m not in MODES for m in modes):
        raise InvalidInputError(f"modes must be a non-empty selection of {', '.join(MODES)}, got {modes!r}")
    return modes


def evaluate(
    guard: Guard,
    benchmarks: Sequence[BenchmarkData],
    output_dir: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    resume: bool = True,
    modes: Iterable[Mode] = MODES,
    reference_scorer: ReferenceScorer | Literal["auto"] = "auto",
    progress: ProgressCallback | None = None,
    name: str | None = None,
    score_options: ScoreOptions | None = None,
) -> EvalReport:
    """Run ``guard`` on each benchmark (saving predictions under ``output_dir``) and score the predictions.

    Args:
        guard: the guard to evaluate.
        benchmarks: loaded benchmarks (:func:`~guardreasoner_vl.evaluation.loaders.load_benchmark`).
        output_dir: the run folder; predictions go to ``predictions/<Benchmark>/generated_predictions.jsonl``.
        limit: only the first ``limit`` samples of each benchmark.
        batch_size: samples per batch.
        resume: skip samples already predicted in ``output_dir``.
        modes: scoring modes (``strict``, ``reference``).
        reference_scorer: which authors' scorer reference mode emulates (``auto`` picks by prompt).
        progress: called after each saved batch.
        name: the run's name in reports (default: the model id).
        score_options: threshold, target false-positive rate and calibration bins for the verdict scores,
            when the guard's results carry them.

    Returns:
        The :class:`~guardreasoner_vl.evaluation.report.EvalReport` (write it with
        :func:`~guardreasoner_vl.evaluation.report.write_report`).
    """
    modes = _check_modes(modes)
    if not benchmarks:
        raise InvalidInputError("give at least one benchmark")
    folders = [b.folder for b in benchmarks]
    if len(set(folders)) != len(folders):
        raise InvalidInputError(f"two benchmarks share a predictions folder: {sorted(folders)}")
    entries: list[tuple[BenchmarkSpec, Sequence[PredictionRecord], str]] = []
    for data in benchmarks:
        path = predictions_path(output_dir, data)
        records = run_benchmark(guard, data, path, limit=limit, batch_size=batch_size, resume=resume, progress=progress)
        entries.extend((spec, records, str(path)) for spec in data.specs)
    meta, notes = run_meta(
        benchmarks,
        model=guard.model_id,
        family=guard.family,
        backend=guard.backend.name,
        limit=limit,
        max_new_tokens=guard.params.max_new_tokens,
    )
    return _build_report(
        entries,
        name=name or guard.model_id,
        modes=modes,
        reference_scorer=reference_scorer,
        meta=meta,
        notes=notes,
        thresholds=score_options,
    )


def run_meta(
    benchmarks: Sequence[BenchmarkData],
    *,
    model: str,
    family: ModelFamily,
    backend: str,
    limit: int | None,
    max_new_tokens: int,
) -> tuple[dict[str, Any], list[str]]:
    """The report's metadata of a run, and its notes on how the prompts differ from the authors'."""
    meta = {"model": model, "family": family.value, "backend": backend, "limit": limit}
    meta["max_new_tokens"] = max_new_tokens
    notes = []
    text = [b.name for b in benchmarks if b.modality == "text"]
    if family.supports_images and text:
        notes.append(
            f"{', '.join(text)}: the VL prompt's user turn ends in one newline after the response; the authors' VL "
            "generate.py sent these files' own user turn, which ends in two"
        )
    return meta, notes


def score_predictions_dir(
    root: str | Path,
    *,
    modes: Iterable[Mode] = MODES,
    reference_scorer: ReferenceScorer | Literal["auto"] = "auto",
    only: Iterable[str] | None = None,
    name: str | None = None,
    score_options: ScoreOptions | None = None,
) -> EvalReport:
    """Score a folder of ``<Benchmark>/generated_predictions.jsonl`` files (no model needed).

    Folder names are matched to the registry, the authors' ``XSTestReponseHarmful`` included; folders that
    match nothing are listed in the report (``unknown``) and not scored.

    Args:
        root: the folder (or a run folder holding ``predictions/``).
        modes: scoring modes.
        reference_scorer: ``text``, ``vl`` or ``auto``.
        only: score only these benchmarks (names or aliases).
        name: the run's name in reports (default: the folder name).
        score_options: threshold, target false-positive rate and calibration bins for rows with verdict scores.
    """
    modes = _check_modes(modes)
    root = Path(root)
    files, unknown = discover_predictions(root)
    if only is not None:
        wanted = {spec.key for n in only for spec in _known(n)}
        files = [f for f in files if any(s.key in wanted for s in f.specs)]
        if not files:
            raise InvalidInputError(f"none of {sorted(only)} has predictions under {root}")
    entries: list[tuple[BenchmarkSpec, Sequence[PredictionRecord], str]] = []
    for found in files:
        split = found.specs[0] if len(found.specs) == 1 and found.specs[0].split_folder else None
        records = load_predictions(found.path, task=split.task if split else None)
        entries.extend((spec, records, str(found.path)) for spec in found.specs)
    return _build_report(
        entries,
        name=name or root.resolve().name,
        modes=modes,
        reference_scorer=reference_scorer,
        meta={"predictions": str(root)},
        unknown=unknown,
        thresholds=score_options,
    )


def _known(name: str) -> list[BenchmarkSpec]:
    specs = find_benchmarks(name)
    if not specs:
        raise InvalidInputError(f"unknown benchmark {name!r}")
    return specs
