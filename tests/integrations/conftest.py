"""Fixtures of the integration tests (helpers live in ``integration_helpers.py``)."""

from __future__ import annotations

import pytest
from integration_helpers import AsyncFakeBackend, FakeOpenAIServer

from guardreasoner_vl import Guard


@pytest.fixture
def backend() -> AsyncFakeBackend:
    """A keyword guard engine (real prompt and parser) that records its calls."""
    return AsyncFakeBackend(harmful_keywords=["bomb", "poison"])


@pytest.fixture
def guard(backend: AsyncFakeBackend) -> Guard:
    return Guard(backend=backend)


@pytest.fixture
def server() -> FakeOpenAIServer:
    return FakeOpenAIServer()
