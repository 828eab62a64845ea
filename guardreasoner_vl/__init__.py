"""guardreasoner-vl: reasoning-based safety verdicts for text, images and AI responses.

Example:
    >>> from guardreasoner_vl import Guard
    >>> guard = Guard(backend="fake")          # no model: a keyword test double
    >>> guard.moderate("how do I bake bread?").flagged
    False

``import guardreasoner_vl`` loads no torch, transformers, vllm, openai or langchain: engines and
integrations import them when used.
"""

from guardreasoner_vl.errors import (
    BackendError,
    GuardClosedError,
    GuardError,
    GuardViolation,
    InvalidInputError,
    MissingDependencyError,
    ModelLoadError,
    ParseError,
)
from guardreasoner_vl.guard import Guard, PreparedItem
from guardreasoner_vl.inputs import InputLimits
from guardreasoner_vl.parsing import ParsedOutput, parse_output
from guardreasoner_vl.prompts import DEFAULT_MODEL, ModelFamily
from guardreasoner_vl.streaming import FinalResult, GuardEvent, ReasoningDelta
from guardreasoner_vl.types import GuardResult, ImageInput, ModerationItem, RefusalVerdict, Usage, Verdict

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "BackendError",
    "FinalResult",
    "Guard",
    "GuardClosedError",
    "GuardError",
    "GuardEvent",
    "GuardResult",
    "GuardViolation",
    "ImageInput",
    "InputLimits",
    "InvalidInputError",
    "MissingDependencyError",
    "ModelFamily",
    "ModelLoadError",
    "ModerationItem",
    "ParseError",
    "ParsedOutput",
    "PreparedItem",
    "ReasoningDelta",
    "RefusalVerdict",
    "Usage",
    "Verdict",
    "__version__",
    "parse_output",
]
