"""Fault soak: many assessments at once, each with injected faults and an expected end,
while worker processes are SIGKILLed at random and the dev server restarts once.

    .venv/bin/python -m bench.soak [--scenarios 100] [--workers 3] [--kills 50] [--seed 1]
        [--out DIR] [--plots docs]
    .venv/bin/python -m bench.soak --scenarios 10 --kills 2      # smoke, under ~2 minutes

Everything is real and on loopback: a Temporal dev server with SQLite persistence
(tests/devserver.py), `python worker.py` processes on a queue of the soak's own, web
targets, open ports, an OSV stand-in (tests/osv_standin.py; faults on it come from the
spec's `chaos:` section), and scanner wrappers that crash, print garbage or exit 127
(bench/soak_standins.py). The scenario table with each scenario's expected outcome, stage
state, error categories and recovery rungs is bench/soak_scenarios.py; the checks,
figures and plots are bench/soak_report.py.

Workers log JSON lines at DEBUG to one file per worker incarnation; the crash detection
time of a kill is read from them: for every tool attempt the killed worker had started and
not finished, the time from the SIGKILL to the next attempt of the same activity starting
on a worker (the runner logs "tool attempt started" with its attempt number).

Writes DIR/soak.json (everything), DIR/soak.md (the summary) and two PNG plots into
--plots (default docs/): soak-recovery-rate.png and soak-detection-time.png.
Exit status: 0 when every goal is met, 1 when any check failed (the report says which).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STAGE = "scan"
QUIET = 8.0  # seconds without kills around the dev server restart
READY = 5.0  # seconds a new worker gets before it may be killed when none is busy


@dataclass
class Incarnation:
    """One worker process, from its start to its end (killed or stopped)."""

    slot: int
    number: int
    log: Path
    proc: subprocess.Popen[bytes]
    started: float
    killed_at: float | None = None


@dataclass
class Workers:
    queue: str
    env: dict[str, str]
    logdir: Path
    count: int
    all: list[Incarnation] = field(default_factory=list)
    live: dict[int, Incarnation] = field(default_factory=dict)

    def spawn(self, slot: int) -> Incarnation:
        n = len(self.all)
        log = self.logdir / f"worker-{slot}-{n:03d}.log"
        # each incarnation draws its own chaos faults (one seed for all would replay the same
        # faults in every restarted worker)
        seed = f"{self.env.get('SECFLOW_CHAOS_SEED', '0')}{n:03d}"
        env = {**self.env, "SECFLOW_WORKER_ID": f"soak-{slot}-{n}", "SECFLOW_CHAOS_SEED": seed}
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        inc = Incarnation(slot, n, log, proc, time.time())
        self.all.append(inc)
        self.live[slot] = inc
        return inc

    def start(self) -> None:
        for slot in range(self.count):
            self.spawn(slot)

    def busy(self) -> list[int]:
        """Slots whose worker has a tool attempt started and not finished (from its log)."""
        from bench.soak_report import END_EVENTS

        slots = []
        for slot, inc in self.live.items():
            open_attempts: set[tuple[str, str]] = set()
            for line in inc.log.read_text(errors="replace").splitlines():
                if '"tool attempt' not in line and "handing the attempt back" not in line:
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    continue
                key = (f"{doc.get('workflow_id')}/{doc.get('stage')}/{doc.get('target')}", str(doc.get("attempt")))
                if doc.get("event") == "tool attempt started":
                    open_attempts.add(key)
                elif doc.get("event") in END_EVENTS:
                    open_attempts.discard(key)
            if open_attempts:
                slots.append(slot)
        return sorted(slots)

    def kill(self, rng: random.Random) -> Incarnation:
        """SIGKILL a random worker, one that is running a tool attempt when there is one
        (a kill of an idle worker measures nothing), and start its replacement at once."""
        ready = [slot for slot, inc in self.live.items() if time.time() - inc.started > READY]
        slot = rng.choice(self.busy() or ready or sorted(self.live))
        inc = self.live[slot]
        inc.killed_at = time.time()
        inc.proc.send_signal(signal.SIGKILL)
        inc.proc.wait()
        self.spawn(slot)
        return inc

    def stop(self) -> None:
        for inc in self.live.values():
            if inc.proc.poll() is None:
                inc.proc.terminate()
        for inc in self.live.values():
            try:
                inc.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                inc.proc.kill()
                inc.proc.wait()


# ------------------------------------------------------------------------------------------
# building scenarios
# ------------------------------------------------------------------------------------------
class Harness:
    def __init__(self, work: Path, lists_supported: bool) -> None:
        from bench.soak_standins import FaultyWeb
        from tests.osv_standin import OsvStandin

        self.work = work
        self.web = FaultyWeb()
        self.osv = OsvStandin()
        # a client that gave up on a connection (chaos reset, a killed worker) is part of
        # the soak, not a stand-in error worth a traceback on the console
        self.osv.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.ports: list[Any] = []
        self.lists_supported = lists_supported
        self.nominal: dict[str, float] = {}
        self.trees: dict[str, Path] = {}  # a scanner scenario's tree (its wrapper's sidecar)
        self._addresses = iter(f"127.0.{a}.{b}" for a in range(10, 250) for b in range(2, 250))

    def close(self) -> None:
        self.web.close()
        self.osv.close()
        for p in self.ports:
            p.close()

    def build(self, sc: Any) -> tuple[Any, list[list[str]]]:
        """(validated spec, ground truth as [rule_id, location] pairs); sets
        `self.nominal[sid]`, what a clean run takes where the table knows it."""
        from bench import soak_standins as st
        from bench.soak_scenarios import on_failure_value
        from secflow.spec import validate_spec_data
        from tests.flaky_osv import TEN_PINS, vulnerable_and_clean_pins

        kind = sc.kind
        stage: dict[str, Any] = {"id": STAGE, "tool": kind.tool}
        extra = json.loads(json.dumps(kind.stage_extra))
        options = extra.pop("options", {})
        stage.update(extra)
        ladder = on_failure_value(kind.ladder, self.lists_supported)
        if ladder is not None:
            stage["on_failure"] = ladder
        scope: dict[str, Any]
        truth: list[list[str]]
        chaos: dict[str, Any] = {}
        if kind.tool in ("http_headers", "portscan"):
            address = next(self._addresses)
            scope = {"allow": ["127.0.0.0/8"]}
            if kind.tool == "http_headers":
                stage["kind"] = "dast"
                fault = st.WebFault(mode=kind.fault, probability=sc.probability, seed=sc.seed)
                if kind.fault == "storm":
                    fault.first_n = 6
                elif kind.fault == "hang":
                    fault.first_n, fault.seconds = 2, 3.0
                elif kind.fault == "slow":
                    fault.seconds = 3.0
                url = self.web.add(sc.sid, fault, address)
                targets = [{"url": url}]
                scope["deny"] = [self.web.denied_prefix(sc.sid)]
                truth = [[rule, url] for rule in st.WEB_TRUTH]
            else:
                stage["kind"] = "discovery"
                base, width = 20000, 1200  # 30 s at 40 probes/s
                opened = sorted(random.Random(sc.seed).sample(range(base, base + width), 3))
                self.ports.append(st.OpenPorts(address, opened))
                targets = [{"host": address}]
                options = {"ports": f"{base}-{base + width - 1}", "rate": 40, **options}
                self.nominal[sc.sid] = width / 40
                truth = [["open-port", f"{address}:{p}"] for p in opened]
        else:
            tree: Path
            if kind.tool == "sca":
                stage["kind"] = "sca"
                tree = st.sca_tree(self.work, sc.sid, vulnerable_and_clean_pins())
                options = {"batch_size": 2, **options}
                truth = sorted(
                    [rec["id"], f"requirements.txt:{line}"]
                    for line, (name, version) in enumerate(TEN_PINS, start=1)
                    for rec in self.osv.matching(name, version)
                )
                if kind.fault == "hang":
                    chaos = {"osv": [{"fault": "hang", "first_n": 2}]}
                else:
                    fault_entry: dict[str, Any] = {"fault": kind.fault, "probability": sc.probability}
                    if kind.fault == "status":
                        fault_entry["status"] = 503
                    chaos = {"osv": [fault_entry]}
                    if kind.fault == "status":
                        chaos["osv"].append(
                            {"fault": "status", "status": 429, "retry_after": 1, "probability": sc.probability / 2}
                        )
            elif kind.tool == "detect_secrets":
                stage["kind"] = "secrets"
                tree = st.secrets_tree(self.work, sc.sid)
                truth = [list(t) for t in st.SECRETS_TRUTH]
            else:  # bandit, semgrep (whose binary is missing; falls back to bandit)
                stage["kind"] = "sast"
                tree = st.bandit_tree(self.work, sc.sid)
                truth = [list(t) for t in st.BANDIT_TRUTH]
            self.trees[sc.sid] = tree
            if kind.fault == "missing_both":  # semgrep's binary is missing, and its fallback bandit too
                st.plan_tool_fault(tree, mode="missing", probability=1.0)
            if kind.tool in ("bandit", "detect_secrets"):
                if kind.fault == "slow":
                    st.plan_tool_fault(tree, mode="ok", sleep=8)
                elif kind.fault == "garbage":
                    st.plan_tool_fault(tree, mode="garbage", first_n=1)
                elif kind.fault == "missing":
                    st.plan_tool_fault(tree, mode="missing", probability=1.0)
                else:
                    st.plan_tool_fault(tree, mode=kind.fault, probability=sc.probability)
            targets = [{"path": str(tree)}]
            scope = {"allow": [str(tree)]}
        if options:
            stage["options"] = options
        data: dict[str, Any] = {"name": "soak", "scope": scope, "targets": targets, "stages": [stage]}
        if chaos:
            data["chaos"] = chaos
        if not kind.expect.findings:
            truth = []
        return validate_spec_data(data), truth


# ------------------------------------------------------------------------------------------
# driving one scenario
# ------------------------------------------------------------------------------------------
async def _retrying(call: Any, *, until: float) -> Any:
    """A client call that rides through the dev server's restart and a killed worker."""
    from temporalio.client import WorkflowQueryFailedError
    from temporalio.service import RPCError

    while True:
        try:
            return await call()
        except (RPCError, WorkflowQueryFailedError, TimeoutError, ConnectionError):
            if time.monotonic() > until:
                raise
            await asyncio.sleep(1.0)


