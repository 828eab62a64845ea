"""Generation engines behind one declared contract (:class:`Backend`), and the registry that names them.

Only the contract and the test doubles are imported here; each engine module imports its heavy
dependency itself, when it is used, and names the extra to install when it is missing.

Engines are found by name in this order: those added with :func:`register_backend`, the built-ins
(:data:`BACKENDS`, imported lazily), then the entry points of the ``guardreasoner_vl.backends`` group,
so a package adds an engine with, in its ``pyproject.toml``::

    [project.entry-points."guardreasoner_vl.backends"]
    myengine = "mypackage.engine:MyBackend"
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from guardreasoner_vl.backends.base import (
    Backend,
    EngineSettings,
    Generation,
    GenerationDelta,
    GenerationRequest,
    SamplingParams,
    as_backend,
)
from guardreasoner_vl.backends.fake import FakeBackend, FunctionBackend, scored_generation, verdict_output
from guardreasoner_vl.errors import InvalidInputError

__all__ = [
    "BACKENDS",
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendFactory",
    "EngineSettings",
    "FakeBackend",
    "FunctionBackend",
    "Generation",
    "GenerationDelta",
    "GenerationRequest",
    "SamplingParams",
    "as_backend",
    "available_backend",
    "backend_names",
    "create_backend",
    "register_backend",
    "scored_generation",
    "verdict_output",
]

BACKENDS: dict[str, str] = {
    "transformers": "guardreasoner_vl.backends.transformers:TransformersBackend",
    "remote": "guardreasoner_vl.backends.remote:RemoteBackend",
    "vllm": "guardreasoner_vl.backends.vllm:VLLMBackend",
    "fake": "guardreasoner_vl.backends.fake:FakeBackend",
}
"""The built-in engines: name -> ``module:Class`` (imported only when used)."""

ENTRY_POINT_GROUP = "guardreasoner_vl.backends"
"""The entry-point group through which installed packages add engines (name -> ``module:attr``)."""

BackendFactory = Callable[[str | Path, EngineSettings], Any]
"""A callable ``(model, settings) -> engine``; a :class:`Backend` subclass is used through its ``from_settings``."""

_registered: dict[str, type[Backend] | BackendFactory | str] = {}
_lock = threading.Lock()


def register_backend(name: str, target: type[Backend] | BackendFactory | str, *, replace: bool = False) -> None:
    """Add an engine under ``name``, so that ``Guard(backend=name)`` builds it.

    Args:
        name: the engine's name (``Guard(backend=name)``, ``--backend name``).
        target: a :class:`Backend` subclass (built with its :meth:`~Backend.from_settings`), a factory
            ``(model, settings) -> engine``, or ``"module:attr"`` naming either (imported when first used).
        replace: allow replacing an engine of that name (built-ins included).

    Raises:
        InvalidInputError: the name is taken (and ``replace`` is False), empty or ``"auto"``.

    Example:
        >>> from guardreasoner_vl import Guard
        >>> register_backend("no-keywords", lambda model, settings: FakeBackend(harmful_keywords=[]))
        >>> Guard(backend="no-keywords").moderate("a bomb").flagged
        False
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise InvalidInputError(f"an engine name must be a non-empty string other than 'auto', got {name!r}")
    if not (isinstance(target, str) or callable(target)):
        raise InvalidInputError(f"register_backend takes a Backend class, a factory or 'module:attr', got {target!r}")
    with _lock:
        if not replace and (name in _registered or name in BACKENDS):
            raise InvalidInputError(f"an engine named {name!r} is already registered; pass replace=True to replace it")
        _registered[name] = target


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def backend_names() -> list[str]:
    """Every engine name ``Guard(backend=...)`` accepts: registered, built-in, entry points, and ``auto``."""
    return sorted({*_registered, *BACKENDS, *_entry_points(), "auto"})


def _resolve(name: str) -> type[Backend] | BackendFactory:
    target: Any = _registered.get(name) or BACKENDS.get(name)
    if target is None:
        entry = _entry_points().get(name)
        if entry is None:
            raise InvalidInputError(f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}")
        return entry.load()  # type: ignore[no-any-return]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
    return target  # type: ignore[no-any-return]


def load_backend_class(name: str) -> Any:
    """What is registered under ``name`` (imports its module, and so its engine, now)."""
    return _resolve(name)


def create_backend(name: str, model: str | Path, settings: EngineSettings | None = None) -> Backend:
    """Build the engine registered under ``name`` for ``model`` (``"auto"``: see :func:`available_backend`).

    Raises:
        InvalidInputError: unknown name (the message lists the choices), or a factory that returned no engine.
    """
    settings = settings or EngineSettings()
    target = _resolve(available_backend() if name == "auto" else name)
    if isinstance(target, type) and issubclass(target, Backend):
        engine: Any = target.from_settings(model, settings)
    else:
        engine = cast(BackendFactory, target)(model, settings)
    return as_backend(engine)


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
