"""Long human waits with deadlines, on a time-skipping dev server (an hour passes in seconds)."""

from __future__ import annotations

import os

import pytest
from temporalio.testing import WorkflowEnvironment

from secflow.codec import data_converter_for
from secflow.settings import load_settings
from worker import build_worker
from tests.devserver import SEARCH_ATTRIBUTES, temporal_binary
from tests.helpers import final_status, make_spec, start
from tests.servers import GOOD_HEADERS, Reply, ScriptedServer, closed_port


@pytest.fixture(scope="module")
async def skipping_env():
    args = ["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"]
    for sa in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", sa]
    env = await WorkflowEnvironment.start_time_skipping_v2(
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=args,
        data_converter=data_converter_for(load_settings()),
    )
    yield env
    await env.shutdown()


async def run_on(env: WorkflowEnvironment, spec, task_queue: str):
    settings = load_settings({**os.environ, "SECFLOW_TASK_QUEUE": task_queue})
    async with build_worker(env.client, settings):
        handle = await start(env.client, spec, task_queue)
        return await final_status(handle, timeout=60)


async def test_unanswered_gate_takes_its_default_action_after_an_hour(skipping_env: WorkflowEnvironment, task_queue: str) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        spec = make_spec(
            [{"url": target.url}],
            [{"id": "headers", "kind": "dast", "tool": "http_headers", "requires_approval": True,
              "wait_timeout": "1h", "on_wait_timeout": "reject"}],
        )
        status = await run_on(skipping_env, spec, task_queue)
    finally:
        target.close()
    assert status.outcome == "completed_with_errors"
    assert status.stages["headers"].state == "skipped"
    timeout = [i for i in status.interventions if i.via == "timeout"]
    assert timeout and timeout[0].action == "reject" and timeout[0].by == "deadline"
    assert target.requests == []
    assert (status.finished_at - status.started_at).total_seconds() >= 3600


async def test_unanswered_failure_wait_fails_the_stage_at_its_deadline(skipping_env: WorkflowEnvironment, task_queue: str) -> None:
    spec = make_spec(
        [{"url": f"http://127.0.0.1:{closed_port()}/"}],
        [{"id": "broken", "kind": "dast", "tool": "http_headers", "on_failure": "await_approval",
          "retry": {"max_attempts": 1}, "wait_timeout": "4h", "on_wait_timeout": "fail"}],
    )
    status = await run_on(skipping_env, spec, task_queue)
    assert status.outcome == "failed"
    assert status.stages["broken"].state == "failed"
    assert (status.finished_at - status.started_at).total_seconds() >= 4 * 3600
