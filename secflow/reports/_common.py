"""What every report format shares: redacted copies of the inputs and the summaries."""

from __future__ import annotations

from dataclasses import dataclass

from secflow.findings import SEVERITY_ORDER, Finding
from secflow.models import AssessmentStatus, StageStatus
from secflow.redaction import redact
from secflow.store import ErrorEvent

# Stage states a reader must be told about, with why.
DEGRADED_STATES = frozenset({"skipped", "partial", "failed", "cancelled"})


def clean(text: object) -> str:
    return redact(str(text)) if text else ""


def redact_finding(f: Finding) -> Finding:
    """A copy with every free-text field redacted (evidence should already be; be sure)."""
    return f.model_copy(
        update={
            "title": clean(f.title),
            "evidence": clean(f.evidence),
            "target": clean(f.target),
            "location": clean(f.location),
        }
    )


def redact_error(e: ErrorEvent) -> ErrorEvent:
    return e.model_copy(update={"message": clean(e.message), "target": clean(e.target)})


def redact_status(status: AssessmentStatus) -> AssessmentStatus:
    """A deep copy of the status with reasons, error messages and notes redacted."""
    s = status.model_copy(deep=True)
    s.reason = clean(s.reason)
    for st in s.stages.values():
        st.reason = clean(st.reason)
        if st.error:
            st.error.message = clean(st.error.message)
        for ts in st.targets.values():
            if ts.error:
                ts.error.message = clean(ts.error.message)
        st.targets = {clean(k): v for k, v in st.targets.items()}
    for i in s.interventions:
        i.reason = clean(i.reason)
        i.note = clean(i.note)
        i.by = clean(i.by)
    for c in s.compensations:
        if c.error:
            c.error.message = clean(c.error.message)
    return s


def prepare(
    status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]
) -> tuple[AssessmentStatus, list[Finding], list[ErrorEvent]]:
    """Redacted inputs in a stable order: findings by severity then location, errors by time."""
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    fs = sorted((redact_finding(f) for f in findings), key=lambda f: (rank[f.severity], f.tool, f.rule_id, f.location, f.fingerprint))
    es = sorted((redact_error(e) for e in errors), key=lambda e: (e.occurred_at, e.stage_id, e.target, e.attempt, e.event_id))
    return redact_status(status), fs, es


def severity_counts(findings: list[Finding]) -> dict[str, int]:
    counts = {s.value: 0 for s in SEVERITY_ORDER}
    for f in findings:
        counts[f.severity.value] += 1
    return counts


def stage_note(st: StageStatus) -> str:
    """Why a stage is not simply `succeeded`, in one sentence (empty when there is nothing to say)."""
    if st.reason:
        return st.reason
    if st.error:
        return f"{st.error.category}: {st.error.message}"
    failed = [f"{t} ({ts.error.category}: {ts.error.message})" if ts.error else t for t, ts in st.targets.items() if ts.state in ("failed", "skipped", "cancelled")]
    if failed:
        return "targets not scanned: " + "; ".join(failed)
    return ""


@dataclass(frozen=True)
class DegradedStage:
    stage_id: str
    state: str
    kind: str
    tool: str
    reason: str


def degraded_stages(status: AssessmentStatus) -> list[DegradedStage]:
    """Stages that were skipped, partial, failed, cancelled or ran degraded, with why."""
    out = []
    for sid, st in status.stages.items():
        if st.state in DEGRADED_STATES or st.degraded:
            state = st.state + (" (degraded)" if st.degraded and st.state not in ("partial",) else "")
            out.append(DegradedStage(sid, state, st.kind, st.tool, stage_note(st) or "no reason recorded"))
    return out


def outcome_of(e: ErrorEvent) -> str:
    return e.outcome or "pending"


def refs(f: Finding) -> str:
    return ", ".join([*f.cwe, *f.cve])


