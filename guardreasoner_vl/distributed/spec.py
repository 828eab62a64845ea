"""What every actor of a Ray job builds: :class:`GuardSpec`, a :class:`~guardreasoner_vl.Guard` not yet loaded.

A loaded guard holds model weights and cannot travel to another machine; its recipe can. Each actor of the
pool calls :meth:`GuardSpec.build` once, in its own process (on its own GPU), and judges every block it is
given with that one guard.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.prompts import DEFAULT_MODEL

if TYPE_CHECKING:
    from guardreasoner_vl.guard import Guard
    from guardreasoner_vl.inputs import InputLimits

__all__ = ["GuardSpec"]


def _guard_parameters() -> set[str]:
    from guardreasoner_vl.guard import Guard

    params = inspect.signature(Guard.__init__).parameters
    return {name for name in params if name not in ("self", "model")}


def _is_factory(backend: Any) -> bool:
    """An engine class or a callable making one (not an engine name, nor an engine object)."""
    if isinstance(backend, type):
        return True
    return callable(backend) and not isinstance(backend, str) and not callable(getattr(backend, "generate", None))


class GuardSpec:
    """The model and :class:`~guardreasoner_vl.Guard` keyword arguments that every actor loads, once.

    Args:
        model: Hub id or checkpoint directory (the directory must exist on every node that runs an actor).
        **options: any keyword argument of :class:`~guardreasoner_vl.Guard` (``backend``, ``device``,
            ``max_new_tokens``, ``limits``, ``batch_size``, ``backend_options`` ...). ``backend`` is an
            engine name (``"transformers"``, ``"vllm"``, ``"remote"``, ``"fake"``, a registered one), or a
            callable that makes an engine (an engine class, a ``functools.partial``), called once in each
            actor: an engine object holds locks, threads or weights and does not travel.

    Raises:
        InvalidInputError: an option that :class:`~guardreasoner_vl.Guard` does not take.

    Example:
        >>> spec = GuardSpec("yueliu1999/GuardReasoner-VL-3B", backend="vllm", batch_size=64)
        >>> spec.batch_size
        64
        >>> GuardSpec(backend="fake").build().moderate("a bomb").flagged
        True
        >>> from guardreasoner_vl.backends import FakeBackend
        >>> GuardSpec(backend=FakeBackend).build().backend.name   # a class: each actor makes its own
        'fake'

    """

    def __init__(self, model: str | Path = DEFAULT_MODEL, **options: Any) -> None:
        unknown = sorted(set(options) - _guard_parameters())
        backend = options.get("backend")
        if not (backend is None or isinstance(backend, str) or _is_factory(backend)):
            raise InvalidInputError(
                f"GuardSpec's backend must be an engine name or a callable that makes the engine in each actor "
                f"(e.g. the engine's class, or functools.partial(MyEngine, ...)), got a {type(backend).__name__} "
                "object; an engine object does not travel to the actors"
            )
        if unknown:
            raise InvalidInputError(
                f"GuardSpec got {', '.join(map(repr, unknown))}; it takes the keyword arguments of Guard: "
                f"{', '.join(sorted(_guard_parameters()))}"
            )
        self.model = str(model)
        self.options: dict[str, Any] = dict(options)

    @property
    def batch_size(self) -> int:
        """Prompts per engine call (the guard's ``batch_size``; 8 when not given, as :class:`Guard`)."""
        return int(self.options.get("batch_size") or 8)

    @property
    def limits(self) -> InputLimits:
        """The input limits the guard will apply (its ``limits``, else the defaults)."""
        from guardreasoner_vl.inputs import DEFAULT_LIMITS

        return self.options.get("limits") or DEFAULT_LIMITS

    @property
    def backend(self) -> str:
        """The engine's name (or the engine object's class name)."""
        backend = self.options.get("backend", "auto")
        return backend if isinstance(backend, str) else str(getattr(backend, "__name__", type(backend).__name__))

    def with_options(self, **changes: Any) -> GuardSpec:
        """A copy with some options changed (``allow_urls`` is a shortcut that widens :attr:`limits`)."""
        options = dict(self.options)
        if changes.pop("allow_urls", False):
            options["limits"] = replace(self.limits, allow_urls=True)
        options.update(changes)
        return GuardSpec(self.model, **options)

    def build(self) -> Guard:
        """Load the guard (what each actor does once, when it starts)."""
        from guardreasoner_vl.guard import Guard

        options = dict(self.options)
        backend: Any = options.get("backend")
        if _is_factory(backend):
            options["backend"] = backend()
        return Guard(self.model, **options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GuardSpec) and (self.model, self.options) == (other.model, other.options)

    __hash__ = None  # type: ignore[assignment]  # mutable options: not hashable

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if v is not None)
        return f"GuardSpec({self.model!r}{', ' if shown else ''}{shown})"

    @classmethod
    def from_mapping(cls, model: str | Path, options: Mapping[str, Any]) -> GuardSpec:
        """From ``(model, options)``, e.g. :func:`guardreasoner_vl.cli.guard_kwargs_from_args`'s answer."""
        return cls(model, **dict(options))
