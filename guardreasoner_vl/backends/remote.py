"""Remote engine: any OpenAI-compatible completion server (``vllm serve`` of a GuardReasoner checkpoint).

What is sent, per model family (the prompt is always the core's exact reference prompt):

* **VL family** -> ``POST {base_url}/chat/completions`` with
  :meth:`RenderedPrompt.chat_messages <guardreasoner_vl.prompts.RenderedPrompt.chat_messages>`: the system
  instruction, then the user turn split around the image so that the ``image_url`` part (a PNG ``data:``
  URL of the image *already prepared* by :func:`guardreasoner_vl.inputs.prepare_image`) sits exactly at
  ``<image>``. With the standard Qwen2.5-VL chat template (and ``--chat-template-content-format openai``
  on vLLM) the server renders the reference prompt byte for byte.
* **Text family** -> ``POST {base_url}/completions`` with :attr:`RenderedPrompt.text` as a raw string (no
  chat template), or, when a local ``tokenizer`` is given, as token ids encoded here part by part.

Decoding is the reference greedy decoding unless the Guard asks otherwise: ``temperature=0``, ``top_p=1``,
``max_tokens=params.max_new_tokens``, ``seed`` when set, and ``repetition_penalty=1.0`` (a vLLM extension,
sent because ``vllm serve`` otherwise applies the checkpoint's ``generation_config.json`` defaults, which for
Qwen include a repetition penalty; drop it with ``extra_body={"repetition_penalty": None}``).

Reliability: retries with exponential backoff and jitter on HTTP 408/409/429/5xx, connection errors and
timeouts (``Retry-After`` is honoured, capped at ``max_backoff_s``); at most ``concurrency`` requests in
flight per backend (per event loop for :meth:`RemoteBackend.agenerate`); a request that still fails becomes a
``Generation(error=...)`` and the rest of the batch is unaffected.

Fleets: ``base_url`` may name several servers (a list, or URLs separated by commas), e.g. N ``vllm serve``
replicas. Each request goes to the healthy server with the fewest requests in flight; a server that cannot be
reached (or answers 502/503/504) leaves the rotation with a doubling backoff, the request is retried at once
on another server, and a cheap probe (``GET {base_url}/models``) brings the server back when it answers again
(see :mod:`guardreasoner_vl.backends.endpoints`). Each request still has exactly one result.

Streaming (:meth:`RemoteBackend.stream` / :meth:`RemoteBackend.astream`): the same request with
``"stream": true`` (and ``stream_options.include_usage``), read as server-sent events; each chunk's text is a
delta, and the chunks' ``logprobs`` (vLLM sends them per chunk) are joined into the same trace a whole answer
gives. Retries apply until the first byte of the answer arrives; a stream that breaks after that is an error of
the request (what was already delivered cannot be taken back). A consumer that stops early closes the
connection, which ``vllm serve`` takes as an abort.

Security -- special tokens. The local engines tokenize caller text so that a typed ``<|im_end|>`` stays
plain characters (see :mod:`guardreasoner_vl.backends.tokenization`). A remote server tokenizes the prompt
*itself*, and OpenAI-compatible servers turn special-token strings found in message text into the control
tokens, which would let moderated content close the guard's user turn and write its verdict. The client
cannot prevent that, so ``special_tokens`` decides what happens to text that contains a special-token-like
string (``<|...|>``, e.g. ``<|im_end|>``, ``<|eot_id|>``, ``<|image_pad|>``):

What counts as a special-token string is **every added token of the model's tokenizer**, not a hand list:

* ``added_tokens="server"`` (default): on first use the backend asks the server for its tokenizer
  (``GET /tokenizer_info`` at the server root, which ``vllm serve --enable-tokenizer-info-endpoint``
  answers) and takes every entry of ``added_tokens_decoder`` and every named special token; with
  ``tokenizer=`` the local tokenizer's added vocabulary is used too. When the server does not answer that
  endpoint, the floor below applies (logged once).
* ``added_tokens=[...]``: these strings (e.g. ``list(AutoTokenizer.from_pretrained(ckpt).get_added_vocab())``),
  nothing fetched. ``added_tokens=None``: the floor only.
* The floor, always applied: any ``<|name|>`` string (:data:`SPECIAL_TOKEN_PATTERN`, the form of every
  Qwen2.5 and Llama 3 control token) and :data:`FLOOR_ADDED_TOKENS` (Qwen2.5's added tokens of another
  form, ``<tool_call>`` and ``</tool_call>``).

* ``"reject"`` (default): the item is refused before anything is sent. Through a
  :class:`~guardreasoner_vl.Guard`: :meth:`~guardreasoner_vl.Guard.moderate` raises
  :class:`~guardreasoner_vl.errors.InvalidInputError` and a batch item gets ``status="invalid_input"``
  (``flagged=True``); called directly, :meth:`RemoteBackend.generate` returns ``Generation(error=...)``.
* ``"escape"``: the text is **altered**: a zero-width space (U+200B) is inserted after the ``<`` of each
  such string (``<|im_end|>`` -> ``<\\u200b|im_end|>``), which no tokenizer matches as a special token.
  The model then reads the string almost as written. A warning is logged for every altered request.
* ``"allow"``: sent unchanged. Only for servers that tokenize message text without parsing special tokens,
  or for trusted text; the guard can then be hijacked by its input.

For the text family, ``tokenizer=`` (the checkpoint's tokenizer directory or Hub id, needs the
``[transformers]`` extra) removes the problem entirely: the prompt is encoded here, safely, and sent as token
ids, which ``/v1/completions`` of vLLM accepts; ``special_tokens`` is then not consulted.

Example:
    >>> from guardreasoner_vl import Guard
    >>> guard = Guard("yueliu1999/GuardReasoner-VL-3B", backend="remote",
    ...               backend_options={"base_url": "http://127.0.0.1:8000/v1"})  # doctest: +SKIP
    >>> guard.moderate("How do I bake bread?").flagged                             # doctest: +SKIP
    False
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import random
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from guardreasoner_vl.backends.base import (
    Backend,
    EngineSettings,
    Generation,
    GenerationDelta,
    GenerationRequest,
    SamplingParams,
    StreamItem,
)
from guardreasoner_vl.backends.endpoints import DOWN_STATUSES, Endpoint, EndpointPool, parse_base_urls
from guardreasoner_vl.errors import InvalidInputError, require
from guardreasoner_vl.inputs import encode_image_data_url
from guardreasoner_vl.prompts import ModelFamily, RenderedPrompt, detect_family
from guardreasoner_vl.scores import LogprobTrace, char_offsets, is_label_candidate

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "API_KEY_ENV",
    "FLOOR_ADDED_TOKENS",
    "SPECIAL_TOKEN_PATTERN",
    "RemoteBackend",
    "escape_special_tokens",
    "find_special_tokens",
    "read_logprobs",
    "tokenizer_info_tokens",
]

logger = logging.getLogger(__name__)

API_KEY_ENV = "GUARDREASONER_VL_REMOTE_API_KEY"
"""Environment variable read for the server's API key when ``api_key`` is not given."""

