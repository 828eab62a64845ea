"""The one small protocol every engine implements.

Rendered prompts (+ images) in, generated text (+ token counts) out, batch first. Prompt building and
parsing stay in the core: a backend never builds a prompt of its own and never parses verdicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image

    from guardreasoner_vl.prompts import RenderedPrompt

__all__ = ["Backend", "Generation", "GenerationRequest", "SamplingParams"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Decoding settings. The defaults are the reference decoding: greedy.

    Attributes:
        max_new_tokens: generation budget (the Guard sets 4096 for VL, 2048 for text by default).
        temperature: 0 means greedy.
        top_p: nucleus sampling mass (used only when temperature > 0).
        seed: seed for sampling, where the engine supports it.
    """

    max_new_tokens: int = 4096
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One prompt to complete.

    Attributes:
        prompt: the rendered reference prompt.
        image: the prepared image (already loaded, RGB and smart-resized) when the prompt has one.
    """

    prompt: RenderedPrompt
    image: Image.Image | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """What an engine produced for one request.

    Attributes:
        text: the generated text, special tokens removed.
        prompt_tokens: tokens in the prompt, when known.
        completion_tokens: tokens generated, when known.
        finish_reason: ``"stop"`` (end of sequence), ``"length"`` (budget hit) or None if unknown.
        error: set when the engine failed on this request alone (the others still count).
    """

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: Literal["stop", "length"] | None = None
    error: str | None = field(default=None)


@runtime_checkable
class Backend(Protocol):
    """A generation engine.

    Implementations: :class:`~guardreasoner_vl.backends.fake.FakeBackend` and ``FunctionBackend`` (tests),
    ``TransformersBackend``, ``VLLMBackend``, ``RemoteBackend``. An engine may add
    ``async def agenerate(requests, params)``; :class:`~guardreasoner_vl.Guard` uses it when present and
    otherwise runs :meth:`generate` in a worker thread. An engine may also add
    ``check_prompt(prompt) -> None``, which :meth:`Guard.prepare <guardreasoner_vl.Guard.prepare>` calls
    on every rendered prompt; raising :class:`~guardreasoner_vl.errors.InvalidInputError` there refuses
    the input before it reaches the engine (the remote engine refuses special-token strings this way).
    """

    name: str

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        """Complete every request; return one :class:`Generation` per request, in order."""
        ...

    def close(self) -> None:
        """Free the engine's resources (weights, connections). Idempotent."""
        ...
