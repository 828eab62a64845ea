"""Fixtures of the remote backend's tests: the fake OpenAI-compatible server of ``remote_chat_server``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from remote_chat_server import ChatServer, Recorder, make_chat_app


@pytest.fixture(scope="session")
def _chat_server() -> Iterator[ChatServer]:
    from guardreasoner_vl.server.runner import serve_in_thread

    recorder = Recorder()
    with serve_in_thread(make_chat_app(recorder)) as url:
        yield ChatServer(url, recorder)


@pytest.fixture
def chat_server(_chat_server: ChatServer) -> ChatServer:
    _chat_server.recorder.reset()
    return _chat_server
