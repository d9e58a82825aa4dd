"""A deliberately weak local web server for the demo assessment to scan.

    python examples/demo_target.py [--host 127.0.0.1] [--port 8089] [--extra-ports 8091,8093]

Serves a small HTML page with poor security headers (a versioned Server and X-Powered-By,
a session cookie without HttpOnly, no CSP, X-Frame-Options, Referrer-Policy or nosniff),
and opens plain TCP listeners on the extra ports (accept, then close) so a port scan finds
several open ports. It binds loopback addresses only: it is a target, not a service.

Standard library only, so it runs from a fresh clone without installing anything.
Importable for tests: `start_demo_target(host, port, extra_ports)` returns a handle whose
`.stop()` shuts everything down; port 0 asks the OS for a free port.
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = b"""<!doctype html>
<html>
<head><title>SecFlow demo target</title></head>
<body>
<h1>SecFlow demo target</h1>
<p>This page is served with deliberately weak security headers for SecFlow to find.</p>
<form action="/login" method="post"><input name="user"><button>Log in</button></form>
</body>
</html>
"""


class NotLoopbackError(ValueError):
    """The demo target was asked to listen on an address other machines could reach."""


class _WeakHeadersHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return "Apache/2.4.41 (Ubuntu)"

    def do_GET(self) -> None:
        self._respond(include_body=True)

    def do_HEAD(self) -> None:
        self._respond(include_body=False)

    def _respond(self, *, include_body: bool) -> None:
        found = self.path.split("?", 1)[0] in ("/", "/index.html")
        body = PAGE if found else b"<!doctype html><title>Not found</title><p>Not found</p>\n"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Powered-By", "PHP/7.2.1")
        # No HttpOnly: readable from JavaScript, which is one of the things to find.
        self.send_header("Set-Cookie", f"PHPSESSID={secrets.token_hex(16)}; Path=/")
        self.end_headers()
        if include_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        if self.server.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)


class _AcceptAndClose(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        """Nothing to say: the server closes the connection once this returns."""


def _server_classes(family: int) -> tuple[type[ThreadingHTTPServer], type[socketserver.TCPServer]]:
    class HTTPServer(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        verbose = False

    class TCPServer(socketserver.TCPServer):
        address_family = family
        allow_reuse_address = True

    return HTTPServer, TCPServer


def loopback_address(host: str) -> str:
    """The loopback IP to bind for `host`, or `NotLoopbackError` saying why not."""
    if host.strip().lower() == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        raise NotLoopbackError(
            f"--host {host!r} is not an IP address; use a loopback address such as 127.0.0.1 or ::1"
        ) from None
    if not ip.is_loopback:
        raise NotLoopbackError(
            f"--host {host!r} is not a loopback address; the demo target only binds 127.0.0.0/8 or ::1"
        )
    return str(ip)


class DemoTarget:
    """Handle on a running demo target. `stop()` is idempotent; also a context manager."""

    def __init__(
        self,
        host: str,
        port: int,
        extra_ports: Iterable[int] = (),
        *,
        verbose: bool = False,
        https_port: int | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        self.host = loopback_address(host)
        extra_ports = list(extra_ports)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        http_class, tcp_class = _server_classes(family)
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        try:
            http_server = http_class((self.host, port), _WeakHeadersHandler)
            http_server.verbose = verbose
            self._servers.append(http_server)
            for extra in extra_ports:
                self._servers.append(tcp_class((self.host, extra), _AcceptAndClose))
            self.https_port: int | None = None
            if https_port is not None:
                if not (tls_cert and tls_key):
                    raise ValueError("--https-port needs --tls-cert and --tls-key")
                import ssl

                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(tls_cert, tls_key)
                https_server = http_class((self.host, https_port), _WeakHeadersHandler)
                https_server.socket = context.wrap_socket(https_server.socket, server_side=True)
                https_server.verbose = verbose
                self._servers.append(https_server)
                self.https_port = https_server.server_address[1]
        except BaseException:
            self._close_sockets()
            raise
        self.port: int = http_server.server_address[1]
        extra_servers = self._servers[1 : 1 + len(extra_ports)]
        self.extra_ports: list[int] = [s.server_address[1] for s in extra_servers]  # type: ignore[attr-defined]
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/"

    def stop(self) -> None:
        if self._threads:  # shutdown() waits for serve_forever, so only while it runs
            for server in self._servers:
                server.shutdown()
            for thread in self._threads:
                thread.join()
            self._threads.clear()
        self._close_sockets()

    def _close_sockets(self) -> None:
        for server in self._servers:
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> "DemoTarget":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_demo_target(
    host: str = "127.0.0.1",
    port: int = 8089,
    extra_ports: Iterable[int] = (),
    *,
    verbose: bool = False,
    https_port: int | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> DemoTarget:
    """Start the demo target in background threads; raises NotLoopbackError or OSError."""
    return DemoTarget(
        host, port, list(extra_ports), verbose=verbose, https_port=https_port, tls_cert=tls_cert, tls_key=tls_key
    )


def _port(text: str) -> int:
    item = text.strip()
    if not item.isdigit() or not 0 <= int(item) <= 65535:
        raise argparse.ArgumentTypeError(f"{item!r} is not a port between 0 (any free port) and 65535")
    return int(item)


def _port_list(text: str) -> list[int]:
    return [_port(item) for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Deliberately weak local web server for the SecFlow demo.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8089, help="HTTP port (default 8089)")
    parser.add_argument(
        "--extra-ports", type=_port_list, default=[], help="comma-separated plain TCP ports, e.g. 8091,8093"
    )
    parser.add_argument("--verbose", action="store_true", help="log each HTTP request to stderr")
    parser.add_argument("--https-port", type=_port, default=None, help="also serve the page over TLS on this port")
    parser.add_argument("--tls-cert", help="PEM certificate for --https-port")
    parser.add_argument("--tls-key", help="PEM private key for --https-port")
    args = parser.parse_args(argv)
    if args.https_port is not None and not (args.tls_cert and args.tls_key):
        parser.error("--https-port needs --tls-cert and --tls-key")

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        target = start_demo_target(
            args.host, args.port, args.extra_ports, verbose=args.verbose,
            https_port=args.https_port, tls_cert=args.tls_cert, tls_key=args.tls_key,
        )
    except NotLoopbackError as exc:
        print(f"demo_target: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"demo_target: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return 1
    extra = f" (extra TCP ports: {', '.join(map(str, target.extra_ports))})" if target.extra_ports else ""
    if target.https_port:
        extra += f" (https on port {target.https_port})"
    print(f"demo target ready on {target.url}{extra}", flush=True)
    try:
        while not stop.is_set():
            stop.wait(0.5)  # a timed wait, so the signal handlers get to run promptly
    finally:
        target.stop()
    print("demo target stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
