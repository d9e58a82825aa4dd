"""Soak: concurrent assessments against a degraded OSV, then a dead one (loopback only).

    .venv/bin/python -m bench.degraded_dependency [--assessments 20] [--error-rate 0.3]
        [--outage 60] [--seed 1] [--modes secflow,baseline]

Real assessments (an `sca` stage over 10 pinned packages each, batches of 2: 5 querybatch
POSTs and 6 advisory GETs per assessment) on a real Temporal dev server and an in-process
SecFlow worker; OSV is tests/flaky_osv.py's stand-in on 127.0.0.1, which knows the ground
truth (the 6 findings each assessment must end with).

Two phases per mode, `--assessments` concurrent assessments each:

1. degraded: the stand-in answers 503 to `--error-rate` of requests at random (seeded),
   throughout. Reported: assessments completed, assessments with every finding, stage
   attempts, wall time, requests the stand-in saw and how many it failed, breaker trips.
2. dead: the stand-in answers 503 to every request for `--outage` seconds (counted from
   the first request it sees), then recovers. Reported: requests and TCP connections that
   reached it during the outage, then assessments completed and complete after it, their
   stage attempts, and when the last one finished after the outage ended.

Modes, one after the other in the same run, each with a fresh breaker:
- `secflow`: OSV's settings as shipped (8 jittered tries per request, breaker opening on
  50 % of at least 20 calls in 60 s, 30 s open doubling per failed trial, refusals waited
  out within the attempt);
- `baseline`: the same, but one try per request and a refusal fails the attempt at once
  (what OSV had before: Temporal's retries alone, 5 attempts resuming from the batch
  checkpoint).

No assertions here: figures for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ["SECFLOW_DATA_DIR"] = tempfile.mkdtemp(prefix="secflow-bench-degraded-")
os.environ.setdefault("SECFLOW_LOG_LEVEL", "ERROR")
os.environ.pop("SECFLOW_DB_URL", None)
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_var, None)
for _suffix in ("RATE", "RETRIES", "FAILURES", "MIN_CALLS", "FAILURE_RATE", "FAILURE_WINDOW", "OPEN_TIMEOUT"):
    os.environ.pop(f"SECFLOW_HTTP_OSV_{_suffix}", None)

from secflow.http import breaker_states, register_dependency, reset_http_state  # noqa: E402
from secflow.http import registry as http_registry  # noqa: E402
from secflow.models import AssessmentInput, AssessmentStatus  # noqa: E402
from secflow.spec import validate_spec_data  # noqa: E402
from secflow.store import open_store  # noqa: E402
from tests.devserver import DevServer  # noqa: E402
from tests.flaky_osv import FlakyOsv, vulnerable_and_clean_pins  # noqa: E402


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = [head, *rows]
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def sources(work: Path, n: int) -> list[Path]:
    """One tree per assessment (the same path would queue behind one scan lock)."""
    roots = []
    for i in range(n):
        root = work / f"app-{uuid.uuid4().hex[:6]}-{i}"
        root.mkdir()
        (root / "requirements.txt").write_text(vulnerable_and_clean_pins())
        roots.append(root)
    return roots


async def start(client, queue: str, root: Path):
    spec = validate_spec_data({
        "name": "bench-degraded", "scope": {"allow": [str(root)]}, "targets": [{"path": str(root)}],
        "stages": [{"id": "deps", "kind": "sca", "tool": "sca", "options": {"batch_size": 2}}],
    })
    return await client.start_workflow(
        "AssessmentWorkflow", AssessmentInput(spec=spec, requested_by="bench"), id=f"bench-deg-{uuid.uuid4().hex[:10]}",
        task_queue=queue, result_type=AssessmentStatus,
    )


async def outcome(handle, timeout: float) -> tuple[AssessmentStatus | None, float]:
    """The final status (None if it did not end in time) and when it ended (monotonic)."""
    from temporalio.client import WorkflowFailureError

    try:
        status = await asyncio.wait_for(handle.result(), timeout)
    except WorkflowFailureError as err:
        details = getattr(err.cause, "details", None)
        status = AssessmentStatus.model_validate(details[0]) if details else None
    except TimeoutError:
        return None, time.monotonic()
    return status, time.monotonic()


def judge(handles, results, expected: set[tuple[str, str]]) -> dict:
    store = open_store()
    completed = complete = 0
    attempts: list[int] = []
    for handle, (status, _) in zip(handles, results, strict=True):
        if status is None:
            continue
        completed += status.outcome == "completed"
        got = {(f.rule_id, f.location) for f in store.list_findings(handle.id) if f.tool == "sca"}
        complete += got == expected
        attempts.append(status.stages["deps"].attempts)
    return {"completed": completed, "complete": complete, "attempts": attempts}


def attempts_text(attempts: list[int]) -> str:
    if not attempts:
        return "-"
    counts = {a: attempts.count(a) for a in sorted(set(attempts))}
    return ", ".join(f"{n}x {a}" for a, n in counts.items())


def configure(mode: str, shipped: http_registry.DependencySettings) -> None:
    settings = shipped if mode == "secflow" else shipped.model_copy(update={"retry_attempts": 1, "wait_for_half_open": False})
    register_dependency("osv", settings)
    reset_http_state()  # a fresh breaker and limiter with these settings


async def degraded(client, queue: str, work: Path, n: int, rate: float, seed: int) -> list[str]:
    osv = FlakyOsv(error_rate=rate, seed=seed)
    os.environ["SECFLOW_OSV_URL"] = osv.url
    try:
        started = time.monotonic()
        handles = [await start(client, queue, root) for root in sources(work, n)]
        results = await asyncio.gather(*(outcome(h, 900) for h in handles))
        wall = max(t for _, t in results) - started
        j = judge(handles, results, osv.expected())
        snap = breaker_states().get("osv")
        return [f"{j['completed']}/{n}", f"{j['complete']}/{n}", attempts_text(j["attempts"]), f"{wall:.1f} s",
                f"{len(osv.times)} ({osv.injected} failed)", str(snap.trips if snap else 0)]
    finally:
        osv.close()


async def dead(client, queue: str, work: Path, n: int, outage: float, seed: int) -> list[str]:
    osv = FlakyOsv(error_rate=1.0, seed=seed)
    os.environ["SECFLOW_OSV_URL"] = osv.url
    try:
        handles = [await start(client, queue, root) for root in sources(work, n)]
        while not osv.times:
            await asyncio.sleep(0.01)
        t0 = osv.times[0]
        await asyncio.sleep(max(0.0, t0 + outage - time.monotonic()))
        osv.error_rate = 0.0
        ended = time.monotonic()
        requests, connections = osv.requests_between(t0, t0 + outage), osv.connections_between(t0, t0 + outage)
        snap = breaker_states().get("osv")
        results = await asyncio.gather(*(outcome(h, 1200) for h in handles))
        j = judge(handles, results, osv.expected())
        finished = [t for s, t in results if s is not None and s.outcome == "completed"]
        last = f"{max(finished) - ended:.1f} s" if finished else "-"
        return [f"{requests} / {connections}", str(snap.trips if snap else 0), f"{j['completed']}/{n}", f"{j['complete']}/{n}",
                attempts_text(j["attempts"]), last]
    finally:
        osv.close()


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.degraded_dependency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--assessments", type=int, default=20, help="concurrent assessments per phase (default 20)")
    parser.add_argument("--error-rate", type=float, default=0.3, help="share of OSV requests failed in phase 1 (0.3)")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds OSV is dead in phase 2 (default 60)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the stand-in's random failures")
    parser.add_argument("--modes", default="secflow,baseline", help="secflow, baseline, or both (default both)")
    parser.add_argument("--phases", default="degraded,dead", help="degraded, dead, or both (default both)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if (args.assessments < 1 or not 0 <= args.error_rate <= 1 or args.outage <= 0 or not modes or not phases
            or set(modes) - {"secflow", "baseline"} or set(phases) - {"degraded", "dead"}):
        parser.error("--assessments >= 1, --error-rate in [0, 1], --outage > 0, --modes from secflow/baseline, "
                     "--phases from degraded/dead")
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.getLogger("temporalio").setLevel(logging.ERROR)  # failed attempts are expected here (baseline)

    from secflow.settings import load_settings
    from secflow.temporal_client import connect
    from worker import build_worker

    work = Path(tempfile.mkdtemp(prefix="secflow-bench-degraded-"))
    server = DevServer(None, work / "temporal.log")
    server.start()
    os.environ["TEMPORAL_ADDRESS"] = server.address
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    shipped = http_registry.settings_for("osv")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {args.assessments} concurrent assessments "
          f"x 10 packages; OSV {args.error_rate:.0%} random 503 (seed {args.seed}), then dead for {args.outage:g} s\n")
    rows_degraded: list[list[str]] = []
    rows_dead: list[list[str]] = []
    try:
        settings = load_settings({**os.environ, "SECFLOW_TASK_QUEUE": queue})
        client = await connect(settings)
        async with build_worker(client, settings):
            for mode in modes:
                if "degraded" in phases:
                    configure(mode, shipped)
                    row = await degraded(client, queue, work, args.assessments, args.error_rate, args.seed)
                    rows_degraded.append([mode, *row])
                    print(f"{mode}, {args.error_rate:.0%} 503: " + "; ".join(row), flush=True)
                if "dead" in phases:
                    configure(mode, shipped)
                    row = await dead(client, queue, work, args.assessments, args.outage, args.seed)
                    rows_dead.append([mode, *row])
                    print(f"{mode}, dead {args.outage:g} s: " + "; ".join(row), flush=True)
    finally:
        register_dependency("osv", shipped)
        server.stop()
    if rows_degraded:
        print(f"\nOSV failing {args.error_rate:.0%} of requests at random:")
        print(table(["mode", "completed", "every finding", "stage attempts", "wall", "OSV requests", "breaker trips"],
                    rows_degraded))
    if rows_dead:
        print(f"\nOSV dead for {args.outage:g} s, then back:")
        print(table(["mode", "requests / connections during the outage", "breaker trips", "completed", "every finding",
                     "stage attempts", "last done after the outage"], rows_dead))


if __name__ == "__main__":
    asyncio.run(main())
