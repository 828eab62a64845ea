"""Integration modules load their framework only when imported, and name the extra when it is missing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = [
    "torch",
    "transformers",
    "openai",
    "langchain",
    "langchain_core",
    "langgraph",
    "fastapi",
    "litellm",
    "nemoguardrails",
]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_integrations_package_litellm_handler_and_nemo_rails_are_light() -> None:
    code = (
        "import sys, json\nimport guardreasoner_vl.integrations\nimport guardreasoner_vl.integrations.litellm\n"
        "import guardreasoner_vl.integrations.nemo\n"
        f"print(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_openai_converters_need_no_openai_package() -> None:
    code = (
        "import sys\nsys.modules['openai'] = None\n"
        "from guardreasoner_vl.integrations.openai import messages_to_item, GuardedOpenAI\n"
        "print(messages_to_item([{'role': 'user', 'content': 'hi'}]).text)\n"
        "from guardreasoner_vl import Guard\n"
        "try:\n    GuardedOpenAI(object(), Guard(backend='fake'))\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "hi"
    assert 'pip install "guardreasoner-vl[openai]"' in proc.stdout


@pytest.mark.parametrize("missing", ["langchain_core", "langchain"])
def test_langchain_module_names_the_extra(missing: str) -> None:
    code = (
        f"import sys\nsys.modules[{missing!r}] = None\n"
        "try:\n    import guardreasoner_vl.integrations.langchain\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("MissingDependencyError")
    assert 'pip install "guardreasoner-vl[langchain]"' in proc.stdout


def test_the_litellm_custom_guardrail_and_nemo_register_name_their_extras() -> None:
    code = (
        "import sys\nsys.modules['litellm'] = None\nsys.modules['nemoguardrails'] = None\n"
        "from guardreasoner_vl.integrations import litellm, nemo\n"
        "try:\n    litellm.GuardReasonerGuardrail\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
        "from guardreasoner_vl import Guard\n"
        "try:\n    nemo.register(object(), Guard(backend='fake'))\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first.startswith("MissingDependencyError") and 'pip install "guardreasoner-vl[litellm]"' in first
    assert second.startswith("MissingDependencyError") and 'pip install "guardreasoner-vl[nemoguardrails]"' in second
