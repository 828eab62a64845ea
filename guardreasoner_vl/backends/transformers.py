"""Hugging Face transformers engine: CPU or CUDA, true batched generation, images per sample.

Loads once in the constructor: the model (with the family spec's auto class:
``AutoModelForImageTextToText`` for the VL family, ``AutoModelForCausalLM`` for the text family),
the fast tokenizer, and for VL the *PIL* image processor
alone. The full ``AutoProcessor`` is not used: Qwen2.5-VL's processor also builds a video processor that
needs torchvision, and the prompt is tokenized here part by part anyway (see
:mod:`guardreasoner_vl.backends.tokenization`), so the image processor and tokenizer are all we need.

Verdict scores (``SamplingParams.logprobs``): a forward hook on the output layer records, at every step, the
logits of the vocabulary's label candidates (the few hundred tokens that can start ``harmful``, ``unharmful``,
``refusal`` or ``compliance``; see :mod:`guardreasoner_vl.scores`) under the model's own distribution (before
any sampling warper): one gather per step, no second forward pass. Logits are log-probabilities up to a
constant per position, which the score (a ratio of candidates of one position) does not see. The positions
kept are those whose generated token is itself a candidate.

Decoding ignores the sampling defaults in the checkpoint's ``generation_config.json`` (Qwen ships a
repetition penalty and top-k there) and uses exactly the :class:`SamplingParams` given: greedy by default,
the reference decoding. Only the end-of-sequence ids are taken from the checkpoint.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
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
from guardreasoner_vl.backends.tokenization import EncodedPrompt, PlainEncoder, TokenPieces, encode_prompt
from guardreasoner_vl.errors import InvalidInputError, ModelLoadError, require
from guardreasoner_vl.hub import resolve_checkpoint
from guardreasoner_vl.inputs import MAX_PIXELS, MIN_PIXELS
from guardreasoner_vl.prompts import ModelFamily, detect_family
from guardreasoner_vl.scores import add_logprobs, is_label_candidate

if TYPE_CHECKING:
    from typing import Self

__all__ = ["TransformersBackend", "resolve_device", "resolve_dtype"]

logger = logging.getLogger(__name__)


def resolve_device(device: str | None) -> str:
    """``None`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    torch = require("torch", "transformers")
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: Any, device: str) -> Any:
    """``None``/``"auto"`` -> bfloat16 on a GPU that supports it (else float16), float32 on CPU."""
    torch = require("torch", "transformers")
    if dtype is None or dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, str):
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise InvalidInputError(f"unknown dtype {dtype!r}; use 'auto', 'bfloat16', 'float16' or 'float32'")
        return value
    return dtype


class TransformersBackend(Backend):
    """Runs a GuardReasoner(-VL) checkpoint with transformers.

    Args:
        model: checkpoint directory or Hub id.
        family: force the model family (else detected from the id or ``config.json``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: CUDA when available.
        dtype: ``"auto"`` (bf16 on GPU, fp32 on CPU), a name such as ``"bfloat16"``, or a torch dtype.
        batch_size: most prompts per ``generate`` call; larger lists are split.
        attn_implementation: passed to ``from_pretrained`` (``"sdpa"`` by default).
        min_pixels, max_pixels: image processor bounds; keep them equal to the Guard's input limits.
        model_kwargs: extra ``from_pretrained`` arguments (``revision``, ``device_map``, ...).
    """

    name = "transformers"

    @classmethod
    def from_settings(cls, model: str | Path, settings: EngineSettings) -> Self:
        """Takes the family, device, dtype, image bounds and batch size, then the engine options."""
        return cls(
            model,
            **settings.merged(
                family=settings.family,
                device=settings.device,
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
        device: str | None = None,
        dtype: Any = None,
        batch_size: int = 8,
        attn_implementation: str = "sdpa",
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._torch = require("torch", "transformers", feature="the transformers backend")
        transformers = require("transformers", "transformers", feature="the transformers backend")
        if batch_size < 1:
            raise InvalidInputError("batch_size must be at least 1")
        self.model_id: str = resolve_checkpoint(model)  # a missing path or an unreachable Hub fails here, at once
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        kwargs = dict(model_kwargs or {})
        try:
            config = transformers.AutoConfig.from_pretrained(self.model_id, **_hub_kwargs(kwargs))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the config of {self.model_id!r}: {exc}") from exc
        self.family: ModelFamily = (
            ModelFamily(family)
            if family
            else detect_family(self.model_id, model_type=getattr(config, "model_type", None))
        )
        spec = self.family.spec
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_id, **_hub_kwargs(kwargs))
            self.image_processor = None
            if spec.supports_images:
                self.image_processor = transformers.AutoImageProcessor.from_pretrained(
                    self.model_id,
                    backend="pil",
                    size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                    **_hub_kwargs(kwargs),
                )
            model_cls = getattr(transformers, spec.model_class)
            kwargs.setdefault("attn_implementation", attn_implementation)
            self.model = model_cls.from_pretrained(self.model_id, dtype=self.dtype, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load {self.model_id!r} with transformers: {exc}") from exc
        if "device_map" not in kwargs:
            self.model.to(self.device)
        self.model.eval()
        self.encoder = PlainEncoder(self.tokenizer)
        self.pieces = TokenPieces(self.tokenizer)
        gen_cfg = getattr(self.model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids: list[int] = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = getattr(gen_cfg, "pad_token_id", None)
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])
        self.max_context = (
            int(getattr(getattr(config, "text_config", config), "max_position_embeddings", 0) or 0) or None
        )
        self._lock = threading.Lock()
        logger.info("loaded %s (%s family) on %s as %s", self.model_id, self.family.value, self.device, self.dtype)

    # -- encoding ---------------------------------------------------------------------------------

    def _encode(self, request: GenerationRequest) -> tuple[EncodedPrompt, dict[str, Any] | None]:
        vision = None
        n_image_tokens = 0
        if request.prompt.has_image:
            if request.image is None or self.image_processor is None:
                raise InvalidInputError("this prompt has an image slot but no image was given")
            vision = self.image_processor(images=[request.image], return_tensors="pt")
            merge = int(getattr(self.image_processor, "merge_size", self.family.spec.merge_size))
            n_image_tokens = int(vision["image_grid_thw"][0].prod().item()) // (merge * merge)
        encoded = encode_prompt(
            self.encoder,
            request.prompt,
            num_image_tokens=n_image_tokens,
            add_prefix=self.family.spec.adds_bos,
        )
        return encoded, vision

    def cache_identity(self) -> dict[str, Any]:
        """The model and its checkpoint files, the dtype, the device type and the attention implementation."""
        config = getattr(getattr(self, "model", None), "config", None)
        return {
            **super().cache_identity(),
            "checkpoint": checkpoint_fingerprint(self.model_id),
            "dtype": str(self.dtype),
            "device": str(self.device).split(":")[0],
            "attention": str(getattr(config, "_attn_implementation", None)),
        }

    def encode(self, request: GenerationRequest) -> list[int]:
        """Token ids this engine would feed the model for ``request`` (for inspection and tests)."""
        return self._encode(request)[0].input_ids

    # -- generation -------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        results: list[Generation | None] = [None] * len(requests)
        encoded: list[tuple[int, EncodedPrompt, dict[str, Any] | None]] = []
        for index, request in enumerate(requests):
            try:
                enc, vision = self._encode(request)
            except InvalidInputError as exc:
                results[index] = Generation(text="", error=str(exc))
                continue
            if self.max_context and len(enc.input_ids) + params.max_new_tokens > self.max_context:
                results[index] = Generation(
                    text="",
                    prompt_tokens=len(enc.input_ids),
                    error=(
                        f"prompt has {len(enc.input_ids)} tokens; with max_new_tokens={params.max_new_tokens} "
                        f"it exceeds the model context of {self.max_context} tokens"
                    ),
                )
                continue
            encoded.append((index, enc, vision))
        # Similar lengths together: less padding. Results go back to input order.
        encoded.sort(key=lambda item: len(item[1].input_ids))
        with self._lock:
            for start in range(0, len(encoded), self.batch_size):
                chunk = encoded[start : start + self.batch_size]
                for (index, _, _), generation in zip(chunk, self._generate_chunk(chunk, params), strict=True):
                    results[index] = generation
        return [r if r is not None else Generation(text="", error="not generated") for r in results]

    def _generate_chunk(
        self, chunk: list[tuple[int, EncodedPrompt, dict[str, Any] | None]], params: SamplingParams
    ) -> list[Generation]:
        torch = self._torch
        inputs, gen_kwargs, longest = self._chunk_inputs(chunk, params)
        recorder = None
        if params.logprobs:
            recorder = _CandidateRecorder(self.model.get_output_embeddings(), self._candidate_ids(), self.model.device)
        try:
            with torch.inference_mode():
                output = self.model.generate(**inputs, **gen_kwargs)
        except (RuntimeError, ValueError) as exc:  # OOM and shape errors: report, do not crash the batch
            message = f"transformers generate failed: {exc}"
            logger.warning(message)
            return [Generation(text="", error=message) for _ in chunk]
        finally:
            if recorder is not None:
                recorder.remove()
        return self._chunk_generations(chunk, output, recorder, longest)

    def _chunk_inputs(
        self, chunk: list[tuple[int, EncodedPrompt, dict[str, Any] | None]], params: SamplingParams
    ) -> tuple[dict[str, Any], dict[str, Any], int]:
        """``generate``'s tensors and keywords for a chunk (left-padded), and the padded prompt length."""
        torch = self._torch
        longest = max(len(enc.input_ids) for _, enc, _ in chunk)
        input_ids, attention, mm_types = [], [], []
        for _, enc, _ in chunk:
            pad = longest - len(enc.input_ids)
            input_ids.append([self.pad_token_id] * pad + enc.input_ids)
            attention.append([0] * pad + [1] * len(enc.input_ids))
            mm_types.append([0] * pad + enc.image_mask)
        inputs: dict[str, Any] = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long, device=self.model.device),
            "attention_mask": torch.tensor(attention, dtype=torch.long, device=self.model.device),
        }
        visions = [vision for _, _, vision in chunk if vision is not None]
        if visions:
            inputs["pixel_values"] = torch.cat([v["pixel_values"] for v in visions]).to(
                self.model.device, dtype=self.dtype
            )
            inputs["image_grid_thw"] = torch.cat([v["image_grid_thw"] for v in visions]).to(self.model.device)
            inputs["mm_token_type_ids"] = torch.tensor(mm_types, dtype=torch.int, device=self.model.device)
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": not params.greedy,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "repetition_penalty": 1.0,
            "top_k": None,
        }
        if params.greedy:
            gen_kwargs.update(temperature=None, top_p=None)
        else:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        return inputs, gen_kwargs, longest

    def _chunk_generations(
        self,
        chunk: list[tuple[int, EncodedPrompt, dict[str, Any] | None]],
        output: Any,
        recorder: _CandidateRecorder | None,
        longest: int,
    ) -> list[Generation]:
        new_ids = output[:, longest:]
        recorded = recorder.positions(new_ids) if recorder is not None else None
        new_tokens = new_ids.tolist()
        eos = set(self.eos_token_ids)
        generations = []
        for row, ((_, enc, _), tokens) in enumerate(zip(chunk, new_tokens, strict=True)):
            stop = next((i for i, tok in enumerate(tokens) if tok in eos), None)
            kept = tokens if stop is None else tokens[:stop]
            text = self.tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            trace = None
            if recorded is not None:
                candidates = {t: c for t, c in recorded.get(row, {}).items() if t < len(kept)}
                trace = self.pieces.trace(kept, text, candidates)
            generations.append(
                Generation(
                    text=text,
                    prompt_tokens=len(enc.input_ids),
                    completion_tokens=len(kept) + (0 if stop is None else 1),
                    finish_reason="length" if stop is None else "stop",
                    logprobs=trace,
                )
            )
        return generations

    # -- streaming --------------------------------------------------------------------------------

    def stream(
        self, request: GenerationRequest, params: SamplingParams, *, cancel: threading.Event | None = None
    ) -> Iterator[StreamItem]:
        """Stream one request with ``transformers.TextIteratorStreamer``; the final :class:`Generation` is the one
        :meth:`generate` returns for it (same inputs, same ``generate`` call, same post-processing).

        ``generate`` runs in a thread of its own, under the engine's lock (so it never overlaps a batch or another
        stream), with a stopping criterion that ends it at the next step once ``cancel`` is set or this iterator
        is closed; the iterator then waits for the thread (one step), so nothing outlives it. A consumer that
        neither reads nor closes the iterator only delays the end: the streamer's queue is unbounded, so
        ``generate`` runs to its ``max_new_tokens`` and releases the lock.
        """
        try:
            enc, vision = self._encode(request)
        except InvalidInputError as exc:
            yield Generation(text="", error=str(exc))
            return
        if self.max_context and len(enc.input_ids) + params.max_new_tokens > self.max_context:
            yield Generation(
                text="",
                prompt_tokens=len(enc.input_ids),
                error=(
                    f"prompt has {len(enc.input_ids)} tokens; with max_new_tokens={params.max_new_tokens} "
                    f"it exceeds the model context of {self.max_context} tokens"
                ),
            )
            return
        transformers = require("transformers", "transformers", feature="the transformers backend")
        torch = self._torch
        chunk = [(0, enc, vision)]
        stop = cancel if cancel is not None else threading.Event()
        streamer = transformers.TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        criteria = transformers.StoppingCriteriaList([_stop_when_set(transformers, torch, stop)])
        outcome: dict[str, Any] = {}

        def run() -> None:
            ended = False
            try:
                while not self._lock.acquire(timeout=0.05):  # another batch or stream holds the engine
                    if stop.is_set():  # given up while waiting for it
                        outcome["cancelled"] = True
                        return
                try:
                    if stop.is_set():
                        outcome["cancelled"] = True
                        return
                    if getattr(self, "model", None) is None:
                        outcome["error"] = "this transformers backend is closed"
                        return
                    inputs, gen_kwargs, longest = self._chunk_inputs(chunk, params)
                    recorder = None
                    if params.logprobs:
                        recorder = _CandidateRecorder(
                            self.model.get_output_embeddings(), self._candidate_ids(), self.model.device
                        )
                    try:
                        with torch.inference_mode():
                            output = self.model.generate(
                                **inputs, **gen_kwargs, streamer=streamer, stopping_criteria=criteria
                            )
                        ended = True  # generate ends the streamer itself
                        outcome["generation"] = self._chunk_generations(chunk, output, recorder, longest)[0]
                    finally:
                        if recorder is not None:
                            recorder.remove()
                finally:
                    self._lock.release()
            except (RuntimeError, ValueError) as exc:  # OOM and shape errors: this request's error
                outcome["error"] = f"transformers generate failed: {exc}"
                logger.warning(outcome["error"])
            except BaseException as exc:  # anything else reaches the consumer
                outcome["exception"] = exc
            finally:
                if not ended:
                    streamer.end()  # wake the consumer

        thread = threading.Thread(target=run, name="grvl-transformers-stream", daemon=True)
        thread.start()
        try:
            for text in streamer:
                if text:
                    yield GenerationDelta(text)
            thread.join()
            if "exception" in outcome:
                raise outcome["exception"]
            if "generation" in outcome:
                yield outcome["generation"]
            elif not outcome.get("cancelled"):
                yield Generation(text="", error=outcome.get("error", "transformers generate produced nothing"))
        finally:
            stop.set()
            thread.join()

    def _candidate_ids(self) -> dict[int, str]:
        """The vocabulary's label candidates (scanned once, on the first request for scores)."""
        return self.pieces.candidates(is_label_candidate)

    def close(self) -> None:
        model = getattr(self, "model", None)
        if model is None:
            return
        self.model = None
        del model
        import gc

        gc.collect()
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()


def _stop_when_set(transformers: Any, torch: Any, event: threading.Event) -> Any:
    """A ``StoppingCriteria`` that ends ``generate`` at the next step once ``event`` is set (a stream's consumer
    went away). It changes nothing while the event is clear."""

    class StopWhenSet(transformers.StoppingCriteria):  # type: ignore[misc]
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopWhenSet()


class _CandidateRecorder:
    """Records the label candidates' logits at every generation step, from a forward hook on the output layer
    (it sees the model's logits before any sampling warper, and changes nothing).

    Each forward pass of ``generate`` predicts one new token from its last position. A logit is the
    log-probability plus the position's log-normaliser (``logsumexp`` over the vocabulary), the same for every
    candidate of that position; the score compares candidates of one position only, so the normaliser
    cancels and is never computed (one gather per step). The gathered logits stay on the device until
    :meth:`positions` reads what is needed.
    """

    def __init__(self, head: Any, candidates: dict[int, str], device: Any) -> None:
        import torch

        self._torch = torch
        self.ids = list(candidates)
        self.texts = [candidates[i] for i in self.ids]
        self._index = torch.tensor(self.ids, dtype=torch.long, device=device)
        self._picked: list[Any] = []
        self._handle = head.register_forward_hook(self._hook)

    def _hook(self, module: Any, inputs: Any, output: Any) -> None:
        self._picked.append(output[:, -1, :].index_select(1, self._index))

    def remove(self) -> None:
        self._handle.remove()

    def positions(self, new_ids: Any) -> dict[int, dict[int, dict[str, float]]]:
        """``{row: {step: {candidate text: logit}}}`` at the steps whose generated token is a candidate (logits in
        float32: log-probabilities up to the position's normaliser)."""
        torch = self._torch
        if not self._picked or not self.ids:
            return {}
        steps = torch.stack(self._picked, dim=1).float()  # [batch, steps, candidates]
        new_ids = new_ids[:, : steps.shape[1]]
        where = torch.isin(new_ids, self._index).nonzero().tolist()
        if not where:
            return {}
        rows = torch.tensor([w[0] for w in where], device=steps.device)
        cols = torch.tensor([w[1] for w in where], device=steps.device)
        values = steps[rows, cols].cpu().tolist()
        out: dict[int, dict[int, dict[str, float]]] = {}
        for (row, step), logprobs in zip(where, values, strict=True):
            merged: dict[str, float] = {}
            for text, logprob in zip(self.texts, logprobs, strict=True):
                # several ids can write the same text: their probabilities add up
                merged[text] = logprob if text not in merged else add_logprobs(merged[text], logprob)
            out.setdefault(row, {})[step] = merged
        return out


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    keys = ("revision", "cache_dir", "token", "local_files_only", "trust_remote_code")
    return {k: kwargs[k] for k in keys if k in kwargs}
