"""Record reference histories of the sharded `Assessment` for the replay test.

    .venv/bin/python -m tests.histories.record_sharded

One assessment whose stage of 150 hosts runs in a `StageTargets` child that continues as
new (small shard budget), followed by a gate that the assessment waits on across its own
continue-as-new (small assessment budget), approved by signal. Every run of the tree is
saved to tests/histories/sharded/ as its own file.

Run this only when adding a NEW reference history; existing files stand for runs already
in production and are never re-recorded to make a change pass.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).parent / "sharded"


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="secflow-record-"))
    os.environ["SECFLOW_DATA_DIR"] = str(tmp / "data")
    from secflow.models import Decision
    from secflow.settings import load_settings
    from secflow.temporal_client import connect
    from tests.devserver import DevServer
    from tests.helpers import final_status, make_spec, start, wait_for
    from tests.servers import closed_port
    from worker import build_worker

    server = DevServer(None, tmp / "server.log")
    server.start()
    os.environ["TEMPORAL_ADDRESS"] = server.address
    queue = f"record-{uuid.uuid4().hex[:6]}"
    settings = load_settings({**os.environ, "SECFLOW_TASK_QUEUE": queue})
    client = await connect(settings)
    try:
        async with build_worker(client, settings):
            hosts = [{"host": f"127.0.1.{i + 1}"} for i in range(150)]
            spec = make_spec(
                hosts,
                [
                    {"id": "sweep", "kind": "discovery", "tool": "portscan",
                     "options": {"ports": str(closed_port()), "targets_per_batch": 50, "targets_in_flight": 25}},
                    {"id": "gate", "kind": "discovery", "tool": "portscan", "options": {"ports": str(closed_port())},
                     "requires_approval": True, "depends_on": ["sweep"]},
                    {"id": "report", "kind": "report", "always": True},
                ],
                scope={"allow": ["127.0.0.0/16"]},
            )
            handle = await start(client, spec, queue, workflow_id="history-sharded-gate", event_budget=40, shard_event_budget=200)
            await wait_for(handle, lambda s: s.awaiting == ["gate"], timeout=120)
            await asyncio.sleep(2)  # let the assessment hand over at the gate
            await handle.signal("approve", Decision(stage="gate", by="recorder"))
            status = await final_status(handle, timeout=120)
            assert status.outcome == "completed", status.reason
            await save_tree(client, handle.id)
    finally:
        server.stop()


async def save_tree(client, root_id: str) -> None:
    HERE.mkdir(exist_ok=True)
    runs = [w async for w in client.list_workflows(f"RootWorkflowId = '{root_id}'")]
    runs.sort(key=lambda w: (w.start_time, w.id))
    for i, execution in enumerate(runs):
        history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
        name = f"{root_id}-{i:02d}-{execution.workflow_type}.json"
        (HERE / name).write_text(json.dumps({"workflow_id": execution.id, "history": json.loads(history.to_json())}, indent=1) + "\n")
        print(f"wrote {HERE / name} ({len(history.events)} events)")


if __name__ == "__main__":
    asyncio.run(main())
