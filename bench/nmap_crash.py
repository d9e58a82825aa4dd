"""Lost work per crash for nmap: seconds of scanning redone after a worker is SIGKILLed
mid-scan, and after the Temporal dev server is restarted mid-scan, with nmap scanning in
one chunk (what nmap did before chunking: the whole port list in one run) and in chunks.

    .venv/bin/python -m bench.nmap_crash [--ports 3000] [--max-rate 50] [--chunk 250] [--trials 1]

Real nmap (Debian), real worker processes (`python worker.py`), a real dev server with a
SQLite file (restarted with the same file), over loopback listeners. Every nmap run goes
through a recording shim first on the workers' PATH (`install_recording_nmap`): it notes
the run's port list, start, end and worker, then runs the real nmap.

"redone" = seconds of nmap runs whose results were not kept: every run's duration minus,
for each port range, the run whose results counted (the last one that finished). Runs of
a SIGKILLed worker are cut at the kill (its orphaned nmap finishing later is not scanning
anyone waits for). Before chunking it is the whole scan so far; with chunks it should be
at most the chunk in flight.

The tests (tests/test_nmap_checkpoint.py) use the same shim and the same accounting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

_SHIM = """#!{python}
# Recording shim for the nmap benchmark and tests: note the run, then run the real nmap.
import json, os, signal, subprocess, sys, time
LOG, REAL = {log!r}, {real!r}
args = sys.argv[1:]
ports = args[args.index("-p") + 1] if "-p" in args else ""
def note(**fields):
    with open(LOG, "a") as f:
        f.write(json.dumps({{"pid": os.getpid(), "worker": os.getppid(), "ports": ports, **fields}}) + "\\n")
note(event="start", at=time.time(), argv=args)
child = subprocess.Popen([REAL, *args])
def stopped(signum, frame):
    note(event="end", at=time.time(), killed=True)
    child.kill()
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stopped)
rc = child.wait()
note(event="end", at=time.time(), rc=rc)
sys.exit(rc)
"""


def install_recording_nmap(directory: Path, real: str | None = None) -> Path:
    """Write `directory/nmap`, a shim that records each run in `directory/nmap-runs.jsonl`."""
    real = real or shutil.which("nmap")
    if real is None:
        raise RuntimeError("nmap is not installed: run `sh scripts/system-deps.sh`")
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "nmap"
    shim.write_text(_SHIM.format(python=sys.executable, log=str(directory / "nmap-runs.jsonl"), real=real))
    shim.chmod(0o755)
    return shim


@dataclass
class NmapRun:
    pid: int
    worker: int
    ports: str
    argv: list[str]
    start: float
    end: float | None = None  # None: killed without a word (SIGKILL)
    finished: bool = False  # exited on its own (any status), not killed

    def duration(self, *, cut_at: float | None = None, now: float | None = None) -> float:
        end = self.end if self.end is not None else (now if now is not None else self.start)
        if cut_at is not None:
            end = min(end, cut_at)
        return max(0.0, end - self.start)


def read_runs(directory: Path) -> list[NmapRun]:
    runs: dict[int, NmapRun] = {}
    path = directory / "nmap-runs.jsonl"
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["event"] == "start":
            runs[row["pid"]] = NmapRun(row["pid"], row["worker"], row["ports"], row["argv"], row["at"])
        elif row["pid"] in runs:
            run = runs[row["pid"]]
            run.end = row["at"]
            run.finished = not row.get("killed", False)
    return sorted(runs.values(), key=lambda r: r.start)


def redone_seconds(runs: list[NmapRun], *, killed_worker: int | None = None, killed_at: float | None = None) -> float:
    """Seconds of nmap runs whose results were not kept (see the module docstring)."""

    def cut(run: NmapRun) -> float | None:
        return killed_at if run.worker == killed_worker else None

    total = sum(r.duration(cut_at=cut(r)) for r in runs)
    kept: dict[str, NmapRun] = {}
    for run in runs:
        lost = run.worker == killed_worker and (killed_at is None or run.end is None or run.end > killed_at)
        if run.finished and not lost:
            kept[run.ports] = run  # the last finished run of a range is the one that counted
    return total - sum(r.duration() for r in kept.values())


def kept_seconds(runs: list[NmapRun], *, killed_worker: int | None = None, killed_at: float | None = None) -> float:
    """Seconds of the runs whose results counted: what the scan costs without a fault."""
    total = sum(r.duration(cut_at=killed_at if r.worker == killed_worker else None) for r in runs)
    return total - redone_seconds(runs, killed_worker=killed_worker, killed_at=killed_at)


def rescanned_ranges(runs: list[NmapRun]) -> dict[str, int]:
    """Port ranges started more than once, with how many times."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.ports] = counts.get(run.ports, 0) + 1
    return {ports: n for ports, n in counts.items() if n > 1}


def nmap_stage(base: int, width: int, *, chunk: int, max_rate: float) -> dict[str, Any]:
    return {
        "id": "ports",
        "kind": "discovery",
        "tool": "nmap",
        "options": {"ports": f"{base}-{base + width - 1}", "timing": 4, "host_timeout": "10m", "chunk_ports": chunk},
        "limits": {"max_rate": max_rate},
        "retry": {"max_attempts": 5, "initial_interval": "200ms"},
    }


