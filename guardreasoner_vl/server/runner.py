"""Run an ASGI app with uvicorn: in the foreground (``guardreasoner-vl serve``) or in a background thread."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from guardreasoner_vl.errors import GuardError, require

__all__ = ["is_loopback", "run_server", "serve_in_thread"]

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def serve_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", startup_timeout_s: float = 60.0
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a daemon thread; yields its base URL (``http://127.0.0.1:PORT``).

    ``port=0`` picks a free port. The server stops (lifespan shutdown included) when the block exits.

    Example:
        >>> from guardreasoner_vl import Guard
        >>> from guardreasoner_vl.server import create_app, serve_in_thread
        >>> with serve_in_thread(create_app(Guard(backend="fake"))) as url:  # doctest: +SKIP
        ...     print(httpx.get(url + "/health").json()["status"])
        ok
    """
    uvicorn = require("uvicorn", "server", feature="the moderation server")
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"grvl-uvicorn-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            sock.close()
            raise GuardError(f"the server did not start on {host}:{bound_port}: {errors[0] if errors else 'timeout'}")
        time.sleep(0.01)
    shown = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{shown}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def run_server(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` in the foreground until interrupted (what ``guardreasoner-vl serve`` calls)."""
    uvicorn = require("uvicorn", "server", feature="the moderation server")
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
