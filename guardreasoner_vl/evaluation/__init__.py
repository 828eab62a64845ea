"""Evaluation harness: reproduce the paper's tables for any guard checkpoint, or from released predictions.

* :mod:`~guardreasoner_vl.evaluation.registry`: the paper's 14 benchmark/task pairs (plus XSTest refusal).
* :mod:`~guardreasoner_vl.evaluation.loaders`: benchmark files (authors' text and VL formats,
  GuardReasoner-VLTest as published, our JSONL) and prediction files (``prompt``, ``label``, ``predict``).
* :mod:`~guardreasoner_vl.evaluation.metrics`: F1/precision/recall/accuracy, confusion counts, parse
  failures, output length, weighted averages; *strict* scoring with the project's parser.
* :mod:`~guardreasoner_vl.evaluation.reference`: *reference* scoring, an explicit emulation of the authors'
  scorers (text and VL) with their quirks.
* :mod:`~guardreasoner_vl.evaluation.probabilities`: metrics on verdict scores (AUROC, AUPRC, F1 at a
  threshold, the threshold for a target false-positive rate, calibration error), when predictions carry them.
* :mod:`~guardreasoner_vl.evaluation.runner`: run a :class:`~guardreasoner_vl.Guard` over benchmarks
  (batched, resumable) and score; score a predictions folder.
* :mod:`~guardreasoner_vl.evaluation.report` and :mod:`~guardreasoner_vl.evaluation.plots`: Markdown, JSON,
  PNG plots (``eval`` extra), comparisons.

Nothing heavy is imported here (matplotlib only when a plot is drawn).

Example:
    >>> from guardreasoner_vl.evaluation import get_benchmark, score_strict, PredictionRecord
    >>> rows = [PredictionRecord("", "harmful", "Answers: \\nRequest: harmful")]
    >>> score_strict(rows, get_benchmark("HarmBenchPrompt")).f1
    100.0
"""

from guardreasoner_vl.evaluation.loaders import (
    PREDICTIONS_FILE,
    VLTEST_FILES,
    BenchmarkData,
    EvalSample,
    PredictionRecord,
    discover_benchmarks,
    discover_predictions,
    gold_label,
    load_benchmark,
    load_jsonl_samples,
    load_predictions,
    load_samples,
    load_text_benchmark,
    load_vl_benchmark,
    load_vltest,
    parse_user_turn,
)
from guardreasoner_vl.evaluation.metrics import (
    BenchmarkScore,
    LengthStats,
    Mode,
    TaskAverage,
    binary_scores,
    score_strict,
    weighted_averages,
)
from guardreasoner_vl.evaluation.probabilities import ScoreMetrics, ScoreOptions, score_metrics
from guardreasoner_vl.evaluation.reference import detect_scorer, reference_extract, score_reference
from guardreasoner_vl.evaluation.registry import (
    BENCHMARKS,
    BenchmarkSpec,
    Task,
    find_benchmarks,
    get_benchmark,
)
from guardreasoner_vl.evaluation.report import (
    EvalReport,
    compare_markdown,
    load_report,
    plot_report,
    write_comparison,
    write_report,
)
from guardreasoner_vl.evaluation.runner import (
    evaluate,
    predictions_path,
    run_benchmark,
    score_predictions_dir,
    score_records,
)

__all__ = [
    "BENCHMARKS",
    "PREDICTIONS_FILE",
    "VLTEST_FILES",
    "BenchmarkData",
    "BenchmarkScore",
    "BenchmarkSpec",
    "EvalReport",
    "EvalSample",
    "LengthStats",
    "Mode",
    "PredictionRecord",
    "ScoreMetrics",
    "ScoreOptions",
    "Task",
    "TaskAverage",
    "binary_scores",
    "compare_markdown",
    "detect_scorer",
    "discover_benchmarks",
    "discover_predictions",
    "evaluate",
    "find_benchmarks",
    "get_benchmark",
    "gold_label",
    "load_benchmark",
    "load_jsonl_samples",
    "load_predictions",
    "load_report",
    "load_samples",
    "load_text_benchmark",
    "load_vl_benchmark",
    "load_vltest",
    "parse_user_turn",
    "plot_report",
    "predictions_path",
    "reference_extract",
    "run_benchmark",
    "score_metrics",
    "score_predictions_dir",
    "score_records",
    "score_reference",
    "score_strict",
    "weighted_averages",
    "write_comparison",
    "write_report",
]
