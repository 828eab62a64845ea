"""Every integration example runs offline, as a user would run it, and says what it should."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (script, arguments, text its output must contain)
EXAMPLES = [
    ("examples/langchain_agent_middleware.py", [], "blocked at input"),
    ("examples/langchain_lcel_runnable.py", [], "(refused by the guard)"),
    ("examples/openai_guarded_client.py", [], "refuse mode: [content_filter]"),
    ("examples/openai_messages_moderation.py", [], "flagged: True"),
    ("examples/openai_responses.py", [], "status=incomplete blocked=output"),
    ("examples/litellm_guardrail.py", [], "BLOCKED"),
]


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


@pytest.mark.parametrize(("script", "args", "expected"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_runs(script: str, args: list[str], expected: str) -> None:
    proc = _run(script, args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert expected in proc.stdout


@pytest.mark.slow
def test_reference_agent_app_with_the_tiny_model() -> None:
    proc = _run("integrations/agent-app/app.py", ["--guard", "tiny", "--demo"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "parse_error" in proc.stdout


def test_reference_agent_app_with_the_fake_guard() -> None:
    proc = _run("integrations/agent-app/app.py", ["--guard", "fake", "--demo"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "passed" in proc.stdout and "blocked" in proc.stdout
