"""Crashes for real: a worker process SIGKILLed or SIGTERMed mid-scan, a server restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHandle

from secflow.settings import load_settings
from secflow.store import open_store
from secflow.temporal_client import connect
from tests.devserver import DevServer
from tests.helpers import final_status, make_spec, start
from tests.servers import listeners_in_window

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 1500
OFFSETS = [37, 700, 1450]

pytestmark = pytest.mark.slow


class WorkerProcess:
    """`python worker.py` as a separate OS process, as in production."""

    def __init__(self, task_queue: str, address: str, log: Path, **env: str) -> None:
        full_env = {**os.environ, "SECFLOW_TASK_QUEUE": task_queue, "TEMPORAL_ADDRESS": address,
                    "SECFLOW_LOG_LEVEL": "INFO", **env}
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=full_env,
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT)

    def kill(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def slow_scan_spec(base: int):
    # ~1500 ports at 150 probes/s: about 10 s, long enough to interrupt mid-way.
    return make_spec(
        [{"host": "127.0.0.1"}],
        [{"id": "ports", "kind": "discovery", "tool": "portscan",
          "options": {"ports": f"{base}-{base + WIDTH - 1}", "rate": 150},
          "retry": {"max_attempts": 5, "initial_interval": "200ms"}}],
    )


async def scan_progress(client: Client, handle: WorkflowHandle) -> tuple[int, int]:
    """(attempt, ports done) of the running portscan, from its heartbeat as Temporal has it."""
    desc = await handle.describe()
    for pending in desc.raw_description.pending_activities:
        if pending.activity_type.name != "portscan":
            continue
        done = 0
        if pending.heartbeat_details.payloads:
            [details] = await client.data_converter.decode(pending.heartbeat_details.payloads[:1])
            done = int((details or {}).get("progress", {}).get("done", 0))
        return pending.attempt, done
    return 0, 0


async def wait_progress(client: Client, handle: WorkflowHandle, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, done = await scan_progress(client, handle)
        if done >= at_least:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"scan did not reach {at_least} ports in {timeout}s")


def assert_each_open_port_once(workflow_id: str, base: int) -> None:
    findings = open_store().list_findings(workflow_id)
    locations = [f.location for f in findings]
    assert len(locations) == len(set(locations)), f"duplicate findings: {locations}"
    for offset in OFFSETS:
        assert f"127.0.0.1:{base + offset}" in locations


async def test_sigkilled_worker_mid_scan_is_resumed_by_another(client: Client, server: DevServer, task_queue: str, tmp_path: Path) -> None:
    base, listeners = listeners_in_window(WIDTH, OFFSETS)
    first = WorkerProcess(task_queue, server.address, tmp_path / "worker1.log")
    second = None
    try:
        handle = await start(client, slow_scan_spec(base), task_queue)
        await wait_progress(client, handle, at_least=400)
        first.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait()
        second = WorkerProcess(task_queue, server.address, tmp_path / "worker2.log")
        # Crash detection, as Temporal sees it: the attempt number moves on.
        detected = None
        while time.monotonic() - killed_at < 30:
            attempt, _ = await scan_progress(client, handle)
            if attempt >= 2:
                detected = time.monotonic() - killed_at
                break
            await asyncio.sleep(0.05)
        assert detected is not None, "the lost attempt was never retried"
        print(f"\ncrash pick-up: attempt 2 scheduled {detected:.2f}s after SIGKILL")
        status = await final_status(handle)
    finally:
        listeners.close()
        first.stop()
        if second:
            second.stop()
    assert status.outcome == "completed"
    assert status.stages["ports"].attempts >= 2
    assert_each_open_port_once(handle.id, base)
    assert "resuming port scan" in second.text(), "the second attempt must resume from the checkpoint"
    # the lost attempt is accounted for in the error ledger, and marked recovered
    errors = open_store().list_errors(handle.id)
    assert errors and all(e.outcome == "recovered" for e in errors)


async def test_sigterm_hands_the_scan_back_cleanly(client: Client, server: DevServer, task_queue: str, tmp_path: Path) -> None:
    base, listeners = listeners_in_window(WIDTH, OFFSETS)
    first = WorkerProcess(task_queue, server.address, tmp_path / "worker1.log", SECFLOW_SHUTDOWN_GRACE="1s")
    second = None
    try:
        handle = await start(client, slow_scan_spec(base), task_queue)
        await wait_progress(client, handle, at_least=300)
        first.kill(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, first.text()
        second = WorkerProcess(task_queue, server.address, tmp_path / "worker2.log")
        status = await final_status(handle)
    finally:
        listeners.close()
        first.stop()
        if second:
            second.stop()
    assert status.outcome == "completed"
    assert "handing the attempt back" in first.text()
    assert "resuming port scan" in second.text()
    assert_each_open_port_once(handle.id, base)
    errors = open_store().list_errors(handle.id)
    assert any("worker shut down" in e.message and e.outcome == "recovered" for e in errors)


async def test_server_restart_mid_run_loses_nothing(session_dir: Path, task_queue: str, tmp_path: Path) -> None:
    own = DevServer(tmp_path / "restart.db", tmp_path / "restart-server.log")
    own.start()
    base, listeners = listeners_in_window(WIDTH, OFFSETS)
    worker = WorkerProcess(task_queue, own.address, tmp_path / "worker.log")
    try:
        settings = load_settings({**os.environ, "TEMPORAL_ADDRESS": own.address})
        client = await connect(settings)
        handle = await start(client, slow_scan_spec(base), task_queue)
        await wait_progress(client, handle, at_least=300)
        own.stop()
        await asyncio.sleep(2)
        own.start()
        client = await connect(settings)
        status = await final_status(client.get_workflow_handle(handle.id), timeout=180)
    finally:
        listeners.close()
        worker.stop()
        own.stop()
    assert status.outcome == "completed"
    assert_each_open_port_once(handle.id, base)
