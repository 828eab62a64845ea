"""The FastAPI application: ``create_app(guard, settings=...)``.

Endpoints:

* ``POST /v1/moderations`` -- OpenAI's moderation request and response. ``input`` is a string, a list of
  strings (one result each, in order) or a list of content parts ``{"type": "text", "text": ...}`` and
  ``{"type": "image_url", "image_url": {"url": ...}}`` (one result for the whole: text parts are joined with
  ``"\\n"``, several images are merged side by side). ``model`` is accepted and ignored (clients often send
  ``omni-moderation-latest``); the response names the served model. Results come from
  :func:`guardreasoner_vl.moderation.to_openai_moderation` (the mapping is documented there: ``flagged`` is
  the guard's, no category is claimed, ``category_scores`` hold the harm score or null, never an invented
  number; our ``guardreasoner`` field carries the verdicts
  and reasoning).
* ``POST /v1/guard`` -- ``{"text", "image", "response"}`` -> the full :class:`~guardreasoner_vl.GuardResult`.
* ``POST /v1/guard/stream`` -- the same body; the answer is ``text/event-stream`` (server-sent events):
  ``event: reasoning`` with ``{"text": ...}`` for each piece of the model's output as it is generated, then one
  ``event: result`` with the full ``GuardResult`` (what ``/v1/guard`` answers), or ``event: error`` with
  ``{"error": {"message", "type", "code"}}`` when the engine fails midway. Auth, body and memory limits and
  input validation are those of ``/v1/guard``, and bad input is an HTTP error before the stream starts. Streams
  do not go through the micro-batcher (each is one engine call, sharing the engine with the batches), at most
  ``max_streams`` at once (429 beyond). A client that disconnects stops the generation: the engine stops at
  its next step and is free for the next request.
* ``GET /`` -- the playground page (:mod:`guardreasoner_vl.server.playground`), only with ``playground=True``.
* ``POST /beta/litellm_basic_guardrail_api`` -- LiteLLM's Generic Guardrail API
  (:mod:`guardreasoner_vl.integrations.litellm`), behind the same key, body limit, memory budget and batcher.
* ``GET /v1/models``, ``GET /health`` (never needs the API key), ``GET /metrics`` (Prometheus text).

The API key (when set) is accepted as ``Authorization: Bearer <key>`` or as ``x-api-key: <key>`` (what
LiteLLM's proxy sends), compared in constant time.

In a ``/v1/moderations`` request with a list of inputs, an input that cannot be prepared (bad image, text too
long ...) is that input's result, with ``status="invalid_input"`` and ``flagged=true``; the other inputs are
judged. A request with one input answers 400 for it.

Memory is bounded in bytes, not requests (:mod:`guardreasoner_vl.server.memory`): bodies and decoded images
of all requests together stay under ``max_memory_bytes``.

Images are ``data:`` URLs or bare base64 (or ``http(s)`` URLs when ``allow_image_urls`` is set); a string is
never read as a server file path.

Status codes (errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``):
400 bad input (malformed or too deeply nested JSON included), 401 missing/wrong API key, 404/405 unknown
route or method, 408 body too slow, 413 body or image too large or a request needing more memory than the
whole budget, 429 queue or memory budget full now (with ``Retry-After``), 502 the engine failed on an input
(``code="engine_error"``; clients such as ``openai`` retry it), 503 shutting down or too many connections,
500 anything unexpected (the connection stays usable). A model output that could not be parsed is *not* an
HTTP error: it is a result with ``status="parse_error"``, flagged under the default fail-closed policy.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from guardreasoner_vl.errors import BackendError, GuardError, InvalidInputError, ParseError, require
from guardreasoner_vl.guard import Guard, PreparedItem
from guardreasoner_vl.moderation import to_openai_moderation
from guardreasoner_vl.server.batcher import BatcherClosedError, MicroBatcher, QueueFullError
from guardreasoner_vl.server.memory import (
    MemoryBudget,
    MemoryOverLimit,
    MemoryReservation,
    estimate_prepare_bytes,
    prepared_nbytes,
)
from guardreasoner_vl.server.metrics import ServerMetrics
from guardreasoner_vl.server.settings import ServerSettings
from guardreasoner_vl.streaming import ReasoningDelta
from guardreasoner_vl.types import GuardResult, ModerationItem

require("fastapi", "server", feature="the moderation server")

from fastapi import APIRouter, FastAPI, Request  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse  # noqa: E402
from starlette.background import BackgroundTask  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

__all__ = ["APIError", "GuardRequest", "create_app"]

logger = logging.getLogger(__name__)

LITELLM_PATH = "/beta/litellm_basic_guardrail_api"
"""LiteLLM's Generic Guardrail API path (the same as ``integrations.litellm.GUARDRAIL_PATH``)."""
STREAM_PATH = "/v1/guard/stream"
ENDPOINTS = ("/v1/moderations", "/v1/guard", STREAM_PATH, LITELLM_PATH, "/v1/models", "/health", "/metrics", "/")


