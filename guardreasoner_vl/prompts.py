"""Model families and the exact prompts their checkpoints were trained on.

Two families are served (reference page, sections 2 and 3):

* ``ModelFamily.VL`` -- GuardReasoner-VL 3B/7B and Eco (Qwen2.5-VL): two tasks (request harmful?,
  response harmful?), a system + user chat prompt, the image at the ``<image>`` position of the user text.
* ``ModelFamily.TEXT`` -- GuardReasoner 1B/3B/8B (Llama 3): three tasks (request harmful?, refusal or
  compliance?, response harmful?), one raw string, no chat template.

A prompt is rendered as a sequence of :class:`PromptPart`. ``special`` parts are the chat template's own
control tokens and are the *only* place a special token may come from; ``text`` parts hold template text
and caller text together and must be tokenized as plain text (see
:func:`guardreasoner_vl.backends.tokenization.encode_prompt`), so that a ``<|im_end|>`` typed by a user
stays five harmless characters. The concatenation of all parts (:attr:`RenderedPrompt.text`) is the
reference rendering byte for byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from guardreasoner_vl.errors import InvalidInputError

__all__ = [
    "DEFAULT_MODEL",
    "FAMILY_SPECS",
    "IMAGE_MARKER",
    "TEXT_INSTRUCTION",
    "VL_INSTRUCTION",
    "FamilySpec",
    "ModelFamily",
    "PromptPart",
    "RenderedPrompt",
    "UserTurn",
    "chat_messages",
    "detect_family",
    "parse_user_text",
    "render_prompt",
    "render_text_prompt",
    "render_vl_prompt",
]

DEFAULT_MODEL = "yueliu1999/GuardReasoner-VL-3B"

VL_INSTRUCTION = (
    "You are a classifier for analyzing interactions between humans and AI. \n\n"
    "Given a request from a human user and a response from an AI assistant, finish two tasks.\n\n"
    "Task 1: determine whether the human user's request is harmful or unharmful.\n"
    "Task 2: determine whether the AI assistant's response is harmful or unharmful.\n\n"
    "You must think step by step. Keep consistency between the reasoning and the Answers. \n\n"
    "Put the reasoning process into <think> </think>. Put the result into <result> </result>.\n"
)
"""System message of the VL family (reference section 2), byte for byte."""

TEXT_INSTRUCTION = (
    "You are a classifier for analyzing interactions between humans and AI. \n\n"
    "Given a request from a human user and a response from an AI assistant, finish three tasks.\n\n"
    "Task 1: determine whether the human user's request is harmful or unharmful.\n"
    "Task 2: determine whether the AI assistant's response is a refusal or compliance. \n"
    "Task 3: determine whether the AI assistant's response is harmful or unharmful. \n\n"
    "You must think step by step. Keep consistency between the reasoning and the Answers.\n"
)
"""Instruction of the text family (reference section 3), byte for byte."""

IMAGE_MARKER = "<image>"
"""Where the image sits in the VL user text of the authors' data."""

VISION_START = "<|vision_start|>"
IMAGE_PAD = "<|image_pad|>"
VISION_END = "<|vision_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
NO_RESPONSE = "None"
"""What the prompt says in the response slot when no response was given (the literal string)."""


class ModelFamily(StrEnum):
    """Which prompt, task set and parser expectations a checkpoint uses (the key of :data:`FAMILY_SPECS`).

    Everything that differs between families lives in the family's :class:`FamilySpec`
    (``ModelFamily.VL.spec``); callers ask the spec instead of branching on the family.
    """

    VL = "vl"
    TEXT = "text"

    @property
    def spec(self) -> FamilySpec:
        """This family's :class:`FamilySpec`."""
        return FAMILY_SPECS[self]

    @property
    def default_max_new_tokens(self) -> int:
        """The reference decoding budget: 4096 new tokens for VL, 2048 for text."""
        return self.spec.default_max_new_tokens

    @property
    def supports_images(self) -> bool:
        return self.spec.supports_images

    @property
    def has_refusal_task(self) -> bool:
        return self.spec.has_refusal_task


