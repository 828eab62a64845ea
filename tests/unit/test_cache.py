"""The verdict cache: keys, the two stores (bounded LRU in memory, SQLite shared by processes), and the guard's use
of it. No torch: the engine is the real prompt and parser around test doubles (``FakeBackend``,
``FunctionBackend`` with ``scored_generation`` for scores); the model tier checks the same on a real model.
"""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from guardreasoner_vl import Guard, InvalidInputError, ModelFamily
from guardreasoner_vl.backends import FakeBackend, FunctionBackend, scored_generation, verdict_output
from guardreasoner_vl.backends.base import Generation, GenerationRequest, SamplingParams
from guardreasoner_vl.cache import (
    MemoryCache,
    SqliteCache,
    cache_key,
    cacheable,
    decode_generation,
    encode_generation,
    open_cache,
)
from guardreasoner_vl.prompts import render_prompt
from guardreasoner_vl.scores import LogprobTrace

SAFE_OUT = verdict_output(ModelFamily.VL, request_harmful=False)


def key(**changes: object) -> str:
    args: dict = {
        "identity": {"engine": "e", "model": "m"},
        "family": "vl",
        "prompt": render_prompt(ModelFamily.VL, "hello"),
        "image": None,
        "params": SamplingParams(),
    }
    args.update(changes)
    return cache_key(**args)


def generation(text: str = SAFE_OUT, n: int = 0) -> Generation:
    trace = LogprobTrace(offsets=(0, 3, 7), candidates={1: {" harmful": -0.1 - n, " un": float("-inf")}})
    return Generation(text=text, prompt_tokens=10 + n, completion_tokens=3, finish_reason="stop", logprobs=trace)


# -- keys ------------------------------------------------------------------------------------------------


def test_every_input_of_the_key_changes_it() -> None:
    red, blue = Image.new("RGB", (28, 28), "red"), Image.new("RGB", (28, 28), "blue")
    base = key()
    variants = [
        key(identity={"engine": "e", "model": "other"}),
        key(identity={"engine": "other", "model": "m"}),
        key(identity={"engine": "e", "model": "m", "dtype": "bf16"}),
        key(family="text"),
        key(prompt=render_prompt(ModelFamily.VL, "hello!")),
        key(prompt=render_prompt(ModelFamily.VL, "hello", response="hi")),
        key(image=red, prompt=render_prompt(ModelFamily.VL, "hello", has_image=True)),
        key(params=SamplingParams(max_new_tokens=10)),
        key(params=SamplingParams(logprobs=True)),
        key(params=SamplingParams(temperature=0.5, seed=1)),
        key(params=SamplingParams(temperature=0.5, seed=2)),
        key(params=SamplingParams(top_p=0.9)),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert key() == base  # deterministic
    with_image = render_prompt(ModelFamily.VL, "hello", has_image=True)
    assert key(image=red, prompt=with_image) != key(image=blue, prompt=with_image)  # the pixels count
    assert key(image=red, prompt=with_image) != key(image=red.convert("RGBA"), prompt=with_image)  # so does the mode
    assert key(image=red, prompt=with_image) == key(image=red.copy(), prompt=with_image)  # not object identity


def test_sampling_without_a_seed_is_not_cacheable() -> None:
    assert cacheable(SamplingParams()) and cacheable(SamplingParams(temperature=1.0, seed=3))
    assert not cacheable(SamplingParams(temperature=1.0))


def test_generations_round_trip_with_infinite_logprobs() -> None:
    g = generation()
    back = decode_generation(encode_generation(g))
    assert back == g and math.isinf(back.logprobs.candidates[1][" un"])  # type: ignore[union-attr]
    assert decode_generation(encode_generation(Generation(text="x"))) == Generation(text="x")
    with pytest.raises(ValueError, match="error"):
        encode_generation(Generation(text="", error="boom"))
    with pytest.raises(ValueError):
        decode_generation(b"not json")


# -- the stores ------------------------------------------------------------------------------------------


def test_memory_cache_is_a_bounded_lru() -> None:
    cache = MemoryCache(max_entries=3, max_bytes=10_000)
    for i in range(3):
        cache.put(f"k{i}", generation(n=i))
    assert cache.get("k0") is not None  # k0 is now the most recently used
    cache.put("k3", generation(n=3))
    assert cache.get("k1") is None and cache.get("k0") is not None and len(cache) == 3
    one = len(encode_generation(generation()))
    small = MemoryCache(max_entries=100, max_bytes=one * 2 + 10)
    for i in range(5):
        small.put(f"k{i}", generation(n=i))
    assert len(small) == 2 and small.nbytes <= one * 2 + 10
    small.put("huge", generation(text="x" * 10 * one))  # larger than the whole cache: not stored
    assert small.get("huge") is None and len(small) == 2
    small.put("bad", Generation(text="", error="engine died"))  # errors are never cached
    assert small.get("bad") is None
    assert cache.stats.hits == 2 and cache.stats.misses == 1 and cache.stats.stores == 4


def test_sqlite_cache_round_trip_bounds_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.db"
    with SqliteCache(path, max_entries=4) as cache:
        for i in range(6):
            cache.put(f"k{i}", generation(n=i))
        assert cache.totals()[0] == 4 and cache.get("k0") is None and cache.get("k5") == generation(n=5)
        cache.put("bad", Generation(text="", error="engine died"))
        assert cache.get("bad") is None
    with SqliteCache(path, max_entries=4) as again:  # persisted
        assert again.get("k5") == generation(n=5)
        assert again.totals()[1] == sum(len(encode_generation(generation(n=i))) for i in range(2, 6))
    one = len(encode_generation(generation()))
    with SqliteCache(tmp_path / "bytes.db", max_bytes=one * 3) as by_bytes:
        for i in range(10):
            by_bytes.put(f"k{i}", generation(n=i))
        entries, total = by_bytes.totals()
        assert entries == 3 and total <= one * 3
    not_ours = tmp_path / "other.db"
    with sqlite3.connect(not_ours) as conn:
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('kind', 'something else')")
    with pytest.raises(InvalidInputError, match="not a verdict cache"):
        SqliteCache(not_ours)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InvalidInputError, match="cannot be used"):
        SqliteCache(garbage)
    assert isinstance(open_cache("memory"), MemoryCache) and isinstance(open_cache(str(path)), SqliteCache)
    with pytest.raises(InvalidInputError):
        open_cache("  ")


