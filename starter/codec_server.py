"""python -m starter codec-server: Temporal's remote codec protocol over SecFlow's key ring.

The Web UI (`--ui-codec-endpoint`, or its "Codec Server" setting) and the CLI
(`temporal workflow show --codec-endpoint URL`) send the payloads they show to
``POST /decode`` (and ``/encode`` for what a person types) as ``{"payloads": [...]}`` in
proto3 JSON form, with the namespace in ``X-Namespace`` (or as a path prefix,
``/<namespace>/decode``, for a templated endpoint); this server answers with the same
shape, decrypted with the key ring the workers use (secflow/codec.py). Stored history stays
encrypted: only a person who can reach this endpoint (and holds its token) reads it.

Bound to 127.0.0.1 by default; another address needs ``SECFLOW_CODEC_TOKEN`` (every request
then carries ``Authorization: Bearer <token>``). CORS admits the Web UI's origins
(``--cors-origin``, ``SECFLOW_CODEC_CORS_ORIGINS``; default the dev server's UI on
localhost:8233), with credentials, as the UI sends them. It does not connect to Temporal.
Starlette (CORS middleware, request handling) on uvicorn: both well kept, both already in
the environment; see README "Encrypted history" and docs/codec.md.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads

from secflow.codec import CodecError, EncryptionCodec, KeyRingError, keyring_for
from secflow.logging import get_logger
from secflow.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_PORT = 8081
DEFAULT_ORIGINS = ("http://localhost:8233", "http://127.0.0.1:8233")
TOKEN_ENV = "SECFLOW_CODEC_TOKEN"
ORIGINS_ENV = "SECFLOW_CODEC_CORS_ORIGINS"
# The UI batches a page's payloads; Temporal caps one payload at 2 MB.
MAX_BODY = 16 * 1024 * 1024

_log = get_logger(component="codec-server")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("codec-server", help="serve Temporal's remote codec protocol (decrypts history for the Web UI and CLI)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need SECFLOW_CODEC_TOKEN)")
    p.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help=f"a Web UI origin allowed to call this server, repeatable (default ${ORIGINS_ENV} or {', '.join(DEFAULT_ORIGINS)})",
    )
    p.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        help="namespace whose payloads this server handles, repeatable (default TEMPORAL_NAMESPACE)",
    )
    p.add_argument("--tls-cert", help="serve https with this PEM certificate (needs --tls-key)")
    p.add_argument("--tls-key", help="the certificate's PEM private key")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a TCP port (0-65535)")
    return port


Transform = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]


def build_app(codec: EncryptionCodec, *, origins: Sequence[str], token: str | None, namespaces: Sequence[str]) -> Starlette:
    """The ASGI app: `/encode` and `/decode`, CORS for `origins`, an optional bearer token."""
    expected = f"Bearer {token}".encode() if token else None

    def refuse(request: Request) -> Response | None:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse(
                    {"error": "missing or wrong bearer token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
        # The namespace comes in the X-Namespace header, or as the first path segment when the
        # endpoint is templated (`--codec-endpoint 'http://host:8081/{namespace}'`).
        namespace = request.path_params.get("namespace") or request.headers.get("x-namespace")
        if namespace is not None and namespace not in namespaces:
            return JSONResponse({"error": f"namespace {namespace!r} is not served here"}, status_code=403)
        return None

    async def read_payloads(request: Request) -> Payloads:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            raise ValueError(f"body larger than {MAX_BODY} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise ValueError(f"body larger than {MAX_BODY} bytes")
        try:
            return json_format.Parse(bytes(body), Payloads())
        except json_format.ParseError as exc:
            raise ValueError(f'expected {{"payloads": [...]}} in proto3 JSON: {exc}') from None

    def endpoint(transform: Transform) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            refused = refuse(request)
            if refused is not None:
                return refused
            try:
                payloads = await read_payloads(request)
                out = Payloads(payloads=await transform(payloads.payloads))
            except (ValueError, CodecError) as exc:
                _log.warning("codec request refused", path=request.url.path, reason=str(exc))
                return JSONResponse({"error": str(exc)}, status_code=400)
            return Response(json_format.MessageToJson(out), media_type="application/json")

        return handle

    return Starlette(
        routes=[
            Route("/encode", endpoint(codec.encode), methods=["POST"]),
            Route("/decode", endpoint(codec.decode), methods=["POST"]),
            Route("/{namespace}/encode", endpoint(codec.encode), methods=["POST"]),
            Route("/{namespace}/decode", endpoint(codec.decode), methods=["POST"]),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(origins),
                allow_methods=["POST"],
                allow_headers=["Content-Type", "X-Namespace", "Authorization"],
                allow_credentials=True,
                max_age=600,
            )
        ],
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run(args: argparse.Namespace, settings: Settings) -> int:
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    if not _is_loopback(args.host) and token is None:
        print(
            f"error: --host {args.host}: serving beyond loopback needs {TOKEN_ENV} (anyone reaching it could decrypt history)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if bool(args.tls_cert) != bool(args.tls_key):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return EXIT_BAD_INPUT
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not os.path.isfile(path):
            print(f"error: {flag} {path}: no such file", file=sys.stderr)
            return EXIT_BAD_INPUT
    origins = args.cors_origin
    if not origins:
        origins = [o.strip() for o in os.environ.get(ORIGINS_ENV, "").split(",") if o.strip()] or list(DEFAULT_ORIGINS)
    bad = [o for o in origins if o != "*" and not o.startswith(("http://", "https://"))]
    if bad or "*" in origins:
        print(
            f"error: --cors-origin {(bad or ['*'])[0]!r}: give the Web UI's origin as scheme://host[:port] (no wildcard)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    try:
        ring = keyring_for(settings)
    except KeyRingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if ring is None:
        print("error: SECFLOW_CODEC=off: payloads are not encrypted, there is nothing to serve", file=sys.stderr)
        return EXIT_BAD_INPUT
    app = build_app(EncryptionCodec(ring), origins=origins, token=token, namespaces=args.namespace or [settings.namespace])

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    # Listening before saying so: a client that reads the first line and connects at once
    # waits in the backlog until uvicorn accepts, instead of being refused.
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    scheme = "https" if args.tls_cert else "http"
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        server_header=False,
    )
    server = uvicorn.Server(config)
    # The first line says where it listens (make demo and the tests wait for it).
    print(f"codec server listening on {scheme}://{shown}:{port} (key ring {ring.source}, current key {ring.current})", flush=True)
    print(f"  CORS origins: {', '.join(origins)}; token: {'required' if token else 'none'}", flush=True)
    await server.serve(sockets=[sock])
    return EXIT_OK
