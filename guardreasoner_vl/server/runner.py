"""Run an ASGI app with uvicorn: in the foreground (``guardreasoner-vl serve``) or in a background thread.

Slow clients are bounded here (the app bounds the body, see ``ServerSettings.body_timeout_s``):

* a connection must deliver a request's headers within ``header_timeout_s`` of opening, or of its
  previous answer; uvicorn has no such timeout (every byte received resets its keep-alive timer, so a
  client sending one byte a second would hold a connection forever), so :func:`_protocol_class` adds one to
  uvicorn's h11 protocol;
* an idle keep-alive connection closes after ``keep_alive_timeout_s``;
* at most ``max_connections`` connections and running requests (uvicorn's ``limit_concurrency``: beyond
  it, new requests are answered 503);
* request line plus headers at most ``max_header_bytes`` (h11's incomplete-event limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from guardreasoner_vl.errors import GuardError, require
from guardreasoner_vl.server.settings import ServerSettings

__all__ = ["is_loopback", "run_server", "serve_in_thread", "uvicorn_options"]

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_TIMEOUT_TEXT = b"the request headers did not arrive in time\n"
_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n" % len(_TIMEOUT_TEXT) + _TIMEOUT_TEXT
)


def _protocol_class(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11Protocol(H11Protocol):  # type: ignore[misc]
        _header_timer: asyncio.TimerHandle | None = None
        _cycle_at_arm: object = None

        def _arm(self) -> None:
            self._disarm()
            self._cycle_at_arm = self.cycle
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and self.cycle is not self._cycle_at_arm and not self.cycle.response_complete:
                return  # a request is being answered: its body has its own deadline in the app
            logger.info("closing a connection that did not send its request headers within %gs", header_timeout_s)
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(_TIMEOUT_ANSWER)
            self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._cycle_at_arm:
                self._disarm()  # a new request's headers are complete

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers (or the rest of an unread body) are on the clock

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineH11Protocol


def _settings_of(app: Any) -> ServerSettings:
    state = getattr(getattr(app, "state", None), "guard_state", None)
    settings = getattr(state, "settings", None)
    return settings if isinstance(settings, ServerSettings) else ServerSettings()


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """The ``uvicorn.Config`` keywords that bound slow and numerous clients, from ``settings``."""
    return {
        "http": _protocol_class(settings.header_timeout_s),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }


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
    Connection limits and timeouts come from the app's :class:`ServerSettings` (apps built by
    :func:`~guardreasoner_vl.server.create_app`) or their defaults.

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
    config = uvicorn.Config(
        app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5, **uvicorn_options(_settings_of(app))
    )
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
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        **uvicorn_options(_settings_of(app)),
    )
