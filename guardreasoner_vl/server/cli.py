"""``guardreasoner-vl serve``: the OpenAI-compatible moderation server on uvicorn.

Example::

    guardreasoner-vl serve --model yueliu1999/GuardReasoner-VL-3B --port 8000 --max-batch-size 8
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from guardreasoner_vl.server.settings import SERVER_API_KEY_ENV, ServerSettings

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``serve`` command to the ``guardreasoner-vl`` parser."""
    from guardreasoner_vl.cli import add_guard_options

    defaults = ServerSettings()
    parser = subparsers.add_parser(
        "serve",
        help="run the OpenAI-compatible moderation server (/v1/moderations, /v1/guard, /metrics)",
        description="Serve a guard over HTTP: POST /v1/moderations (OpenAI schema), POST /v1/guard, "
        "POST /v1/guard/stream (server-sent events), GET /health, GET /metrics, and with --playground a web page "
        "at /. Binds 127.0.0.1 unless --host says otherwise.",
    )
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    net.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    net.add_argument(
        "--max-batch-size", type=int, default=defaults.max_batch_size, help="most items per engine call (default: 8)"
    )
    net.add_argument(
        "--max-wait-ms",
        type=float,
        default=defaults.max_wait_ms,
        help=f"how long a batch waits to fill (default: {defaults.max_wait_ms:g})",
    )
    net.add_argument(
        "--max-queue",
        type=int,
        default=defaults.max_queue,
        help=f"most items waiting; beyond it requests get HTTP 429 (default: {defaults.max_queue})",
    )
    net.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="engine calls at once (default: 1; raise it for --backend remote)",
    )
    net.add_argument(
        "--max-inputs", type=int, default=defaults.max_inputs, help="most inputs per /v1/moderations request"
    )
    net.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes, help="largest request body")
    net.add_argument("--max-image-bytes", type=int, default=defaults.max_image_bytes, help="largest image")
    net.add_argument(
        "--max-memory-bytes",
        type=int,
        default=defaults.max_memory_bytes,
        help="most bytes of request bodies and decoded images held at once; beyond it HTTP 429 (or 413 for a "
        "request that could never fit)",
    )
    net.add_argument(
        "--header-timeout-s",
        type=float,
        default=defaults.header_timeout_s,
        help="seconds a connection has to send a request's headers (slow clients are disconnected)",
    )
    net.add_argument(
        "--body-timeout-s",
        type=float,
        default=defaults.body_timeout_s,
        help="seconds a request's body has to arrive (HTTP 408 beyond)",
    )
    net.add_argument(
        "--keep-alive-timeout-s",
        type=int,
        default=defaults.keep_alive_timeout_s,
        help="seconds an idle keep-alive connection stays open",
    )
    net.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help="most open connections and running requests; beyond it HTTP 503",
    )
    net.add_argument(
        "--max-header-bytes", type=int, default=defaults.max_header_bytes, help="largest request line plus headers"
    )
    net.add_argument(
        "--api-key",
        help=f"require the key, as 'Authorization: Bearer KEY' or 'x-api-key: KEY' (default: ${SERVER_API_KEY_ENV}; "
        "none: no authentication)",
    )
    net.add_argument(
        "--allow-image-urls", action="store_true", help="let clients send http(s) image URLs for the server to fetch"
    )
    net.add_argument("--served-model-name", help="model name reported in responses (default: --model)")
    net.add_argument(
        "--category-scores",
        choices=["harm", "none"],
        default=defaults.category_scores,
        help="/v1/moderations category_scores: the harm score under every category, or always null",
    )
    net.add_argument(
        "--max-streams",
        type=int,
        default=defaults.max_streams,
        help="most /v1/guard/stream requests at once; beyond it HTTP 429",
    )
    net.add_argument(
        "--playground", action="store_true", help="serve the playground page at / (a browser UI for the guard)"
    )
    net.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_guard_options(parser)
    parser.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from guardreasoner_vl.cli import guard_from_args
    from guardreasoner_vl.errors import InvalidInputError
    from guardreasoner_vl.server.app import create_app
    from guardreasoner_vl.server.runner import is_loopback, run_server

    if args.on_parse_error == "raise":
        raise InvalidInputError(
            "--on-parse-error raise does not apply to serve: a server answers every input, and an output that "
            "could not be parsed is a result with status parse_error (flagged under 'flag', judged on what "
            "was read under 'allow'); choose flag or allow"
        )
    api_key = args.api_key or os.environ.get(SERVER_API_KEY_ENV) or None
    settings = ServerSettings(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        workers=args.workers,
        max_inputs=min(args.max_inputs, args.max_queue),
        max_body_bytes=args.max_body_bytes,
        max_image_bytes=args.max_image_bytes,
        api_key=api_key,
        allow_image_urls=args.allow_image_urls,
        model_name=args.served_model_name,
        max_memory_bytes=args.max_memory_bytes,
        header_timeout_s=args.header_timeout_s,
        body_timeout_s=args.body_timeout_s,
        keep_alive_timeout_s=args.keep_alive_timeout_s,
        max_connections=args.max_connections,
        max_header_bytes=args.max_header_bytes,
        category_scores=args.category_scores,
        max_streams=args.max_streams,
        playground=args.playground,
    )
    if not is_loopback(args.host) and api_key is None:
        print(
            f"warning: serving on {args.host} without an API key: anyone who can reach this address can use "
            f"the model (set --api-key or ${SERVER_API_KEY_ENV})",
            file=sys.stderr,
        )
    guard = guard_from_args(args)
    app = create_app(guard, settings=settings)
    run_server(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