async def _status(handle: Any, until: float) -> Any:
    from secflow.models import AssessmentStatus

    return await _retrying(lambda: handle.query("status", result_type=AssessmentStatus, rpc_timeout=_td(10)), until=until)


def _td(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


async def drive(
    client: Any, queue: str, harness: Harness, sc: Any, spec: Any, timeout: float, delay: float = 0.0
) -> dict[str, Any]:
    from temporalio.client import WorkflowFailureError

    from secflow.launch import start_assessment
    from secflow.models import AssessmentStatus

    await asyncio.sleep(delay)
    until = time.monotonic() + timeout
    wid = f"soak-{sc.sid}-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    began = time.time()
    handle = await _retrying(
        lambda: start_assessment(client, spec, workflow_id=wid, task_queue=queue, requested_by="soak"), until=until
    )
    human = sc.kind.human
    notes: list[str] = []
    sabotaged = ""
    if human:
        want = "awaiting_intervention" if human in ("retry", "reject") else "awaiting_approval"
        while True:
            st = await _status(handle, until)
            if st.stages.get(STAGE) and st.stages[STAGE].state == want:
                break
            if st.outcome is not None or time.monotonic() > until:
                notes.append(f"never reached {want} (stage {st.stages.get(STAGE) and st.stages[STAGE].state})")
                break
            await asyncio.sleep(0.5)
        else:  # pragma: no cover
            pass
        if not notes:
            await asyncio.sleep(random.Random(sc.seed).uniform(1.0, 3.0))  # a human takes a moment
            if human == "retry":  # someone fixed the target (or the scanner), then says retry
                if sc.sid in harness.web.scenarios:
                    harness.web.scenarios[sc.sid].fixed = True
                else:
                    from bench.soak_standins import plan_tool_fault

                    plan_tool_fault(harness.trees[sc.sid], mode="ok")
            if human == "sabotage_then_approve" and st.workspace and os.path.isdir(st.workspace):
                os.rmdir(st.workspace)
                Path(st.workspace).write_text("not a directory: removing the workspace now fails for real")
                sabotaged = st.workspace
            action = {"retry": "retry_stage", "reject": "reject"}.get(human, "approve")
            await _retrying(lambda: handle.signal(action, {"stage": STAGE, "by": "soak", "reason": "soak bench"}), until=until)

    async def result() -> AssessmentStatus:
        try:
            return await asyncio.wait_for(handle.result(), 30)
        except TimeoutError as exc:
            if time.monotonic() > until:
                raise TimeoutError("scenario timed out") from exc
            raise
        except WorkflowFailureError as err:
            workflow_failed.append(str(err.cause))
            details = getattr(err.cause, "details", None)
            if details:
                return AssessmentStatus.model_validate(details[0])
            notes.append(f"failed without a status: {err.cause}")
            raise

    status: AssessmentStatus | None = None
    workflow_failed: list[str] = []
    try:
        status = await _retrying(result, until=until)
    except Exception as exc:  # recorded as the scenario's failure; the soak goes on
        notes.append(f"no final status: {type(exc).__name__}: {exc}")
    finally:
        if sabotaged and os.path.isfile(sabotaged):
            os.remove(sabotaged)
    return {
        "workflow_id": wid,
        "seconds": round(time.monotonic() - t0, 2),
        "began": began,
        "ended": time.time(),
        "notes": notes,
        "workflow_failed": bool(workflow_failed),
        "failure": workflow_failed[-1][:300] if workflow_failed else "",
        "status": status.model_dump(mode="json") if status else None,
    }


# ------------------------------------------------------------------------------------------
# chaos: kills and the server restart
# ------------------------------------------------------------------------------------------
async def chaos_loop(
    workers: Workers,
    server: Any,
    kills: int,
    gap: tuple[float, float],
    rng: random.Random,
    done: asyncio.Event,
    record: dict[str, Any],
) -> None:
    """SIGKILL a random worker every `gap` seconds (restarting it at once) until `kills`
    are done or the scenarios are; restart the dev server once, half-way, away from any
    kill (QUIET seconds either side), so a kill's detection time is not the restart's."""

    async def pause(seconds: float) -> None:
        try:
            await asyncio.wait_for(done.wait(), seconds)
        except TimeoutError:
            pass

    async def restart() -> None:
        await pause(QUIET)
        t = time.time()
        await asyncio.to_thread(server.restart)
        record["server_restart"] = {"at": t, "seconds": round(time.time() - t, 2)}
        await pause(QUIET)

    await pause(gap[1])  # let the first attempts start
    restart_after = max(1, kills // 2)
    while len(record["kills"]) < kills and not done.is_set():
        inc = await asyncio.to_thread(workers.kill, rng)
        record["kills"].append({"at": inc.killed_at, "slot": inc.slot, "incarnation": inc.number, "log": inc.log.name})
        if record["server_restart"] is None and len(record["kills"]) >= restart_after:
            await restart()
        await pause(rng.uniform(*gap))
    if record["server_restart"] is None and not done.is_set():
        await restart()


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=int, default=100, help="scenarios run concurrently (default 100)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes, 2-4 (default 4)")
    parser.add_argument("--kills", type=int, default=50, help="worker SIGKILLs during the soak (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the scenario mix, faults and kills (default 1)")
    parser.add_argument(
        "--out", type=Path, default=None, help="where soak.json and soak.md go (default bench/results/soak-<time>)"
    )
    parser.add_argument("--plots", type=Path, default=ROOT / "docs", help="where the PNG plots go (default docs/)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one scenario may take (default 900)")
    parser.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="spread the scenarios' starts over this many seconds, so the kills keep finding work "
        "(default: 0 below 20 kills, else half the kill window)",
    )
    parser.add_argument(
        "--kill-gap",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="seconds between kills, drawn uniformly (default 2 4 from 20 kills on, else 3 6)",
    )
    args = parser.parse_args(argv)
    if args.scenarios < 1:
        parser.error("--scenarios: must be at least 1")
    if not 1 <= args.workers <= 8:
        parser.error("--workers: must be 1..8 (the soak is specified for 2-4)")
    if args.kills < 0:
        parser.error("--kills: must be 0 or more")
    return args