class WorkerProcess:
    """`python worker.py` as its own OS process, with the recording nmap first on PATH."""

    def __init__(self, task_queue: str, address: str, log: Path, shim_dir: Path) -> None:
        env = {
            **os.environ,
            "SECFLOW_TASK_QUEUE": task_queue,
            "TEMPORAL_ADDRESS": address,
            "SECFLOW_LOG_LEVEL": "INFO",
            "PATH": f"{shim_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.log = log
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


async def checkpointed_ports(client: Any, handle: Any) -> tuple[int, int]:
    """(attempt, ports below the watermark) of the running nmap, as the server has it."""
    desc = await handle.describe()
    for pending in desc.raw_description.pending_activities:
        if pending.activity_type.name != "nmap":
            continue
        done = 0
        if pending.heartbeat_details.payloads:
            [details] = await client.data_converter.decode(pending.heartbeat_details.payloads[:1])
            done = int(((details or {}).get("nmap") or {}).get("next_index", 0))
        return pending.attempt, done
    return 0, 0


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not reached in {timeout}s")


# ---------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------
async def _trial(fault: str, chunk: int, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    from secflow.settings import load_settings
    from secflow.store import open_store
    from secflow.temporal_client import connect
    from tests.devserver import DevServer
    from tests.helpers import final_status, make_spec, start
    from tests.servers import listeners_in_window

    run_dir = tmp / f"{fault}-{chunk}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir()
    shim_dir = run_dir / "bin"
    install_recording_nmap(shim_dir)
    server = DevServer(run_dir / "temporal.db", run_dir / "server.log")
    server.start()
    settings = load_settings({**os.environ, "TEMPORAL_ADDRESS": server.address})
    offsets = [round(args.ports * f) for f in (0.01, 0.5, 0.99)]
    base, listeners = listeners_in_window(args.ports, offsets)
    queue = f"nmapbench-{uuid.uuid4().hex[:6]}"
    first = WorkerProcess(queue, server.address, run_dir / "worker1.log", shim_dir)
    second: WorkerProcess | None = None
    try:
        client = await connect(settings)
        spec = make_spec([{"host": "127.0.0.1"}], [nmap_stage(base, args.ports, chunk=chunk, max_rate=args.max_rate)])
        handle = await start(client, spec, queue)
        began = time.time()
        # The fault at about --at of the scan, by the clock of a clean scan's rate.
        await asyncio.sleep(args.at * args.ports / args.max_rate)
        fault_at = time.time()
        killed_worker = None
        if fault == "sigkill":
            killed_worker = first.pid
            first.kill()
            second = WorkerProcess(queue, server.address, run_dir / "worker2.log", shim_dir)
        else:
            server.stop()
            await asyncio.sleep(args.outage)
            server.start()
            client = await connect(settings)
            handle = client.get_workflow_handle(handle.id)
        restored = time.time()
        status = await final_status(handle, timeout=30 * 60)
        ended = time.time()
        assert status.outcome == "completed", status.reason
        locations = [f.location for f in open_store().list_findings(handle.id)]
        # Other processes may listen inside the window too: ours must each be there once.
        missing = {f"127.0.0.1:{base + o}" for o in offsets} - set(locations)
        assert not missing and len(locations) == len(set(locations)), f"missing {missing} or duplicated: {locations}"
        runs = read_runs(shim_dir)
        return {
            "redone": redone_seconds(runs, killed_worker=killed_worker, killed_at=fault_at),
            "kept": kept_seconds(runs, killed_worker=killed_worker, killed_at=fault_at),
            "runs": len(runs),
            "rescanned": sum(n - 1 for n in rescanned_ranges(runs).values()),
            "fault_at": fault_at - began,
            "after_fault": ended - restored,
            "attempts": status.stages["ports"].attempts,
        }
    finally:
        listeners.close()
        for worker in (first, second):
            if worker is not None:
                worker.stop()
        server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", type=int, default=3000)
    parser.add_argument("--max-rate", type=float, default=50.0, help="the stage's limits.max_rate (probes/s)")
    parser.add_argument("--chunk", type=int, default=250, help="chunk_ports of the chunked runs")
    parser.add_argument("--at", type=float, default=0.4, help="fault at this fraction of the scan")
    parser.add_argument("--outage", type=float, default=2.0, help="seconds the server stays stopped (plus its stop/start)")
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--faults", default="sigkill,restart")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="secflow-nmapbench-"))
    os.environ["SECFLOW_DATA_DIR"] = str(tmp / "data")
    os.environ.setdefault("SECFLOW_LOG_LEVEL", "WARNING")
    print(
        f"nmap over {args.ports} ports at max_rate {args.max_rate:g}/s, fault at {args.at:.0%} of the scan, "
        f"{args.trials} trial(s) each; heartbeat timeout 4 s"
    )
    print(
        f"{'fault':<9} {'chunk_ports':>14} {'redone s':>9} {'rescanned runs':>15} {'attempts':>9} "
        f"{'fault->done s':>14} {'scan s (kept runs)':>19}"
    )
    for fault in args.faults.split(","):
        for chunk in (args.ports, args.chunk):
            rows = [await _trial(fault, chunk, args, tmp) for _ in range(args.trials)]
            for row in rows:
                label = f"{chunk} (one run)" if chunk >= args.ports else str(chunk)
                print(
                    f"{fault:<9} {label:>14} {row['redone']:>9.1f} {row['rescanned']:>15.0f} "
                    f"{row['attempts']:>9.0f} {row['after_fault']:>14.1f} {row['kept']:>19.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    asyncio.run(main())
