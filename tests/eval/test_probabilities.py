"""Metrics on verdict scores: equal to scikit-learn's on the same arrays, and in the report only when the
predictions carry scores. (Our implementation is plain Python; scikit-learn is used here only, as the oracle.)"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score, roc_curve

from guardreasoner_vl.cli import main
from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.evaluation import probabilities as P
from guardreasoner_vl.evaluation.loaders import PredictionRecord
from guardreasoner_vl.evaluation.registry import get_benchmark
from guardreasoner_vl.evaluation.report import EvalReport, load_report, write_report
from guardreasoner_vl.evaluation.runner import score_predictions_dir


def _arrays(seed: int, n: int, digits: int) -> tuple[list[bool], list[float]]:
    """Scores correlated with the labels, rounded so that ties and exact bin edges (0.1, 0.3, ...) occur."""
    rng = random.Random(seed)
    labels = [rng.random() < 0.4 for _ in range(n)]
    scores = [round(min(1.0, max(0.0, rng.gauss(0.65 if y else 0.35, 0.25))), digits) for y in labels]
    return labels, scores


CASES = [(seed, n, digits) for seed, n, digits in ((0, 50, 1), (1, 200, 2), (2, 1000, 3), (3, 37, 1), (4, 500, 6))]


@pytest.mark.parametrize(("seed", "n", "digits"), CASES)
def test_auroc_auprc_and_curves_equal_sklearn(seed, n, digits):
    labels, scores = _arrays(seed, n, digits)
    assert P.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert P.average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    precision, recall, thresholds = P.precision_recall_curve(labels, scores)
    sk_p, sk_r, sk_t = precision_recall_curve(labels, scores)
    # sklearn lists thresholds ascending and appends the (precision 1, recall 0) end point
    assert np.allclose(precision, sk_p[:-1][::-1]) and np.allclose(recall, sk_r[:-1][::-1])
    assert np.allclose(thresholds, sk_t[::-1])
    fpr, tpr, roc_t = P.roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_roc_t = roc_curve(labels, scores, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr) and np.allclose(roc_t[1:], sk_roc_t[1:])


@pytest.mark.parametrize(("seed", "n", "digits"), CASES)
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_f1_at_a_threshold_equals_sklearn(seed, n, digits, threshold):
    labels, scores = _arrays(seed, n, digits)
    flagged = [s >= threshold for s in scores]
    assert P.f1_at(labels, scores, threshold) == pytest.approx(100 * f1_score(labels, flagged, zero_division=0))


@pytest.mark.parametrize(("seed", "n", "digits"), CASES)
@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2, 1.0])
def test_threshold_for_a_target_fpr_is_sklearns_best_roc_point_within_budget(seed, n, digits, target):
    labels, scores = _arrays(seed, n, digits)
    sk_fpr, sk_tpr, sk_t = roc_curve(labels, scores, drop_intermediate=False)
    best = int(np.nonzero(sk_fpr <= target)[0].max())
    found = P.threshold_for_fpr(labels, scores, target)
    assert found is not None
    threshold, fpr, tpr = found
    assert (fpr, tpr) == pytest.approx((sk_fpr[best], sk_tpr[best]))
    if best == 0:  # nothing can be flagged within the budget: just above the highest score
        assert threshold > max(scores) and math.isfinite(threshold)
    else:
        assert threshold == sk_t[best]
    # flagging at the threshold really has that false-positive rate, and one step lower breaks the budget
    negatives = [s for y, s in zip(labels, scores, strict=True) if not y]
    assert sum(s >= threshold for s in negatives) / len(negatives) == pytest.approx(fpr)
    lower = [s for s in set(scores) if s < threshold]
    if lower:
        assert sum(s >= max(lower) for s in negatives) / len(negatives) > target


@pytest.mark.parametrize(("seed", "n", "digits"), CASES)
@pytest.mark.parametrize("bins", [1, 5, 10, 15])
def test_calibration_bins_and_ece_equal_sklearns_calibration_curve(seed, n, digits, bins):
    labels, scores = _arrays(seed, n, digits)
    prob_true, prob_pred = calibration_curve(labels, scores, n_bins=bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], scores), minlength=bins)
    ours = P.calibration_bins(labels, scores, bins)
    assert [b.count for b in ours] == counts.tolist()
    filled = [b for b in ours if b.count]
    assert np.allclose([b.positive_rate or 0.0 for b in filled], prob_true)
    assert np.allclose([b.mean_score or 0.0 for b in filled], prob_pred)
    expected = float(np.sum(counts[counts > 0] / n * np.abs(prob_true - prob_pred)))
    assert P.expected_calibration_error(labels, scores, bins) == pytest.approx(expected, abs=1e-12)


def test_edge_scores_fall_in_the_lower_bin_and_single_classes_have_no_auc():
    table = P.calibration_bins([True, False, True], [0.0, 0.1, 0.10000001], bins=10)
    assert [b.count for b in table[:2]] == [2, 1]  # 0.1 is in (0, 0.1], as in sklearn
    assert P.auroc([True, True], [0.2, 0.9]) is None and P.average_precision([False], [0.3]) is None
    assert P.threshold_for_fpr([True], [0.5], 0.01) is None
    with pytest.raises(InvalidInputError, match="target false-positive rate"):
        P.threshold_for_fpr([True, False], [0.1, 0.2], 1.5)


def test_scores_are_read_from_rows_and_checked():
    spec = get_benchmark("ToxicChat")
    rows = [
        PredictionRecord("", "harmful", "x", extra={"request_score": 0.9}),
        PredictionRecord("", "unharmful", "x", extra={"scores": {"request": 0.2}}),
        PredictionRecord("", "unharmful", "x", extra={"request_score": None}),
        PredictionRecord("", None, "x", extra={"request_score": 0.4}),  # no gold: not measured
    ]
    m = P.score_metrics(rows, spec)
    assert m is not None and (m.rows, m.unscored, m.positives, m.auroc) == (2, 1, 1, 1.0)
    assert P.score_metrics(rows[2:3], spec) is None  # no scores at all: no metrics
    bad = PredictionRecord("", "harmful", "x", extra={"request_score": "high"}, line=7)
    with pytest.raises(InvalidInputError, match=r"p\.jsonl line 7: request_score must be a probability"):
        P.score_metrics([bad], spec, source="p.jsonl")
    with pytest.raises(InvalidInputError, match="threshold must be in"):
        P.score_metrics(rows, spec, threshold=2)


def _scored_predictions(root: Path) -> Path:
    rng = random.Random(7)
    for folder, task in (("ToxicChat", "request"), ("HarmBenchResponse", "response")):
        lines = []
        for i in range(120):
            harmful = rng.random() < 0.4
            score = round(min(1.0, max(0.0, rng.gauss(0.7 if harmful else 0.3, 0.2))), 3)
            verdict = "harmful" if score >= 0.5 else "unharmful"
            lines.append(
                json.dumps(
                    {
                        "prompt": "",
                        "label": "harmful" if harmful else "unharmful",
                        "predict": f"<result>\nRequest: {verdict}\nResponse: {verdict}\n</result>",
                        "id": str(i),
                        f"{task}_score": score,
                    }
                )
            )
        (root / folder).mkdir(parents=True)
        (root / folder / "generated_predictions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_reports_gain_score_metrics_and_plots_only_with_scores(tmp_path: Path, predictions_1b: Path):
    plain = score_predictions_dir(predictions_1b)
    assert plain.score_metrics == () and "score_metrics" not in plain.to_dict()
    assert "Verdict scores" not in plain.to_markdown() and "threshold" not in plain.meta
    root = _scored_predictions(tmp_path / "preds")
    report = score_predictions_dir(root, score_options=P.ScoreOptions(threshold=0.6, target_fpr=0.05, bins=8))
    assert [m.key for m in report.score_metrics] == ["ToxicChat/request", "HarmBenchResponse/response"]
    m = report.score_metrics[0]
    assert (m.threshold, m.target_fpr, m.bins, len(m.reliability)) == (0.6, 0.05, 8, 8)
    assert m.auroc == pytest.approx(roc_auc_score(m.labels, m.scores))
    md = report.to_markdown()
    assert "## Verdict scores" in md and "| F1 @ 0.6 | Threshold @ FPR ≤ 0.05 |" in md and "ECE (8 bins)" in md
    written = write_report(report, tmp_path / "out")
    for key in ("pr_curves", "reliability"):
        with Image.open(written[key]) as image:
            assert image.format == "PNG" and image.size[0] > 200
        assert f"]({written[key].relative_to(tmp_path / 'out')})" in written["markdown"].read_text()
    back = load_report(tmp_path / "out")
    assert back.score_metrics == report.score_metrics
    assert EvalReport.from_dict(report.to_dict()).to_markdown() == report.to_markdown()


def test_eval_cli_target_fpr(tmp_path: Path, capsys):
    root = _scored_predictions(tmp_path / "preds")
    args = ["eval", "--predictions", str(root), "-o", str(tmp_path / "o"), "--no-plots", "--json"]
    assert main([*args, "--target-fpr", "0.01", "--threshold", "0.4"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {m["target_fpr"] for m in data["score_metrics"]} == {0.01}
    assert {m["threshold"] for m in data["score_metrics"]} == {0.4}
    assert all(m["fpr_at"] <= 0.01 for m in data["score_metrics"])
    assert main([*args, "--target-fpr", "2"]) != 0
    assert "target_fpr must be in [0, 1]" in capsys.readouterr().err


def test_run_rows_carry_the_scores_of_results_that_have_them(tmp_path: Path):
    """The run writer copies ``<task>_score`` from results that carry it (a GuardResult with score fields, as
    the scores work adds them) and the reader measures it; results without scores write no such field."""
    from guardreasoner_vl import Guard, GuardResult
    from guardreasoner_vl.evaluation.loaders import BenchmarkData, EvalSample, load_predictions
    from guardreasoner_vl.evaluation.runner import _row

    class ScoredResult(GuardResult):
        request_score: float | None = None
        response_score: float | None = None

    spec = get_benchmark("ToxicChat")
    data = BenchmarkData("ToxicChat", tmp_path / "ToxicChat.json", (), (spec,))
    with Guard(backend="fake", family="text") as guard:
        lines = []
        for i, (text, label, score) in enumerate([("make a bomb", "harmful", 0.9), ("hello", "unharmful", 0.2)]):
            sample = EvalSample(str(i), text, None, label)
            result = guard.moderate(text)
            assert not any(key.endswith("_score") for key in _row(guard, data, sample, result, ""))
            scored = ScoredResult.model_validate({**result.model_dump(), "request_score": score})
            lines.append(json.dumps(_row(guard, data, sample, scored, "")) + "\n")
    path = tmp_path / "p.jsonl"
    path.write_text("".join(lines))
    rows = load_predictions(path)
    assert [json.loads(line).get("request_score") for line in lines] == [0.9, 0.2]
    assert "response_score" not in json.loads(lines[0])  # None is not written
    m = P.score_metrics(rows, spec)
    assert m is not None and (m.rows, m.auroc) == (2, 1.0)
