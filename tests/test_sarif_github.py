"""A demo-like assessment (bandit, semgrep and detect-secrets on examples/vulnerable-app)
through a real dev server and worker: its reports are snapshots while it runs and final
once it has ended, its SARIF passes the OASIS schema and GitHub code scanning's upload
rules, the human reports show an issue two tools found once, and no report file is
written through a planted link.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import jsonschema
import pytest
from temporalio.client import Client

from secflow.models import AssessmentStatus, Decision
from secflow.settings import load_settings
from tests.helpers import activity_order, final_status, make_spec, start, wait_for

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "vulnerable-app"
SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "sarif-schema-2.1.0.json").read_text())
FILES = {"sarif": "report.sarif", "md": "report.md", "html": "report.html", "json": "report.json"}

# --- GitHub code scanning's upload rules --------------------------------------------------
# From docs.github.com, "SARIF support for code scanning" (file size, required properties,
# fingerprints, locations) and "SARIF results exceed one or more limits" (the table of hard
# limits; an upload over any of them is rejected):
GZIP_MAX_BYTES = 10 * 1024 * 1024  # "maximum size of 10 MB" per gzip-compressed SARIF file
MAX_RUNS = 20  # runs per file
MAX_RESULTS_PER_RUN = 25_000  # results per run (only the top 5,000 are shown)
MAX_RULES_PER_RUN = 25_000  # rules per run
MAX_EXTENSIONS_PER_RUN = 100  # tool extensions per run
MAX_LOCATIONS_PER_RESULT = 1_000  # locations per result (100 shown)
MAX_THREAD_FLOW_LOCATIONS = 10_000  # thread flow locations per result
MAX_TAGS_PER_RULE = 20  # tags per rule (10 shown)


def github_upload_problems(text: str) -> list[str]:
    """Everything GitHub's upload would refuse (or silently drop) in a SARIF file; [] is good."""
    problems: list[str] = []
    size = len(gzip.compress(text.encode("utf-8")))
    if size > GZIP_MAX_BYTES:
        problems.append(f"gzip size {size} > {GZIP_MAX_BYTES}")
    doc = json.loads(text)
    if doc.get("version") != "2.1.0":
        problems.append("version is not 2.1.0")
    runs = doc.get("runs") or []
    if not runs or len(runs) > MAX_RUNS:
        problems.append(f"{len(runs)} runs (1..{MAX_RUNS} allowed)")
    categories: set[tuple[str, str]] = set()
    for n, run in enumerate(runs):
        where = f"runs[{n}]"
        driver = run.get("tool", {}).get("driver", {})
        if not driver.get("name"):
            problems.append(f"{where}: tool.driver.name missing")
        # Runs of one tool and category in one file are refused: the category (all of
        # automationDetails.id before its last /) keeps each tool's alerts apart.
        auto = (run.get("automationDetails") or {}).get("id", "")
        category = (driver.get("name", ""), auto.rsplit("/", 1)[0] if "/" in auto else auto)
        if category in categories:
            problems.append(f"{where}: tool and category {category} repeated")
        categories.add(category)
        rules = driver.get("rules") or []
        if len(rules) > MAX_RULES_PER_RUN:
            problems.append(f"{where}: {len(rules)} rules > {MAX_RULES_PER_RUN}")
        if len(run.get("tool", {}).get("extensions") or []) > MAX_EXTENSIONS_PER_RUN:
            problems.append(f"{where}: too many tool extensions")
        ids = [r.get("id") for r in rules]
        if len(ids) != len(set(ids)):
            problems.append(f"{where}: duplicate rule ids")
        for rule in rules:
            tags = (rule.get("properties") or {}).get("tags") or []
            if len(tags) > MAX_TAGS_PER_RULE:
                problems.append(f"{where}: rule {rule['id']} has {len(tags)} tags > {MAX_TAGS_PER_RULE}")
            sev = (rule.get("properties") or {}).get("security-severity")
            if sev is not None and not 0.0 <= float(sev) <= 10.0:
                problems.append(f"{where}: rule {rule['id']} security-severity {sev} outside 0..10")
        bases = run.get("originalUriBaseIds") or {}
        results = run.get("results") or []
        if len(results) > MAX_RESULTS_PER_RUN:
            problems.append(f"{where}: {len(results)} results > {MAX_RESULTS_PER_RUN}")
        fingerprints: set[str] = set()
        for m, res in enumerate(results):
            rw = f"{where}.results[{m}]"
            if not (res.get("message") or {}).get("text"):
                problems.append(f"{rw}: message.text missing")
            if res.get("ruleId") not in ids:
                problems.append(f"{rw}: ruleId {res.get('ruleId')!r} not a rule of the run")
            elif "ruleIndex" in res and ids[res["ruleIndex"]] != res["ruleId"]:
                problems.append(f"{rw}: ruleIndex does not point at ruleId")
            locations = res.get("locations") or []
            if not 1 <= len(locations) <= MAX_LOCATIONS_PER_RESULT:
                problems.append(f"{rw}: {len(locations)} locations (1..{MAX_LOCATIONS_PER_RESULT})")
            for loc in locations:
                # "locationFromSarifResult: expected a physical location" otherwise
                art = (loc.get("physicalLocation") or {}).get("artifactLocation") or {}
                uri = art.get("uri")
                if not uri:
                    problems.append(f"{rw}: no physicalLocation.artifactLocation.uri")
                    continue
                scheme = urlsplit(uri).scheme
                if scheme and scheme != "file":
                    problems.append(f"{rw}: artifact URI {uri!r} is not a file")
                if not scheme:
                    base = bases.get(art.get("uriBaseId", ""))
                    if not base or not base.get("uri", "").endswith("/") or not urlsplit(base["uri"]).scheme:
                        problems.append(f"{rw}: relative URI {uri!r} without a resolvable uriBaseId")
                region = (loc.get("physicalLocation") or {}).get("region") or {}
                if "startLine" in region and region["startLine"] < 1:
                    problems.append(f"{rw}: startLine < 1")
            for flow in res.get("codeFlows") or []:
                for tf in flow.get("threadFlows") or []:
                    if len(tf.get("locations") or []) > MAX_THREAD_FLOW_LOCATIONS:
                        problems.append(f"{rw}: too many thread flow locations")
            fps = res.get("partialFingerprints") or {}
            if not fps:
                problems.append(f"{rw}: no partialFingerprints")
            key = json.dumps(fps, sort_keys=True)
            if key in fingerprints:
                problems.append(f"{rw}: fingerprint repeated within the run (alerts would merge)")
            fingerprints.add(key)
    return problems


