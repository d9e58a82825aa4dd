"""Error analytics: the pure computation with exact numbers, and `errors stats` on real runs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from temporalio.client import Client

from secflow.error_stats import (
    DeadLetterMark,
    compute_stats,
    dependency_of,
    normalise_message,
    parse_since,
)
from secflow.store import ErrorEvent
from tests.helpers import final_status, make_spec, start
from tests.servers import GOOD_HEADERS, Reply, ScriptedServer, closed_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)


def row(event_id: str, assessment: str, stage: str, *, at: float, outcome: str | None = None, resolved: float | None = None,
        category: str = "transient", tool: str = "http_headers", target: str = "http://127.0.0.1:1/",
        message: str = "HTTP 503 from 127.0.0.1:8080", dependency: str | None = None) -> ErrorEvent:
    return ErrorEvent(
        event_id=event_id, assessment_id=assessment, stage_id=stage, target=target, tool=tool, attempt=1,
        retryable=True, category=category, message=message, occurred_at=T0 + timedelta(seconds=at), outcome=outcome,
        resolved_at=T0 + timedelta(seconds=resolved) if resolved is not None else None, dependency=dependency,
    )


def test_compute_stats_exact_figures() -> None:
    rows = [
        # a1: retried by Temporal and recovered: automatic
        row("e1", "a1", "headers", at=0, outcome="recovered", resolved=10),
        row("e2", "a1", "enrich", at=5, outcome="recovered", resolved=35, tool="cve_enrich", target="",
            message="HTTP 503 from 10.0.0.7:443", dependency="nvd"),
        row("e3", "a1", "enrich", at=6, outcome="recovered", resolved=36, tool="cve_enrich", target="",
            message="HTTP 503 from 10.0.0.9:8443", dependency="nvd"),
        # a2: exhausted its retries, parked in the DLQ at t=102, recovered after an operator's retry
        row("e4", "a2", "headers", at=100, outcome="recovered", resolved=200),
        row("e5", "a2", "headers", at=101, outcome="recovered", resolved=200),
        # ... and the re-run's own first attempt failed after the park, then a retry recovered it
        row("e8", "a2", "headers", at=150, outcome="recovered", resolved=200),
        row("e6", "a2", "scan", at=110, outcome="failed", resolved=300, category="permanent", tool="semgrep",
            target="/src", message="semgrep binary 'semgrep' not found"),
        # a3: not resolved yet
        row("e7", "a3", "headers", at=400, category="resource", message="too many open files"),
    ]
    marks = [
        DeadLetterMark(workflow_id="a2", stage_id="headers", target="http://127.0.0.1:1/",
                       last_failure_at=T0 + timedelta(seconds=102), state="replaying"),
        DeadLetterMark(workflow_id="a9", stage_id="x", target="", last_failure_at=T0, state="parked"),
        DeadLetterMark(workflow_id="a8", stage_id="x", target="", last_failure_at=T0, state="parked"),
    ]
    stats = compute_stats(rows, marks, open_incidents=3, until=T0 + timedelta(hours=1), since=T0)

    assert stats.total == 8
    assert stats.by_category == {"transient": 6, "permanent": 1, "resource": 1}
    assert stats.by_tool == {"http_headers": 5, "cve_enrich": 2, "semgrep": 1}
    assert stats.by_dependency == {"-": 6, "nvd": 2}
    assert stats.by_outcome == {"recovered": 6, "failed": 1, "open": 1}
    assert stats.resolved == 7
    assert stats.recovered == 6
    assert stats.recovered_automatically == 4  # e1, e2, e3, e8
    assert stats.recovered_with_human == 2  # e4, e5 (failed before the task was parked)
    assert stats.automatic_recovery_rate == pytest.approx(4 / 7)
    # (10 + 30 + 30 + 100 + 99 + 50) / 6
    assert stats.mean_time_to_recovery_seconds == pytest.approx(319 / 6)
    assert stats.open_incidents == 3
    assert stats.dead_letters == {"parked": 2, "replaying": 1, "replayed": 0}
    top = stats.top_recurring[0]
    assert (top.message, top.category, top.tool, top.count) == ("HTTP <n> from <host>", "transient", "http_headers", 4)
    second = stats.top_recurring[1]
    assert (second.tool, second.count, second.message) == ("cve_enrich", 2, "HTTP <n> from <host>")
    assert second.example == "HTTP 503 from 10.0.0.9:8443"  # the latest real message
    assert len(stats.top_recurring) == 4


def test_compute_stats_empty_and_unknown_incidents() -> None:
    stats = compute_stats([], [], open_incidents=None, until=T0)
    assert (stats.total, stats.resolved, stats.automatic_recovery_rate, stats.mean_time_to_recovery_seconds) == (0, 0, None, None)
    assert stats.open_incidents is None and stats.top_recurring == []


def test_normalise_and_since_and_dependency_attribution() -> None:
    assert normalise_message("attempt 3 of 5: connect to 127.0.0.1:40123 refused") == "attempt <n> of <n>: connect to <host> refused"
    assert normalise_message("scan 'abc' run 0f3a9c1d2e4b5a67 failed") == "scan <value> run <id> failed"
    assert parse_since("24h", T0) == T0 - timedelta(hours=24)
    assert parse_since("90m", T0) == T0 - timedelta(minutes=90)
    for bad in ("", "yesterday", "-1h", "0s", "24x"):
        with pytest.raises(ValueError):
            parse_since(bad, T0)
    # a dependency named on the exception or on the httpx request, found through the chain
    request = httpx.Request("GET", "http://127.0.0.1:1/", extensions={"secflow.dependency": "osv"})
    try:
        try:
            raise httpx.ConnectError("refused", request=request)
        except httpx.ConnectError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert dependency_of(outer) == "osv"
    tagged = TimeoutError("slow")
    tagged.dependency = "nvd"  # type: ignore[attr-defined]
    assert dependency_of(tagged) == "nvd"
    assert dependency_of(ValueError("plain")) is None
    assert dependency_of(httpx.ConnectError("no request attached")) is None


async def stats_json(*args: str) -> dict:
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "starter", "errors", "stats", *args, "--json"], cwd=ROOT,
        env=dict(os.environ), capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def test_errors_stats_counts_real_assessments(client: Client, worker: str) -> None:
    before = await stats_json("--all")
    flaky = ScriptedServer([Reply(503), Reply(200, GOOD_HEADERS)])
    try:
        spec = make_spec(
            [{"url": f"http://127.0.0.1:{closed_port()}/"}, {"url": flaky.url}],
            [{"id": "headers", "kind": "dast", "tool": "http_headers", "criticality": "optional", "on_failure": "skip",
              "retry": {"max_attempts": 2, "initial_interval": "100ms"}}],
        )
        status = await final_status(await start(client, spec, worker))
    finally:
        flaky.close()
    assert status.stages["headers"].state == "skipped"
    after = await stats_json("--since", "1h")
    every = await stats_json("--all")

    def delta(key: str, sub: str) -> int:
        return every[key].get(sub, 0) - before[key].get(sub, 0)

    # 2 failed attempts on the dead port (then skipped), 1 on the flaky server (recovered by attempt 2)
    assert every["total"] - before["total"] == 3
    assert delta("by_tool", "http-headers") == 3
    assert delta("by_category", "transient") == 3
    assert delta("by_dependency", "-") == 3
    assert delta("by_outcome", "recovered") == 1
    assert delta("by_outcome", "skipped") == 2
    assert every["recovered_automatically"] - before["recovered_automatically"] == 1
    assert every["dead_letters"]["parked"] - before["dead_letters"]["parked"] == 1  # the dead port's task
    assert every["mean_time_to_recovery_seconds"] is not None and every["mean_time_to_recovery_seconds"] >= 0
    assert after["total"] >= 3 and after["since"] is not None
    assert isinstance(every["open_incidents"], int), "the dev server answers the visibility query"
    assert any(g["tool"] == "http-headers" and g["category"] == "transient" for g in every["top_recurring"])


async def test_errors_stats_bad_since_exits_2_and_unreachable_temporal_is_reported() -> None:
    for bad in ("yesterday", "0s", "-5m"):
        out = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "starter", "errors", "stats", "--since", bad], cwd=ROOT,
            env=dict(os.environ), capture_output=True, text=True,
        )
        assert out.returncode == 2 and "--since" in out.stderr, (bad, out.stderr)
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "starter", "errors", "stats", "--json"], cwd=ROOT,
        env={**os.environ, "TEMPORAL_ADDRESS": f"127.0.0.1:{closed_port()}"}, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["open_incidents"] is None
    assert "open incidents unknown" in out.stderr
