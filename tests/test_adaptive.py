"""Recovery that learns: the record per tool and dependency, `errors stats --strategies`,
and `retry: {adaptive: true}` choosing a stage's plan from it, within the table's bounds.

The pure parts get exact numbers; the rest runs real assessments on the real dev server
against the flaky OSV stand-in (tests/flaky_osv.py, loopback) in a store of the test's
own, so the record holds exactly the runs made here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer

from secflow.adaptive import AdaptiveRequest, adaptive_request, choose_plan
from secflow.error_stats import DeadLetterMark, StrategyStats, compute_strategies, percentile
from secflow.http import reset_http_state
from secflow.retries import (
    ADAPTIVE_BOUNDS,
    RETRY_TABLE,
    Backoff,
    RetryPlan,
    adapt_plan,
    adaptive_bounds,
    expected_wait,
)
from secflow.spec import SpecError
from secflow.store import ErrorEvent, TargetOutcome
from secflow.tools import RetryClass
from tests.flaky_osv import FlakyOsv
from tests.helpers import final_status, make_spec, start
from tests.osv_standin import Fault
from tests.servers import closed_port
from worker import WORKFLOWS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
HTTP = RETRY_TABLE[RetryClass.HTTP_API]


# --- the record (pure) -----------------------------------------------------------------------


def ev(assessment: str, target: str, attempt: int, at: float, *, execution: str = "r1/1", tool: str = "sca",
       dependency: str | None = "osv", outcome: str | None = "recovered", resolved: float | None = None,
       retryable: bool = True) -> ErrorEvent:  # fmt: skip
    return ErrorEvent(
        event_id=f"{execution}/{attempt}", assessment_id=assessment, stage_id="deps", target=target, tool=tool,
        attempt=attempt, category="transient", message="HTTP 503 from osv", retryable=retryable,
        occurred_at=T0 + timedelta(seconds=at), outcome=outcome, dependency=dependency,
        resolved_at=T0 + timedelta(seconds=resolved) if resolved is not None else None,
    )  # fmt: skip


def out(assessment: str, target: str, state: str, attempts: int, tool: str = "sca") -> TargetOutcome:
    return TargetOutcome(assessment_id=assessment, stage_id="deps", target=target, tool=tool, state=state,
                         attempts=attempts, updated_at=T0 + timedelta(hours=1))  # fmt: skip


def test_record_counts_each_strategy_exactly() -> None:
    rows = [
        # a1/t1: attempts 1 and 2 failed, attempt 3 succeeded 6 s after the first error
        ev("a1", "t1", 1, 0), ev("a1", "t1", 2, 2, resolved=6),
        # a1/t2: attempt 1 failed, attempt 2 succeeded 1 s later
        ev("a1", "t2", 1, 10, resolved=11),
        # a2/t1: 5 attempts, retries ran out (retryable): exhausted, needed more than 5
        *[ev("a2", "t1", k, 20 + k, outcome="failed", resolved=40) for k in range(1, 6)],
        # a3/t1: failed on sca, the fallback tool (portscan here) succeeded
        ev("a3", "t1", 1, 50, outcome="degraded", resolved=60),
        # a4/t1: failed on sca, the fallback failed too
        ev("a4", "t1", 1, 70, outcome="degraded", resolved=80),
        # a5/t1: exhausted, parked in the DLQ, then an operator's re-run succeeded at attempt 1
        *[ev("a5", "t1", k, 90 + k, execution="r5/1", resolved=130) for k in range(1, 4)],
        # a6/t1: non-retryable failure: not a retry strategy's failure
        ev("a6", "t1", 1, 140, outcome="failed", retryable=False, resolved=141),
        # a7/t1: still running (no stage result yet): not counted
        ev("a7", "t1", 1, 150, outcome=None),
        # another tool without a dependency
        ev("a8", "src", 1, 160, tool="semgrep", dependency=None, resolved=175),
    ]  # fmt: skip
    outcomes = {
        (o.assessment_id, o.stage_id, o.target): o
        for o in [
            out("a1", "t1", "succeeded", 3),
            out("a1", "t2", "succeeded", 2),
            out("a2", "t1", "failed", 5),
            out("a3", "t1", "succeeded", 1, tool="portscan"),
            out("a4", "t1", "failed", 2, tool="portscan"),
            out("a5", "t1", "succeeded", 1),
            out("a6", "t1", "failed", 1),
            out("a8", "src", "succeeded", 2, tool="semgrep"),
        ]
    }
    marks = [DeadLetterMark(workflow_id="a5", stage_id="deps", target="t1", last_failure_at=T0 + timedelta(seconds=95),
                            state="replayed")]  # fmt: skip

    record = {(s.tool, s.dependency): s for s in compute_strategies(rows, outcomes, marks)}

    assert set(record) == {("sca", "osv"), ("semgrep", "-")}
    sca = record[("sca", "osv")]
    assert sca.retry_recoveries == 2 and sca.success_attempts == {2: 1, 3: 1}
    assert sca.success_attempt_p95 == 3
    assert sca.retries_exhausted == 1
    assert sca.attempts_needed_p95 == 6  # the exhausted run of 5 counts as needing 6
    assert sca.samples == 3
    assert (sca.fallback_tried, sca.fallback_succeeded, sca.fallback_success_rate) == (2, 1, 0.5)
    assert sca.recovered_with_human == 1
    assert sca.time_to_recovery_median_seconds == 1.0 and sca.time_to_recovery_p90_seconds == 6.0
    assert sca.seconds_per_retry_median == 1.0  # 6 s / 2 retries = 3; 1 s / 1 retry = 1 (nearest rank)
    semgrep = record[("semgrep", "-")]
    assert semgrep.success_attempts == {2: 1} and semgrep.time_to_recovery_median_seconds == 15.0


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 95) is None
    assert percentile([5.0], 95) == 5.0
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 95)) == (10.0, 18.0, 19.0)


# --- the choice (pure) -------------------------------------------------------------------------


def stats(p95: int, recoveries: int, ttr: float | None = 15.0, dependency: str = "osv", exhausted: int = 0,
          tool: str = "sca") -> StrategyStats:  # fmt: skip
    return StrategyStats(tool=tool, dependency=dependency, retry_recoveries=recoveries, retries_exhausted=exhausted,
                         attempts_needed_p95=p95, success_attempt_p95=p95, time_to_recovery_median_seconds=ttr)  # fmt: skip


def request(
    min_samples: int = 20, retry_class: RetryClass = RetryClass.HTTP_API, max_attempts: int | None = None
) -> AdaptiveRequest:
    return AdaptiveRequest(assessment_id="a", stage_id="deps", tool="sca", base=RETRY_TABLE[retry_class],
                           bounds=adaptive_bounds(retry_class, max_attempts=max_attempts), min_samples=min_samples)  # fmt: skip


def test_choice_follows_the_record_within_bounds() -> None:
    # p95 success at attempt 5: 6 attempts; its 4 retries' expected full-jitter waits are
    # (1 + 2 + 4 + 8) / 2 = 7.5 initial intervals, spread over a median recovery of 15 s: 2 s
    assert expected_wait(HTTP, 4, 2.0) == 15.0 and expected_wait(HTTP, 4) == 7.5
    choice = choose_plan(request(), [stats(5, 40)])
    assert choice.adapted and choice.plan.max_attempts == 6
    assert choice.plan.initial_interval == timedelta(seconds=2)
    assert (
        choice.reason == "sca/osv: 6 attempts, backoff 2s (p95 success attempt 5 over 40 recoveries, median time to recovery 15s)"
    )
    # the rest of the plan keeps the table's shape
    assert (choice.plan.backoff, choice.plan.backoff_coefficient) == (HTTP.backoff, HTTP.backoff_coefficient)

    # a dependency that recovers at attempt 30 after a day: clamped to 10 attempts and 30 s
    high = choose_plan(request(), [stats(30, 40, ttr=86400.0)])
    assert (high.plan.max_attempts, high.plan.initial_interval) == (10, timedelta(seconds=30))
    assert high.plan.max_interval >= high.plan.initial_interval
    assert "clamped to attempts 2..10, backoff 100ms..30s" in high.reason
    # everything recovers at once: no fewer than 2 attempts, no backoff under 100 ms
    low = choose_plan(request(), [stats(1, 40, ttr=0.001)])
    assert (low.plan.max_attempts, low.plan.initial_interval) == (2, timedelta(milliseconds=100))
    # the spec's own max_attempts is a ceiling
    capped = choose_plan(request(max_attempts=3), [stats(5, 40)])
    assert capped.plan.max_attempts == 3 and "clamped to attempts 2..3" in capped.reason


def test_choice_needs_the_sample_minimum_and_takes_the_worst_ready_dependency() -> None:
    below = choose_plan(request(min_samples=50), [stats(5, 40)])
    assert not below.adapted and below.plan == HTTP
    assert below.reason == "sca: table plan, 5 attempts, backoff 1s (40 samples for sca/osv, adapting needs 50)"
    none = choose_plan(request(), [stats(5, 40, tool="semgrep")])
    assert not none.adapted and "no recoveries recorded" in none.reason
    # osv is ready and needs 4; nvd needs 8 but has too few samples; epss is ready and needs 3
    mixed = [stats(3, 30, dependency="osv"), stats(7, 5, dependency="nvd"), stats(2, 25, dependency="epss", exhausted=5)]
    choice = choose_plan(request(), mixed)
    assert choice.dependency == "osv" and choice.plan.max_attempts == 4 and choice.samples == 30
    # sandbox launches never adapt
    sandbox = choose_plan(request(retry_class=RetryClass.SANDBOX), [stats(5, 40)])
    assert not sandbox.adapted and sandbox.plan.max_attempts == 1


def test_adapt_plan_keeps_no_backoff_plans_without_backoff() -> None:
    never = RetryPlan(max_attempts=1, backoff=Backoff.NONE, initial_interval=timedelta(seconds=1), backoff_coefficient=1.0,
                      max_interval=timedelta(seconds=1))  # fmt: skip
    plan = adapt_plan(never, ADAPTIVE_BOUNDS[RetryClass.HTTP_API], success_attempt_p95=3, recovery_seconds=5.0)
    assert plan.initial_interval == timedelta(seconds=1) and plan.max_attempts == 4


def test_spec_adaptive_field_is_validated() -> None:
    stage = {"id": "deps", "kind": "sca", "tool": "sca", "retry": {"adaptive": True, "min_samples": 5, "max_attempts": 4}}
    spec = make_spec([{"path": "/tmp"}], [stage], scope={"allow": ["/tmp"]})
    ask = adaptive_request("a1", spec.stages[0], "sca")
    assert ask is not None and ask.min_samples == 5 and ask.bounds.max_attempts == 4 and ask.base.max_attempts == 4
    plain = make_spec([{"path": "/tmp"}], [{"id": "deps", "kind": "sca", "tool": "sca"}], scope={"allow": ["/tmp"]})
    assert adaptive_request("a1", plain.stages[0], "sca") is None
    for retry, where in (({"min_samples": 5}, "min_samples is only for adaptive: true"),
                         ({"adaptive": True, "min_samples": 0}, "min_samples"),
                         ({"adaptive": "sometimes"}, "adaptive")):  # fmt: skip
        with pytest.raises(SpecError) as info:
            make_spec(
                [{"path": "/tmp"}], [{"id": "deps", "kind": "sca", "tool": "sca", "retry": retry}], scope={"allow": ["/tmp"]}
            )
        assert "stages[0].retry" in str(info.value) or "stages.0.retry" in str(info.value), str(info.value)
        assert where in str(info.value)


def test_bad_adaptive_spec_exits_2_with_the_field(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: t\nscope: {allow: [/tmp]}\ntargets: [{path: /tmp}]\n"
        "stages: [{id: deps, kind: sca, tool: sca, retry: {min_samples: 3}}]\n"
    )
    done = subprocess.run([sys.executable, "-m", "starter", "validate", str(spec)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "retry" in done.stderr + done.stdout and "Traceback" not in done.stderr


# --- real runs ---------------------------------------------------------------------------------


@pytest.fixture
def own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A store of this test's own (the in-process worker and the CLI read the env per call),
    OSV with one try per request so each 503 fails an attempt, and fresh breakers."""
    monkeypatch.setenv("SECFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SECFLOW_HTTP_OSV_RETRIES", "1")
    reset_http_state()
    yield tmp_path
    reset_http_state()