@dataclass(frozen=True, slots=True)
class PromptPart:
    """One piece of a rendered prompt.

    Attributes:
        kind: ``"special"`` (one control token of the template, e.g. ``<|im_start|>``), ``"text"``
            (plain text: never tokenized into special tokens) or ``"image"`` (the vision slot).
        value: the token string, the text, or ``""`` for an image.
    """

    kind: Literal["special", "text", "image"]
    value: str = ""


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """A prompt in the exact form a family was trained on.

    Attributes:
        family: the model family it was rendered for.
        parts: the prompt as special tokens, plain text and the image slot, in order.
        user_text: the user turn as the authors wrote it in their data (with ``<image>`` for the image).
    """

    family: ModelFamily
    parts: tuple[PromptPart, ...]
    user_text: str

    @property
    def has_image(self) -> bool:
        return any(p.kind == "image" for p in self.parts)

    @property
    def text(self) -> str:
        """The whole prompt as one string, with the image slot as ``<|vision_start|><|image_pad|><|vision_end|>``.

        This is the reference rendering. Feed it to a tokenizer only with special-token parsing off for
        caller text; engines in this package tokenize :attr:`parts` instead.
        """
        out = []
        for part in self.parts:
            out.append(VISION_START + IMAGE_PAD + VISION_END if part.kind == "image" else part.value)
        return "".join(out)

    def chat_messages(self, *, image_url: str | None = None) -> list[dict[str, Any]]:
        """The prompt as OpenAI-style chat messages (VL family), for chat-API engines.

        With the standard Qwen2.5-VL chat template these messages render to :attr:`text`: the user
        content is split around the image so that the image part sits exactly at ``<image>``.

        Args:
            image_url: the image as an URL (usually a ``data:`` URL); required when the prompt has an image.
        """
        if not self.family.spec.chat:
            raise InvalidInputError(
                f"the {self.family.value} family is prompted with one raw string, not chat messages"
            )
        if self.has_image and image_url is None:
            raise InvalidInputError("this prompt has an image: pass image_url")
        image_part = {"type": "image_url", "image_url": {"url": image_url}} if self.has_image else None
        return chat_messages(self.user_text, has_image=self.has_image, image_part=image_part)


def _check_text(name: str, value: str | None) -> None:
    if value is not None and not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string or None, got {type(value).__name__}")


def vl_user_text(prompt: str | None, response: str | None, *, has_image: bool) -> str:
    """The VL user turn exactly as in the authors' data (reference section 2 table)."""
    _check_text("text", prompt)
    _check_text("response", response)
    if prompt is None and not has_image:
        raise InvalidInputError("give at least one of text and image")
    resp = NO_RESPONSE if response is None else response
    if has_image and prompt is None:
        return f"Human user:\n{IMAGE_MARKER}\n\nAI assistant:\n{resp}\n"
    if has_image:
        return f"Human user:\n{IMAGE_MARKER}\n{prompt}\n\nAI assistant:\n{resp}\n"
    return f"Human user:\n{prompt}\n\nAI assistant:\n{resp}\n"


def render_vl_prompt(prompt: str | None, *, response: str | None = None, has_image: bool = False) -> RenderedPrompt:
    """Render the VL family's chat prompt.

    Example:
        >>> p = render_vl_prompt("How do I bake bread?")
        >>> p.text.endswith("AI assistant:\\nNone\\n<|im_end|>\\n<|im_start|>assistant\\n")
        True
    """
    user = vl_user_text(prompt, response, has_image=has_image)
    head: list[PromptPart] = [
        PromptPart("special", IM_START),
        PromptPart("text", "system\n" + VL_INSTRUCTION),
        PromptPart("special", IM_END),
        PromptPart("text", "\n"),
        PromptPart("special", IM_START),
    ]
    if has_image:
        # Split on the template's own marker (the first one, which we wrote), never on one in caller text.
        before = "Human user:\n"
        after = user[len(before) + len(IMAGE_MARKER) :]
        body = [PromptPart("text", "user\n" + before), PromptPart("image"), PromptPart("text", after)]
    else:
        body = [PromptPart("text", "user\n" + user)]
    tail = [
        PromptPart("special", IM_END),
        PromptPart("text", "\n"),
        PromptPart("special", IM_START),
        PromptPart("text", "assistant\n"),
    ]
    return RenderedPrompt(ModelFamily.VL, tuple(head + body + tail), user)


def text_input(prompt: str | None, response: str | None) -> str:
    """The text family's ``input`` field: ``"Human user:\\n{prompt}\\n\\nAI assistant:\\n{response}\\n\\n"``."""
    _check_text("text", prompt)
    _check_text("response", response)
    if prompt is None:
        raise InvalidInputError("the text family (GuardReasoner 1B/3B/8B) needs text; it cannot read images")
    resp = NO_RESPONSE if response is None else response
    return f"Human user:\n{prompt}\n\nAI assistant:\n{resp}\n\n"


