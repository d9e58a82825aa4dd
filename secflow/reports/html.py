"""HTML for people: one self-contained page (inline CSS, no scripts, no external assets).

Every piece of text from the assessment goes through `html.escape` (after `redact`):
a finding title or a server banner is attacker-controlled input.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from secflow.findings import Finding
from secflow.models import AssessmentStatus
from secflow.reports._common import (
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
from secflow.reports.remediation import Remediation
from secflow.store import ErrorEvent

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1b1f24;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}code{font-family:ui-monospace,monospace;font-size:.85rem}
.sev{font-weight:600;text-transform:uppercase;font-size:.8rem}
.critical{color:#82071e}.high{color:#cf222e}.medium{color:#9a6700}.low{color:#0969da}.info{color:#57606a}
.outcome-recovered{color:#1a7f37}.outcome-failed{color:#cf222e}.outcome-pending,.outcome-degraded,.outcome-skipped{color:#9a6700}
.evidence{white-space:pre-wrap;word-break:break-all}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem 1rem;margin:.5rem 0}
.kev{color:#82071e;font-weight:600}
.snapshot{background:#ddf4ff;border:1px solid #54aeff;padding:.5rem 1rem;margin:.5rem 0;font-weight:600}
.fix{max-width:40rem}
""".strip()


def _e(text: object) -> str:
    return escape(str(text if text is not None else ""), quote=True)


