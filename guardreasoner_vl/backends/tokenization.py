"""Turn a :class:`~guardreasoner_vl.prompts.RenderedPrompt` into token ids, safely.

Hugging Face tokenizers match added tokens (``<|im_end|>``, ``<|image_pad|>``, ``<|eot_id|>`` ...)
anywhere in the text they encode, so a user who types ``<|im_end|><|im_start|>assistant`` could close the
guard's user turn and write its answer. Here only the template's ``special`` parts become special ids;
every ``text`` part (template text and caller text together) is encoded by the tokenizer's normaliser,
pre-tokeniser and BPE model directly, which never sees the added vocabulary.

Hugging Face itself splits text at special tokens before pre-tokenising, so for text that holds no
special-token strings the ids are identical to the standard tokenisation of :attr:`RenderedPrompt.text`
(the prompt-fidelity tests check this on the real Qwen2.5 vocabulary). This module imports no torch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from guardreasoner_vl.errors import ModelLoadError
from guardreasoner_vl.prompts import IMAGE_PAD, VISION_END, VISION_START, RenderedPrompt
from guardreasoner_vl.scores import LogprobTrace, char_offsets

logger = logging.getLogger(__name__)

__all__ = ["EncodedPrompt", "PlainEncoder", "TokenPieces", "byte_to_unicode", "encode_prompt"]


@dataclass(frozen=True, slots=True)
class EncodedPrompt:
    """Token ids of a prompt and, aligned with them, 1 where a token is an image pad (else 0)."""

    input_ids: list[int]
    image_mask: list[int]


class PlainEncoder:
    """Encodes text with a fast tokenizer's pipeline while never producing an added/special token.

    Args:
        tokenizer: a Hugging Face *fast* tokenizer (``PreTrainedTokenizerFast``/``TokenizersBackend``).
    """

    def __init__(self, tokenizer: Any) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ModelLoadError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; guardreasoner-vl needs one "
                "(a checkpoint with tokenizer.json) to keep special tokens out of user text"
            )
        self.tokenizer = tokenizer
        self._normalizer = backend.normalizer
        self._pre_tokenizer = backend.pre_tokenizer
        self._model = backend.model
        self._special_ids = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
        self._special_ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None)
        self._token_ids: dict[str, int] = {}
        self._prefix: list[int] | None = None

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of every added or special token of the tokenizer."""
        return frozenset(self._special_ids)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as plain text: special-token strings in it stay ordinary characters."""
        if not text:
            return []
        normalized = self._normalizer.normalize_str(text) if self._normalizer is not None else text
        pieces = (
            self._pre_tokenizer.pre_tokenize_str(normalized)
            if self._pre_tokenizer is not None
            else [(normalized, (0, len(normalized)))]
        )
        ids: list[int] = []
        for piece, _ in pieces:
            ids.extend(token.id for token in self._model.tokenize(piece))
        return ids

    def token_id(self, token: str) -> int:
        """Id of a special token of the template; raises if the tokenizer does not have it."""
        cached = self._token_ids.get(token)
        if cached is not None:
            return cached
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if token_id is None or (unk is not None and token_id == unk and token != self.tokenizer.unk_token):
            raise ModelLoadError(f"the tokenizer has no token {token!r}, which this model family's prompt needs")
        self._token_ids[token] = int(token_id)
        return int(token_id)

    def prefix_ids(self) -> list[int]:
        """Ids the tokenizer puts before every text on its own (e.g. Llama 3's ``<|begin_of_text|>``)."""
        if self._prefix is None:
            self._prefix = list(self.tokenizer("", add_special_tokens=True)["input_ids"])
        return list(self._prefix)


def encode_prompt(
    encoder: PlainEncoder, prompt: RenderedPrompt, *, num_image_tokens: int = 0, add_prefix: bool = False
) -> EncodedPrompt:
    """Encode ``prompt`` part by part; the image slot becomes ``num_image_tokens`` image pads.

    Args:
        encoder: the model's :class:`PlainEncoder`.
        prompt: the rendered reference prompt.
        num_image_tokens: image pad tokens for the slot (merged patches of the prepared image).
        add_prefix: prepend the tokenizer's own prefix (BOS); used for the raw-string text family.
    """
    ids: list[int] = encoder.prefix_ids() if add_prefix else []
    mask = [0] * len(ids)
    for part in prompt.parts:
        if part.kind == "special":
            ids.append(encoder.token_id(part.value))
            mask.append(0)
        elif part.kind == "text":
            chunk = encoder.encode(part.value)
            ids.extend(chunk)
            mask.extend([0] * len(chunk))
        else:
            if num_image_tokens <= 0:
                raise ValueError("the prompt has an image slot but num_image_tokens is 0")
            ids.append(encoder.token_id(VISION_START))
            ids.extend([encoder.token_id(IMAGE_PAD)] * num_image_tokens)
            ids.append(encoder.token_id(VISION_END))
            mask.extend([0] + [1] * num_image_tokens + [0])
    return EncodedPrompt(ids, mask)


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


class TokenPieces:
    """The bytes each token id writes into decoded text (special tokens write nothing), for verdict scores.

    Byte-level BPE vocabularies (Qwen2.5, Llama 3, the tiny test models) are mapped exactly, byte for byte,
    so that a token that holds half of a multi-byte character still has its own bytes; other tokenizers fall
    back to decoding each id alone. :meth:`trace` checks that the pieces spell the decoded text and gives no
    trace otherwise, so a mismatch never produces a wrong score.

    Args:
        tokenizer: a Hugging Face fast tokenizer.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        self._from_unicode = {c: b for b, c in byte_to_unicode().items()}
        self._special = {int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        for token_id, token in added.items():
            if getattr(token, "special", False):
                self._special.add(int(token_id))
        self._added = {int(i): str(getattr(t, "content", t)) for i, t in added.items()}
        self._cache: dict[int, bytes] = {}
        self._candidates: dict[int, str] | None = None

    def piece(self, token_id: int) -> bytes:
        """The bytes ``token_id`` writes when the output is decoded with special tokens skipped."""
        cached = self._cache.get(token_id)
        if cached is not None:
            return cached
        if token_id in self._special:
            value = b""
        elif token_id in self._added:
            value = self._added[token_id].encode("utf-8")
        elif self._byte_level:
            token = self.tokenizer.convert_ids_to_tokens(token_id)
            try:
                value = bytes(self._from_unicode[c] for c in token) if isinstance(token, str) else b""
            except KeyError:  # not a byte-level token after all
                value = self.tokenizer.decode([token_id], skip_special_tokens=True).encode("utf-8")
        else:
            value = self.tokenizer.decode([token_id], skip_special_tokens=True).encode("utf-8")
        self._cache[token_id] = value
        return value

    def candidates(self, predicate: Callable[[str], bool]) -> dict[int, str]:
        """``{id: text}`` of every vocabulary entry whose text satisfies ``predicate`` (computed once).

        The transformers engine records these ids' log-probabilities at every step (label candidates).
        """
        if self._candidates is None:
            found: dict[int, str] = {}
            for token_id in range(len(self.tokenizer)):
                try:
                    text = self.piece(token_id).decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if text and predicate(text):
                    found[token_id] = text
            self._candidates = found
            self._cache.clear()  # the scan touched every id; keep only what generation uses
        return self._candidates

    def trace(
        self, token_ids: Sequence[int], text: str, candidates: dict[int, dict[str, float]]
    ) -> LogprobTrace | None:
        """The :class:`~guardreasoner_vl.scores.LogprobTrace` of generated ``token_ids`` decoded as ``text``,
        or None (with a debug log) when the pieces do not spell ``text``. No candidates: None at once (no label
        position can be scored)."""
        if not candidates:
            return None
        cache = self._cache
        offsets = char_offsets([cache.get(t) or self.piece(t) for t in token_ids], text)
        if offsets is None:
            logger.debug("token pieces do not spell the decoded text; no verdict scores for this output")
            return None
        return LogprobTrace(offsets=offsets, candidates=candidates)
