"""The remote engine's servers: one base URL, or a fleet of them behind one guard.

:class:`EndpointPool` decides which server gets the next request, the way a client-side load balancer does:

* **Least outstanding requests.** Each request goes to the healthy server with the fewest requests in flight
  from this engine (ties taken in turn), so a slow or busy replica gets less.
* **Out of rotation on failure.** A server that cannot be reached (connection refused or reset, timeout) or
  answers 502/503/504 is taken out of rotation for a backoff that doubles with each consecutive failure
  (``backoff_s``, capped at ``max_backoff_s``); the request that failed is retried on another server.
* **Health probes.** When its backoff has passed, a server out of rotation gets one cheap probe (``GET
  {base_url}/models``, which ``vllm serve`` answers) before any request; an HTTP answer below 500 brings it
  back, anything else doubles its backoff.
* With a single URL there is nothing to choose: the pool always returns it and the engine's ordinary
  retries (backoff, ``Retry-After``) apply, exactly as before fleets existed.

The pool holds only state; the engine sends the probes with its own HTTP clients (sync or async).

Example:
    >>> pool = EndpointPool(["http://a:8000/v1", "http://b:8000/v1"], backoff_s=1.0, max_backoff_s=8.0)
    >>> first = pool.acquire(); second = pool.acquire()
    >>> sorted([first.url, second.url])          # least outstanding: one each
    ['http://a:8000/v1', 'http://b:8000/v1']
    >>> pool.release(first); pool.release(second)
    >>> pool.failed(first)                      # out of rotation for a while
    >>> {pool.acquire().url for _ in range(3)} == {second.url}
    True
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from guardreasoner_vl.errors import InvalidInputError

__all__ = ["DOWN_STATUSES", "Endpoint", "EndpointPool", "parse_base_urls"]

logger = logging.getLogger(__name__)

DOWN_STATUSES = frozenset({502, 503, 504})
"""HTTP answers that take a server out of rotation (a gateway without a live backend, an overloaded or
stopping server). Other retryable answers (408, 409, 429, 500) are retried elsewhere without it."""


def parse_base_urls(value: str | Sequence[str]) -> list[str]:
    """One or several base URLs: a list, or a string with commas between URLs.

    Example:
        >>> parse_base_urls("http://a:8000/v1, http://b:8000/v1/")
        ['http://a:8000/v1', 'http://b:8000/v1']

    Raises:
        InvalidInputError: no URL, a URL that is not http(s), or the same URL twice.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    urls = [str(u).strip().rstrip("/") for u in items if str(u).strip()]
    if not urls:
        raise InvalidInputError("base_url must name at least one server (http://host:port/v1)")
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if bad:
        raise InvalidInputError(f"base_url must start with http:// or https://, got {bad[0]!r}")
    if len(set(urls)) != len(urls):
        raise InvalidInputError(f"base_url lists a server twice: {urls}")
    return urls


@dataclass(eq=False, slots=True)
class Endpoint:
    """One server of the pool and what the engine knows of it.

    Attributes:
        url: the server's OpenAI API root (``http://host:8000/v1``).
        outstanding: requests in flight to it now.
        sent: requests sent to it so far.
        failures: consecutive failures (0: in rotation).
        down_until: when its next probe is due (monotonic clock), while out of rotation.
        probing: a probe is in flight.
    """

    url: str
    outstanding: int = 0
    sent: int = 0
    failures: int = 0
    down_until: float = 0.0
    probing: bool = False

    @property
    def up(self) -> bool:
        return self.failures == 0


class EndpointPool:
    """Least-outstanding-requests choice among servers, with failure backoff and health probes (module docs).

    Args:
        urls: the servers' base URLs.
        backoff_s: how long a server stays out of rotation after its first failure; doubles per failure.
        max_backoff_s: the longest it stays out before the next probe.
        clock: a monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = [Endpoint(u) for u in parse_base_urls(list(urls))]
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._lock = threading.Lock()
        self._turn = 0

    def __len__(self) -> int:
        return len(self.endpoints)

    @property
    def fleet(self) -> bool:
        """More than one server: failures take a server out of rotation and probes bring it back."""
        return len(self.endpoints) > 1

    def acquire(self, avoid: Endpoint | None = None) -> Endpoint:
        """The server for the next request (counted as outstanding until :meth:`release`).

        Healthy servers other than ``avoid`` (where the last attempt failed) come first, by fewest requests in
        flight; when none is healthy, the one whose probe is due soonest is tried anyway.
        """
        with self._lock:
            healthy = [e for e in self.endpoints if e.up]
            choice = [e for e in healthy if e is not avoid] or healthy
            if not choice:
                others = [e for e in self.endpoints if e is not avoid] or self.endpoints
                soonest = min(e.down_until for e in others)
                choice = [e for e in others if e.down_until == soonest]
            fewest = min(e.outstanding for e in choice)
            ties = [e for e in choice if e.outstanding == fewest]
            endpoint = ties[self._turn % len(ties)]
            self._turn += 1
            endpoint.outstanding += 1
            endpoint.sent += 1
            return endpoint

    def release(self, endpoint: Endpoint) -> None:
        """A request to ``endpoint`` is over (whatever its outcome)."""
        with self._lock:
            endpoint.outstanding -= 1

    def has_alternative(self, endpoint: Endpoint | None) -> bool:
        """Another server is in rotation (a failed request can go there at once, without waiting)."""
        with self._lock:
            return any(e.up and e is not endpoint for e in self.endpoints)

    def failed(self, endpoint: Endpoint) -> None:
        """``endpoint`` could not serve: out of rotation until a probe after its backoff (fleets only)."""
        if not self.fleet:
            return
        with self._lock:
            endpoint.failures += 1
            wait = min(self.max_backoff_s, self.backoff_s * 2 ** (endpoint.failures - 1))
            endpoint.down_until = self._clock() + wait
            endpoint.probing = False
        if endpoint.failures == 1:
            logger.warning("remote server %s failed; out of rotation, next probe in %.2fs", endpoint.url, wait)
        else:
            logger.info("remote server %s still down (%d failures); next probe in %.2fs", endpoint.url,
                        endpoint.failures, wait)  # fmt: skip

    def succeeded(self, endpoint: Endpoint) -> None:
        """``endpoint`` answered: back in rotation if it was out."""
        with self._lock:
            was_down = endpoint.failures > 0
            endpoint.failures = 0
            endpoint.down_until = 0.0
            endpoint.probing = False
        if was_down:
            logger.warning("remote server %s answers again; back in rotation", endpoint.url)

    def due_probe(self) -> Endpoint | None:
        """A server out of rotation whose backoff has passed, now marked as being probed (or None).

        The caller probes it and reports with :meth:`succeeded` or :meth:`failed`.
        """
        if not self.fleet:
            return None
        with self._lock:
            now = self._clock()
            for endpoint in self.endpoints:
                if not endpoint.up and not endpoint.probing and endpoint.down_until <= now:
                    endpoint.probing = True
                    return endpoint
        return None

    def snapshot(self) -> list[dict[str, object]]:
        """Each server's state: ``url``, ``up``, ``outstanding``, ``sent``, ``failures``."""
        with self._lock:
            return [
                {"url": e.url, "up": e.up, "outstanding": e.outstanding, "sent": e.sent, "failures": e.failures}
                for e in self.endpoints
            ]
