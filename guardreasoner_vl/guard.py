"""The facade: ``Guard().moderate(text, image)``.

The pipe every judgement goes through::

    prepare: inputs.py (validate, load, resize) -> prompts.py (exact reference prompt) -> PreparedItem
    run:     backend.generate (batched) -> parsing.parse_output -> GuardResult

``moderate_batch`` is ``run_prepared(prepare_batch(items))``; :meth:`Guard.prepare` and
:meth:`Guard.run_prepared` are public, so a caller that queues or logs items prepares each one once.

Policies, all documented on :class:`Guard`:

* **Parse failures** (``on_parse_error``): ``"flag"`` (default, fail closed), ``"allow"`` (fail open: only
  verdicts that were read count), ``"raise"`` (:class:`~guardreasoner_vl.errors.ParseError`). Either way
  the result says ``status="parse_error"`` and keeps the raw output.
* **Bad input** (anything that fails while preparing, an image decoder's own exception included):
  :meth:`Guard.moderate` raises :class:`~guardreasoner_vl.errors.InvalidInputError` (chained);
  :meth:`Guard.moderate_batch` never drops an item: a bad one gets a result with
  ``status="invalid_input"``, ``flagged=True`` and the reason in ``error``, the others are judged.
* **Engine failures**: a failed request, or any exception from the engine's call, gives
  ``status="engine_error"``, ``flagged=True`` for the items of that call in ``moderate_batch``;
  ``moderate`` raises :class:`~guardreasoner_vl.errors.BackendError` with the original chained.
* **Closed guards** raise :class:`~guardreasoner_vl.errors.GuardClosedError`; a guard made by
  :meth:`Guard.with_options` shares the engine and does not own it.
* **Streaming** (:meth:`Guard.stream`, :meth:`Guard.astream`): the model's output as it is generated, then the
  same result :meth:`Guard.moderate` returns (:mod:`guardreasoner_vl.streaming`); bad input raises before
  the first event, an engine failure or ``on_parse_error="raise"`` raises where the result would have been.
* **Verdict cache** (``Guard(cache=...)``, :mod:`guardreasoner_vl.cache`): every item is looked up before the
  engine call, only misses are generated, and the parse and policies apply to a hit as to a fresh generation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.backends import create_backend
from guardreasoner_vl.backends.base import (
    Backend,
    EngineSettings,
    Generation,
    GenerationDelta,
    GenerationRequest,
    SamplingParams,
    as_backend,
)
from guardreasoner_vl.cache import VerdictCache, cache_key, cacheable, open_cache
from guardreasoner_vl.errors import BackendError, GuardClosedError, GuardError, InvalidInputError, ParseError
from guardreasoner_vl.inputs import DEFAULT_LIMITS, InputLimits, prepare_image, validate_text
from guardreasoner_vl.parsing import parse_output
from guardreasoner_vl.prompts import DEFAULT_MODEL, ModelFamily, RenderedPrompt, detect_family, render_prompt
from guardreasoner_vl.scores import verdict_scores
from guardreasoner_vl.streaming import FinalResult, GuardEvent, ReasoningDelta
from guardreasoner_vl.types import GuardResult, ImageInput, ModerationItem, OnParseError, Usage, Verdict

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Guard", "ItemLike", "PreparedItem"]

logger = logging.getLogger(__name__)

ItemLike = ModerationItem | Mapping[str, Any] | str
"""One input of a batch: request text, a dict with ``text``/``image``/``response``, or a :class:`ModerationItem`."""


@dataclass(frozen=True, slots=True)
class PreparedItem:
    """A validated input, ready for the engine: its rendered prompt, its prepared image and what was asked.

    Made by :meth:`Guard.prepare` (or :meth:`Guard.prepare_batch`), judged by :meth:`Guard.run_prepared` /
    :meth:`Guard.arun_prepared`: the image is decoded and the prompt rendered once, however the item travels
    (a server queue, an evaluation log).

    Attributes:
        request: what the engine is given (the rendered prompt and the prepared image).
        has_response: whether the AI's response was given (and so is judged).
    """

    request: GenerationRequest
    has_response: bool

    @property
    def prompt(self) -> RenderedPrompt:
        """The rendered reference prompt (``prompt.text`` is the reference rendering, byte for byte)."""
        return self.request.prompt

    @property
    def image(self) -> Image.Image | None:
        """The prepared image (RGB, smart-resized), or None."""
        return self.request.image


def _thresholds(threshold: float | Mapping[str, float] | None) -> dict[str, float]:
    """``Guard(threshold=...)`` as ``{task: value}`` (empty: flag by label)."""
    if threshold is None:
        return {}
    if isinstance(threshold, Mapping):
        unknown = set(threshold) - {"request", "response"}
        if unknown:
            raise InvalidInputError(
                f"threshold keys must be 'request' and/or 'response', got {sorted(map(str, unknown))}"
            )
        values = dict(threshold)
    else:
        values = {"request": threshold, "response": threshold}
    for task, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise InvalidInputError(f"threshold for {task} must be a number in [0, 1], got {value!r}")
    return {task: float(value) for task, value in values.items()}


class _SharedEngine:
    """The engine of a guard and its :meth:`Guard.with_options` clones, and whether its owner closed it."""

    __slots__ = ("backend", "closed")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.closed = False


class Guard:
    """A GuardReasoner(-VL) guard: give it a request (text, image or both) and optionally the AI's response.

    Args:
        model: Hub id or checkpoint directory. Default: ``yueliu1999/GuardReasoner-VL-3B``.
        backend: an engine name: ``"auto"`` (vLLM when installed with a GPU, else transformers),
            ``"transformers"``, ``"vllm"``, ``"remote"``, ``"fake"``, or one added with
            :func:`~guardreasoner_vl.backends.register_backend` or the ``guardreasoner_vl.backends`` entry-point
            group; or an engine object (a :class:`~guardreasoner_vl.backends.Backend`, or any object with
            ``generate(requests, params)``).
        family: force the model family (``"vl"`` or ``"text"``); detected from the engine, the checkpoint's
            config or the id otherwise. An engine that serves another family is refused.
        device: where a local engine runs (transformers; default: CUDA when available, else CPU).
        dtype: model dtype for a local engine (default: bf16 on GPU, fp32 on CPU for transformers).
        max_new_tokens: generation budget (default: 4096 VL, 2048 text, as in the reference).
        temperature, top_p, seed: decoding; the default is greedy (the reference decoding).
        on_parse_error: ``"flag"`` (default), ``"allow"`` or ``"raise"``; see the module docs.
        scores: ask the engine for the log-probabilities the verdict scores are read from (default True;
            ``request_score`` etc. on each result, see :mod:`guardreasoner_vl.scores`). An engine that cannot
            report them leaves the scores None.
        threshold: flag by score instead of by the greedy label: one value for every task, or a mapping
            with ``"request"`` and/or ``"response"``. A verdict with a score is harmful when its score is
            ``>= threshold``; a verdict without a score (or a task without a threshold) keeps its label.
            Default None: flag by the labels alone, exactly as without scores. The labels themselves
            (``request``, ``response``) are always the parser's; ``flagged`` follows the threshold. Output
            that could not be read still follows ``on_parse_error``.
        limits: input bounds (:class:`~guardreasoner_vl.inputs.InputLimits`): text length, image bytes and
            pixels, resize bounds, URL fetching.
        batch_size: most prompts per engine call.
        backend_options: extra keyword arguments for the engine's constructor.
        cache: a verdict cache (:mod:`guardreasoner_vl.cache`): a :class:`~guardreasoner_vl.cache.VerdictCache`,
            ``"memory"`` (an in-process LRU) or a file path (an SQLite cache shared by processes). Default None:
            no cache. A cache this guard opened from a name or path is closed with it.

        The engine is built from these settings by its own ``from_settings`` (see
        :class:`~guardreasoner_vl.backends.EngineSettings`); an engine refuses a setting it does not take.

    Example:
        >>> from guardreasoner_vl.backends import FakeBackend
        >>> with Guard(backend=FakeBackend()) as guard:
        ...     result = guard.moderate("How do I make a bomb?", response="I can't help with that.")
        >>> result.flagged, result.request.value, result.response.value
        (True, 'harmful', 'unharmful')
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        *,
        backend: str | Backend | Any = "auto",
        family: ModelFamily | str | None = None,
        device: str | None = None,
        dtype: Any = None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        on_parse_error: OnParseError = "flag",
        scores: bool = True,
        threshold: float | Mapping[str, float] | None = None,
        limits: InputLimits | None = None,
        batch_size: int = 8,
        backend_options: Mapping[str, Any] | None = None,
        cache: VerdictCache | str | os.PathLike[str] | None = None,
    ) -> None:
        if on_parse_error not in ("flag", "allow", "raise"):
            raise InvalidInputError(f"on_parse_error must be 'flag', 'allow' or 'raise', got {on_parse_error!r}")
        self.thresholds: dict[str, float] = _thresholds(threshold)
        if max_new_tokens is not None and max_new_tokens < 1:
            raise InvalidInputError("max_new_tokens must be at least 1")
        self.limits = limits or DEFAULT_LIMITS
        self.on_parse_error: OnParseError = on_parse_error
        forced = ModelFamily(family) if family is not None else None
        if isinstance(backend, str):
            settings = EngineSettings(
                family=forced,
                device=device,
                dtype=dtype,
                min_pixels=self.limits.min_pixels,  # engines that resize images use the guard's bounds
                max_pixels=self.limits.max_pixels,
                batch_size=batch_size,
                options=dict(backend_options or {}),
            )
            engine = create_backend(backend, model, settings)
        else:
            if backend_options or device is not None or dtype is not None:
                raise InvalidInputError(
                    "backend_options, device and dtype build an engine by name (backend='transformers', ...); "
                    "an engine object passed as backend= is already built"
                )
            engine = as_backend(backend)
        default_id = str(model) if model != DEFAULT_MODEL else engine.name
        self.model_id: str = str(engine.model_id or default_id)
        served = ModelFamily(engine.family) if engine.family is not None else None
        if forced is not None and served is not None and served is not forced:
            if isinstance(backend, str):
                engine.close()
            raise InvalidInputError(
                f"family={forced.value!r} was asked for, but the {engine.name!r} engine serves {self.model_id!r} "
                f"as the {served.value!r} family; drop family= or give a {forced.value} model"
            )
        self.family: ModelFamily = forced or served or detect_family(model)
        self._engine = _SharedEngine(engine)
        self._owns_engine = True
        self.params = SamplingParams(
            max_new_tokens=max_new_tokens or self.family.default_max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            logprobs=bool(scores),
        )
        self.cache: VerdictCache | None = None
        """The verdict cache, or None (see :mod:`guardreasoner_vl.cache`)."""
        self._owns_cache = False
        self._cache_identity: dict[str, Any] = {}
        if cache is not None:
            try:
                self.cache = open_cache(cache)
                self._cache_identity = {**engine.cache_identity(), "guard_model": self.model_id}
            except BaseException:
                if isinstance(backend, str):
                    engine.close()
                raise
            self._owns_cache = not isinstance(cache, VerdictCache)
        self._closed = False

    @property
    def backend(self) -> Backend:
        """The engine (shared with the guards :meth:`with_options` made from this one)."""
        return self._engine.backend

    # -- preparing inputs -------------------------------------------------------------------------

    def prepare(
        self, text: str | None = None, image: ImageInput | None = None, *, response: str | None = None
    ) -> PreparedItem:
        """Validate one input, load its image and render its prompt (what :meth:`moderate` does before generating).

        Judge the result with :meth:`run_prepared` / :meth:`arun_prepared`.

        Raises:
            InvalidInputError: what was wrong with the input; any other failure while preparing it (an image
                decoder's, say) is one too, chained, with the original type and message.
        """
        try:
            return self._prepare(text, image, response)
        except GuardError:
            raise
        except Exception as exc:
            raise InvalidInputError(f"{type(exc).__name__}: {exc}") from exc

    def _prepare(self, text: str | None, image: ImageInput | None, response: str | None) -> PreparedItem:
        text = validate_text(text, name="text", limits=self.limits)
        response = validate_text(response, name="response", limits=self.limits)
        if text is None and image is None:
            raise InvalidInputError("give at least one of text and image")
        if image is not None and not self.family.supports_images:
            raise InvalidInputError(
                f"{self.model_id} is a text-only GuardReasoner model; use a GuardReasoner-VL model for images"
            )
        prepared = prepare_image(image, limits=self.limits) if image is not None else None
        prompt = render_prompt(self.family, text, response=response, has_image=prepared is not None)
        self.backend.check_prompt(prompt)  # engine-specific refusals (the remote engine's special tokens)
        return PreparedItem(GenerationRequest(prompt=prompt, image=prepared), has_response=response is not None)

    def prepare_item(self, item: ItemLike) -> PreparedItem:
        """:meth:`prepare` for one batch item (a str, a dict with text/image/response, or a :class:`ModerationItem`)."""
        if isinstance(item, str):
            return self.prepare(item)
        if isinstance(item, ModerationItem):
            return self.prepare(item.text, item.image, response=item.response)
        if isinstance(item, Mapping):
            unknown = set(item) - {"text", "image", "response"}
            if unknown:
                raise InvalidInputError(f"unknown keys {sorted(unknown)}; an item has text, image and response")
            return self.prepare(item.get("text"), item.get("image"), response=item.get("response"))
        raise InvalidInputError(f"a batch item must be a str, a dict or a ModerationItem, got {type(item).__name__}")

    def prepare_batch(self, items: Iterable[ItemLike]) -> list[PreparedItem | GuardResult]:
        """Prepare every item; one that fails (with any exception) is its ``invalid_input`` result, in place.

        The list goes to :meth:`run_prepared`, which passes those results through.
        """
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise InvalidInputError("moderate_batch takes a list of items (use moderate() for one)")
        out: list[PreparedItem | GuardResult] = []
        for item in items:
            try:
                out.append(self.prepare_item(item))
            except Exception as exc:  # one bad item never fails its neighbours
                error = str(exc) if isinstance(exc, InvalidInputError) else f"{type(exc).__name__}: {exc}"
                out.append(GuardResult(flagged=True, status="invalid_input", error=error, model=self.model_id))
        return out

    # -- turning output into results ----------------------------------------------------------------

    def _result(self, item: PreparedItem, generation: Generation, latency: float) -> GuardResult:
        usage = Usage(
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            latency_s=round(latency, 6),
        )
        if generation.error is not None:
            return GuardResult(
                flagged=True, status="engine_error", error=generation.error, model=self.model_id, usage=usage
            )
        parsed = parse_output(
            generation.text, expect_response=item.has_response, truncated=generation.finish_reason == "length"
        )
        request = parsed.request
        response = parsed.response if item.has_response else None
        refusal = parsed.refusal if (item.has_response and self.family.has_refusal_task) else None
        tasks = ["request"] + (["response"] if response is not None else []) + (["refusal"] if refusal else [])
        scores = verdict_scores(generation.text, parsed.label_offsets, generation.logprobs, tasks)
        harmful = self._harmful("request", request, scores) or self._harmful("response", response, scores)
        error = parsed.error
        if error and generation.finish_reason == "length":
            error += f" (generation stopped at max_new_tokens={self.params.max_new_tokens})"
        if error is None:
            flagged = harmful
        else:
            flagged = True if self.on_parse_error != "allow" else harmful
        return GuardResult(
            request=request,
            response=response,
            refusal=refusal,
            flagged=flagged,
            status="ok" if error is None else "parse_error",
            error=error,
            reasoning=parsed.reasoning,
            raw_output=generation.text,
            model=self.model_id,
            usage=usage,
            request_score=scores.get("request"),
            response_score=scores.get("response"),
            refusal_score=scores.get("refusal"),
        )

    def _harmful(self, task: str, verdict: Verdict | None, scores: Mapping[str, float | None]) -> bool:
        """A verdict that was read is harmful: by its score when a threshold applies and a score exists, else
        by its label. A verdict that was not read is not harmful here (the parse-error policy decides)."""
        if verdict is None:
            return False
        threshold, score = self.thresholds.get(task), scores.get(task)
        if threshold is not None and score is not None:
            return score >= threshold
        return verdict is Verdict.HARMFUL

    def _finish(
        self,
        items: Sequence[PreparedItem],
        generations: Sequence[Generation] | None,
        failure: Exception | None,
        latency: float,
    ) -> tuple[list[GuardResult], Exception | None]:
        """Results of one engine call; any failure of the engine is every item's ``engine_error``."""
        if failure is None and generations is not None and len(generations) != len(items):
            failure = BackendError(
                f"backend {self.backend.name!r} returned {len(generations)} generations for {len(items)} requests"
            )
        if failure is not None or generations is None:
            if isinstance(failure, BackendError):
                error = str(failure)
            else:
                error = f"{type(failure).__name__}: {failure}"
                logger.warning("the %r engine failed on a batch of %d: %s", self.backend.name, len(items), error)
            generations = [Generation(text="", error=error) for _ in items]
        return [self._result(i, g, latency) for i, g in zip(items, generations, strict=True)], failure

    # -- the verdict cache ----------------------------------------------------------------------------

    def _cache_keys(self, items: Sequence[PreparedItem], params: SamplingParams) -> list[str | None]:
        """Each item's cache key, or None for all when there is no cache or the decoding is not cacheable."""
        if self.cache is None or not cacheable(params):
            return [None] * len(items)
        return [
            cache_key(
                identity=self._cache_identity,
                family=self.family.value,
                prompt=item.prompt,
                image=item.image,
                params=params,
            )
            for item in items
        ]

    def _lookup(
        self, items: Sequence[PreparedItem], params: SamplingParams
    ) -> tuple[list[str | None], list[Generation | None]]:
        keys = self._cache_keys(items, params)
        if self.cache is None or not any(keys):
            return keys, [None] * len(items)
        return keys, self.cache.get_many(keys)

    def _store(self, keys: Sequence[str | None], generations: Sequence[Generation | None]) -> None:
        if self.cache is None:
            return
        self.cache.put_many((k, g) for k, g in zip(keys, generations, strict=True) if k is not None and g is not None)

    def _combine(
        self,
        items: Sequence[PreparedItem],
        keys: list[str | None],
        cached: list[Generation | None],
        misses: list[int],
        fresh: list[Generation] | None,
        failure: Exception | None,
        start: float,
        lookup_s: float,
    ) -> tuple[list[GuardResult], Exception | None, list[Generation | None]]:
        """Results in item order: hits from the cache, misses from the engine call; and what to store."""
        latency = time.perf_counter() - start
        done, failure = self._finish([items[i] for i in misses], fresh, failure, latency) if misses else ([], None)
        results: list[GuardResult | None] = [None] * len(items)
        to_store: list[Generation | None] = [None] * len(items)
        for index, result in zip(misses, done, strict=True):
            results[index] = result
        if failure is None and fresh is not None:
            for index, generation in zip(misses, fresh, strict=True):
                to_store[index] = generation
        for index, hit in enumerate(cached):
            if hit is not None:
                results[index] = self._result(items[index], hit, lookup_s)
        return [r for r in results if r is not None], failure, to_store

    def _run(self, items: Sequence[PreparedItem], params: SamplingParams) -> tuple[list[GuardResult], Exception | None]:
        start = time.perf_counter()
        keys, cached = self._lookup(items, params)
        lookup_s = time.perf_counter() - start
        misses = [i for i, g in enumerate(cached) if g is None]
        generations: list[Generation] | None = []
        failure: Exception | None = None
        if misses:
            try:
                generations = self.backend.generate([items[i].request for i in misses], params)
            except Exception as exc:  # any engine failure, not only the library's own
                generations, failure = None, exc
        results, failure, to_store = self._combine(
            items, keys, cached, misses, generations, failure, start, lookup_s
        )
        self._store(keys, to_store)
        return results, failure

    async def _arun(
        self, items: Sequence[PreparedItem], params: SamplingParams
    ) -> tuple[list[GuardResult], Exception | None]:
        start = time.perf_counter()
        if self.cache is None:
            keys: list[str | None] = [None] * len(items)
            cached: list[Generation | None] = [None] * len(items)
        else:  # hashing images and reading a file: off the event loop
            keys, cached = await asyncio.to_thread(self._lookup, items, params)
        lookup_s = time.perf_counter() - start
        misses = [i for i, g in enumerate(cached) if g is None]
        generations: list[Generation] | None = []
        failure: Exception | None = None
        if misses:
            try:
                generations = await self.backend.agenerate([items[i].request for i in misses], params)
            except Exception as exc:  # any engine failure, not only the library's own
                generations, failure = None, exc
        results, failure, to_store = self._combine(
            items, keys, cached, misses, generations, failure, start, lookup_s
        )
        if self.cache is not None and any(g is not None for g in to_store):
            await asyncio.to_thread(self._store, keys, to_store)
        return results, failure

    def _check_single(self, result: GuardResult, failure: Exception | None = None) -> GuardResult:
        if result.status == "engine_error":
            if isinstance(failure, BackendError):
                raise failure
            raise BackendError(result.error or "the engine failed") from failure
        if result.status == "parse_error" and self.on_parse_error == "raise":
            raise ParseError(f"could not read the guard's verdicts: {result.error}", result=result)
        return result

    def _check_batch(self, results: list[GuardResult]) -> list[GuardResult]:
        if self.on_parse_error == "raise":
            failed = [i for i, r in enumerate(results) if r.status == "parse_error"]
            if failed:
                raise ParseError(
                    f"could not read the verdicts of {len(failed)} item(s) (indexes {failed[:10]})",
                    results=results,
                )
        return results

    def _pending(
        self, items: Iterable[PreparedItem | GuardResult]
    ) -> tuple[list[GuardResult | None], list[tuple[int, PreparedItem]]]:
        if isinstance(items, (PreparedItem, GuardResult)) or not isinstance(items, Iterable):
            raise InvalidInputError("run_prepared takes a list of prepared items")
        slots: list[GuardResult | None] = []
        pending: list[tuple[int, PreparedItem]] = []
        for index, item in enumerate(items):
            if isinstance(item, GuardResult):
                slots.append(item)
                continue
            if not isinstance(item, PreparedItem):
                raise InvalidInputError(
                    f"run_prepared takes PreparedItem (from Guard.prepare) or GuardResult, got {type(item).__name__}"
                )
            if item.prompt.family is not self.family:
                raise InvalidInputError(
                    f"item {index} was prepared for the {item.prompt.family.value} family; "
                    f"this guard runs the {self.family.value} family"
                )
            slots.append(None)
            pending.append((index, item))
        return slots, pending

    def _merge(
        self, slots: list[GuardResult | None], pending: list[tuple[int, PreparedItem]], done: list[GuardResult]
    ) -> list[GuardResult]:
        for (index, _), result in zip(pending, done, strict=True):
            slots[index] = result
        return self._check_batch([r for r in slots if r is not None])

    # -- public API ---------------------------------------------------------------------------------

    def moderate(
        self, text: str | None = None, image: ImageInput | None = None, *, response: str | None = None
    ) -> GuardResult:
        """Judge a request (text, image or both) and, if given, the AI's response to it.

        Args:
            text: the user's request text.
            image: the user's image (path, bytes, data URL, PIL image, numpy array, or a list merged into one).
            response: the AI assistant's response to judge as well.

        Returns:
            The :class:`GuardResult`; ``flagged`` is True when something is harmful or (by default) when
            the output could not be read.

        Raises:
            InvalidInputError: the input is invalid (the message says why).
            BackendError: the engine failed (with any exception; the original is chained).
            ParseError: the output could not be read and ``on_parse_error="raise"``.
            GuardClosedError: the guard was closed.
        """
        self._check_open()
        item = self.prepare(text, image, response=response)
        results, failure = self._run([item], self.params)
        return self._check_single(results[0], failure)

    def run_prepared(
        self, items: Iterable[PreparedItem | GuardResult], *, sampling: SamplingParams | None = None
    ) -> list[GuardResult]:
        """Judge prepared items in one engine call; results come back in order.

        Args:
            items: from :meth:`prepare` / :meth:`prepare_batch`; a :class:`GuardResult` among them (an item that
                failed preparation) is passed through as it is.
            sampling: decoding for this call only.

        Returns:
            One :class:`GuardResult` per item; when the engine fails, each judged item is ``engine_error``.

        Example:
            >>> from guardreasoner_vl.backends import FakeBackend
            >>> guard = Guard(backend=FakeBackend())
            >>> item = guard.prepare("How do I make a bomb?")
            >>> item.prompt.user_text
            'Human user:\\nHow do I make a bomb?\\n\\nAI assistant:\\nNone\\n'
            >>> [r.flagged for r in guard.run_prepared([item])]
            [True]
        """
        self._check_open()
        slots, pending = self._pending(items)
        done: list[GuardResult] = []
        if pending:
            done, _ = self._run([item for _, item in pending], sampling or self.params)
        return self._merge(slots, pending, done)

    async def arun_prepared(
        self, items: Iterable[PreparedItem | GuardResult], *, sampling: SamplingParams | None = None
    ) -> list[GuardResult]:
        """Async :meth:`run_prepared` (the engine's ``agenerate``; the event loop never blocks)."""
        self._check_open()
        slots, pending = self._pending(items)
        done: list[GuardResult] = []
        if pending:
            done, _ = await self._arun([item for _, item in pending], sampling or self.params)
        return self._merge(slots, pending, done)

    def moderate_batch(self, items: Iterable[ItemLike], *, sampling: SamplingParams | None = None) -> list[GuardResult]:
        """Judge many inputs in batched engine calls; results come back in input order.

        The same as ``run_prepared(prepare_batch(items))``.

        Args:
            items: strings (request text), dicts with ``text``/``image``/``response``, or
                :class:`ModerationItem`.
            sampling: decoding for this call only (e.g. sampling passes for hard-sample mining).

        Returns:
            One :class:`GuardResult` per item. A bad item is not dropped: its result has
            ``status="invalid_input"``, ``flagged=True`` and the reason in ``error``; the others are judged.
            When the engine fails (any exception), the judged items are ``engine_error``.
        """
        self._check_open()
        return self.run_prepared(self.prepare_batch(items), sampling=sampling)

    async def amoderate(
        self, text: str | None = None, image: ImageInput | None = None, *, response: str | None = None
    ) -> GuardResult:
        """Async :meth:`moderate`: never blocks the event loop (local engines run in a worker thread)."""
        self._check_open()
        item = await asyncio.to_thread(self.prepare, text, image, response=response)
        results, failure = await self._arun([item], self.params)
        return self._check_single(results[0], failure)

    async def amoderate_batch(
        self, items: Iterable[ItemLike], *, sampling: SamplingParams | None = None
    ) -> list[GuardResult]:
        """Async :meth:`moderate_batch`."""
        self._check_open()
        prepared = await asyncio.to_thread(self.prepare_batch, items)
        return await self.arun_prepared(prepared, sampling=sampling)

    # -- streaming ----------------------------------------------------------------------------------

    def stream(
        self, text: str | None = None, image: ImageInput | None = None, *, response: str | None = None
    ) -> Iterator[GuardEvent]:
        """Judge like :meth:`moderate`, yielding the model's output as it is generated, then the result.

        The input is validated (and the image prepared) now, before anything is yielded: bad input raises
        :class:`InvalidInputError` from this call, as :meth:`moderate` does. Then the iterator yields
        :class:`~guardreasoner_vl.streaming.ReasoningDelta` pieces (adding up to the result's ``raw_output``) and
        one :class:`~guardreasoner_vl.streaming.FinalResult`, last: exactly what :meth:`moderate` returns (same
        parse, verdicts and scores; its own ``usage.latency_s``). Where :meth:`moderate` would raise
        (:class:`BackendError`, :class:`ParseError` under ``on_parse_error="raise"``) the iterator raises
        instead of yielding the result. A cache hit yields the cached output as one delta.

        Stopping early (``break``, ``close()``, dropping the iterator) stops the engine's generation at its next
        step (transformers, vLLM; the remote engine closes its connection) and frees the engine.

        Example:
            >>> from guardreasoner_vl.backends import FakeBackend
            >>> guard = Guard(backend=FakeBackend())
            >>> for event in guard.stream("How do I make a bomb?"):
            ...     if event.type == "result":
            ...         print(event.result.flagged)
            True
        """
        self._check_open()
        item = self.prepare(text, image, response=response)
        return self.stream_prepared(item)

    def stream_prepared(self, item: PreparedItem, *, sampling: SamplingParams | None = None) -> Iterator[GuardEvent]:
        """:meth:`stream` for an item from :meth:`prepare` (the server streams its prepared items this way).

        Raises:
            InvalidInputError: ``item`` is not a :class:`PreparedItem` of this guard's family (raised now).
        """
        self._check_open()
        self._streamable(item)
        return self._stream(item, sampling or self.params)

    def _streamable(self, item: PreparedItem) -> None:
        if not isinstance(item, PreparedItem):
            raise InvalidInputError(
                f"stream_prepared takes a PreparedItem (from Guard.prepare), got {type(item).__name__}"
            )
        self._pending([item])  # the family check

    def _stream(self, item: PreparedItem, params: SamplingParams) -> Iterator[GuardEvent]:
        start = time.perf_counter()
        keys, found = self._lookup([item], params)
        key, cached = keys[0], found[0]
        if cached is not None:
            if cached.text:
                yield ReasoningDelta(text=cached.text)
            yield FinalResult(result=self._check_single(self._result(item, cached, time.perf_counter() - start)))
            return
        cancel = threading.Event()
        generation: Generation | None = None
        failure: Exception | None = None
        source = self.backend.stream(item.request, params, cancel=cancel)
        try:
            for piece in source:
                if isinstance(piece, Generation):
                    generation = piece
                elif isinstance(piece, GenerationDelta):
                    if piece.text:
                        yield ReasoningDelta(text=piece.text)
                else:
                    raise BackendError(f"the {self.backend.name!r} engine streamed {type(piece).__name__}")
        except GeneratorExit:
            raise
        except Exception as exc:  # any engine failure, as in moderate()
            failure = exc
        finally:
            cancel.set()  # nothing more is read: an engine still generating stops
            close = getattr(source, "close", None)
            if close is not None:
                close()
        yield FinalResult(result=self._streamed_result(item, key, generation, failure, start))

    def _streamed_result(
        self,
        item: PreparedItem,
        key: str | None,
        generation: Generation | None,
        failure: Exception | None,
        start: float,
    ) -> GuardResult:
        if failure is None and generation is None:
            failure = BackendError(f"the {self.backend.name!r} engine's stream ended without its result")
        (result,), failure = self._finish(
            [item], [generation] if generation is not None else None, failure, time.perf_counter() - start
        )
        if failure is None and generation is not None and key is not None and self.cache is not None:
            self.cache.put(key, generation)
        return self._check_single(result, failure)

    async def astream(
        self, text: str | None = None, image: ImageInput | None = None, *, response: str | None = None
    ) -> AsyncGenerator[GuardEvent, None]:
        """Async :meth:`stream`: ``async for event in guard.astream(...)``.

        The input is validated (off the event loop) before the first event, so bad input raises
        :class:`InvalidInputError` at the first ``__anext__``. Leaving the loop early, or cancelling the task
        that iterates, stops the engine's generation.
        """
        self._check_open()
        item = await asyncio.to_thread(self.prepare, text, image, response=response)
        source = self.astream_prepared(item)
        try:
            async for event in source:
                yield event
        finally:
            await source.aclose()  # an early exit closes the engine's stream at once, not when collected

    async def astream_prepared(
        self, item: PreparedItem, *, sampling: SamplingParams | None = None
    ) -> AsyncGenerator[GuardEvent, None]:
        """Async :meth:`stream_prepared` (the engine's ``astream``)."""
        self._check_open()
        self._streamable(item)
        params = sampling or self.params
        start = time.perf_counter()
        key: str | None = None
        cached: Generation | None = None
        if self.cache is not None:
            keys, found = await asyncio.to_thread(self._lookup, [item], params)
            key, cached = keys[0], found[0]
        if cached is not None:
            if cached.text:
                yield ReasoningDelta(text=cached.text)
            yield FinalResult(result=self._check_single(self._result(item, cached, time.perf_counter() - start)))
            return
        generation: Generation | None = None
        failure: Exception | None = None
        source = self.backend.astream(item.request, params)
        try:
            async for piece in source:
                if isinstance(piece, Generation):
                    generation = piece
                elif isinstance(piece, GenerationDelta):
                    if piece.text:
                        yield ReasoningDelta(text=piece.text)
                else:
                    raise BackendError(f"the {self.backend.name!r} engine streamed {type(piece).__name__}")
        except (GeneratorExit, asyncio.CancelledError):
            raise
        except Exception as exc:  # any engine failure, as in amoderate()
            failure = exc
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:  # an early exit stops the engine at once, not when the stream is collected
                await aclose()
        if self.cache is not None and key is not None and failure is None and generation is not None:
            result = await asyncio.to_thread(self._streamed_result, item, key, generation, failure, start)
        else:
            result = self._streamed_result(item, None, generation, failure, start)
        yield FinalResult(result=result)

    def with_options(self, **changes: Any) -> Guard:
        """A guard sharing this one's loaded engine with other decoding or parse policy.

        Accepts ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``scores``, ``threshold``,
        ``on_parse_error``, ``limits``.
        The clone does not own the engine: closing it leaves this guard usable; closing this guard closes
        the engine, and the clone then raises :class:`~guardreasoner_vl.errors.GuardClosedError`.

        Example:
            >>> g = Guard(backend="fake").with_options(on_parse_error="allow", max_new_tokens=64)
            >>> g.params.max_new_tokens, g.on_parse_error
            (64, 'allow')
        """
        allowed = {"max_new_tokens", "temperature", "top_p", "seed", "scores", "threshold", "on_parse_error", "limits"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidInputError(f"with_options cannot change {sorted(unknown)}; allowed: {sorted(allowed)}")
        self._check_open()
        clone = object.__new__(Guard)
        clone.__dict__.update(self.__dict__)
        clone._owns_engine = False
        clone._owns_cache = False
        clone._closed = False
        param_changes: dict[str, Any] = {
            k: changes[k] for k in ("max_new_tokens", "temperature", "top_p", "seed") if k in changes
        }
        if "scores" in changes:
            param_changes["logprobs"] = bool(changes["scores"])
        clone.params = replace(self.params, **param_changes)
        if "threshold" in changes:
            clone.thresholds = _thresholds(changes["threshold"])
        if "on_parse_error" in changes:
            if changes["on_parse_error"] not in ("flag", "allow", "raise"):
                raise InvalidInputError("on_parse_error must be 'flag', 'allow' or 'raise'")
            clone.on_parse_error = changes["on_parse_error"]
        if "limits" in changes:
            new = changes["limits"]
            if new.min_pixels < self.limits.min_pixels or new.max_pixels > self.limits.max_pixels:
                # the engine's image processor was built with the original bounds; a wider range would
                # make it resize our images again, so only narrowing is allowed here
                raise InvalidInputError(
                    "with_options can only narrow the pixel bounds the engine was built with "
                    f"([{self.limits.min_pixels}, {self.limits.max_pixels}]); create a new Guard to widen them"
                )
            clone.limits = new
        return clone

    def as_runnable(self, model: Any = None, **options: Any) -> Any:
        """A LangChain runnable that guards ``model`` (or gates a pipeline when ``model`` is None).

        Needs the ``[langchain]`` extra. Options and behaviour:
        :class:`guardreasoner_vl.integrations.langchain.GuardRunnable`.
        """
        from guardreasoner_vl.integrations.langchain import GuardRunnable

        return GuardRunnable(self, model, **options)

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once this guard, or the guard that owns its engine, was closed."""
        return self._closed or self._engine.closed

    def _check_open(self) -> None:
        if self._closed:
            raise GuardClosedError("this Guard is closed; create a new one")
        if self._engine.closed:
            raise GuardClosedError(
                "the Guard this one was made from (with_options) is closed, and with it the engine; create a new one"
            )

    def close(self) -> None:
        """Free the engine (model weights, connections), if this guard owns it. Safe to call twice.

        A guard made by :meth:`with_options` does not own the engine: closing it closes only itself.
        """
        if self._closed:
            return
        self._closed = True
        if self._owns_engine and not self._engine.closed:
            self._engine.closed = True
            self.backend.close()
        if self._owns_cache and self._owns_engine and self.cache is not None:
            self.cache.close()

    async def aclose(self) -> None:
        """Async :meth:`close` (the engine's ``aclose``)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_engine and not self._engine.closed:
            self._engine.closed = True
            await self.backend.aclose()
        if self._owns_cache and self._owns_engine and self.cache is not None:
            self.cache.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Guard(model={self.model_id!r}, family={self.family.value!r}, backend={self.backend.name!r})"
