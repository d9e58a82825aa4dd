"""Prometheus metrics from a real `python worker.py` process: Temporal's own and SecFlow's."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from temporalio.client import Client

from secflow.dead_letters import list_dead_letters
from secflow.metrics import parse_metrics_addr
from secflow.settings import SettingsError, load_settings
from secflow.store import open_store
from tests.devserver import DevServer, free_port
from tests.helpers import final_status, make_spec, start
from tests.servers import GOOD_HEADERS, Reply, ScriptedServer, closed_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # loopback only
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first `name{...}` sample carrying all `labels`, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def wait_for_metrics(port: int, proc: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            return await asyncio.to_thread(scrape, port)
        except OSError:
            await asyncio.sleep(0.2)
    raise AssertionError("metrics endpoint never answered")


async def test_worker_exports_temporal_and_secflow_metrics(
    client: Client, server: DevServer, task_queue: str, session_dir: Path
) -> None:
    port = free_port()
    log = session_dir / f"metrics-worker-{task_queue}.log"
    env = {**os.environ, "SECFLOW_TASK_QUEUE": task_queue, "TEMPORAL_ADDRESS": server.address,
           "SECFLOW_METRICS_ADDR": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    flaky = ScriptedServer([Reply(503), Reply(200, GOOD_HEADERS)])
    try:
        await wait_for_metrics(port, proc, log)
        spec = make_spec(
            [{"url": f"http://127.0.0.1:{closed_port()}/"}, {"url": flaky.url}],
            [{"id": "headers", "kind": "dast", "tool": "http_headers", "criticality": "optional", "on_failure": "skip",
              "retry": {"max_attempts": 2, "initial_interval": "100ms"}}],
        )
        handle = await start(client, spec, task_queue)
        status = await final_status(handle)
        text = await asyncio.to_thread(scrape, port)
        for _ in range(50):  # the incident's first workflow task may still be on its way
            if sample(text, "secflow_incidents_opened_total", severity="P3"):
                break
            await asyncio.sleep(0.2)
            text = await asyncio.to_thread(scrape, port)
    finally:
        flaky.close()
        proc.terminate()
        proc.wait(timeout=30)
    assert status.stages["headers"].state == "skipped", status.model_dump_json(indent=1)

    # dead port: 2 failed attempts; flaky server: 1 failed attempt, recovered by attempt 2
    errors = sample(text, "secflow_errors_total", category="transient", tool="http-headers", dependency="-")
    assert errors == 3, text  # a fresh worker process: exactly this assessment's errors
    recoveries = sample(text, "secflow_error_recoveries_total", category="transient")
    assert recoveries == 1, text
    assert sample(text, "secflow_error_recovery_seconds_count", category="transient") == 1, text
    # the skipped optional stage opened a P3 incident, counted by the incident workflow
    assert sample(text, "secflow_incidents_opened_total", severity="P3") == 1, text
    # Temporal's own metrics, from the same endpoint
    assert sample(text, "temporal_activity_execution_failed", activity_type="http-headers") is not None, text
    assert sample(text, "temporal_workflow_completed") is not None or sample(text, "temporal_workflow_failed") is not None
    assert "temporal_request" in text
    # the dead port's task exhausted its retries: the assessment parked it in the DLQ
    parked = list_dead_letters(open_store(), workflow_id=handle.id)
    assert [(d.reason, d.category) for d in parked] == [("retries_exhausted", "transient")]
    assert sample(text, "secflow_dead_letters_total", reason="retries_exhausted", category="transient") == 1, text


def test_bad_metrics_address_is_refused_by_settings_and_the_worker(tmp_path: Path) -> None:
    for bad in ("9464", "127.0.0.1:", "127.0.0.1:70000", "example.com:9464", "::1:9464"):
        try:
            load_settings({"SECFLOW_METRICS_ADDR": bad})
        except SettingsError as exc:
            assert "SECFLOW_METRICS_ADDR" in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")
    assert parse_metrics_addr("") is None
    assert parse_metrics_addr("localhost:9464") == "127.0.0.1:9464"
    assert parse_metrics_addr("[::1]:9464") == "[::1]:9464"
    # The worker refuses to start (exit 2, naming the variable) and connects to nothing.
    out = subprocess.run(
        [sys.executable, "worker.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "SECFLOW_METRICS_ADDR": "127.0.0.1:notaport", "TEMPORAL_ADDRESS": "127.0.0.1:1"},
    )
    assert out.returncode == 2 and "SECFLOW_METRICS_ADDR" in out.stderr


def test_worker_refuses_a_metrics_address_in_use() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "worker.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "SECFLOW_METRICS_ADDR": f"127.0.0.1:{port}", "TEMPORAL_ADDRESS": "127.0.0.1:1"},
        )
    assert out.returncode == 2 and "SECFLOW_METRICS_ADDR" in out.stderr and str(port) in out.stderr
