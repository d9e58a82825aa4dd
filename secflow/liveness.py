"""Is a workflow still running? Asked before breaking its locks or removing its workspace.

Scan locks and workspaces are named after the assessment's workflow id. A run that was
terminated (by an operator or by a server limit) never ran its compensations, so what
it held stays behind; these checks tell such leftovers from things still in use.
"""

from __future__ import annotations

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

__all__ = ["workflow_is_gone", "workflow_status"]


async def workflow_status(client: Client, workflow_id: str) -> WorkflowExecutionStatus | None:
    """The status of the workflow's latest run, or None when Temporal does not know it."""
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return desc.status


async def workflow_is_gone(client: Client, workflow_id: str) -> bool:
    """True when `workflow_id` names a workflow whose latest run is no longer running.

    Unknown to Temporal (a lock taken by hand, by another namespace, or a run whose
    history was already deleted by retention) is NOT gone: that is for a human to
    judge, not for us to break.
    """
    status = await workflow_status(client, workflow_id)
    return status is not None and status != WorkflowExecutionStatus.RUNNING
