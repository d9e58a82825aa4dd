"""What every report format shares: redacted copies of the inputs and the summaries."""

from __future__ import annotations

from dataclasses import dataclass

from secflow import guidance
from secflow.findings import SEVERITY_ORDER, CveEnrichment, Finding, FindingEnrichment
from secflow.models import AssessmentStatus, StageStatus
from secflow.redaction import redact
from secflow.reports.remediation import Remediation, normalise_cwe, remediation_for
from secflow.store import ErrorEvent

# Stage states a reader must be told about, with why.
DEGRADED_STATES = frozenset({"skipped", "partial", "unverified", "failed", "cancelled"})


def clean(text: object) -> str:
    return redact(str(text)) if text else ""


def _redact_enrichment(e: FindingEnrichment | None) -> FindingEnrichment | None:
    if e is None:
        return None
    cves = [
        c.model_copy(
            update={
                "description": clean(c.description),
                "stale_reason": clean(c.stale_reason),
                "partial_reason": clean(c.partial_reason),
            }
        )
        for c in e.cves
    ]
    return e.model_copy(update={"cves": cves, "unreadable": clean(e.unreadable)})


def redact_finding(f: Finding) -> Finding:
    """A copy with every free-text field redacted (evidence should already be; be sure)."""
    return f.model_copy(
        update={
            "title": clean(f.title),
            "evidence": clean(f.evidence),
            "target": clean(f.target),
            "location": clean(f.location),
            "enrichment": _redact_enrichment(f.enrichment),
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
        for failure in st.recent_failures:
            failure.target = clean(failure.target)
            failure.message = clean(failure.message)
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
    fs = sorted(
        (redact_finding(f) for f in findings), key=lambda f: (rank[f.severity], f.tool, f.rule_id, f.location, f.fingerprint)
    )
    es = sorted((redact_error(e) for e in errors), key=lambda e: (e.occurred_at, e.stage_id, e.target, e.attempt, e.event_id))
    return redact_status(status), fs, es


def severity_counts(findings: list[Finding]) -> dict[str, int]:
    counts = {s.value: 0 for s in SEVERITY_ORDER}
    for f in findings:
        counts[f.severity.value] += 1
    return counts


def stage_note(st: StageStatus) -> str:
    """Why a stage is not simply `succeeded`, in one sentence (empty when there is nothing to
    say), then its recovery ladder and the recovery's validation when it had any."""
    return "; ".join(part for part in (_why(st), ladder_note(st)) if part)


def ladder_note(st: StageStatus) -> str:
    """`recovery: retry failed > fallback failed > human recovered; validation passed`."""
    parts = []
    if st.ladder:
        parts.append("recovery: " + " > ".join(f"{step.rung} {step.outcome}" for step in st.ladder))
    if st.validation is not None:
        v = st.validation
        parts.append(
            f"validation after {v.after}: passed" if v.passed else f"validation after {v.after} FAILED: {'; '.join(v.problems)}"
        )
    return "; ".join(parts)


def _why(st: StageStatus) -> str:
    if st.reason:
        return st.reason
    if st.error:
        return f"{st.error.category}: {st.error.message}"
    failed = [
        f"{t} ({ts.error.category}: {ts.error.message})" if ts.error else t
        for t, ts in st.targets.items()
        if ts.state in ("failed", "skipped", "cancelled")
    ]
    if failed:
        return "targets not scanned: " + "; ".join(failed)
    not_scanned = sum(st.counts.get(state, 0) for state in ("failed", "skipped", "cancelled"))
    if not_scanned:
        shown = "; ".join(f"{f.target} ({f.category}: {f.message})" for f in st.recent_failures)
        more = f" (the last {len(st.recent_failures)}: {shown})" if shown else ""
        return f"{not_scanned} target(s) not scanned{more}"
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


def rung_of(e: ErrorEvent) -> str:
    """The ladder rung that handled the error last and its outcome (`fallback: failed`),
    or "" for an error recorded before the ladder (secflow/ladder.py)."""
    return f"{e.rung}: {e.rung_outcome or 'handling'}" if e.rung else ""


def refs(f: Finding) -> str:
    return ", ".join([*f.cwe, *f.cve])


# --- CVE enrichment ---------------------------------------------------------------------
@dataclass(frozen=True)
class EnrichedCveRow:
    """One CVE as the reports show it, with the findings (locations) that reference it."""

    cve: CveEnrichment
    locations: tuple[str, ...]


@dataclass(frozen=True)
class EnrichmentSummary:
    total: int
    enriched: int
    stale: int
    partial: int
    oldest_stale_age_seconds: float | None
    unreadable: tuple[str, ...]  # locations of findings whose stored enrichment could not be read

    @property
    def any(self) -> bool:
        return bool(self.total or self.unreadable)


def enriched_cves(findings: list[Finding]) -> list[EnrichedCveRow]:
    """Distinct enriched CVEs, by CVSS (highest first) then id; findings already prepared."""
    by_id: dict[str, CveEnrichment] = {}
    where: dict[str, list[str]] = {}
    for f in findings:
        if f.enrichment is None:
            continue
        for c in f.enrichment.cves:
            by_id.setdefault(c.cve_id, c)
            if f.location not in where.setdefault(c.cve_id, []):
                where[c.cve_id].append(f.location)
    rows = [EnrichedCveRow(c, tuple(where[c.cve_id])) for c in by_id.values()]
    return sorted(rows, key=lambda r: (-(r.cve.cvss_score if r.cve.cvss_score is not None else -1), r.cve.cve_id))


def enrichment_summary(findings: list[Finding]) -> EnrichmentSummary:
    rows = [r.cve for r in enriched_cves(findings)]
    ages = [c.stale_age_seconds for c in rows if c.stale and c.stale_age_seconds is not None]
    return EnrichmentSummary(
        total=len(rows),
        enriched=sum(1 for c in rows if not c.stale and not c.partial),
        stale=sum(1 for c in rows if c.stale),
        partial=sum(1 for c in rows if c.partial),
        oldest_stale_age_seconds=max(ages) if ages else None,
        unreadable=tuple(f.location for f in findings if f.enrichment is not None and f.enrichment.unreadable),
    )


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown age"
    hours = seconds / 3600
    return f"{hours:.1f} h" + (f" ({hours / 24:.1f} days)" if hours >= 48 else "")


def enrichment_headline(s: EnrichmentSummary) -> str:
    """One sentence for the top of a report ("" when no CVE was enriched)."""
    if not s.any:
        return ""
    parts = [
        f"{s.total} CVE{'s' if s.total != 1 else ''} enriched from NVD, FIRST EPSS and CISA KEV: {s.enriched} complete and current"
    ]
    if s.stale:
        parts.append(
            f"{s.stale} STALE (cached data used because a service was unavailable; oldest {age_text(s.oldest_stale_age_seconds)} old)"
        )
    if s.partial:
        parts.append(f"{s.partial} PARTIAL (a service was unavailable and nothing was cached)")
    if s.unreadable:
        parts.append(f"{len(s.unreadable)} finding(s) with unreadable enrichment")
    return "; ".join(parts) + "."


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def cvss_text(c: CveEnrichment) -> str:
    parts = []
    if c.cvss3_score is not None:
        parts.append(
            f"{c.cvss3_score:.1f}"
            + (f" {c.cvss3_severity}" if c.cvss3_severity else "")
            + (f" {c.cvss3_vector}" if c.cvss3_vector else "")
        )
    if c.cvss4_score is not None:
        parts.append(f"{c.cvss4_score:.1f}" + (f" {c.cvss4_vector}" if c.cvss4_vector else " (CVSS v4.0)"))
    if parts:
        return "; ".join(parts)
    return "unknown (NVD data missing)" if c.partial and "NVD" in c.partial_reason else "none published"


def epss_text(c: CveEnrichment) -> str:
    if c.epss_probability is None:
        return "unknown (EPSS data missing)" if c.partial and "EPSS" in c.partial_reason else "no score"
    date = f" on {c.epss_date.isoformat()}" if c.epss_date else ""
    return f"{c.epss_probability:.5f} (percentile {_fmt(c.epss_percentile, 5)}){date}"


def kev_text(c: CveEnrichment) -> str:
    if c.in_kev:
        extra = []
        if c.kev_due_date:
            extra.append(f"due {c.kev_due_date.isoformat()}")
        if c.kev_ransomware:
            extra.append("used by ransomware")
        return "KNOWN EXPLOITED" + (f" ({', '.join(extra)})" if extra else "")
    return "unknown (KEV data missing)" if c.partial and "KEV" in c.partial_reason else "no"


def freshness_text(c: CveEnrichment) -> str:
    """Whether the data can be trusted as current, and if not, why and how stale."""
    fetched = c.fetched_at.isoformat(timespec="seconds") if c.fetched_at else "unknown time"
    if c.stale:
        # The stage's note reads "stale: cached data from ... used because <cause>".
        cause = c.stale_reason.split("used because ", 1)[-1] if c.stale_reason else ""
        return f"STALE: cached data fetched {fetched}, {age_text(c.stale_age_seconds)} old when used" + (
            f", because {cause}" if cause else ""
        )
    if c.partial:
        return f"PARTIAL ({fetched}): {c.partial_reason or 'no reason recorded'}"
    return f"current, fetched {fetched}"


# --- snapshot or final ------------------------------------------------------------------
def is_final(status: AssessmentStatus) -> bool:
    """Whether the status is the assessment's last word (it has an outcome)."""
    return status.outcome is not None


def snapshot_note(status: AssessmentStatus) -> str:
    """One plain sentence for a report of an assessment that has not ended ("" when final)."""
    if is_final(status):
        return ""
    return (
        f"SNAPSHOT: the assessment was still {status.status} when this report was written. "
        "Stages, errors still marked pending, compensations and the finish time may change; "
        "SecFlow rewrites its report files with the final outcome when the assessment ends, "
        f"and `{guidance.CLI} report {status.workflow_id} --format md` renders the current state."
    )


# --- one issue, however many tools found it ----------------------------------------------
@dataclass(frozen=True)
class Issue:
    """Findings of one problem: the same target, location and CWE, from one or more tools.

    The store keeps each tool's finding (its own fingerprint); the reports show the issue
    once and name every tool that found it. `findings` are in report order (worst first)."""

    findings: tuple[Finding, ...]
    remediation: Remediation

    @property
    def lead(self) -> Finding:
        return self.findings[0]

    @property
    def tools(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.tool for f in self.findings))

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f"{f.tool}:{f.rule_id}" for f in self.findings))

    @property
    def cwe(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(normalise_cwe(c) for f in self.findings for c in f.cwe))

    @property
    def cve(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for f in self.findings for c in f.cve))


