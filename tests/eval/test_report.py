"""Reports: the paper-style Markdown table, JSON with every figure, PNG plots, comparisons."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from guardreasoner_vl.errors import MissingDependencyError
from guardreasoner_vl.evaluation.report import EvalReport, compare_markdown, load_report, write_comparison, write_report
from guardreasoner_vl.evaluation.runner import score_predictions_dir

ROOT = Path(__file__).resolve().parents[2]


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.suffix == ".png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        image.load()
        assert image.size[0] > 200 and image.size[1] > 200


@pytest.fixture(scope="module")
def report_1b(predictions_1b: Path) -> EvalReport:
    return score_predictions_dir(predictions_1b, name="GuardReasoner-1B")


def test_markdown_table_is_laid_out_like_the_paper(report_1b: EvalReport):
    table = report_1b.paper_table("reference", "request").splitlines()
    assert table[0] == "| Run | AegisSafetyTest | SimpleSafetyTests | HarmBenchPrompt | Avg (Text) | Avg (All) |"
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    scores = report_1b.scores_for("reference", "request")
    assert cells[1:4] == [f"{s.f1:.2f}" for s in scores]
    weighted = sum(s.f1 * s.samples for s in scores) / sum(s.samples for s in scores)
    assert cells[4] == cells[5] == f"{weighted:.2f}"  # all three are text benchmarks
    strict = report_1b.paper_table("strict", "response").splitlines()
    assert strict[3].startswith("| ↳ parse failures |")
    fails = [s.parse_failures for s in report_1b.scores_for("strict", "response")]
    assert strict[3].split("|")[-2].strip() == str(sum(fails))
    md = report_1b.to_markdown()
    assert md.index("## Strict scoring") < md.index("## Reference scoring") < md.index("## Details: strict")
    assert "| Parse failures | Failure rate % |" in md and "| Dropped | Duplicated |" in md


def test_write_report_json_and_valid_pngs(tmp_path: Path, report_1b: EvalReport):
    written = write_report(report_1b, tmp_path)
    assert set(written) == {
        "json",
        "markdown",
        "f1_strict",
        "f1_reference",
        "confusion_strict",
        "confusion_reference",
        "output_length",
    }
    for key, path in written.items():
        if key not in ("json", "markdown"):
            _assert_png(path)
            assert f"]({path.relative_to(tmp_path)})" in written["markdown"].read_text(encoding="utf-8")
    data = json.loads(written["json"].read_text(encoding="utf-8"))
    assert len(data["scores"]) == 12 and len(data["averages"]) == 6
    first = data["scores"][0]
    assert {
        "f1",
        "precision",
        "recall",
        "accuracy",
        "tp",
        "fp",
        "fn",
        "tn",
        "parse_failures",
        "parse_failure_rate",
        "mean_output_tokens",
        "mean_output_chars",
        "samples",
    } <= set(first)
    back = load_report(tmp_path)
    assert back.scores == report_1b.scores and back.averages == report_1b.averages
    assert back.lengths["AegisSafetyTest"].mean == report_1b.lengths["AegisSafetyTest"].mean
    assert back.to_markdown() == report_1b.to_markdown()


def test_comparison_side_by_side(tmp_path: Path, predictions_1b: Path, report_1b: EvalReport):
    other = score_predictions_dir(predictions_1b, modes=["strict"], only=["HarmBenchPrompt", "XSTestReponseHarmful"])
    md = compare_markdown(report_1b, other)
    assert "| Δ (B − A) |" in md
    written = write_comparison(report_1b, other, tmp_path)
    _assert_png(written["compare_strict"])
    assert "compare_reference" not in written  # B has no reference scores
    data = json.loads(written["json"].read_text(encoding="utf-8"))
    rows = {(r["benchmark"], r["mode"]): r for r in data["benchmarks"]}
    assert rows[("HarmBenchPrompt", "strict")]["delta"] == 0.0
    assert rows[("AegisSafetyTest", "strict")]["f1_b"] is None


def test_plots_name_the_extra_when_matplotlib_is_missing(tmp_path: Path, report_1b: EvalReport, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(MissingDependencyError, match=r"guardreasoner-vl\[eval\]"):
        write_report(report_1b, tmp_path)
    written = write_report(report_1b, tmp_path, plots=False)  # works without matplotlib
    assert set(written) == {"json", "markdown"}


def test_evaluation_imports_nothing_heavy():
    code = (
        "import sys, json\nimport guardreasoner_vl.evaluation, guardreasoner_vl.evaluation.cli\n"
        "import guardreasoner_vl.evaluation.plots\n"
        "print(json.dumps(sorted({'torch', 'transformers', 'matplotlib'} & set(sys.modules))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


def test_docstring_examples_run():
    import doctest

    import guardreasoner_vl.evaluation as package
    from guardreasoner_vl.evaluation import loaders, metrics, reference, registry, runner

    for module in (package, loaders, metrics, reference, registry, runner):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__


def test_plots_do_not_import_the_report_module():
    """No import cycle: report.py draws with plots.py, and plots.py imports nothing of report.py."""
    import ast

    import guardreasoner_vl.evaluation.plots as plots

    tree = ast.parse(Path(plots.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.endswith("evaluation.report") for m in imported), imported
    assert "guardreasoner_vl.evaluation.metrics" in imported  # it draws from the scores themselves
