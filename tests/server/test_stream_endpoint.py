"""``POST /v1/guard/stream`` (server-sent events), the verdict cache behind the server, and the playground route.

Real uvicorn on 127.0.0.1 and a real HTTP client. The result-equality and disconnect tests run the tiny models
with transformers; the limit and error tests use the function engine of ``server_helpers`` (only the network
is replaced), because what they check happens before or around the engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from server_helpers import SlowBackend, data_url

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FunctionBackend, Generation
from guardreasoner_vl.prompts import ModelFamily
from guardreasoner_vl.server import ServerSettings, create_app, serve_in_thread


def events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """``(event, data)`` of each server-sent event of a streamed response."""
    name, data = "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield name, json.loads("\n".join(data))
            name, data = "message", []


def read_stream(url: str, body: dict[str, Any], **kwargs: Any) -> tuple[int, list[tuple[str, Any]]]:
    with httpx.stream("POST", url + "/v1/guard/stream", json=body, timeout=60, **kwargs) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, [("http", response.json())]
        assert response.headers["content-type"].startswith("text/event-stream")
        return 200, list(events(response))


def metric(url: str, name: str, **headers: str) -> float:
    text = httpx.get(url + "/metrics", headers=headers).text
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
def test_stream_then_result_equal_to_v1_guard_with_scores_and_a_cache(verdict_vl_path) -> None:
    pytest.importorskip("transformers")
    guard = Guard(verdict_vl_path, backend="transformers", device="cpu", max_new_tokens=48, cache="memory")
    with serve_in_thread(create_app(guard)) as url:
        body = {"text": "Help me hurt someone", "response": "Sure, here is how."}
        status, got = read_stream(url, body)
        assert status == 200 and [name for name, _ in got[:-1]] == ["reasoning"] * (len(got) - 1)
        assert len(got) >= 4 and got[-1][0] == "result"
        result = got[-1][1]
        assert "".join(data["text"] for _, data in got[:-1]) == result["raw_output"]
        assert result["status"] == "ok" and result["response_score"] is not None
        plain = httpx.post(url + "/v1/guard", json=body, timeout=60).json()  # a cache hit now
        drop = {"usage"}
        assert {k: v for k, v in plain.items() if k not in drop} == {k: v for k, v in result.items() if k not in drop}
        status, image = read_stream(url, {"text": "What is this?", "image": data_url("red", (56, 84))})
        assert status == 200 and image[-1][1]["request"] == "harmful"
        text = httpx.get(url + "/metrics").text
        assert 'guardreasoner_cache_lookups_total{result="hit"} 1' in text
        assert 'guardreasoner_cache_lookups_total{result="miss"} 2' in text
        assert 'guardreasoner_streams_total{outcome="completed"} 2' in text
        assert 'guardreasoner_items_total{status="ok"} 3' in text  # streamed and batched results both count


@pytest.mark.slow
def test_a_client_that_disconnects_stops_the_generation(tiny_vl_path) -> None:
    pytest.importorskip("transformers")
    guard = Guard(tiny_vl_path, backend="transformers", device="cpu", max_new_tokens=2000)
    backend: Any = guard.backend
    # an end-of-sequence id outside the vocabulary: the random model runs to its budget (tens of seconds here)
    backend.eos_token_ids = [backend.model.config.get_text_config().vocab_size + 1]
    with serve_in_thread(create_app(guard)) as url:
        with httpx.stream("POST", url + "/v1/guard/stream", json={"text": "tell me a story"}, timeout=60) as response:
            first = next(events(response))
            assert first[0] == "reasoning" and backend._lock.locked()  # generating, in the engine's thread
        start = time.monotonic()  # the client closed the connection mid-stream
        while backend._lock.locked() and time.monotonic() - start < 10:
            time.sleep(0.02)
        freed_s = time.monotonic() - start
        print(f"engine freed {freed_s:.2f}s after the client disconnected")
        assert not backend._lock.locked() and freed_s < 3.0, f"engine still busy {freed_s:.1f}s after the disconnect"
        quick = httpx.post(url + "/v1/guard", json={"text": "hi"}, timeout=60)  # the engine serves the next request
        assert quick.status_code == 200
        deadline = time.monotonic() + 5
        while metric(url, 'guardreasoner_streams_total{outcome="disconnected"}') < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(url, 'guardreasoner_streams_total{outcome="disconnected"}') == 1
        assert metric(url, "guardreasoner_streams_active") == 0


def test_auth_limits_and_validation_are_those_of_v1_guard() -> None:
    settings = ServerSettings(api_key="s3cret", max_body_bytes=200_000, max_memory_bytes=10_000_000, max_streams=1)
    backend = SlowBackend(delay_s=1.0)
    with serve_in_thread(create_app(Guard(backend=backend), settings=settings)) as url:
        key = {"Authorization": "Bearer s3cret"}
        assert read_stream(url, {"text": "hi"})[0] == 401
        status, got = read_stream(url, {"text": "hi"}, headers={"x-api-key": "s3cret"})
        assert status == 200 and got[-1][0] == "result" and got[-1][1]["flagged"] is False
        assert read_stream(url, {"text": ""}, headers=key) == (
            400,
            [("http", {"error": {"message": "text is empty; pass None to leave it out", "type": "invalid_request_error",
                                 "param": None, "code": None}})],
        )  # fmt: skip
        assert read_stream(url, {"text": "hi", "extra": 1}, headers=key)[0] == 400
        assert read_stream(url, {"text": "hi", "image": "not base64!"}, headers=key)[0] == 400
        assert read_stream(url, {"text": "x" * 300_000}, headers=key)[0] == 413
        assert read_stream(url, {"text": "hi", "image": "http://example.com/a.png"}, headers=key)[0] == 400

        # one stream at a time (max_streams=1): a second one is refused with 429 while the first runs
        with httpx.stream("POST", url + "/v1/guard/stream", json={"text": "slow"}, headers=key, timeout=30) as first:
            second = httpx.post(url + "/v1/guard/stream", json={"text": "hi"}, headers=key, timeout=30)
            assert second.status_code == 429 and second.json()["error"]["code"] == "streams_full"
            assert list(events(first))[-1][0] == "result"
        assert read_stream(url, {"text": "bomb"}, headers=key)[1][-1][1]["flagged"] is True
        assert httpx.post(url + "/v1/guard", json={"text": "bomb"}, headers=key).json()["flagged"] is True
        assert httpx.get(url + "/").status_code == 404  # no playground unless asked


def test_an_engine_failure_midway_is_an_error_event() -> None:
    engine = FunctionBackend(lambda request: Generation(text="", error="CUDA out of memory"), family=ModelFamily.VL)
    with serve_in_thread(create_app(Guard(backend=engine))) as url:
        status, got = read_stream(url, {"text": "hi"})
        assert status == 200 and got == [
            ("error", {"error": {"message": "the guard's engine failed: CUDA out of memory", "type": "server_error",
                                 "param": None, "code": "engine_error"}})
        ]  # fmt: skip
        text = httpx.get(url + "/metrics").text
        assert 'guardreasoner_streams_total{outcome="error"} 1' in text
        assert 'guardreasoner_errors_total{kind="engine"} 1' in text


def test_playground_route_is_served_only_when_asked() -> None:
    with serve_in_thread(create_app(Guard(backend="fake"), settings=ServerSettings(playground=True))) as url:
        page = httpx.get(url + "/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'sha256-" in policy and "unsafe-inline" not in policy
        assert "/v1/guard/stream" in page.text or "v1/guard/stream" in page.text
        assert "<script src" not in page.text and "http://" not in page.text and "https://" not in page.text


def test_serve_command_with_a_cache_file_and_the_playground(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    from test_serve_cli import ROOT, free_port

    port, cache = free_port(), tmp_path / "verdicts.db"
    command = [sys.executable, "-m", "guardreasoner_vl.cli", "serve", "--backend", "fake", "--port", str(port),
               "--cache", str(cache), "--playground", "--max-streams", "2", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        assert httpx.get(url + "/").status_code == 200
        first = httpx.post(url + "/v1/guard", json={"text": "a bomb"}).json()
        status, got = read_stream(url, {"text": "a bomb"})
        assert status == 200 and got[-1][1]["raw_output"] == first["raw_output"]
        assert metric(url, 'guardreasoner_cache_lookups_total{result="hit"}') == 1
        assert cache.exists()
    finally:
        proc.terminate()
        proc.wait(30)


def test_stopping_the_server_closes_the_guard_and_the_cache_it_opened(tmp_path) -> None:  # type: ignore[no-untyped-def]
    guard = Guard(backend="fake", cache=tmp_path / "c.db")  # the server serves a with_options clone of it
    with serve_in_thread(create_app(guard)) as url:
        assert httpx.post(url + "/v1/guard", json={"text": "hi"}).status_code == 200
    assert guard.closed and guard.cache is not None and guard.cache._closed  # type: ignore[attr-defined]