async def soak(args: argparse.Namespace) -> int:
    out: Path = args.out or ROOT / "bench" / "results" / f"soak-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="secflow-soak-"))
    data_dir = out / "data"
    os.environ["SECFLOW_DATA_DIR"] = str(data_dir)
    os.environ.pop("SECFLOW_DB_URL", None)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"

    from bench import soak_report
    from bench.soak_scenarios import build_scenarios, ladder_lists_supported
    from bench.soak_standins import write_wrapper
    from secflow.settings import load_settings
    from secflow.temporal_client import connect
    from tests.devserver import DevServer

    rng = random.Random(args.seed)
    scenarios = build_scenarios(args.scenarios, args.seed)
    harness = Harness(work, ladder_lists_supported())
    built = [(sc, *harness.build(sc)) for sc in scenarios]

    server = DevServer(work / "temporal.db", out / "temporal.log")
    server.start()
    queue = f"soak-{uuid.uuid4().hex[:8]}"
    logdir = out / "workers"
    logdir.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": server.address,
        "SECFLOW_TASK_QUEUE": queue,
        "SECFLOW_LOG_LEVEL": "DEBUG",
        "SECFLOW_CHAOS": "1",
        "SECFLOW_CHAOS_SEED": str(args.seed),
        "SECFLOW_OSV_URL": harness.osv.url,
        "SECFLOW_BANDIT": str(write_wrapper(work, "bandit", sys.executable)),
        "SECFLOW_DETECT_SECRETS": str(write_wrapper(work, "detect-secrets", sys.executable)),
        "SECFLOW_SEMGREP": str(work / "no-such-dir" / "semgrep"),  # a missing binary
        "SECFLOW_SHUTDOWN_GRACE": "2s",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ["TEMPORAL_ADDRESS"] = server.address
    workers = Workers(queue, env, logdir, args.workers)
    workers.start()
    record: dict[str, Any] = {"kills": [], "server_restart": None}
    wall0 = time.monotonic()
    started_at = time.time()
    try:
        client = await connect(load_settings({**os.environ, "SECFLOW_TASK_QUEUE": queue}))
        done = asyncio.Event()
        gap = tuple(args.kill_gap) if args.kill_gap else ((2.0, 4.0) if args.kills >= 20 else (3.0, 6.0))
        ramp = args.ramp if args.ramp is not None else (0.0 if args.kills < 20 else args.kills * sum(gap) / 2 / 2)
        record["ramp"], record["gap"] = ramp, gap
        killer = asyncio.create_task(chaos_loop(workers, server, args.kills, gap, rng, done, record))
        delays = [rng.uniform(0, ramp) if ramp else 0.0 for _ in built]
        results = await asyncio.gather(
            *(drive(client, queue, harness, sc, spec, args.timeout, d) for (sc, spec, _), d in zip(built, delays, strict=True))
        )
        done.set()
        await killer
        wall = time.monotonic() - wall0
    finally:
        workers.stop()
        server.stop()
        harness.close()
    rows = []
    for (sc, _, truth), res in zip(built, results, strict=True):
        rows.append({**sc.to_json(), **res, "truth": truth, "nominal_seconds": harness.nominal.get(sc.sid)})
    run = {
        "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
        "args": {"scenarios": args.scenarios, "workers": args.workers, "kills": args.kills, "seed": args.seed},
        "started_at": datetime.fromtimestamp(started_at, UTC).isoformat(),
        "wall_seconds": round(wall, 1),
        "cores": os.cpu_count(),
        "ladder_lists_supported": harness.lists_supported,
        "kills": record["kills"],
        "server_restart": record["server_restart"],
        "ramp_seconds": round(record.get("ramp", 0.0), 1),
        "kill_gap_seconds": list(record["gap"]),
        "worker_logs": [str(i.log.relative_to(out)) for i in workers.all],
        "scenarios": rows,
    }
    (out / "scenarios.json").write_text(json.dumps(run, indent=1))
    report = soak_report.judge_run(out)
    soak_report.write(out, report, args.plots)
    print((out / "soak.md").read_text())
    print(f"\nJSON: {out / 'soak.json'}  plots: {args.plots}")
    return 0 if report["goals_met"] else 1


def main() -> None:
    args = parse_args()
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
