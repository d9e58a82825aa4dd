"""The `report` stage: SARIF, Markdown, HTML and JSON, from the store and the status.

The rendering lives in `secflow.reports` (pure functions, shared with `python -m starter
report`); this activity only gathers the inputs and writes the files.

Writes to `<data dir>/reports/<assessment id>/report.{sarif,md,html,json}` (outside the
workspace, which is removed when the assessment ends), through
`secflow.reports.files.write_private_file`: 0600 files in a 0700 directory, a random
temporary name renamed into place, never through a link. A crash mid-write never leaves
half a report and a retry simply overwrites.

The stage runs while the assessment is still running, so its files are a snapshot (they
say so). `render_final_reports`, called by the workflow once the assessment has ended
(after the compensations), renders the same files again from the final status.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from temporalio import activity

from activities.runner import ToolContext, ToolOutput, classified, run_tool
from secflow.models import WHOLE_STAGE, AssessmentStatus, StageTaskInput, StageTaskResult, TargetFailure
from secflow.reports import RENDERERS
from secflow.reports.files import write_private_file
from secflow.reports.final import FinalReportsRequest, FinalReportsResult, report_formats
from secflow.settings import load_settings
from secflow.store import FindingsStore, open_store
from secflow.tools import ReportOptions


async def report_tool(ctx: ToolContext) -> ToolOutput:
    opts = ReportOptions.model_validate(ctx.options)
    snapshot = ctx.input.snapshot
    if snapshot is None:
        raise ValueError("the report stage needs the assessment snapshot")
    snapshot = await asyncio.to_thread(with_targets_from_store, ctx.store, snapshot)
    findings = await asyncio.to_thread(ctx.store.list_findings, ctx.input.assessment_id)
    errors = await asyncio.to_thread(ctx.store.list_errors, ctx.input.assessment_id)
    out_dir = load_settings().reports_dir / ctx.input.assessment_id
    formats = list(dict.fromkeys(opts.formats))  # in the order asked, once each
    outputs: dict[str, str] = {}
    for fmt in formats:
        render, filename = RENDERERS[fmt]
        text = render(snapshot, findings, errors)
        outputs[fmt] = str(await asyncio.to_thread(write_atomic, out_dir / filename, text))
    # The report itself produces no findings.
    return ToolOutput(findings=[], items_done=len(outputs), items_total=len(formats), outputs=outputs)


# Failed targets a report names per stage; the rest are one command away (the report says which).
REPORTED_FAILURES = 20


def with_targets_from_store(store: FindingsStore, status: AssessmentStatus) -> AssessmentStatus:
    """The status with each stage's target counts and failures read from the store.

    The workflow carries counts and its last few failures; the store holds every target's
    outcome, so the report reads them there (a stage still running when the report is
    written keeps the workflow's figures)."""
    report = status.model_copy(deep=True)
    counts = store.count_target_outcomes(status.workflow_id)
    for sid, st in report.stages.items():
        if sid not in counts or st.state == "running":
            continue
        st.counts = dict(counts[sid])
        failed = store.list_target_outcomes(status.workflow_id, stage_id=sid, state="failed", limit=REPORTED_FAILURES)
        if failed:
            st.recent_failures = [
                TargetFailure(
                    target="" if o.target == WHOLE_STAGE else o.target,
                    tool=o.tool,
                    category=o.error_category,
                    message=o.error_message,
                    attempts=o.attempts,
                )
                for o in failed
            ]
    return report


def write_atomic(path: Path, text: str) -> Path:
    """Write a report file: all or nothing, private, never through a link (see the docstring)."""
    return write_private_file(path, text, make_dir=True)


@activity.defn(name="report")
async def report(inp: StageTaskInput) -> StageTaskResult:
    return await run_tool(report_tool, inp)


@activity.defn(name="render_final_reports")
@classified
async def render_final_reports(req: FinalReportsRequest) -> FinalReportsResult:
    """Render the report stage's files again from the final status (idempotent: same inputs,
    same bytes). Only the formats the stage wrote; nothing when it wrote none."""
    formats = report_formats(req.status)
    if not formats:
        return FinalReportsResult()
    store = open_store()
    status = await asyncio.to_thread(with_targets_from_store, store, req.status)
    findings = await asyncio.to_thread(store.list_findings, status.workflow_id)
    errors = await asyncio.to_thread(store.list_errors, status.workflow_id)
    out_dir = load_settings().reports_dir / status.workflow_id
    written: dict[str, str] = {}
    for fmt in formats:
        if fmt not in RENDERERS:
            continue  # a format this worker does not know (a newer one wrote it): leave that file
        render, filename = RENDERERS[fmt]
        written[fmt] = str(await asyncio.to_thread(write_atomic, out_dir / filename, render(status, findings, errors)))
    return FinalReportsResult(written=written)