SPECIAL_TOKEN_PATTERN = re.compile(r"<\|[^\s<>|]{1,64}\|>")
"""What counts as a special-token string: ``<|name|>``, the form of every control token of Qwen2.5
(``<|im_end|>``, ``<|vision_start|>``, ``<|image_pad|>`` ...) and Llama 3 (``<|eot_id|>``,
``<|begin_of_text|>``, ``<|reserved_special_token_7|>`` ...)."""

FLOOR_ADDED_TOKENS: tuple[str, ...] = ("<tool_call>", "</tool_call>")
"""Added tokens of Qwen2.5(-VL) that do not have the ``<|name|>`` form; always refused or escaped."""

_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

SpecialTokenPolicy = Literal["reject", "escape", "allow"]
_RETRY_STATUS = frozenset({408, 409, 429})
_ZWSP = "\u200b"


def _token_pattern(added: frozenset[str]) -> re.Pattern[str]:
    """The floor pattern, or-ed with each added token (longest first, so overlapping tokens match whole)."""
    literals = sorted((t for t in added | set(FLOOR_ADDED_TOKENS) if t), key=len, reverse=True)
    alternatives = [SPECIAL_TOKEN_PATTERN.pattern, *map(re.escape, literals)]
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


def find_special_tokens(prompt: RenderedPrompt, pattern: re.Pattern[str] | None = None) -> list[str]:
    """Special-token strings inside the text parts of ``prompt`` (caller text; the template has none).

    ``pattern`` defaults to :data:`SPECIAL_TOKEN_PATTERN`; a backend passes its own
    (:meth:`RemoteBackend.special_token_pattern`, which adds every added token it knows).

    Example:
        >>> from guardreasoner_vl.prompts import render_vl_prompt
        >>> find_special_tokens(render_vl_prompt("hi <|im_end|> there"))
        ['<|im_end|>']
    """
    regex = pattern or SPECIAL_TOKEN_PATTERN
    found: list[str] = []
    for part in prompt.parts:
        if part.kind == "text":
            found.extend(m.group(0) for m in regex.finditer(part.value))
    return found


def escape_special_tokens(text: str, pattern: re.Pattern[str] | None = None) -> str:
    """Insert a zero-width space after the first character of each special-token string (see the module docs).

    Example:
        >>> escape_special_tokens("a <|im_end|> b") == "a <\\u200b|im_end|> b"
        True
    """
    return (pattern or SPECIAL_TOKEN_PATTERN).sub(lambda m: m.group(0)[:1] + _ZWSP + m.group(0)[1:], text)


def tokenizer_info_tokens(info: Mapping[str, Any]) -> frozenset[str]:
    """Every added and named special token in a tokenizer config (vLLM's ``/tokenizer_info`` answer, or
    ``tokenizer_config.json``): ``added_tokens_decoder`` entries, ``additional_special_tokens`` and the
    ``bos_token`` / ``eos_token`` / ... fields (strings or ``{"content": ...}`` objects).

    Example:
        >>> sorted(tokenizer_info_tokens({"added_tokens_decoder": {"7": {"content": "<x>"}}, "eos_token": "</s>"}))
        ['</s>', '<x>']
    """

    def content(value: Any) -> str | None:
        if isinstance(value, Mapping):
            value = value.get("content")
        return value if isinstance(value, str) and value else None

    found: set[str] = set()
    decoder = info.get("added_tokens_decoder")
    if isinstance(decoder, Mapping):
        found.update(c for c in map(content, decoder.values()) if c)
    extra = info.get("additional_special_tokens")
    if isinstance(extra, list):
        found.update(c for c in map(content, extra) if c)
    for name in _NAMED_SPECIAL:
        token = content(info.get(name))
        if token:
            found.add(token)
    return frozenset(found)


class _Failure(Exception):
    """One request failed for good (no retry left, or not retryable)."""


@dataclass(frozen=True, slots=True)
class _Call:
    """A prepared HTTP call: endpoint path and JSON body, or the reason it cannot be sent."""

    path: str
    body: dict[str, Any]
    error: str | None = None


