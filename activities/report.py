"""The `report` stage: JSON for machines, Markdown for people, from the store and the status.

Writes to `<data dir>/reports/<assessment id>/` (outside the workspace, which is removed
when the assessment ends). Files are written to a temporary name and renamed, so a crash
mid-write never leaves half a report and a retry simply overwrites.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from temporalio import activity

from activities.runner import ToolContext, ToolOutput, run_tool
from secflow.findings import SEVERITY_ORDER, Finding
from secflow.models import AssessmentStatus, StageTaskInput, StageTaskResult
from secflow.redaction import redact
from secflow.settings import load_settings
from secflow.store import ErrorEvent
from secflow.tools import ReportOptions


async def report_tool(ctx: ToolContext) -> ToolOutput:
    opts = ReportOptions.model_validate(ctx.options)
    snapshot = ctx.input.snapshot
    if snapshot is None:
        raise ValueError("the report stage needs the assessment snapshot")
    findings = await asyncio.to_thread(ctx.store.list_findings, ctx.input.assessment_id)
    errors = await asyncio.to_thread(ctx.store.list_errors, ctx.input.assessment_id)
    out_dir = load_settings().reports_dir / ctx.input.assessment_id
    outputs: dict[str, str] = {}
    if "json" in opts.formats:
        outputs["json"] = str(await asyncio.to_thread(_write, out_dir / "report.json", render_json(snapshot, findings, errors)))
    if "md" in opts.formats:
        outputs["md"] = str(await asyncio.to_thread(_write, out_dir / "report.md", render_markdown(snapshot, findings, errors)))
    # The report itself produces no findings.
    return ToolOutput(findings=[], items_done=len(outputs), items_total=len(opts.formats), outputs=outputs)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def render_json(status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]) -> str:
    doc = {
        "assessment": status.model_dump(mode="json"),
        "findings": [f.model_dump(mode="json") for f in findings],
        "errors": [e.model_dump(mode="json") for e in errors],
    }
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def _cell(text: str) -> str:
    return redact(str(text)).replace("|", "\\|").replace("\n", " ")


def render_markdown(status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]) -> str:
    counts = {s.value: 0 for s in SEVERITY_ORDER}
    for f in findings:
        counts[f.severity.value] += 1
    lines = [
        f"# Assessment report: {status.name}",
        "",
        f"- Workflow: `{status.workflow_id}`",
        f"- State when the report was written: **{status.status}**",
        f"- Started: {status.started_at.isoformat() if status.started_at else 'n/a'}",
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
        "| stage | kind | tool | state | attempts | findings | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for sid, st in status.stages.items():
        note = st.reason or (f"{st.error.category}: {st.error.message}" if st.error else "")
        lines.append(f"| {sid} | {st.kind} | {st.tool} | {st.state} | {st.attempts} | {st.findings} | {_cell(note)} |")
    degraded = [(sid, st) for sid, st in status.stages.items() if st.state in ("skipped", "partial", "failed", "cancelled") or st.degraded]
    lines += ["", "## Degraded or skipped", ""]
    if degraded:
        lines += [f"- **{sid}** ({st.state}): {_cell(st.reason or (st.error.message if st.error else ''))}" for sid, st in degraded]
    else:
        lines.append("Nothing was skipped or degraded.")
    lines += ["", "## Errors met and how they were recovered", ""]
    if errors:
        lines += ["| when | stage | target | attempt | category | outcome | message |", "|---|---|---|---|---|---|---|"]
        for e in errors:
            lines.append(
                f"| {e.occurred_at.isoformat(timespec='seconds')} | {e.stage_id} | {_cell(e.target)} | {e.attempt} | "
                f"{e.category} | {e.outcome or 'pending'} | {_cell(e.message)} |"
            )
    else:
        lines.append("No errors were met.")
    if status.interventions:
        lines += ["", "## Interventions", ""]
        for i in status.interventions:
            verdict = "" if i.accepted else f" (ignored: {_cell(i.note)})"
            lines.append(f"- {i.at.isoformat(timespec='seconds')} {i.action} {i.stage or ''} by {i.by or 'unknown'} via {i.via}{verdict}")
    lines += ["", "## Findings", ""]
    if findings:
        lines += ["| severity | title | location | tool | rule |", "|---|---|---|---|---|"]
        for f in findings:
            lines.append(f"| {f.severity.value} | {_cell(f.title)} | {_cell(f.location)} | {f.tool} | {f.rule_id} |")
    else:
        lines.append("No findings.")
    return "\n".join(lines) + "\n"


@activity.defn(name="report")
async def report(inp: StageTaskInput) -> StageTaskResult:
    return await run_tool(report_tool, inp)
