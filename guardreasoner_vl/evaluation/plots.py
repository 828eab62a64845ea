"""PNG plots of evaluation results, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Needs the ``eval`` extra (``pip install "guardreasoner-vl[eval]"``); matplotlib is imported inside each
function, so importing this module is cheap.

The plots take the figures themselves (scores, lengths, score metrics) and a title, not a report: the report
module calls them (:func:`guardreasoner_vl.evaluation.report.plot_report`), and this module imports nothing
of it.

* :func:`plot_f1`: per-benchmark F1 bars of one scoring mode, coloured by task;
* :func:`plot_confusion`: one confusion matrix per benchmark (strict mode adds an "unparsed" column);
* :func:`plot_output_lengths`: histogram of output lengths (tokens when known, else characters);
* :func:`plot_comparison`: two runs' F1 side by side;
* :func:`plot_pr_curves`: precision-recall curves of the verdict scores, one per benchmark/task;
* :func:`plot_reliability`: the reliability diagram of the verdict scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.errors import require

if TYPE_CHECKING:
    from guardreasoner_vl.evaluation.metrics import BenchmarkScore, LengthStats, Mode
    from guardreasoner_vl.evaluation.probabilities import ScoreMetrics

__all__ = [
    "confusion_matrix",
    "plot_comparison",
    "plot_confusion",
    "plot_f1",
    "plot_output_lengths",
    "plot_pr_curves",
    "plot_reliability",
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


def plot_f1(name: str, scores: Sequence[BenchmarkScore], path: str | Path, *, mode: Mode = "strict") -> Path:
    """Bars of F1 per benchmark/task (the ``scores`` of one ``mode``), with the values written on the bars."""
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
    axes.set_title(f"{name}: F1 per benchmark ({mode} scoring)", fontsize=10)
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


def plot_confusion(name: str, scores: Sequence[BenchmarkScore], path: str | Path, *, mode: Mode = "strict") -> Path:
    """One confusion matrix per benchmark/task (the ``scores`` of one ``mode``), in a grid."""
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
    figure.suptitle(f"{name}: confusion matrices ({mode} scoring)", fontsize=10)
    return _save(figure, Path(path))


def _edges(values: list[int], bins: int) -> tuple[list[float], float]:
    """Shared bin edges from 0 to the 99th percentile (longer outputs go in the last bin)."""
    ordered = sorted(values)
    top = float(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]) if ordered else 1.0
    top = max(top, 1.0)
    return [top * i / bins for i in range(bins + 1)], top


def plot_output_lengths(name: str, lengths: Mapping[str, LengthStats], path: str | Path, *, bins: int = 30) -> Path:
    """Histogram of output lengths per benchmark (one panel per unit: tokens, characters).

    All benchmarks of a panel share the bins, from 0 to the 99th percentile of all lengths; longer outputs
    are counted in the last bin.
    """
    units = sorted({s.unit for s in lengths.values()}, reverse=True) or ["tokens"]
    figure = _figure(7.0, 3.6 * len(units))
    for index, unit in enumerate(units):
        axes = figure.add_subplot(len(units), 1, index + 1)
        series = [(n, s) for n, s in lengths.items() if s.unit == unit and s.values]
        edges, top = _edges([v for _, s in series for v in s.values], bins)
        for benchmark, stats in series:
            clipped = [min(float(v), top) for v in stats.values]
            axes.hist(clipped, bins=edges, histtype="step", linewidth=1.4, label=f"{benchmark} (mean {stats.mean:.0f})")
        if series:
            axes.legend(fontsize=7)
        else:
            axes.text(0.5, 0.5, "no lengths recorded", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlabel(f"output length ({unit}; last bin: {top:.0f} and longer)")
        axes.set_ylabel("outputs")
    figure.suptitle(f"{name}: output length", fontsize=10)
    return _save(figure, Path(path))


def plot_comparison(
    a: tuple[str, Sequence[BenchmarkScore]], b: tuple[str, Sequence[BenchmarkScore]], path: str | Path, *, mode: Mode
) -> Path:
    """Grouped F1 bars of two runs, each ``(name, scores of one mode)``, over the benchmark/tasks either has."""
    keys: list[tuple[str, str]] = []
    for _, scores in (a, b):
        for s in scores:
            if (s.benchmark, s.task) not in keys:
                keys.append((s.benchmark, s.task))

    def f1(scores: Sequence[BenchmarkScore], benchmark: str, task: str) -> float:
        for s in scores:
            if s.benchmark == benchmark and s.task == task:
                return s.f1
        return 0.0

    figure = _figure(max(6.0, 1.3 * len(keys) + 2), 4.5)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.4
    xs = list(range(len(keys)))
    axes.bar([x - width / 2 for x in xs], [f1(a[1], *k) for k in keys], width, label=f"A: {a[0]}", color="#4C72B0")
    axes.bar([x + width / 2 for x in xs], [f1(b[1], *k) for k in keys], width, label=f"B: {b[0]}", color="#DD8452")
    axes.set_xticks(xs, [f"{n}\n({t})" for n, t in keys], rotation=45, ha="right", fontsize=8)
    axes.set_ylim(0, 105)
    axes.set_ylabel("F1 (%)")
    axes.set_title(f"F1 per benchmark ({mode} scoring)", fontsize=10)
    axes.legend(fontsize=8, loc="lower right")
    return _save(figure, Path(path))


def plot_pr_curves(name: str, metrics: Sequence[ScoreMetrics], path: str | Path) -> Path:
    """Precision-recall curves of the verdict scores (a step per distinct score), one line per benchmark/task,
    with the AUPRC in the legend. Metrics read back from JSON carry no arrays and are left out."""
    from guardreasoner_vl.evaluation.probabilities import precision_recall_curve

    figure = _figure(6.5, 5.0)
    axes = figure.add_subplot(1, 1, 1)
    drawn = 0
    for m in metrics:
        precision, recall, _ = precision_recall_curve(m.labels, m.scores)
        if not precision:
            continue
        auprc = "–" if m.auprc is None else f"{m.auprc:.3f}"
        axes.step([0.0, *recall], [precision[0], *precision], where="post", label=f"{m.key} (AUPRC {auprc})")
        drawn += 1
    if not drawn:
        axes.text(0.5, 0.5, "no scores with both classes", ha="center", va="center", transform=axes.transAxes)
    else:
        axes.legend(fontsize=7, loc="lower left")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(f"{name}: precision-recall of the verdict scores", fontsize=10)
    return _save(figure, Path(path))


def plot_reliability(name: str, metrics: Sequence[ScoreMetrics], path: str | Path) -> Path:
    """Reliability diagram: per benchmark/task, the positive rate against the mean score of each non-empty
    bin (marker area grows with the bin's rows), the diagonal of perfect calibration, ECE in the legend."""
    figure = _figure(6.5, 5.0)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    for m in metrics:
        filled = [b for b in m.reliability if b.count]
        if not filled:
            continue
        xs = [b.mean_score or 0.0 for b in filled]
        ys = [b.positive_rate or 0.0 for b in filled]
        top = max(b.count for b in filled)
        line = axes.plot(xs, ys, linewidth=1.2, label=f"{m.key} (ECE {m.ece:.3f})")
        axes.scatter(xs, ys, s=[12 + 60 * b.count / top for b in filled], color=line[0].get_color())
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel(f"mean score in bin ({metrics[0].bins if metrics else 10} equal-width bins)")
    axes.set_ylabel("fraction positive")
    axes.legend(fontsize=7, loc="upper left")
    axes.set_title(f"{name}: reliability of the verdict scores", fontsize=10)
    return _save(figure, Path(path))