class RemoteBackend(Backend):
    """Talks to an OpenAI-compatible server (``vllm serve``) over HTTP with httpx.

    Args:
        model: the model name the server serves (``--served-model-name``; by default ``vllm serve`` uses the
            checkpoint id). Also used to detect the family when ``family`` is not given.
        family: ``"vl"`` or ``"text"``; detected from ``model`` otherwise.
        base_url: the server's OpenAI API root, e.g. ``http://127.0.0.1:8000/v1``; or several servers (a list,
            or URLs separated by commas): requests are spread over them (see the module docs, Fleets).
        api_key: bearer token; default: the ``GUARDREASONER_VL_REMOTE_API_KEY`` environment variable (no
            other variable is read, so an OpenAI key is never sent to a self-hosted server by accident).
        timeout_s: timeout of one HTTP attempt (a long reasoning output can take minutes).
        max_retries: retries after the first attempt, on 408/409/429/5xx, connection errors and timeouts.
        concurrency: most requests in flight at once (over all servers).
        batch_size: accepted for compatibility with the other engines and ignored: every request of a batch
            is sent at once, within ``concurrency``.
        extra_body: fields merged into every request body (e.g. ``{"top_k": -1}``); a ``None`` value removes
            a default field.
        special_tokens: ``"reject"`` (default), ``"escape"`` or ``"allow"``; see the module docs.
        added_tokens: where the tokenizer's added tokens come from: ``"server"`` (default: the server's
            ``/tokenizer_info``, once), a list of strings, or ``None`` (the floor only); see the module docs.
        tokenizer: text family only: a tokenizer directory or Hub id; the prompt is then encoded locally
            (special-token safe) and sent as token ids.
        backoff_s: first retry delay; doubles at each retry, with jitter (x0.5 to x1). With several servers,
            also how long a failed server first stays out of rotation (doubling per failure).
        max_backoff_s: longest wait between attempts (also caps ``Retry-After``), and between a failed server's
            health probes.
        headers: extra HTTP headers.
        top_logprobs: when the guard wants verdict scores, the log-probabilities asked per generated token
            (chat: ``logprobs: true, top_logprobs: k``; completions: ``logprobs: k``). A server that returns
            none gives scores of None; a competing label outside the top k counts as 0 (see
            :mod:`guardreasoner_vl.scores`). Each token then carries k entries in the answer, so keep it small.
        transport: an ``httpx`` transport for the synchronous client (tests, proxies).
        async_transport: an ``httpx`` transport for the asynchronous client.

    Raises:
        InvalidInputError: bad option values, or a model name whose family cannot be told.
        MissingDependencyError: ``httpx`` is not installed (``pip install "guardreasoner-vl[remote]"``).
    """

    name = "remote"

    @classmethod
    def from_settings(cls, model: str | Path, settings: EngineSettings) -> Self:
        """Takes the family and batch size, then the engine options. The server runs the model and resizes
        images itself, so a device or dtype is refused rather than dropped."""
        settings.refuse("device", "dtype", engine="remote", reason="the server it calls decides them")
        return cls(model, **settings.merged(family=settings.family, batch_size=settings.batch_size))

    def __init__(
        self,
        model: str | Path,
        *,
        family: ModelFamily | str | None = None,
        base_url: str | Sequence[str] = "http://127.0.0.1:8000/v1",
        api_key: str | None = None,
        timeout_s: float = 600.0,
        max_retries: int = 4,
        concurrency: int = 16,
        batch_size: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        special_tokens: SpecialTokenPolicy = "reject",
        tokenizer: str | Path | None = None,
        added_tokens: Sequence[str] | Literal["server"] | None = "server",
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        headers: Mapping[str, str] | None = None,
        top_logprobs: int = 5,
        transport: Any = None,
        async_transport: Any = None,
    ) -> None:
        self._httpx = require("httpx", "remote", feature="the remote backend")
        if timeout_s <= 0:
            raise InvalidInputError("timeout_s must be positive")
        if max_retries < 0:
            raise InvalidInputError("max_retries must be 0 or more")
        if concurrency < 1:
            raise InvalidInputError("concurrency must be at least 1")
        if backoff_s < 0 or max_backoff_s < 0:
            raise InvalidInputError("backoff_s and max_backoff_s must be 0 or more")
        if not isinstance(top_logprobs, int) or isinstance(top_logprobs, bool) or not 1 <= top_logprobs <= 20:
            raise InvalidInputError(f"top_logprobs must be an integer from 1 to 20, got {top_logprobs!r}")
        self.top_logprobs = top_logprobs
        if special_tokens not in ("reject", "escape", "allow"):
            raise InvalidInputError(f"special_tokens must be 'reject', 'escape' or 'allow', got {special_tokens!r}")
        self.base_urls: list[str] = parse_base_urls(base_url)
        self.model_id: str = str(model)
        self.family: ModelFamily = ModelFamily(family) if family is not None else detect_family(self.model_id)
        self.base_url = self.base_urls[0]
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.concurrency = int(concurrency)
        self.batch_size = batch_size
        self.extra_body = dict(extra_body or {})
        self.special_tokens: SpecialTokenPolicy = special_tokens
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self._headers = {"User-Agent": "guardreasoner-vl", **dict(headers or {})}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        if not (added_tokens is None or added_tokens == "server" or _is_strings(added_tokens)):
            raise InvalidInputError("added_tokens must be 'server', a list of strings or None")
        self._fetch_added = added_tokens == "server"
        self._added: frozenset[str] = frozenset() if added_tokens in (None, "server") else frozenset(added_tokens)
        self._pattern: re.Pattern[str] | None = None
        self._pattern_lock = threading.Lock()
        self._encoder: Any = None
        self._prefix_ids: list[int] = []
        if tokenizer is not None:
            if self.family.spec.chat:
                raise InvalidInputError(
                    "tokenizer= is for the text family (/v1/completions takes token ids); "
                    "chat completions for the VL family take text"
                )
            self._encoder = self._load_encoder(tokenizer)
        self._timeout = self._httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0))
        self._transport = transport
        self._async_transport = async_transport
        self._pool = EndpointPool(self.base_urls, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s)
        self._clients: dict[str, Any] = {}
        self._client_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[dict[str, Any], asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary()
        )
        self._random = random.Random()
        self._closed = False

    @staticmethod
    def _load_encoder(tokenizer: str | Path) -> Any:
        from guardreasoner_vl.backends.tokenization import PlainEncoder

        transformers = require("transformers", "transformers", feature="local tokenization for the remote backend")
        return PlainEncoder(transformers.AutoTokenizer.from_pretrained(str(tokenizer)))

    # -- what is sent -------------------------------------------------------------------------------

    def special_token_pattern(self) -> re.Pattern[str]:
        """What counts as a special-token string for this model (the floor, plus every added token known)."""
        with self._pattern_lock:
            if self._pattern is None:
                added = set(self._added)
                if self._encoder is not None:
                    added.update(_local_added_tokens(self._encoder))
                if self._fetch_added:
                    added.update(self._fetch_tokenizer_tokens())
                self._pattern = _token_pattern(frozenset(added))
            return self._pattern

    def _fetch_tokenizer_tokens(self) -> frozenset[str]:
        for base in self.base_urls:  # the first server that answers (all serve the same model)
            tokens = self._fetch_tokenizer_tokens_from(base)
            if tokens is not None:
                return tokens
        return frozenset()

    def _fetch_tokenizer_tokens_from(self, base: str) -> frozenset[str] | None:
        root = base[: -len("/v1")] if base.endswith("/v1") else base
        url = f"{root}/tokenizer_info"
        try:
            with self._httpx.Client(
                headers=self._headers, timeout=min(self.timeout_s, 10.0), transport=self._transport
            ) as client:
                response = client.get(url)
            info = response.json() if response.status_code == 200 else None
        except Exception as exc:
            logger.info("could not read %s (%s: %s); special-token filter uses its floor", url, type(exc).__name__, exc)
            return None
        if not isinstance(info, Mapping):
            logger.info("%s is not available (HTTP %s); special-token filter uses its floor", url, response.status_code)
            return frozenset()
        tokens = tokenizer_info_tokens(info)
        logger.info("special-token filter: %d added tokens read from %s", len(tokens), url)
        return tokens

    def check_prompt(self, prompt: RenderedPrompt) -> None:
        """Refuse a prompt whose caller text holds special-token strings (``special_tokens="reject"``).

        :class:`~guardreasoner_vl.Guard` calls this while preparing an input, so a refused item is an
        ``invalid_input`` result (or an :class:`InvalidInputError` from ``moderate``), never sent.

        Raises:
            InvalidInputError: the text contains a string such as ``<|im_end|>``.
        """
        if self.special_tokens != "reject" or (self._encoder is not None and not prompt.family.spec.chat):
            return
        found = find_special_tokens(prompt, self.special_token_pattern())
        if found:
            shown = ", ".join(sorted(set(found))[:5])
            raise InvalidInputError(
                f"the text contains special-token strings ({shown}); a remote server would read them as control "
                "tokens of the guard's prompt, so it is refused. Remove them, or build the remote backend with "
                "special_tokens='escape' (inserts U+200B after '<') or 'allow' (unsafe)"
            )

    def build_call(self, request: GenerationRequest, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        """The endpoint path (relative to ``base_url``) and JSON body sent for ``request``.

        Raises:
            InvalidInputError: the request cannot be sent (refused special tokens, image for the text family).
        """
        prompt = request.prompt
        self.check_prompt(prompt)
        if prompt.family is not self.family:
            raise InvalidInputError(f"a {prompt.family.value} prompt was sent to a {self.family.value} model")
        local_ids = self._encoder is not None and not prompt.family.spec.chat
        pattern = self.special_token_pattern() if self.special_tokens == "escape" and not local_ids else None
        escape = pattern is not None and bool(find_special_tokens(prompt, pattern))
        if escape:
            logger.warning("special-token strings in the text were escaped with U+200B before sending")
        body: dict[str, Any] = {"model": self.model_id, "max_tokens": params.max_new_tokens}
        if params.greedy:
            body.update(temperature=0.0, top_p=1.0)
        else:
            body.update(temperature=params.temperature, top_p=params.top_p)
        if params.seed is not None:
            body["seed"] = params.seed
        body["repetition_penalty"] = 1.0
        if params.logprobs:
            if prompt.family.spec.chat:
                body.update(logprobs=True, top_logprobs=self.top_logprobs)
            else:
                body["logprobs"] = self.top_logprobs
        if prompt.family.spec.chat:
            image_url = None
            if prompt.has_image:
                if request.image is None:
                    raise InvalidInputError("the prompt has an image slot but the request carries no image")
                image_url = encode_image_data_url(request.image)
            messages = prompt.chat_messages(image_url=image_url)
            if escape:
                for message in messages:
                    if isinstance(message["content"], list):
                        for part in message["content"]:
                            if part.get("type") == "text":
                                part["text"] = escape_special_tokens(part["text"], pattern)
            body["messages"] = messages
            path = "/chat/completions"
        else:
            if request.image is not None:
                raise InvalidInputError("the text family cannot read images")
            if local_ids:
                from guardreasoner_vl.backends.tokenization import encode_prompt

                body["prompt"] = encode_prompt(self._encoder, prompt, add_prefix=True).input_ids
            else:
                body["prompt"] = escape_special_tokens(prompt.text, pattern) if escape else prompt.text
            path = "/completions"
        for key, value in self.extra_body.items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        return path, body

    def _prepare(self, request: GenerationRequest, params: SamplingParams) -> _Call:
        try:
            path, body = self.build_call(request, params)
        except InvalidInputError as exc:
            return _Call("", {}, error=str(exc))
        return _Call(path, body)

    # -- what comes back ----------------------------------------------------------------------------

    def _read(self, path: str, status: int, content: bytes, url: str | None = None) -> Generation:
        try:
            data = json.loads(content)
            choice = data["choices"][0]
            if path == "/chat/completions":
                text = choice["message"].get("content") or ""
            else:
                text = choice.get("text") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise _Failure(
                f"remote server {url or self.base_url} answered HTTP {status} with an unreadable body "
                f"({type(exc).__name__}: {exc}): {content[:200]!r}"
            ) from None
        if not isinstance(text, str):
            raise _Failure(f"remote server {url or self.base_url} returned non-text content: {text!r:.200}")
        usage = data.get("usage") or {}
        reason = choice.get("finish_reason")
        return Generation(
            text=text,
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
            finish_reason=reason if reason in ("stop", "length") else None,
            logprobs=read_logprobs(choice.get("logprobs"), text, chat=path == "/chat/completions"),
        )

    def _error_text(self, status: int, content: bytes, attempts: int, url: str) -> str:
        message: Any = None
        try:
            data = json.loads(content)
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else error
            if message is None and isinstance(data, dict):
                message = data.get("detail") or data.get("message")
        except ValueError:
            pass
        if message is None:
            message = content[:300].decode("utf-8", "replace")
        return f"remote server {url} answered HTTP {status} after {attempts} attempt(s): {message}"

    def _delay(self, retry: int, retry_after: str | None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        if retry_after:
            seconds = _parse_retry_after(retry_after)
            if seconds is not None:
                return min(max(seconds, 0.0), self.max_backoff_s)
        base = min(self.max_backoff_s, self.backoff_s * (2**retry))
        return base * (0.5 + 0.5 * self._random.random())

    def _retryable(self, status: int) -> bool:
        return status in _RETRY_STATUS or status >= 500

    # -- synchronous --------------------------------------------------------------------------------

    def _sync_client(self, endpoint: Endpoint) -> Any:
        with self._client_lock:
            if self._closed:
                raise _Failure("the remote backend is closed")
            client = self._clients.get(endpoint.url)
            if client is None:
                client = self._clients[endpoint.url] = self._httpx.Client(
                    base_url=endpoint.url,
                    headers=self._headers,
                    timeout=self._timeout,
                    transport=self._transport,
                    limits=self._httpx.Limits(max_connections=self.concurrency),
                )
            return client

    def _send(self, call: _Call) -> Generation:
        if call.error is not None:
            return Generation(text="", error=call.error)
        attempts = 0
        avoid: Endpoint | None = None
        while True:
            attempts += 1
            try:
                with self._slots:
                    self._probe_due()
                    endpoint = self._pool.acquire(avoid)
                    try:
                        response = self._sync_client(endpoint).post(call.path, json=call.body)
                    finally:
                        self._pool.release(endpoint)
            except self._httpx.TransportError as exc:  # connection errors and timeouts
                step = self._on_transport_error(exc, attempts, endpoint)
            except _Failure as exc:
                return Generation(text="", error=str(exc))
            else:
                step = self._on_response(call, response, attempts, endpoint)
            if isinstance(step, Generation):
                return step
            avoid = endpoint
            if not self._pool.has_alternative(endpoint):  # another server in rotation: retry there at once
                time.sleep(step)

    def _probe_due(self) -> None:
        """Probe the servers out of rotation whose backoff has passed (fleets only; see the module docs)."""
        while (endpoint := self._pool.due_probe()) is not None:
            try:
                status = self._sync_client(endpoint).get("/models", timeout=self._probe_timeout()).status_code
            except self._httpx.TransportError:
                status = None
            self._on_probe(endpoint, status)

    def _probe_timeout(self) -> Any:
        return self._httpx.Timeout(min(self.timeout_s, 5.0))

    def _on_probe(self, endpoint: Endpoint, status: int | None) -> None:
        if status is not None and status < 500:
            self._pool.succeeded(endpoint)
        else:
            self._pool.failed(endpoint)

    def _on_transport_error(self, exc: Exception, attempts: int, endpoint: Endpoint) -> Generation | float:
        """The final failure, or the delay before the next attempt (shared by the sync and async paths)."""
        self._pool.failed(endpoint)
        failure = f"{type(exc).__name__}: {exc}"
        if attempts > self.max_retries:
            return Generation(text="", error=self._transport_error(failure, attempts, endpoint.url))
        return self._retry_delay(attempts, None)

    def _on_response(self, call: _Call, response: Any, attempts: int, endpoint: Endpoint) -> Generation | float:
        """The generation (or final error) read from ``response``, or the delay before retrying."""
        status, content = response.status_code, response.content
        if status in DOWN_STATUSES:
            self._pool.failed(endpoint)
        elif status < 500:
            self._pool.succeeded(endpoint)
        if 200 <= status < 300:
            try:
                return self._read(call.path, status, content, endpoint.url)
            except _Failure as exc:
                return Generation(text="", error=str(exc))
        if not self._retryable(status) or attempts > self.max_retries:
            return Generation(text="", error=self._error_text(status, content, attempts, endpoint.url))
        return self._retry_delay(attempts, response.headers.get("retry-after"))

    def _retry_delay(self, attempts: int, retry_after: str | None) -> float:
        delay = self._delay(attempts - 1, retry_after)
        logger.info("remote request failed (attempt %d); retrying in %.2fs", attempts, delay)
        return delay

    def _transport_error(self, failure: str, attempts: int, url: str) -> str:
        return f"could not reach remote server {url} after {attempts} attempt(s): {failure}"

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        """Send every request (up to ``concurrency`` at once); one :class:`Generation` per request, in order.

        A request that fails for good gets ``Generation(error=...)``; it does not stop the others.
        """
        calls = [self._prepare(r, params) for r in requests]
        if len(calls) <= 1:
            return [self._send(c) for c in calls]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(calls)), thread_name_prefix="grvl-remote") as ex:
            return list(ex.map(self._send, calls))

    # -- asynchronous -------------------------------------------------------------------------------

    def _async_state(self) -> tuple[dict[str, Any], asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            if self._closed:
                raise _Failure("the remote backend is closed")
            state = ({}, asyncio.Semaphore(self.concurrency))
            self._loops[loop] = state
        return state

    def _async_client(self, clients: dict[str, Any], endpoint: Endpoint) -> Any:
        client = clients.get(endpoint.url)
        if client is None:
            if self._closed:
                raise _Failure("the remote backend is closed")
            client = clients[endpoint.url] = self._httpx.AsyncClient(
                base_url=endpoint.url,
                headers=self._headers,
                timeout=self._timeout,
                transport=self._async_transport,
                limits=self._httpx.Limits(max_connections=self.concurrency),
            )
        return client

    async def _asend(self, call: _Call) -> Generation:
        if call.error is not None:
            return Generation(text="", error=call.error)
        attempts = 0
        avoid: Endpoint | None = None
        while True:
            attempts += 1
            try:
                clients, slots = self._async_state()
                async with slots:
                    await self._aprobe_due(clients)
                    endpoint = self._pool.acquire(avoid)
                    try:
                        response = await self._async_client(clients, endpoint).post(call.path, json=call.body)
                    finally:
                        self._pool.release(endpoint)
            except self._httpx.TransportError as exc:
                step = self._on_transport_error(exc, attempts, endpoint)
            except _Failure as exc:
                return Generation(text="", error=str(exc))
            else:
                step = self._on_response(call, response, attempts, endpoint)
            if isinstance(step, Generation):
                return step
            avoid = endpoint
            if not self._pool.has_alternative(endpoint):
                await asyncio.sleep(step)

    async def _aprobe_due(self, clients: dict[str, Any]) -> None:
        while (endpoint := self._pool.due_probe()) is not None:
            try:
                answer = await self._async_client(clients, endpoint).get("/models", timeout=self._probe_timeout())
                status: int | None = answer.status_code
            except self._httpx.TransportError:
                status = None
            self._on_probe(endpoint, status)

    async def agenerate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        """Async :meth:`generate`: native httpx async, never blocks the event loop."""
        if any(r.image is not None for r in requests):  # PNG-encoding images is CPU work: off the loop
            calls = await asyncio.to_thread(lambda: [self._prepare(r, params) for r in requests])
        else:
            calls = [self._prepare(r, params) for r in requests]
        return list(await asyncio.gather(*(self._asend(c) for c in calls)))

    # -- streaming ----------------------------------------------------------------------------------

    def cache_identity(self) -> dict[str, Any]:
        """The served model name, the servers, what the backend adds to the prompt and body, top log-probabilities."""
        return {
            **super().cache_identity(),
            "base_urls": list(self.base_urls),
            "extra_body": repr(sorted(self.extra_body.items())),
            "special_tokens": self.special_tokens,
            "local_tokenizer": getattr(getattr(self._encoder, "tokenizer", None), "name_or_path", None),
            "top_logprobs": self.top_logprobs,
        }

    def _stream_call(self, request: GenerationRequest, params: SamplingParams) -> _Call:
        call = self._prepare(request, params)
        if call.error is not None:
            return call
        body = {**call.body, "stream": True}
        if "stream_options" not in self.extra_body:
            body["stream_options"] = {"include_usage": True}
        return _Call(call.path, body)

    def _stream_status(
        self, status: int, content: bytes, headers: Any, attempts: int, endpoint: Endpoint
    ) -> Generation | float:
        """For an answer that is not 2xx: the final error, or the delay before the next attempt."""
        if status in DOWN_STATUSES:
            self._pool.failed(endpoint)
        elif status < 500:
            self._pool.succeeded(endpoint)
        if not self._retryable(status) or attempts > self.max_retries:
            return Generation(text="", error=self._error_text(status, content, attempts, endpoint.url))
        return self._retry_delay(attempts, headers.get("retry-after"))

    def _stream_broken(self, exc: Exception, attempts: int, endpoint: Endpoint, reader: _StreamReader) -> Any:
        """A transport failure: before the first piece it is retried like any other, after it it is final."""
        if reader.started:
            self._pool.failed(endpoint)
            return Generation(text="", error=reader.broken(exc))
        return self._on_transport_error(exc, attempts, endpoint)

    def stream(
        self, request: GenerationRequest, params: SamplingParams, *, cancel: threading.Event | None = None
    ) -> Iterator[StreamItem]:
        """Stream one request over server-sent events (see the module docs); the final :class:`Generation` has
        the same text, token counts, finish reason and log-probability trace as :meth:`generate` gives. With
        several servers, the stream goes to one as :meth:`generate` would, and a retry before the first piece
        goes to another."""
        call = self._stream_call(request, params)
        if call.error is not None:
            yield Generation(text="", error=call.error)
            return
        attempts = 0
        avoid: Endpoint | None = None
        while True:
            attempts += 1
            reader = _StreamReader(call.path, self.base_url)
            step: Generation | float
            endpoint: Endpoint | None = None
            try:
                with self._slots:
                    self._probe_due()
                    endpoint = self._pool.acquire(avoid)
                    reader.base_url = endpoint.url
                    try:
                        with self._sync_client(endpoint).stream("POST", call.path, json=call.body) as response:
                            if not 200 <= response.status_code < 300:
                                step = self._stream_status(
                                    response.status_code, response.read(), response.headers, attempts, endpoint
                                )
                            else:
                                self._pool.succeeded(endpoint)
                                for line in response.iter_lines():
                                    if cancel is not None and cancel.is_set():
                                        return  # leaving the block closes the connection: the server aborts
                                    piece = reader.feed(line)
                                    if piece:
                                        yield GenerationDelta(piece)
                                    if reader.done:
                                        break
                                step = reader.result()
                    finally:
                        self._pool.release(endpoint)
            except self._httpx.TransportError as exc:
                if endpoint is None:  # pragma: no cover - nothing before acquire() does network I/O
                    raise
                step = self._stream_broken(exc, attempts, endpoint, reader)
            except _Failure as exc:
                step = Generation(text="", error=str(exc))
            if isinstance(step, Generation):
                yield step
                return
            avoid = endpoint
            if endpoint is None or not self._pool.has_alternative(endpoint):
                time.sleep(step)

    async def astream(self, request: GenerationRequest, params: SamplingParams) -> AsyncIterator[StreamItem]:
        """Async :meth:`stream`, native httpx async (the event loop never blocks); leaving the loop early closes
        the connection."""
        if request.image is not None:  # PNG-encoding the image is CPU work: off the loop
            call = await asyncio.to_thread(self._stream_call, request, params)
        else:
            call = self._stream_call(request, params)
        if call.error is not None:
            yield Generation(text="", error=call.error)
            return
        attempts = 0
        avoid: Endpoint | None = None
        while True:
            attempts += 1
            reader = _StreamReader(call.path, self.base_url)
            step: Generation | float
            endpoint: Endpoint | None = None
            try:
                clients, slots = self._async_state()
                async with slots:
                    await self._aprobe_due(clients)
                    endpoint = self._pool.acquire(avoid)
                    reader.base_url = endpoint.url
                    try:
                        client = self._async_client(clients, endpoint)
                        async with client.stream("POST", call.path, json=call.body) as response:
                            if not 200 <= response.status_code < 300:
                                content = await response.aread()
                                step = self._stream_status(
                                    response.status_code, content, response.headers, attempts, endpoint
                                )
                            else:
                                self._pool.succeeded(endpoint)
                                async for line in response.aiter_lines():
                                    piece = reader.feed(line)
                                    if piece:
                                        yield GenerationDelta(piece)
                                    if reader.done:
                                        break
                                step = reader.result()
                    finally:
                        self._pool.release(endpoint)
            except self._httpx.TransportError as exc:
                if endpoint is None:  # pragma: no cover - nothing before acquire() does network I/O
                    raise
                step = self._stream_broken(exc, attempts, endpoint, reader)
            except _Failure as exc:
                step = Generation(text="", error=str(exc))
            if isinstance(step, Generation):
                yield step
                return
            avoid = endpoint
            if endpoint is None or not self._pool.has_alternative(endpoint):
                await asyncio.sleep(step)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connections of the current event loop's client (and the synchronous client)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - called without a loop
            loop = None
        state = self._loops.pop(loop, None) if loop is not None else None
        if state is not None:
            for client in list(state[0].values()):
                await client.aclose()
        self.close()

    def servers(self) -> list[dict[str, object]]:
        """Each server's state (``url``, ``up``, ``outstanding``, ``sent``, ``failures``), for logs and metrics."""
        return self._pool.snapshot()

    def close(self) -> None:
        """Close the HTTP clients. Idempotent. Async clients of other, still running loops close in them."""
        with self._client_lock:
            self._closed = True
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()
        for loop, (aclients, _) in list(self._loops.items()):
            if not loop.is_closed() and loop.is_running():
                for aclient in list(aclients.values()):
                    with contextlib.suppress(RuntimeError):  # the loop is shutting down
                        loop.call_soon_threadsafe(_schedule_aclose, loop, aclient)
        self._loops.clear()

    def __repr__(self) -> str:
        urls = self.base_url if len(self.base_urls) == 1 else self.base_urls
        return f"RemoteBackend(model={self.model_id!r}, base_url={urls!r}, family={self.family.value!r})"


class _StreamReader:
    """Reads the server-sent events of one streamed completion into deltas and, at the end, a :class:`Generation`.

    Chat chunks carry ``choices[0].delta.content`` and ``choices[0].logprobs.content`` (a list of token entries,
    joined across chunks); completion chunks carry ``choices[0].text`` and ``choices[0].logprobs`` (``tokens``,
    ``token_logprobs``, ``top_logprobs``, ``text_offset`` lists, joined). The last chunk (``include_usage``) has
    the usage and no choices. ``data: [DONE]`` ends the stream.
    """

    def __init__(self, path: str, base_url: str) -> None:
        self.chat = path == "/chat/completions"
        self.base_url = base_url
        self.parts: list[str] = []
        self.entries: list[Any] = []
        self.completion_logprobs: dict[str, list[Any]] = {}
        self.finish_reason: Any = None
        self.usage: Mapping[str, Any] = {}
        self.started = False
        self.done = False
        self.events = 0

    def feed(self, line: str) -> str:
        """The new text of one SSE line ("" for comments, other fields, and chunks without text)."""
        if not line.startswith("data:"):
            return ""
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return ""
        try:
            data = json.loads(payload)
        except ValueError:
            raise _Failure(f"remote server {self.base_url} streamed an unreadable event: {payload[:200]!r}") from None
        if not isinstance(data, Mapping):
            raise _Failure(f"remote server {self.base_url} streamed an unreadable event: {payload[:200]!r}")
        self.events += 1
        if data.get("error") is not None:
            error = data["error"]
            message = error.get("message") if isinstance(error, Mapping) else error
            raise _Failure(f"remote server {self.base_url} failed while streaming: {message}")
        if isinstance(data.get("usage"), Mapping):
            self.usage = data["usage"]
        choices = data.get("choices") or []
        choice = next((c for c in choices if isinstance(c, Mapping) and c.get("index", 0) == 0), None)
        if choice is None:
            return ""
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if self.chat:
            delta = choice.get("delta") or {}
            piece = delta.get("content") if isinstance(delta, Mapping) else None
            if isinstance(logprobs, Mapping) and isinstance(logprobs.get("content"), list):
                self.entries.extend(logprobs["content"])
        else:
            piece = choice.get("text")
            if isinstance(logprobs, Mapping):
                for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    values = logprobs.get(name)
                    if isinstance(values, list):
                        self.completion_logprobs.setdefault(name, []).extend(values)
        if not isinstance(piece, str) or not piece:
            return ""
        self.parts.append(piece)
        self.started = True
        return piece

    def broken(self, exc: Exception) -> str:
        return (
            f"the stream from remote server {self.base_url} broke after {len(''.join(self.parts))} characters "
            f"({type(exc).__name__}: {exc})"
        )

    def result(self) -> Generation:
        """The whole answer; an error when the stream ended before the server said it was finished."""
        text = "".join(self.parts)
        if not self.done and self.finish_reason is None:
            return Generation(
                text="",
                error=f"the stream from remote server {self.base_url} ended before the answer was complete "
                f"({len(text)} characters, {self.events} events)",
            )
        data: Any = {"content": self.entries} if self.chat else self.completion_logprobs
        reason = self.finish_reason
        return Generation(
            text=text,
            prompt_tokens=_int_or_none(self.usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(self.usage.get("completion_tokens")),
            finish_reason=reason if reason in ("stop", "length") else None,
            logprobs=read_logprobs(data, text, chat=self.chat) if (self.entries or self.completion_logprobs) else None,
        )


def _schedule_aclose(loop: asyncio.AbstractEventLoop, client: Any) -> None:
    loop.create_task(client.aclose())


def _is_strings(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value)


def _local_added_tokens(encoder: Any) -> frozenset[str]:
    tokenizer = getattr(encoder, "tokenizer", encoder)
    found: set[str] = set()
    with contextlib.suppress(Exception):
        found.update(tokenizer.get_added_vocab())
    with contextlib.suppress(Exception):
        found.update(tokenizer.all_special_tokens)
    return frozenset(t for t in found if isinstance(t, str) and t)


def read_logprobs(data: Any, text: str, *, chat: bool) -> LogprobTrace | None:
    """The scores' trace from an OpenAI-style ``logprobs`` object, or None when it is absent or unusable.

    Chat completions: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}`` (token
    offsets from ``bytes`` when every entry has them, else from the token strings). Completions:
    ``{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}]}`` (``text_offset`` is not used: offsets come
from the tokens). Only positions whose
    token can start a label are kept. Nothing is guessed: when the tokens do not spell ``text``, None.

    Example:
        >>> top = [{"token": " harmful", "logprob": -0.2}, {"token": " un", "logprob": -1.7}]
        >>> data = {"content": [{"token": "Request:", "logprob": 0.0, "top_logprobs": []},
        ...                     {"token": " harmful", "logprob": -0.2, "top_logprobs": top}]}
        >>> trace = read_logprobs(data, "Request: harmful", chat=True)
        >>> trace.offsets, sorted(trace.candidates[1])
        ((0, 8), [' harmful', ' un'])
    """
    if not isinstance(data, Mapping):
        return None
    try:
        if chat:
            entries = data.get("content")
            if not isinstance(entries, list) or not entries:
                return None
            tokens = [_entry_text(e) for e in entries]
            pieces = [bytes(e["bytes"]) if isinstance(e.get("bytes"), list) else None for e in entries]
            offsets = char_offsets(
                [p if p is not None else t.encode("utf-8") for p, t in zip(pieces, tokens, strict=True)], text
            )
            ranked = [
                [(_entry_text(c), c.get("logprob")) for c in (e.get("top_logprobs") or [])]
                + [(tokens[i], e.get("logprob"))]
                for i, e in enumerate(entries)
            ]
        else:
            listed = data.get("tokens")
            if not isinstance(listed, list) or not listed:
                return None
            tokens = [str(t) for t in listed]
            tops = data.get("top_logprobs") or [None] * len(tokens)
            chosen = data.get("token_logprobs") or [None] * len(tokens)
            # the offsets are derived from the tokens themselves (the server's text_offset is not trusted: a
            # wrong one would put a score at the wrong token); tokens that do not spell the text give no trace
            offsets = char_offsets([t.encode("utf-8") for t in tokens], text)
            ranked = [
                [*((top or {}).items()), (str(tokens[i]), chosen[i])] for i, top in enumerate(tops[: len(tokens)])
            ]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    if offsets is None:
        return None
    candidates: dict[int, dict[str, float]] = {}
    for index, options in enumerate(ranked):
        if not is_label_candidate(tokens[index]):
            continue
        position: dict[str, float] = {}
        for token, logprob in options:
            if isinstance(token, str) and isinstance(logprob, (int, float)) and not isinstance(logprob, bool):
                position[token] = float(logprob)  # the chosen token is also among the top ones: same value
        if position:
            candidates[index] = position
    return LogprobTrace(offsets=tuple(offsets), candidates=candidates)


def _entry_text(entry: Mapping[str, Any]) -> str:
    raw = entry.get("bytes")
    if isinstance(raw, list):
        return bytes(raw).decode("utf-8", "replace")
    return str(entry["token"])


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parse_retry_after(value: str) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:  # pragma: no cover - older Pythons
        return None
    return when.timestamp() - time.time()
