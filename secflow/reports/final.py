"""The final reports: the report stage's files rewritten once the assessment has ended.

The `report` stage is an `always` stage: it runs before the findings are counted, the
error ledger is closed and the compensations have run, so what it writes is a snapshot
(and says so). When the assessment has ended, the workflow calls `render_final_reports`
with its final status and the same files are rendered again from it: outcome, finish
time, how each error ended, how each compensation ended.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from secflow.models import AssessmentStatus

#: `workflow.patched` id of the step (recorded histories without it replay without it)
FINAL_REPORTS_PATCH = "final-reports"


class FinalReportsRequest(BaseModel):
    status: AssessmentStatus  # the final one: outcome and finished_at set


class FinalReportsResult(BaseModel):
    written: dict[str, str] = Field(default_factory=dict)  # format -> path


def report_formats(status: AssessmentStatus) -> list[str]:
    """The formats the assessment's report stage(s) wrote, in a stable order."""
    formats: list[str] = []
    for st in status.stages.values():
        if st.kind == "report":
            formats += [fmt for fmt in st.outputs if fmt not in formats]
    return formats


def is_final(status: AssessmentStatus) -> bool:
    return status.outcome is not None


__all__ = ["FINAL_REPORTS_PATCH", "FinalReportsRequest", "FinalReportsResult", "is_final", "report_formats"]
