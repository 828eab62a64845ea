"""Peak memory of the moderation server under the most memory-hungry load we can construct.

The load: many concurrent requests, each carrying several images that are tiny on the wire and huge once
decoded (all-zero PNGs of ``--side`` x ``--side`` pixels, RGBA: a few kilobytes of base64 each, 4 bytes a
pixel decoded plus the RGB copies). The server runs in its own process (``guardreasoner-vl serve
--backend fake``: no model, so what is measured is the request path: bodies, decoding, merging, resizing,
queueing); its peak resident memory is read from ``/proc/<pid>/status`` (``VmHWM``) after the load.

What it shows: the growth of the server's peak RSS over its idle RSS stays under ``--max-memory-bytes``
(plus a small allowance for the runtime's own allocations), however many requests arrive at once; the
requests that do not fit are answered 429 (retry later) or 413 (would never fit), never by ballooning.

Run (Linux)::

    python bench/bench_server_memory.py                       # default: 1 GiB budget, 16 requests x 4 images
    python bench/bench_server_memory.py --max-memory-bytes 4294967296 --side 8192 --images 8
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def zero_png(side: int, mode: str = "RGBA") -> str:
    """A ``side`` x ``side`` all-zero PNG as a data: URL (compresses to almost nothing)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (side, side)).save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def measure(
    *,
    max_memory_bytes: int = 1024 * MIB,
    requests: int = 16,
    images: int = 4,
    side: int = 4096,
    mode: str = "RGBA",
    max_connections: int = 128,
    timeout_s: float = 240.0,
) -> dict[str, Any]:
    """Start a server, fire ``requests`` concurrent requests of ``images`` images each, report its memory."""
    import httpx

    port = _free_port()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [
        sys.executable,
        "-m",
        "guardreasoner_vl.cli",
        "serve",
        "--backend",
        "fake",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--max-memory-bytes",
        str(max_memory_bytes),
        "--max-connections",
        str(max_connections),
        "--max-queue",
        str(max(256, requests)),
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise RuntimeError("the server exited: " + (server.stderr.read().decode() if server.stderr else ""))
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 60 s")
            time.sleep(0.1)
        small = zero_png(64, mode)
        httpx.post(url + "/v1/guard", json={"text": "warm up", "image": small}, timeout=60).raise_for_status()
        idle_kib = _status_kib(server.pid, "VmRSS")
        image = zero_png(side, mode)
        body = {
            "input": [{"type": "text", "text": "what is this?"}]
            + [{"type": "image_url", "image_url": {"url": image}} for _ in range(images)]
        }

        def one(_: int) -> int:
            try:
                return httpx.post(url + "/v1/moderations", json=body, timeout=timeout_s).status_code
            except httpx.TransportError:
                return -1

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=requests) as pool:
            statuses = Counter(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - start
        peak_kib = _status_kib(server.pid, "VmHWM")
        still_up = httpx.get(url + "/health", timeout=10).status_code == 200
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            server.kill()
            server.wait()
    return {
        "max_memory_mib": max_memory_bytes / MIB,
        "requests": requests,
        "images_per_request": images,
        "image": f"{side}x{side} {mode} all-zero PNG, {len(image) // 1024} KiB as a data: URL",
        "decoded_mib_per_request_without_a_bound": round(images * side * side * 4 / MIB),
        "idle_rss_mib": round(idle_kib / 1024, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "growth_mib": round((peak_kib - idle_kib) / 1024, 1),
        "statuses": dict(sorted(statuses.items())),
        "elapsed_s": round(elapsed, 2),
        "server_still_healthy": still_up,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-memory-bytes", type=int, default=1024 * MIB)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--mode", default="RGBA")
    args = parser.parse_args()
    report = measure(
        max_memory_bytes=args.max_memory_bytes,
        requests=args.requests,
        images=args.images,
        side=args.side,
        mode=args.mode,
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
