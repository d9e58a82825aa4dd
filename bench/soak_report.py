"""The fault soak's checks and figures, computed from what a run left behind (DIR/scenarios.json,
the findings store in DIR/data, the workers' logs in DIR/workers), so they can be computed
again (`judge_run`) after the run, e.g. by tests/test_soak_smoke.py after planting a
duplicate finding to see the check catch it.

Per scenario (`judge_scenario`): the outcome and stage state are among the expected ones,
the error categories in the ledger include the required ones and nothing outside the
allowed ones, the observed recovery rungs likewise, and the findings equal the stand-in's
ground truth (lost = expected but absent; duplicated = one (rule, location) stored more
than once).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

STAGE = "scan"
ALWAYS_ALLOWED_RUNGS = {"retry", "resume"}  # a SIGKILLed worker makes any running stage retry (or resume)
PROBABILITIES = (0.1, 0.2, 0.3, 0.4, 0.5)
DETECTION_GOAL = 5.0


def store_for(out: Path) -> Any:
    from secflow.store import open_store

    return open_store(f"sqlite:///{(out / 'data' / 'secflow.db').resolve()}")


# ------------------------------------------------------------------------------------------
# one scenario
# ------------------------------------------------------------------------------------------
# The ledger's (and the stage's ladder trail's) rung labels, as the table names them.
LEDGER_TO_TABLE = {"human": "await_approval"}


def ledger_pairs(events: Sequence[Any]) -> Counter[str]:
    """`rung:outcome` of each error event as the ledger has it (`-` for none yet)."""
    return Counter(f"{e.rung or '-'}:{e.rung_outcome or '-'}" for e in events)


def observed_rungs(status: dict[str, Any] | None, dead_letters: list[Any], events: Sequence[Any] = ()) -> set[str]:
    """The rungs a scenario went through: the stage's ladder trail and the ledger's rungs,
    plus what only the status shows (a gate's answer or deadline, a failed compensation,
    a security abort)."""
    rungs: set[str] = set()
    if dead_letters:
        rungs.add("dead_letter")
    for e in events:
        if e.rung:
            rungs.add(LEDGER_TO_TABLE.get(e.rung, e.rung))
    if not status:
        return rungs
    stage = status.get("stages", {}).get(STAGE) or {}
    for step in stage.get("ladder") or []:
        rungs.add(LEDGER_TO_TABLE.get(step["rung"], step["rung"]))
    if stage.get("retries", 0) > 0 or stage.get("attempts", 0) > 1:
        rungs.add("retry")
    if stage.get("degraded"):
        rungs.add("fallback")
    if stage.get("state") == "skipped":
        rungs.add("skip")
    if (stage.get("error") or {}).get("category") == "security":
        rungs.add("abort")
    for i in status.get("interventions", []):
        if i.get("via") == "timeout":
            rungs.add("wait_timeout")
        elif i.get("accepted") and i.get("action") in ("approve", "retry_stage", "retry"):
            rungs.add("await_approval")
    if any(c.get("state") == "failed" for c in status.get("compensations", [])):
        rungs.add("compensation_failed")
    return rungs


def findings_check(truth: list[list[str]], stored: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(lost, duplicated): expected (rule, location) pairs not stored; pairs stored twice or more."""
    counts = Counter(stored)
    lost = sorted(f"{r} @ {loc}" for r, loc in truth if (r, loc) not in counts)
    dup = sorted(f"{r} @ {loc} x{n}" for (r, loc), n in counts.items() if n > 1)
    return lost, dup


