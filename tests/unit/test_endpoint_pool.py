"""EndpointPool: least outstanding requests, out of rotation with backoff, probes, one server unchanged."""

from __future__ import annotations

import pytest

from guardreasoner_vl import InvalidInputError
from guardreasoner_vl.backends.endpoints import EndpointPool, parse_base_urls
from guardreasoner_vl.backends.remote import RemoteBackend


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_base_urls_from_a_list_or_commas() -> None:
    assert parse_base_urls(["http://a/v1/", "https://b/v1"]) == ["http://a/v1", "https://b/v1"]
    assert parse_base_urls("http://a/v1,http://b/v1") == ["http://a/v1", "http://b/v1"]
    for bad, message in (("", "at least one"), ("ftp://a", "http:// or https://"), ("http://a,http://a/", "twice")):
        with pytest.raises(InvalidInputError, match=message):
            parse_base_urls(bad)
    backend = RemoteBackend("yueliu1999/GuardReasoner-VL-3B", base_url="http://a:1/v1, http://b:2/v1")
    assert backend.base_urls == ["http://a:1/v1", "http://b:2/v1"] and backend.base_url == "http://a:1/v1"


def test_least_outstanding_requests_with_ties_in_turn() -> None:
    pool = EndpointPool(["http://a", "http://b", "http://c"])
    a, b, c = pool.endpoints
    held = [pool.acquire() for _ in range(3)]
    assert {e.url for e in held} == {"http://a", "http://b", "http://c"}
    pool.release(b)  # b is the least busy now
    assert pool.acquire() is b
    pool.release(a)
    pool.release(c)
    assert {pool.acquire().url for _ in range(2)} == {"http://a", "http://c"}
    assert [e.sent for e in pool.endpoints] == [2, 2, 2]


def test_a_failed_server_leaves_the_rotation_then_a_probe_brings_it_back() -> None:
    clock = Clock()
    pool = EndpointPool(["http://a", "http://b"], backoff_s=1.0, max_backoff_s=3.0, clock=clock)
    a, b = pool.endpoints
    pool.failed(a)
    assert not a.up and pool.has_alternative(a) and not pool.has_alternative(b)
    assert all(pool.acquire() is b for _ in range(4))  # out of rotation
    assert pool.acquire(avoid=b) is b  # nothing else healthy: the healthy one still serves
    assert pool.due_probe() is None  # backoff not over
    clock.now += 1.0
    assert pool.due_probe() is a and pool.due_probe() is None  # one probe at a time
    pool.failed(a)  # the probe failed: backoff doubles (1, 2, then capped at 3)
    assert a.down_until == clock.now + 2.0
    pool.failed(a)
    assert a.down_until == clock.now + 3.0
    clock.now += 3.0
    assert pool.due_probe() is a
    pool.succeeded(a)
    assert a.up and pool.acquire(avoid=b) is a


def test_all_down_tries_the_soonest_back() -> None:
    clock = Clock()
    pool = EndpointPool(["http://a", "http://b"], backoff_s=1.0, clock=clock)
    a, b = pool.endpoints
    pool.failed(a)
    pool.failed(a)  # a is out for 2 s, b for 1 s
    pool.failed(b)
    assert pool.acquire() is b


def test_a_single_server_never_leaves_the_rotation() -> None:
    pool = EndpointPool(["http://only"])
    only = pool.endpoints[0]
    pool.failed(only)
    assert only.up and pool.due_probe() is None and pool.acquire(avoid=only) is only