# -- request schemas ---------------------------------------------------------------------------------


class GuardRequest(BaseModel):
    """Body of ``POST /v1/guard``."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    """The user's request."""
    image: str | list[str] | None = None
    """A ``data:`` URL or base64 image, or a list of them (merged side by side)."""
    response: str | None = None
    """The AI assistant's response to judge as well."""


# -- errors ------------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply to be a moderation request") from None
    except ValueError as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {_json_type(data)}")
    return data


_PART_SHAPES = '{"type": "text", "text": "..."} or {"type": "image_url", "image_url": {"url": "data:..."}}'


def _part(part: Any, index: int) -> tuple[Literal["text", "image"], str]:
    """One content part of a multimodal moderation input: ``("text", text)`` or ``("image", url)``."""
    where = f"input[{index}]"
    if not isinstance(part, dict):
        raise APIError(400, f"{where}: a part must be {_PART_SHAPES}", param=where)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise APIError(400, f"{where}: a text part needs a string 'text'", param=f"{where}.text")
        return "text", text
    if kind == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
        if not isinstance(url, str):
            raise APIError(
                400, f"{where}: an image part needs 'image_url': {{'url': '...'}}", param=f"{where}.image_url"
            )
        return "image", url
    raise APIError(400, f"{where}: unsupported part type {kind!r}; a part must be {_PART_SHAPES}", param=where)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "invalid request body: " + "; ".join(parts)


def _too_large(size: int, limit: int) -> str:
    return f"image is about {size:,} bytes, more than the limit of {limit:,} bytes"


# -- the app -----------------------------------------------------------------------------------------


