"""The facade: ``Guard().moderate(text, image)``.

The pipe every judgement goes through::

    inputs.py (validate, load, resize) -> prompts.py (exact reference prompt)
      -> backend.generate (batched) -> parsing.parse_output -> GuardResult

Policies, all documented on :class:`Guard`:

* **Parse failures** (``on_parse_error``): ``"flag"`` (default, fail closed), ``"allow"`` (fail open: only
  verdicts that were read count), ``"raise"`` (:class:`~guardreasoner_vl.errors.ParseError`). Either way
  the result says ``status="parse_error"`` and keeps the raw output.
* **Bad input**: :meth:`Guard.moderate` raises :class:`~guardreasoner_vl.errors.InvalidInputError`;
  :meth:`Guard.moderate_batch` never drops an item: a bad one gets a result with
  ``status="invalid_input"``, ``flagged=True`` and the reason in ``error``, the others are judged.
* **Engine failures** on one item: ``moderate`` raises :class:`~guardreasoner_vl.errors.BackendError`;
  ``moderate_batch`` returns ``status="engine_error"``, ``flagged=True`` for that item.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from guardreasoner_vl.backends import FakeBackend, available_backend, load_backend_class
from guardreasoner_vl.backends.base import Backend, Generation, GenerationRequest, SamplingParams
from guardreasoner_vl.errors import BackendError, InvalidInputError, ParseError
from guardreasoner_vl.inputs import DEFAULT_LIMITS, InputLimits, prepare_image, validate_text
from guardreasoner_vl.parsing import parse_output
from guardreasoner_vl.prompts import DEFAULT_MODEL, ModelFamily, detect_family, render_prompt
from guardreasoner_vl.types import GuardResult, ModerationItem, OnParseError, Usage, Verdict

__all__ = ["Guard", "PreparedItem"]

logger = logging.getLogger(__name__)

ItemLike = ModerationItem | Mapping[str, Any] | str


@dataclass(frozen=True, slots=True)
class PreparedItem:
    """A validated input, ready for an engine: its generation request and what was asked."""

    request: GenerationRequest
    has_response: bool


class Guard:
    """A GuardReasoner(-VL) guard: give it a request (text, image or both) and optionally the AI's response.

    Args:
        model: Hub id or checkpoint directory. Default: ``yueliu1999/GuardReasoner-VL-3B``.
        backend: ``"auto"`` (vLLM when installed with a GPU, else transformers), ``"transformers"``,
            ``"vllm"``, ``"remote"``, ``"fake"``, or a :class:`~guardreasoner_vl.backends.Backend` instance.
        family: force the model family (``"vl"`` or ``"text"``); detected from the id or config otherwise.
        device: where the transformers engine runs (default: CUDA when available, else CPU).
        dtype: model dtype for the transformers engine (default: bf16 on GPU, fp32 on CPU).
        max_new_tokens: generation budget (default: 4096 VL, 2048 text, as in the reference).
        temperature, top_p, seed: decoding; the default is greedy (the reference decoding).
        on_parse_error: ``"flag"`` (default), ``"allow"`` or ``"raise"``; see the module docs.
        limits: input bounds (:class:`~guardreasoner_vl.inputs.InputLimits`): text length, image bytes and
            pixels, resize bounds, URL fetching.
        batch_size: most prompts per engine call.
        backend_options: extra keyword arguments for the engine's constructor.

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
        backend: str | Backend = "auto",
        family: ModelFamily | str | None = None,
        device: str | None = None,
        dtype: Any = None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        on_parse_error: OnParseError = "flag",
        limits: InputLimits | None = None,
        batch_size: int = 8,
        backend_options: Mapping[str, Any] | None = None,
    ) -> None:
        if on_parse_error not in ("flag", "allow", "raise"):
            raise InvalidInputError(f"on_parse_error must be 'flag', 'allow' or 'raise', got {on_parse_error!r}")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise InvalidInputError("max_new_tokens must be at least 1")
        self.limits = limits or DEFAULT_LIMITS
        self.on_parse_error: OnParseError = on_parse_error
        forced = ModelFamily(family) if family is not None else None
        options = dict(backend_options or {})
        if isinstance(backend, str):
            name = available_backend() if backend == "auto" else backend
            if name == "fake":
                self.backend: Backend = FakeBackend(**options)
                self.model_id = str(model) if model != DEFAULT_MODEL else "fake"
                self.family = forced or detect_family(model)
            else:
                cls = load_backend_class(name)
                if name in ("transformers", "vllm"):  # local engines: image bounds follow the input limits
                    if name == "transformers":
                        options.setdefault("device", device)
                    if dtype is not None or name == "transformers":
                        options.setdefault("dtype", dtype)
                    options.setdefault("min_pixels", self.limits.min_pixels)
                    options.setdefault("max_pixels", self.limits.max_pixels)
                options.setdefault("batch_size", batch_size)
                self.backend = cls(model, family=forced, **options)
                self.model_id = str(model)
                self.family = getattr(self.backend, "family", None) or forced or detect_family(model)
        else:
            if not callable(getattr(backend, "generate", None)):
                raise InvalidInputError(f"backend must be a name or a Backend, got {type(backend).__name__}")
            self.backend = backend
            default_id = str(model) if model != DEFAULT_MODEL else backend.name
            self.model_id = str(getattr(backend, "model_id", None) or default_id)
            self.family = forced or getattr(backend, "family", None) or detect_family(model)
        self.params = SamplingParams(
            max_new_tokens=max_new_tokens or self.family.default_max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        self._closed = False

    # -- preparing inputs -------------------------------------------------------------------------

    def prepare(self, text: str | None = None, image: Any = None, *, response: str | None = None) -> PreparedItem:
        """Validate one input and render its prompt (what :meth:`moderate` does before generating).

        Raises:
            InvalidInputError: what was wrong with the input.
        """
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
        check_prompt = getattr(self.backend, "check_prompt", None)  # engine-specific refusals (remote engine)
        if check_prompt is not None:
            check_prompt(prompt)
        return PreparedItem(GenerationRequest(prompt=prompt, image=prepared), has_response=response is not None)

    def _prepare_item(self, item: ItemLike) -> PreparedItem:
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
        harmful = request is Verdict.HARMFUL or response is Verdict.HARMFUL
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
        )

    def _run(self, items: Sequence[PreparedItem], params: SamplingParams) -> list[GuardResult]:
        start = time.perf_counter()
        generations = self.backend.generate([i.request for i in items], params)
        return self._finish(items, generations, time.perf_counter() - start)

    def _finish(
        self, items: Sequence[PreparedItem], generations: Sequence[Generation], latency: float
    ) -> list[GuardResult]:
        if len(generations) != len(items):
            raise BackendError(
                f"backend {self.backend.name!r} returned {len(generations)} generations for {len(items)} requests"
            )
        return [self._result(i, g, latency) for i, g in zip(items, generations, strict=True)]

    def _check_single(self, result: GuardResult) -> GuardResult:
        if result.status == "engine_error":
            raise BackendError(result.error or "the engine failed")
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

    # -- public API ---------------------------------------------------------------------------------

    def moderate(self, text: str | None = None, image: Any = None, *, response: str | None = None) -> GuardResult:
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
            BackendError: the engine failed.
            ParseError: the output could not be read and ``on_parse_error="raise"``.
        """
        self._check_open()
        item = self.prepare(text, image, response=response)
        return self._check_single(self._run([item], self.params)[0])

    def moderate_batch(self, items: Iterable[ItemLike], *, sampling: SamplingParams | None = None) -> list[GuardResult]:
        """Judge many inputs in batched engine calls; results come back in input order.

        Args:
            items: strings (request text), dicts with ``text``/``image``/``response``, or
                :class:`ModerationItem`.
            sampling: decoding for this call only (e.g. sampling passes for hard-sample mining).

        Returns:
            One :class:`GuardResult` per item. A bad item is not dropped: its result has
            ``status="invalid_input"``, ``flagged=True`` and the reason in ``error``.
        """
        self._check_open()
        results, pending = self._prepare_batch(items)
        if pending:
            done = self._run([p for _, p in pending], sampling or self.params)
            for (index, _), result in zip(pending, done, strict=True):
                results[index] = result
        return self._check_batch([r for r in results if r is not None])

    def _prepare_batch(
        self, items: Iterable[ItemLike]
    ) -> tuple[list[GuardResult | None], list[tuple[int, PreparedItem]]]:
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise InvalidInputError("moderate_batch takes a list of items (use moderate() for one)")
        results: list[GuardResult | None] = []
        pending: list[tuple[int, PreparedItem]] = []
        for index, item in enumerate(items):
            try:
                pending.append((index, self._prepare_item(item)))
                results.append(None)
            except InvalidInputError as exc:
                results.append(GuardResult(flagged=True, status="invalid_input", error=str(exc), model=self.model_id))
        return results, pending

    async def amoderate(
        self, text: str | None = None, image: Any = None, *, response: str | None = None
    ) -> GuardResult:
        """Async :meth:`moderate`: never blocks the event loop (local engines run in a worker thread)."""
        results = await self._arun_batch([{"text": text, "image": image, "response": response}], strict=True)
        return self._check_single(results[0])

    async def amoderate_batch(
        self, items: Iterable[ItemLike], *, sampling: SamplingParams | None = None
    ) -> list[GuardResult]:
        """Async :meth:`moderate_batch`."""
        return self._check_batch(await self._arun_batch(list(items), strict=False, sampling=sampling))

    async def _arun_batch(
        self, items: list[Any], *, strict: bool, sampling: SamplingParams | None = None
    ) -> list[GuardResult]:
        self._check_open()
        if strict:  # single item: invalid input raises, like moderate()
            item = items[0]
            prepared = await asyncio.to_thread(self.prepare, item["text"], item["image"], response=item["response"])
            results: list[GuardResult | None] = [None]
            pending = [(0, prepared)]
        else:
            results, pending = await asyncio.to_thread(self._prepare_batch, items)
        if pending:
            params = sampling or self.params
            requests = [p.request for _, p in pending]
            start = time.perf_counter()
            agenerate = getattr(self.backend, "agenerate", None)
            if agenerate is not None:
                generations = await agenerate(requests, params)
            else:
                generations = await asyncio.to_thread(self.backend.generate, requests, params)
            done = self._finish([p for _, p in pending], generations, time.perf_counter() - start)
            for (index, _), result in zip(pending, done, strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    def with_options(self, **changes: Any) -> Guard:
        """A guard sharing this one's loaded engine with other decoding or parse policy.

        Accepts ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``on_parse_error``, ``limits``.

        Example:
            >>> g = Guard(backend="fake").with_options(on_parse_error="allow", max_new_tokens=64)
            >>> g.params.max_new_tokens, g.on_parse_error
            (64, 'allow')
        """
        allowed = {"max_new_tokens", "temperature", "top_p", "seed", "on_parse_error", "limits"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidInputError(f"with_options cannot change {sorted(unknown)}; allowed: {sorted(allowed)}")
        clone = object.__new__(Guard)
        clone.__dict__.update(self.__dict__)
        param_changes = {k: changes[k] for k in ("max_new_tokens", "temperature", "top_p", "seed") if k in changes}
        clone.params = replace(self.params, **param_changes)
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

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidInputError("this Guard is closed; create a new one")

    def close(self) -> None:
        """Free the engine (model weights, connections). Safe to call twice."""
        if not self._closed:
            self._closed = True
            self.backend.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Guard(model={self.model_id!r}, family={self.family.value!r}, backend={self.backend.name!r})"
