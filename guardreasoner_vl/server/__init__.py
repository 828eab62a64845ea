"""An OpenAI-compatible moderation server backed by a :class:`~guardreasoner_vl.Guard` (``[server]`` extra).

Endpoints: ``POST /v1/moderations`` (OpenAI's schema), ``POST /v1/guard`` (the full
:class:`~guardreasoner_vl.GuardResult`), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus).
Concurrent requests are micro-batched into one engine call; see :mod:`guardreasoner_vl.server.batcher`.

Example:
    >>> from guardreasoner_vl import Guard
    >>> from guardreasoner_vl.server import ServerSettings, create_app
    >>> app = create_app(Guard(backend="fake"), settings=ServerSettings(max_batch_size=4))  # doctest: +SKIP

Importing this package is cheap: FastAPI is imported when :func:`create_app` or :func:`serve_in_thread` is
first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardreasoner_vl.server.settings import SERVER_API_KEY_ENV, ServerSettings

if TYPE_CHECKING:
    from guardreasoner_vl.server.app import create_app
    from guardreasoner_vl.server.runner import serve_in_thread

__all__ = ["SERVER_API_KEY_ENV", "ServerSettings", "create_app", "serve_in_thread"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from guardreasoner_vl.server.app import create_app

        return create_app
    if name == "serve_in_thread":
        from guardreasoner_vl.server.runner import serve_in_thread

        return serve_in_thread
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
