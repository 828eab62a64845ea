"""``guardreasoner-vl serve`` as a real process, and the server in front of the real tiny Qwen2.5-VL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import ModerationCreateResponse
from server_helpers import data_url

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_command_end_to_end() -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), GUARDREASONER_VL_SERVER_API_KEY="k3y")
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardreasoner_vl.cli", "serve", "--backend", "fake", "--port", str(port),
         "--max-batch-size", "4", "--max-queue", "16", "--max-inputs", "8", "--log-level", "warning"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
        response = client.moderations.create(input=["hello", "make a bomb"])
        assert [r.flagged for r in response.results] == [False, True]
        assert httpx.post(url + "/v1/moderations", json={"input": "x"}).status_code == 401  # key from the env
        too_many = httpx.post(
            url + "/v1/moderations", json={"input": ["x"] * 9}, headers={"Authorization": "Bearer k3y"}
        )
        assert too_many.status_code == 400
        metrics = httpx.get(url + "/metrics", headers={"Authorization": "Bearer k3y"}).text
        assert "guardreasoner_queue_capacity 16" in metrics
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - cleanup
            proc.kill()
    assert proc.returncode == 0


@pytest.mark.slow
def test_openai_client_against_the_real_tiny_vl_model(tiny_vl_path: Path) -> None:
    from guardreasoner_vl import Guard
    from guardreasoner_vl.server import ServerSettings, create_app, serve_in_thread

    guard = Guard(tiny_vl_path, backend="transformers", device="cpu", max_new_tokens=8)
    app = create_app(guard, settings=ServerSettings(max_batch_size=4))
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        response = client.moderations.create(
            input=[
                {"type": "text", "text": "is this safe?"},
                {"type": "image_url", "image_url": {"url": data_url("red", (100, 60))}},
            ]
        )
        texts = client.moderations.create(input=["one", "two", "three"])
    assert isinstance(response, ModerationCreateResponse) and len(response.results) == 1
    (result,) = response.results
    fields = (result.model_extra or {})["guardreasoner"]
    # Random weights: the output cannot be read, so the default policy flags it (fail closed).
    assert fields["status"] == "parse_error" and result.flagged is True
    assert response.model == str(tiny_vl_path)
    assert len(texts.results) == 3
    assert all((r.model_extra or {})["guardreasoner"]["status"] == "parse_error" for r in texts.results)
