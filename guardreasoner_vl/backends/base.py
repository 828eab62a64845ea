"""The one declared contract every engine implements: :class:`Backend`.

Rendered prompts (+ images) in, generated text (+ token counts) out, batch first. Prompt building and
parsing stay in the core: a backend never builds a prompt of its own and never parses verdicts.

Every member an engine may have is declared on :class:`Backend` (in the way httpx's ``BaseTransport``
declares a transport): :meth:`~Backend.generate` is the one method an engine must write; the others have
defaults (async through a worker thread, streaming as one piece, no prompt check, nothing to close).
:meth:`Backend.from_settings` builds an engine from the guard's :class:`EngineSettings`, so each engine
decides which of them it takes and :class:`~guardreasoner_vl.Guard` never names an engine.

**Streaming** (:meth:`Backend.stream` / :meth:`Backend.astream`): one request, its text as it is generated
(:class:`GenerationDelta` pieces), then the same :class:`Generation` that :meth:`~Backend.generate` would
return for it, last. The default generates the whole text and yields it once, so every engine (test doubles
included) streams; the transformers, vLLM and remote engines stream token by token. A consumer that stops
early sets the ``cancel`` event (or closes the iterator): an engine that can stop its generation does.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.scores import LogprobTrace

if TYPE_CHECKING:
    from typing import Self

    from PIL import Image

    from guardreasoner_vl.prompts import ModelFamily, RenderedPrompt

__all__ = [
    "Backend",
    "EngineSettings",
    "Generation",
    "GenerationDelta",
    "GenerationRequest",
    "SamplingParams",
    "StreamItem",
    "as_backend",
    "checkpoint_fingerprint",
    "iterate_in_thread",
]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Decoding settings. The defaults are the reference decoding: greedy.

    Attributes:
        max_new_tokens: generation budget (the Guard sets 4096 for VL, 2048 for text by default).
        temperature: 0 means greedy.
        top_p: nucleus sampling mass (used only when temperature > 0).
        seed: seed for sampling, where the engine supports it.
        logprobs: also report the log-probabilities verdict scores are read from
            (:attr:`Generation.logprobs`); an engine that cannot leaves it None.
    """

    max_new_tokens: int = 4096
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One prompt to complete.

    Attributes:
        prompt: the rendered reference prompt.
        image: the prepared image (already loaded, RGB and smart-resized) when the prompt has one.
    """

    prompt: RenderedPrompt
    image: Image.Image | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """What an engine produced for one request.

    Attributes:
        text: the generated text, special tokens removed.
        prompt_tokens: tokens in the prompt, when known.
        completion_tokens: tokens generated, when known.
        finish_reason: ``"stop"`` (end of sequence), ``"length"`` (budget hit) or None if unknown.
        error: set when the engine failed on this request alone (the others still count).
        logprobs: where each generated token starts in :attr:`text` and candidate log-probabilities at the
            positions where a verdict label can start (:class:`~guardreasoner_vl.scores.LogprobTrace`), when
            :attr:`SamplingParams.logprobs` asked for them and the engine could report them; else None.
    """

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: Literal["stop", "length"] | None = None
    error: str | None = field(default=None)
    logprobs: LogprobTrace | None = None


@dataclass(frozen=True, slots=True)
class GenerationDelta:
    """A piece of generated text, as a streaming engine produces it (see :meth:`Backend.stream`).

    Attributes:
        text: the new text (special tokens removed); the pieces of one request add up to its
            :attr:`Generation.text`.
    """

    text: str


StreamItem = GenerationDelta | Generation
"""What :meth:`Backend.stream` yields: :class:`GenerationDelta` pieces, then one :class:`Generation`, last."""


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What a :class:`~guardreasoner_vl.Guard` asks of the engine it builds (see :meth:`Backend.from_settings`).

    Each engine takes the settings that apply to it and says so in its ``from_settings``; options that it
    does not take are an error of its constructor, never silently dropped.

    Attributes:
        family: the family the guard was told to use (``Guard(family=...)``), or None to detect it.
        device: where a local engine runs (None: the engine's default).
        dtype: the weights' dtype for a local engine (None: the engine's default).
        min_pixels, max_pixels: the image bounds of the guard's input limits; an engine that resizes
            images itself must use the same bounds, or it would resize the guard's images again.
        batch_size: most prompts per engine call.
        options: the engine's own constructor keywords (``Guard(backend_options=...)``); they win over
            the fields above.
    """

    family: ModelFamily | None = None
    device: str | None = None
    dtype: Any = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    batch_size: int = 8
    options: Mapping[str, Any] = field(default_factory=dict)

    def refuse(self, *names: str, engine: str, reason: str) -> None:
        """Raise :class:`InvalidInputError` when any of the settings ``names`` is set (and not in :attr:`options`).

        For an engine that cannot use a setting: refusing it says so, where dropping it would not.
        """
        given = [n for n in names if getattr(self, n) is not None and n not in self.options]
        if given:
            raise InvalidInputError(f"the {engine} backend does not take {' or '.join(given)}: {reason}")

    def merged(self, **taken: Any) -> dict[str, Any]:
        """Constructor keywords: the settings an engine takes (``None`` values left out), then :attr:`options`."""
        return {**{k: v for k, v in taken.items() if v is not None}, **dict(self.options)}


