"""Shared fixtures: one real Temporal dev server per session, a data dir, in-process workers."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.devserver import DevServer

# Every test process (and the worker subprocesses it starts) uses this session's data dir.
_SESSION_DATA = Path(os.environ.get("SECFLOW_TEST_TMP", "/tmp")) / f"secflow-tests-{uuid.uuid4().hex[:8]}"
_SESSION_DATA.mkdir(parents=True, exist_ok=True)
os.environ["SECFLOW_DATA_DIR"] = str(_SESSION_DATA / "data")
os.environ.pop("SECFLOW_DB_URL", None)
os.environ.setdefault("SECFLOW_SHUTDOWN_GRACE", "2s")
os.environ.setdefault("SECFLOW_LOG_LEVEL", "WARNING")
# Tests never leave loopback; make sure no proxy from the environment is used.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_var, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost"


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DATA


@pytest.fixture(scope="session")
def server(session_dir: Path) -> Iterator[DevServer]:
    srv = DevServer(session_dir / "temporal.db", session_dir / "temporal.log")
    srv.start()
    os.environ["TEMPORAL_ADDRESS"] = srv.address
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
async def client(server: DevServer) -> Client:
    from secflow.settings import load_settings
    from secflow.temporal_client import connect

    return await connect(load_settings())


@pytest.fixture
def task_queue() -> str:
    """A queue of the test's own, so workers of other tests never take its tasks."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def worker(client: Client, task_queue: str) -> AsyncIterator[str]:
    """An in-process SecFlow worker on the test's queue; yields the queue name."""
    from secflow.settings import load_settings
    from worker import build_worker

    settings = load_settings({**os.environ, "SECFLOW_TASK_QUEUE": task_queue})
    async with build_worker(client, settings):
        yield task_queue
