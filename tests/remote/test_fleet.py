"""The remote engine over a fleet of servers: spread, failover, health probes, exactly one result per request.

Three stub servers (``fleet_server.py``, each its own process on 127.0.0.1) answer with the request's text
echoed, so every result can be matched to its request. One is killed with SIGKILL mid-run and started
again on the same port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from guardreasoner_vl import Guard
from guardreasoner_vl.backends.remote import RemoteBackend

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VL = "yueliu1999/GuardReasoner-VL-3B"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One stub server process; ``kill`` is SIGKILL, ``start`` reuses the port."""

    def __init__(self, delay_s: float) -> None:
        self.port = free_port()
        self.delay_s = delay_s
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fleet_server.py"), str(self.port), str(self.delay_s)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def served(self) -> int:
        return int(httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json()["served"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@pytest.fixture
def fleet() -> Any:
    servers = [Server(delay_s=0.04) for _ in range(3)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


def fleet_guard(urls: Any, **options: Any) -> Guard:
    options = {"base_url": urls, "added_tokens": None, "backoff_s": 0.05, "max_backoff_s": 0.25, **options}
    return Guard(VL, backend="remote", backend_options=options)


def texts(n: int, tag: str) -> list[str]:
    return [f"{tag} request {i}." + (" bomb" if i % 4 == 0 else "") for i in range(n)]


def check(results: list[Any], items: list[str]) -> None:
    """One result per request, in order, each answering its own request."""
    assert len(results) == len(items)
    for text, result in zip(items, results, strict=True):
        assert result.status == "ok", result.error
        assert f"Human user:\\n{text}\\n" in result.reasoning  # the echo of this very request
        assert result.flagged is ("bomb" in text)


def test_killed_server_fails_over_and_comes_back(fleet: list[Server]) -> None:
    guard = fleet_guard(",".join(s.url for s in fleet), concurrency=6)
    backend = guard.backend
    assert isinstance(backend, RemoteBackend) and backend.base_urls == [s.url for s in fleet]
    victim = fleet[1]
    items = texts(300, "A")
    out: dict[str, Any] = {}
    run = threading.Thread(target=lambda: out.setdefault("results", guard.moderate_batch(items)))
    run.start()
    deadline = time.monotonic() + 30
    while victim.served() < 25 and time.monotonic() < deadline:
        time.sleep(0.02)
    before_kill = victim.served()
    victim.kill()  # mid-run: requests in flight to it fail over to the others
    assert run.is_alive(), "the batch finished before the kill"
    victim.start()  # same port, a fresh process that has served nothing
    run.join(60)
    assert not run.is_alive()
    check(out["results"], items)
    during = victim.served()
    if during == 0:  # the batch ended before the probe let it back: the next batch must reach it
        more = texts(60, "B")
        check(guard.moderate_batch(more), more)
    assert victim.served() > 0, "the restarted server never got traffic again"
    assert all(s["up"] for s in backend.servers())
    sent = [s["sent"] for s in backend.servers()]
    assert min(sent) > 25 and sum(sent) >= len(items)  # spread over all three; failed attempts counted too
    print(f"victim served {before_kill} before the kill, {victim.served()} after its restart; sent per server {sent}")
    guard.close()


def test_async_path_skips_a_dead_server_and_probes_it(fleet: list[Server]) -> None:
    dead = fleet[2]
    dead.kill()
    guard = fleet_guard([s.url for s in fleet], concurrency=4)
    items = texts(60, "C")

    async def main() -> list[Any]:
        try:
            return await guard.amoderate_batch(items)
        finally:
            await guard.aclose()

    check(asyncio.run(main()), items)
    states = {s["url"]: s for s in guard.backend.servers()}  # type: ignore[attr-defined]
    assert not states[dead.url]["up"] and states[dead.url]["failures"] >= 1
    live = [states[s.url]["sent"] for s in fleet[:2]]
    assert min(live) >= 20  # the two live servers shared the work


def test_one_url_keeps_the_single_server_behaviour() -> None:
    """A single base URL is never taken out of rotation: the engine's plain retries apply as before."""
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    backend = RemoteBackend(VL, base_url=url, max_retries=1, backoff_s=0.01, added_tokens=None)
    guard = Guard(backend=backend)
    [result] = guard.moderate_batch(["hello"])
    assert result.status == "engine_error" and f"127.0.0.1:{port}" in (result.error or "")
    assert "after 2 attempt(s)" in (result.error or "")
    assert backend.servers()[0]["up"] is True