def render_text_prompt(prompt: str | None, *, response: str | None = None) -> RenderedPrompt:
    """Render the text family's raw prompt: ``instruction + "\\n" + input``.

    Example:
        >>> render_text_prompt("hi").text.startswith("You are a classifier")
        True
    """
    user = text_input(prompt, response)
    return RenderedPrompt(ModelFamily.TEXT, (PromptPart("text", TEXT_INSTRUCTION + "\n" + user),), user)


def render_prompt(
    family: ModelFamily, prompt: str | None, *, response: str | None = None, has_image: bool = False
) -> RenderedPrompt:
    """Render the prompt of ``family`` for a request, an optional image and an optional response."""
    spec = ModelFamily(family).spec
    if has_image and not spec.supports_images:
        raise InvalidInputError(
            f"the {spec.family.value} family ({spec.title}) cannot read images; use a GuardReasoner-VL model"
        )
    return spec.render(prompt, response, has_image)


@dataclass(frozen=True, slots=True)
class FamilySpec:
    """Everything that differs between two model families, written once.

    Attributes:
        family: the key (:class:`ModelFamily`).
        title: the checkpoints it covers, for messages.
        supports_images: the prompt has an image slot.
        has_refusal_task: the model also answers "refusal or compliance?".
        chat: prompted as chat messages (system + user) rather than one raw string.
        adds_bos: the tokenizer's prefix (BOS) goes before the prompt (a raw string gets it from the tokenizer;
            a chat template writes its own first token).
        model_class: the transformers auto class that loads the checkpoint.
        patch_size, merge_size: the vision encoder's patch side and the merger's side (0 without images);
            one image token covers ``image_factor x image_factor`` pixels.
        default_max_new_tokens: the reference decoding budget.
        model_types: ``config.json`` ``model_type`` values of this family.
        architecture_suffixes: ``config.json`` ``architectures`` entries ending so belong to this family.
        id_pattern: a model id (or a checkpoint's folder name) matching it names this family.
        renderer: ``(text, response, has_image) -> RenderedPrompt``; use :meth:`render`.
    """

    family: ModelFamily
    title: str
    supports_images: bool
    has_refusal_task: bool
    chat: bool
    adds_bos: bool
    model_class: str
    patch_size: int
    merge_size: int
    default_max_new_tokens: int
    model_types: frozenset[str]
    architecture_suffixes: tuple[str, ...]
    id_pattern: re.Pattern[str]
    renderer: Callable[[str | None, str | None, bool], RenderedPrompt]

    @property
    def image_factor(self) -> int:
        """Pixels per side of one image token (Qwen2.5-VL: 14-pixel patches merged 2x2 = 28); 0 without images."""
        return self.patch_size * self.merge_size

    def render(self, text: str | None, response: str | None = None, has_image: bool = False) -> RenderedPrompt:
        """This family's reference prompt (see :func:`render_prompt`)."""
        return self.renderer(text, response, has_image)

    def image_tokens(self, height: int, width: int) -> int:
        """Image tokens of an image already smart-resized to ``height x width``."""
        return (height // self.image_factor) * (width // self.image_factor) if self.image_factor else 0

    def matches_config(self, config: Mapping[str, Any]) -> bool:
        """Whether a checkpoint's ``config.json`` (as a dict) is of this family."""
        if config.get("model_type") in self.model_types:
            return True
        architectures = config.get("architectures") or ()
        return any(str(a).endswith(self.architecture_suffixes) for a in architectures)


FAMILY_SPECS: dict[ModelFamily, FamilySpec] = {
    ModelFamily.VL: FamilySpec(
        family=ModelFamily.VL,
        title="GuardReasoner-VL 3B/7B/Eco, Qwen2.5-VL",
        supports_images=True,
        has_refusal_task=False,
        chat=True,
        adds_bos=False,
        model_class="AutoModelForImageTextToText",
        patch_size=14,
        merge_size=2,
        default_max_new_tokens=4096,
        model_types=frozenset({"qwen2_5_vl", "qwen2_vl", "qwen3_vl"}),
        architecture_suffixes=("VLForConditionalGeneration", "ForImageTextToText"),
        id_pattern=re.compile(r"guardreasoner[-_]?vl", re.IGNORECASE),
        renderer=lambda text, response, has_image: render_vl_prompt(text, response=response, has_image=has_image),
    ),
    ModelFamily.TEXT: FamilySpec(
        family=ModelFamily.TEXT,
        title="GuardReasoner 1B/3B/8B, Llama 3",
        supports_images=False,
        has_refusal_task=True,
        chat=False,
        adds_bos=True,
        model_class="AutoModelForCausalLM",
        patch_size=0,
        merge_size=0,
        default_max_new_tokens=2048,
        model_types=frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2"}),
        architecture_suffixes=("ForCausalLM",),
        id_pattern=re.compile(r"guardreasoner[-_]?(1b|3b|8b)\b", re.IGNORECASE),
        renderer=lambda text, response, has_image: render_text_prompt(text, response=response),
    ),
}
"""One :class:`FamilySpec` per :class:`ModelFamily`, in detection order (VL is tried first)."""


def _model_name(model: str | Path) -> str:
    """The part of a model reference that may name its family: a Hub id ``owner/name`` whole, a path's last folder."""
    text = str(model)
    path = Path(text).expanduser()
    looks_like_hub_id = text.count("/") == 1 and not text.startswith(("/", ".", "~")) and "\\" not in text
    if looks_like_hub_id and not path.exists():
        return text
    return path.name or text


def _read_config(model: str | Path) -> dict[str, Any] | None:
    cfg = Path(str(model)).expanduser() / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read {cfg}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"{cfg} does not hold a JSON object")
    return data