def _when(dt: datetime | None) -> str:
    return dt.isoformat(timespec="seconds") if dt else "n/a"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """`rows` cells must already be escaped HTML."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def render_html(status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]) -> str:
    status, findings, errors = prepare(status, findings, errors)
    issues = group_issues(findings)
    counts = issue_severity_counts(issues)
    final = is_final(status)
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No scripts, no external anything: safe to open from an untrusted source.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>Assessment report: {_e(status.name)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>Assessment report: {_e(status.name)}</h1>",
        *([] if final else [f'<p class="snapshot">{_e(snapshot_note(status))}</p>']),
        "<ul>",
        f"<li>Assessment: <code>{_e(status.workflow_id)}</code></li>",
        (
            f"<li>Outcome: <strong>{_e(status.outcome)}</strong>"
            if final
            else f"<li>State when this snapshot was written: <strong>{_e(status.status)}</strong>"
        )
        + (f" ({_e(status.reason)})" if status.reason else "")
        + "</li>",
        f"<li>Started: {_e(_when(status.started_at))}</li>",
        f"<li>Finished: {_e(_when(status.finished_at)) if final else 'not yet (snapshot)'}</li>",
        *_enrichment_headline(findings),
        "</ul>",
        "<h2>Summary by severity</h2>",
        f"<p>{len(issues)} issue(s) from {len(findings)} finding(s): an issue found by several tools at the same "
        "location and CWE is counted once.</p>",
        _table(
            ["severity", "issues"],
            [[f'<span class="sev {_e(sev)}">{_e(sev)}</span>', str(n)] for sev, n in counts.items()]
            + [["<strong>total</strong>", f"<strong>{len(issues)}</strong>"]],
        ),
        "<h2>Stages</h2>",
    ]
    if status.stages:
        parts.append(
            _table(
                ["stage", "kind", "tool", "state", "retries", "findings", "notes"],
                [
                    [
                        _e(sid),
                        _e(st.kind),
                        _e(st.tool),
                        _e(st.state + (" (degraded)" if st.degraded else "")),
                        str(st.retries),
                        str(st.findings),
                        _e(stage_note(st)),
                    ]
                    for sid, st in status.stages.items()
                ],
            )
        )
    else:
        parts.append("<p>No stages.</p>")
    parts.append("<h2>Degraded or skipped</h2>")
    degraded = degraded_stages(status)
    if degraded:
        parts.append(
            "<ul>"
            + "".join(f"<li><strong>{_e(d.stage_id)}</strong> ({_e(d.state)}): {_e(d.reason)}</li>" for d in degraded)
            + "</ul>"
        )
    else:
        parts.append("<p>Nothing was skipped or degraded.</p>")
    parts.append("<h2>Errors met and how they were recovered</h2>")
    if errors:
        parts.append(
            _table(
                ["when", "stage", "tool", "target", "attempt", "category", "outcome", "message"],
                [
                    [
                        _e(_when(e.occurred_at)),
                        _e(e.stage_id),
                        _e(e.tool),
                        _e(e.target),
                        str(e.attempt),
                        _e(e.category),
                        f'<span class="outcome-{_e(outcome_of(e))}">{_e(outcome_of(e))}</span>'
                        + (f" ({_e(rung_of(e))})" if rung_of(e) else ""),
                        _e(e.message),
                    ]
                    for e in errors
                ],
            )
        )
    else:
        parts.append("<p>No errors were met.</p>")
    parts.append("<h2>Interventions</h2>")
    if status.interventions:
        parts.append(
            _table(
                ["when", "action", "stage", "by", "via", "reason", "accepted"],
                [
                    [
                        _e(_when(i.at)),
                        _e(i.action),
                        _e(i.stage or ""),
                        _e(i.by or "unknown"),
                        _e(i.via),
                        _e(i.reason),
                        "yes" if i.accepted else f"no: {_e(i.note)}",
                    ]
                    for i in status.interventions
                ],
            )
        )
    else:
        parts.append("<p>No interventions.</p>")
    if status.compensations:
        parts.append("<h2>Compensations</h2>")
        parts.append(
            _table(
                ["compensation", "state", "attempts", "error"],
                [
                    [_e(c.name), _e(c.state), str(c.attempts), _e(f"{c.error.category}: {c.error.message}" if c.error else "")]
                    for c in status.compensations
                ],
            )
        )
    parts.append("<h2>Findings</h2>")
    if issues:
        parts.append(
            _table(
                ["severity", "title", "location", "CWE / CVE", "found by", "rules", "evidence", "remediation"],
                [
                    [
                        f'<span class="sev {_e(i.lead.severity.value)}">{_e(i.lead.severity.value)}</span>',
                        _e(i.lead.title),
                        f"<code>{_e(i.lead.location)}</code>",
                        _e(", ".join([*i.cwe, *i.cve])),
                        _e(", ".join(i.tools)),
                        _e(", ".join(i.rules)),
                        "<br>".join(
                            f'<span class="evidence">{_e(f.evidence)}</span>'
                            + (f" ({_e(f.tool)})" if len(i.findings) > 1 else "")
                            for f in i.findings
                            if f.evidence
                        ),
                        _fix(i.remediation),
                    ]
                    for i in issues
                ],
            )
        )
    else:
        parts.append("<p>No findings.</p>")
    parts += _enrichment_section(findings)
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _fix(r: Remediation) -> str:
    """Remediation text and reference links (escaped; links only to http(s) URLs from the catalogue)."""
    links = ", ".join(
        f'<a href="{_e(ref.url)}">{_e(ref.label)}</a>' for ref in r.references if ref.url.startswith(("https://", "http://"))
    )
    text = _e(r.text) if r.text else "No remediation on record for this rule; see the references."
    return f'<div class="fix">{text}' + (f"<br>References: {links}" if links else "") + "</div>"


def _enrichment_headline(findings: list[Finding]) -> list[str]:
    summary = enrichment_summary(findings)
    if not summary.any:
        return []
    text = _e(enrichment_headline(summary))
    if summary.stale or summary.partial or summary.unreadable:
        text = f"<strong>{text}</strong>"
    return [f"<li>CVE enrichment: {text}</li>"]


def _enrichment_section(findings: list[Finding]) -> list[str]:
    summary = enrichment_summary(findings)
    if not summary.any:
        return []
    rows = enriched_cves(findings)
    parts = ["<h2>CVE enrichment</h2>", f"<p>{_e(enrichment_headline(summary))}</p>"]
    stale = [r.cve for r in rows if r.cve.stale]
    partial = [r.cve for r in rows if r.cve.partial]
    if stale:
        parts.append(
            '<div class="warn"><strong>Stale data.</strong> These CVEs show cached data because a service was unavailable; '
            "it may be out of date:<ul>"
            + "".join(f"<li>{_e(c.cve_id)}: {_e(freshness_text(c))}</li>" for c in stale)
            + "</ul></div>"
        )
    if partial:
        parts.append(
            '<div class="warn"><strong>Partial data.</strong> A service was unavailable and nothing was cached; '
            "the missing fields say unknown:<ul>"
            + "".join(f"<li>{_e(c.cve_id)}: {_e(c.partial_reason or 'no reason recorded')}</li>" for c in partial)
            + "</ul></div>"
        )
    if summary.unreadable:
        parts.append(
            "<p>" + "<br>".join(f"Enrichment stored for {_e(loc)} could not be read." for loc in summary.unreadable) + "</p>"
        )
    if rows:
        parts.append(
            _table(
                ["CVE", "CVSS", "EPSS", "CISA KEV", "CWE", "data", "findings", "description (NVD)"],
                [
                    [
                        f"<code>{_e(r.cve.cve_id)}</code>",
                        _e(cvss_text(r.cve)),
                        _e(epss_text(r.cve)),
                        f'<span class="kev">{_e(kev_text(r.cve))}</span>' if r.cve.in_kev else _e(kev_text(r.cve)),
                        _e(", ".join(r.cve.cwe) or "n/a"),
                        _e(freshness_text(r.cve)),
                        _e(", ".join(r.locations)),
                        _e(r.cve.description),
                    ]
                    for r in rows
                ],
            )
        )
    return parts
