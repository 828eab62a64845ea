"""The docstring examples of the integration modules run (offline, with the fake guard)."""

from __future__ import annotations

import doctest
import importlib
import subprocess

import pytest
from gateways import gateway_env, require_gateways


@pytest.mark.parametrize(
    "name",
    [
        "guardreasoner_vl.conversation",
        "guardreasoner_vl.integrations._common",
        "guardreasoner_vl.integrations.openai",
        "guardreasoner_vl.integrations.litellm",
        "guardreasoner_vl.integrations.nemo",
    ],
)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0, name


def test_the_custom_guardrail_example_runs_with_litellm() -> None:
    python = require_gateways("litellm")
    code = (
        "import doctest, sys\nimport guardreasoner_vl.integrations._litellm_custom as m\n"
        "r = doctest.testmod(m)\nprint(r.attempted)\nsys.exit(r.failed)"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=gateway_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 0