def resolve(run: dict[str, Any], art: dict[str, Any]) -> str:
    base = run["originalUriBaseIds"][art["uriBaseId"]]["uri"] if "uriBaseId" in art else ""
    return urljoin(base, art["uri"])


# --- one demo-like assessment, shared by the tests of this module ------------------------
@dataclass
class DemoRun:
    id: str
    status: AssessmentStatus
    snapshot_files: dict[str, str]  # what the report stage wrote mid-run
    snapshot_cli: str  # `starter report ID --format md` mid-run
    final_files: dict[str, str]
    report_dir: Path
    victim: Path  # a link to it was planted at report.md before the run
    activities: list[str]


def _starter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "starter", *args], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120
    )


def _read(d: Path) -> dict[str, str]:
    return {fmt: (d / name).read_text() for fmt, name in FILES.items()}


@pytest.fixture(scope="module")
async def demo(client: Client, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoRun]:
    from worker import build_worker

    queue = f"test-{uuid.uuid4().hex[:10]}"
    settings = load_settings({**os.environ, "SECFLOW_TASK_QUEUE": queue})
    wid = f"t-sarif-{uuid.uuid4().hex[:8]}"
    report_dir = settings.reports_dir / wid
    # A link planted where the report stage will write, pointing at a file of someone else's.
    victim = tmp_path_factory.mktemp("victim") / "victim.txt"
    victim.write_text("not yours\n")
    report_dir.mkdir(parents=True, mode=0o755)
    os.chmod(report_dir, 0o755)
    (report_dir / "report.md").symlink_to(victim)
    spec = make_spec(
        [{"path": str(APP)}],
        [
            {"id": "bandit", "kind": "sast", "tool": "bandit"},
            {"id": "semgrep", "kind": "sast", "tool": "semgrep"},
            {"id": "secrets", "kind": "secrets", "tool": "detect-secrets"},
            # Not `always`: it runs mid-assessment, before the gate below, so its files are a snapshot.
            {"id": "report", "kind": "report", "depends_on": ["bandit", "semgrep", "secrets"]},
            {"id": "late", "kind": "sast", "tool": "bandit", "depends_on": ["report"], "requires_approval": True},
        ],
        name="demo-sarif",
        scope={"allow": ["127.0.0.1", str(APP)]},
    )
    async with build_worker(client, settings):
        handle = await start(client, spec, queue, workflow_id=wid)
        await wait_for(handle, lambda s: s.awaiting == ["late"], timeout=180)
        snapshot_files = _read(report_dir)
        proc = await asyncio.to_thread(_starter, "report", wid, "--format", "md")
        assert proc.returncode == 0, proc.stderr
        await handle.signal("reject", Decision(stage="late", by="tests", reason="enough for today"))
        status = await final_status(handle, timeout=180)
        activities = await activity_order(handle)
    yield DemoRun(wid, status, snapshot_files, proc.stdout, _read(report_dir), report_dir, victim, activities)


