"""Prometheus metrics of the server, written by hand in the text exposition format (version 0.0.4).

No ``prometheus_client`` dependency: a few counters, gauges and histograms, each with a fixed label set, are
enough, and they render to the format Prometheus scrapes from ``GET /metrics``:

============================================== ========= ===========================================
metric                                         type      meaning
============================================== ========= ===========================================
``guardreasoner_http_requests_total``          counter   HTTP requests by ``endpoint`` and ``status``
``guardreasoner_http_request_duration_seconds`` histogram latency of HTTP requests by ``endpoint``
``guardreasoner_batches_total``                counter   engine calls made by the micro-batcher
``guardreasoner_batch_size``                   histogram items per engine call
``guardreasoner_batch_duration_seconds``       histogram wall time of one engine call
``guardreasoner_items_total``                  counter   judged items by result ``status``
``guardreasoner_flagged_total``                counter   items flagged
``guardreasoner_tokens_total``                 counter   tokens by ``kind`` (``prompt``/``completion``)
``guardreasoner_queue_depth``                  gauge     items waiting for a batch now
``guardreasoner_queue_depth_max``              gauge     the highest queue depth seen
``guardreasoner_queue_capacity``               gauge     the queue bound (``max_queue``)
``guardreasoner_items_in_flight``              gauge     items inside a running engine call
``guardreasoner_request_memory_bytes``         gauge     bytes of bodies and images reserved now, and ``_peak``
``guardreasoner_request_memory_limit_bytes``   gauge     the memory budget (``max_memory_bytes``)
``guardreasoner_rejected_total``               counter   requests refused before judging, by ``reason``
``guardreasoner_errors_total``                 counter   failures by ``kind`` (engine, internal ...)
``guardreasoner_streams_total``                counter   ``/v1/guard/stream`` requests by ``outcome``
                                                         (``completed``, ``error``, ``disconnected``,
                                                         ``rejected``)
``guardreasoner_streams_active``               gauge     streams running now
``guardreasoner_cache_lookups_total``          counter   verdict-cache lookups by ``result`` (``hit``/``miss``)
``guardreasoner_cache_stores_total``           counter   generations written to the verdict cache
``guardreasoner_cache_errors_total``           counter   verdict-cache reads or writes that failed
``guardreasoner_info``                         gauge     1, labelled with ``model``, ``backend``, ``version``
============================================== ========= ===========================================
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

__all__ = ["Counter", "Gauge", "Histogram", "ServerMetrics"]

LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> tuple[str, ...]:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(v) for v in labels)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError


class _ValueMetric(_Metric):
    """One float per label set (what counters and gauges share)."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def _add(self, labels: Sequence[str], amount: float) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self._header() + [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Counter(_ValueMetric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._add(labels, amount)

    def sync(self, total: float, *labels: str) -> None:
        """Set the count from a total kept elsewhere (a cache's own counters); it never goes down."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = max(self._values.get(key, 0.0), float(total))


class Gauge(_ValueMetric):
    """A value that goes up and down, per label set."""

    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        self._add(labels, amount)


class Histogram(_Metric):
    """Cumulative buckets, sum and count per label set."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), *, buckets: Iterable[float]) -> None:
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            total[0] += value

    def count(self, *labels: str) -> int:
        series = self._series.get(self._key(labels))
        return sum(series[0]) if series else 0

    def render(self) -> list[str]:
        lines = self._header()
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._series.items())
        for key, (counts, total) in items:
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {running}")
        return lines


class ServerMetrics:
    """Every metric the server exports (see the module docs), and the exposition text.

    Example:
        >>> m = ServerMetrics(model="m", backend="fake", max_queue=4)
        >>> m.batch_size.observe(3)
        >>> "guardreasoner_batch_size_count 1" in m.render()
        True
    """

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, *, model: str, backend: str, max_queue: int, version: str = "") -> None:
        self.http_requests = Counter(
            "guardreasoner_http_requests_total", "HTTP requests by endpoint and status code.", ("endpoint", "status")
        )
        self.http_latency = Histogram(
            "guardreasoner_http_request_duration_seconds",
            "Latency of HTTP requests, by endpoint.",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
        )
        self.batches = Counter("guardreasoner_batches_total", "Engine calls made by the micro-batcher.")
        self.batch_size = Histogram("guardreasoner_batch_size", "Items per engine call.", buckets=BATCH_BUCKETS)
        self.batch_latency = Histogram(
            "guardreasoner_batch_duration_seconds", "Wall time of one engine call.", buckets=LATENCY_BUCKETS
        )
        self.items = Counter("guardreasoner_items_total", "Judged items by result status.", ("status",))
        self.flagged = Counter("guardreasoner_flagged_total", "Items flagged (unsafe or could not judge).")
        self.tokens = Counter("guardreasoner_tokens_total", "Tokens reported by the engine.", ("kind",))
        self.queue_depth = Gauge("guardreasoner_queue_depth", "Items waiting for a batch.")
        self.queue_depth_max = Gauge("guardreasoner_queue_depth_max", "Highest queue depth seen since start.")
        self.queue_capacity = Gauge("guardreasoner_queue_capacity", "Most items allowed to wait (max_queue).")
        self.in_flight = Gauge("guardreasoner_items_in_flight", "Items inside a running engine call.")
        self.memory = Gauge("guardreasoner_request_memory_bytes", "Bytes of request bodies and images reserved now.")
        self.memory_peak = Gauge(
            "guardreasoner_request_memory_peak_bytes", "The most bytes of request bodies and images reserved at once."
        )
        self.memory_limit = Gauge("guardreasoner_request_memory_limit_bytes", "The memory budget (max_memory_bytes).")
        self.rejected = Counter(
            "guardreasoner_rejected_total", "Requests refused before judging, by reason.", ("reason",)
        )
        self.errors = Counter("guardreasoner_errors_total", "Failures by kind.", ("kind",))
        self.streams = Counter(
            "guardreasoner_streams_total", "Streamed judgements (/v1/guard/stream) by outcome.", ("outcome",)
        )
        self.streams_active = Gauge("guardreasoner_streams_active", "Streamed judgements running now.")
        self.cache_lookups = Counter(
            "guardreasoner_cache_lookups_total", "Verdict-cache lookups by result (hit or miss).", ("result",)
        )
        self.cache_stores = Counter("guardreasoner_cache_stores_total", "Generations written to the verdict cache.")
        self.cache_errors = Counter("guardreasoner_cache_errors_total", "Verdict-cache reads or writes that failed.")
        self.info = Gauge("guardreasoner_info", "The served model.", ("model", "backend", "version"))
        self.info.set(1, model, backend, version)
        self.queue_capacity.set(max_queue)

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)
        if depth > self.queue_depth_max.value():
            self.queue_depth_max.set(depth)

    def _all(self) -> list[_Metric]:
        return [
            self.http_requests,
            self.http_latency,
            self.batches,
            self.batch_size,
            self.batch_latency,
            self.items,
            self.flagged,
            self.tokens,
            self.queue_depth,
            self.queue_depth_max,
            self.queue_capacity,
            self.in_flight,
            self.memory,
            self.memory_peak,
            self.memory_limit,
            self.rejected,
            self.errors,
            self.streams,
            self.streams_active,
            self.cache_lookups,
            self.cache_stores,
            self.cache_errors,
            self.info,
        ]

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        lines: list[str] = []
        for metric in self._all():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
