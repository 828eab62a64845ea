"""Metrics on verdict scores: AUROC, AUPRC, F1 at a threshold, the threshold for a target false-positive rate,
expected calibration error, and the curves behind them.

A prediction row may carry, per task, the model's probability of the positive label (``harmful``; ``refusal``
for the refusal task): the fields ``request_score``, ``response_score``, ``refusal_score`` (a float in [0, 1]
or null), or the same under a ``scores`` object (``{"request": 0.93}``). Rows without them are fine: a
benchmark none of whose rows has a score gets no score metrics, and the report stays as it was.

Definitions (plain Python, no numpy; the tests check each against scikit-learn on the same arrays):

* A row is **flagged** at threshold ``t`` when its score is ``>= t``.
* **AUROC**: area under the ROC curve, trapezoids between the points of the distinct scores (ties make one
  step), as ``sklearn.metrics.roc_auc_score``.
* **AUPRC**: average precision, ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct scores from the highest
  down (a step function, no interpolation), as ``sklearn.metrics.average_precision_score``.
* **F1 at a threshold**: F1 (percent, positive class positive) of the rows flagged at ``t`` (default 0.5).
* **Threshold for a target FPR**: the lowest distinct score ``t`` whose false-positive rate, flagging at ``t``,
  is at most the target (so the most positives are caught within the budget); when even the highest score
  exceeds the budget, the threshold is just above it and nothing is flagged.
* **ECE**: expected calibration error of the positive-class probability, ``sum_b (n_b / N) |freq_b - conf_b|``
  over ``bins`` equal-width bins of [0, 1] (default 10): a score ``p`` falls in bin ``b`` when
  ``edge_b < p <= edge_{b+1}`` (the first bin includes 0), ``freq_b`` is the fraction of positives among its
  rows and ``conf_b`` their mean score; the bins are those of ``sklearn.calibration.calibration_curve``
  with ``strategy="uniform"``.

AUROC, AUPRC and ECE are fractions in [0, 1]; F1 is a percentage like every F1 of the reports. AUROC and AUPRC
are None when the scored rows hold only one class.

Example:
    >>> auroc([True, False, True, False], [0.9, 0.1, 0.4, 0.6])
    0.75
    >>> average_precision([True, False, True, False], [0.9, 0.1, 0.4, 0.6])
    0.8333333333333333
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.evaluation.loaders import PredictionRecord, gold_for
from guardreasoner_vl.evaluation.metrics import binary_scores
from guardreasoner_vl.evaluation.registry import BenchmarkSpec, Modality, Task

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_TARGET_FPR",
    "DEFAULT_THRESHOLD",
    "ReliabilityBin",
    "ScoreMetrics",
    "ScoreOptions",
    "auroc",
    "average_precision",
    "calibration_bins",
    "expected_calibration_error",
    "f1_at",
    "precision_recall_curve",
    "record_score",
    "roc_curve",
    "score_metrics",
    "threshold_for_fpr",
]

DEFAULT_THRESHOLD = 0.5
DEFAULT_TARGET_FPR = 0.01
DEFAULT_BINS = 10


def _check(labels: Sequence[bool], scores: Sequence[float]) -> None:
    if len(labels) != len(scores):
        raise InvalidInputError(f"{len(labels)} labels but {len(scores)} scores")


def _steps(labels: Sequence[bool], scores: Sequence[float]) -> list[tuple[float, int, int]]:
    """``(threshold, true positives, false positives)`` flagging at each distinct score, highest first."""
    _check(labels, scores)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    out: list[tuple[float, int, int]] = []
    tp = fp = 0
    for position, i in enumerate(order):
        if labels[i]:
            tp += 1
        else:
            fp += 1
        if position == len(order) - 1 or scores[order[position + 1]] != scores[i]:
            out.append((float(scores[i]), tp, fp))
    return out


def roc_curve(labels: Sequence[bool], scores: Sequence[float]) -> tuple[list[float], list[float], list[float]]:
    """``(fpr, tpr, thresholds)``: one point per distinct score, highest first, after a start at (0, 0)
    (whose threshold is ``inf``). Empty lists when a class is missing."""
    steps = _steps(labels, scores)
    positives = sum(1 for x in labels if x)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return [], [], []
    fpr, tpr, thresholds = [0.0], [0.0], [math.inf]
    for threshold, tp, fp in steps:
        fpr.append(fp / negatives)
        tpr.append(tp / positives)
        thresholds.append(threshold)
    return fpr, tpr, thresholds


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (trapezoids; see the module docs); None with a single class."""
    fpr, tpr, _ = roc_curve(labels, scores)
    if not fpr:
        return None
    return sum((fpr[k] - fpr[k - 1]) * (tpr[k] + tpr[k - 1]) / 2 for k in range(1, len(fpr)))