# --- reports are final ------------------------------------------------------------------
async def test_mid_run_reports_say_they_are_a_snapshot(demo: DemoRun) -> None:
    md = demo.snapshot_files["md"]
    assert "SNAPSHOT: the assessment was still running" in md and "Finished: not yet (snapshot)" in md
    assert "SNAPSHOT: the assessment was still" in demo.snapshot_cli
    assert "SNAPSHOT" in demo.snapshot_files["html"]
    snap = json.loads(demo.snapshot_files["json"])
    assert snap["final"] is False and snap["snapshot"].startswith("SNAPSHOT")
    for run in json.loads(demo.snapshot_files["sarif"])["runs"]:
        assert run["properties"]["final"] is False and run["properties"]["assessmentStatus"] != "completed_with_errors"


async def test_report_files_of_an_ended_assessment_are_final(demo: DemoRun) -> None:
    status = demo.status
    assert status.outcome == "completed_with_errors", status.reason  # the gate was rejected
    # the re-render runs after the compensations, last
    assert demo.activities[-1] == "render_final_reports"
    assert demo.activities.index("remove_workspace") < demo.activities.index("render_final_reports")
    md = demo.final_files["md"]
    assert "SNAPSHOT" not in md and "- Outcome: **completed_with_errors**" in md
    assert f"- Finished: {status.finished_at.isoformat(timespec='seconds')}" in md  # type: ignore[union-attr]
    assert "| report | report | report | succeeded |" in md
    assert "| late | sast | bandit | skipped |" in md
    assert [c.state for c in status.compensations] == ["done"] and "- remove workspace: done" in md
    assert "registered" not in md and "pending" not in md
    doc = json.loads(demo.final_files["json"])
    assert doc["final"] is True and doc["snapshot"] == ""
    assert doc["assessment"]["outcome"] == "completed_with_errors" and doc["assessment"]["finished_at"]
    assert all(e["outcome"] != "pending" for e in doc["errors"])
    assert "Outcome: <strong>completed_with_errors</strong>" in demo.final_files["html"]
    for run in json.loads(demo.final_files["sarif"])["runs"]:
        assert run["properties"]["final"] is True
        assert run["properties"]["assessmentStatus"] == "completed_with_errors"
        assert run["invocations"][0]["endTimeUtc"]


# --- SARIF: schema and GitHub's upload rules ---------------------------------------------
async def test_demo_sarif_passes_the_schema_and_githubs_upload_rules(demo: DemoRun) -> None:
    text = demo.final_files["sarif"]
    doc = json.loads(text)
    jsonschema.Draft7Validator(SCHEMA).validate(doc)
    assert github_upload_problems(text) == []
    runs = {r["tool"]["driver"]["name"]: r for r in doc["runs"]}
    assert set(runs) == {"bandit", "semgrep", "detect-secrets"}
    categories = {r["automationDetails"]["id"].rsplit("/", 1)[0] for r in doc["runs"]}
    assert categories == {f"secflow/demo-sarif/{t}" for t in runs}
    assert all(r["automationDetails"]["id"].endswith("/" + demo.id) for r in doc["runs"])

    for tool, package in (("bandit", "bandit"), ("semgrep", "semgrep"), ("detect-secrets", "detect-secrets")):
        driver = runs[tool]["tool"]["driver"]
        assert driver["version"] == metadata.version(package)  # the version that ran, not SecFlow's
        assert driver["informationUri"].startswith("https://")

    for tool, run in runs.items():
        assert run["results"], f"{tool} found nothing in the vulnerable app"
        for res in run["results"]:
            art = res["locations"][0]["physicalLocation"]["artifactLocation"]
            # relative to the repository root, and the base resolves to the real file
            assert art["uri"].startswith("examples/vulnerable-app/"), art
            assert art["uriBaseId"] == "SRCROOT"
            path = Path(unquote(urlsplit(resolve(run, art)).path))
            assert path.is_file() and path.is_relative_to(APP), path
        assert run["originalUriBaseIds"]["SRCROOT"]["uri"] == ROOT.as_uri() + "/"

    rules = {r["id"]: r for r in runs["bandit"]["tool"]["driver"]["rules"]}
    b602 = rules["B602"]
    assert "Remediation:" in b602["help"]["text"] and "shell=False" in b602["help"]["text"]
    assert "https://cwe.mitre.org/data/definitions/78.html" in b602["help"]["markdown"]
    assert "OWASP A03:2021" in b602["help"]["text"]
    assert {"external/cwe/cwe-078", "external/owasp/owasp-a03"} <= set(b602["properties"]["tags"])