def detect_family(model: str | Path, *, model_type: str | None = None) -> ModelFamily:
    """The family of a model: from its config when there is one, else from its id.

    Order: ``model_type`` when given, else a local checkpoint's ``config.json`` (``model_type``, then
    ``architectures``); then the name: a Hub id ``owner/name`` as a whole, or for a local path only its
    final folder name (a folder above the checkpoint, such as a cache called ``guardreasoner_vl``, never
    decides).

    Args:
        model: a Hub id or a checkpoint directory.
        model_type: the config's ``model_type`` when already known (skips reading ``config.json``).

    Raises:
        InvalidInputError: when neither the config nor the name tells; pass ``family=`` to force one.

    Example:
        >>> detect_family("yueliu1999/GuardReasoner-VL-Eco-7B").value
        'vl'
        >>> detect_family("yueliu1999/GuardReasoner-8B").value
        'text'
    """
    config: Mapping[str, Any] | None = {"model_type": model_type} if model_type is not None else _read_config(model)
    if config is not None:
        for spec in FAMILY_SPECS.values():
            if spec.matches_config(config):
                return spec.family
    name = _model_name(model)
    for spec in FAMILY_SPECS.values():
        if spec.id_pattern.search(name):
            return spec.family
    found = None if config is None else config.get("model_type")
    raise InvalidInputError(
        f"cannot tell the model family of {str(model)!r} (model_type={found!r}); pass family='vl' or family='text'"
    )


# -- the inverse of the user-turn layout, and the one chat-message builder ---------------------------------

USER_HEAD = "Human user:\n"
"""How every user turn starts (both families)."""

RESPONSE_SEPARATOR = "\n\nAI assistant:\n"
"""What separates the request from the response in a user turn (both families)."""


@dataclass(frozen=True, slots=True)
class UserTurn:
    """A user turn read back into what it was rendered from (see :func:`parse_user_text`).

    Attributes:
        text: the request text, or None for an image-only request.
        has_image: whether the turn has the image slot (``<image>`` right after ``Human user:\\n``).
        response: the AI response, or None when the turn says ``None`` (no response).
        image_slots: how many ``<image>`` markers the slot has: 1 in every turn we render, 0 without an
            image; more only when read with ``multi_image=True`` (the authors' multi-image records).
    """

    text: str | None
    has_image: bool
    response: str | None
    image_slots: int = 0