def _worker(path: str, worker: int, rounds: int, queue: multiprocessing.Queue) -> None:
    """One process of the concurrency test: writes its own keys and shared ones, reads everything back."""
    errors = []
    cache = SqliteCache(path, max_entries=10_000, timeout_s=60)
    for i in range(rounds):
        cache.put(f"w{worker}-{i}", generation(text=f"worker {worker} item {i}", n=i))
        cache.put(f"shared-{i}", generation(text=f"shared item {i}", n=i))  # every process writes the same
        got = cache.get(f"shared-{i}")
        if got is None or got.text != f"shared item {i}":
            errors.append(f"shared-{i}: {got}")
    for i in range(rounds):
        got = cache.get(f"w{worker}-{i}")
        if got is None or got.text != f"worker {worker} item {i}":
            errors.append(f"w{worker}-{i}: {got}")
    queue.put((worker, errors, cache.stats.errors))
    cache.close()


def test_sqlite_cache_is_safe_under_concurrent_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    rounds = 60
    workers = [context.Process(target=_worker, args=(path, w, rounds, queue)) for w in range(3)]
    for process in workers:
        process.start()
    reports = [queue.get(timeout=120) for _ in workers]
    for process in workers:
        process.join(30)
        assert process.exitcode == 0
    assert all(errors == [] and failed == 0 for _, errors, failed in reports), reports
    with SqliteCache(path) as cache:
        entries, total = cache.totals()
        assert entries == 3 * rounds + rounds  # every worker's own keys, plus the shared ones once
        with sqlite3.connect(path) as conn:  # the triggers' totals agree with the rows
            rows, size = conn.execute("SELECT COUNT(*), SUM(size) FROM entries").fetchone()
        assert (rows, size) == (entries, total)


def test_a_failing_store_is_a_logged_miss_not_a_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = SqliteCache(tmp_path / "c.db")
    engine = FakeBackend()
    guard = Guard(backend=engine, cache=cache)
    cache._conn.close()  # type: ignore[union-attr]  # a broken connection under the cache
    result = guard.moderate("How do I bake bread?")
    assert result.status == "ok" and len(engine.calls) == 1
    assert cache.stats.errors >= 1 and "verdict cache" in caplog.text


# -- the guard with a cache -----------------------------------------------------------------------------


def test_guard_sends_only_misses_and_results_are_identical() -> None:
    engine = FakeBackend(harmful_keywords=["bomb"])
    guard = Guard(backend=engine, cache=MemoryCache())
    plain = Guard(backend=FakeBackend(harmful_keywords=["bomb"]))
    first = guard.moderate_batch(["a bomb", "bread", {"text": "soup", "response": "a bomb"}])
    again = guard.moderate_batch(["bread", "new one", "a bomb", ""])
    assert [len(call) for call in engine.calls] == [3, 1]  # only "new one" went to the engine the second time
    assert again[3].status == "invalid_input"  # bad items still fail, before any lookup
    expected = plain.moderate_batch(["bread", "new one", "a bomb"])
    for cached, fresh in zip(again[:3], expected, strict=True):
        assert cached.model_dump(exclude={"usage"}) == fresh.model_dump(exclude={"usage"})
    assert first[0].flagged and first[2].response is not None and first[2].flagged
    assert guard.cache is not None and guard.cache.stats.hits == 2 and guard.cache.stats.misses == 4


