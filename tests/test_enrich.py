"""`cve-enrich` in a real workflow: sca finds CVEs (OSV stand-in), enrichment reads the
NVD / EPSS / KEV stand-ins, with cache, stale fallback and degradation; resume from a
checkpoint, the NVD API key, malformed bodies, a breaker opening and recovering through
half-open, a 429 storm, and proof that nothing leaves loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from temporalio.client import Client

from secflow.findings import Finding, Severity
from secflow.http import DependencySettings, breaker_for, register_dependency, reset_http_state, settings_for
from secflow.http import registry as http_registry
from secflow.logging import configure_logging, reset_logging
from secflow.reports import render_markdown
from secflow.store import open_store
from tests.enrich_standins import FIXTURES, EpssStandin, Fault, KevStandin, NvdStandin
from tests.helpers import final_status, make_spec, start
from tests.osv_standin import OsvStandin
from tests.devserver import DevServer
from tests.test_durability import WorkerProcess
from tests.test_reports import validate_sarif

CVES = {"CVE-2019-10906", "CVE-2020-28493", "CVE-2019-11324"}
#: Every CVE the NVD fixture knows (tests that need more than sca finds seed these).
ALL_CVES = sorted(v["cve"]["id"] for v in json.loads((FIXTURES / "nvd.json").read_text())["vulnerabilities"])


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    (root / "requirements.txt").write_text("Jinja2==2.10\nurllib3==1.24.1\n")
    return root


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch):
    reset_http_state()
    monkeypatch.setenv("SECFLOW_HTTP_NVD_RETRIES", "1")  # 503s: no in-transport retries, keep tests fast
    monkeypatch.delenv("SECFLOW_NVD_API_KEY", raising=False)
    store = open_store()
    for cve in ALL_CVES:
        store.forget_enrichment(cve)
    saved = {dep: http_registry._REGISTRY.get(dep) for dep in ("nvd", "epss", "kev")}
    yield
    for dep, row in saved.items():  # tests may shrink a dependency's settings
        if row is None:
            http_registry.unregister_dependency(dep)
        else:
            register_dependency(dep, row)
    reset_http_state()


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch):
    servers: list = []

    def make(nvd: NvdStandin | None = None, epss: EpssStandin | None = None) -> tuple[NvdStandin, EpssStandin, KevStandin]:
        osv, kev = OsvStandin(), KevStandin()
        nvd, epss = nvd or NvdStandin(), epss or EpssStandin()
        servers.extend([osv, nvd, epss, kev])
        monkeypatch.setenv("SECFLOW_OSV_URL", osv.url)
        monkeypatch.setenv("SECFLOW_NVD_URL", nvd.url)
        monkeypatch.setenv("SECFLOW_EPSS_URL", epss.url)
        monkeypatch.setenv("SECFLOW_KEV_URL", kev.feed_url)
        return nvd, epss, kev

    yield make
    for server in servers:
        server.close()


def enrich_spec(root: Path, **enrich: object):
    stages = [
        {"id": "deps", "kind": "sca", "tool": "sca", "retry": {"initial_interval": "100ms"}},
        {"id": "enrich", "kind": "enrich", "tool": "cve-enrich", "depends_on": ["deps"],
         "retry": {"initial_interval": "100ms"}, **enrich},
    ]
    return make_spec([{"path": str(root)}], stages, scope={"allow": [str(root)]})


def _enrichment(assessment_id: str) -> dict[str, list[dict]]:
    store = open_store()
    out = {}
    for f in store.list_findings(assessment_id):
        raw = store.get_finding_enrichment(assessment_id, f.fingerprint)
        out[f.rule_id] = json.loads(raw)["cves"] if raw else []
    return out


async def test_findings_are_enriched(client: Client, worker: str, app: Path, services) -> None:
    nvd, epss, kev = services()
    handle = await start(client, enrich_spec(app), worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    st = status.stages["enrich"]
    assert st.outputs["enriched"] == "3" and st.outputs["partial"] == "0" and st.outputs["stale"] == "0"
    assert not st.degraded
    by_rule = _enrichment(handle.id)
    assert by_rule and all(by_rule.values())
    entries = {e["cve_id"]: e for es in by_rule.values() for e in es}
    assert set(entries) == CVES
    assert entries["CVE-2019-10906"]["nvd"]["cvss3_score"] is not None
    assert all(not e["partial"] and e["status"] == "enriched" for e in entries.values())
    assert any(e["epss"] is not None for e in entries.values())
    assert nvd.throttled == []
    assert len(nvd.requests) == 3 and len(epss.requests) == 1 and len(kev.requests) == 1
    for server in (nvd, epss, kev):
        assert all(r.headers.get("Host", "").startswith("127.0.0.1") for r in server.requests)
    assert open_store().get_enrichment("CVE-2019-10906") is not None

    # A second run within max_age uses the cache: no request at all.
    reset_http_state()
    handle2 = await start(client, enrich_spec(app), worker)
    status2 = await final_status(handle2)
    assert status2.outcome == "completed", status2.reason
    assert len(nvd.requests) == 3 and len(epss.requests) == 1


async def test_nvd_down_without_cache_degrades(client: Client, worker: str, app: Path, services) -> None:
    nvd, _, _ = services(NvdStandin(faults=[Fault(503)] * 50))
    handle = await start(client, enrich_spec(app), worker)
    status = await final_status(handle)
    assert status.outcome == "completed_with_errors", status.reason
    st = status.stages["enrich"]
    assert st.state == "succeeded" and st.degraded and "partial" in st.reason
    # Retried first (the outage may clear), degraded only on the stage's last attempt.
    assert st.attempts == 3
    assert st.outputs["partial"] == "3" and st.outputs["enriched"] == "0"
    entries = [e for es in _enrichment(handle.id).values() for e in es]
    assert entries and all(e["partial"] and "NVD unavailable" in e["partial_reason"] for e in entries)
    assert all(e["nvd"] is None for e in entries)
    # NVD's rate budget is not spent on a service that is down: one request per attempt.
    assert len(nvd.requests) == 3
    errors = open_store().list_errors(handle.id)
    assert [(e.category, e.outcome) for e in errors if e.stage_id == "enrich"] == [("transient", "degraded")] * 2, \
        "lived with, not recovered from"
    assert open_store().get_enrichment("CVE-2019-10906") is None  # partial data is not cached


async def test_nvd_down_with_stale_cache_uses_it(client: Client, worker: str, app: Path, services) -> None:
    old = datetime.now(timezone.utc) - timedelta(days=3)
    cached = {"cve_id": "CVE-2019-10906", "nvd": {"cve_id": "CVE-2019-10906", "cvss3_score": 8.6}, "epss": None,
              "kev": None, "fetched_at": old.isoformat(), "partial": False, "partial_reason": ""}
    open_store().put_enrichment("CVE-2019-10906", json.dumps(cached), old)
    services(NvdStandin(faults=[Fault(503)] * 50))
    handle = await start(client, enrich_spec(app), worker)
    status = await final_status(handle)
    st = status.stages["enrich"]
    assert st.outputs["stale"] == "1" and st.outputs["partial"] == "2"
    assert "(72.0 h old)" in st.outputs["stale_note"]
    entries = {e["cve_id"]: e for es in _enrichment(handle.id).values() for e in es}
    stale = entries["CVE-2019-10906"]
    assert stale["stale"] is True and stale["status"] == "stale" and stale["nvd"]["cvss3_score"] == 8.6
    assert "h old" in stale["stale_reason"] and "NVD unavailable" in stale["stale_reason"]
    assert status.outcome == "completed_with_errors"
    # What reports see: typed, and saying how stale and why.
    findings = open_store().list_findings(handle.id)
    by_cve = {c.cve_id: c for f in findings if f.enrichment for c in f.enrichment.cves}
    assert by_cve["CVE-2019-10906"].stale and abs(by_cve["CVE-2019-10906"].stale_age_seconds - 72 * 3600) < 600
    assert by_cve["CVE-2019-10906"].cvss3_score == 8.6
    assert all(by_cve[c].partial for c in CVES - {"CVE-2019-10906"})
    md = render_markdown(status, findings, [])
    assert "1 STALE" in md and "oldest 72.0 h (3.0 days) old" in md and "2 PARTIAL" in md
    assert "72.0 h (3.0 days) old when used, because NVD unavailable: HTTP 503" in md


async def test_nvd_401_is_permanent(client: Client, worker: str, app: Path, services) -> None:
    nvd, _, _ = services(NvdStandin(faults=[Fault(401)] * 10))
    handle = await start(client, enrich_spec(app, on_failure="skip", criticality="optional"), worker)
    status = await final_status(handle)
    assert status.outcome == "completed_with_errors", status.reason
    st = status.stages["enrich"]
    assert st.state == "skipped"
    assert st.attempts == 1
    assert "permanent" in st.reason
    assert len(nvd.requests) == 1


# --------------------------------------------------------------------------------------
# helpers for the tests below
# --------------------------------------------------------------------------------------
def seed_findings(root: Path, cves: list[str]) -> str:
    """An assessment id whose findings reference `cves` (sca's OSV data only has three)."""
    workflow_id = f"t-{uuid.uuid4().hex[:10]}"
    findings = [
        Finding.new(tool="sca", rule_id=f"OSV-{cve}", title=f"vulnerable dependency ({cve})", severity=Severity.HIGH,
                    target=str(root), location=f"requirements.txt:{i + 1}", cve=[cve], assessment_id=workflow_id)
        for i, cve in enumerate(cves)
    ]
    open_store().upsert_findings(workflow_id, "seed", findings)
    return workflow_id


def enrich_only_spec(root: Path, max_attempts: int = 3, *extra_stages: dict):
    stages = [{"id": "enrich", "kind": "enrich", "tool": "cve-enrich",
               "retry": {"max_attempts": max_attempts, "initial_interval": "100ms"}}, *extra_stages]
    return make_spec([{"path": str(root)}], stages, scope={"allow": [str(root)]})


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Everything the (in-process) worker logs, as JSON lines, at DEBUG."""
    root = logging.getLogger()
    old_level, buf = root.level, io.StringIO()
    configure_logging("DEBUG", stream=buf)
    try:
        yield buf
    finally:
        reset_logging()
        root.setLevel(old_level)


def log_events(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]


async def checkpointed(client: Client, handle) -> int:
    """CVEs done in the running cve-enrich attempt's last heartbeat, as Temporal has it."""
    desc = await handle.describe()
    for pending in desc.raw_description.pending_activities:
        if pending.activity_type.name == "cve-enrich" and pending.heartbeat_details.payloads:
            [details] = await client.data_converter.decode(pending.heartbeat_details.payloads[:1])
            return int((details or {}).get("progress", {}).get("done", 0))
    return 0


def nvd_per_cve(nvd: NvdStandin) -> Counter:
    return Counter(r.query["cveId"][0] for r in nvd.requests)


def small_nvd(**changes: object) -> DependencySettings:
    """NVD's row with a ~1 s window instead of 30 s (same shape: N per rolling window).

    The client's window is a little longer than the stand-in's 1 s: the limiter books
    send times, the stand-in counts arrival times, and the first request of a connection
    arrives later (connect) than the keep-alive ones after it.
    """
    base = http_registry._REGISTRY["nvd"].model_dump()
    return DependencySettings.model_validate({**base, "window_seconds": 1.2, **changes})


# --------------------------------------------------------------------------------------
# resume from the heartbeat checkpoint
# --------------------------------------------------------------------------------------
async def test_second_attempt_resumes_without_refetching(client: Client, worker: str, tmp_path: Path, services) -> None:
    cves = ALL_CVES[:8]
    register_dependency("nvd", small_nvd())
    # NVD answers five CVEs, then fails for real (503; no retry inside the transport).
    nvd, epss, _ = services(NvdStandin([Fault.passthrough()] * 5 + [Fault(503)], window_s=1.0))
    workflow_id = seed_findings(tmp_path, cves)
    with captured_logs() as logs:
        handle = await start(client, enrich_only_spec(tmp_path), worker, workflow_id=workflow_id)
        status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    st = status.stages["enrich"]
    assert st.attempts == 2 and st.outputs["enriched"] == "8" and not st.degraded
    # Attempt 2 started from attempt 1's last heartbeat checkpoint: five CVEs done.
    [resumed] = [e for e in log_events(logs) if e["event"] == "resuming cve-enrich"]
    assert (resumed["done"], resumed["of"]) == (5, 8)
    # Attempt 2 asked NVD only for what attempt 1 had not finished: the five done CVEs
    # once each, the one that failed twice, the rest once.
    per_cve = nvd_per_cve(nvd)
    assert per_cve == Counter({**{c: 1 for c in cves}, cves[5]: 2}), per_cve
    assert nvd.throttled == []
    # ... and EPSS too: the second batch is only the three unfinished CVEs.
    assert [sorted(b) for b in epss.batches()] == [sorted(cves), sorted(cves[5:])]
    entries = {e["cve_id"]: e for es in _enrichment(handle.id).values() for e in es}
    assert set(entries) == set(cves) and all(e["status"] == "enriched" and e["nvd"] for e in entries.values())
    [err] = [e for e in open_store().list_errors(handle.id) if e.stage_id == "enrich"]
    assert (err.category, err.attempt, err.outcome) == ("transient", 1, "recovered")
    assert "NVD unavailable: HTTP 503" in err.message


@pytest.mark.slow
async def test_killed_worker_mid_enrichment_is_resumed_by_another(
    client: Client, server: DevServer, task_queue: str, tmp_path: Path, services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker process is SIGKILLed while NVD holds the sixth request: attempt 2, on a
    new worker, starts from the last heartbeat checkpoint (and the cache)."""
    key = f"{uuid.uuid4()}"
    monkeypatch.setenv("SECFLOW_NVD_API_KEY", key)  # 50 per 30 s on both sides: no throttling in between
    cves = ALL_CVES[:8]
    nvd, _, _ = services(NvdStandin([Fault.passthrough()] * 5 + [Fault.hang(30)], api_key=key))
    workflow_id = seed_findings(tmp_path, cves)
    first = WorkerProcess(task_queue, server.address, tmp_path / "worker1.log")
    second = None
    try:
        handle = await start(client, enrich_only_spec(tmp_path, 3), task_queue, workflow_id=workflow_id)
        deadline = time.monotonic() + 60
        while not nvd.requests:  # attempt 1 runs on the first worker ...
            assert time.monotonic() < deadline, "the first worker never started enriching"
            await asyncio.sleep(0.05)
        # ... so a second one can start now (warm by the time it is needed).
        second = WorkerProcess(task_queue, server.address, tmp_path / "worker2.log")
        # The sixth request is in flight (and hangs), and Temporal has the checkpoint taken
        # after the fifth CVE (heartbeats are throttled: it can take a few seconds).
        while len(nvd.requests) < 6 or await checkpointed(client, handle) < 5:
            assert time.monotonic() < deadline, "the first worker never reached the sixth CVE"
            await asyncio.sleep(0.1)
        first.kill(signal.SIGKILL)
        first.wait()
        status = await final_status(handle)
    finally:
        first.stop()
        if second:
            second.stop()
    assert status.outcome == "completed", status.reason
    st = status.stages["enrich"]
    assert st.attempts == 2 and st.outputs["enriched"] == "8"
    # Nothing attempt 1 finished was fetched again; only the CVE it died on.
    assert nvd_per_cve(nvd) == Counter({**{c: 1 for c in cves}, cves[5]: 2})
    # attempt 2 started from the heartbeat checkpoint
    resumed = [json.loads(line) for line in second.text().splitlines() if '"resuming cve-enrich"' in line]
    assert [(e["done"], e["of"]) for e in resumed] == [(5, 8)]
    [lost] = [e for e in open_store().list_errors(handle.id) if e.stage_id == "enrich"]
    assert (lost.attempt, lost.category, lost.outcome) == (1, "transient", "recovered")


# --------------------------------------------------------------------------------------
# NVD API key: documented header, higher rate, never leaked
# --------------------------------------------------------------------------------------
async def test_nvd_api_key_is_sent_raises_the_rate_and_never_leaks(
    client: Client, worker: str, tmp_path: Path, services, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"{uuid.uuid4()}"  # NVD keys are UUIDs
    monkeypatch.setenv("SECFLOW_NVD_API_KEY", key)
    cves = ALL_CVES[:8]  # more than the 5-per-30 s a keyless client may send
    # One 503 first, so the failure path (error ledger, history, logs) is exercised too.
    nvd, _, _ = services(NvdStandin([Fault(503)], api_key=key))
    assert settings_for("nvd").window_limit == 50
    workflow_id = seed_findings(tmp_path, cves)
    report = {"id": "report", "kind": "report", "depends_on": ["enrich"], "always": True}
    with captured_logs() as logs:
        handle = await start(client, enrich_only_spec(tmp_path, 3, report), worker, workflow_id=workflow_id)
        status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    assert status.stages["enrich"].attempts == 2 and status.stages["enrich"].outputs["enriched"] == "8"
    # Sent in NVD's documented `apiKey` request header, on every request.
    assert len(nvd.requests) == 9
    assert all(r.headers.get("apiKey") == key for r in nvd.requests)
    assert all(key not in r.path and key not in json.dumps(r.query) for r in nvd.requests)
    # The keyed limit applied: the stand-in (which throttles keyless clients at 5 per
    # 30 s with 403) accepted all nine within one window, and never throttled.
    assert nvd.throttled == []
    assert nvd.requests[-1].time - nvd.requests[0].time < nvd.window_s

    # Nowhere in the Temporal history (raw payload bytes and the JSON form) ...
    history = await handle.fetch_history()
    assert history.events
    assert key.encode() not in b"".join(e.SerializeToString() for e in history.events)
    assert key not in history.to_json()
    # ... the logs (everything the worker logged at DEBUG during the run) ...
    text = logs.getvalue()
    assert "cve enrichment done" in text and "tool attempt failed" in text
    assert key not in text
    # ... the reports, the error ledger or the enrichment data.
    paths = status.stages["report"].outputs
    assert set(paths) == {"sarif", "md", "html", "json"}
    for path in paths.values():
        assert key not in Path(path).read_text()
    assert cves[0] in Path(paths["md"]).read_text() and "CVE enrichment" in Path(paths["md"]).read_text()
    sarif = validate_sarif(Path(paths["sarif"]).read_text())
    results = [r for run in sarif["runs"] for r in run["results"]]
    assert len(results) == 8 and all(r["properties"]["enrichment"]["cves"] for r in results)
    heartbleed = next(r for r in results if r["ruleId"] == "OSV-CVE-2014-0160")
    assert heartbleed["properties"]["security-severity"] == "7.5"  # NVD's CVSS v3.1 base score
    assert json.loads(Path(paths["json"]).read_text())["summary"]["enrichment"]["cves"] == 8
    assert all(key not in e.message for e in open_store().list_errors(handle.id))
    assert key not in json.dumps(_enrichment(handle.id))


# --------------------------------------------------------------------------------------
# malformed bodies: external_tool, limited retry, then the stage degrades
# --------------------------------------------------------------------------------------
async def test_malformed_nvd_bodies_are_external_tool_and_degrade(client: Client, worker: str, app: Path, services) -> None:
    first = sorted(CVES)[0]
    nvd, _, _ = services(NvdStandin([
        Fault.truncated(), Fault.passthrough(), Fault.passthrough(),  # attempt 1: invalid JSON for the first CVE
        Fault(200, body={"unexpected": "shape"}),                     # attempt 2: JSON of the wrong shape
        Fault.raw(b"<html><body>502 Bad Gateway</body></html>"),      # attempt 3: not JSON at all
    ]))
    handle = await start(client, enrich_spec(app), worker)
    status = await final_status(handle)
    assert status.outcome == "completed_with_errors", status.reason
    st = status.stages["enrich"]
    assert st.state == "succeeded" and st.degraded and st.attempts == 3
    assert st.outputs["enriched"] == "2" and st.outputs["partial"] == "1"
    errors = [e for e in open_store().list_errors(handle.id) if e.stage_id == "enrich"]
    assert [(e.attempt, e.category) for e in errors] == [(1, "external_tool"), (2, "external_tool")]
    assert "unusable response" in errors[1].message
    entries = {e["cve_id"]: e for es in _enrichment(handle.id).values() for e in es}
    bad = entries[first]
    assert bad["partial"] and bad["nvd"] is None and "external_tool: NVD answered with a malformed body" in bad["partial_reason"]
    assert all(e["status"] == "enriched" and e["nvd"] for c, e in entries.items() if c != first)
    # only the CVE with the bad answer was asked again
    assert nvd_per_cve(nvd) == Counter({first: 3, **{c: 1 for c in CVES - {first}}})
    # and the findings as reports see them say so
    by_cve = {c.cve_id: c for f in open_store().list_findings(handle.id) if f.enrichment for c in f.enrichment.cves}
    assert by_cve[first].partial and by_cve[first].status == "partial"


# --------------------------------------------------------------------------------------
# an NVD outage: the breaker opens, activity retries wait it out, half-open recovers
# --------------------------------------------------------------------------------------
async def test_nvd_outage_opens_the_breaker_and_recovers_through_half_open(
    client: Client, worker: str, app: Path, services
) -> None:
    register_dependency("nvd", small_nvd(window_limit=50, failure_threshold=2, failure_window=30.0,
                                         open_timeout=1.0, max_open_timeout=8.0, retry_attempts=1))
    nvd, _, _ = services(NvdStandin(window_s=1.0, limit_public=50))
    outage = 2.5
    nvd.outage(Fault(503), seconds=outage)
    handle = await start(client, enrich_spec(app, retry={"max_attempts": 8, "initial_interval": "100ms"}), worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    st = status.stages["enrich"]
    assert not st.degraded and st.outputs["enriched"] == "3" and st.outputs["partial"] == "0"
    entries = {e["cve_id"]: e for es in _enrichment(handle.id).values() for e in es}
    assert set(entries) == CVES and all(e["status"] == "enriched" and e["nvd"] for e in entries.values())

    # During the outage NVD saw: 2 failures (the threshold) that opened the breaker, then
    # only half-open trials, each after the open timeout (1 s, then doubled to 2 s).
    # Without the breaker the linear 100 ms retries would have sent ~7 in 2.5 s.
    during = [r.time for r in nvd.outage_requests]
    assert len(during) == 3, during
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert gaps[1] >= 1.0, gaps  # breaker open: the retry waited for half-open
    after = [r.time for r in nvd.requests[len(during):]]  # the outage began with the first request
    assert after and after[0] - during[-1] >= 2.0, (during, after)  # second open period, doubled
    # The first request after the outage was the half-open trial; it closed the breaker.
    snap = breaker_for("nvd", settings_for("nvd")).snapshot()
    assert snap.state.value == "closed" and snap.trips == 2
    assert st.attempts == 4
    errors = [e for e in open_store().list_errors(handle.id) if e.stage_id == "enrich"]
    assert [e.category for e in errors] == ["transient"] * 3 and all(e.outcome == "recovered" for e in errors)


# --------------------------------------------------------------------------------------
# a 429 storm with Retry-After
# --------------------------------------------------------------------------------------
async def test_epss_429_storm_honours_retry_after(
    client: Client, worker: str, app: Path, services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECFLOW_HTTP_EPSS_RETRIES", "2")  # the storm outlasts the transport's retries
    _, epss, _ = services(epss=EpssStandin([Fault(429, retry_after="1")] * 3))
    handle = await start(client, enrich_spec(app), worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    st = status.stages["enrich"]
    assert st.outputs["enriched"] == "3" and not st.degraded
    # Two 429s inside attempt 1 (transport retry), the third in attempt 2 (the activity
    # retry waited Retry-After too), then the answer.
    assert st.attempts == 2 and len(epss.requests) == 4
    times = [r.time for r in epss.requests]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g >= 1.0 for g in gaps), gaps
    entries = [e for es in _enrichment(handle.id).values() for e in es]
    assert any(e["epss"] for e in entries) and all(not e["partial"] for e in entries)


# --------------------------------------------------------------------------------------
# no request leaves loopback
# --------------------------------------------------------------------------------------
_AUDIT: dict = {"on": False, "seen": []}
_AUDIT_INSTALLED = False


def _audit(event: str, args: tuple) -> None:
    # Audit hooks cannot be removed: this one does nothing unless a test switched it on.
    if not _AUDIT["on"]:
        return
    if event == "socket.connect":
        _AUDIT["seen"].append(("connect", args[1]))
    elif event == "socket.getaddrinfo":
        _AUDIT["seen"].append(("getaddrinfo", (args[0], args[1])))


@pytest.fixture
def audit_sockets() -> Iterator[list]:
    global _AUDIT_INSTALLED
    if not _AUDIT_INSTALLED:
        sys.addaudithook(_audit)
        _AUDIT_INSTALLED = True
    _AUDIT["seen"] = []
    _AUDIT["on"] = True
    try:
        yield _AUDIT["seen"]
    finally:
        _AUDIT["on"] = False


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


async def test_no_request_leaves_loopback(client: Client, worker: str, app: Path, services, audit_sockets: list) -> None:
    # The hook sees a non-loopback address (a numeric lookup of TEST-NET-1: no I/O at all).
    socket.getaddrinfo("192.0.2.1", 80, flags=socket.AI_NUMERICHOST)
    assert [(kind, addr) for kind, addr in audit_sockets if not _is_loopback(addr[0])] == [("getaddrinfo", ("192.0.2.1", 80))]
    audit_sockets.clear()
    nvd, epss, kev = services()
    report = {"id": "report", "kind": "report", "depends_on": ["enrich"], "always": True}
    spec = enrich_spec(app)
    spec = make_spec([{"path": str(app)}], [s.model_dump(mode="json", exclude_none=True) for s in spec.stages] + [report],
                     scope={"allow": [str(app)]})
    handle = await start(client, spec, worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    assert status.stages["enrich"].outputs["enriched"] == "3"
    seen = list(audit_sockets)
    connects = [addr for kind, addr in seen if kind == "connect" and isinstance(addr, tuple)]
    # The hook saw the traffic (so the check below is about something) ...
    ports = {addr[1] for addr in connects}
    osv_port = int(os.environ["SECFLOW_OSV_URL"].rsplit(":", 1)[1])
    assert {nvd.port, epss.port, kev.port, osv_port} <= ports, (ports, seen)
    # ... and every address connected to or looked up was loopback.
    outside = [(kind, addr) for kind, addr in seen if isinstance(addr, tuple) and not _is_loopback(addr[0])]
    assert outside == [], outside
