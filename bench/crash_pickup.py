"""Crash pick-up: how long after a worker is SIGKILLed does Temporal notice, and another
worker resume the work? SecFlow's port scan vs a bare Temporal heartbeating activity with
the same heartbeat timeout, measured in the same run on the same dev server.

    .venv/bin/python -m bench.crash_pickup [--trials 5]

"detected" = the server scheduled attempt 2 (the lost attempt's heartbeat timed out);
"resumed"  = attempt 2 is running on the second worker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import PendingActivityState

ROOT = Path(__file__).resolve().parent.parent


def spawn(kind: str, queue: str, env: dict) -> subprocess.Popen:
    if kind == "bare":
        cmd = [sys.executable, "-m", "bench.bare", queue]
    else:
        cmd = [sys.executable, "worker.py"]
        env = {**env, "SECFLOW_TASK_QUEUE": queue}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure(start_workflow, activity_type: str, kind: str, env: dict) -> tuple[float, float]:
    queue = f"{kind}-{uuid.uuid4().hex[:6]}"
    first = spawn(kind, queue, env)
    handle = await start_workflow(queue)
    second = None
    try:
        # wait until the activity is running and has heartbeated
        while True:
            pending = await _pending(handle, activity_type)
            if pending is not None and pending.heartbeat_details.payloads:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
        first.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        first.wait()
        second = spawn(kind, queue, env)
        detected = resumed = None
        while resumed is None and time.monotonic() - killed < 60:
            pending = await _pending(handle, activity_type)
            if pending is not None and pending.attempt >= 2:
                detected = detected or time.monotonic() - killed
                if pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
                    resumed = time.monotonic() - killed
            await asyncio.sleep(0.02)
        desc = await handle.describe()
        if desc.status is not None and desc.status.name == "RUNNING":
            await handle.terminate("benchmark done")
        else:
            print(f"note: {activity_type} workflow ended {desc.status.name if desc.status else '?'} during the trial", file=sys.stderr)
        return detected or float("nan"), resumed or float("nan")
    finally:
        for proc in (first, second):
            if proc and proc.poll() is None:
                proc.kill()
                proc.wait()


async def _pending(handle, activity_type: str):
    desc = await handle.describe()
    for p in desc.raw_description.pending_activities:
        if p.activity_type.name == activity_type:
            return p
    return None


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="secflow-bench-"))
    os.environ["SECFLOW_DATA_DIR"] = str(tmp / "data")
    from secflow.models import AssessmentInput
    from secflow.settings import load_settings
    from secflow.temporal_client import connect
    from tests.devserver import DevServer
    from tests.helpers import make_spec
    from tests.servers import listeners_in_window

    server = DevServer(None, tmp / "server.log")
    server.start()
    env = {**os.environ, "TEMPORAL_ADDRESS": server.address, "SECFLOW_LOG_LEVEL": "WARNING"}
    os.environ["TEMPORAL_ADDRESS"] = server.address
    client = await connect(load_settings())
    base, listeners = listeners_in_window(3000, [10, 2990])

    async def start_secflow(queue: str):
        spec = make_spec([{"host": "127.0.0.1"}], [{"id": "ports", "kind": "discovery", "tool": "portscan",
                         "options": {"ports": f"{base}-{base + 2999}", "rate": 100}}])
        return await client.start_workflow("AssessmentWorkflow", AssessmentInput(spec=spec), id=f"bench-{uuid.uuid4().hex[:8]}",
                                           task_queue=queue)

    async def start_bare(queue: str):
        return await client.start_workflow("BareLongWorkflow", 600, id=f"bare-{uuid.uuid4().hex[:8]}", task_queue=queue)

    results: dict[str, list[tuple[float, float]]] = {"bare Temporal": [], "SecFlow portscan": []}
    try:
        for _ in range(args.trials):
            results["bare Temporal"].append(await measure(start_bare, "bare_long_task", "bare", env))
            results["SecFlow portscan"].append(await measure(start_secflow, "portscan", "secflow", env))
    finally:
        listeners.close()
        server.stop()
    print(f"crash pick-up after SIGKILL, {args.trials} trials each, heartbeat timeout 4 s")
    print(f"{'':<18} {'detected p50':>13} {'detected max':>13} {'resumed p50':>12} {'resumed max':>12}")
    for name, rows in results.items():
        det = [d for d, _ in rows]
        res = [r for _, r in rows]
        print(f"{name:<18} {statistics.median(det):>12.2f}s {max(det):>12.2f}s {statistics.median(res):>11.2f}s {max(res):>11.2f}s")


if __name__ == "__main__":
    asyncio.run(main())