def sca_stage(retry: dict[str, object]) -> dict[str, object]:
    return {"id": "deps", "kind": "sca", "tool": "sca", "retry": {"initial_interval": "100ms", **retry}}


def app(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir()
    (path / "requirements.txt").write_text("Jinja2==2.10\n")
    return path


async def run(client: Client, worker: str, path: Path, retry: dict[str, object]) -> tuple[WorkflowHandle, object]:
    spec = make_spec([{"path": str(path)}], [sca_stage(retry)], scope={"allow": [str(path)]})
    handle = await start(client, spec, worker)
    return handle, await final_status(handle, timeout=60)


async def scheduled(handle: WorkflowHandle) -> dict[str, list[int]]:
    """Activity type -> the maximum_attempts of each scheduling, from the real history."""
    found: dict[str, list[int]] = {}
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            found.setdefault(attrs.activity_type.name, []).append(attrs.retry_policy.maximum_attempts)
    return found


def strategies_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "starter", "errors", "stats", "--strategies", "--all", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


async def test_record_from_real_runs_drives_the_adaptive_plan(client: Client, worker: str, own_store: Path) -> None:
    osv = FlakyOsv(error_rate=0.0, seed=5)
    os.environ["SECFLOW_OSV_URL"] = osv.url  # restored below; read at call time by the worker
    try:
        # Four assessments against a dependency that fails their first 2, 2, 1 and 2 requests:
        # retries recover them at attempts 3, 3, 2 and 3.
        for i, failures in enumerate((2, 2, 1, 2)):
            osv.faults["querybatch"] = [Fault(503)] * failures
            handle, status = await run(client, worker, app(own_store, f"learn{i}"), {})
            assert status.outcome == "completed", status.reason  # type: ignore[attr-defined]
            assert status.stages["deps"].attempts == failures + 1  # type: ignore[attr-defined]
        assert osv.injected == 0 and not osv.faults["querybatch"]

        done = await asyncio.to_thread(strategies_cli, "--json")
        assert done.returncode == 0, done.stderr
        record = {(s["tool"], s["dependency"]): s for s in json.loads(done.stdout)["strategies"]}
        sca = record[("sca", "osv")]
        assert sca["success_attempts"] == {"2": 1, "3": 3}
        assert (sca["retry_recoveries"], sca["samples"], sca["success_attempt_p95"], sca["retries_exhausted"]) == (4, 4, 3, 0)
        assert sca["fallback_tried"] == 0 and sca["fallback_success_rate"] is None
        assert 0 < sca["time_to_recovery_median_seconds"] <= sca["time_to_recovery_p90_seconds"] < 30
        text = await asyncio.to_thread(strategies_cli)
        assert text.returncode == 0 and "sca/osv" in text.stdout and "2:1 3:3" in text.stdout, text.stdout
        print(text.stdout)

        # adaptive with enough samples: p95 success attempt 3 -> 4 attempts (the table says 5)
        handle, status = await run(client, worker, app(own_store, "adapted"), {"adaptive": True, "min_samples": 4})
        assert status.outcome == "completed", status.reason  # type: ignore[attr-defined]
        note = status.stages["deps"].adaptive  # type: ignore[attr-defined]
        print(note)
        assert note.startswith("sca/osv: 4 attempts, backoff ") and "p95 success attempt 3 over 4 recoveries" in note, note
        plans = await scheduled(handle)
        assert plans["choose_retry_plan"] and plans["sca"] == [4]
        # the choice is in history (behind the adaptive-retries patch): the run replays as it ran
        replayed = await Replayer(workflows=WORKFLOWS, data_converter=client.data_converter).replay_workflow(
            await handle.fetch_history(), raise_on_replay_failure=True
        )
        assert replayed.replay_failure is None

        # the spec's max_attempts bounds it: clamped to 3
        handle, status = await run(client, worker, app(own_store, "capped"),
                                   {"adaptive": True, "min_samples": 4, "max_attempts": 3})  # fmt: skip
        assert (await scheduled(handle))["sca"] == [3]
        assert "clamped to attempts 2..3" in status.stages["deps"].adaptive  # type: ignore[attr-defined]

        # below the sample minimum: the table's plan, and the reason says so
        handle, status = await run(client, worker, app(own_store, "few"), {"adaptive": True, "min_samples": 50})
        assert (await scheduled(handle))["sca"] == [5]
        assert "table plan" in status.stages["deps"].adaptive and "adapting needs 50" in status.stages["deps"].adaptive  # type: ignore[attr-defined]

        # without `adaptive`: nothing changes, no record read
        handle, status = await run(client, worker, app(own_store, "plain"), {})
        plans = await scheduled(handle)
        assert plans["sca"] == [5] and "choose_retry_plan" not in plans
        assert status.stages["deps"].adaptive == ""  # type: ignore[attr-defined]
    finally:
        os.environ.pop("SECFLOW_OSV_URL", None)
        osv.close()


async def test_fallback_success_rate_from_a_real_fallback(
    client: Client, worker: str, own_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nmap cannot be found (PATH holds only this Python): a permanent failure, and the
    # stage's fallback, portscan, finishes the target
    bindir = own_store / "no-nmap-bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bindir))
    assert shutil.which("nmap") is None
    port = closed_port()
    spec = make_spec(
        [{"host": "127.0.0.1"}],
        [{"id": "ports", "kind": "discovery", "tool": "nmap", "on_failure": "fallback", "fallback_tool": "portscan",
          "options": {"ports": str(port)}}],
    )  # fmt: skip
    status = await final_status(await start(client, spec, worker), timeout=60)
    assert status.stages["ports"].state == "partial", status.stages["ports"].reason

    done = await asyncio.to_thread(strategies_cli, "--json")
    assert done.returncode == 0, done.stderr
    record = {(s["tool"], s["dependency"]): s for s in json.loads(done.stdout)["strategies"]}
    nmap = record[("nmap", "-")]
    assert (nmap["fallback_tried"], nmap["fallback_succeeded"], nmap["fallback_success_rate"]) == (1, 1, 1.0)
    assert (nmap["retry_recoveries"], nmap["retries_exhausted"], nmap["samples"]) == (0, 0, 0)  # permanent: no retry strategy
    text = await asyncio.to_thread(strategies_cli)
    assert "1/1 (100.0%)" in text.stdout, text.stdout
