"""`cve-enrich` in a real workflow: sca finds CVEs (OSV stand-in), enrichment reads the
NVD / EPSS / KEV stand-ins, with cache, stale fallback and degradation."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from temporalio.client import Client

from secflow.http import reset_http_state
from secflow.store import open_store
from tests.enrich_standins import EpssStandin, Fault, KevStandin, NvdStandin
from tests.helpers import final_status, make_spec, start
from tests.osv_standin import OsvStandin

CVES = {"CVE-2019-10906", "CVE-2020-28493", "CVE-2019-11324"}


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
    for cve in CVES:
        store.forget_enrichment(cve)
    yield
    reset_http_state()


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch):
    servers: list = []

    def make(nvd: NvdStandin | None = None) -> tuple[NvdStandin, EpssStandin, KevStandin]:
        osv, epss, kev = OsvStandin(), EpssStandin(), KevStandin()
        nvd = nvd or NvdStandin()
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
        raw = store.get_finding_enrichment(f.fingerprint)
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
    assert st.attempts == 1
    assert st.outputs["partial"] == "3" and st.outputs["enriched"] == "0"
    entries = [e for es in _enrichment(handle.id).values() for e in es]
    assert entries and all(e["partial"] and "NVD unavailable" in e["partial_reason"] for e in entries)
    assert all(e["nvd"] is None for e in entries)
    assert len(nvd.requests) == 1  # NVD's rate budget is not spent on a service that is down
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
