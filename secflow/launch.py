"""Starting an assessment: store the spec once, start the `Assessment` workflow with its reference.

Used by the starter, the dead-letter replay, the demo, the tests and the benches, so the
workflow type and its input are named in one place. The spec goes to the findings store
(`SECFLOW_DB_URL` / the data dir), which the workers read: a starter and its workers must
share that store, as they share the Temporal namespace.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import Client, WorkflowHandle

from secflow.documents import save_spec
from secflow.locking import lock_keys
from secflow.models import (
    DEFAULT_EVENT_BUDGET,
    INLINE_TARGETS,
    SMALL_TEXT,
    AssessmentRequest,
    AssessmentStatus,
    SpecSummary,
    TargetRef,
)
from secflow.spec import Spec
from secflow.store import FindingsStore, open_store
from secflow.tools import TOOLS

ASSESSMENT_WORKFLOW = "Assessment"


async def start_assessment(
    client: Client,
    spec: Spec,
    *,
    workflow_id: str,
    task_queue: str,
    requested_by: str = "",
    store: FindingsStore | None = None,
    result_type: type | None = AssessmentStatus,
    event_budget: int = DEFAULT_EVENT_BUDGET,
    shard_event_budget: int = DEFAULT_EVENT_BUDGET,
    **start_options: Any,
) -> WorkflowHandle[Any, Any]:
    """Store `spec` and start its assessment; returns the handle (raises as start_workflow does)."""
    ref = await asyncio.to_thread(save_spec, store or open_store(), spec)
    summary = await asyncio.to_thread(summarize_spec, spec)
    request = AssessmentRequest(
        spec_ref=ref,
        summary=summary,
        requested_by=requested_by,
        event_budget=event_budget,
        shard_event_budget=shard_event_budget,
    )
    start_options.setdefault("static_summary", static_summary(spec))
    start_options.setdefault("static_details", static_details(spec, requested_by))
    return await client.start_workflow(
        ASSESSMENT_WORKFLOW,
        request,
        id=workflow_id,
        task_queue=task_queue,
        result_type=result_type,
        **start_options,
    )


def static_summary(spec: Spec) -> str:
    """The Web UI's one line for the run: spec name and counts. Never a target (targets
    may carry credentials in URLs, and the summary is stored in the clear)."""
    plural = "s" if len(spec.targets) != 1 else ""
    return f"{spec.name}: {len(spec.targets)} target{plural}, {len(spec.stages)} stages"


def static_details(spec: Spec, requested_by: str = "") -> str:
    """The Web UI's details for the run (Markdown): its stages and who asked; no targets."""
    kinds: dict[str, int] = {}
    for t in spec.targets:
        kinds[t.kind] = kinds.get(t.kind, 0) + 1
    lines = [f"**{spec.name}**" + (f", requested by {requested_by}" if requested_by else "")]
    lines.append("Targets: " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())))
    lines += [
        f"- `{s.id}`: {s.kind} with {s.tool_name or '?'} ({s.criticality}"
        + (", gate" if s.requires_approval else "")
        + (", always" if s.always else "")
        + ")"
        for s in spec.stages
    ]
    return "\n".join(lines)


def summarize_spec(spec: Spec) -> SpecSummary:
    """What the workflow needs of a spec: its stages and counts (a few KB at any size)."""
    tools = sorted(t for t in {s.tool_name for s in spec.stages} | {s.fallback_tool or "" for s in spec.stages} if t in TOOLS)
    few: dict[str, list[TargetRef]] = {}
    for tool in tools:
        targets = spec.targets_for(tool) if TOOLS[tool].target_kinds else []
        if 0 < len(targets) <= INLINE_TARGETS and sum(len(t.value) for t in targets) <= SMALL_TEXT:
            few[tool] = [TargetRef(value=t.value, kind=t.kind) for t in targets]
    return SpecSummary(
        name=spec.name,
        stages=spec.stages,
        locks=spec.locks,
        lock_keys=len(lock_keys(spec)),
        targets_by_tool={t: len(spec.targets_for(t)) if TOOLS[t].target_kinds else 1 for t in tools},
        few_targets=few,
        approvals=spec.approvals,
    )
