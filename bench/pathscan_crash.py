"""Lost work per crash for the path scanners: bandit, semgrep and detect-secrets, each with its
worker SIGKILLed part-way through a scan, scanned whole (one batch: what every crash cost
before file batches) and in file batches (what a crash costs now).

    .venv/bin/python -m bench.pathscan_crash [--files 240] [--lines 400] [--batch 40] [--kill-at 0.6]
                                             [--tools bandit,semgrep,detect-secrets]

Per tool and mode: one uninterrupted run on a worker process (its scan time T), then a
second assessment on the same tree whose worker is SIGKILLed at `kill-at` x T into the scan;
a second worker process finishes it. "lost" = seconds of scanning the kill threw away =
the kill's time minus the end of the last batch the resumed attempt did not scan again
(its `resumed_at_batch`; the attempt's start when it resumed at 0), read from the killed
worker's log. Findings of the crashed run are compared with the uninterrupted run's
(fingerprints missing / stored twice). One in-memory dev server; trees generated in tmp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"bandit": "sast", "semgrep": "sast", "detect-secrets": "secrets"}


class Worker:
    def __init__(self, queue: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "worker.py"], cwd=ROOT, env={**env, "SECFLOW_TASK_QUEUE": queue},
            stdout=open(log, "ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def events(log: Path, workflow_id: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("workflow_id") == workflow_id:
            out.append(record)
    return out


def at(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()


def first(records: list[dict[str, Any]], event: str, **match: Any) -> dict[str, Any]:
    for r in records:
        if r.get("event") == event and all(r.get(k) == v for k, v in match.items()):
            return r
    raise LookupError(f"no {event!r} {match} in the worker log")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=240, help="python files in the generated tree")
    parser.add_argument("--lines", type=int, default=400, help="extra lines of plain code per file")
    parser.add_argument("--batch", type=int, default=40, help="batch_files in the batched mode")
    parser.add_argument("--kill-at", type=float, default=0.6, help="fraction of the uninterrupted scan time")
    parser.add_argument("--tools", default="bandit,semgrep,detect-secrets")
    parser.add_argument("--trials", type=int, default=1, help="crashed runs per tool and mode")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="secflow-bench-pathscan-"))
    os.environ["SECFLOW_DATA_DIR"] = str(tmp / "data")
    from secflow.settings import load_settings
    from secflow.store import open_store
    from secflow.temporal_client import connect
    from tests.devserver import DevServer
    from tests.helpers import final_status, make_spec, start
    from tests.test_pathscan_checkpoint import make_tree

    server = DevServer(None, tmp / "server.log")
    server.start()
    os.environ["TEMPORAL_ADDRESS"] = server.address
    env = {**os.environ, "SECFLOW_LOG_LEVEL": "DEBUG"}
    client = await connect(load_settings())
    tree = make_tree(tmp / "tree", args.files)
    padding = "".join(f"\n\ndef helper_{j}(a, b={j}):\n    total = a + b\n    return [total * k for k in range(3)]\n" for j in range(args.lines // 5))
    for path in tree.rglob("mod_*.py"):
        path.write_text(path.read_text() + padding)
    rows = []

    async def one(tool: str, batch_files: int, queue: str) -> Any:
        spec = make_spec(
            [{"path": str(tree)}],
            [{"id": "scan", "kind": KINDS[tool], "tool": tool, "timeout": "30m",
              "options": {"batch_files": batch_files, "batch_max_bytes": 1_000_000_000},
              "retry": {"max_attempts": 5, "initial_interval": "200ms"}}],
            scope={"allow": [str(tree)]},
        )  # fmt: skip
        return await start(client, spec, queue)

    async def clean_run(tool: str, batch_files: int) -> tuple[Any, float]:
        """An uninterrupted run: its handle and its scan time."""
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        worker = Worker(queue, env, tmp / f"{queue}-clean.log")
        try:
            handle = await one(tool, batch_files, queue)
            status = await final_status(handle, timeout=3600)
            assert status.outcome == "completed", status.reason
            log = events(worker.log, handle.id)
            return handle, at(first(log, f"{tool} finished")) - at(first(log, "tool attempt started"))
        finally:
            worker.kill()

    async def crashed_run(tool: str, mode: str, batch_files: int, clean: Any, scan_time: float, kill_at: float) -> dict[str, Any] | None:
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        w1 = Worker(queue, env, tmp / f"{queue}-1.log")
        w2 = None
        try:
            crashed = await one(tool, batch_files, queue)
            while True:  # attempt 1 running
                records = events(w1.log, crashed.id)
                if any(r.get("event") == "tool attempt started" for r in records):
                    break
                await asyncio.sleep(0.05)
            started = at(first(records, "tool attempt started"))
            await asyncio.sleep(max(0.0, started + kill_at * scan_time - time.time()))
            if any(r.get("event") == f"{tool} finished" for r in events(w1.log, crashed.id)):
                await final_status(crashed, timeout=3600)
                return None
            w1.kill()
            killed = time.time()
            w2 = Worker(queue, env, tmp / f"{queue}-2.log")
            status = await final_status(crashed, timeout=3600)
            assert status.outcome == "completed", status.reason
            if status.stages["scan"].attempts < 2:
                return None
            resumed_at = int(status.stages["scan"].outputs.get("resumed_at_batch", "0"))
            records = events(w1.log, crashed.id)
            kept_until = started if resumed_at == 0 else at(first(records, f"{tool} batch scanned", batch=resumed_at - 1))
            log2 = events(w2.log, crashed.id)
            second_scan = at(first(log2, f"{tool} finished")) - at(first(log2, "tool attempt started"))
            store = open_store()
            want = {f.fingerprint for f in store.list_findings(clean.id) if f.tool == tool}
            got = [f.fingerprint for f in store.list_findings(crashed.id) if f.tool == tool]
            return {
                "tool": tool, "mode": mode, "batches": int(status.stages["scan"].outputs.get("batches", "0")),
                "scan": scan_time, "killed_at": killed - started, "lost": killed - kept_until,
                "resumed_at": resumed_at, "second": second_scan, "findings": len(want),
                "missing": len(want - set(got)), "twice": len(got) - len(set(got)),
            }  # fmt: skip
        finally:
            w1.kill()
            if w2:
                w2.kill()

    try:
        for tool, _ in [(t, n) for t in args.tools.split(",") for n in range(args.trials)]:
            for mode, batch_files in (("whole scan (before)", 5000), (f"batches of {args.batch} (after)", args.batch)):
                clean, scan_time = await clean_run(tool, batch_files)
                kill_at = args.kill_at
                for _ in range(3):  # timings on a shared machine vary: kill earlier if it finished first
                    row = await crashed_run(tool, mode, batch_files, clean, scan_time, kill_at)
                    if row is not None:
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        break
                    print(f"{tool}, {mode}: finished before the kill at {kill_at:.0%}; again, earlier", flush=True)
                    kill_at *= 0.7
    finally:
        server.stop()
    print(f"\nlost work per SIGKILL, {args.files} files of ~{args.lines} lines, killed at {args.kill_at:.0%} of the uninterrupted scan")
    print("scan = uninterrupted run; batch = scan / batches; lost = scanning thrown away by the kill; 2nd = the resumed attempt")
    head = f"{'tool':<15} {'mode':<24} {'batches':>7} {'scan':>7} {'batch':>7} {'killed at':>9} {'lost':>7} {'resumed at':>10} {'2nd':>7} {'findings':>8} {'missing':>7} {'twice':>5}"
    print(head)
    for r in rows:
        print(f"{r['tool']:<15} {r['mode']:<24} {r['batches']:>7} {r['scan']:>6.1f}s {r['scan'] / max(1, r['batches']):>6.1f}s "
              f"{r['killed_at']:>8.1f}s {r['lost']:>6.1f}s {r['resumed_at']:>10} {r['second']:>6.1f}s {r['findings']:>8} "
              f"{r['missing']:>7} {r['twice']:>5}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
