"""Load test, bounded and loopback only: N concurrent clients x M requests against a real uvicorn server.

Must hold: zero 5xx, zero lost or cross-wired responses (each answer echoes its own request), and the queue
never holds more than ``max_queue`` items; overload shows up as 429s that the clients retry.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from server_helpers import SlowBackend, running

CLIENTS = 16
REQUESTS_EACH = 20
MAX_QUEUE = 4


async def test_load_no_5xx_no_lost_responses_queue_bounded() -> None:
    backend = SlowBackend(delay_s=0.004, per_item_s=0.001)
    settings = {"max_batch_size": 4, "max_wait_ms": 2, "max_queue": MAX_QUEUE, "max_inputs": 4, "retry_after_s": 0}
    statuses: list[int] = []
    answered: dict[str, bool] = {}

    async def one_client(http: httpx.AsyncClient, c: int) -> None:
        for m in range(REQUESTS_EACH):
            text = f"client {c} request {m}" + (" bomb" if (c + m) % 3 == 0 else "")
            for _ in range(2000):  # retry 429s; bounded
                r = await http.post("/v1/moderations", json={"input": text})
                statuses.append(r.status_code)
                if r.status_code != 429:
                    break
                await asyncio.sleep(0.002)
            assert r.status_code == 200, r.text
            (result,) = r.json()["results"]
            assert result["guardreasoner"]["reasoning"] == f"saw: Human user:\n{text}"  # its own answer
            assert result["flagged"] is text.endswith("bomb")
            answered[text] = True

    with running(backend, **settings) as (url, _, app):
        start = time.perf_counter()
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
            await asyncio.wait_for(asyncio.gather(*(one_client(http, c) for c in range(CLIENTS))), timeout=120)
            metrics = (await http.get("/metrics")).text
        elapsed = time.perf_counter() - start
        batcher = app.state.guard_state.batcher

    assert len(answered) == CLIENTS * REQUESTS_EACH
    assert not [s for s in statuses if s >= 500]
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) == CLIENTS * REQUESTS_EACH
    assert statuses.count(429) > 0  # 16 clients > 4 in a batch + 4 waiting: overload happened
    assert batcher.max_depth_seen <= MAX_QUEUE
    assert f"guardreasoner_queue_depth_max {batcher.max_depth_seen}" in metrics
    assert sum(backend.batch_sizes) == CLIENTS * REQUESTS_EACH
    assert max(backend.batch_sizes) <= 4
    assert elapsed < 120
