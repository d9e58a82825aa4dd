"""Test-only: a loopback HTTP target that can be brought up on a port chosen earlier.

A stage first fails against the port while nothing listens (connection refused), then the
target "comes back" on that same port, as a real service restarted by an operator would.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.servers import GOOD_HEADERS


class TargetOnPort:
    def __init__(self, port: int) -> None:
        self.requests: list[str] = []
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                target.requests.append(self.path)
                body = b"<html>ok</html>"
                self.send_response(200)
                for k, v in GOOD_HEADERS.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
