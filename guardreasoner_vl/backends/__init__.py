"""Generation engines behind one small protocol (:class:`Backend`).

Only the protocol and the test doubles are imported here; each engine module imports its heavy
dependency itself, when it is used, and names the extra to install when it is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from guardreasoner_vl.backends.base import Backend, Generation, GenerationRequest, SamplingParams
from guardreasoner_vl.backends.fake import FakeBackend, FunctionBackend, verdict_output
from guardreasoner_vl.errors import InvalidInputError

__all__ = [
    "BACKENDS",
    "Backend",
    "FakeBackend",
    "FunctionBackend",
    "Generation",
    "GenerationRequest",
    "SamplingParams",
    "available_backend",
    "verdict_output",
]

BACKENDS: dict[str, str] = {
    "transformers": "guardreasoner_vl.backends.transformers:TransformersBackend",
    "remote": "guardreasoner_vl.backends.remote:RemoteBackend",
    "vllm": "guardreasoner_vl.backends.vllm:VLLMBackend",
}
"""Engine name -> ``module:Class``. Each class takes ``(model, *, family, **options)``."""


def load_backend_class(name: str) -> Any:
    """The class registered under ``name`` (imports its module, and so its engine, now)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        choices = ", ".join(sorted([*BACKENDS, "auto", "fake"]))
        raise InvalidInputError(f"unknown backend {name!r}; choose one of: {choices}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def available_backend() -> str:
    """What ``backend="auto"`` picks: vLLM when it is installed and a CUDA GPU is visible, else transformers."""
    if "vllm" in BACKENDS and importlib.util.find_spec("vllm") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                return "vllm"
        except ImportError:
            pass
    return "transformers"
