"""Markdown for people: summary, what was degraded and why, errors and their recovery, findings."""

from __future__ import annotations

from datetime import datetime

from secflow.findings import Finding
from secflow.models import AssessmentStatus
from secflow.reports._common import (
    EnrichmentSummary,
    cvss_text,
    degraded_stages,
    enriched_cves,
    enrichment_headline,
    enrichment_summary,
    epss_text,
    freshness_text,
    kev_text,
    outcome_of,
    prepare,
    refs,
    severity_counts,
    stage_note,
)
from secflow.store import ErrorEvent


def _cell(text: object) -> str:
    """Safe inside a table cell: no pipe, no newline, no raw HTML (GitHub renders it)."""
    s = str(text if text is not None else "")
    return (
        s.replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("\r", " ")
        .replace("\n", " ")
    )


def _when(dt: datetime | None) -> str:
    return dt.isoformat(timespec="seconds") if dt else "n/a"


def render_markdown(status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]) -> str:
    status, findings, errors = prepare(status, findings, errors)
    counts = severity_counts(findings)
    lines = [
        f"# Assessment report: {_cell(status.name)}",
        "",
        f"- Assessment: `{status.workflow_id}`",
        f"- State when the report was written: **{_cell(status.status)}**"
        + (f" ({_cell(status.reason)})" if status.reason else ""),
        f"- Started: {_when(status.started_at)}",
        f"- Finished: {_when(status.finished_at)}",
    ]
    enrichment = enrichment_summary(findings)
    if enrichment.any:
        warn = enrichment.stale or enrichment.partial or enrichment.unreadable
        lines.append(f"- CVE enrichment: {'**' if warn else ''}{_cell(enrichment_headline(enrichment))}{'**' if warn else ''}")
    lines += [
        "",
        "## Summary by severity",
        "",
        "| severity | findings |",
        "|---|---|",
        *[f"| {sev} | {n} |" for sev, n in counts.items()],
        f"| **total** | **{len(findings)}** |",
        "",
        "## Stages",
        "",
        "| stage | kind | tool | state | retries | findings | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for sid, st in status.stages.items():
        state = st.state + (" (degraded)" if st.degraded else "")
        lines.append(
            f"| {_cell(sid)} | {st.kind} | {st.tool} | {state} | {st.retries} | {st.findings} | {_cell(stage_note(st))} |"
        )
    lines += ["", "## Degraded or skipped", ""]
    degraded = degraded_stages(status)
    if degraded:
        lines += [f"- **{_cell(d.stage_id)}** ({d.state}): {_cell(d.reason)}" for d in degraded]
    else:
        lines.append("Nothing was skipped or degraded.")
    lines += ["", "## Errors met and how they were recovered", ""]
    if errors:
        lines += [
            "| when | stage | tool | target | attempt | category | outcome | message |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in errors:
            lines.append(
                f"| {_when(e.occurred_at)} | {_cell(e.stage_id)} | {_cell(e.tool)} | {_cell(e.target)} | {e.attempt} | "
                f"{e.category} | {outcome_of(e)} | {_cell(e.message)} |"
            )
    else:
        lines.append("No errors were met.")
    lines += ["", "## Interventions", ""]
    if status.interventions:
        for i in status.interventions:
            verdict = "" if i.accepted else f" (ignored: {_cell(i.note)})"
            why = f": {_cell(i.reason)}" if i.reason else ""
            lines.append(
                f"- {_when(i.at)} {_cell(i.action)} {_cell(i.stage or '')} by {_cell(i.by or 'unknown')} via {i.via}{why}{verdict}"
            )
    else:
        lines.append("No interventions.")
    if status.compensations:
        lines += ["", "## Compensations", ""]
        for c in status.compensations:
            err = f" ({c.error.category}: {_cell(c.error.message)})" if c.error else ""
            lines.append(f"- {_cell(c.name)}: {c.state}{err}")
    lines += ["", "## Findings", ""]
    if findings:
        lines += ["| severity | title | location | CWE / CVE | tool | rule |", "|---|---|---|---|---|---|"]
        for f in findings:
            lines.append(
                f"| {f.severity.value} | {_cell(f.title)} | {_cell(f.location)} | {_cell(refs(f))} | {_cell(f.tool)} | {_cell(f.rule_id)} |"
            )
        evidenced = [f for f in findings if f.evidence]
        if evidenced:
            lines += ["", "### Evidence", ""]
            for f in evidenced:
                lines.append(f"- **{_cell(f.title)}** at `{f.location.replace('`', '')}`: {_cell(f.evidence)}")
    else:
        lines.append("No findings.")
    if enrichment.any:
        lines += _enrichment_section(findings, enrichment)
    return "\n".join(lines) + "\n"


def _enrichment_section(findings: list[Finding], summary: EnrichmentSummary) -> list[str]:
    rows = enriched_cves(findings)
    lines = ["", "## CVE enrichment", "", _cell(enrichment_headline(summary)), ""]
    stale = [r.cve for r in rows if r.cve.stale]
    partial = [r.cve for r in rows if r.cve.partial]
    if stale:
        lines += ["> **Stale data.** These CVEs show cached data because a service was unavailable; it may be out of date:", ">"]
        lines += [f"> - {r.cve_id}: {_cell(freshness_text(r))}" for r in stale]
        lines.append("")
    if partial:
        lines += ["> **Partial data.** A service was unavailable and nothing was cached; the missing fields say unknown:", ">"]
        lines += [f"> - {r.cve_id}: {_cell(r.partial_reason or 'no reason recorded')}" for r in partial]
        lines.append("")
    if summary.unreadable:
        lines += [f"Enrichment stored for {_cell(loc)} could not be read." for loc in summary.unreadable] + [""]
    if rows:
        lines += ["| CVE | CVSS | EPSS | CISA KEV | CWE | data | findings |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            c = r.cve
            lines.append(
                f"| {_cell(c.cve_id)} | {_cell(cvss_text(c))} | {_cell(epss_text(c))} | {_cell(kev_text(c))} | "
                f"{_cell(', '.join(c.cwe) or 'n/a')} | {_cell(freshness_text(c))} | {_cell(', '.join(r.locations))} |"
            )
        described = [r.cve for r in rows if r.cve.description]
        if described:
            lines += ["", "### CVE descriptions (NVD)", ""]
            lines += [f"- **{_cell(c.cve_id)}**: {_cell(c.description)}" for c in described]
    return lines