class _State:
    """What the handlers share."""

    def __init__(self, guard: Guard, settings: ServerSettings) -> None:
        from guardreasoner_vl import __version__

        limits = replace(
            guard.limits,
            allow_urls=settings.allow_image_urls,  # the server's setting decides, whatever the guard's was
            max_image_bytes=min(guard.limits.max_image_bytes, settings.max_image_bytes),  # downloads included
        )
        self.owner = guard  # the guard given to create_app (it owns the engine and any cache it opened)
        if limits != guard.limits:
            guard = guard.with_options(limits=limits)
        self.guard = guard
        self.settings = settings
        self.model_name = settings.model_name or guard.model_id
        self.metrics = ServerMetrics(
            model=self.model_name, backend=guard.backend.name, max_queue=settings.max_queue, version=__version__
        )
        self.batcher: MicroBatcher[PreparedItem, GuardResult] = MicroBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            workers=settings.workers,
            metrics=self.metrics,
        )
        self.memory = MemoryBudget(settings.max_memory_bytes)
        self.streams = 0

    async def _run_batch(self, items: list[PreparedItem]) -> list[GuardResult]:
        try:  # prepared once, in prepare(): the image is not decoded nor the prompt rendered again
            results = await self.guard.arun_prepared(items)
        except ParseError as exc:  # on_parse_error="raise": every result is still there
            if exc.results is None:
                raise
            results = exc.results
        self.count(results)
        return results

    def count(self, results: list[GuardResult]) -> None:
        """Count judged items in the metrics (batched and streamed alike)."""
        for result in results:
            self.metrics.items.inc(result.status)
            if result.flagged:
                self.metrics.flagged.inc()
            if result.usage.prompt_tokens:
                self.metrics.tokens.inc("prompt", amount=result.usage.prompt_tokens)
            if result.usage.completion_tokens:
                self.metrics.tokens.inc("completion", amount=result.usage.completion_tokens)

    def sync_cache_metrics(self) -> None:
        """Copy the verdict cache's counters into the metrics (at each scrape)."""
        cache = self.guard.cache
        if cache is None:
            return
        stats = cache.stats
        self.metrics.cache_lookups.sync(stats.hits, "hit")
        self.metrics.cache_lookups.sync(stats.misses, "miss")
        self.metrics.cache_stores.sync(stats.stores)
        self.metrics.cache_errors.sync(stats.errors)

    # -- streams ----------------------------------------------------------------------------------

    def open_stream(self) -> _StreamSlot:
        """A place among the ``max_streams`` running streams, or HTTP 429."""
        if self.streams >= self.settings.max_streams:
            self.metrics.rejected.inc("streams_full")
            raise APIError(
                429,
                f"the server is streaming {self.streams} judgements already (max_streams); retry after a short wait",
                type="rate_limit_error",
                code="streams_full",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        self.streams += 1
        self.metrics.streams_active.set(self.streams)
        return _StreamSlot(self)

    async def sse(self, item: PreparedItem, slot: _StreamSlot) -> AsyncGenerator[bytes, None]:
        """The server-sent events of one streamed judgement (see the module docs)."""
        source = self.guard.astream_prepared(item)
        outcome = "disconnected"  # unless the stream reaches its end
        try:
            try:
                async for event in source:
                    if isinstance(event, ReasoningDelta):
                        yield _sse("reasoning", {"text": event.text})
                    else:
                        self.count([event.result])
                        outcome = "completed"
                        yield _sse("result", event.result.model_dump(mode="json"))
            except BackendError as exc:
                outcome = "error"
                self.metrics.items.inc("engine_error")
                self.metrics.errors.inc("engine")
                yield _sse_error(f"the guard's engine failed: {exc}", "server_error", "engine_error")
            except ParseError as exc:  # not with the server's policies; kept for guards built by hand
                outcome = "error"
                yield _sse_error(str(exc), "server_error", "parse_error")
            except Exception as exc:
                outcome = "error"
                self.metrics.errors.inc("internal")
                logger.exception("a streamed judgement failed")
                yield _sse_error(f"internal error: {type(exc).__name__}: {exc}", "server_error", None)
        finally:
            await source.aclose()  # a disconnected client: the engine stops now, not when this is collected
            slot.release(outcome)

    # -- request helpers --------------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        """Check the API key, sent as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``."""
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        offered = (token.strip() if scheme.lower() == "bearer" else "", request.headers.get("x-api-key", "").strip())
        expected = key.encode()
        matched = False
        for candidate in offered:  # both compared, each in constant time
            matched |= hmac.compare_digest(candidate.encode(), expected)
        if not matched:
            self.metrics.rejected.inc("unauthorized")
            raise APIError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def reserve(self) -> MemoryReservation:
        """This request's share of the memory budget (released when the request is answered)."""
        return MemoryReservation(self.memory)

    def memory_full(self, exc: MemoryOverLimit, *, close: bool = False) -> APIError:
        """413 when the request could never fit in the budget, 429 when other requests hold it now."""
        mib = 1024 * 1024
        headers = {"Connection": "close"} if close else {}
        if not exc.fits_at_all:
            self.metrics.rejected.inc("memory_too_large")
            return APIError(
                413,
                f"this request needs about {exc.needed / mib:,.0f} MiB of memory (its body and decoded images), "
                f"more than the server's whole budget of {exc.limit / mib:,.0f} MiB; send fewer or smaller images",
                code="request_too_large",
                headers=headers or None,
            )
        self.metrics.rejected.inc("memory_full")
        return APIError(
            429,
            f"the server is at capacity ({exc.used / mib:,.0f} of {exc.limit / mib:,.0f} MiB of request memory in "
            f"use, this request needs about {exc.needed / mib:,.0f} MiB); retry after a short wait",
            type="rate_limit_error",
            code="memory_full",
            headers={"Retry-After": str(self.settings.retry_after_s), **headers},
        )

    async def read_body(self, request: Request, memory: MemoryReservation) -> bytes:
        """The body, within ``max_body_bytes``, ``body_timeout_s`` and the memory budget.

        Twice the body's size is reserved: the bytes and what JSON parsing makes of them live as long as the
        request.
        """
        limit = self.settings.max_body_bytes
        close = {"Connection": "close"}  # the rest of the body is not read: the connection cannot be reused
        declared = request.headers.get("content-length")
        if declared and declared.isdigit():
            if int(declared) > limit:
                self.metrics.rejected.inc("body_too_large")
                raise APIError(
                    413,
                    f"request body is {int(declared):,} bytes, more than the limit of {limit:,}",
                    code="body_too_large",
                    headers=close,
                )
            try:
                memory.add(2 * int(declared))
            except MemoryOverLimit as exc:
                raise self.memory_full(exc, close=True) from None
            declared_size = int(declared)
        else:
            declared_size = None
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        self.metrics.rejected.inc("body_too_large")
                        raise APIError(
                            413,
                            f"request body is more than the limit of {limit:,} bytes",
                            code="body_too_large",
                            headers=close,
                        )
                    if declared_size is None:
                        memory.add(2 * len(chunk))
                    chunks.append(chunk)
        except TimeoutError:
            self.metrics.rejected.inc("body_timeout")
            raise APIError(
                408,
                f"the request body did not arrive within {self.settings.body_timeout_s:g} s",
                code="body_timeout",
                headers=close,
            ) from None
        except MemoryOverLimit as exc:
            raise self.memory_full(exc, close=True) from None
        return b"".join(chunks)

    def image_source(self, value: str, *, param: str) -> str | bytes:
        """A client's image string -> what the guard loads (never a file path)."""
        value = value.strip()
        limit = self.settings.max_image_bytes
        if value.startswith(("http://", "https://")):
            if not self.settings.allow_image_urls:
                raise APIError(
                    400,
                    "this server does not fetch image URLs; send the image as a data: URL "
                    "(data:image/png;base64,...) or as base64",
                    param=param,
                    code="image_url_not_allowed",
                )
            return value
        if value.startswith("data:"):
            comma = value.find(",")
            if comma < 0:
                raise APIError(400, "malformed data: URL (expected data:<mime>;base64,<data>)", param=param)
            size = (len(value) - comma - 1) * 3 // 4
            if size > limit:
                self.metrics.rejected.inc("image_too_large")
                raise APIError(413, _too_large(size, limit), param=param, code="image_too_large")
            return value
        if len(value) * 3 // 4 > limit:
            self.metrics.rejected.inc("image_too_large")
            raise APIError(413, _too_large(len(value) * 3 // 4, limit), param=param, code="image_too_large")
        try:
            return base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            raise APIError(
                400,
                "an image must be a data: URL (data:image/png;base64,...) or base64-encoded image bytes",
                param=param,
            ) from None

    async def prepare(
        self, items: list[ModerationItem], *, param: str | None, memory: MemoryReservation, isolate: bool = False
    ) -> list[PreparedItem | GuardResult]:
        """Validate, load and render every item now, once, off the event loop, within the memory budget.

        Before any image is decoded, the request reserves what preparing its images may hold at the peak
        (read from their headers); once an item is prepared, only its prepared image stays reserved.

        With ``isolate`` (a list of inputs), an item that fails is that item's ``invalid_input`` result and
        the others go on; without it (one input), its failure is the request's 400.
        """
        if not self.batcher.has_room(len(items)):
            raise self.queue_full()
        limits = self.guard.limits

        def work() -> list[PreparedItem | GuardResult]:
            estimates = [estimate_prepare_bytes(item.image, limits) for item in items]
            memory.add(sum(estimates))
            out: list[PreparedItem | GuardResult] = []
            for item, estimate in zip(items, estimates, strict=True):
                try:
                    prepared = self.guard.prepare_item(item)
                except Exception as exc:
                    memory.give_back(estimate)
                    message = _prepare_error(exc)
                    if not isolate:
                        raise APIError(400, f"{param}: {message}" if param else message, param=param) from None
                    self.metrics.items.inc("invalid_input")
                    out.append(
                        GuardResult(flagged=True, status="invalid_input", error=message, model=self.guard.model_id)
                    )
                    continue
                held = prepared_nbytes(prepared.request.image)
                if held > estimate:
                    memory.add(held - estimate)
                else:
                    memory.give_back(estimate - held)
                out.append(prepared)
            return out

        try:
            return await asyncio.to_thread(work)
        except MemoryOverLimit as exc:
            raise self.memory_full(exc) from None

    def queue_full(self) -> APIError:
        self.metrics.rejected.inc("queue_full")
        return APIError(
            429,
            f"the server is at capacity ({self.settings.max_queue} items waiting); retry after a short wait",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(self.settings.retry_after_s)},
        )

    async def run(self, outcomes: list[PreparedItem | GuardResult]) -> list[GuardResult]:
        """Judge the prepared items through the batcher; items that failed preparation keep their result."""
        items = [o for o in outcomes if isinstance(o, PreparedItem)]
        if not items:
            return [o for o in outcomes if isinstance(o, GuardResult)]
        try:
            results = iter(await self.batcher.submit(items))
        except QueueFullError:
            raise self.queue_full() from None
        except BatcherClosedError as exc:
            raise APIError(
                503,
                str(exc),
                type="server_error",
                code="unavailable",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            ) from None
        except Exception as exc:
            self.metrics.errors.inc("internal")
            logger.exception("moderation failed")
            raise APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error") from None
        return [next(results) if isinstance(o, PreparedItem) else o for o in outcomes]

    async def judge(self, outcomes: list[PreparedItem | GuardResult]) -> list[GuardResult]:
        """:meth:`run`, with an engine failure answered as HTTP 502."""
        results = await self.run(outcomes)
        failed = [r for r in results if r.status == "engine_error"]
        if failed:
            self.metrics.errors.inc("engine", amount=len(failed))
            raise APIError(
                502, f"the guard's engine failed: {failed[0].error}", type="server_error", code="engine_error"
            )
        return results


class _StreamSlot:
    """One running stream's hold on the server: its place among ``max_streams`` and its memory reservation,
    released once (by the stream's end, or by the response's background task when the client left first)."""

    def __init__(self, state: _State) -> None:
        self._state = state
        self.memory: MemoryReservation | None = None
        self._released = False

    def release(self, outcome: str = "disconnected") -> None:
        if self._released:
            return
        self._released = True
        state = self._state
        state.streams -= 1
        state.metrics.streams_active.set(state.streams)
        state.metrics.streams.inc(outcome)
        if self.memory is not None:
            self.memory.close()


def _sse(event: str, data: Any) -> bytes:
    """One server-sent event (JSON data on one line: ``json.dumps`` escapes every newline)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _sse_error(message: str, type: str, code: str | None) -> bytes:
    return _sse("error", {"error": {"message": message, "type": type, "param": None, "code": code}})


def _prepare_error(exc: Exception) -> str:
    cause = exc.__cause__
    wrapped = isinstance(cause, Exception) and not isinstance(cause, GuardError)
    if isinstance(exc, InvalidInputError) and wrapped and str(exc) == f"{type(cause).__name__}: {cause}":
        exc = cause  # type: ignore[assignment]  # Guard.prepare wrapped an unexpected failure: report what really failed
    elif isinstance(exc, InvalidInputError):
        return str(exc)
    logger.warning("preparing an input failed", exc_info=exc)
    return f"the input could not be prepared ({type(exc).__name__}: {exc})"


class _BatchedGuard:
    """What the LiteLLM handlers need of a guard, served by the server's memory budget and batcher."""

    def __init__(self, state: _State, memory: MemoryReservation) -> None:
        self._state = state
        self._memory = memory
        self.model_id = state.guard.model_id

    async def amoderate_batch(self, items: list[dict[str, Any]]) -> list[GuardResult]:
        outcomes = await self._state.prepare(
            [ModerationItem(**item) for item in items], param=None, memory=self._memory, isolate=True
        )
        return await self._state.run(outcomes)


class _MetricsMiddleware:
    """Counts every HTTP request by endpoint and status, and times it (pure ASGI: no body buffering).

    It is also the safety net for an unexpected exception: the client gets a 500 in OpenAI's shape and the
    connection stays usable (Starlette's own handler for ``Exception`` re-raises after answering, and uvicorn
    then closes the keep-alive connection).
    """

    def __init__(self, app: Any, *, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        started = [False]

        async def send_tracked(message: Any) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send_wrapper(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started[0]:
                raise  # half an answer is out: only closing the connection can tell the client
            self.metrics.errors.inc("internal")
            logger.error("unexpected error answering %s", path, exc_info=exc)
            answer = APIError(500, f"internal error: {type(exc).__name__}", type="server_error").response()
            await answer(scope, receive, send_wrapper)
        finally:
            self.metrics.http_requests.inc(endpoint, str(status[0]))
            self.metrics.http_latency.observe(time.perf_counter() - start, endpoint)


def _litellm_router(state: _State) -> APIRouter:
    """LiteLLM's Generic Guardrail API on the main app: the same key, body limit, memory budget and batcher."""
    from guardreasoner_vl.integrations.litellm import ahandle_guardrail_request

    router = APIRouter()

    @router.post(LITELLM_PATH, summary="LiteLLM Generic Guardrail API")
    async def litellm_guardrail(request: Request) -> JSONResponse:
        state.authorize(request)
        with state.reserve() as memory:
            payload = _json_object(await state.read_body(request, memory))
            guard: Any = _BatchedGuard(state, memory)
            try:
                answer = await ahandle_guardrail_request(
                    guard, payload, violation_message=state.settings.violation_message
                )
            except InvalidInputError as exc:
                raise APIError(400, str(exc)) from None
        return JSONResponse(answer)

    return router


def create_app(guard: Guard, *, settings: ServerSettings | None = None) -> FastAPI:
    """Build the FastAPI app serving ``guard``.

    Args:
        guard: the :class:`~guardreasoner_vl.Guard` that judges every request (closed when the app stops,
            unless ``settings.close_guard`` is False).
        settings: batching, limits and auth (:class:`ServerSettings`).

    Returns:
        The app; run it with ``uvicorn.run(app, host="127.0.0.1", port=8000)`` or
        :func:`guardreasoner_vl.server.serve_in_thread`.
    """
    from guardreasoner_vl import __version__

    settings = settings or ServerSettings()
    state = _State(guard, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.batcher.start()
        try:
            yield
        finally:
            await state.batcher.stop()
            if settings.close_guard:
                aclose = getattr(state.guard.backend, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:  # pragma: no cover - best effort at shutdown
                        logger.exception("closing the engine failed")
                state.guard.close()
                state.owner.close()  # with_options made state.guard a clone: the owner closes its cache too

    app = FastAPI(
        title="guardreasoner-vl moderation server",
        version=__version__,
        description="OpenAI-compatible /v1/moderations backed by a GuardReasoner(-VL) guard.",
        lifespan=lifespan,
    )
    app.state.guard_state = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code, headers=getattr(exc, "headers", None)).response()

    app.add_middleware(_MetricsMiddleware, metrics=state.metrics)

    @app.post("/v1/moderations", summary="OpenAI-compatible moderation")
    async def moderations(request: Request) -> JSONResponse:
        state.authorize(request)
        with state.reserve() as memory:
            return await _moderations(await state.read_body(request, memory), memory)

    async def _moderations(body: bytes, memory: MemoryReservation) -> JSONResponse:
        data = _json_object(body)
        if "input" not in data:
            raise APIError(400, "missing 'input': give a string, a list of strings or a list of parts", param="input")
        if data.get("model") is not None and not isinstance(data["model"], str):
            raise APIError(400, "'model' must be a string", param="model")
        value = data["input"]
        raw: list[ModerationItem]
        if isinstance(value, str):
            raw = [ModerationItem(text=value)]
        elif not isinstance(value, list):
            raise APIError(
                400,
                f"'input' must be a string, a list of strings or a list of parts, got {_json_type(value)}",
                param="input",
            )
        elif not value:
            raise APIError(400, "input is empty: give a string, a list of strings or a list of parts", param="input")
        elif all(isinstance(v, str) for v in value):
            if len(value) > settings.max_inputs:
                raise APIError(
                    400, f"{len(value)} inputs given, at most {settings.max_inputs} per request", param="input"
                )
            raw = [ModerationItem(text=v) for v in value]
        elif any(isinstance(v, str) for v in value):
            raise APIError(400, "'input' mixes strings and parts: give a list of strings or a list of parts")
        else:
            texts: list[str] = []
            images: list[str | bytes] = []
            for index, part in enumerate(value):
                kind, content = _part(part, index)
                if kind == "text":
                    texts.append(content)
                else:
                    images.append(state.image_source(content, param=f"input[{index}].image_url.url"))
            image: Any = None if not images else (images[0] if len(images) == 1 else images)
            raw = [ModerationItem(text="\n".join(texts) if texts else None, image=image)]
        items = await state.prepare(raw, param="input", memory=memory, isolate=len(raw) > 1)
        results = await state.judge(items)
        response = to_openai_moderation(
            results, model=state.model_name, category_scores=state.settings.category_scores
        )
        return JSONResponse(response.model_dump(mode="json"))

    @app.post("/v1/guard", summary="Full GuardResult for text, image and response")
    async def guard_endpoint(request: Request) -> JSONResponse:
        state.authorize(request)
        with state.reserve() as memory:
            return await _guard(await state.read_body(request, memory), memory)

    async def _guard_items(body: bytes, memory: MemoryReservation) -> list[PreparedItem | GuardResult]:
        try:
            parsed = GuardRequest.model_validate(_json_object(body))
        except ValidationError as exc:
            raise APIError(400, _validation_message(exc)) from None
        image: Any = None
        if isinstance(parsed.image, list):
            image = [state.image_source(v, param=f"image[{i}]") for i, v in enumerate(parsed.image)] or None
        elif parsed.image is not None:
            image = state.image_source(parsed.image, param="image")
        return await state.prepare(
            [ModerationItem(text=parsed.text, image=image, response=parsed.response)], param=None, memory=memory
        )

    async def _guard(body: bytes, memory: MemoryReservation) -> JSONResponse:
        items = await _guard_items(body, memory)
        (result,) = await state.judge(items)
        return JSONResponse(result.model_dump(mode="json"))

    @app.post(STREAM_PATH, summary="GuardResult with the model's reasoning streamed as server-sent events")
    async def guard_stream(request: Request) -> Response:
        state.authorize(request)
        slot = state.open_stream()
        try:
            slot.memory = state.reserve()  # held until the stream ends: the body, then the prepared image
            (item,) = await _guard_items(await state.read_body(request, slot.memory), slot.memory)
        except BaseException:
            slot.release("rejected")
            raise
        if not isinstance(item, PreparedItem):  # pragma: no cover - one input, not isolated: a failure is a 400
            slot.release("rejected")
            raise APIError(400, item.error or "the input could not be prepared")
        events = state.sse(item, slot)

        async def finish() -> None:  # runs after the response, also when the client disconnected
            await events.aclose()
            slot.release()

        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(finish),
        )

    app.include_router(_litellm_router(state))

    @app.get("/v1/models", summary="The served model")
    async def models(request: Request) -> JSONResponse:
        state.authorize(request)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": state.model_name, "object": "model", "created": 0, "owned_by": "guardreasoner-vl"}],
            }
        )

    @app.get("/health", summary="Liveness and queue state (no API key needed)")
    async def health() -> JSONResponse:
        running = state.batcher.running
        return JSONResponse(
            {
                "status": "ok" if running else "unavailable",
                "model": state.model_name,
                "backend": state.guard.backend.name,
                "family": state.guard.family.value,
                "queue_depth": state.batcher.depth,
                "max_queue": settings.max_queue,
                "in_flight": state.batcher.in_flight,
            },
            status_code=200 if running else 503,
        )

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics(request: Request) -> Response:
        state.authorize(request)
        state.sync_cache_metrics()
        state.metrics.memory.set(state.memory.used)
        state.metrics.memory_peak.set(state.memory.peak)
        state.metrics.memory_limit.set(state.memory.limit)
        return Response(state.metrics.render(), media_type=ServerMetrics.CONTENT_TYPE)

    if settings.playground:
        from guardreasoner_vl.server.playground import playground_page

        page = playground_page(model=state.model_name, family=state.guard.family.value)

        @app.get("/", summary="The playground page (serve --playground)", include_in_schema=False)
        async def playground() -> HTMLResponse:
            return HTMLResponse(page.html, headers=page.headers)

    return app
