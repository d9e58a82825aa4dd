"""Standard reports: SARIF 2.1.0 (validated against the OASIS schema), Markdown, HTML, JSON."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest
from temporalio.client import Client

from secflow.findings import Confidence, Finding, Severity
from secflow.models import AssessmentStatus, ErrorInfo, Intervention, StageStatus
from secflow.reports import FORMATS, RENDERERS, render_html, render_json, render_markdown, render_sarif
from secflow.reports.sarif import FINGERPRINT_KEY
from secflow.store import ErrorEvent, open_store
from tests.helpers import final_status, make_spec, start
from tests.servers import Reply, ScriptedServer

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "sarif-schema-2.1.0.json").read_text())
T0 = datetime(2025, 5, 1, 12, 0, tzinfo=timezone.utc)
SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


def validate_sarif(text: str) -> dict:
    doc = json.loads(text)
    jsonschema.Draft7Validator(SCHEMA).validate(doc)
    # What GitHub code scanning needs of every result on top of the schema.
    for run in doc["runs"]:
        rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
        assert len(rule_ids) == len(set(rule_ids))
        for rule in run["tool"]["driver"]["rules"]:
            float(rule["properties"]["security-severity"])
            assert rule["shortDescription"]["text"] and rule["help"]["text"]
        for res in run["results"]:
            assert res["ruleId"] in rule_ids and rule_ids[res["ruleIndex"]] == res["ruleId"]
            assert res["locations"] and res["partialFingerprints"][FINGERPRINT_KEY]
    return doc


def _finding(**kw) -> Finding:
    kw.setdefault("confidence", Confidence.HIGH)
    return Finding.new(**kw)


def realistic_findings() -> list[Finding]:
    return [
        _finding(tool="sca", rule_id="GHSA-462w-v97r-4m45", title="jinja2 2.11.2: sandbox escape", severity=Severity.CRITICAL,
                 target="/srv/app", location="requirements.txt:12", cwe=["CWE-1336"], cve=["CVE-2024-22195"],
                 evidence="jinja2==2.11.2; fixed in 3.1.3; score 9.8"),
        _finding(tool="sca", rule_id="GHSA-8q59-q68h-6hv4", title="urllib3 1.26.4: header injection", severity=Severity.HIGH,
                 target="/srv/app", location="sub dir/poetry.lock:40", cwe=["CWE-93"], cve=["CVE-2023-43804"]),
        _finding(tool="http_headers", rule_id="missing-csp", title="Content-Security-Policy missing", severity=Severity.MEDIUM,
                 target="http://127.0.0.1:8080/", location="http://127.0.0.1:8080/", cwe=["CWE-693"],
                 evidence="no Content-Security-Policy header"),
        _finding(tool="http_headers", rule_id="weak-cookie", title="Cookie sid without Secure", severity=Severity.LOW,
                 target="http://127.0.0.1:8080/", location="http://127.0.0.1:8080/#cookie=sid", cwe=["CWE-614"]),
        _finding(tool="portscan", rule_id="open-port", title="Open TCP port 8080", severity=Severity.INFO,
                 target="127.0.0.1", location="127.0.0.1:8080"),
        _finding(tool="tls", rule_id="tls-protocol-tls1_0", title="TLS 1.0 accepted", severity=Severity.MEDIUM,
                 target="https://example.test:8443/", location="example.test:8443", cwe=["CWE-326"]),
    ]


def _error(n: int, stage: str, tool: str, category: str, outcome: str | None, message: str = "boom") -> ErrorEvent:
    return ErrorEvent(event_id=f"e{n}", assessment_id="a-1", stage_id=stage, target="http://127.0.0.1:8080/", tool=tool,
                      attempt=n, category=category, message=message, retryable=category == "transient",
                      occurred_at=T0 + timedelta(seconds=n), outcome=outcome)


def realistic_status() -> AssessmentStatus:
    return AssessmentStatus(
        workflow_id="a-1",
        name="demo",
        status="completed_with_errors",
        outcome="completed_with_errors",
        reason="tls: partial",
        started_at=T0,
        finished_at=T0 + timedelta(minutes=3),
        stages={
            "deps": StageStatus(state="succeeded", kind="sca", tool="sca", attempts=1, findings=2),
            "ports": StageStatus(state="succeeded", kind="discovery", tool="portscan", attempts=1, findings=1),
            "headers": StageStatus(state="succeeded", kind="dast", tool="http_headers", attempts=2, findings=2),
            "tls": StageStatus(state="partial", kind="dast", tool="tls", attempts=3, findings=1, degraded=True,
                               reason="1 of 2 targets failed (50% <= tolerated 50%)"),
            "nuclei": StageStatus(state="skipped", kind="dast", tool="http_headers", reason="skipped by alice: out of window"),
            "exploit": StageStatus(state="failed", kind="dast", tool="http_headers", attempts=1,
                                   error=ErrorInfo(category="permanent", message="401 Unauthorized", attempts=1)),
            "report": StageStatus(state="running", kind="report", tool="report"),
        },
        interventions=[Intervention(action="skip", stage="nuclei", by="alice", reason="out of window", at=T0, via="update")],
    )


def realistic_errors() -> list[ErrorEvent]:
    return [
        _error(1, "headers", "http_headers", "transient", "recovered", "503 Service Unavailable"),
        _error(2, "tls", "tls", "external_tool", "degraded", "handshake garbage"),
        _error(3, "exploit", "http_headers", "permanent", "failed", "401 Unauthorized"),
        _error(4, "nuclei", "http_headers", "resource", None, "disk full"),
    ]


def test_sarif_of_a_realistic_assessment_validates_and_maps_everything() -> None:
    findings = realistic_findings()
    doc = validate_sarif(render_sarif(realistic_status(), findings, realistic_errors()))
    assert doc["version"] == "2.1.0"
    runs = {r["tool"]["driver"]["name"]: r for r in doc["runs"]}
    assert set(runs) == {"sca", "http_headers", "portscan", "tls"}, "one run per tool; the report stage is not a tool run"
    for tool, run in runs.items():
        # category (all before the last /) per spec and tool; the run id is the assessment
        assert run["automationDetails"]["id"] == f"secflow/demo/{tool}/a-1"
        assert run["tool"]["driver"]["version"]  # the tool's version (SecFlow's for built-ins)
    results = {r["partialFingerprints"][FINGERPRINT_KEY]: r for run in runs.values() for r in run["results"]}
    assert set(results) == {f.fingerprint for f in findings}
    by_fp = {f.fingerprint: f for f in findings}

    # file:line -> relative artifact + region
    sca = next(r for fp, r in results.items() if by_fp[fp].location == "requirements.txt:12")
    phys = sca["locations"][0]["physicalLocation"]
    # /srv/app is no repository on this machine: the target directory is the root
    assert phys["artifactLocation"] == {"uri": "requirements.txt", "uriBaseId": "SRCROOT"}
    assert runs["sca"]["originalUriBaseIds"]["SRCROOT"]["uri"] == "file:///srv/app/"
    assert phys["region"] == {"startLine": 12}
    spaced = next(r for fp, r in results.items() if by_fp[fp].location == "sub dir/poetry.lock:40")
    assert spaced["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "sub%20dir/poetry.lock"
    # URL -> a logical location with the URL in properties, never an http:// artifact
    csp = next(r for fp, r in results.items() if by_fp[fp].rule_id == "missing-csp")
    loc = csp["locations"][0]
    assert loc["logicalLocations"][0] == {"name": "http://127.0.0.1:8080/", "fullyQualifiedName": "http://127.0.0.1:8080/", "kind": "resource"}
    assert loc["properties"] == {"url": "http://127.0.0.1:8080/", "host": "127.0.0.1", "port": 8080}
    assert csp["properties"]["url"] == "http://127.0.0.1:8080/"
    assert loc["physicalLocation"]["artifactLocation"] == {"uri": "127.0.0.1/8080/", "uriBaseId": "SECFLOW_TARGET"}
    assert "region" not in loc["physicalLocation"]
    # host:port -> not mistaken for file:line, not a tcp:// artifact
    for rule, loc_text, host, port in (
        ("open-port", "127.0.0.1:8080", "127.0.0.1", 8080),
        ("tls-protocol-tls1_0", "example.test:8443", "example.test", 8443),
    ):
        res = next(r for fp, r in results.items() if by_fp[fp].rule_id == rule)
        assert res["locations"][0]["logicalLocations"][0]["name"] == loc_text
        assert (res["properties"]["host"], res["properties"]["port"]) == (host, port)
        assert "://" not in res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    for run in runs.values():
        for base in run["originalUriBaseIds"].values():
            assert base["uri"].endswith("/") and ":" in base["uri"]  # absolute, resolvable

    # rules: CWE tags, security-severity, help
    rule = runs["sca"]["tool"]["driver"]["rules"][runs["sca"]["results"][0]["ruleIndex"]]
    assert rule["id"] == "GHSA-462w-v97r-4m45"
    assert {"security", "CWE-1336", "external/cwe/cwe-1336", "CVE-2024-22195"} <= set(rule["properties"]["tags"])
    assert float(rule["properties"]["security-severity"]) >= 9.0
    assert rule["defaultConfiguration"]["level"] == "error"
    assert "https://osv.dev/vulnerability/GHSA-462w-v97r-4m45" in rule["help"]["text"]

    # invocations: tool health and every error met, with its outcome
    assert runs["sca"]["invocations"][0]["executionSuccessful"] is True
    assert runs["sca"]["invocations"][0]["toolExecutionNotifications"] == []
    hh = runs["http_headers"]["invocations"][0]
    assert hh["executionSuccessful"] is False
    notes = {n["properties"]["outcome"]: n for n in hh["toolExecutionNotifications"]}
    assert set(notes) == {"recovered", "failed", "pending"}
    assert notes["recovered"]["level"] == "note" and notes["failed"]["level"] == "error"
    assert notes["failed"]["descriptor"]["id"] == "permanent"
    assert runs["tls"]["invocations"][0]["executionSuccessful"] is False
    assert "1 of 2 targets failed" in runs["tls"]["invocations"][0]["exitCodeDescription"]


@pytest.mark.parametrize(
    ("severity", "level"),
    [(Severity.CRITICAL, "error"), (Severity.HIGH, "error"), (Severity.MEDIUM, "warning"), (Severity.LOW, "note"), (Severity.INFO, "note")],
)
def test_sarif_levels(severity: Severity, level: str) -> None:
    f = _finding(tool="portscan", rule_id="r", title="t", severity=severity, target="127.0.0.1", location="127.0.0.1:22")
    doc = validate_sarif(render_sarif(realistic_status(), [f], []))
    run = next(r for r in doc["runs"] if r["tool"]["driver"]["name"] == "portscan")
    assert run["results"][0]["level"] == level
    assert run["tool"]["driver"]["rules"][0]["defaultConfiguration"]["level"] == level


def test_sarif_of_an_empty_assessment_validates() -> None:
    empty = AssessmentStatus(workflow_id="empty-1", name="empty", status="completed", outcome="completed")
    doc = validate_sarif(render_sarif(empty, [], []))
    assert len(doc["runs"]) == 1
    assert doc["runs"][0]["results"] == [] and doc["runs"][0]["tool"]["driver"]["rules"] == []
    assert doc["runs"][0]["invocations"][0]["executionSuccessful"] is True
    # with stages but no findings: one empty run per tool, so an upload says "nothing found"
    status = AssessmentStatus(workflow_id="e-2", name="empty", status="completed",
                              stages={"h": StageStatus(state="succeeded", kind="dast", tool="http_headers")})
    doc = validate_sarif(render_sarif(status, [], []))
    assert [r["tool"]["driver"]["name"] for r in doc["runs"]] == ["http_headers"]


@pytest.mark.parametrize("render", [render_markdown, render_html], ids=["md", "html"])
def test_human_reports_say_what_was_degraded_and_how_errors_ended(render) -> None:
    text = render(realistic_status(), realistic_findings(), realistic_errors())
    # degraded / skipped / failed stages with their reasons
    assert "1 of 2 targets failed (50% &lt;= tolerated 50%)" in text or "1 of 2 targets failed (50% <= tolerated 50%)" in text
    assert "skipped by alice: out of window" in text
    assert "permanent: 401 Unauthorized" in text
    # every error with its category and outcome (None is pending)
    for category, outcome in (("transient", "recovered"), ("external_tool", "degraded"), ("permanent", "failed"), ("resource", "pending")):
        assert category in text and outcome in text
    assert "503 Service Unavailable" in text and "disk full" in text
    # interventions, CWE/CVE, summary
    assert "alice" in text and "out of window" in text
    assert "CWE-1336" in text and "CVE-2024-22195" in text
    assert "critical" in text.lower()


def test_html_escapes_everything_and_is_self_contained() -> None:
    evil = _finding(tool="http_headers", rule_id="server-banner", title='Server: <script>alert("x")</script>', severity=Severity.LOW,
                    target="http://127.0.0.1/", location="http://127.0.0.1/?q=<img src=x onerror=alert(1)>",
                    evidence="<b>bold</b> & 'quoted'")
    status = realistic_status()
    status.stages["tls"].reason = "<iframe src=//evil>"
    err = _error(9, "headers", "http_headers", "external_tool", "failed", "garbage <svg onload=alert(1)>")
    text = render_html(status, [evil], [err])
    assert "<script>" not in text and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "<img" not in text and "<iframe" not in text and "<svg" not in text and "<b>bold" not in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &#x27;quoted&#x27;" in text
    # no external assets, no scripts at all
    assert "<script" not in text and "src=" not in text.replace("src=x", "").replace("src=//evil", "")
    assert "http-equiv=\"Content-Security-Policy\"" in text and "<link" not in text
    # Markdown does not let raw HTML through either (GitHub renders it)
    assert "<script>" not in render_markdown(status, [evil], [err])


def test_secrets_never_reach_any_report() -> None:
    leaky = _finding(tool="http_headers", rule_id="token-in-page", title=f"token={SECRET} in page", severity=Severity.HIGH,
                     target="http://127.0.0.1/", location="http://user:hunter2pass@127.0.0.1/",
                     evidence=f"Authorization: Bearer {SECRET}")
    err = _error(1, "headers", "http_headers", "permanent", "failed", f"401 with api_key={SECRET}")
    status = realistic_status()
    status.stages["tls"].reason = f"password={SECRET}"
    for fmt in FORMATS:
        render, _ = RENDERERS[fmt]
        text = render(status, [leaky], [err])
        assert SECRET not in text, fmt
        assert "hunter2pass" not in text, fmt
        assert "[REDACTED]" in text, fmt
    validate_sarif(render_sarif(status, [leaky], [err]))


def test_json_report_has_stable_keys() -> None:
    doc = json.loads(render_json(realistic_status(), realistic_findings(), realistic_errors()))
    assert list(doc)[:5] == ["report_version", "assessment", "summary", "findings", "errors"]
    assert list(doc)[5:] == ["issues", "final", "snapshot"]  # added later, after the originals
    assert doc["summary"]["by_severity"] == {"critical": 1, "high": 1, "medium": 2, "low": 1, "info": 1}
    assert doc["summary"]["errors_by_outcome"] == {"degraded": 1, "failed": 1, "pending": 1, "recovered": 1}
    assert {d["stage"] for d in doc["summary"]["degraded"]} == {"tls", "nuclei", "exploit"}
    assert [f["severity"] for f in doc["findings"]][:2] == ["critical", "high"]
    assert set(doc["findings"][0]) >= {"fingerprint", "tool", "rule_id", "title", "severity", "location", "cwe", "cve", "evidence"}
    assert set(doc["errors"][0]) >= {"event_id", "stage_id", "category", "message", "outcome"}
    # deterministic: same input, same bytes
    findings, errors = realistic_findings(), realistic_errors()
    assert render_json(realistic_status(), findings[::-1], errors[::-1]) == render_json(realistic_status(), findings, errors)


def _starter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "starter", *args], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120)


async def test_report_stage_writes_all_four_and_the_starter_renders_the_same(client: Client, worker: str, tmp_path: Path) -> None:
    weak = Reply(200, {"Server": "Apache/2.4.1", "Set-Cookie": "sid=abc"})
    flaky = ScriptedServer([Reply(503), weak])  # first attempt fails (transient), the retry recovers
    try:
        spec = make_spec(
            [{"url": flaky.url}],
            [
                {"id": "headers", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 3, "initial_interval": "100ms"}},
                {"id": "report", "kind": "report", "depends_on": ["headers"], "always": True},
            ],
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        flaky.close()
    assert status.outcome == "completed", status.reason
    outputs = status.stages["report"].outputs
    assert set(outputs) == {"sarif", "md", "html", "json"}
    paths = {fmt: Path(p) for fmt, p in outputs.items()}
    for fmt, name in (("sarif", "report.sarif"), ("md", "report.md"), ("html", "report.html"), ("json", "report.json")):
        assert paths[fmt].name == name and paths[fmt].parent.name == handle.id and paths[fmt].is_file()
    assert not list(paths["sarif"].parent.glob("*.tmp")), "no temporary files left behind"

    findings = open_store().list_findings(handle.id)
    assert findings
    staged = validate_sarif(paths["sarif"].read_text())
    [run] = staged["runs"]
    assert run["tool"]["driver"]["name"] == "http-headers"
    assert {r["partialFingerprints"][FINGERPRINT_KEY] for r in run["results"]} == {f.fingerprint for f in findings}
    [note] = run["invocations"][0]["toolExecutionNotifications"]
    assert (note["descriptor"]["id"], note["properties"]["outcome"]) == ("transient", "recovered")
    assert "recovered" in paths["md"].read_text() and "recovered" in paths["html"].read_text()
    assert len(json.loads(paths["json"].read_text())["findings"]) == len(findings)

    # the starter renders the same report from the store and the stored result (the
    # in-process worker shares this event loop, so the CLI runs in a thread)
    out = tmp_path / "out.sarif"
    proc = await asyncio.to_thread(_starter, "report", handle.id, "--format", "sarif", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    cli = validate_sarif(out.read_text())
    [cli_run] = cli["runs"]
    assert cli_run["results"] == run["results"]
    assert cli_run["tool"] == run["tool"]
    assert cli_run["automationDetails"] == run["automationDetails"]
    assert cli_run["invocations"][0]["toolExecutionNotifications"] == run["invocations"][0]["toolExecutionNotifications"]

    proc = await asyncio.to_thread(_starter, "report", handle.id, "--format", "md")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# Assessment report") and "recovered" in proc.stdout


async def test_report_command_rejects_bad_arguments(tmp_path: Path) -> None:
    """Checked before connecting anywhere: no Temporal server is needed to be told no."""
    for args in (
        ["report", "x-1", "--format", "pdf"],
        ["report", "x-1"],
        ["report", "bad/id", "--format", "md"],
        ["report", "x-1", "--format", "md", "-o", str(tmp_path / "missing" / "r.md")],
    ):
        proc = await asyncio.to_thread(_starter, *args)
        assert proc.returncode == 2, (args, proc.stderr)


# --------------------------------------------------------------------------------------
# CVE enrichment in every report (real NVD/EPSS/KEV records from tests/fixtures/enrich)
# --------------------------------------------------------------------------------------
def _enrich_payloads() -> dict[str, dict]:
    """What `cve-enrich` writes onto findings: one current, one stale, one partial CVE."""
    from secflow.enrichment import EnrichedCve, parse_epss, parse_kev, parse_nvd

    fixtures = Path(__file__).parent / "fixtures" / "enrich"
    nvd = {v["cve"]["id"]: v for v in json.loads((fixtures / "nvd.json").read_text())["vulnerabilities"]}
    epss = parse_epss(json.loads((fixtures / "epss.json").read_text()))
    kev = parse_kev(json.loads((fixtures / "kev.json").read_text()))

    def record(cve: str):
        return parse_nvd({"totalResults": 1, "format": "NVD_CVE", "vulnerabilities": [nvd[cve]]})

    fresh = EnrichedCve(cve_id="CVE-2021-44228", nvd=record("CVE-2021-44228"), epss=epss["CVE-2021-44228"],
                        kev=kev["CVE-2021-44228"], fetched_at=T0)
    stale = EnrichedCve(cve_id="CVE-2019-10906", nvd=record("CVE-2019-10906"), epss=epss.get("CVE-2019-10906"),
                        fetched_at=T0 - timedelta(hours=72))
    partial = EnrichedCve(cve_id="CVE-2020-28493", epss=epss.get("CVE-2020-28493"), fetched_at=T0, partial=True,
                          partial_reason="NVD unavailable: HTTP 503")
    return {
        "fresh": {**fresh.model_dump(mode="json"), "status": "enriched"},
        "stale": {**stale.model_dump(mode="json"), "status": "stale", "stale": True, "stale_age_seconds": 72 * 3600.0,
                  "stale_reason": "stale: cached data from 2025-04-28T12:00:00+00:00 (72.0 h old) used because NVD unavailable: HTTP 503"},
        "partial": {**partial.model_dump(mode="json"), "status": "partial"},
    }


def enriched_findings() -> list[Finding]:
    from secflow.findings import FindingEnrichment

    p = _enrich_payloads()
    log4j = _finding(tool="sca", rule_id="GHSA-jfh8-c2jp-5v3q", title="log4j-core 2.14.1: Log4Shell", severity=Severity.HIGH,
                     target="/srv/app", location="pom.xml:30", cve=["CVE-2021-44228"])
    jinja_stale = _finding(tool="sca", rule_id="PYSEC-2019-217", title="jinja2 2.10: sandbox escape", severity=Severity.MEDIUM,
                           target="/srv/app", location="requirements.txt:1", cve=["CVE-2019-10906"])
    jinja_partial = _finding(tool="sca", rule_id="GHSA-g3rq-g295-4j3m", title="jinja2 2.10: ReDoS", severity=Severity.MEDIUM,
                             target="/srv/app", location="requirements.txt:1#redos", cve=["CVE-2020-28493"])
    out = []
    for f, key in ((log4j, "fresh"), (jinja_stale, "stale"), (jinja_partial, "partial")):
        out.append(f.model_copy(update={"enrichment": FindingEnrichment.from_stored(json.dumps({"cves": [p[key]]}))}))
    return out


def test_enrichment_does_not_change_the_fingerprint() -> None:
    for f in enriched_findings():
        bare = Finding.new(tool=f.tool, rule_id=f.rule_id, title=f.title, severity=f.severity, target=f.target, location=f.location)
        assert f.enrichment is not None and f.fingerprint == bare.fingerprint
    [fresh, stale, partial] = [f.enrichment.cves[0] for f in enriched_findings()]
    assert (fresh.cvss3_score, fresh.in_kev, fresh.status) == (10.0, True, "enriched")
    assert fresh.cvss3_vector.startswith("CVSS:3.1/") and "CWE-502" in fresh.cwe and fresh.description
    assert fresh.epss_probability is not None and fresh.epss_percentile is not None and fresh.kev_due_date is not None
    assert stale.stale and stale.stale_age_seconds == 72 * 3600 and stale.cvss3_score == 8.6
    assert partial.partial and partial.cvss_score is None and "NVD unavailable" in partial.partial_reason


def test_sarif_carries_enrichment_and_ranks_by_cvss() -> None:
    findings = enriched_findings()
    doc = validate_sarif(render_sarif(realistic_status(), findings, []))
    [run] = [r for r in doc["runs"] if r["tool"]["driver"]["name"] == "sca"]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    results = {r["ruleId"]: r for r in run["results"]}
    # CVSS base score where present: Log4Shell is a HIGH finding here, but CVSS 10.0.
    assert rules["GHSA-jfh8-c2jp-5v3q"]["properties"]["security-severity"] == "10.0"
    assert rules["PYSEC-2019-217"]["properties"]["security-severity"] == "8.6"  # stale data still has a score
    assert rules["GHSA-g3rq-g295-4j3m"]["properties"]["security-severity"] == "5.5"  # partial: no CVSS, severity table
    props = results["GHSA-jfh8-c2jp-5v3q"]["properties"]
    [cve] = props["enrichment"]["cves"]
    assert cve["cve_id"] == "CVE-2021-44228" and cve["cvss3_score"] == 10.0 and cve["in_kev"] is True
    assert cve["cvss3_vector"].startswith("CVSS:3.1/") and cve["kev_due_date"] and cve["epss_percentile"] > 0.9
    assert props["security-severity"] == "10.0" and props["enrichment"]["stale"] is False
    assert "in CISA KEV" in results["GHSA-jfh8-c2jp-5v3q"]["message"]["text"]
    stale = results["PYSEC-2019-217"]
    assert stale["properties"]["enrichment"]["stale"] is True
    assert stale["properties"]["enrichment"]["cves"][0]["stale_age_seconds"] == 72 * 3600
    assert "STALE data, 72.0 h (3.0 days) old" in stale["message"]["text"]
    partial = results["GHSA-g3rq-g295-4j3m"]
    assert partial["properties"]["enrichment"]["partial"] is True
    assert "PARTIAL data: NVD unavailable: HTTP 503" in partial["message"]["text"]
    assert run["properties"]["enrichment"] == {"cves": 3, "current": 1, "stale": 1, "partial": 1, "oldestStaleAgeSeconds": 72 * 3600.0}
    # no enrichment: no property, the severity table decides, as before
    plain = validate_sarif(render_sarif(realistic_status(), realistic_findings(), []))
    assert all("enrichment" not in r["properties"] for run in plain["runs"] for r in run["results"])


@pytest.mark.parametrize("render", [render_markdown, render_html], ids=["md", "html"])
def test_human_reports_show_enrichment_and_say_when_stale_or_partial(render) -> None:
    text = render(realistic_status(), enriched_findings(), [])
    assert "CVE enrichment" in text
    # the headline, before the findings: counts, and how stale
    head = text.split("Summary by severity")[0]
    assert "3 CVEs enriched" in head and "1 STALE" in head and "oldest 72.0 h (3.0 days) old" in head and "1 PARTIAL" in head
    # current data: CVSS score + vector, CWE, EPSS, KEV + due date, description, fetched time
    assert "10.0 CRITICAL CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H" in text
    assert "CWE-502" in text and "KNOWN EXPLOITED (due 2021-12-24" in text
    assert "0.92429 (percentile 0.99574)" in text and "Apache Log4j2" in text
    assert "current, fetched 2025-05-01T12:00:00+00:00" in text
    # stale: says so, how stale, since when, why
    assert "STALE: cached data fetched 2025-04-28T12:00:00+00:00, 72.0 h (3.0 days) old when used, because NVD unavailable: HTTP 503" in text
    assert "Stale data." in text
    # partial: says so, and which data is unknown
    assert "Partial data." in text and "PARTIAL (2025-05-01T12:00:00+00:00): NVD unavailable: HTTP 503" in text
    assert "unknown (NVD data missing)" in text
    # without enrichment, no section at all
    assert "CVE enrichment" not in render(realistic_status(), realistic_findings(), [])


def test_json_report_carries_enrichment() -> None:
    doc = json.loads(render_json(realistic_status(), enriched_findings(), []))
    by_rule = {f["rule_id"]: f for f in doc["findings"]}
    [cve] = by_rule["GHSA-jfh8-c2jp-5v3q"]["enrichment"]["cves"]
    assert cve["cvss3_score"] == 10.0 and cve["in_kev"] is True and cve["kev_due_date"] == "2021-12-24"
    summary = doc["summary"]["enrichment"]
    assert summary["cves"] == 3 and summary["current"] == 1
    assert summary["stale"] == [{"cve": "CVE-2019-10906", "age_seconds": 72 * 3600.0, "fetched_at": "2025-04-28T12:00:00+00:00",
                                 "reason": _enrich_payloads()["stale"]["stale_reason"]}]
    assert summary["partial"] == [{"cve": "CVE-2020-28493", "reason": "NVD unavailable: HTTP 503"}]
    assert summary["oldest_stale_age_seconds"] == 72 * 3600.0
    plain = json.loads(render_json(realistic_status(), realistic_findings(), []))
    assert all(f["enrichment"] is None for f in plain["findings"]) and plain["summary"]["enrichment"]["cves"] == 0


def test_enrichment_text_is_redacted_and_escaped() -> None:
    from secflow.findings import FindingEnrichment

    p = _enrich_payloads()["partial"]
    p["partial_reason"] = f"NVD unavailable: 503 from http://user:{SECRET}@nvd.example/ <script>alert(1)</script>"
    f = enriched_findings()[0].model_copy(update={"enrichment": FindingEnrichment.from_stored(json.dumps({"cves": [p]}))})
    for fmt in FORMATS:
        text = RENDERERS[fmt][0](realistic_status(), [f], [])
        assert SECRET not in text, fmt
    assert "<script>alert(1)" not in render_html(realistic_status(), [f], [])
    assert "<script>alert(1)" not in render_markdown(realistic_status(), [f], [])


def test_store_reads_enrichment_back_onto_findings(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'f.db'}")
    findings = [f.model_copy(update={"enrichment": None}) for f in enriched_findings()]
    store.upsert_findings("a-enr", "deps", findings)
    assert all(f.enrichment is None for f in store.list_findings("a-enr"))
    p = _enrich_payloads()
    store.set_finding_enrichment("a-enr", findings[0].fingerprint, json.dumps({"cves": [p["fresh"]]}))
    store.set_finding_enrichment("a-enr", findings[1].fingerprint, json.dumps({"cves": [p["stale"]]}))
    store.set_finding_enrichment("a-enr", findings[2].fingerprint, '{"cves": [{"no_id": 1}]')  # truncated and wrong: unreadable
    got = {f.fingerprint: f for f in store.list_findings("a-enr")}
    assert {f.fingerprint for f in findings} == set(got)  # same identities
    assert got[findings[0].fingerprint].enrichment.cves[0].cvss3_score == 10.0
    assert got[findings[1].fingerprint].enrichment.cves[0].stale_age_seconds == 72 * 3600.0
    bad = got[findings[2].fingerprint].enrichment
    assert bad.cves == [] and bad.unreadable
    # a report is still written, and says what could not be read
    md = render_markdown(realistic_status(), list(got.values()), [])
    assert "could not be read" in md

    # A later assessment that shares the finding keeps its own enrichment: it does not
    # rewrite what the earlier assessment's report shows.
    store.upsert_findings("a-later", "deps", findings[:1])
    assert store.set_finding_enrichment("a-later", findings[0].fingerprint, json.dumps({"cves": [p["stale"]]}))
    assert not store.set_finding_enrichment("a-nowhere", findings[0].fingerprint, "{}")
    earlier = {f.fingerprint: f for f in store.list_findings("a-enr")}[findings[0].fingerprint]
    later = {f.fingerprint: f for f in store.list_findings("a-later")}[findings[0].fingerprint]
    assert earlier.enrichment.cves[0].cvss3_score == 10.0 and not earlier.enrichment.cves[0].stale
    assert later.enrichment.cves[0].stale
    validate_sarif(render_sarif(realistic_status(), list(got.values()), []))
    store.close()
