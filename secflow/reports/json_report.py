"""JSON for machines: `{"report_version", "assessment", "summary", "findings", "errors"}`.

Keys are stable: new keys may be added, existing ones keep their name and meaning.
`assessment` is the status model, `findings` the Finding model, `errors` the ErrorEvent
model, each dumped as JSON with free text redacted; findings and errors in a stable order.
A finding's `enrichment` (null when the assessment had no `cve-enrich` data for it) holds
one entry per CVE; `summary.enrichment` counts current, stale and partial CVEs and lists
the stale ones with their age and the partial ones with their reason.
"""

from __future__ import annotations

import json

from secflow.findings import Finding
from secflow.models import AssessmentStatus
from secflow.reports._common import degraded_stages, enriched_cves, enrichment_summary, outcome_of, prepare, severity_counts
from secflow.store import ErrorEvent

REPORT_VERSION = 1


def render_json(status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]) -> str:
    status, findings, errors = prepare(status, findings, errors)
    outcomes: dict[str, int] = {}
    for e in errors:
        outcomes[outcome_of(e)] = outcomes.get(outcome_of(e), 0) + 1
    doc = {
        "report_version": REPORT_VERSION,
        "assessment": status.model_dump(mode="json"),
        "summary": {
            "findings": len(findings),
            "by_severity": severity_counts(findings),
            "errors": len(errors),
            "errors_by_outcome": dict(sorted(outcomes.items())),
            "degraded": [
                {"stage": d.stage_id, "state": d.state, "kind": d.kind, "tool": d.tool, "reason": d.reason}
                for d in degraded_stages(status)
            ],
            "enrichment": _enrichment(findings),
        },
        "findings": [f.model_dump(mode="json") for f in findings],
        "errors": [{**e.model_dump(mode="json"), "outcome": outcome_of(e)} for e in errors],
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
