"""JSON for machines: `{"report_version", "assessment", "summary", "findings", "errors"}`.

Keys are stable: new keys may be added, existing ones keep their name and meaning.
`assessment` is the status model, `findings` the Finding model, `errors` the ErrorEvent
model, each dumped as JSON with free text redacted; findings and errors in a stable order.
A finding's `enrichment` (null when the assessment had no `cve-enrich` data for it) holds
one entry per CVE; `summary.enrichment` counts current, stale and partial CVEs and lists
the stale ones with their age and the partial ones with their reason.

`final` is false while the assessment runs (`snapshot` then says so in a sentence); the
report stage's file is rewritten with the final status when the assessment ends. Each
finding carries `remediation` (`text`, `references` [{`label`, `url`}]) and `issue`, the
index into `issues`: the findings grouped by target, location and CWE, so the same
problem found by several tools (bandit and semgrep on one line) is one issue naming every
tool (`tools`, `rules`, `fingerprints`). `summary.issues` counts them, `summary.by_severity`
counts findings as before and `summary.issues_by_severity` counts issues.
"""

from __future__ import annotations

import json

from secflow.findings import Finding
from secflow.models import AssessmentStatus
from secflow.reports._common import (
    Issue,
    degraded_stages,
    enriched_cves,
    enrichment_summary,
    group_issues,
    is_final,
    issue_severity_counts,
    outcome_of,
    prepare,
    severity_counts,
    snapshot_note,
)
from secflow.reports.remediation import Remediation
from secflow.store import ErrorEvent

REPORT_VERSION = 1


def render_json(status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]) -> str:
    status, findings, errors = prepare(status, findings, errors)
    issues = group_issues(findings)
    issue_of = {f.fingerprint: n for n, i in enumerate(issues) for f in i.findings}
    remediation = {f.fingerprint: i.remediation for i in issues for f in i.findings}
    outcomes: dict[str, int] = {}
    for e in errors:
        outcomes[outcome_of(e)] = outcomes.get(outcome_of(e), 0) + 1
    doc = {
        "report_version": REPORT_VERSION,
        "assessment": status.model_dump(mode="json"),
        "summary": {
            "findings": len(findings),
            "by_severity": severity_counts(findings),
            "issues": len(issues),
            "issues_by_severity": issue_severity_counts(issues),
            "errors": len(errors),
            "errors_by_outcome": dict(sorted(outcomes.items())),
            "degraded": [
                {"stage": d.stage_id, "state": d.state, "kind": d.kind, "tool": d.tool, "reason": d.reason}
                for d in degraded_stages(status)
            ],
            "enrichment": _enrichment(findings),
        },
        "findings": [
            {
                **f.model_dump(mode="json"),
                "remediation": _remediation(remediation[f.fingerprint]),
                "issue": issue_of[f.fingerprint],
            }
            for f in findings
        ],
        "errors": [{**e.model_dump(mode="json"), "outcome": outcome_of(e)} for e in errors],
        # added in place, after the original keys (which keep their order)
        "issues": [_issue(i) for i in issues],
        "final": is_final(status),
        "snapshot": snapshot_note(status),
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _enrichment(findings: list[Finding]) -> dict:
    s = enrichment_summary(findings)
    rows = [r.cve for r in enriched_cves(findings)]
    return {
        "cves": s.total,
        "current": s.enriched,
        "stale": [
            {
                "cve": c.cve_id,
                "age_seconds": c.stale_age_seconds,
                "fetched_at": c.fetched_at.isoformat() if c.fetched_at else None,
                "reason": c.stale_reason,
            }
            for c in rows
            if c.stale
        ],
        "partial": [{"cve": c.cve_id, "reason": c.partial_reason} for c in rows if c.partial],
        "oldest_stale_age_seconds": s.oldest_stale_age_seconds,
        "unreadable": list(s.unreadable),
    }


def _remediation(r: Remediation) -> dict:
    return {"text": r.text, "references": [{"label": ref.label, "url": ref.url} for ref in r.references]}


def _issue(i: Issue) -> dict:
    f = i.lead
    return {
        "severity": f.severity.value,
        "title": f.title,
        "target": f.target,
        "location": f.location,
        "cwe": list(i.cwe),
        "cve": list(i.cve),
        "tools": list(i.tools),
        "rules": list(i.rules),
        "fingerprints": [x.fingerprint for x in i.findings],
        "remediation": _remediation(i.remediation),
    }