class Backend(abc.ABC):
    """A generation engine: the declared contract.

    Implementations: :class:`~guardreasoner_vl.backends.fake.FakeBackend` and ``FunctionBackend`` (tests),
    ``TransformersBackend``, ``VLLMBackend``, ``RemoteBackend``; third parties add theirs with
    :func:`guardreasoner_vl.backends.register_backend` or the ``guardreasoner_vl.backends`` entry-point group.

    Attributes:
        name: the engine's name (shown in results' metadata, metrics and errors).
        family: the model family the engine serves, or None when it serves any (test doubles). A guard
            told another family refuses the engine.
        model_id: the model the engine serves, or None when it has none of its own.
    """

    name: str = "engine"
    family: ModelFamily | None = None
    model_id: str | None = None

    @classmethod
    def from_settings(cls, model: str | Path, settings: EngineSettings) -> Self:
        """Build the engine for ``model`` from a guard's settings.

        The default passes the model, the family when one is forced, and the engine's own options:
        ``cls(model, family=..., **settings.options)``. Engines that take a device, a dtype, image bounds
        or a batch size override this and say so.
        """
        kwargs = settings.merged(family=settings.family)
        return cls(model, **kwargs)  # type: ignore[call-arg]

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        """Complete every request; return one :class:`Generation` per request, in order.

        A failure of one request is that request's :attr:`Generation.error`; an exception fails the batch
        (the guard turns it into ``engine_error`` results).
        """

    async def agenerate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        """Async :meth:`generate`. Default: :meth:`generate` in a worker thread (the event loop never blocks)."""
        return await asyncio.to_thread(self.generate, requests, params)

    def stream(
        self, request: GenerationRequest, params: SamplingParams, *, cancel: threading.Event | None = None
    ) -> Iterator[StreamItem]:
        """Complete one request, yielding its text as it is generated.

        Yields zero or more :class:`GenerationDelta`, then exactly one :class:`Generation`, last: the one
        :meth:`generate` returns for ``[request]`` (same text, token counts, finish reason and log-probabilities).
        A failure of the request is that Generation's ``error``, as in :meth:`generate`.

        ``cancel``: set it (from any thread) when the consumer no longer wants the rest; an engine that can
        stop generating stops at its next step, and what it yields afterwards is not read. Closing the iterator
        must stop the work too. Default: :meth:`generate`, then the whole text as one delta (nothing to stop).
        """
        (generation,) = self.generate([request], params)
        if generation.error is None and generation.text:
            yield GenerationDelta(generation.text)
        yield generation

    async def astream(self, request: GenerationRequest, params: SamplingParams) -> AsyncIterator[StreamItem]:
        """Async :meth:`stream`. Default: :meth:`stream` in a thread of its own, stopped (``cancel`` set) when the
        consumer stops iterating or is cancelled; the event loop never blocks."""
        cancel = threading.Event()
        source = iterate_in_thread(lambda: self.stream(request, params, cancel=cancel), cancel)
        try:
            async for item in source:
                yield item
        finally:
            cancel.set()
            await source.aclose()

    def cache_identity(self) -> dict[str, Any]:
        """What, besides the prompt, the image and the decoding settings, decides this engine's output.

        Part of every verdict-cache key (:mod:`guardreasoner_vl.cache`): two engines with different identities
        never share an entry. Default: the engine's class, name and model; engines add what changes their
        output for the same model (dtype, device, server, top log-probabilities, the checkpoint's files).
        Values must be JSON-serialisable.
        """
        cls = type(self)
        return {"engine": self.name, "class": f"{cls.__module__}.{cls.__qualname__}", "model": self.model_id}

    def check_prompt(self, prompt: RenderedPrompt) -> None:  # noqa: B027 - a no-op default on purpose
        """Refuse a prompt this engine cannot send safely, by raising :class:`InvalidInputError`.

        :meth:`Guard.prepare <guardreasoner_vl.Guard.prepare>` calls it on every rendered prompt, so a refused
        input is an ``invalid_input`` result and never reaches the engine (the remote engine refuses
        special-token strings this way). Default: accept everything.
        """

    def close(self) -> None:  # noqa: B027 - a no-op default on purpose
        """Free the engine's resources (weights, connections). Idempotent. Default: nothing to free."""

    async def aclose(self) -> None:
        """Async :meth:`close`. Default: :meth:`close` in a worker thread."""
        await asyncio.to_thread(self.close)