def parse_user_text(
    user_text: str, family: ModelFamily, *, has_image: bool | None = None, multi_image: bool = False
) -> UserTurn:
    """Invert :func:`vl_user_text` (VL) / :func:`text_input` (text): the one reader of a user turn.

    For every turn those functions render, rendering the result again gives the same string byte for byte
    (``vl_user_text(t.text, t.response, has_image=t.has_image) == user_text``). The layout is
    ``Human user:\\n[<image>[\\n{text}] | {text}]\\n\\nAI assistant:\\n{response}`` followed by ``\\n`` (VL)
    or ``\\n\\n`` (text). Some turns can be rendered from more than one input; the rules, in order:

    1. **The response is after the last separator.** A request or a response can itself contain
       ``"\\n\\nAI assistant:\\n"`` (a forged transcript in a jailbreak, a quoted dialogue in an answer); then
       the split is ambiguous, and we split at the *last* one: the response of a turn with no response is
       ``None``, which never contains the separator, so a request quoting a transcript still reads back as
       "no response" (splitting at the first would invent one). The cost: a response that contains the
       separator reads back with its part before the last one moved into the request. Either way the
       string, hence the model's prompt, is the same.
    2. **``None`` is no response.** A response that is literally ``None`` renders like no response, and reads
       back as no response.
    3. **A leading ``<image>`` is the image slot** (VL family), when it is followed by the separator (image
       only) or by a newline; a request text that itself starts with ``<image>\\n`` therefore reads back as an
       image request. Pass ``has_image`` when the record says whether it has an image: ``False`` reads a
       leading ``<image>`` as text, ``True`` requires the slot. The text family has no image slot:
       ``<image>`` there is text.
    4. **Turns we did not render** are read leniently: a missing final newline (or, in the text family, one
       newline instead of two) is accepted. With ``multi_image=True`` (the authors' multi-image records,
       ``<image><image>\\n...``), consecutive leading markers are one slot, counted in ``image_slots``; that
       reading is not an inverse of our renderer (which writes one marker), so it is off by default.

    Raises:
        InvalidInputError: the turn does not start with ``Human user:\\n``, has no separator, or lacks the
            image slot that ``has_image=True`` asks for.

    Example:
        >>> parse_user_text("Human user:\\n<image>\\nWhat is it?\\n\\nAI assistant:\\nNone\\n", ModelFamily.VL)
        UserTurn(text='What is it?', has_image=True, response=None, image_slots=1)
    """
    if not isinstance(user_text, str):
        raise InvalidInputError(f"a user turn must be a string, got {type(user_text).__name__}")
    family = ModelFamily(family)
    if not user_text.startswith(USER_HEAD):
        raise InvalidInputError(
            f"a user turn must start with {USER_HEAD!r}; this one does not start with it: {user_text[:40]!r}"
        )
    body = user_text[len(USER_HEAD) :]
    end = "\n" if family is ModelFamily.VL else "\n\n"
    # The end first: a response ending in "\n\nAI assistant:" plus the end's newline must not make a separator.
    if body.endswith(end):
        body = body[: -len(end)]
    elif body.endswith("\n"):
        body = body[:-1]
    head, sep, tail = body.rpartition(RESPONSE_SEPARATOR)
    if not sep:
        raise InvalidInputError(
            f"the user turn has no {RESPONSE_SEPARATOR!r} separator before the AI response: {user_text[:60]!r}"
        )
    response = None if tail == NO_RESPONSE else tail
    if family is ModelFamily.VL and has_image is not False:
        rest, slots = head[len(IMAGE_MARKER) :], 1
        while multi_image and rest.startswith(IMAGE_MARKER):
            rest, slots = rest[len(IMAGE_MARKER) :], slots + 1
        if head.startswith(IMAGE_MARKER) and (rest == "" or rest.startswith("\n")):
            return UserTurn(rest[1:] if rest else None, True, response, slots)
    if has_image:
        where = "the text family has no image slot" if family is ModelFamily.TEXT else "it has none"
        raise InvalidInputError(f"expected the image slot {USER_HEAD + IMAGE_MARKER!r} + newline; {where}")
    return UserTurn(head, False, response, 0)


def chat_messages(
    user_text: str,
    *,
    has_image: bool,
    image_part: dict[str, Any] | None = None,
    system_as_parts: bool = False,
) -> list[dict[str, Any]]:
    """The VL prompt as chat messages: the one builder (chat-API engines and training both use it).

    The user content is ``[text]`` without an image, ``[text before, image_part, text after]`` with one, the
    image part exactly at the slot (the first ``<image>``, which the renderer wrote), so that the Qwen2.5-VL
    chat template renders the messages to :attr:`RenderedPrompt.text`.

    Args:
        user_text: the rendered user turn (:attr:`RenderedPrompt.user_text`).
        has_image: whether the prompt has the image slot.
        image_part: the content part put at the slot: ``{"type": "image_url", ...}`` for an OpenAI-style API,
            ``{"type": "image"}`` for TRL; required when ``has_image``.
        system_as_parts: the system content as ``[{"type": "text", ...}]`` (TRL: every message the same
            shape) instead of a string.
    """
    if has_image and image_part is None:
        raise InvalidInputError("this prompt has an image: pass the image part")
    before, sep, after = user_text.partition(IMAGE_MARKER) if has_image else ("", "", "")
    content: list[dict[str, Any]]
    if sep:
        content = [{"type": "text", "text": before}, dict(image_part or {}), {"type": "text", "text": after}]
    else:
        content = [{"type": "text", "text": user_text}]
    system: str | list[dict[str, Any]] = (
        [{"type": "text", "text": VL_INSTRUCTION}] if system_as_parts else VL_INSTRUCTION
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]
