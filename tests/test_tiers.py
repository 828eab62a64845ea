"""Import cost and tier boundaries, checked in fresh interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = [
    "torch", "transformers", "vllm", "openai", "langchain", "langchain_core", "trl", "fastapi", "matplotlib", "ray",
    "pyarrow",
]  # fmt: skip
LIGHT_MODULES = [
    "guardreasoner_vl",
    "guardreasoner_vl.backends",
    "guardreasoner_vl.cli",
    "guardreasoner_vl.distributed",
    "guardreasoner_vl.moderation",
    "guardreasoner_vl.testing",
]


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.strip()


def test_package_import_loads_no_heavy_engine():
    code = (
        "import sys, json\n"
        + "".join(f"import {m}\n" for m in LIGHT_MODULES)
        + f"print(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))"
    )
    assert json.loads(_run(code)) == []


def test_cli_parser_builds_without_heavy_engines():
    code = (
        "import sys, json\nfrom guardreasoner_vl.cli import build_parser\nbuild_parser()\n"
        f"print(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))"
    )
    assert json.loads(_run(code)) == []


def test_unit_tier_runs_without_torch():
    env = dict(os.environ, GRVL_ASSERT_NO_TORCH="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/unit", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_missing_extra_error_names_the_pip_command():
    from guardreasoner_vl.errors import MissingDependencyError, require

    try:
        require("surely_not_installed_module_xyz", "vllm")
    except MissingDependencyError as exc:
        assert 'pip install "guardreasoner-vl[vllm]"' in str(exc)
        assert isinstance(exc, ImportError)
    else:  # pragma: no cover
        raise AssertionError("expected MissingDependencyError")


def test_test_module_basenames_are_unique():
    """pytest's default import mode puts each test folder on sys.path: two files of one name collide."""
    names = [p.name for p in (ROOT / "tests").rglob("*.py") if p.name not in ("conftest.py", "__init__.py")]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert duplicates == []
    # and no test folder may shadow a real package on sys.path (tests/vllm once read as `vllm`)
    shadowing = [p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name in [*HEAVY, "guardreasoner_vl"]]
    assert shadowing == []
