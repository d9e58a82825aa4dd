"""JSON for machines: `{"report_version", "assessment", "summary", "findings", "errors"}`.

Keys are stable: new keys may be added, existing ones keep their name and meaning.
`assessment` is the status model, `findings` the Finding model, `errors` the ErrorEvent
model, each dumped as JSON with free text redacted; findings and errors in a stable order.
"""

from __future__ import annotations

import json

from secflow.findings import Finding
from secflow.models import AssessmentStatus
from secflow.reports._common import degraded_stages, outcome_of, prepare, severity_counts
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
                {"stage": d.stage_id, "state": d.state, "kind": d.kind, "tool": d.tool, "reason": d.reason} for d in degraded_stages(status)
            ],
        },
        "findings": [f.model_dump(mode="json") for f in findings],
        "errors": [{**e.model_dump(mode="json"), "outcome": outcome_of(e)} for e in errors],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
