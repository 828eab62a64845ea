"""Where a model comes from: a local checkpoint directory or the Hugging Face Hub, checked before loading.

:func:`resolve_checkpoint` runs at the one place each local engine loads weights (transformers, vLLM). It
turns the slow or cryptic first-contact failures into one clear :class:`~guardreasoner_vl.errors.ModelLoadError`:

* a path that does not exist says so (instead of the Hub's "Repo id must use alphanumeric chars ..." text);
* a directory that is not a checkpoint (no ``config.json``) says so;
* a Hub id that is not in the local cache, with ``HF_HUB_OFFLINE=1`` or with no route to the Hub (checked with
  one short connection attempt, instead of the Hub client's retries), fails at once with one message that
  says what to do: a local checkpoint path, ``HF_HUB_OFFLINE=1`` with a downloaded copy,
  ``guardreasoner-vl demo``, or ``backend="fake"``.

Imports nothing heavy: ``huggingface_hub`` (installed with transformers) is imported when a Hub id is checked.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from guardreasoner_vl.errors import ModelLoadError

__all__ = ["hub_reachable", "resolve_checkpoint"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0
"""How long the reachability check of the Hub waits for a connection."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT


def hub_reachable(endpoint: str | None = None, *, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub's host opens within ``timeout_s`` (name lookup included)."""
    url = urlparse(endpoint or _endpoint())
    host = url.hostname
    if not host:
        return False
    port = url.port or (443 if url.scheme == "https" else 80)
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, name="grvl-hub-probe", daemon=True)  # getaddrinfo has no timeout
    thread.start()
    thread.join(timeout_s + 0.5)
    return bool(outcome and outcome[0])


def _cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - installed with transformers
        return False
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return False
    return isinstance(found, str)


def _what_to_do(model: str) -> str:
    return (
        "Do one of: pass a local checkpoint directory (Guard('/path/to/checkpoint'), or --model /path); "
        f"download it where the Hub is reachable (huggingface-cli download {model}) and set HF_HUB_OFFLINE=1; "
        "run `guardreasoner-vl demo` to try the pipeline offline on a tiny model; "
        'or test your wiring with no model: Guard(backend="fake") (--backend fake).'
    )


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~", "\\"))
        or model.endswith(("/", "\\"))
        or model.count("/") > 1
        or "\\" in model
        or bool(re.match(r"^[A-Za-z]:[\\/]", model))
        or model in (".", "..")
    )


def resolve_checkpoint(model: str | Path) -> str:
    """Check that ``model`` can be loaded, before any weights are: return it as the loaders should see it.

    Args:
        model: a checkpoint directory, or a Hub id such as ``yueliu1999/GuardReasoner-VL-3B``.

    Returns:
        The directory (``~`` expanded) or the Hub id, unchanged otherwise.

    Raises:
        ModelLoadError: the directory does not exist or is not a checkpoint, the id is neither a directory
            nor a valid Hub id, or the id is not cached while the Hub cannot be reached (or
            ``HF_HUB_OFFLINE=1``); the message says what to do.

    Example:
        >>> resolve_checkpoint("./no/such/checkpoint")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        guardreasoner_vl.errors.ModelLoadError: checkpoint directory not found: no/such/checkpoint ...
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a directory but not a model checkpoint (no config.json in it); point at the folder "
                "that holds config.json and the weights"
            )
        return str(path)
    if path.exists():
        raise ModelLoadError(f"{path} is a file, not a checkpoint directory; give the folder that holds config.json")
    if isinstance(model, Path) or _looks_like_path(text) or not _REPO_ID.match(text):
        raise ModelLoadError(
            f"checkpoint directory not found: {path} (and it is not a Hugging Face Hub id of the form "
            "'owner/name'). " + _what_to_do(text)
        )
    if _cached(text):
        return text
    if _offline():
        raise ModelLoadError(
            f"model {text!r} is not in the local Hugging Face cache and the Hub is off (HF_HUB_OFFLINE=1). "
            + _what_to_do(text)
        )
    if not hub_reachable():
        raise ModelLoadError(
            f"model {text!r} is not in the local Hugging Face cache and the Hub ({_endpoint()}) cannot be "
            "reached (no network?). " + _what_to_do(text)
        )
    return text
