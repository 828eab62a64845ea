"""PNG plots of an evaluation report, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Needs the ``eval`` extra (``pip install "guardreasoner-vl[eval]"``); matplotlib is imported inside each
function, so importing this module is cheap.

* :func:`plot_f1`: per-benchmark F1 bars of one scoring mode, coloured by task;
* :func:`plot_confusion`: one confusion matrix per benchmark (strict mode adds an "unparsed" column);
* :func:`plot_output_lengths`: histogram of output lengths (tokens when known, else characters);
* :func:`plot_comparison`: two runs' F1 side by side;
* :func:`plot_report`: all of the report's plots into one folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.errors import require

if TYPE_CHECKING:
    from guardreasoner_vl.evaluation.metrics import BenchmarkScore, Mode
    from guardreasoner_vl.evaluation.report import EvalReport

__all__ = [
    "confusion_matrix",
    "plot_comparison",
    "plot_confusion",
    "plot_f1",
    "plot_output_lengths",
    "plot_report",
]

_TASK_COLOURS = {"request": "#4C72B0", "response": "#DD8452", "refusal": "#55A868"}


def _figure(width: float, height: float) -> Any:
    require("matplotlib", "eval", feature="evaluation plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    figure.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def _label(score: BenchmarkScore) -> str:
    return f"{score.benchmark}\n({score.task})"


def plot_f1(report: EvalReport, path: str | Path, *, mode: Mode = "strict") -> Path:
    """Bars of F1 per benchmark/task in ``mode``, with the values written on the bars."""
    scores = report.scores_for(mode)
    figure = _figure(max(6.0, 1.1 * len(scores) + 2), 4.5)
    axes = figure.add_subplot(1, 1, 1)
    xs = range(len(scores))
    bars = axes.bar(xs, [s.f1 for s in scores], color=[_TASK_COLOURS[s.task] for s in scores])
    for bar, score in zip(bars, scores, strict=True):
        axes.annotate(
            f"{score.f1:.1f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axes.set_xticks(list(xs), [_label(s) for s in scores], rotation=45, ha="right", fontsize=8)
    axes.set_ylim(0, 105)
    axes.set_ylabel("F1 (%)")
    axes.set_title(f"{report.name}: F1 per benchmark ({mode} scoring)", fontsize=10)
    from matplotlib.patches import Patch

    present = [t for t in _TASK_COLOURS if any(s.task == t for s in scores)]
    axes.legend(handles=[Patch(color=_TASK_COLOURS[t], label=t) for t in present], fontsize=8, loc="lower right")
    return _save(figure, Path(path))


def confusion_matrix(score: BenchmarkScore) -> tuple[list[str], list[str], list[list[int]]]:
    """``(row labels, column labels, counts)`` of a score: gold rows, predicted columns.

    Strict scores get a third column, ``unparsed``, for the parse failures (which count as errors in F1).
    Reference scores show the authors' counts as they enter F1 (failures already turned into errors).
    """
    positive = "refusal" if score.task == "refusal" else "harmful"
    negative = "compliance" if score.task == "refusal" else "unharmful"
    rows = [f"gold {positive}", f"gold {negative}"]
    if score.mode == "strict":
        cols = [positive, negative, "unparsed"]
        matrix = [
            [score.tp, score.fn - score.failed_positive, score.failed_positive],
            [score.fp - score.failed_negative, score.tn, score.failed_negative],
        ]
    else:
        cols = [positive, negative]
        matrix = [[score.tp, score.fn], [score.fp, score.tn]]
    return rows, cols, matrix


def plot_confusion(report: EvalReport, path: str | Path, *, mode: Mode = "strict") -> Path:
    """One confusion matrix per benchmark/task of ``mode``, in a grid."""
    scores = report.scores_for(mode)
    n = max(1, len(scores))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    figure = _figure(3.6 * cols, 3.0 * rows)
    for index, score in enumerate(scores):
        axes = figure.add_subplot(rows, cols, index + 1)
        row_labels, col_labels, matrix = confusion_matrix(score)
        axes.imshow(matrix, cmap="Blues")
        top = max(max(r) for r in matrix) or 1
        for i, line in enumerate(matrix):
            for j, value in enumerate(line):
                colour = "white" if value > top / 2 else "black"
                axes.text(j, i, str(value), ha="center", va="center", color=colour, fontsize=9)
        axes.set_xticks(range(len(col_labels)), col_labels, fontsize=7)
        axes.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
        axes.set_title(f"{score.benchmark} ({score.task})\nF1 {score.f1:.2f}", fontsize=8)
    if not scores:
        figure.add_subplot(1, 1, 1).text(0.5, 0.5, "no scores", ha="center")
    figure.suptitle(f"{report.name}: confusion matrices ({mode} scoring)", fontsize=10)
    return _save(figure, Path(path))


def _edges(values: list[int], bins: int) -> tuple[list[float], float]:
    """Shared bin edges from 0 to the 99th percentile (longer outputs go in the last bin)."""
    ordered = sorted(values)
    top = float(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]) if ordered else 1.0
    top = max(top, 1.0)
    return [top * i / bins for i in range(bins + 1)], top


def plot_output_lengths(report: EvalReport, path: str | Path, *, bins: int = 30) -> Path:
    """Histogram of output lengths per benchmark (one panel per unit: tokens, characters).

    All benchmarks of a panel share the bins, from 0 to the 99th percentile of all lengths; longer outputs
    are counted in the last bin.
    """
    units = sorted({s.unit for s in report.lengths.values()}, reverse=True) or ["tokens"]
    figure = _figure(7.0, 3.6 * len(units))
    for index, unit in enumerate(units):
        axes = figure.add_subplot(len(units), 1, index + 1)
        series = [(n, s) for n, s in report.lengths.items() if s.unit == unit and s.values]
        edges, top = _edges([v for _, s in series for v in s.values], bins)
        for name, stats in series:
            clipped = [min(float(v), top) for v in stats.values]
            axes.hist(clipped, bins=edges, histtype="step", linewidth=1.4, label=f"{name} (mean {stats.mean:.0f})")
        if series:
            axes.legend(fontsize=7)
        else:
            axes.text(0.5, 0.5, "no lengths recorded", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlabel(f"output length ({unit}; last bin: {top:.0f} and longer)")
        axes.set_ylabel("outputs")
    figure.suptitle(f"{report.name}: output length", fontsize=10)
    return _save(figure, Path(path))


def plot_comparison(a: EvalReport, b: EvalReport, path: str | Path, *, mode: Mode = "strict") -> Path:
    """Grouped F1 bars of two runs over the benchmark/tasks either of them has."""
    keys: list[tuple[str, str]] = []
    for report in (a, b):
        for s in report.scores_for(mode):
            if (s.benchmark, s.task) not in keys:
                keys.append((s.benchmark, s.task))

    def f1(report: EvalReport, benchmark: str, task: str) -> float:
        for s in report.scores_for(mode):
            if s.benchmark == benchmark and s.task == task:
                return s.f1
        return 0.0

    figure = _figure(max(6.0, 1.3 * len(keys) + 2), 4.5)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.4
    xs = list(range(len(keys)))
    axes.bar([x - width / 2 for x in xs], [f1(a, *k) for k in keys], width, label=f"A: {a.name}", color="#4C72B0")
    axes.bar([x + width / 2 for x in xs], [f1(b, *k) for k in keys], width, label=f"B: {b.name}", color="#DD8452")
    axes.set_xticks(xs, [f"{n}\n({t})" for n, t in keys], rotation=45, ha="right", fontsize=8)
    axes.set_ylim(0, 105)
    axes.set_ylabel("F1 (%)")
    axes.set_title(f"F1 per benchmark ({mode} scoring)", fontsize=10)
    axes.legend(fontsize=8, loc="lower right")
    return _save(figure, Path(path))


def plot_report(report: EvalReport, folder: str | Path) -> dict[str, Path]:
    """Every plot of ``report`` into ``folder``: ``f1_<mode>.png``, ``confusion_<mode>.png``, ``output_length.png``."""
    folder = Path(folder)
    written: dict[str, Path] = {}
    for mode in report.modes:
        written[f"f1_{mode}"] = plot_f1(report, folder / f"f1_{mode}.png", mode=mode)
        written[f"confusion_{mode}"] = plot_confusion(report, folder / f"confusion_{mode}.png", mode=mode)
    if report.lengths:
        written["output_length"] = plot_output_lengths(report, folder / "output_length.png")
    return written
