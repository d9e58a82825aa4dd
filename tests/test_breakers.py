"""Breaker state made visible: the store's breaker_states rows and `python -m starter breakers`.

A real breaker (real clock, real sockets) opens against a dead loopback port in this
process; the CLI, run as a subprocess on the same store, must show it open, then closed
once the port answers again. Rows of a worker not heard from lately are possibly stale.
Also: a failing store never fails a call, a live worker refreshes its rows, the same SQL
on PostgreSQL, and the metrics on a real Prometheus endpoint (in a subprocess).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from secflow.errors import TransientError
from secflow.http import BreakerState, DependencySettings, breaker_states, client_for, flush_breaker_states, register_dependency
from secflow.http.breaker import _all_rows
from secflow.http.breaker_store import BreakerRow, list_breaker_rows, publisher, worker_id, write_breaker_rows
from secflow.http.registry import unregister_dependency
from secflow.logging import configure_logging, reset_logging
from secflow.store import open_store
from tests.pg import pg_server, pg_url  # noqa: F401  (pytest fixtures)
from tests.servers import closed_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
OPEN_FOR = 1.0  # seconds the breaker stays open before a trial
SETTINGS = DependencySettings(
    rate=1000.0, burst=1000, retry_attempts=1, minimum_calls=3, failure_window=60.0,
    open_timeout=OPEN_FOR, max_open_timeout=10.0, deadline=5.0,
)
TIMEOUT = httpx.Timeout(1.0)


@pytest.fixture
def dep() -> Iterator[str]:
    name = f"brk-{uuid.uuid4().hex[:8]}"
    register_dependency(name, SETTINGS)
    yield name
    unregister_dependency(name)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m starter breakers ...` in a fresh process, on this session's store."""
    env = {k: v for k, v in os.environ.items() if k not in ("SECFLOW_DB_URL", "SECFLOW_WORKER_ID")}
    return subprocess.run(
        [PYTHON, "-m", "starter", "breakers", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def rows_of(result: subprocess.CompletedProcess[str], dependency: str) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [r for r in json.loads(result.stdout) if r["dependency"] == dependency]


class Healthy:
    """An HTTP server on a given loopback port (the dependency coming back)."""

    def __init__(self, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


async def test_cli_shows_a_real_breaker_open_then_closed(dep: str) -> None:
    port = closed_port()
    before = datetime.now(timezone.utc)
    async with client_for(dep, base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as http:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await http.get("/")
        assert breaker_states()[dep].state is BreakerState.OPEN
        submitted = publisher(_all_rows)._submitted
        for _ in range(50):  # refusals: no I/O and no store write each
            with pytest.raises(TransientError):
                await http.get("/")
        assert publisher(_all_rows)._submitted == submitted
        assert flush_breaker_states()

        shown = await asyncio.to_thread(cli, "--json")
        (row,) = rows_of(shown, dep)
        assert row["worker_id"] == worker_id() and row["state"] == "open"
        assert row["failures"] == 3 and row["trips"] == 1 and row["stale"] is False
        # wall-clock UTC, converted from the breaker's monotonic clock
        opened = datetime.fromisoformat(row["opened_at"])
        assert opened.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= opened <= datetime.now(timezone.utc)
        half_open = datetime.fromisoformat(row["next_half_open_at"])
        assert (half_open - opened).total_seconds() == pytest.approx(OPEN_FOR, abs=0.01)

        text = await asyncio.to_thread(cli)
        assert text.returncode == 0, text.stderr
        line = next(line for line in text.stdout.splitlines() if dep in line)
        assert " open " in line and "HALF-OPEN" in text.stdout

        # The dependency comes back; after the open timeout one trial closes the breaker.
        server = Healthy(port)
        try:
            await asyncio.sleep(OPEN_FOR + 0.1)
            assert (await http.get("/")).status_code == 200
        finally:
            server.close()
    assert breaker_states()[dep].state is BreakerState.CLOSED
    assert flush_breaker_states()
    (row,) = rows_of(await asyncio.to_thread(cli, "--json"), dep)
    assert row["state"] == "closed" and row["trips"] == 1
    assert row["opened_at"] is None and row["next_half_open_at"] is None


async def test_rows_of_a_silent_worker_are_possibly_stale(dep: str) -> None:
    store = open_store()
    old = datetime.now(timezone.utc) - timedelta(hours=1)
    ghost = f"gone-host:{uuid.uuid4().hex[:6]}"
    write_breaker_rows(store, [BreakerRow(
        worker_id=ghost, dependency=dep, state="open", failures=5, trips=2,
        opened_at=old, next_half_open_at=old + timedelta(seconds=30), updated_at=old,
    )])
    assert any(r.worker_id == ghost for r in list_breaker_rows(store))

    default = await asyncio.to_thread(cli, "--json")
    assert rows_of(default, dep) == [], "a silent worker's rows are hidden by default"
    text = await asyncio.to_thread(cli)
    assert "possibly stale worker(s) hidden" in text.stdout and "--all shows them" in text.stdout

    (row,) = rows_of(await asyncio.to_thread(cli, "--json", "--all"), dep)
    assert row["worker_id"] == ghost and row["stale"] is True
    assert row["worker_last_seen_seconds"] >= 3600 - 5
    text = await asyncio.to_thread(cli, "--all")
    line = next(line for line in text.stdout.splitlines() if ghost in line)
    assert "open (possibly stale)" in line and "due: next call is a trial" in line


async def test_a_failing_store_never_fails_the_call(dep: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A store that cannot be opened: its parent "directory" is a file.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("SECFLOW_DB_URL", f"sqlite:///{blocker}/secflow.db")
    buf = io.StringIO()
    root_level = logging.getLogger().level
    configure_logging("INFO", stream=buf)
    try:
        pub = publisher(_all_rows)
        failures = pub.failures
        async with client_for(dep, base_url=f"http://127.0.0.1:{closed_port()}", timeout=TIMEOUT) as http:
            for _ in range(3):
                with pytest.raises(httpx.ConnectError):  # the HTTP outcome, untouched by the store
                    await http.get("/")
            with pytest.raises(TransientError):
                await http.get("/")
        assert flush_breaker_states()
        assert pub.failures > failures
    finally:
        reset_logging()
        logging.getLogger().setLevel(root_level)
        monkeypatch.delenv("SECFLOW_DB_URL")
    lines = [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]
    errors = [line for line in lines if line.get("event") == "could not persist circuit breaker state"]
    assert errors and errors[0]["category"] and errors[0]["reason"]
    assert dep in errors[0]["dependencies"]
    # Once the store is back, the retained rows get written (the writer retries).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(r.dependency == dep and r.state == "open" for r in list_breaker_rows(open_store())):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the breaker row was not written after the store came back")


async def test_a_worker_process_gone_from_this_host_is_stale_at_once(dep: str) -> None:
    import socket

    ended = subprocess.Popen(["true"])
    ended.wait()
    now = datetime.now(timezone.utc)
    ghost = f"{socket.gethostname()}:{ended.pid}"
    write_breaker_rows(open_store(), [BreakerRow(worker_id=ghost, dependency=dep, state="closed", failures=1, trips=0,
                                                 updated_at=now)])
    assert rows_of(await asyncio.to_thread(cli, "--json"), dep) == []
    (row,) = rows_of(await asyncio.to_thread(cli, "--json", "--all"), dep)
    assert row["stale"] is True and "not running" in row["stale_reason"]


async def test_rows_and_cli_on_postgresql(pg_url: str, dep: str) -> None:
    # The same SQL on PostgreSQL: a real breaker's rows, read back by the CLI in a subprocess.
    from secflow.http.breaker import breaker_for
    from secflow.http.registry import settings_for
    from secflow.store import FindingsStore

    breaker = breaker_for(dep, settings_for(dep))
    for _ in range(3):
        breaker.before_call()
        breaker.on_failure()
    store = FindingsStore(pg_url)
    try:
        write_breaker_rows(store, [breaker.row()])
        write_breaker_rows(store, [breaker.row()])  # an upsert: still one row
        (stored,) = [r for r in list_breaker_rows(store) if r.dependency == dep]
        assert stored.state == "open" and stored.trips == 1 and stored.opened_at is not None
    finally:
        store.close()
    env = {**os.environ, "SECFLOW_DB_URL": pg_url}
    result = await asyncio.to_thread(
        subprocess.run, [PYTHON, "-m", "starter", "breakers", "--json"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )
    (row,) = rows_of(result, dep)
    assert row["state"] == "open" and row["worker_id"] == worker_id() and row["failures"] == 3
    assert pg_url.split("@")[0].split(":")[-1] not in result.stdout + result.stderr  # the password never shows


def test_bad_refresh_interval_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "SECFLOW_BREAKER_REFRESH": "soon"}
    result = subprocess.run([PYTHON, "-m", "starter", "breakers"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "SECFLOW_BREAKER_REFRESH" in result.stderr


# --- metrics through the temporalio Runtime's meter ------------------------------------------
METRICS_CHILD = r"""
import asyncio, socket, sys
import httpx
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from secflow.errors import TransientError
from secflow.http import DependencySettings, client_for, register_dependency

s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
Runtime.set_default(Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}"))))
register_dependency("metrics-dep", DependencySettings(retry_attempts=1, minimum_calls=2, open_timeout=60.0))
dead = socket.socket(); dead.bind(("127.0.0.1", 0)); dead_port = dead.getsockname()[1]; dead.close()

async def main():
    async with client_for("metrics-dep", base_url=f"http://127.0.0.1:{dead_port}", timeout=httpx.Timeout(1.0)) as http:
        for _ in range(2):
            try:
                await http.get("/")
            except httpx.ConnectError:
                pass
        for _ in range(3):
            try:
                await http.get("/")
            except TransientError:
                pass

asyncio.run(main())
print(f"PORT={port}", flush=True)
sys.stdin.read()  # keep the endpoint up until the test is done scraping
"""


def _series(page: str, name: str, **labels: str) -> float | None:
    for line in page.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_breaker_metrics_reach_the_prometheus_endpoint(tmp_path: Path) -> None:
    # A subprocess: setting the default Runtime here would change the session client's.
    env = {**os.environ, "SECFLOW_DATA_DIR": str(tmp_path)}
    child = subprocess.Popen([PYTHON, "-c", METRICS_CHILD], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = 0
        for line in child.stdout:  # unconfigured structlog also prints here
            if line.startswith("PORT="):
                port = int(line[5:])
                break
        assert port, child.stderr.read()
        page = ""
        for _ in range(50):  # the exporter publishes asynchronously
            page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            if _series(page, "secflow_http_refused_total", dependency="metrics-dep") == 3:
                break
            time.sleep(0.1)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert _series(page, "secflow_http_breaker_state", dependency="metrics-dep") == 2, page
    assert _series(page, "secflow_http_breaker_transitions_total", dependency="metrics-dep", to="open") == 1
    assert _series(page, "secflow_http_refused_total", dependency="metrics-dep") == 3
    assert _series(page, "secflow_http_requests_total", dependency="metrics-dep", outcome="transport_error") == 2


REFRESH_CHILD = r"""
import asyncio, socket, sys
import httpx
from secflow.http import DependencySettings, client_for, flush_breaker_states, register_dependency

dep = sys.argv[1]
register_dependency(dep, DependencySettings(retry_attempts=1, minimum_calls=1, open_timeout=600.0))
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()

async def main():
    async with client_for(dep, base_url=f"http://127.0.0.1:{port}", timeout=httpx.Timeout(1.0)) as http:
        try:
            await http.get("/")
        except httpx.ConnectError:
            pass
    flush_breaker_states()
    print("OPEN", flush=True)
    sys.stdin.read()

asyncio.run(main())
"""


async def test_a_worker_refreshes_its_rows_and_goes_stale_when_it_stops() -> None:
    dep = f"brk-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SECFLOW_BREAKER_REFRESH": "0.3", "SECFLOW_WORKER_ID": f"refresh-{dep}"}
    child = subprocess.Popen([PYTHON, "-c", REFRESH_CHILD, dep], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert any(line.startswith("OPEN") for line in child.stdout), child.stderr.read()

        def row() -> BreakerRow:
            (r,) = [r for r in list_breaker_rows(open_store()) if r.dependency == dep]
            return r

        first = row()
        assert first.worker_id == f"refresh-{dep}" and first.state == "open"
        for _ in range(100):  # the live worker re-writes its row every 0.3 s
            if row().updated_at > first.updated_at:
                break
            await asyncio.sleep(0.1)
        refreshed = row()
        assert refreshed.updated_at > first.updated_at and refreshed.state == "open" and refreshed.trips == 1
        assert refreshed.opened_at == first.opened_at  # same breaker, same opening
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    # The worker is gone: with the same refresh setting, its rows are stale after 3 x 0.3 s.
    await asyncio.sleep(1.0)
    cli_env = {k: v for k, v in env.items() if k != "SECFLOW_WORKER_ID"}
    run = lambda *a: subprocess.run([PYTHON, "-m", "starter", "breakers", *a], cwd=ROOT, env=cli_env,  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    assert rows_of(await asyncio.to_thread(run, "--json"), dep) == []
    (shown,) = rows_of(await asyncio.to_thread(run, "--json", "--all"), dep)
    assert shown["stale"] is True and shown["state"] == "open"