def group_issues(findings: list[Finding]) -> list[Issue]:
    """Findings (already `prepare`d) grouped into issues: two findings are one issue when
    they share the target and the location and have a CWE in common (bandit B602 and
    semgrep's shell=True rule on one line, both CWE-78). Findings without a CWE stand alone."""
    groups: list[list[Finding]] = []
    index: dict[tuple[str, str, str], int] = {}  # (target, location, CWE) -> group
    for f in findings:
        keys = [(f.target, f.location.strip(), normalise_cwe(c)) for c in f.cwe]
        found = sorted({index[k] for k in keys if k in index})
        if not found:
            groups.append([f])
            g = len(groups) - 1
        else:
            g = found[0]
            groups[g].append(f)
            for other in found[1:]:  # this finding joins two issues: one issue now
                groups[g] += groups[other]
                groups[other] = []
                for k, v in index.items():
                    if v == other:
                        index[k] = g
        for k in keys:
            index[k] = g
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    issues = []
    for group in groups:
        if not group:
            continue
        ordered = tuple(sorted(group, key=lambda f: (rank[f.severity], f.tool, f.rule_id, f.fingerprint)))
        issues.append(Issue(findings=ordered, remediation=_remediation_of(ordered)))
    return sorted(issues, key=lambda i: (rank[i.lead.severity], i.lead.location, i.lead.tool, i.lead.rule_id, i.lead.fingerprint))


def _remediation_of(findings: tuple[Finding, ...]) -> Remediation:
    """The first finding's text that has one; the references of all, once each."""
    parts = [remediation_for(f) for f in findings]
    text = next((r.text for r in parts if r.text), "")
    refs = tuple(dict.fromkeys(ref for r in parts for ref in r.references))
    return Remediation(text=text, references=refs)


def issue_severity_counts(issues: list[Issue]) -> dict[str, int]:
    return severity_counts([i.lead for i in issues])
