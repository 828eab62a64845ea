"""The error tree of guardreasoner-vl.

Every error the library raises on purpose derives from :class:`GuardError`::

    GuardError
    ├── InvalidInputError (also ValueError)      bad text, image, option or file from the caller
    ├── MissingDependencyError (also ImportError) an optional extra is not installed
    ├── ModelLoadError                            a checkpoint could not be found or loaded
    ├── BackendError                              the engine failed while generating
    ├── GuardClosedError                          the guard (or its engine) was closed
    ├── ParseError                                the model's output could not be read
    │                                             (raised only with ``on_parse_error="raise"``)
    └── GuardViolation                            raised by integrations when content is flagged

Catch :class:`GuardError` to handle everything from this library in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guardreasoner_vl.types import GuardResult


class GuardError(Exception):
    """Root of every error raised by guardreasoner-vl."""


class InvalidInputError(GuardError, ValueError):
    """The caller passed something the guard cannot judge (and the message says what is allowed)."""


class MissingDependencyError(GuardError, ImportError):
    """An optional dependency is missing; the message names the pip command that installs it."""

    def __init__(self, package: str, extra: str, *, feature: str | None = None) -> None:
        what = feature or package
        super().__init__(
            f"{what} needs the optional dependency {package!r}, which is not installed. "
            f'Install it with: pip install "guardreasoner-vl[{extra}]"'
        )
        self.package = package
        self.extra = extra


class ModelLoadError(GuardError):
    """A model, tokenizer or processor could not be loaded."""


class BackendError(GuardError):
    """The generation engine failed (out of memory, server error, lost connection, ...)."""


class GuardClosedError(GuardError):
    """The guard was closed (or the guard it was cloned from was), so it cannot judge anything any more.

    Not an :class:`InvalidInputError`: the input is fine, the guard is not, and integrations that treat
    invalid input as "block this message" must not silently block all traffic because of it.
    """


class ParseError(GuardError):
    """The model's output did not contain the verdicts that were asked for.

    Attributes:
        result: the :class:`~guardreasoner_vl.types.GuardResult` that could not be judged,
            with the raw output, so nothing is lost.
        results: for ``moderate_batch``, every result of the batch, in input order.
    """

    def __init__(
        self, message: str, *, result: GuardResult | None = None, results: list[GuardResult] | None = None
    ) -> None:
        super().__init__(message)
        self.result = result
        self.results = results


class GuardViolation(GuardError):
    """Content was flagged by the guard (raised by integrations in ``"error"`` mode).

    Attributes:
        result: the guard's result that flagged the content.
        stage: where it was caught, e.g. ``"input"``, ``"output"`` or ``"tool"``.
    """

    def __init__(self, message: str, *, result: GuardResult, stage: str, **extra: Any) -> None:
        super().__init__(message)
        self.result = result
        self.stage = stage
        self.extra = extra


def require(module: str, extra: str, *, package: str | None = None, feature: str | None = None) -> Any:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``extra``.

    Example:
        >>> json = require("json", "core")
        >>> json.dumps([1])
        '[1]'
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        root = module.split(".")[0]
        missing = getattr(exc, "name", None) or root
        if missing.split(".")[0] != root and package is None:
            raise
        raise MissingDependencyError(package or root, extra, feature=feature) from exc
