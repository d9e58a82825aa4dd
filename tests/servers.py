"""Local stand-in targets on 127.0.0.1 whose behaviour a test scripts: 503 then 200, hang, garbage."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOOD_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"<html>ok</html>"


class ScriptedServer:
    """Answers the n-th request with script[n] (the last entry repeats). Records every path."""

    def __init__(self, script: list[Reply] | Callable[[int, str], Reply]) -> None:
        self.script = script
        self.requests: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                with server._lock:
                    n = len(server.requests)
                    server.requests.append(self.path)
                reply = server._reply(n, self.path)
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _reply(self, n: int, path: str) -> Reply:
        if callable(self.script):
            return self.script(n, path)
        return self.script[min(n, len(self.script) - 1)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Listeners:
    """Plain TCP listeners that accept and close: open ports for a port scan to find."""

    def __init__(self, count: int = 0, ports: list[int] | None = None) -> None:
        self.socks = []
        for port in ports if ports is not None else [0] * count:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(64)
            self.socks.append(s)
        self.ports = sorted(s.getsockname()[1] for s in self.socks)
        self._stop = False
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self.socks]
        for t in self.threads:
            t.start()

    def _serve(self, s: socket.socket) -> None:
        s.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = s.accept()
                conn.close()
            except (socket.timeout, OSError):
                continue

    def close(self) -> None:
        self._stop = True
        for s in self.socks:
            s.close()


def listeners_in_window(width: int, offsets: list[int]) -> tuple[int, Listeners]:
    """Listeners at base+offset for a base where all of them are free; returns (base, listeners).

    Lets a test scan a known, contiguous range (slow enough to interrupt) that contains
    its own open ports, below the ephemeral range so nothing else is likely to be there.
    """
    import random

    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 30000 - width)
        try:
            return base, Listeners(ports=[base + o for o in offsets])
        except OSError:
            continue
    raise RuntimeError("no free window of ports found")
