"""Where the gateway venv is (a real LiteLLM proxy and real NeMo Guardrails live there: they cannot share the
main venv, see ``.ci/setup-gateways.sh``), and how its processes are started and waited for."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP_HINT = "create it with .ci/setup-gateways.sh (or point GRVL_GATEWAYS_PYTHON at its python)"


def gateways_python_path() -> Path:
    return Path(os.environ.get("GRVL_GATEWAYS_PYTHON") or ROOT / ".venv-gateways" / "bin" / "python")


def require_gateways(*modules: str) -> Path:
    """The gateway venv's python, able to import ``modules``.

    Missing: skipped with the reason on a developer's machine, a failure in CI (``CI`` set), where
    ``.ci/run`` creates the venv first, so these tests always run there.
    """
    python = gateways_python_path()
    problem = None
    if not python.exists():
        problem = f"the gateway virtual environment is missing ({python} does not exist)"
    else:
        probe = subprocess.run(
            [str(python), "-c", f"import {', '.join(modules)}"], capture_output=True, text=True, env=gateway_env()
        )
        if probe.returncode != 0:
            problem = f"{python} cannot import {', '.join(modules)} ({probe.stderr.strip()[-300:]})"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}: {SETUP_HINT}", pytrace=False)
        pytest.skip(f"{problem}: {SETUP_HINT}")
    return python


def gateway_env(**extra: str) -> dict[str, str]:
    """The environment of a gateway process: offline (LiteLLM reads its bundled model cost map instead of
    fetching it, no telemetry), this repository first on the path."""
    env = dict(os.environ)
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY="False",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(
    process: subprocess.Popen[bytes], url: str, log: Path, *, timeout_s: float, ok: Callable[[httpx.Response], bool]
) -> None:
    """Poll ``url`` until ``ok(response)``; on a timeout or an early exit, fail with the process's log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the process exited with {process.returncode} before answering:\n{_tail(log)}", pytrace=False)
        try:
            if ok(httpx.get(url, timeout=2.0)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"no answer from {url} after {timeout_s:.0f}s:\n{_tail(log)}", pytrace=False)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _tail(log: Path, lines: int = 80) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