def precision_recall_curve(
    labels: Sequence[bool], scores: Sequence[float]
) -> tuple[list[float], list[float], list[float]]:
    """``(precision, recall, thresholds)``, one point per distinct score, highest first. Empty without positives."""
    positives = sum(1 for x in labels if x)
    if not positives:
        return [], [], []
    precision, recall, thresholds = [], [], []
    for threshold, tp, fp in _steps(labels, scores):
        precision.append(tp / (tp + fp))
        recall.append(tp / positives)
        thresholds.append(threshold)
    return precision, recall, thresholds


def average_precision(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """AUPRC as average precision (see the module docs); None with a single class."""
    if all(labels) or not any(labels):
        return None
    precision, recall, _ = precision_recall_curve(labels, scores)
    total, previous = 0.0, 0.0
    for p, r in zip(precision, recall, strict=True):
        total += (r - previous) * p
        previous = r
    return total


def f1_at(labels: Sequence[bool], scores: Sequence[float], threshold: float) -> float:
    """F1 in percent of the rows flagged at ``threshold`` (score ``>= threshold``)."""
    _check(labels, scores)
    tp = sum(1 for y, s in zip(labels, scores, strict=True) if y and s >= threshold)
    fp = sum(1 for y, s in zip(labels, scores, strict=True) if not y and s >= threshold)
    fn = sum(1 for y, s in zip(labels, scores, strict=True) if y and s < threshold)
    return binary_scores(tp, fp, fn, len(labels) - tp - fp - fn)["f1"]


def threshold_for_fpr(
    labels: Sequence[bool], scores: Sequence[float], target_fpr: float
) -> tuple[float, float, float] | None:
    """``(threshold, fpr, tpr)`` of the lowest threshold whose false-positive rate is at most ``target_fpr``.

    None when there are no negatives (no false-positive rate) or no positives.

    Raises:
        InvalidInputError: ``target_fpr`` outside [0, 1].
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise InvalidInputError(f"the target false-positive rate must be in [0, 1], got {target_fpr}")
    fpr, tpr, thresholds = roc_curve(labels, scores)
    if not fpr:
        return None
    best = max(k for k in range(len(fpr)) if fpr[k] <= target_fpr)  # k = 0 (nothing flagged) always qualifies
    if best == 0:
        return math.nextafter(max(scores), math.inf), 0.0, 0.0
    return thresholds[best], fpr[best], tpr[best]


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """One bin of a reliability diagram: scores in ``(low, high]`` (the first bin includes 0)."""

    low: float
    high: float
    count: int
    mean_score: float | None
    positive_rate: float | None


def _edges(bins: int) -> list[float]:
    step = 1.0 / bins
    edges = [i * step for i in range(bins + 1)]
    edges[-1] = 1.0
    return edges


def calibration_bins(labels: Sequence[bool], scores: Sequence[float], bins: int = DEFAULT_BINS) -> list[ReliabilityBin]:
    """The ``bins`` equal-width bins of [0, 1] with their counts, mean scores and positive rates."""
    _check(labels, scores)
    if bins < 1:
        raise InvalidInputError(f"bins must be at least 1, got {bins}")
    edges = _edges(bins)
    inner = edges[1:-1]
    count = [0] * bins
    total = [0.0] * bins
    hits = [0] * bins
    for y, s in zip(labels, scores, strict=True):
        b = sum(1 for e in inner if e < s)
        count[b] += 1
        total[b] += s
        hits[b] += bool(y)
    return [
        ReliabilityBin(
            edges[b],
            edges[b + 1],
            count[b],
            total[b] / count[b] if count[b] else None,
            hits[b] / count[b] if count[b] else None,
        )
        for b in range(bins)
    ]


def expected_calibration_error(labels: Sequence[bool], scores: Sequence[float], bins: int = DEFAULT_BINS) -> float:
    """ECE of the positive-class probability over ``bins`` equal-width bins (see the module docs)."""
    table = calibration_bins(labels, scores, bins)
    n = len(labels)
    if not n:
        return 0.0
    return sum(b.count / n * abs((b.positive_rate or 0.0) - (b.mean_score or 0.0)) for b in table if b.count)


@dataclass(frozen=True, slots=True)
class ScoreOptions:
    """How verdict scores are measured, when predictions carry them (see
    :mod:`~guardreasoner_vl.evaluation.probabilities`).

    Attributes:
        threshold: F1 is also reported flagging rows whose score is at least this.
        target_fpr: the false-positive budget the reported threshold keeps to.
        bins: equal-width bins of the expected calibration error and the reliability diagram.
    """

    threshold: float = DEFAULT_THRESHOLD
    target_fpr: float = DEFAULT_TARGET_FPR
    bins: int = DEFAULT_BINS

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidInputError(f"threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 <= self.target_fpr <= 1.0:
            raise InvalidInputError(f"target_fpr must be in [0, 1], got {self.target_fpr}")
        if self.bins < 1:
            raise InvalidInputError(f"bins must be at least 1, got {self.bins}")


_SCORE_KEYS: dict[Task, str] = {"request": "request_score", "response": "response_score", "refusal": "refusal_score"}


def record_score(record: PredictionRecord, task: Task, *, source: str | None = None) -> float | None:
    """The row's probability of the positive label of ``task`` (``<task>_score`` or ``scores.<task>``), or None.

    Raises:
        InvalidInputError: a score that is not a number in [0, 1] (or null).
    """
    key = _SCORE_KEYS[task]
    value = record.extra.get(key)
    nested = record.extra.get("scores")
    if value is None and isinstance(nested, dict):
        value = nested.get(task)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        where = f"{source or 'predictions'} line {record.line}"
        raise InvalidInputError(f"{where}: {key} must be a probability in [0, 1] or null, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class ScoreMetrics:
    """The score metrics of one benchmark/task (see the module docs for each definition).

    Attributes:
        benchmark, task, modality: which benchmark/task.
        rows: rows with a gold label and a score (the ones measured).
        unscored: rows with a gold label but no score (not measured).
        positives: gold-positive rows among ``rows``.
        auroc, auprc: fractions in [0, 1]; None with a single class.
        threshold: the chosen threshold; ``f1_at_threshold`` (percent) flags score >= it.
        target_fpr: the false-positive budget; ``fpr_threshold`` reaches it with ``fpr_at`` / ``tpr_at``, and
            ``f1_at_fpr_threshold`` is F1 there (None without both classes).
        ece, bins: expected calibration error over ``bins`` bins; ``reliability`` the bins themselves.
        labels, scores: the measured arrays (for the plots; not written to JSON).
    """

    benchmark: str
    task: Task
    modality: Modality
    rows: int
    unscored: int
    positives: int
    auroc: float | None
    auprc: float | None
    threshold: float
    f1_at_threshold: float
    target_fpr: float
    fpr_threshold: float | None
    fpr_at: float | None
    tpr_at: float | None
    f1_at_fpr_threshold: float | None
    ece: float
    bins: int
    reliability: tuple[ReliabilityBin, ...] = ()
    labels: tuple[bool, ...] = field(default=(), compare=False, repr=False)
    scores: tuple[float, ...] = field(default=(), compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.benchmark}/{self.task}"

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("labels", "scores")}
        data["reliability"] = [
            {
                "low": b.low,
                "high": b.high,
                "count": b.count,
                "mean_score": b.mean_score,
                "positive_rate": b.positive_rate,
            }
            for b in self.reliability
        ]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreMetrics:
        names = {f.name for f in fields(cls)} - {"labels", "scores"}
        values = {k: v for k, v in data.items() if k in names}
        values["reliability"] = tuple(ReliabilityBin(**b) for b in values.get("reliability") or ())
        return cls(**values)


def score_metrics(
    records: Iterable[PredictionRecord],
    spec: BenchmarkSpec,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    target_fpr: float = DEFAULT_TARGET_FPR,
    bins: int = DEFAULT_BINS,
    source: str | None = None,
) -> ScoreMetrics | None:
    """The score metrics of ``spec``'s task over the rows that have a gold label and a score; None when no
    row has a score (predictions without scores).

    Raises:
        InvalidInputError: a malformed score, a threshold outside [0, 1], or a bad target / bin count.
    """
    ScoreOptions(threshold, target_fpr, bins)  # validates
    labels: list[bool] = []
    scores: list[float] = []
    unscored = 0
    for record in records:
        gold = gold_for(record.label, spec)
        if gold is None:
            continue
        score = record_score(record, spec.task, source=source)
        if score is None:
            unscored += 1
            continue
        labels.append(gold == spec.positive)
        scores.append(score)
    if not scores:
        return None
    at_fpr = threshold_for_fpr(labels, scores, target_fpr)
    return ScoreMetrics(
        benchmark=spec.name,
        task=spec.task,
        modality=spec.modality,
        rows=len(scores),
        unscored=unscored,
        positives=sum(labels),
        auroc=auroc(labels, scores),
        auprc=average_precision(labels, scores),
        threshold=threshold,
        f1_at_threshold=f1_at(labels, scores, threshold),
        target_fpr=target_fpr,
        fpr_threshold=at_fpr[0] if at_fpr else None,
        fpr_at=at_fpr[1] if at_fpr else None,
        tpr_at=at_fpr[2] if at_fpr else None,
        f1_at_fpr_threshold=f1_at(labels, scores, at_fpr[0]) if at_fpr else None,
        ece=expected_calibration_error(labels, scores, bins),
        bins=bins,
        reliability=tuple(calibration_bins(labels, scores, bins)),
        labels=tuple(labels),
        scores=tuple(scores),
    )
