"""Evaluation reports: the paper's tables in Markdown, every figure in JSON, plots, and run comparisons.

:func:`write_report` writes, into one folder:

* ``report.md``: per scoring mode and task, a table laid out like the paper's (benchmarks as columns,
  ``Avg (Text)`` and ``Avg (All)`` last; strict mode adds a parse-failure row), then a details table per
  mode (precision, recall, accuracy, confusion counts, parse failures, output length);
* ``report.json``: every figure (:meth:`EvalReport.to_dict`), readable back with :func:`load_report`;
* ``plots/*.png``: per-benchmark F1 bars and confusion matrices per mode, the output-length histogram, and,
  when the predictions carry verdict scores, precision-recall curves and a reliability diagram (needs the
  ``eval`` extra: ``pip install "guardreasoner-vl[eval]"``).

When the predictions carry verdict scores (:mod:`~guardreasoner_vl.evaluation.probabilities`), the report adds
a "Verdict scores" section (AUROC, AUPRC, F1 at the chosen threshold, the threshold for the target
false-positive rate, ECE) and ``score_metrics`` in JSON; without scores it is exactly as before.

:func:`write_comparison` puts two runs side by side (``compare.md``, ``compare.json``, ``plots/compare_*.png``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.evaluation import plots as plotting
from guardreasoner_vl.evaluation.metrics import (
    MODES,
    BenchmarkScore,
    LengthStats,
    Mode,
    TaskAverage,
    weighted_averages,
)
from guardreasoner_vl.evaluation.probabilities import ScoreMetrics
from guardreasoner_vl.evaluation.registry import Task

__all__ = [
    "REPORT_JSON",
    "REPORT_MD",
    "EvalReport",
    "compare_markdown",
    "load_report",
    "plot_report",
    "write_comparison",
    "write_report",
]

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
SCHEMA_VERSION = 1

_TASK_TITLES = {
    "request": "Request harmfulness (F1 %)",
    "response": "Response harmfulness (F1 %)",
    "refusal": "Refusal detection (F1 %)",
}
_MODE_TITLES = {
    "strict": "Strict scoring (project parser; parse failures counted as errors)",
    "reference": "Reference scoring (the authors' scorer, quirks included)",
}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


@dataclass(frozen=True)
class EvalReport:
    """Everything measured in one evaluation run.

    Attributes:
        name: the run's name (model id or predictions folder).
        scores: one :class:`~guardreasoner_vl.evaluation.metrics.BenchmarkScore` per benchmark, task and mode.
        averages: the weighted averages per mode and task.
        lengths: output-length statistics per benchmark.
        meta: how the run was made (model, backend, limits, time, scoring options).
        unknown: prediction folders that match no benchmark (not scored).
        notes: what was left out and why.
        score_metrics: metrics on the verdict scores, per benchmark/task that has scores (empty without).
    """

    name: str
    scores: tuple[BenchmarkScore, ...]
    averages: tuple[TaskAverage, ...]
    lengths: dict[str, LengthStats] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    score_metrics: tuple[ScoreMetrics, ...] = ()

    @classmethod
    def build(
        cls,
        *,
        name: str,
        scores: Iterable[BenchmarkScore],
        lengths: dict[str, LengthStats] | None = None,
        meta: dict[str, Any] | None = None,
        unknown: Sequence[str] = (),
        notes: Sequence[str] = (),
        score_metrics: Sequence[ScoreMetrics] = (),
    ) -> EvalReport:
        """A report from scores; the averages are computed here."""
        scores = tuple(scores)
        return cls(
            name,
            scores,
            tuple(weighted_averages(scores)),
            dict(lengths or {}),
            dict(meta or {}),
            tuple(unknown),
            tuple(notes),
            tuple(score_metrics),
        )

    # -- lookups ---------------------------------------------------------------------------------------------

    @property
    def modes(self) -> list[Mode]:
        """The scoring modes present, in canonical order."""
        present = {s.mode for s in self.scores}
        return [m for m in MODES if m in present]

    def tasks(self, mode: Mode) -> list[Task]:
        present = {s.task for s in self.scores if s.mode == mode}
        return [t for t in ("request", "response", "refusal") if t in present]

    def scores_for(self, mode: Mode, task: Task | None = None) -> list[BenchmarkScore]:
        return [s for s in self.scores if s.mode == mode and (task is None or s.task == task)]

    def score(self, benchmark: str, task: Task, mode: Mode) -> BenchmarkScore:
        """One score by benchmark name, task and mode.

        Raises:
            KeyError: not in this report.
        """
        for s in self.scores:
            if s.benchmark == benchmark and s.task == task and s.mode == mode:
                return s
        raise KeyError(f"{benchmark}/{task} ({mode}) is not in this report")

    def average(self, mode: Mode, task: Task) -> TaskAverage | None:
        for a in self.averages:
            if a.mode == mode and a.task == task:
                return a
        return None

    # -- JSON ------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every figure of the report as plain JSON data."""
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "meta": self.meta,
            "scores": [s.to_dict() for s in self.scores],
            "averages": [a.to_dict() for a in self.averages],
            "output_lengths": {k: v.to_dict() for k, v in self.lengths.items()},
            "unknown_folders": list(self.unknown),
            "notes": list(self.notes),
        } | ({"score_metrics": [m.to_dict() for m in self.score_metrics]} if self.score_metrics else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Read a report back from :meth:`to_dict` data (length histograms are not kept in JSON).

        Raises:
            InvalidInputError: the data is not a report.
        """
        if not isinstance(data, dict) or "scores" not in data:
            raise InvalidInputError("not an evaluation report (no 'scores')")
        try:
            scores = tuple(BenchmarkScore.from_dict(s) for s in data["scores"])
            lengths = {k: LengthStats(**v) for k, v in (data.get("output_lengths") or {}).items()}
            score_metrics = tuple(ScoreMetrics.from_dict(m) for m in data.get("score_metrics") or ())
        except (TypeError, KeyError) as exc:
            raise InvalidInputError(f"malformed evaluation report: {exc}") from exc
        return cls.build(
            name=str(data.get("name") or "run"),
            scores=scores,
            lengths=lengths,
            meta=dict(data.get("meta") or {}),
            unknown=tuple(data.get("unknown_folders") or ()),
            notes=tuple(data.get("notes") or ()),
            score_metrics=score_metrics,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    # -- Markdown --------------------------------------------------------------------------------------------

    def paper_table(self, mode: Mode, task: Task) -> str:
        """The paper-style table of one mode and task: benchmarks as columns, weighted averages last."""
        return _paper_table([(self.name, self)], mode, task)

    def details_table(self, mode: Mode) -> str:
        """Per-benchmark details of one mode: every metric, confusion counts and parse failures."""
        header = [
            "Benchmark",
            "Task",
            "Samples",
            "Scored",
            "F1",
            "Precision",
            "Recall",
            "Accuracy",
            "TP",
            "FP",
            "FN",
            "TN",
            "Parse failures",
            "Failure rate %",
            "Mean output tokens",
            "Mean output chars",
        ]
        if mode == "reference":
            header += ["Dropped", "Duplicated"]
        rows = []
        for s in self.scores_for(mode):
            row = [
                _escape(s.benchmark),
                s.task,
                str(s.samples),
                str(s.scored),
                _fmt(s.f1),
                _fmt(s.precision),
                _fmt(s.recall),
                _fmt(s.accuracy),
                str(s.tp),
                str(s.fp),
                str(s.fn),
                str(s.tn),
                str(s.parse_failures),
                _fmt(s.parse_failure_rate),
                _fmt(s.mean_output_tokens, 1),
                _fmt(s.mean_output_chars, 1),
            ]
            if mode == "reference":
                row += [str(s.dropped), str(s.duplicated)]
            rows.append(row)
        return _table(header, rows, align_first=2)

    def score_table(self) -> str:
        """The verdict-score metrics per benchmark/task (empty string when the predictions had no scores)."""
        if not self.score_metrics:
            return ""
        first = self.score_metrics[0]
        header = [
            "Benchmark",
            "Task",
            "Rows",
            "Without score",
            "Positives",
            "AUROC",
            "AUPRC",
            f"F1 @ {first.threshold:g}",
            f"Threshold @ FPR ≤ {first.target_fpr:g}",
            "FPR",
            "TPR",
            "F1 there",
            f"ECE ({first.bins} bins)",
        ]
        rows = [
            [
                _escape(m.benchmark),
                m.task,
                str(m.rows),
                str(m.unscored),
                str(m.positives),
                _fmt(m.auroc, 4),
                _fmt(m.auprc, 4),
                _fmt(m.f1_at_threshold),
                _fmt(m.fpr_threshold, 4),
                _fmt(m.fpr_at, 4),
                _fmt(m.tpr_at, 4),
                _fmt(m.f1_at_fpr_threshold),
                _fmt(m.ece, 4),
            ]
            for m in self.score_metrics
        ]
        return _table(header, rows, align_first=2)

    def to_markdown(self, *, plots: Sequence[str] = ()) -> str:
        """The whole report as Markdown (``plots``: relative paths of PNGs to embed)."""
        out = [f"# Evaluation: {_escape(self.name)}", ""]
        meta = {k: v for k, v in self.meta.items() if v is not None}
        if meta:
            out += ["| | |", "|---|---|"]
            out += [
                f"| {k} | {_escape(', '.join(map(str, v)) if isinstance(v, list) else str(v))} |"
                for k, v in meta.items()
            ]
            out.append("")
        for mode in self.modes:
            out += [f"## {_MODE_TITLES[mode]}", ""]
            for task in self.tasks(mode):
                out += [f"**{_TASK_TITLES[task]}**", "", self.paper_table(mode, task), ""]
        for mode in self.modes:
            out += [f"## Details: {mode} scoring", "", self.details_table(mode), ""]
        if self.lengths:
            out += ["## Output length", ""]
            rows = [
                [_escape(k), v.unit, str(v.count), _fmt(v.mean, 1), _fmt(v.median, 1), _fmt(v.p90, 0), str(v.max)]
                for k, v in self.lengths.items()
            ]
            out += [_table(["Benchmark", "Unit", "Rows", "Mean", "Median", "P90", "Max"], rows, align_first=2), ""]
        if self.score_metrics:
            out += [
                "## Verdict scores (probability of the positive label)",
                "",
                self.score_table(),
                "",
                _SCORES_EXPLAINED,
                "",
            ]
        notes = list(self.notes)
        if self.unknown:
            notes.append(f"folders not matching any benchmark (not scored): {', '.join(self.unknown)}")
        for s in self.scores:
            notes += [f"{s.key} ({s.mode}): {n}" for n in s.notes if not n.startswith("authors' ")]
        if notes:
            out += ["## Notes", ""] + [f"- {_escape(n)}" for n in notes] + [""]
        if plots:
            out += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
        out += [_MODES_EXPLAINED, ""]
        return "\n".join(out)


_MODES_EXPLAINED = (
    "*Strict* reads each output with the project's parser (`guardreasoner_vl.parsing.parse_output`); an "
    "output without the verdict is a parse failure, reported as its own count and counted as an error in F1. "
    "*Reference* emulates the authors' scorer (last 300 characters only, first match, parse failures "
    "counted twice, failures on `harmful` samples dropped, ...; see `guardreasoner_vl.evaluation.reference`) "
    "so that published numbers can be re-derived. Averages are weighted by each benchmark's sample count: "
    "Avg (Text) over the text benchmarks present, Avg (All) over all present."
)


_SCORES_EXPLAINED = (
    "A row is flagged when its score is at least the threshold. AUROC, AUPRC (average precision) and ECE are "
    "fractions; F1 is in percent. The FPR threshold is the lowest score whose false-positive rate stays within "
    "the target. ECE: equal-width bins of [0, 1], a score p in bin (low, high] (the first includes 0), "
    "weighted |positive rate − mean score|. Definitions: `guardreasoner_vl.evaluation.probabilities`."
)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, align_first: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i < align_first else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _columns(reports: Sequence[EvalReport], mode: Mode, task: Task) -> list[str]:
    seen: list[str] = []
    for report in reports:
        for s in report.scores_for(mode, task):
            if s.benchmark not in seen:
                seen.append(s.benchmark)
    return seen


def _paper_table(runs: Sequence[tuple[str, EvalReport]], mode: Mode, task: Task, *, delta: bool = False) -> str:
    columns = _columns([r for _, r in runs], mode, task)
    header = ["Run", *[_escape(c) for c in columns], "Avg (Text)", "Avg (All)"]
    rows: list[list[str]] = []
    values: list[list[float | None]] = []
    for label, report in runs:
        by_name = {s.benchmark: s for s in report.scores_for(mode, task)}
        avg = report.average(mode, task)
        nums = [by_name[c].f1 if c in by_name else None for c in columns]
        nums += [avg.avg_text if avg else None, avg.avg_all if avg else None]
        values.append(nums)
        rows.append([_escape(label), *[_fmt(v) for v in nums]])
        if mode == "strict":
            fails = [str(by_name[c].parse_failures) if c in by_name else "–" for c in columns]
            total = sum(s.parse_failures for s in by_name.values())
            rows.append(["↳ parse failures", *fails, "", str(total)])
    if delta and len(values) == 2:
        diffs = [None if a is None or b is None else b - a for a, b in zip(values[0], values[1], strict=True)]
        rows.append(["Δ (B − A)", *[("–" if d is None else f"{d:+.2f}") for d in diffs]])
    return _table(header, rows) + _gaps(runs, mode, task)


def _gaps(runs: Sequence[tuple[str, EvalReport]], mode: Mode, task: Task) -> str:
    """A line under a paper table for each run whose averages lack some of the paper's benchmarks."""
    lines = []
    for label, report in runs:
        avg = report.average(mode, task)
        if avg is None or not avg.missing:
            continue
        text = f" (Avg (Text) lacks {', '.join(avg.missing_text)})" if avg.missing_text else ""
        who = f"{_escape(label)}: " if len(runs) > 1 else ""
        lines.append(
            f"\n\n*{who}averages over the {len(avg.benchmarks)} benchmarks present, not the paper's; missing: "
            f"{', '.join(avg.missing)}{text}.*"
        )
    return "".join(lines)


def compare_markdown(a: EvalReport, b: EvalReport, *, label_a: str = "A", label_b: str = "B") -> str:
    """Two runs side by side: per mode and task, one paper-style table with rows A, B and Δ (B − A)."""
    out = [f"# Comparison: {_escape(a.name)} (A) vs {_escape(b.name)} (B)", ""]
    modes = [m for m in MODES if m in a.modes or m in b.modes]
    for mode in modes:
        out += [f"## {_MODE_TITLES[mode]}", ""]
        tasks = [t for t in ("request", "response", "refusal") if t in a.tasks(mode) or t in b.tasks(mode)]
        for task in tasks:
            runs = [(f"{label_a}: {a.name}", a), (f"{label_b}: {b.name}", b)]
            out += [f"**{_TASK_TITLES[task]}**", "", _paper_table(runs, mode, task, delta=True), ""]
    return "\n".join(out)


def _comparison_dict(a: EvalReport, b: EvalReport) -> dict[str, Any]:
    rows = []
    keys = {(s.benchmark, s.task, s.mode) for s in (*a.scores, *b.scores)}
    for benchmark, task, mode in sorted(keys):
        fa = _maybe(a, benchmark, task, mode)
        fb = _maybe(b, benchmark, task, mode)
        rows.append(
            {
                "benchmark": benchmark,
                "task": task,
                "mode": mode,
                "f1_a": fa,
                "f1_b": fb,
                "delta": None if fa is None or fb is None else fb - fa,
            }
        )
    averages = []
    for mode in MODES:
        for task in ("request", "response", "refusal"):
            x, y = a.average(mode, task), b.average(mode, task)
            if x is None and y is None:
                continue
            averages.append(
                {
                    "mode": mode,
                    "task": task,
                    "avg_text_a": x.avg_text if x else None,
                    "avg_all_a": x.avg_all if x else None,
                    "avg_text_b": y.avg_text if y else None,
                    "avg_all_b": y.avg_all if y else None,
                }
            )
    return {"a": a.name, "b": b.name, "benchmarks": rows, "averages": averages}


def _maybe(report: EvalReport, benchmark: str, task: Task, mode: Mode) -> float | None:
    try:
        return report.score(benchmark, task, mode).f1
    except KeyError:
        return None


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def plot_report(report: EvalReport, folder: str | Path) -> dict[str, Path]:
    """Every plot of ``report`` into ``folder``: ``f1_<mode>.png``, ``confusion_<mode>.png``,
    ``output_length.png``, and with verdict scores ``pr_curves.png`` and ``reliability.png``.

    Raises:
        MissingDependencyError: without matplotlib (the ``eval`` extra).
    """
    folder = Path(folder)
    written: dict[str, Path] = {}
    for mode in report.modes:
        scores = report.scores_for(mode)
        written[f"f1_{mode}"] = plotting.plot_f1(report.name, scores, folder / f"f1_{mode}.png", mode=mode)
        written[f"confusion_{mode}"] = plotting.plot_confusion(
            report.name, scores, folder / f"confusion_{mode}.png", mode=mode
        )
    if report.lengths:
        written["output_length"] = plotting.plot_output_lengths(
            report.name, report.lengths, folder / "output_length.png"
        )
    if report.score_metrics:
        written["pr_curves"] = plotting.plot_pr_curves(report.name, report.score_metrics, folder / "pr_curves.png")
        written["reliability"] = plotting.plot_reliability(
            report.name, report.score_metrics, folder / "reliability.png"
        )
    return written


def write_report(report: EvalReport, output_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and (with ``plots=True``) the PNG plots into ``output_dir``.

    Returns:
        What was written, by kind (``markdown``, ``json``, and ``f1_<mode>``, ``confusion_<mode>``,
        ``output_length`` for plots).

    Raises:
        MissingDependencyError: ``plots=True`` without matplotlib (the ``eval`` extra).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if plots:
        written.update(plot_report(report, out / "plots"))
    rel = [str(p.relative_to(out)) for p in written.values()]
    _write_text(out / REPORT_JSON, report.to_json() + "\n")
    _write_text(out / REPORT_MD, report.to_markdown(plots=rel))
    written["json"] = out / REPORT_JSON
    written["markdown"] = out / REPORT_MD
    return written


def load_report(path: str | Path) -> EvalReport:
    """Read a report from ``report.json`` or from a folder holding one.

    Raises:
        InvalidInputError: no report there, or not a report.
    """
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"cannot read a report at {path}: {exc}") from exc
    except ValueError as exc:
        raise InvalidInputError(f"{path} is not valid JSON: {exc}") from exc
    return EvalReport.from_dict(data)


def write_comparison(a: EvalReport, b: EvalReport, output_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write ``compare.md``, ``compare.json`` and (with ``plots=True``) ``plots/compare_<mode>.png``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if plots:
        for mode in MODES:
            if mode in a.modes and mode in b.modes:
                written[f"compare_{mode}"] = plotting.plot_comparison(
                    (a.name, a.scores_for(mode)),
                    (b.name, b.scores_for(mode)),
                    out / "plots" / f"compare_{mode}.png",
                    mode=mode,
                )
    text = compare_markdown(a, b)
    if written:
        text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.relative_to(out)})" for p in written.values()) + "\n"
    _write_text(out / "compare.md", text)
    _write_text(out / "compare.json", json.dumps(_comparison_dict(a, b), indent=2, ensure_ascii=False) + "\n")
    written["markdown"] = out / "compare.md"
    written["json"] = out / "compare.json"
    return written