# --- one issue, every tool that found it, with remediation --------------------------------
async def test_human_reports_show_an_issue_found_by_two_tools_once(demo: DemoRun) -> None:
    md = demo.final_files["md"]
    rows = [line for line in md.splitlines() if line.startswith("|") and "| app.py:10 |" in line]
    assert len(rows) == 1, rows  # bandit B602 and semgrep's shell=True rule, both CWE-78 on one line
    assert "bandit, semgrep" in rows[0] and "bandit:B602" in rows[0] and "subprocess-shell-true" in rows[0]
    assert "### Remediation" in md and "shell=False" in md
    doc = json.loads(demo.final_files["json"])
    [issue] = [i for i in doc["issues"] if i["location"] == "app.py:10"]
    assert issue["tools"] == ["bandit", "semgrep"] and issue["cwe"] == ["CWE-78"]
    assert len(issue["fingerprints"]) == 2 and issue["remediation"]["text"]
    # the store keeps each tool's finding; the JSON still lists both, pointing at one issue
    both = [f for f in doc["findings"] if f["location"] == "app.py:10" and "CWE-78" in f["cwe"]]
    assert {f["tool"] for f in both} == {"bandit", "semgrep"} and len({f["issue"] for f in both}) == 1
    assert doc["summary"]["issues"] < doc["summary"]["findings"]
    html = demo.final_files["html"]
    assert html.count("<code>app.py:10</code>") == 1 and "bandit, semgrep" in html
    assert '<a href="https://cwe.mitre.org/data/definitions/78.html">CWE-78</a>' in html


# --- report files on disk -----------------------------------------------------------------
async def test_report_files_are_private_and_never_written_through_a_link(demo: DemoRun) -> None:
    assert demo.victim.read_text() == "not yours\n", "the planted link was followed"
    assert stat.S_IMODE(demo.report_dir.stat().st_mode) == 0o700  # narrowed from 0755
    for name in FILES.values():
        p = demo.report_dir / name
        assert not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) == 0o600, name
    assert not [p.name for p in demo.report_dir.iterdir() if p.name.endswith(".tmp")]


