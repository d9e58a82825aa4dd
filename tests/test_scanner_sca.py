"""The `sca` tool against a local OSV stand-in (real wire format, real advisories, scripted faults)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from temporalio.client import Client

from activities.runner import ToolContext
from activities.scanners.sca import collect_dependencies, cvss2_base_score, cvss3_base_score, fixed_version, sca_tool
from secflow.errors import ScopeViolation
from secflow.models import StageTaskInput
from secflow.retries import RETRY_TABLE
from secflow.spec import SpecError
from secflow.store import open_store
from secflow.tools import RetryClass
from tests.helpers import final_status, make_spec, start
from tests.osv_standin import Fault, OsvStandin

REQUIREMENTS = """\
# pinned, old, vulnerable
Jinja2==2.10  # templating
PyYAML==5.3 ; python_version >= "3"
requests[security]==2.19.0 \\
    --hash=sha256:0000000000000000000000000000000000000000000000000000000000000000
urllib3==1.24.1
flask>=2.0
-r requirements-dev.txt
-r ../outside.txt
"""
DEV = "click==8.1.7\n"
EXPECTED = {
    ("GHSA-462w-v97r-4m45", "requirements.txt:2"),
    ("PYSEC-2019-217", "requirements.txt:2"),
    ("GHSA-g3rq-g295-4j3m", "requirements.txt:2"),
    ("GHSA-8q59-q68h-6hv4", "requirements.txt:3"),
    ("GHSA-x84v-xcm2-53pg", "requirements.txt:4"),
    ("GHSA-mh33-7rrq-662w", "requirements.txt:6"),
}


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    (root / "requirements.txt").write_text(REQUIREMENTS)
    (root / "requirements-dev.txt").write_text(DEV)
    (tmp_path / "outside.txt").write_text("pyyaml==3.10\n")  # must never be read
    return root


@pytest.fixture
def osv(monkeypatch: pytest.MonkeyPatch):
    servers: list[OsvStandin] = []

    def make(**kwargs: object) -> OsvStandin:
        server = OsvStandin(**kwargs)  # type: ignore[arg-type]
        servers.append(server)
        # The in-process worker reads this at call time.
        monkeypatch.setenv("SECFLOW_OSV_URL", server.url)
        # These tests are about the activity's own recovery (a failed attempt resumes from
        # its checkpoint): one try per request inside the transport, so a scripted 503
        # fails the attempt. Riding through with the transport's retries is
        # tests/test_degraded_dependency.py's subject.
        monkeypatch.setenv("SECFLOW_HTTP_OSV_RETRIES", "1")
        return server

    yield make
    for server in servers:
        server.close()


def sca_spec(root: Path, *, retry: dict | None = None, options: dict | None = None):
    stage = {"id": "deps", "kind": "sca", "tool": "sca", "options": options or {}}
    stage["retry"] = {"initial_interval": "100ms", **(retry or {})}
    return make_spec([{"path": str(root)}], [stage], scope={"allow": [str(root)]})


# --- reading manifests and records (no network) ------------------------------------------
def test_requirements_pins_includes_and_lockfiles(app: Path) -> None:
    (app / "poetry.lock").write_text(
        '[[package]]\nname = "Jinja2"\nversion = "2.10"\n\n[package.dependencies]\nMarkupSafe = ">=0.23"\n\n'
        '[[package]]\nname = "markupsafe"\nversion = "1.1.1"\n'
    )
    (app / "Pipfile.lock").write_text(json.dumps(
        {"_meta": {}, "default": {"urllib3": {"version": "==1.24.1"}, "mylib": {"git": "https://example.invalid/x.git"}},
         "develop": {}}, indent=4))
    found = collect_dependencies(app)
    pins = {(d.name, d.version, d.location) for d in found.dependencies}
    assert ("jinja2", "2.10", "requirements.txt:2") in pins
    assert ("pyyaml", "5.3", "requirements.txt:3") in pins
    assert ("requests", "2.19.0", "requirements.txt:4") in pins  # continuation line + --hash
    assert ("urllib3", "1.24.1", "requirements.txt:6") in pins
    assert ("click", "8.1.7", "requirements-dev.txt:1") in pins  # -r include inside the target
    assert ("jinja2", "2.10", "poetry.lock:2") in pins
    assert ("markupsafe", "1.1.1", "poetry.lock:9") in pins
    assert ("urllib3", "1.24.1", "Pipfile.lock:4") in pins
    assert not any(v == "3.10" for _, v, _ in pins), "the include outside the target was followed"
    notes = "\n".join(found.skipped)
    assert "requirements.txt:7" in notes and "not pinned" in notes  # flask>=2.0
    assert "outside the target" in notes
    assert "mylib" in notes


def test_cvss_scores_and_fixed_versions() -> None:
    assert cvss3_base_score("CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:N/A:N") == 8.6
    assert cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H") == 9.8
    assert cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N") == 7.5
    assert cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:L") == 5.3
    assert cvss3_base_score("CVSS:3.1/AV:X") is None
    assert cvss2_base_score("AV:N/AC:L/Au:N/C:P/I:P/A:P") == 7.5
    record = {"affected": [{"package": {"ecosystem": "PyPI", "name": "Jinja2"},
                            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.10.1"},
                                                                        {"introduced": "3.0.0"}, {"fixed": "3.1.3"}]}]}]}
    assert fixed_version(record, "jinja2", "2.10") == "2.10.1"
    assert fixed_version(record, "jinja2", "3.1.2") == "3.1.3"
    assert fixed_version(record, "jinja2", "3.1.3") is None


async def test_path_outside_scope_is_refused(app: Path, tmp_path: Path) -> None:
    # At the edge: the spec validator refuses it and nothing starts.
    with pytest.raises(SpecError) as err:
        make_spec([{"path": str(app)}], [{"id": "deps", "kind": "sca"}], scope={"allow": [str(tmp_path / "elsewhere")]})
    assert "targets[0].path" in str(err.value)
    # In depth: the tool itself refuses before reading anything.
    inp = StageTaskInput(
        assessment_id="a", stage_id="deps", kind="sca", tool="sca", target=str(app), target_kind="path",
        scope=[str(tmp_path / "elsewhere")], retry=RETRY_TABLE[RetryClass.HTTP_API],
    )
    with pytest.raises(ScopeViolation):
        await sca_tool(ToolContext(inp, open_store(), None))


# --- in a real workflow -------------------------------------------------------------------
async def test_real_findings_from_old_pins(client: Client, worker: str, app: Path, osv) -> None:
    server = osv(page_size=1)  # jinja2 2.10 has three advisories: three pages
    handle = await start(client, sca_spec(app, options={"batch_size": 2}), worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    findings = [f for f in open_store().list_findings(handle.id) if f.tool == "sca"]
    assert {(f.rule_id, f.location) for f in findings} == EXPECTED
    by_id = {f.rule_id: f for f in findings}

    ghsa = by_id["GHSA-462w-v97r-4m45"]
    assert ghsa.title == "jinja2 2.10: Jinja2 sandbox escape via string formatting"
    assert ghsa.cve == ["CVE-2019-10906"] and ghsa.cwe == ["CWE-693"]
    assert ghsa.severity.value == "high"  # CVSS 8.6
    assert ghsa.evidence.startswith("jinja2==2.10; fixed in 2.10.1")
    assert by_id["PYSEC-2019-217"].severity.value == "medium"  # no CVSS in the record
    assert by_id["GHSA-g3rq-g295-4j3m"].severity.value == "medium"  # 5.3
    assert by_id["GHSA-8q59-q68h-6hv4"].severity.value == "critical"  # 9.8
    assert by_id["GHSA-8q59-q68h-6hv4"].evidence.startswith("pyyaml==5.3; fixed in 5.4")
    assert by_id["GHSA-x84v-xcm2-53pg"].cwe == ["CWE-522"]
    assert by_id["GHSA-mh33-7rrq-662w"].cve == ["CVE-2019-11324"]

    assert status.stages["deps"].findings == len(EXPECTED)
    # 5 distinct pins in batches of 2 = 3 batches, plus two more pages for jinja2's advisories
    assert server.count("POST", "/v1/querybatch") == 5
    assert server.count("GET", "/v1/vulns/") == 6
    assert status.stages["deps"].outputs["dependencies"] == "5"


async def test_503_then_200_recovers_with_a_retry(client: Client, worker: str, app: Path, osv) -> None:
    server = osv(faults={"querybatch": [Fault(503)]})
    handle = await start(client, sca_spec(app), worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    assert status.stages["deps"].attempts == 2
    assert server.count("POST", "/v1/querybatch") == 2
    errors = open_store().list_errors(handle.id)
    assert [(e.category, e.attempt, e.outcome) for e in errors] == [("transient", 1, "recovered")]
    assert errors[0].dependency == "osv", "the ledger names the HTTP dependency that failed"
    assert len([f for f in open_store().list_findings(handle.id) if f.tool == "sca"]) == len(EXPECTED)


async def test_429_retry_after_is_honoured(client: Client, worker: str, app: Path, osv) -> None:
    server = osv(faults={"vulns": [Fault(429, retry_after="2")]})
    started = time.monotonic()
    handle = await start(client, sca_spec(app), worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    assert status.stages["deps"].attempts == 2
    assert time.monotonic() - started >= 2.0, "the retry must wait for Retry-After, not the 100ms backoff"
    assert server.count("POST", "/v1/querybatch") == 2


async def test_retry_resumes_after_the_last_finished_batch(client: Client, worker: str, app: Path, osv) -> None:
    # batches of one pin: the third querybatch fails once; batches 1-2 must not be asked again
    server = osv(faults={"querybatch": [Fault.passthrough(), Fault.passthrough(), Fault(503)]})
    handle = await start(client, sca_spec(app, options={"batch_size": 1}), worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    assert status.stages["deps"].attempts == 2
    asked = [r.body["queries"][0]["package"]["name"] for r in server.requests if r.method == "POST"]
    # 5 pins: 2 done + 1 failed in attempt 1, then batches 3..5 in attempt 2 = 6 (not 8)
    assert asked == ["click", "jinja2", "pyyaml", "pyyaml", "requests", "urllib3"], asked
    assert status.stages["deps"].findings == len(EXPECTED)
    assert {(f.rule_id, f.location) for f in open_store().list_findings(handle.id) if f.tool == "sca"} == EXPECTED


async def test_401_is_permanent_and_not_retried(client: Client, worker: str, app: Path, osv) -> None:
    server = osv(faults={"querybatch": [Fault(401, body={"code": 16, "message": "unauthenticated"})] * 5})
    handle = await start(client, sca_spec(app), worker)
    status = await final_status(handle)
    assert status.outcome == "failed"
    assert status.stages["deps"].attempts == 1
    assert status.stages["deps"].error.category == "permanent"
    assert server.count("POST", "/v1/querybatch") == 1


async def test_truncated_body_is_an_external_tool_failure(client: Client, worker: str, app: Path, osv) -> None:
    osv(faults={"querybatch": [Fault.truncated(), Fault.truncated()]})
    handle = await start(client, sca_spec(app, retry={"max_attempts": 2}), worker)
    status = await final_status(handle)
    assert status.outcome == "failed"
    assert status.stages["deps"].error.category == "external_tool"
    assert status.stages["deps"].attempts == 2
    assert "malformed body" in status.stages["deps"].error.message
