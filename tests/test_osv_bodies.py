"""Truncated and malformed bodies from the read APIs are the dependency's transient fault.

- A real `sca` assessment against the OSV stand-in (loopback) answering a truncated JSON
  body to 30 % of its requests completes with every finding in its first attempt: the
  transport retried the broken bodies inside the attempt, like 503s.
- At the transport: a body cut short on the wire (fewer bytes than Content-Length, a
  broken chunked encoding) or not parsing is resent and counted by the breaker as a failed
  call; one that keeps failing reaches the caller's parser after the retries, which
  classifies it as before (`external_tool`); one that parses but is semantically wrong is
  not resent.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from activities.scanners.sca import OsvClient
from secflow.errors import Category, ExternalToolError, classify
from secflow.http import DependencySettings, breaker_for, client_for, register_dependency, reset_http_state
from secflow.http.registry import unregister_dependency
from secflow.store import open_store
from tests.flaky_osv import FlakyOsv, vulnerable_and_clean_pins
from tests.helpers import final_status, make_spec, start
from tests.osv_standin import Fault


class TruncatingOsv(FlakyOsv):
    """The flaky stand-in, but its random faults are 200s with half the JSON body."""

    def _next_fault(self, endpoint: str) -> Fault | None:
        fault = super()._next_fault(endpoint)
        return Fault.truncated() if fault is not None and fault.status == self.error_status else fault


@pytest.fixture
def osv_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FlakyOsv]]:
    for suffix in ("RETRIES", "FAILURES", "MIN_CALLS", "FAILURE_RATE", "FAILURE_WINDOW", "OPEN_TIMEOUT"):
        monkeypatch.delenv(f"SECFLOW_HTTP_OSV_{suffix}", raising=False)
    reset_http_state()
    servers: list[FlakyOsv] = []
    yield servers
    for server in servers:
        server.close()
    reset_http_state()


async def test_thirty_percent_truncated_bodies_sca_completes_with_every_finding(
    client: Client, worker: str, tmp_path: Path, osv_env: list[FlakyOsv], monkeypatch: pytest.MonkeyPatch
) -> None:
    osv = TruncatingOsv(error_rate=0.3, seed=7)
    osv_env.append(osv)
    monkeypatch.setenv("SECFLOW_OSV_URL", osv.url)
    handles = []
    for i in range(3):
        root = tmp_path / f"app{i}"
        root.mkdir()
        (root / "requirements.txt").write_text(vulnerable_and_clean_pins())
        stage = {"id": "deps", "kind": "sca", "tool": "sca", "options": {"batch_size": 2},
                 "retry": {"initial_interval": "100ms", "max_attempts": 5}}  # fmt: skip
        handles.append(await start(client, make_spec([{"path": str(root)}], [stage], scope={"allow": [str(root)]}), worker))
    expected = osv.expected()
    for handle in handles:
        status = await final_status(handle, timeout=90)
        assert status.outcome == "completed", status.reason
        assert {(f.rule_id, f.location) for f in open_store().list_findings(handle.id) if f.tool == "sca"} == expected
        # Every truncated body was retried inside the first attempt, none cost an attempt.
        assert status.stages["deps"].attempts == 1
    assert osv.injected >= 5, osv.injected  # the faults were real


# --- at the transport, with bodies broken on the wire ------------------------------------
GOOD = json.dumps({"id": "GHSA-good", "summary": "fine"}).encode()


def _answer(body: bytes, *, length: int | None = None) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length or len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


CUT_SHORT = _answer(GOOD[:10], length=len(GOOD))  # fewer bytes than Content-Length, then EOF
BROKEN_CHUNKS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    b"Connection: close\r\n\r\n" + b"%x\r\n" % len(GOOD) + GOOD[:8]  # the chunk never ends
)
NOT_JSON = _answer(b'{"id": "GHSA-good", "summ')  # complete per Content-Length, not JSON


class RawServer:
    """Answers each connection with the next scripted bytes (then the last one), closes it."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.served = 0
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                answer = server.answers[min(server.served, len(server.answers) - 1)]
                server.served += 1
                self.request.sendall(answer)
                self.request.shutdown(socket.SHUT_WR)

        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.tcp.daemon_threads = True
        threading.Thread(target=self.tcp.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.tcp.server_address[1]}"

    def close(self) -> None:
        self.tcp.shutdown()
        self.tcp.server_close()


@pytest.fixture
def dependency() -> Iterator[str]:
    name = f"bodies-{uuid.uuid4().hex[:8]}"
    register_dependency(
        name, DependencySettings(json_bodies=True, retry_attempts=4, retry_initial=0.01, retry_max=0.02, minimum_calls=100)
    )
    yield name
    unregister_dependency(name)


@pytest.mark.parametrize("broken", [CUT_SHORT, BROKEN_CHUNKS, NOT_JSON], ids=["cut-short", "broken-chunks", "not-json"])
async def test_a_broken_body_is_resent_and_counted_by_the_breaker(dependency: str, broken: bytes) -> None:
    server = RawServer([broken, broken, _answer(GOOD)])
    try:
        async with client_for(dependency, base_url=server.url) as http:
            response = await http.get("/v1/vulns/GHSA-good")
    finally:
        server.close()
    assert response.json() == json.loads(GOOD)
    assert server.served == 3
    snap = breaker_for(dependency, DependencySettings()).snapshot()
    assert (snap.failures, snap.calls) == (2, 3)


async def test_a_body_that_stays_malformed_goes_to_the_taxonomy_as_before(dependency: str) -> None:
    server = RawServer([NOT_JSON])
    try:
        async with client_for(dependency, base_url=server.url) as http:
            with pytest.raises(ExternalToolError) as caught:
                await OsvClient(http, server.url).vuln("GHSA-good")
    finally:
        server.close()
    assert server.served == 4  # every in-attempt retry was used
    assert classify(caught.value).category is Category.EXTERNAL_TOOL
    assert "malformed body" in str(caught.value)


async def test_a_body_that_parses_but_is_wrong_is_not_resent(dependency: str) -> None:
    wrong = _answer(json.dumps({"id": "GHSA-other"}).encode())
    server = RawServer([wrong, _answer(GOOD)])
    try:
        async with client_for(dependency, base_url=server.url) as http:
            with pytest.raises(ExternalToolError, match="not an OSV vulnerability"):
                await OsvClient(http, server.url).vuln("GHSA-good")
    finally:
        server.close()
    assert server.served == 1


async def test_a_non_json_dependency_is_not_checked() -> None:
    # Without `json_bodies` (a default dependency) a non-JSON 200 is the caller's business.
    server = RawServer([_answer(b"plain text")])
    try:
        async with client_for(f"plain-{uuid.uuid4().hex[:8]}", base_url=server.url) as http:
            response = await http.get("/")
    finally:
        server.close()
    assert response.status_code == 200 and response.content == b"plain text"


def test_the_read_apis_check_their_bodies() -> None:
    from secflow.http import settings_for

    assert all(settings_for(dep).json_bodies for dep in ("osv", "nvd", "epss", "kev"))
