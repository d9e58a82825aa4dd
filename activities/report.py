"""The `report` stage: SARIF, Markdown, HTML and JSON, from the store and the status.

The rendering lives in `secflow.reports` (pure functions, shared with `python -m starter
report`); this activity only gathers the inputs and writes the files.

Writes to `<data dir>/reports/<assessment id>/report.{sarif,md,html,json}` (outside the
workspace, which is removed when the assessment ends). Files are written to a temporary
name and renamed, so a crash mid-write never leaves half a report and a retry simply
overwrites.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from temporalio import activity

from activities.runner import ToolContext, ToolOutput, run_tool
from secflow.models import WHOLE_STAGE, AssessmentStatus, StageTaskInput, StageTaskResult, TargetFailure
from secflow.reports import RENDERERS
from secflow.settings import load_settings
from secflow.store import FindingsStore
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
    """Write via a temporary file in the same directory and rename: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@activity.defn(name="report")
async def report(inp: StageTaskInput) -> StageTaskResult:
    return await run_tool(report_tool, inp)
