"""SARIF 2.1.0 for code-scanning tools (validates against the OASIS schema; uploads to GitHub).

Structure decisions:
- one `run` per tool (driver name = SecFlow tool name), so a code-scanning service keeps
  each tool's alerts apart; an assessment with no tool at all still gets one empty
  `secflow` run, so an upload says "nothing found" rather than being refused;
- `automationDetails.id` is `<spec name>/<assessment id>`: the spec name is the category
  (stable across runs of the same spec, so alerts are tracked from one run to the next)
  and the assessment id the instance;
- rules are the distinct `rule_id`s of the tool's findings: `shortDescription`, `help`
  (text + markdown), `defaultConfiguration.level` and `properties.security-severity`
  from the most severe finding of the rule, `properties.tags` with `security`, the CWE
  ids (`CWE-79`) and GitHub's `external/cwe/cwe-079` form;
- results carry `ruleId`/`ruleIndex`, `level` (critical/high -> error, medium ->
  warning, low/info -> note), a message, exactly one location and
  `partialFingerprints["secflowFingerprint/v1"]` = the finding's fingerprint, which is
  what code scanning uses to match an alert across runs;
- a `path:line` location becomes a relative `artifactLocation` (uriBaseId `SRCROOT`, the
  scanned directory) plus `region.startLine`; a URL becomes an absolute artifact URI, a
  `host:port` the URI `tcp://host:port`, each with a `logicalLocation` naming it;
- CVE enrichment (the `cve-enrich` stage) goes into each result's
  `properties.enrichment` (per CVE: CVSS v3.x/v4.0 score and vector, CWE, description,
  EPSS probability and percentile, KEV flag and due date, when it was fetched, and
  `stale`/`stale_age_seconds`/`partial` with the reason); the result message says when it
  is stale or partial. A rule's `security-severity` is the highest CVSS base score of its
  findings' CVEs where there is one (GitHub ranks alerts by it), else the severity table;
- `invocations[0]` says whether the tool's stages ran cleanly; every error SecFlow met
  with the tool is a `toolExecutionNotification` (recovered ones at level `note`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from importlib import metadata
from urllib.parse import quote, urlsplit

from secflow.findings import SEVERITY_ORDER, Finding, Severity
from secflow.models import AssessmentStatus
from secflow.reports._common import DEGRADED_STATES, age_text, enrichment_summary, outcome_of, prepare, stage_note
from secflow.store import ErrorEvent

SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
FINGERPRINT_KEY = "secflowFingerprint/v1"
SRCROOT = "SRCROOT"

LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
# GitHub: > 9.0 critical, 7.0-8.9 high, 4.0-6.9 medium, 0.1-3.9 low.
SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "2.0",
    Severity.INFO: "0.0",
}
PRECISION = {"high": "high", "medium": "medium", "low": "low"}
# ErrorEvent.outcome -> notification level: what was recovered is a note, the rest matters.
NOTIFICATION_LEVEL = {"recovered": "note", "degraded": "warning", "skipped": "warning", "pending": "warning", "failed": "error"}

_FILE_LINE = re.compile(r"^(?P<path>.+?):(?P<line>[0-9]+)(?::(?P<col>[0-9]+))?$")
_CWE = re.compile(r"^CWE-([0-9]+)$", re.IGNORECASE)
_URI_SAFE = "/:?#[]@!$&'()*+,;=%~"


def _version() -> str | None:
    try:
        return metadata.version("secflow")
    except metadata.PackageNotFoundError:  # running from a source tree: say nothing rather than guess
        return None


def _is_host(name: str, target: str) -> bool:
    """Whether `name` (the part before `:N`) is a host rather than a file path."""
    if "/" in name or "\\" in name:
        return False
    if name.startswith("[") and name.endswith("]"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if name.lower() == "localhost":
        return True
    target_host = urlsplit(target).hostname if "://" in target else target.split(":")[0]
    return bool(target_host) and name.lower() == str(target_host).lower().strip("[]")


def _uri(text: str) -> str:
    return quote(text, safe=_URI_SAFE)


def location(f: Finding) -> dict:
    """The SARIF location of a finding (see the module docstring)."""
    loc = f.location.strip()
    if "://" in loc:
        return {
            "physicalLocation": {"artifactLocation": {"uri": _uri(loc)}},
            "logicalLocations": [{"name": loc, "fullyQualifiedName": loc, "kind": "resource"}],
        }
    m = _FILE_LINE.match(loc)
    if m and not _is_host(m["path"], f.target):
        region: dict = {"startLine": max(1, int(m["line"]))}
        if m["col"]:
            region["startColumn"] = max(1, int(m["col"]))
        path = m["path"].replace("\\", "/")
        # A relative path is relative to the scanned directory (SRCROOT); an absolute one stays as is.
        artifact = {"uri": _uri(path)} if path.startswith("/") else {"uri": _uri(path), "uriBaseId": SRCROOT}
        return {"physicalLocation": {"artifactLocation": artifact, "region": region}}
    if m:  # host:port
        return {
            "physicalLocation": {"artifactLocation": {"uri": _uri(f"tcp://{loc}")}},
            "logicalLocations": [{"name": loc, "fullyQualifiedName": f"tcp://{loc}", "kind": "resource"}],
        }
    if loc:  # a bare path (a whole file) or a name
        artifact = {"uri": _uri(loc)} if loc.startswith("/") else {"uri": _uri(loc), "uriBaseId": SRCROOT}
        return {
            "physicalLocation": {"artifactLocation": artifact},
            "logicalLocations": [{"name": loc, "kind": "resource"}],
        }
    return {"logicalLocations": [{"name": f.target or f.tool, "kind": "resource"}]}


def _cwe_tags(cwes: list[str]) -> list[str]:
    tags = []
    for c in cwes:
        m = _CWE.match(c.strip())
        if m:
            tags += [f"CWE-{int(m[1])}", f"external/cwe/cwe-{int(m[1]):03d}"]
        else:
            tags.append(c)
    return tags


def _help(f: Finding) -> tuple[str, str]:
    lines_text = [f.title]
    lines_md = [f"**{_md(f.title)}**", ""]
    for c in f.cwe:
        m = _CWE.match(c.strip())
        if m:
            url = f"https://cwe.mitre.org/data/definitions/{int(m[1])}.html"
            lines_text.append(f"{c}: {url}")
            lines_md.append(f"- [{c}]({url})")
    for c in f.cve:
        url = f"https://nvd.nist.gov/vuln/detail/{quote(c)}"
        lines_text.append(f"{c}: {url}")
        lines_md.append(f"- [{c}]({url})")
    if re.match(r"^(GHSA|PYSEC|OSV)-", f.rule_id):
        url = f"https://osv.dev/vulnerability/{quote(f.rule_id)}"
        lines_text.append(f"Advisory: {url}")
        lines_md.append(f"- Advisory: [{f.rule_id}]({url})")
    return "\n".join(lines_text), "\n".join(lines_md)


def _md(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", text)


def _rules(findings: list[Finding]) -> list[dict]:
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    by_rule: dict[str, list[Finding]] = {}
    for f in findings:
        by_rule.setdefault(f.rule_id, []).append(f)
    rules = []
    for rule_id in sorted(by_rule):
        group = by_rule[rule_id]
        worst = min(group, key=lambda f: (rank[f.severity], f.title))
        cwes = sorted({c for f in group for c in f.cwe})
        cves = sorted({c for f in group for c in f.cve})
        text, markdown = _help(worst)
        props: dict = {
            "tags": ["security", *_cwe_tags(cwes), *cves],
            "security-severity": _security_severity(group, worst),
            "precision": PRECISION.get(worst.confidence.value, "medium"),
            "problem.severity": LEVEL[worst.severity] if LEVEL[worst.severity] != "note" else "recommendation",
        }
        if cwes:
            props["cwe"] = cwes
        if cves:
            props["cve"] = cves
        rules.append(
            {
                "id": rule_id,
                "name": rule_id,
                "shortDescription": {"text": worst.title[:1024] or rule_id},
                "fullDescription": {"text": worst.title or rule_id},
                "help": {"text": text, "markdown": markdown},
                "defaultConfiguration": {"level": LEVEL[worst.severity]},
                "properties": props,
            }
        )
    return rules


def _cvss(findings: list[Finding]) -> float | None:
    scores = [f.enrichment.cvss_score for f in findings if f.enrichment is not None and f.enrichment.cvss_score is not None]
    return max(scores) if scores else None


def _security_severity(group: list[Finding], worst: Finding) -> str:
    """The CVSS base score where enrichment has one (what GitHub ranks by), else the table."""
    cvss = _cvss(group)
    return f"{cvss:.1f}" if cvss is not None else SECURITY_SEVERITY[worst.severity]


def _enrichment_props(f: Finding) -> dict | None:
    if f.enrichment is None:
        return None
    cves = [c.model_dump(mode="json", exclude_none=True) for c in f.enrichment.cves]
    out: dict = {"cves": cves, "partial": f.enrichment.partial, "stale": f.enrichment.stale}
    if f.enrichment.unreadable:
        out["unreadable"] = f.enrichment.unreadable
    return out


def _enrichment_sentence(f: Finding) -> str:
    """A few words for the result message: the scores, and a warning when not current."""
    if f.enrichment is None or not f.enrichment.cves:
        return ""
    bits = []
    for c in f.enrichment.cves:
        facts = []
        if c.cvss_score is not None:
            facts.append(f"CVSS {c.cvss_score:.1f}")
        if c.epss_probability is not None:
            facts.append(f"EPSS {c.epss_probability:.3f}")
        if c.in_kev:
            facts.append("in CISA KEV" + (f" (due {c.kev_due_date.isoformat()})" if c.kev_due_date else ""))
        if c.stale:
            facts.append(f"STALE data, {age_text(c.stale_age_seconds)} old")
        if c.partial:
            facts.append(f"PARTIAL data: {c.partial_reason}")
        bits.append(f"{c.cve_id}: {', '.join(facts) or 'no scores published'}")
    return " Enrichment: " + "; ".join(bits) + "."


def _result(f: Finding, rule_index: int) -> dict:
    message = f.title + (f" Evidence: {f.evidence}" if f.evidence else "") + _enrichment_sentence(f)
    props: dict = {
        "severity": f.severity.value,
        "confidence": f.confidence.value,
        "target": f.target,
        "location": f.location,
        "firstSeen": f.first_seen.isoformat(),
        "lastSeen": f.last_seen.isoformat(),
    }
    if f.cwe:
        props["cwe"] = list(f.cwe)
    if f.cve:
        props["cve"] = list(f.cve)
    if f.evidence:
        props["evidence"] = f.evidence
    enrichment = _enrichment_props(f)
    if enrichment is not None:
        props["enrichment"] = enrichment
        cvss = _cvss([f])
        if cvss is not None:
            props["security-severity"] = f"{cvss:.1f}"
    return {
        "ruleId": f.rule_id,
        "ruleIndex": rule_index,
        "level": LEVEL[f.severity],
        "message": {"text": message},
        "locations": [location(f)],
        "partialFingerprints": {FINGERPRINT_KEY: f.fingerprint},
        "properties": props,
    }


def _notification(e: ErrorEvent) -> dict:
    outcome = outcome_of(e)
    target = f" on {e.target}" if e.target else ""
    return {
        "descriptor": {"id": e.category},
        "level": NOTIFICATION_LEVEL.get(outcome, "warning"),
        "message": {"text": f"stage {e.stage_id}{target}, attempt {e.attempt}: {e.category} error ({outcome}): {e.message}"},
        "timeUtc": e.occurred_at.isoformat().replace("+00:00", "Z"),
        "properties": {
            "eventId": e.event_id,
            "stage": e.stage_id,
            "target": e.target,
            "attempt": e.attempt,
            "category": e.category,
            "retryable": e.retryable,
            "outcome": outcome,
        },
    }


def _tools(status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]) -> list[str]:
    tools = {st.tool for st in status.stages.values() if st.tool and st.kind != "report"}
    tools |= {f.tool for f in findings} | {e.tool for e in errors if e.tool}
    return sorted(tools)


def _run(tool: str, status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]) -> dict:
    mine = [f for f in findings if f.tool == tool]
    rules = _rules(mine)
    index = {r["id"]: i for i, r in enumerate(rules)}
    stages = {sid: st for sid, st in status.stages.items() if st.tool == tool}
    my_errors = [e for e in errors if e.tool == tool]
    unclean = [
        f"stage {sid} {st.state}{' (degraded)' if st.degraded else ''}: {stage_note(st) or 'no reason recorded'}"
        for sid, st in stages.items()
        if st.state in DEGRADED_STATES or st.degraded
    ]
    unresolved = [e for e in my_errors if outcome_of(e) != "recovered"]
    invocation: dict = {
        "executionSuccessful": not unclean and not unresolved,
        "toolExecutionNotifications": [_notification(e) for e in my_errors],
    }
    if unclean:
        invocation["exitCodeDescription"] = "; ".join(unclean)[:2000]
    run: dict = {
        "tool": {
            "driver": {
                "name": tool,
                "fullName": f"SecFlow {tool}",
                "organization": "SecFlow",
                "rules": rules,
            }
        },
        "automationDetails": {
            "id": f"{status.name}/{status.workflow_id}",
            "description": {"text": f"SecFlow assessment {status.workflow_id} ({status.name}), tool {tool}"},
        },
        "invocations": [invocation],
        "originalUriBaseIds": {SRCROOT: {"description": {"text": "the scanned directory (the finding's target)"}}},
        "columnKind": "unicodeCodePoints",
        "results": [_result(f, index[f.rule_id]) for f in mine],
        "properties": {
            "assessment": status.workflow_id,
            "assessmentStatus": status.status,
            "stages": {sid: {"state": st.state, "degraded": st.degraded, "reason": stage_note(st)} for sid, st in stages.items()},
        },
    }
    summary = enrichment_summary(mine)
    if summary.any:
        run["properties"]["enrichment"] = {
            "cves": summary.total,
            "current": summary.enriched,
            "stale": summary.stale,
            "partial": summary.partial,
            "oldestStaleAgeSeconds": summary.oldest_stale_age_seconds,
        }
    if _version():
        run["tool"]["driver"]["semanticVersion"] = _version()
    if status.started_at:
        invocation["startTimeUtc"] = status.started_at.isoformat().replace("+00:00", "Z")
    if status.finished_at:
        invocation["endTimeUtc"] = status.finished_at.isoformat().replace("+00:00", "Z")
    return run


def render_sarif(status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]) -> str:
    """The assessment as one SARIF 2.1.0 log, one run per tool."""
    status, findings, errors = prepare(status, findings, errors)
    tools = _tools(status, findings, errors) or ["secflow"]
    doc = {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [_run(tool, status, findings, errors) for tool in tools],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


__all__ = ["FINGERPRINT_KEY", "LEVEL", "SECURITY_SEVERITY", "location", "render_sarif"]