async def test_report_output_option_replaces_a_planted_link_instead_of_following_it(demo: DemoRun, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours\n")
    out = tmp_path / "out.sarif"
    out.symlink_to(victim)
    proc = await asyncio.to_thread(_starter, "report", demo.id, "--format", "sarif", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "not yours\n"
    assert not out.is_symlink() and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text())["runs"][0]["properties"]["final"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.sarif", "victim.txt"]  # no temporary left


# --- the checker and the non-file locations, without a server ----------------------------
def _network_findings() -> list:
    from secflow.findings import Finding, Severity

    def f(tool: str, rule: str, target: str, location: str, sev: Severity = Severity.MEDIUM, cwe: list[str] | None = None):
        return Finding.new(
            tool=tool, rule_id=rule, title=f"{tool} {rule}", severity=sev, target=target, location=location, cwe=cwe
        )

    return [
        f("portscan", "open-port", "127.0.0.1", "127.0.0.1:8080", Severity.INFO),
        f("nmap", "open-port", "127.0.0.1", "127.0.0.1:53/udp", Severity.INFO),
        f("tls", "tls-protocol-tls1.0", "https://[::1]:8443/", "[::1]:8443", Severity.HIGH, ["CWE-326"]),
        f("http_headers", "csp-missing", "http://127.0.0.1:8089/", "http://127.0.0.1:8089/", cwe=["CWE-693"]),
        f(
            "http_headers",
            "cookie-missing-secure",
            "http://127.0.0.1:8089/",
            "http://127.0.0.1:8089/login#cookie=sid",
            cwe=["CWE-614"],
        ),
        f("sca", "GHSA-462w-v97r-4m45", str(APP), "requirements.txt:2", Severity.CRITICAL, ["CWE-1336"]),
    ]


def _status(name: str = "demo") -> AssessmentStatus:
    return AssessmentStatus(workflow_id="a-1", name=name, status="completed", outcome="completed")


def test_network_findings_are_logical_locations_and_pass_the_upload_rules() -> None:
    from secflow.reports import render_sarif

    text = render_sarif(_status(), _network_findings(), [])
    doc = json.loads(text)
    jsonschema.Draft7Validator(SCHEMA).validate(doc)
    assert github_upload_problems(text) == []
    runs = {r["tool"]["driver"]["name"]: r for r in doc["runs"]}
    if shutil.which("nmap"):  # `nmap --version`; left out (never guessed) where nmap is absent
        nmap_says = subprocess.run(["nmap", "--version"], capture_output=True, text=True, check=True).stdout
        assert f"Nmap version {runs['nmap']['tool']['driver']['version']} " in nmap_says
    else:
        assert "version" not in runs["nmap"]["tool"]["driver"]
    assert runs["portscan"]["tool"]["driver"]["version"] == metadata.version("secflow")
    for tool in ("portscan", "nmap", "tls", "http_headers"):
        for res in runs[tool]["results"]:
            loc = res["locations"][0]
            assert "://" not in loc["physicalLocation"]["artifactLocation"]["uri"]
            assert loc["physicalLocation"]["artifactLocation"]["uriBaseId"] == "SECFLOW_TARGET"
            assert loc["logicalLocations"][0]["kind"] == "resource"
            assert "host" in loc["properties"] and loc["properties"] == {
                k: v for k, v in res["properties"].items() if k in ("url", "host", "port", "protocol")
            }
    [udp] = runs["nmap"]["results"]
    assert udp["locations"][0]["properties"] == {"host": "127.0.0.1", "port": 53, "protocol": "udp"}
    [tls] = runs["tls"]["results"]
    assert tls["locations"][0]["properties"]["host"] == "::1"
    cookie = next(r for r in runs["http_headers"]["results"] if r["ruleId"] == "cookie-missing-secure")
    assert cookie["locations"][0]["properties"]["url"] == "http://127.0.0.1:8089/login#cookie=sid"
    # the file finding in the same log is still relative to the repository root
    [sca] = runs["sca"]["results"]
    assert sca["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "examples/vulnerable-app/requirements.txt"


def test_the_upload_checker_catches_what_github_refuses() -> None:
    from secflow.reports import render_sarif

    doc = json.loads(render_sarif(_status(), _network_findings(), []))
    run = doc["runs"][0]
    run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"] = {"uri": "tcp://127.0.0.1:8080"}
    del run["results"][-1]["locations"][0]["physicalLocation"]
    run["results"].append(dict(run["results"][0]))  # the same fingerprint twice
    doc["runs"] += [json.loads(json.dumps(doc["runs"][1]))] * 20  # 21+ runs, repeated categories
    problems = github_upload_problems(json.dumps(doc))
    assert any("not a file" in p for p in problems)
    assert any("no physicalLocation" in p for p in problems)
    assert any("fingerprint repeated" in p for p in problems)
    assert any("runs (1..20 allowed)" in p for p in problems)
    assert any("category" in p for p in problems)


def test_a_run_keeps_the_most_severe_results_within_githubs_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import secflow.reports.sarif as sarif
    from secflow.findings import Finding, Severity

    monkeypatch.setattr(sarif, "MAX_RESULTS_PER_RUN", 3)  # GitHub's 25,000, scaled down
    findings = [
        Finding.new(tool="bandit", rule_id=f"B{n}", title="t", severity=sev, target=str(APP), location=f"app.py:{n}")
        for n, sev in enumerate([Severity.LOW, Severity.HIGH, Severity.INFO, Severity.CRITICAL, Severity.MEDIUM], start=1)
    ]
    [run] = json.loads(sarif.render_sarif(_status(), findings, []))["runs"]
    assert sorted(r["properties"]["severity"] for r in run["results"]) == ["critical", "high", "medium"]
    [note] = run["invocations"][0]["toolExecutionNotifications"]
    assert note["descriptor"]["id"] == "results-limit" and note["message"]["text"].startswith("2 less severe")
