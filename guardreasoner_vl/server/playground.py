"""The playground: one static page at ``GET /`` (``serve --playground``; ``demo --serve`` turns it on).

Type a request and a response, drop an image, and watch the guard reason: the page posts to
``/v1/guard/stream`` and shows each ``reasoning`` event as it arrives, then the verdicts, their scores
(``request_score``, ``response_score``) and the status. One HTML file with inline CSS and JavaScript
(``playground.html`` beside this module): no build step, nothing fetched from elsewhere.

Model output is never parsed as HTML: the page writes it with ``textContent`` only. As a second line of
defence the page is served with a Content-Security-Policy that allows exactly its own inline script and style
(by their SHA-256 hashes), images only from ``data:`` URLs (the preview) and requests only to this server, so a
``<script>`` or an ``onerror=`` attribute that reached the document anyway would not run.

The page holds no secret: with ``--api-key``, the user types the key into the page, which sends it as a bearer
token.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["PlaygroundPage", "playground_page"]


@dataclass(frozen=True, slots=True)
class PlaygroundPage:
    """The page's HTML and the headers it is served with."""

    html: str
    headers: dict[str, str]


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode() + "'"


def playground_page(*, model: str, family: str) -> PlaygroundPage:
    """The playground for ``model`` (shown escaped in the page), with its Content-Security-Policy.

    Example:
        >>> page = playground_page(model="<b>m</b>", family="vl")
        >>> "&lt;b&gt;m&lt;/b&gt;" in page.html, "script-src 'sha256-" in page.headers["Content-Security-Policy"]
        (True, True)
    """
    template = resources.files("guardreasoner_vl.server").joinpath("playground.html").read_text(encoding="utf-8")
    page = template.replace("{{MODEL}}", html.escape(model, quote=True)).replace(
        "{{FAMILY}}", html.escape(family, quote=True)
    )
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", page, flags=re.DOTALL)
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(_hash(s) for s in scripts),
            "style-src " + " ".join(_hash(s) for s in styles),
            "img-src data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    return PlaygroundPage(html=page, headers=headers)
