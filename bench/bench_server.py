"""Server throughput: micro-batching vs one request at a time, same model, same clients, same run.

Serves the tiny random Qwen2.5-VL (built offline by ``guardreasoner_vl.testing.tiny_model_path``) with the
transformers engine on CPU, twice from one loaded :class:`~guardreasoner_vl.Guard`:

* ``batched``: ``max_batch_size=B`` -- concurrent requests gathered into one engine call;
* ``single``:  ``max_batch_size=1`` -- the baseline, one engine call per request.

N concurrent clients (httpx over 127.0.0.1) each send M ``/v1/moderations`` requests back to back. Printed:
requests/s, p50/p99 latency, mean engine batch size for each mode, and the throughput ratio.

    python bench/bench_server.py --clients 8 --requests 6 --max-new-tokens 32
    python bench/bench_server.py --with-images        # every request also carries a small image

The tiny model's weights are random: it generates ``--max-new-tokens`` tokens for every request, so the
work per request is fixed and the comparison is about the serving path, not about verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import statistics
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class RunResult:
    mode: str
    requests: int
    elapsed_s: float
    latencies_s: list[float]
    batch_sizes: list[int]
    errors: int

    @property
    def throughput(self) -> float:
        return self.requests / self.elapsed_s

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[index]


def image_data_url(i: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64 + 8 * (i % 4), 64), (40 * (i % 6), 90, 160)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def payload(client: int, index: int, with_images: bool) -> dict[str, object]:
    text = f"client {client} asks question {index}: " + "how do I keep my bread from going stale? " * (1 + index % 3)
    if not with_images:
        return {"input": text}
    return {
        "input": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": image_data_url(client + index)}},
        ]
    }


async def drive(url: str, clients: int, requests: int, with_images: bool) -> tuple[float, list[float], int]:
    import httpx

    latencies: list[float] = []
    errors = 0

    async def one(http: httpx.AsyncClient, c: int) -> None:
        nonlocal errors
        for m in range(requests):
            start = time.perf_counter()
            response = await http.post("/v1/moderations", json=payload(c, m, with_images))
            latencies.append(time.perf_counter() - start)
            errors += int(response.status_code != 200)

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(one(http, c) for c in range(clients)))
        elapsed = time.perf_counter() - start
    return elapsed, latencies, errors


def run_mode(guard: object, mode: str, batch: int, args: argparse.Namespace) -> RunResult:
    from guardreasoner_vl.server import ServerSettings, create_app, serve_in_thread

    settings = ServerSettings(
        max_batch_size=batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=max(256, args.clients * 2),
        close_guard=False,
    )
    app = create_app(guard, settings=settings)  # type: ignore[arg-type]
    with serve_in_thread(app) as url:
        asyncio.run(drive(url, args.clients, 1, args.with_images))  # warm-up (one full wave), not measured
        batcher = app.state.guard_state.batcher
        batcher.batch_sizes.clear()
        elapsed, latencies, errors = asyncio.run(drive(url, args.clients, args.requests, args.with_images))
        sizes = list(batcher.batch_sizes)
    return RunResult(mode, args.clients * args.requests, elapsed, latencies, sizes, errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    parser.add_argument("--requests", type=int, default=6, help="requests per client (default: 6)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="batch bound of the batched mode (default: 8)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="batch fill wait (default: 5)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per request (default: 32)")
    parser.add_argument("--with-images", action="store_true", help="send a small image with every request")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds, each running both modes in turn; medians are printed"
    )
    args = parser.parse_args()

    import torch

    from guardreasoner_vl import Guard
    from guardreasoner_vl.testing import tiny_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    path = tiny_model_path("vl")
    guard = Guard(
        path, backend="transformers", device="cpu", max_new_tokens=args.max_new_tokens, batch_size=args.max_batch_size
    )
    print(
        f"tiny Qwen2.5-VL on CPU ({torch.get_num_threads()} torch threads), {args.clients} clients x "
        f"{args.requests} requests, {args.max_new_tokens} new tokens each, images: {args.with_images}"
    )
    runs: dict[str, list[RunResult]] = {"single": [], "batched": []}
    for round_index in range(args.rounds):
        order = [("single", 1), ("batched", args.max_batch_size)]
        if round_index % 2:
            order.reverse()  # alternate which mode goes first, against drift in machine load
        for mode, bound in order:
            runs[mode].append(run_mode(guard, mode, bound, args))
    guard.close()

    header = (
        f"{'round':<7}{'mode':<10}{'max_batch':>10}{'req/s':>9}{'p50 s':>9}{'p99 s':>9}{'mean batch':>12}{'errors':>8}"
    )
    print(header)
    for round_index in range(args.rounds):
        for mode, bound in (("single", 1), ("batched", args.max_batch_size)):
            result = runs[mode][round_index]
            mean_batch = statistics.mean(result.batch_sizes) if result.batch_sizes else 0.0
            print(
                f"{round_index + 1:<7}{mode:<10}{bound:>10}{result.throughput:>9.2f}{result.percentile(50):>9.3f}"
                f"{result.percentile(99):>9.3f}{mean_batch:>12.2f}{result.errors:>8}"
            )
    ratios = [b.throughput / s.throughput for s, b in zip(runs["single"], runs["batched"], strict=True)]
    single_tp = statistics.median(r.throughput for r in runs["single"])
    batched_tp = statistics.median(r.throughput for r in runs["batched"])
    p50 = {m: statistics.median(r.percentile(50) for r in rs) for m, rs in runs.items()}
    p99 = {m: statistics.median(r.percentile(99) for r in rs) for m, rs in runs.items()}
    print(
        f"median throughput: single {single_tp:.2f} req/s, batched {batched_tp:.2f} req/s -> "
        f"ratio {batched_tp / single_tp:.2f}x (per round: {', '.join(f'{r:.2f}x' for r in ratios)})"
    )
    print(
        f"median latency: single p50 {p50['single']:.3f}s p99 {p99['single']:.3f}s; "
        f"batched p50 {p50['batched']:.3f}s p99 {p99['batched']:.3f}s"
    )


if __name__ == "__main__":
    main()
