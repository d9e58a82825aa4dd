"""Record the reference history of a recovery ladder walked to its human rung.

    SECFLOW_CODEC=off .venv/bin/python -m tests.histories.record_ladder

Writes ladder_fallback_human.json: on_failure [fallback, await_approval, dead_letter];
the tool fails its retries, the fallback fails, a human retries and the stage recovers;
the recovery is validated. Never re-record it to make a change pass (see record.py).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path

from tests.histories.record import save


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="secflow-record-"))
    os.environ["SECFLOW_DATA_DIR"] = str(tmp / "data")
    os.environ.setdefault("SECFLOW_CODEC", "off")
    from secflow.models import Decision
    from secflow.settings import load_settings
    from secflow.temporal_client import connect
    from tests.devserver import DevServer
    from tests.helpers import final_status, make_spec, start, wait_for
    from tests.servers import Reply, ScriptedServer
    from worker import build_worker

    server = DevServer(None, tmp / "server.log")
    server.start()
    os.environ["TEMPORAL_ADDRESS"] = server.address
    queue = f"record-{uuid.uuid4().hex[:6]}"
    settings = load_settings({**os.environ, "SECFLOW_TASK_QUEUE": queue})
    client = await connect(settings)
    state = {"healthy": False}
    web = ScriptedServer(lambda n, path: Reply(200) if state["healthy"] else Reply(500))
    try:
        async with build_worker(client, settings):
            spec = make_spec(
                [{"url": web.url}],
                [
                    {"id": "headers", "kind": "dast", "tool": "http_headers", "fallback_tool": "http_headers",
                     "on_failure": ["fallback", "await_approval", "dead_letter"],
                     "retry": {"max_attempts": 2, "initial_interval": "100ms"}},
                    {"id": "report", "kind": "report", "always": True},
                ],
            )
            handle = await start(client, spec, queue, workflow_id="history-ladder")
            await wait_for(handle, lambda s: s.awaiting == ["headers"], timeout=120)
            state["healthy"] = True
            await handle.execute_update("retry_stage", Decision(stage="headers", by="recorder"), result_type=str)
            status = await final_status(handle)
            assert [(s.rung, s.outcome) for s in status.stages["headers"].ladder] == [
                ("retry", "failed"), ("fallback", "failed"), ("human", "recovered"),
            ], status.stages["headers"].ladder
            assert status.stages["headers"].validation is not None
            await save(handle, "ladder_fallback_human.json")
    finally:
        web.close()
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