def judge_scenario(
    row: dict[str, Any],
    stored: list[tuple[str, str]],
    categories: set[str],
    dead_letters: list[Any],
    lost_attempts: int = 0,
    events: Sequence[Any] = (),
    validations: Sequence[Any] = (),
) -> dict[str, Any]:
    exp = row["expect"]
    status = row.get("status")
    problems: list[str] = list(row.get("notes", []))
    stage = (status or {}).get("stages", {}).get(STAGE) or {}
    outcome = (status or {}).get("outcome")
    if row.get("workflow_failed") and outcome != "failed":
        # Temporal ended the run Failed (e.g. a failed compensation is raised for a human)
        # while the status it carries says how the stages went: the run failed.
        outcome = "failed"
    if outcome not in exp["outcomes"]:
        problems.append(f"outcome {outcome}, expected {'|'.join(exp['outcomes'])}")
    if stage.get("state") not in exp["stage_states"]:
        problems.append(f"stage {stage.get('state')}, expected {'|'.join(exp['stage_states'])}")
    missing_cat = set(exp["categories_required"]) - categories
    extra_cat = categories - set(exp["categories_allowed"]) - {"transient"}
    notes_excused = ""
    if missing_cat and lost_attempts:
        # a kill can take the very attempt that met the injected fault (the wrapper's
        # first-run garbage, the storm's first answers): excused, and said so
        notes_excused = f"categories missing {sorted(missing_cat)} excused: {lost_attempts} attempt(s) lost to kills"
    elif missing_cat:
        problems.append(f"categories missing: {sorted(missing_cat)}")
    if extra_cat:
        problems.append(f"unexpected categories: {sorted(extra_cat)}")
    rungs = observed_rungs(status, dead_letters, events)
    pairs = ledger_pairs(events)
    missing_pairs = set(exp.get("ledger_required", [])) - set(pairs)
    if missing_pairs:
        problems.append(f"ledger rung:outcome missing: {sorted(missing_pairs)} (ledger has {sorted(pairs)})")
    validated = sum(1 for v in validations if v.passed)
    unverified = sum(1 for v in validations if not v.passed)
    if unverified:
        bad = "; ".join(p for v in validations if not v.passed for p in v.problems)[:200]
        problems.append(f"recovery validation failed {unverified}x: {bad}")
    elif exp.get("validated") and not validated:
        problems.append("no recovery validation")
    missing_rung = set(exp["rungs_required"]) - rungs
    extra_rung = rungs - set(exp["rungs_allowed"]) - ALWAYS_ALLOWED_RUNGS
    if missing_rung:
        problems.append(f"rungs missing: {sorted(missing_rung)}")
    if extra_rung:
        problems.append(f"unexpected rungs: {sorted(extra_rung)}")
    lost, dup = findings_check(row["truth"], stored)
    unexpected = sorted({f"{r} @ {loc}" for r, loc in stored} - {f"{r} @ {loc}" for r, loc in row["truth"]})
    if lost:
        problems.append(f"{len(lost)} finding(s) lost")
    if dup:
        problems.append(f"{len(dup)} finding(s) duplicated")
    if unexpected and exp["findings"]:
        problems.append(f"{len(unexpected)} finding(s) not in the ground truth")
    cause = ""
    if problems:
        cause = "fault handling"
        if unverified:
            cause = "recovery validation failed"
        elif (stage.get("error") or {}).get("message", "").startswith("no heartbeat") or "exceeded the stage timeout" in (
            (status or {}).get("reason", "")
        ):
            cause = "attempts lost to worker kills"
        elif not status:
            cause = "no final status"
    return {
        "sid": row["sid"],
        "kind": row["kind"],
        "tool": row["tool"],
        "probability": row["probability"],
        "cause": cause,
        "lost_attempts": lost_attempts,
        "excused": notes_excused,
        "workflow_id": row["workflow_id"],
        "outcome": outcome,
        "stage_state": stage.get("state"),
        "categories": sorted(categories),
        "rungs": sorted(rungs),
        "ledger_rungs": dict(sorted(pairs.items())),
        "validated": validated,
        "unverified": unverified,
        "lost": lost,
        "duplicated": dup,
        "unexpected_findings": unexpected if exp["findings"] else [],
        "expected_findings": len(row["truth"]),
        "as_expected": not problems,
        "problems": problems,
        "seconds": row.get("seconds"),
        "human": row.get("human", ""),
    }


