"""Hostile HTTP targets cannot hold a worker: a total deadline per request, headers and body.

The stand-ins are real sockets on 127.0.0.1 that answer slowly on purpose: one header line
(or one body byte) at a time, each well inside httpx's per-read timeout, forever.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from temporalio.client import Client

from secflow.http.deadline import DeadlineTransport
from tests.helpers import final_status, make_spec, start


class Dribbler:
    """Accepts connections, reads the request, then sends `head` and one `drip` every
    `every` seconds until closed: never a complete response."""

    def __init__(self, head: bytes, drip: bytes, every: float = 0.2) -> None:
        self.head, self.drip, self.every = head, drip, every
        self.connections = 0
        self._closed = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(self.head)
                while not self._closed.wait(self.every):
                    conn.sendall(self.drip)
            except OSError:
                return  # the client gave up and closed: what the deadline is for

    def close(self) -> None:
        self._closed.set()
        self._sock.close()


@pytest.fixture
def header_dribbler() -> Iterator[Dribbler]:
    server = Dribbler(b"HTTP/1.1 200 OK\r\n", b"X-Slow: still here\r\n")
    yield server
    server.close()


@pytest.fixture
def body_dribbler() -> Iterator[Dribbler]:
    server = Dribbler(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nContent-Type: text/plain\r\n\r\n", b"x")
    yield server
    server.close()


async def test_header_dribbling_target_fails_the_attempt_at_its_deadline(
    client: Client, worker: str, header_dribbler: Dribbler
) -> None:
    """Before: each line reset httpx's 1 s read timeout, so the attempt ran to the stage's
    10 minutes while holding the host's scan lock. Now the request ends at 1 s, as a
    classified transient failure, and the assessment ends."""
    spec = make_spec(
        [{"url": header_dribbler.url}],
        [
            {
                "id": "headers",
                "kind": "dast",
                "tool": "http_headers",
                "timeout": "10m",
                "retry": {"max_attempts": 1},
                "options": {"request_timeout": "1s"},
            }
        ],
    )
    handle = await start(client, spec, worker)
    status = await final_status(handle, timeout=90)
    stage = status.stages["headers"]
    assert stage.state == "failed", stage
    assert stage.error is not None and stage.error.category == "transient", stage.error
    assert "total request deadline of 1s exceeded" in stage.error.message
    assert header_dribbler.connections == 1


async def test_body_dribbling_server_is_cut_at_the_deadline(body_dribbler: Dribbler) -> None:
    transport = DeadlineTransport(httpx.AsyncHTTPTransport(retries=0), 1.0)
    async with httpx.AsyncClient(transport=transport, timeout=5.0) as http:
        with pytest.raises(httpx.ReadTimeout, match="total request deadline of 1s exceeded"):
            await http.get(body_dribbler.url)


async def test_api_clients_bound_the_body_too(body_dribbler: Dribbler) -> None:
    """`client_for` (SCA, enrichment, alert channels): its retry layer bounds the attempts
    up to the headers; the body, read after the stack returns, has the same deadline."""
    from secflow.http import DependencySettings, client_for, register_dependency, reset_http_state
    from secflow.http.registry import unregister_dependency

    register_dependency("test.dribble", DependencySettings(deadline=1.0))
    try:
        async with client_for("test.dribble", base_url=body_dribbler.url, timeout=httpx.Timeout(0.5)) as http:
            with pytest.raises(httpx.ReadTimeout, match="total request deadline"):
                await http.get("/")
    finally:
        unregister_dependency("test.dribble")
        reset_http_state()
