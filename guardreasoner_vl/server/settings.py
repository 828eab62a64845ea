"""Settings of the moderation server (imports nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.moderation import CategoryScores

__all__ = ["SERVER_API_KEY_ENV", "ServerSettings"]

SERVER_API_KEY_ENV = "GUARDREASONER_VL_SERVER_API_KEY"
"""Environment variable ``guardreasoner-vl serve`` reads for the bearer token when ``--api-key`` is not given."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How the server batches, bounds and protects its work.

    Attributes:
        max_batch_size: most items per engine call.
        max_wait_ms: how long the first item of a batch waits for others.
        max_queue: most items waiting for a batch; beyond it requests get HTTP 429.
        workers: engine calls that may run at once (keep 1 for a local engine; raise it for ``remote``).
        max_inputs: most inputs in one ``/v1/moderations`` request (a list of strings); at most ``max_queue``.
        max_body_bytes: largest request body; larger bodies get HTTP 413.
        max_image_bytes: largest image (decoded bytes); larger images get HTTP 413.
        max_memory_bytes: most bytes of request bodies and decoded images held at once, by all requests
            together (see :mod:`guardreasoner_vl.server.memory`); a request that would never fit gets HTTP 413,
            one that does not fit now gets HTTP 429.
        api_key: when set, every endpoint but ``/health`` needs the key, sent as ``Authorization: Bearer <key>``
            or as ``x-api-key: <key>`` (what LiteLLM's proxy sends).
        allow_image_urls: fetch ``http(s)`` image URLs given by clients (off: only ``data:`` URLs and base64;
            turning it on lets clients make the server fetch URLs).
        model_name: the ``model`` reported in responses (default: the guard's model id).
        close_guard: close the guard (free the model) when the server stops.
        retry_after_s: the ``Retry-After`` header sent with 429 and 503 answers.
        header_timeout_s: a connection must deliver a request's headers within this many seconds of opening
            (or of its previous answer); a slower client (slowloris) is disconnected.
        body_timeout_s: the whole request body must arrive within this many seconds of the headers; a slower
            one gets HTTP 408 and the connection is closed.
        keep_alive_timeout_s: an idle keep-alive connection is closed after this many seconds.
        max_connections: most open connections (and running requests); beyond it new requests get HTTP 503.
        max_header_bytes: largest request line plus headers; larger ones are refused by the HTTP layer.
        violation_message: the ``blocked_reason`` of the LiteLLM guardrail endpoint (``{stage}`` becomes
            ``request`` or ``response``; default: the integrations' standard refusal).
        category_scores: what ``/v1/moderations`` puts in ``category_scores``: ``"harm"`` (the harm score under
            every category, null without a score) or ``"none"`` (always null); see
            :mod:`guardreasoner_vl.moderation`.
        max_streams: most ``/v1/guard/stream`` requests running at once; beyond it HTTP 429. Streams do not go
            through the micro-batcher (each is one engine call of its own, sharing the engine with the batches).
        playground: serve the playground page at ``GET /`` (off by default).
    """

    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 256
    workers: int = 1
    max_inputs: int = 64
    max_body_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024
    api_key: str | None = None
    allow_image_urls: bool = False
    model_name: str | None = None
    close_guard: bool = True
    retry_after_s: int = 1
    max_memory_bytes: int = 2 * 1024 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_timeout_s: int = 5
    max_connections: int = 128
    max_header_bytes: int = 16 * 1024
    violation_message: str | None = None
    category_scores: CategoryScores = "harm"
    max_streams: int = 16
    playground: bool = False

    def __post_init__(self) -> None:
        if self.category_scores not in ("harm", "none"):
            raise InvalidInputError(f"category_scores must be 'harm' or 'none', got {self.category_scores!r}")
        for name in (
            "max_batch_size",
            "max_queue",
            "workers",
            "max_inputs",
            "max_body_bytes",
            "max_image_bytes",
            "max_memory_bytes",
            "keep_alive_timeout_s",
            "max_connections",
            "max_header_bytes",
            "max_streams",
        ):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise InvalidInputError("max_wait_ms must be 0 or more")
        if self.max_inputs > self.max_queue:
            raise InvalidInputError(
                f"max_inputs ({self.max_inputs}) cannot exceed max_queue ({self.max_queue}): such a request "
                "could never be queued"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidInputError("api_key is empty; pass None to disable authentication")
        for name in ("header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name} must be more than 0 seconds, got {getattr(self, name)}")
        if 2 * self.max_body_bytes > self.max_memory_bytes:
            raise InvalidInputError(
                f"max_memory_bytes ({self.max_memory_bytes:,}) must be at least twice max_body_bytes "
                f"({self.max_body_bytes:,}): a body and its parsed JSON are both held while a request runs"
            )
        if self.retry_after_s < 0:
            raise InvalidInputError("retry_after_s must be 0 or more")
