"""The reaper, against the real Temporal dev server: workspaces and scan locks of runs
that are no longer running are reclaimed; those of running ones, and locks of holders
Temporal does not know, are kept.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from secflow.reaper import reap_once, run_reaper
from secflow.settings import Settings, SettingsError, load_settings
from secflow.store import FindingsStore, open_store
from tests.support_lock_workflows import LockHolderWorkflow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    data = tmp_path / "data"
    monkeypatch.setenv("SECFLOW_DATA_DIR", str(data))
    monkeypatch.setenv("SECFLOW_DB_URL", f"sqlite:///{data / 'secflow.db'}")
    return load_settings()


@pytest.fixture
def store(settings: Settings) -> FindingsStore:
    return open_store()


@pytest.fixture
async def holders(client: Client) -> AsyncIterator[tuple[str, str]]:
    """(queue, id prefix): a worker running the stand-in assessment workflow."""
    queue = f"reaper-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[LockHolderWorkflow]):
        yield queue, f"reaper-{uuid.uuid4().hex[:6]}"


async def _running(client: Client, queue: str, workflow_id: str) -> None:
    await client.start_workflow(LockHolderWorkflow.run, id=workflow_id, task_queue=queue)


def _workspace(settings: Settings, name: str, *, age: float = 0.0) -> Path:
    path = settings.workspaces_dir / name
    (path / "nmap").mkdir(parents=True)
    (path / "nmap" / "out.xml").write_text("<nmaprun/>")
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


async def test_reap_once_removes_what_stopped_runs_left_and_keeps_the_rest(
    client: Client, holders: tuple[str, str], settings: Settings, store: FindingsStore
) -> None:
    queue, prefix = holders
    alive, dead = f"{prefix}-alive", f"{prefix}-dead"
    await _running(client, queue, alive)
    await _running(client, queue, dead)
    alive_ws, dead_ws = _workspace(settings, alive), _workspace(settings, dead)
    young_unknown = _workspace(settings, f"{prefix}-unknown-young", age=60)
    old_unknown = _workspace(settings, f"{prefix}-unknown-old", age=2 * 3600)

    assert store.acquire_locks(["h1", "h2"], alive).acquired
    assert store.acquire_locks(["h3", "h4", "h5"], dead).acquired
    assert not store.acquire_locks(["h1", "h6"], dead).acquired  # dead also waits on h1 and h6
    assert store.acquire_locks(["by-hand"], "someone-by-hand").acquired

    await client.get_workflow_handle(dead).terminate(reason="test: compensations skipped")
    report = await reap_once(client, settings)

    assert report.errors == []
    assert report.workspaces_removed == sorted([dead, old_unknown.name])
    assert report.workspaces_kept == 2
    assert not dead_ws.exists() and not old_unknown.exists()
    assert alive_ws.exists() and young_unknown.exists()
    assert report.holders_released == [dead] and report.locks_released == 3
    assert {lock.target: lock.holder for lock in store.list_locks()} == {
        "h1": alive,
        "h2": alive,
        "by-hand": "someone-by-hand",
    }
    assert store.lock_holders() == {alive, "someone-by-hand"}  # dead's tickets went too
    assert store.acquire_locks(["h6"], "next").acquired  # nobody queues ahead any more

    again = await reap_once(client, settings)  # nothing left to do
    assert (again.workspaces_removed, again.holders_released, again.errors) == ([], [], [])
    await client.get_workflow_handle(alive).terminate(reason="test done")


async def test_a_failing_part_is_reported_and_the_rest_still_reaped(
    client: Client, holders: tuple[str, str], settings: Settings
) -> None:
    queue, prefix = holders
    dead = f"{prefix}-dead"
    await _running(client, queue, dead)
    _workspace(settings, dead)
    await client.get_workflow_handle(dead).terminate(reason="test")
    closed = FindingsStore(os.environ["SECFLOW_DB_URL"])
    closed.close()

    report = await reap_once(client, settings, store=closed)
    assert report.workspaces_removed == [dead]
    assert len(report.errors) == 1 and report.errors[0].startswith("scan lock holders: ")


async def test_run_reaper_runs_at_once_then_periodically_until_cancelled(
    client: Client, holders: tuple[str, str], settings: Settings
) -> None:
    queue, prefix = holders
    first, later = f"{prefix}-first", f"{prefix}-later"
    for wid in (first, later):
        await _running(client, queue, wid)
    await client.get_workflow_handle(first).terminate(reason="test")
    _workspace(settings, first)

    task = asyncio.create_task(run_reaper(client, settings, 0.2))
    try:
        await _until(lambda: not (settings.workspaces_dir / first).exists())
        later_ws = _workspace(settings, later)
        await asyncio.sleep(0.5)
        assert later_ws.exists()  # running: kept pass after pass
        await client.get_workflow_handle(later).terminate(reason="test")
        await _until(lambda: not later_ws.exists())
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_reaper_interval_setting_is_validated() -> None:
    assert load_settings({}).reaper_interval == 600.0
    assert load_settings({"SECFLOW_REAPER_INTERVAL": "5m"}).reaper_interval == 300.0
    assert load_settings({"SECFLOW_REAPER_INTERVAL": "2.5"}).reaper_interval == 2.5
    for bad in ("0", "-5", "soon", ""):
        with pytest.raises(SettingsError, match="SECFLOW_REAPER_INTERVAL"):
            load_settings({"SECFLOW_REAPER_INTERVAL": bad})


async def test_worker_process_reaps_at_start(
    client: Client, holders: tuple[str, str], settings: Settings, tmp_path: Path
) -> None:
    queue, prefix = holders
    dead = f"{prefix}-dead"
    await _running(client, queue, dead)
    await client.get_workflow_handle(dead).terminate(reason="test")
    ws = _workspace(settings, dead)
    store = open_store()
    assert store.acquire_locks(["w1"], dead).acquired

    log = tmp_path / "worker.log"
    env = {**os.environ, "SECFLOW_TASK_QUEUE": f"reaper-worker-{uuid.uuid4().hex[:6]}", "SECFLOW_LOG_LEVEL": "INFO"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        await _until(lambda: not ws.exists() or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, log.read_text(errors="replace")
        assert not ws.exists()
        await _until(lambda: store.lock_holders() == set())
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert "reclaimed what stopped assessments left behind" in text and dead in text

    env["SECFLOW_REAPER_INTERVAL"] = "soon"
    bad = subprocess.run([sys.executable, "worker.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "SECFLOW_REAPER_INTERVAL" in bad.stderr


async def _until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
