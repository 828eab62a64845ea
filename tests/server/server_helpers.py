"""Helpers of the server tests: a guard whose "model" is a plain function, and images.

The server and the HTTP clients are real (uvicorn on 127.0.0.1, httpx, the ``openai`` package); only the
neural network is replaced, by a function of the request that answers in the VL family's own output format.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image, ImageStat

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FunctionBackend, Generation, GenerationRequest, verdict_output
from guardreasoner_vl.prompts import ModelFamily
from guardreasoner_vl.server import ServerSettings, create_app, serve_in_thread


def png_bytes(color: str = "red", size: tuple[int, int] = (120, 80)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(color: str = "red", size: tuple[int, int] = (120, 80)) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(color, size)).decode("ascii")


def judge(request: GenerationRequest) -> str:
    """Harmful when the user text says "bomb" or the image is mostly red (so the image must reach it).

    The reasoning echoes the user text, so a test can tell that each answer went back to its own request.
    """
    user = request.prompt.user_text
    head, _, tail = user.partition("\n\nAI assistant:\n")
    harmful = "bomb" in head.lower()
    if request.image is not None:
        red, green, blue = ImageStat.Stat(request.image).mean
        harmful = harmful or (red > 200 and green < 80 and blue < 80)
    response = tail.rstrip("\n")
    return verdict_output(
        ModelFamily.VL,
        request_harmful=harmful,
        response_harmful=("bomb" in response.lower()) if response != "None" else None,
        reasoning=f"saw: {head}",
    )


class SlowBackend(FunctionBackend):
    """:func:`judge` behind an engine call that takes ``delay_s`` (+ ``per_item_s`` per item), like a model."""

    name = "slow"

    def __init__(self, *, delay_s: float = 0.0, per_item_s: float = 0.0, fn: Any = judge) -> None:
        super().__init__(fn, family=ModelFamily.VL)
        self.delay_s = delay_s
        self.per_item_s = per_item_s
        self.concurrent = 0
        self.max_concurrent = 0
        self._count_lock = threading.Lock()

    def generate(self, requests: Any, params: Any) -> list[Generation]:
        with self._count_lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            time.sleep(self.delay_s + self.per_item_s * len(requests))
            return super().generate(requests, params)
        finally:
            with self._count_lock:
                self.concurrent -= 1

    @property
    def batch_sizes(self) -> list[int]:
        return [len(c) for c in self.calls]


@contextmanager
def running(backend: Any = None, **settings: Any) -> Iterator[tuple[str, Any, Any]]:
    """Serve a guard over ``backend`` on a free port; yields ``(base url, backend, app)``."""
    backend = backend if backend is not None else SlowBackend()
    guard = Guard("guard-under-test", backend=backend)
    app = create_app(guard, settings=ServerSettings(**settings))
    with serve_in_thread(app) as url:
        yield url, backend, app
