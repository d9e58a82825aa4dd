"""How long a starter command takes, against `temporal workflow describe` on the same server.

    .venv/bin/python -m bench.starter_latency [--runs 15]

Starts an in-memory dev server and a worker process, runs one small assessment to its end
and leaves a second one waiting at an approval gate, then times, alternating, N runs each
of (wall clock of the whole process, as a user waits for it):

  * `temporal workflow describe -w ID`                 (the Go CLI: the baseline)
  * `.venv/bin/secflow status ID`                      (finished: the stored result)
  * `.venv/bin/python -m starter status ID`            (the same through -m)
  * `.venv/bin/secflow status ID` on the running one   (poller check + `status` query)

and prints the medians (min-max) and the ratio to the baseline (issue 11 goal: at most 5x),
with the floor any Python client pays: `python -c 'import temporalio.client'`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return elapsed


async def prepare(env: dict[str, str], queue: str) -> tuple[str, str]:
    """A finished assessment and one waiting at a gate; their ids."""
    from secflow.settings import load_settings
    from secflow.temporal_client import connect
    from tests.helpers import make_spec, start, wait_for

    client = await connect(load_settings(env))
    stage = {"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": "1"}}
    done = await start(client, make_spec([{"host": "127.0.0.1"}], [stage]), queue, workflow_id=f"bench-done-{uuid.uuid4().hex[:6]}")
    await done.result()
    gated = make_spec([{"host": "127.0.0.1"}], [{**stage, "requires_approval": True}])
    running = await start(client, gated, queue, workflow_id=f"bench-running-{uuid.uuid4().hex[:6]}")
    await wait_for(running, lambda s: s.awaiting == ["ports"])
    return done.id, running.id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (default 15)")
    args = parser.parse_args()

    from tests.devserver import DevServer

    work = Path(tempfile.mkdtemp(prefix="secflow-starter-latency-"))
    server = DevServer(None, work / "temporal.log")
    server.start()
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": server.address,
        "SECFLOW_TASK_QUEUE": queue,
        "SECFLOW_DATA_DIR": str(work / "data"),
        "SECFLOW_LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)  # the spec store this process writes is the one the worker reads
    worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done, running = asyncio.run(prepare(env, queue))
        commands = {
            "temporal workflow describe -w ID": [str(BIN / "temporal"), "workflow", "describe", "-w", done, "--address", server.address],
            "secflow status ID (finished)": [str(BIN / "secflow"), "status", done],
            "python -m starter status ID (finished)": [sys.executable, "-m", "starter", "status", done],
            "secflow status ID (running: poller check + query)": [str(BIN / "secflow"), "status", running],
            # the floor for any Python Temporal client: the interpreter plus the SDK's import
            "floor: python -c 'import temporalio.client'": [sys.executable, "-c", "import temporalio.client"],
        }
        for argv in commands.values():  # warm the page cache once
            timed(argv, env)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                samples[name].append(timed(argv, env))
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        server.stop()

    base = statistics.median(samples["temporal workflow describe -w ID"])
    print(f"{args.runs} runs each, alternating; wall clock of the whole process")
    print(f"{'command':<52} {'median':>8} {'min-max':>15} {'ratio':>6}")
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"{name:<52} {med * 1000:>6.0f}ms {min(values) * 1000:>6.0f}-{max(values) * 1000:<6.0f}ms {med / base:>5.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
