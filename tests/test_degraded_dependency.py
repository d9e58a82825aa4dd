"""Riding through a degraded dependency, in real assessments on the real dev server.

The OSV stand-in (tests/flaky_osv.py, loopback) answers 503 to a seeded random share of
requests. With OSV's defaults (8 jittered tries per request, a breaker that opens on 50 %
of at least 20 calls in 60 s):

- at 30 % errors, several concurrent assessments of an `sca` stage over 10 pinned
  packages all complete, each with every finding the stand-in's data implies, in one
  attempt (the transport's retries absorbed the failures);
- a dead dependency (100 % 503) gets a trickle: the breaker opens after its minimum
  number of calls, and then only half-open trials reach it; the activities wait for those
  trials inside their attempts (heartbeating), so an outage longer than the stage's retry
  budget would cover costs no attempt, and when the dependency comes back every
  assessment completes.

Only the open timeout is shortened (seconds instead of 30 s) to keep the tests short;
figures at full scale are bench/degraded_dependency.py's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from secflow.http import breaker_states, reset_http_state, settings_for
from secflow.store import open_store
from tests.flaky_osv import FlakyOsv, vulnerable_and_clean_pins
from tests.helpers import final_status, make_spec, start, status_of


def apps(tmp_path: Path, n: int) -> list[Path]:
    """`n` source trees pinning the same ten packages (one per assessment: assessments of
    the same path would queue behind each other's scan lock instead of running together)."""
    roots = []
    for i in range(n):
        root = tmp_path / f"app{i}"
        root.mkdir()
        (root / "requirements.txt").write_text(vulnerable_and_clean_pins())
        roots.append(root)
    return roots


@pytest.fixture
def fresh_osv(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FlakyOsv]]:
    """OSV's own settings (only the open timeout shortened), a fresh breaker before and after."""
    for suffix in ("RETRIES", "FAILURES", "MIN_CALLS", "FAILURE_RATE", "FAILURE_WINDOW"):
        monkeypatch.delenv(f"SECFLOW_HTTP_OSV_{suffix}", raising=False)
    monkeypatch.setenv("SECFLOW_HTTP_OSV_OPEN_TIMEOUT", "0.5")
    reset_http_state()
    servers: list[FlakyOsv] = []
    yield servers
    for server in servers:
        server.close()
    reset_http_state()


def serve(servers: list[FlakyOsv], monkeypatch: pytest.MonkeyPatch, **kwargs: object) -> FlakyOsv:
    server = FlakyOsv(**kwargs)  # type: ignore[arg-type]
    servers.append(server)
    monkeypatch.setenv("SECFLOW_OSV_URL", server.url)  # read at call time by the in-process worker
    return server


def sca_spec(root: Path, *, max_attempts: int = 5):
    # batches of 2 pins: 5 querybatch POSTs + 6 advisory GETs per assessment
    stage = {"id": "deps", "kind": "sca", "tool": "sca", "options": {"batch_size": 2},
             "retry": {"initial_interval": "100ms", "max_attempts": max_attempts}}
    return make_spec([{"path": str(root)}], [stage], scope={"allow": [str(root)]})


def findings_of(assessment_id: str) -> set[tuple[str, str]]:
    return {(f.rule_id, f.location) for f in open_store().list_findings(assessment_id) if f.tool == "sca"}


async def test_thirty_percent_503_every_assessment_completes_with_every_finding(
    client: Client, worker: str, tmp_path: Path, fresh_osv: list[FlakyOsv], monkeypatch: pytest.MonkeyPatch
) -> None:
    osv = serve(fresh_osv, monkeypatch, error_rate=0.3, seed=12)
    settings = settings_for("osv")
    assert (settings.failure_rate, settings.minimum_calls, settings.retry_attempts) == (0.5, 20, 8)
    expected = osv.expected()
    assert len(expected) == 6

    handles = [await start(client, sca_spec(app), worker) for app in apps(tmp_path, 6)]
    statuses = await asyncio.gather(*(final_status(h, timeout=90) for h in handles))

    assert [s.outcome for s in statuses] == ["completed"] * len(handles), [s.reason for s in statuses]
    for handle, status in zip(handles, statuses, strict=True):
        assert findings_of(handle.id) == expected
        assert status.stages["deps"].findings == len(expected)
    # The failures were real and many, and the transport's retries absorbed them: the
    # stages' first attempts finished (8 failed tries in a row, 0.3^8 per request, would
    # cost one more attempt, resuming from the batch checkpoint).
    total = len(osv.times)
    assert osv.injected >= 0.2 * total and total >= len(handles) * 11, (osv.injected, total)
    attempts = [s.stages["deps"].attempts for s in statuses]
    assert sum(attempts) <= len(handles) + 1, attempts


async def test_dead_dependency_gets_a_trickle_and_attempts_wait_for_the_trial(
    client: Client, worker: str, tmp_path: Path, fresh_osv: list[FlakyOsv], monkeypatch: pytest.MonkeyPatch
) -> None:
    osv = serve(fresh_osv, monkeypatch, error_rate=1.0, seed=3)
    callers = 8
    # Two attempts per stage: failing an attempt per refusal (or per failed trial), as
    # before, would have failed every stage during this outage.
    handles = [await start(client, sca_spec(app, max_attempts=2), worker) for app in apps(tmp_path, callers)]

    # The dead window: from the first request the dependency sees, a fixed 6 s.
    deadline = time.monotonic() + 30
    while not osv.times and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert osv.times, "no request reached the stand-in"
    window_start = osv.times[0]
    window = 6.0
    await asyncio.sleep(window_start + window - time.monotonic())
    during = osv.requests_between(window_start, window_start + window)
    snap = breaker_states()["osv"]
    mid = [await status_of(h) for h in handles]
    osv.error_rate = 0.0  # the dependency comes back

    statuses = await asyncio.gather(*(final_status(h, timeout=60) for h in handles))
    assert [s.outcome for s in statuses] == ["completed"] * callers, [s.reason for s in statuses]
    expected = osv.expected()
    assert all(findings_of(h.id) == expected for h in handles)

    # The trickle: the minimum number of calls that opened the breaker, the requests that
    # were already in flight then (one per assessment), and one half-open trial per open
    # period (0.5 s doubling: at most 4 in 6 s). Without the breaker each of the 8
    # callers' 8 tries and the stage's retries would have kept arriving all along.
    trials = 4
    bound = settings_for("osv").minimum_calls + callers + trials
    assert during <= bound, f"{during} requests reached the dead dependency in {window:g}s (bound {bound})"
    assert snap.state.value in ("open", "half_open") and snap.trips >= 2, snap
    # While it was dead, the stages were waiting inside their first attempts.
    assert all(m.stages["deps"].state == "running" for m in mid), [m.stages["deps"].state for m in mid]
    assert max(s.stages["deps"].attempts for s in statuses) <= 2
    print(f"dead OSV: {during} requests, {osv.connections_between(window_start, window_start + window)} connections "
          f"in {window:g}s; breaker trips {snap.trips}; attempts {[s.stages['deps'].attempts for s in statuses]}")