# ------------------------------------------------------------------------------------------
# worker logs: crash detection time and lost work
# ------------------------------------------------------------------------------------------
END_EVENTS = {
    "tool attempt succeeded",
    "tool attempt failed",
    "tool attempt cancelled",
    "worker shutting down; handing the attempt back",
}


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_attempts(out: Path, logs: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Per log file: tool attempt lines (start/end) with their activity key and time."""
    per_log: dict[str, list[dict[str, Any]]] = {}
    for name in logs:
        rows: list[dict[str, Any]] = []
        path = out / name
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith("{") or ("tool attempt" not in line and "handing the attempt back" not in line):
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by the SIGKILL
                if "timestamp" not in doc or "attempt" not in doc:
                    continue
                key = (doc.get("workflow_id"), doc.get("stage"), doc.get("target"))
                rows.append(
                    {
                        "event": doc.get("event"),
                        "t": _ts(doc["timestamp"]),
                        "key": key,
                        "attempt": int(doc["attempt"]),
                        "resumed": doc.get("resumed"),
                        "tool": doc.get("tool", ""),
                    }
                )
        per_log[Path(name).name] = rows
    return per_log


def crash_figures(run: dict[str, Any], out: Path) -> dict[str, Any]:
    per_log = read_attempts(out, run["worker_logs"])
    starts = [r for rows in per_log.values() for r in rows if r["event"] == "tool attempt started"]
    ends = [r for rows in per_log.values() for r in rows if r["event"] in END_EVENTS]
    # what a clean run takes, per scenario kind: first attempts that succeeded (else the
    # table's nominal duration, e.g. ports / rate for a port scan)
    kind_of = {row["workflow_id"]: row["kind"] for row in run["scenarios"]}
    nominal = {row["kind"]: row.get("nominal_seconds") for row in run["scenarios"]}
    start_of = {(r["key"], r["attempt"]): r["t"] for r in starts}
    clean: dict[str, list[float]] = defaultdict(list)
    end_of: dict[tuple[Any, int], float] = {}
    for r in ends:
        end_of[(r["key"], r["attempt"])] = r["t"]
        if r["event"] == "tool attempt succeeded" and r["attempt"] == 1 and (r["key"], 1) in start_of:
            clean[kind_of.get(r["key"][0], "?")].append(r["t"] - start_of[(r["key"], 1)])
    tool_of = {r["key"]: r["tool"] for r in starts if r["tool"]}
    detections: list[float] = []
    lost_work: dict[str, list[float]] = defaultdict(list)
    bases: dict[str, list[float]] = defaultdict(list)
    resumed: Counter[str] = Counter()
    not_picked = 0
    lost_attempts = 0
    for kill in run["kills"]:
        rows = per_log.get(kill["log"], [])
        begun = {(r["key"], r["attempt"]): r for r in rows if r["event"] == "tool attempt started" and r["t"] <= kill["at"]}
        finished = {(r["key"], r["attempt"]) for r in rows if r["event"] in END_EVENTS and r["t"] <= kill["at"]}
        for (key, attempt), began in begun.items():
            if (key, attempt) in finished:
                continue
            lost_attempts += 1
            # the next attempt that reached the runner (an attempt handed to a worker that died
            # before logging counts as part of the wait)
            nxt = [s for s in starts if s["key"] == key and s["attempt"] > attempt and s["t"] >= kill["at"]]
            if not nxt:
                not_picked += 1
                continue
            again = min(nxt, key=lambda s: s["t"])
            detections.append(again["t"] - kill["at"])
            tool = tool_of.get(key) or began["tool"] or "?"
            redo_end = end_of.get((key, again["attempt"]))
            kind = kind_of.get(key[0], "?")
            base = statistics.median(clean[kind]) if clean.get(kind) else nominal.get(kind)
            if again.get("resumed"):
                resumed[tool] += 1
            if redo_end is not None and base is not None:
                # time spent on this target beyond a clean run, minus the wait for detection
                lost_work[tool].append(max(0.0, (kill["at"] - began["t"]) + (redo_end - again["t"]) - base))
                bases[tool].append(base)
    return {
        "kills": len(run["kills"]),
        "lost_attempts": lost_attempts,
        "picked_up": len(detections),
        "not_picked_up": not_picked,
        "detection_seconds": sorted(round(d, 3) for d in detections),
        "detection_p50": _pct(detections, 50),
        "detection_p99": _pct(detections, 99),
        "detection_max": round(max(detections), 3) if detections else None,
        "lost_work_per_tool": {
            tool: {
                "crashes": len(v),
                "p50_s": _pct(v, 50),
                "max_s": round(max(v), 2),
                "resumed_from_checkpoint": resumed[tool],
                "clean_run_p50_s": _pct(bases[tool], 50),
            }
            for tool, v in sorted(lost_work.items())
        },
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return round(s[k], 3)


# ------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------
def judge_run(out: Path) -> dict[str, Any]:
    from secflow.dead_letters import list_dead_letters

    run = json.loads((out / "scenarios.json").read_text())
    store = store_for(out)
    judged = []
    ledger_total = ledger_with_outcome = 0
    per_p: dict[float, dict[str, int]] = {
        p: {"scenarios": 0, "recovered": 0, "errors": 0, "errors_recovered": 0} for p in PROBABILITIES
    }
    for row in run["scenarios"]:
        wid = row["workflow_id"]
        stored = [(f.rule_id, f.location) for f in store.list_findings(wid)]
        events = store.list_errors(wid)
        categories = {e.category for e in events}
        stage_error = ((row.get("status") or {}).get("stages", {}).get(STAGE) or {}).get("error") or {}
        if stage_error.get("category"):
            categories.add(stage_error["category"])
        dls = list_dead_letters(store, workflow_id=wid)
        lost_n = sum(1 for e in events if e.message.startswith("attempt ended without reporting back"))
        if (stage_error.get("message") or "").startswith("no heartbeat"):
            lost_n += 1
        validations = store.recovery.validations(assessment_id=wid)
        j = judge_scenario(row, stored, categories, dls, lost_n, events, validations)
        j["errors"] = len(events)
        j["errors_with_outcome"] = sum(1 for e in events if e.outcome)
        j["dead_letters"] = sorted({d.reason for d in dls})
        judged.append(j)
        ledger_total += len(events)
        ledger_with_outcome += j["errors_with_outcome"]
        if row["probability"] in per_p:
            b = per_p[row["probability"]]
            b["scenarios"] += 1
            b["recovered"] += int(j["as_expected"] and not row.get("human") and j["outcome"] == "completed")
            b["errors"] += len(events)
            b["errors_recovered"] += sum(1 for e in events if e.outcome == "recovered")
    crash = crash_figures(run, out)
    rung_counts: Counter[str] = Counter()
    for j in judged:
        rung_counts.update(j["ledger_rungs"])
    n = len(judged)
    edges = sorted(
        [(row["began"], 1) for row in run["scenarios"] if row.get("began")]
        + [(row["ended"], -1) for row in run["scenarios"] if row.get("ended")]
    )
    in_flight = peak = 0
    for _, step in edges:
        in_flight += step
        peak = max(peak, in_flight)
    ok = sum(j["as_expected"] for j in judged)
    lost = sum(len(j["lost"]) for j in judged)
    dup = sum(len(j["duplicated"]) for j in judged)
    recovery = {
        str(p): {
            **b,
            "scenario_rate": round(b["recovered"] / b["scenarios"], 3) if b["scenarios"] else None,
            "error_rate": round(b["errors_recovered"] / b["errors"], 3) if b["errors"] else None,
        }
        for p, b in per_p.items()
    }
    logged = round(ledger_with_outcome / ledger_total, 3) if ledger_total else None
    goals = {
        "scenarios_as_expected": ok == n,
        "no_findings_lost": lost == 0,
        "no_findings_duplicated": dup == 0,
        "detection_p99_under_5s": crash["detection_p99"] is not None and crash["detection_p99"] < DETECTION_GOAL,
        "recovery_actions_logged": logged == 1.0,
        "kills_done": crash["kills"] >= run["args"]["kills"],
    }
    return {
        "command": run["command"],
        "args": run["args"],
        "started_at": run["started_at"],
        "wall_seconds": run["wall_seconds"],
        "cores": run["cores"],
        "ladder_lists_supported": run["ladder_lists_supported"],
        "server_restart": run["server_restart"],
        "ramp_seconds": run.get("ramp_seconds"),
        "kill_gap_seconds": run.get("kill_gap_seconds"),
        "peak_concurrent_scenarios": peak,
        "scenarios": n,
        "as_expected": ok,
        "as_expected_rate": round(ok / n, 3) if n else None,
        "findings_expected": sum(j["expected_findings"] for j in judged),
        "findings_lost": lost,
        "findings_duplicated": dup,
        "recovery_by_probability": recovery,
        "crash": crash,
        "ledger_events": ledger_total,
        "ledger_events_with_outcome": ledger_with_outcome,
        "recovery_actions_logged": logged,
        "ledger_rungs": dict(rung_counts.most_common()),
        "validations": {
            "validated": sum(j["validated"] for j in judged),
            "unverified": sum(j["unverified"] for j in judged),
            "scenarios_validated": sum(1 for j in judged if j["validated"] and not j["unverified"]),
            "scenarios_unverified": sum(1 for j in judged if j["unverified"]),
            "stages_unverified": sum(1 for j in judged if j["stage_state"] == "unverified"),
        },
        "by_kind": _by_kind(judged),
        "goals": goals,
        "goals_met": all(goals.values()),
        "failures": [j for j in judged if not j["as_expected"]],
        "results": judged,
    }


def _by_kind(judged: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"runs": 0, "as_expected": 0})
    for j in judged:
        out[j["kind"]]["runs"] += 1
        out[j["kind"]]["as_expected"] += int(j["as_expected"])
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------
def markdown(r: dict[str, Any]) -> str:
    c = r["crash"]
    lines = [
        f"# Fault soak: `{r['command']}`",
        "",
        f"{r['scenarios']} scenarios (started over {r.get('ramp_seconds')} s, at most {r.get('peak_concurrent_scenarios')} "
        f"in flight at once), {r['args']['workers']} workers, {c['kills']} SIGKILLs (one every {r.get('kill_gap_seconds')} s), "
        f"dev server restarted once ({(r['server_restart'] or {}).get('seconds', '-')} s down), {r['cores']} cores, "
        f"started {r['started_at']}, wall time {r['wall_seconds']} s.",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| scenarios ending as expected | {r['as_expected']}/{r['scenarios']} ({_pc(r['as_expected_rate'])}) | 100 % |",
        f"| findings lost / duplicated (of {r['findings_expected']} expected) | {r['findings_lost']} / {r['findings_duplicated']} | 0 / 0 |",
        f"| crash detection (SIGKILL -> next attempt started), over {c['picked_up']} lost attempts | p50 {c['detection_p50']} s, "
        f"p99 {c['detection_p99']} s, max {c['detection_max']} s | p99 < 5 s |",
        f"| lost attempts never picked up again | {c['not_picked_up']} | 0 |",
        f"| error events in the ledger with an outcome (recovery actions logged) | {r['ledger_events_with_outcome']}/{r['ledger_events']} "
        f"({_pc(r['recovery_actions_logged'])}) | 100 % |",
        f"| recovery validations: validated / unverified (stages left `unverified`) | "
        f"{r['validations']['validated']} / {r['validations']['unverified']} ({r['validations']['stages_unverified']}) | |",
        f"| wall time | {r['wall_seconds']} s | |",
        "",
        "Error events by the rung that handled them last and its outcome (ledger `rung:outcome`, `-` = none): "
        + ", ".join(f"`{k}` {v}" for k, v in r["ledger_rungs"].items())
        + ".",
        "",
        "Automatic recovery by transient fault probability (scenarios with an injected transient fault, no human):",
        "",
        "| probability | scenarios | completed as expected without a human | errors | errors recovered automatically |",
        "|---|---|---|---|---|",
    ]
    for p, b in r["recovery_by_probability"].items():
        lines.append(
            f"| {p} | {b['scenarios']} | {b['recovered']} ({_pc(b['scenario_rate'])}) | {b['errors']} | "
            f"{b['errors_recovered']} ({_pc(b['error_rate'])}) |"
        )
    lines += [
        "",
        "Lost work per crash per tool (time spent on the target beyond a clean run, minus the detection wait):",
        "",
        "| tool | crashes measured | p50 | max | resumed from a checkpoint | clean run p50 |",
        "|---|---|---|---|---|---|",
    ]
    for tool, w in c["lost_work_per_tool"].items():
        lines.append(
            f"| {tool} | {w['crashes']} | {w['p50_s']} s | {w['max_s']} s | {w['resumed_from_checkpoint']} | {w['clean_run_p50_s']} s |"
        )
    causes = Counter(f["cause"] for f in r["failures"])
    if causes:
        lines += ["", "Why scenarios did not end as expected: " + ", ".join(f"{k} {v}" for k, v in causes.most_common()) + "."]
    lines += ["", "Scenarios by kind:", "", "| kind | runs | as expected |", "|---|---|---|"]
    for kind, b in r["by_kind"].items():
        lines.append(f"| {kind} | {b['runs']} | {b['as_expected']} |")
    if r["failures"]:
        lines += ["", "Scenarios not ending as expected:", ""]
        for f in r["failures"]:
            lines.append(
                f"- `{f['sid']}` ({f['workflow_id']}; {f['cause']}; {f['lost_attempts']} attempt(s) lost to kills): "
                f"outcome {f['outcome']}, stage {f['stage_state']}, categories {f['categories']}, rungs {f['rungs']}, "
                f"ledger {f.get('ledger_rungs', {})}: " + "; ".join(f["problems"])
            )
    lines += ["", "Goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in r["goals"].items())]
    return "\n".join(lines) + "\n"


def _pc(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f} %"


def plots(r: dict[str, Any], where: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where.mkdir(parents=True, exist_ok=True)
    made = []
    ps = [float(p) for p in r["recovery_by_probability"]]
    scen = [r["recovery_by_probability"][str(p)]["scenario_rate"] for p in ps]
    errs = [r["recovery_by_probability"][str(p)]["error_rate"] for p in ps]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ps, [s * 100 if s is not None else float("nan") for s in scen], "o-", label="scenarios completed without a human")
    ax.plot(ps, [e * 100 if e is not None else float("nan") for e in errs], "s--", label="ledger errors recovered automatically")
    ax.set_xlabel("transient fault probability per request / tool run")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_xticks(ps)
    ax.set_title("Fault soak: automatic recovery vs fault probability")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = where / "soak-recovery-rate.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    made.append(path)

    det = r["crash"]["detection_seconds"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if det:
        ax.hist(det, bins=min(30, max(5, len(det) // 3)), color="tab:blue", alpha=0.8)
        for q, style in ((50, "-"), (99, "--")):
            v = r["crash"][f"detection_p{q}"]
            ax.axvline(v, color="black", linestyle=style, label=f"p{q} {v} s")
    ax.axvline(DETECTION_GOAL, color="tab:red", linestyle=":", label="goal p99 < 5 s")
    ax.set_xlabel("seconds from SIGKILL to the next attempt starting")
    ax.set_ylabel("lost attempts")
    ax.set_title(f"Crash detection over {r['crash']['kills']} kills ({len(det)} lost attempts)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = where / "soak-detection-time.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    made.append(path)
    return made


def write(out: Path, report: dict[str, Any], plot_dir: Path | None) -> None:
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    (out / "soak.md").write_text(markdown(report))
    if plot_dir is not None:
        plots(report, plot_dir)


if __name__ == "__main__":  # re-judge a finished run: python -m bench.soak_report DIR
    import sys

    target = Path(sys.argv[1])
    os.environ.setdefault("SECFLOW_DATA_DIR", str(target / "data"))
    rep = judge_run(target)
    write(target, rep, None)
    print(markdown(rep))
