"""Record reference histories of AssessmentWorkflow for the replay test.

    .venv/bin/python -m tests.histories.record

Run this only when adding a NEW reference history. Existing files must never be
re-recorded to make a change pass: they stand for runs already in production. A change
that breaks their replay goes behind `workflow.patched(...)` instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).parent


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="secflow-record-"))
    os.environ["SECFLOW_DATA_DIR"] = str(tmp / "data")
    from secflow.models import AssessmentStatus, Decision
    from secflow.settings import load_settings
    from secflow.temporal_client import connect
    from worker import build_worker
    from tests.devserver import DevServer
    from tests.helpers import final_status, make_spec, start, wait_for
    from tests.servers import GOOD_HEADERS, Listeners, Reply, ScriptedServer

    server = DevServer(None, tmp / "server.log")
    server.start()
    os.environ["TEMPORAL_ADDRESS"] = server.address
    queue = f"record-{uuid.uuid4().hex[:6]}"
    settings = load_settings({**os.environ, "SECFLOW_TASK_QUEUE": queue})
    client = await connect(settings)
    flaky_calls = {"n": 0}

    def flaky(n: int, path: str) -> Reply:
        flaky_calls["n"] += 1
        return Reply(500) if flaky_calls["n"] <= 2 else Reply(200, GOOD_HEADERS)

    web = ScriptedServer([Reply(200, {})])
    flaky_web = ScriptedServer(flaky)
    ports = Listeners(2)
    try:
        async with build_worker(client, settings):
            # 1: a gate approved by signal, a port scan, a fail-then-retry stage, a report
            spec = make_spec(
                [{"host": "127.0.0.1"}, {"url": web.url}, {"url": flaky_web.url}],
                [
                    {"id": "ports", "kind": "discovery", "tool": "portscan",
                     "options": {"ports": ",".join(map(str, ports.ports))}},
                    {"id": "headers", "kind": "dast", "tool": "http_headers", "depends_on": ["ports"],
                     "requires_approval": True, "on_failure": "await_approval",
                     "retry": {"max_attempts": 2, "initial_interval": "100ms"}},
                    {"id": "report", "kind": "report", "always": True},
                ],
            )
            handle = await start(client, spec, queue, workflow_id="history-gate-retry")
            await wait_for(handle, lambda s: s.awaiting == ["headers"])
            await handle.signal("approve", Decision(stage="headers", by="recorder"))
            await wait_for(handle, lambda s: s.awaiting == ["headers"] and s.stages["headers"].state == "awaiting_intervention")
            await handle.execute_update("retry_stage", Decision(stage="headers", by="recorder"), result_type=str)
            await final_status(handle)
            await save(handle, "gate_retry_report.json")

            # 2: an abort while waiting: cancellation, skipped stages and the saga
            spec2 = make_spec(
                [{"url": web.url}],
                [{"id": "gate", "kind": "dast", "tool": "http_headers", "requires_approval": True},
                 {"id": "report", "kind": "report", "always": True}],
            )
            handle2 = await start(client, spec2, queue, workflow_id="history-abort")
            await wait_for(handle2, lambda s: s.awaiting == ["gate"])
            await handle2.signal("abort", Decision(by="recorder", reason="recording"))
            status = await final_status(handle2)
            assert status.outcome == "cancelled"
            await save(handle2, "abort_compensate.json")
    finally:
        web.close()
        flaky_web.close()
        ports.close()
        server.stop()


async def save(handle, name: str) -> None:
    history = await handle.fetch_history()
    (HERE / name).write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
    print(f"wrote {HERE / name}")


if __name__ == "__main__":
    asyncio.run(main())
