"""RemoteBackend streaming (``"stream": true`` server-sent events) against the OpenAI-compatible server of
``remote_chat_server`` on 127.0.0.1: real HTTP over a real socket, chunks and per-chunk log-probabilities in the
shape vLLM sends. It stands in for ``vllm serve`` of a VL model, which cannot run here; the vLLM tier streams
from the real ``vllm serve`` (text family).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from remote_chat_server import COMPLETION_TOKENS, HARMFUL_P, PROMPT_TOKENS, ChatServer

from guardreasoner_vl import BackendError, Guard, GuardResult
from guardreasoner_vl.backends.remote import RemoteBackend

VL = "yueliu1999/GuardReasoner-VL-3B"
TEXT = "yueliu1999/GuardReasoner-8B"


def guard(server: ChatServer, model: str = VL, **options: object) -> Guard:
    options.setdefault("backoff_s", 0.01)
    return Guard(backend=RemoteBackend(model, base_url=server.base_url, **options))  # type: ignore[arg-type]


def attempts(server: ChatServer, marker: str) -> int:
    return sum(n for text, n in server.recorder.attempts.items() if marker in text)


def same(streamed: GuardResult, expected: GuardResult) -> None:
    """Equal results; the stub writes its attempt number (2nd request for the same text) into the reasoning."""
    assert streamed.raw_output.replace("attempt 2", "attempt 1") == expected.raw_output
    drop = {"usage", "reasoning", "raw_output"}
    assert streamed.model_dump(exclude=drop) == expected.model_dump(exclude=drop)


@pytest.mark.parametrize("model", [VL, TEXT])
def test_stream_gives_deltas_then_what_moderate_gives(chat_server: ChatServer, model: str) -> None:
    with guard(chat_server, model) as g:
        expected = g.moderate("LOGPROBS how do I build a bomb?", response="No.")
        events = list(g.stream("LOGPROBS how do I build a bomb?", response="No."))
    sent = chat_server.recorder.requests[-1]["body"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert len(events) > 5 and "".join(e.text for e in events[:-1]) == events[-1].result.raw_output
    streamed = events[-1].result
    same(streamed, expected)
    assert streamed.request_score == pytest.approx(HARMFUL_P)  # per-chunk logprobs joined into one trace
    assert streamed.response_score == pytest.approx(HARMFUL_P)
    assert (streamed.usage.prompt_tokens, streamed.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)


def test_retries_before_the_first_byte_and_errors_after(chat_server: ChatServer) -> None:
    with guard(chat_server) as g:
        events = list(g.stream("FLAKY2 hello"))
        assert events[-1].result.status == "ok" and attempts(chat_server, "FLAKY2") == 3
        with pytest.raises(BackendError, match=r"HTTP 400.*maximum context length"):
            list(g.stream("BAD400 hello"))
        stream = g.stream("BREAKSTREAM hello")
        with pytest.raises(BackendError, match="broke after"):
            list(stream)
        assert attempts(chat_server, "BREAKSTREAM") == 1  # delivered text cannot be taken back: no retry
    with guard(chat_server, max_retries=0) as g, pytest.raises(BackendError, match="HTTP 500"):
        list(g.stream("FAIL500 hi"))


def wait_for(condition, timeout_s: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(condition())


def test_closing_a_stream_closes_the_connection(chat_server: ChatServer) -> None:
    with guard(chat_server) as g:
        stream = g.stream("SLOWSTREAM hello")
        next(stream)
        stream.close()
        assert wait_for(lambda: chat_server.recorder.streams_aborted == 1)  # the server saw the client leave


async def test_astream_native_async_and_cancellation(chat_server: ChatServer) -> None:
    g = guard(chat_server)
    expected = await g.amoderate("LOGPROBS how do I build a bomb?")
    events = [e async for e in g.astream("LOGPROBS how do I build a bomb?")]
    same(events[-1].result, expected)
    assert len(events) > 5

    async def first_then_leave() -> None:
        async for _ in g.astream("SLOWSTREAM again"):
            break

    await first_then_leave()
    assert await asyncio.to_thread(wait_for, lambda: chat_server.recorder.streams_aborted == 1)
    await g.aclose()


def test_a_stream_over_a_fleet_skips_a_dead_server(chat_server: ChatServer) -> None:
    import socket

    with socket.socket() as sock:  # a port with nothing listening: connection refused
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    backend = RemoteBackend(VL, base_url=[dead, chat_server.base_url], backoff_s=0.01, max_retries=2)
    with Guard(backend=backend) as g:
        for _ in range(3):  # whichever server a stream tries first, it ends on the live one
            events = list(g.stream("LOGPROBS hello"))
            assert events[-1].result.status == "ok" and len(events) > 5
    servers = {s["url"]: s for s in backend.servers()}
    assert servers[dead]["up"] is False and servers[chat_server.base_url]["failures"] == 0
