"""Markdown for people: summary, what was degraded and why, errors and their recovery, findings."""

from __future__ import annotations

from datetime import datetime

from secflow.findings import Finding
from secflow.models import AssessmentStatus
from secflow.reports._common import (
    EnrichmentSummary,
    Issue,
    cvss_text,
    degraded_stages,
    enriched_cves,
    enrichment_headline,
    enrichment_summary,
    epss_text,
    freshness_text,
    group_issues,
    is_final,
    issue_severity_counts,
    kev_text,
    outcome_of,
    prepare,
    rung_of,
    snapshot_note,
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
    issues = group_issues(findings)
    counts = issue_severity_counts(issues)
    lines = [f"# Assessment report: {_cell(status.name)}", ""]
    if not is_final(status):
        lines += [f"> **{_cell(snapshot_note(status))}**", ""]
    lines += [
        f"- Assessment: `{status.workflow_id}`",
        (
            f"- Outcome: **{_cell(status.outcome)}**"
            if is_final(status)
            else f"- State when this snapshot was written: **{_cell(status.status)}**"
        )
        + (f" ({_cell(status.reason)})" if status.reason else ""),
        f"- Started: {_when(status.started_at)}",
        f"- Finished: {_when(status.finished_at) if is_final(status) else 'not yet (snapshot)'}",
    ]
    enrichment = enrichment_summary(findings)
    if enrichment.any:
        warn = enrichment.stale or enrichment.partial or enrichment.unreadable
        lines.append(f"- CVE enrichment: {'**' if warn else ''}{_cell(enrichment_headline(enrichment))}{'**' if warn else ''}")
    lines += [
        "",
        "## Summary by severity",
        "",
        f"{len(issues)} issue(s) from {len(findings)} finding(s): an issue found by several tools at the same "
        "location and CWE is counted once.",
        "",
        "| severity | issues |",
        "|---|---|",
        *[f"| {sev} | {n} |" for sev, n in counts.items()],
        f"| **total** | **{len(issues)}** |",
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
                f"{e.category} | {outcome_of(e)}{f' ({rung_of(e)})' if rung_of(e) else ''} | {_cell(e.message)} |"
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
    if issues:
        lines += ["| severity | title | location | CWE / CVE | found by | rules |", "|---|---|---|---|---|---|"]
        for issue in issues:
            f = issue.lead
            lines.append(
                f"| {f.severity.value} | {_cell(f.title)} | {_cell(f.location)} | {_cell(', '.join([*issue.cwe, *issue.cve]))} | "
                f"{_cell(', '.join(issue.tools))} | {_cell(', '.join(issue.rules))} |"
            )
        evidenced = [(issue, f) for issue in issues for f in issue.findings if f.evidence]
        if evidenced:
            lines += ["", "### Evidence", ""]
            for issue, f in evidenced:
                by = f" ({_cell(f.tool)})" if len(issue.findings) > 1 else ""
                lines.append(f"- **{_cell(f.title)}** at `{f.location.replace('`', '')}`{by}: {_cell(f.evidence)}")
        lines += _remediation_section(issues)
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


def _remediation_section(issues: list[Issue]) -> list[str]:
    """How to fix each issue: the text once per distinct fix, with where and the references."""
    fixes: dict[str, list[Issue]] = {}
    for i in issues:
        fixes.setdefault(i.remediation.text, []).append(i)
    lines = ["", "### Remediation", ""]
    for text, group in fixes.items():
        rules = ", ".join(dict.fromkeys(r for i in group for r in i.rules))
        where = ", ".join(dict.fromkeys(f"`{i.lead.location.replace('`', '')}`" for i in group))
        refs = ", ".join(dict.fromkeys(f"[{_cell(r.label)}]({r.url})" for i in group for r in i.remediation.references))
        fix = _cell(text) if text else "No remediation on record for this rule; see the references."
        lines.append(f"- **{_cell(rules)}** at {where}: {fix}" + (f" References: {refs}." if refs else ""))
    return lines