class _DuckBackend(Backend):
    """Adapts an object that only has ``generate`` (and maybe ``name``, ``close``...) to :class:`Backend`.

    Members the object has are called; the others get the :class:`Backend` defaults. Other attributes
    (a test double's ``calls``) are read through.
    """

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.name = str(getattr(engine, "name", type(engine).__name__))
        self.family = getattr(engine, "family", None)
        self.model_id = getattr(engine, "model_id", None)

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        return list(self._engine.generate(requests, params))

    def stream(
        self, request: GenerationRequest, params: SamplingParams, *, cancel: threading.Event | None = None
    ) -> Iterator[StreamItem]:
        native = getattr(self._engine, "stream", None)
        if native is None:
            return super().stream(request, params, cancel=cancel)
        return iter(native(request, params, cancel=cancel))

    async def astream(self, request: GenerationRequest, params: SamplingParams) -> AsyncIterator[StreamItem]:
        native = getattr(self._engine, "astream", None)
        source = native(request, params) if native is not None else super().astream(request, params)
        try:
            async for item in source:
                yield item
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()

    def cache_identity(self) -> dict[str, Any]:
        native = getattr(self._engine, "cache_identity", None)
        if native is not None:
            return dict(native())
        cls = type(self._engine)
        return {"engine": self.name, "class": f"{cls.__module__}.{cls.__qualname__}", "model": self.model_id}

    async def agenerate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        native = getattr(self._engine, "agenerate", None)
        if native is None:
            return await super().agenerate(requests, params)
        return list(await native(requests, params))

    def check_prompt(self, prompt: RenderedPrompt) -> None:
        check = getattr(self._engine, "check_prompt", None)
        if check is not None:
            check(prompt)

    def close(self) -> None:
        close = getattr(self._engine, "close", None)
        if close is not None:
            close()

    async def aclose(self) -> None:
        native = getattr(self._engine, "aclose", None)
        if native is None:
            await super().aclose()
        else:
            await native()

    def __getattr__(self, item: str) -> Any:
        if item == "_engine":  # not set yet (during unpickling): no recursion
            raise AttributeError(item)
        return getattr(self._engine, item)

    def __repr__(self) -> str:
        return f"_DuckBackend({self._engine!r})"


_T = TypeVar("_T")


def checkpoint_fingerprint(model: str | Path | None) -> list[list[Any]] | None:
    """``[[name, size, mtime_ns], ...]`` of the files at the top of a local checkpoint folder (None for a Hub id).

    Part of the local engines' :meth:`Backend.cache_identity`: weights rewritten in place under the same path
    (a new training run) change the cache key, without hashing gigabytes.
    """
    if model is None:
        return None
    path = Path(model)
    try:
        if not path.is_dir():
            return None
        return sorted(
            [entry.name, entry.stat().st_size, entry.stat().st_mtime_ns] for entry in path.iterdir() if entry.is_file()
        )
    except OSError:
        return None


async def iterate_in_thread(make: Callable[[], Iterator[_T]], cancel: threading.Event) -> AsyncGenerator[_T, None]:
    """Iterate the blocking iterator ``make()`` in a thread of its own, without blocking the event loop.

    When the consumer stops (it breaks, closes this iterator, or its task is cancelled), ``cancel`` is set at
    once (the producer's engine stops at its next step) and the thread closes the blocking iterator after the
    item it is waiting for; it never holds the loop or a worker of the loop's default executor.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def put(kind: str, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is reading any more
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

    def pump() -> None:
        try:
            iterator = make()
            try:
                for item in iterator:
                    if cancel.is_set():
                        break
                    put("item", item)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # handed to the consumer, raised there
            put("error", exc)
        else:
            put("end", None)

    thread = threading.Thread(target=pump, name="grvl-stream", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        cancel.set()


def as_backend(engine: Any) -> Backend:
    """``engine`` as a :class:`Backend`: itself when it is one, else an adapter around its ``generate``.

    Raises:
        InvalidInputError: ``engine`` has no callable ``generate``.
    """
    if isinstance(engine, Backend):
        return engine
    if not callable(getattr(engine, "generate", None)):
        raise InvalidInputError(
            f"backend must be a name or a Backend (an object with generate(requests, params)), "
            f"got {type(engine).__name__}"
        )
    return _DuckBackend(engine)