def test_a_hit_is_never_served_across_settings() -> None:
    engine = FakeBackend()
    guard = Guard(backend=engine, cache=MemoryCache())
    guard.moderate("bread")
    guard.with_options(max_new_tokens=64).moderate("bread")
    guard.with_options(scores=False).moderate("bread")
    guard.with_options(temperature=0.7).moderate("bread")  # sampling without a seed: a new draw each time
    guard.with_options(temperature=0.7).moderate("bread")
    seeded = guard.with_options(temperature=0.7, seed=5)
    seeded.moderate("bread")
    seeded.moderate("bread")  # with a seed the draw is fixed: a hit
    other_engine = FakeBackend()
    Guard(backend=other_engine, family="text", cache=guard.cache).moderate("bread")  # another family
    assert len(engine.calls) == 6 and len(other_engine.calls) == 1


def test_policies_apply_to_a_hit() -> None:
    """The cache keeps the engine's generation: a threshold of a guard sharing the cache still decides."""
    calls = []

    def scored(request: GenerationRequest) -> Generation:
        calls.append(request)
        return scored_generation(SAFE_OUT, {"request": 0.4})

    cache = MemoryCache()
    lenient = Guard(backend=FunctionBackend(scored), cache=cache)
    strict = lenient.with_options(threshold=0.3)
    assert not lenient.moderate("borderline").flagged
    hit = strict.moderate("borderline")
    assert hit.flagged and hit.request_score == pytest.approx(0.4) and len(calls) == 1

    broken = Guard(backend=FunctionBackend(lambda r: "no verdict here"), cache=MemoryCache())
    assert broken.moderate("x").status == "parse_error"
    assert broken.with_options(on_parse_error="allow").moderate("x").flagged is False  # a hit, other policy


def test_engine_errors_are_never_cached() -> None:
    attempts = []

    def flaky(request: GenerationRequest) -> Generation:
        attempts.append(1)
        if len(attempts) == 1:
            return Generation(text="", error="device lost")
        return Generation(text=SAFE_OUT, finish_reason="stop")

    guard = Guard(backend=FunctionBackend(flaky), cache=MemoryCache())
    assert guard.moderate_batch(["bread"])[0].status == "engine_error"
    assert guard.moderate_batch(["bread"])[0].status == "ok"
    assert guard.moderate_batch(["bread"])[0].status == "ok"
    assert len(attempts) == 2


async def test_async_paths_use_the_cache(tmp_path: Path) -> None:
    engine = FakeBackend()
    guard = Guard(backend=engine, cache=tmp_path / "c.db")
    a = await guard.amoderate("bread")
    b = await guard.amoderate_batch(["bread", "soup"])
    events = [e async for e in guard.astream("soup")]
    assert len(engine.calls) == 2  # bread once, soup once
    assert a.raw_output == b[0].raw_output and [e.type for e in events] == ["reasoning", "result"]
    assert events[-1].result.model_dump(exclude={"usage"}) == b[1].model_dump(exclude={"usage"})
    cache = guard.cache
    await guard.aclose()
    assert cache is not None and cache._closed  # type: ignore[attr-defined]  # opened from a path: closed with the guard


def test_cache_option_errors() -> None:
    with pytest.raises(InvalidInputError, match="cache"):
        Guard(backend="fake", cache=123)  # type: ignore[arg-type]
    shared = MemoryCache()
    guard = Guard(backend="fake", cache=shared)
    guard.close()
    assert guard.cache is shared  # a cache object passed in belongs to the caller: not closed
    shared.put("k", Generation(text="x"))
    assert shared.get("k") == Generation(text="x")


@pytest.mark.parametrize("where", ["folder", "under-a-file", "unwritable"])
def test_a_cache_path_that_cannot_be_a_file_is_a_clear_input_error(tmp_path, where: str) -> None:
    from guardreasoner_vl.cache import open_cache
    from guardreasoner_vl.errors import InvalidInputError

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    path = {"folder": tmp_path, "under-a-file": blocker / "cache.sqlite", "unwritable": "/proc/no-such/cache.sqlite"}
    with pytest.raises(InvalidInputError, match="verdict cache"):
        open_cache(path[where])
