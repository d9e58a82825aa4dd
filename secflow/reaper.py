"""The reaper: reclaims what assessments that are no longer running left behind.

A run that is terminated (by an operator, or by the server at a history limit) never
runs its compensations, so its workspace directory and its scan locks (and waiter
tickets) stay. Scan locks are also taken over lazily by the next assessment that needs
them (activities/locks.py); the reaper cleans up the rest, once when a worker starts and
then every ``SECFLOW_REAPER_INTERVAL`` seconds.

What counts as gone (secflow/liveness.py): the workflow's latest run is not running.
A workflow Temporal does not know is NOT gone for locks (a lock taken by hand is for a
human to judge), and for a workspace only when the directory is older than an hour:
a workspace is named after its workflow id and created by that workflow, so an unknown
id with an old directory is a run whose history retention already deleted; a young
one may belong to a namespace or server we cannot see, and costs little to keep.

Every failure is classified and logged; one bad directory or holder never stops the
pass, and a failed pass never stops the loop.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio.client import Client, WorkflowExecutionStatus

from secflow.errors import classify
from secflow.liveness import workflow_is_gone, workflow_status
from secflow.logging import get_logger
from secflow.redaction import redact
from secflow.settings import Settings
from secflow.store import FindingsStore, open_store

__all__ = ["NOT_FOUND_GRACE", "ReapReport", "reap_once", "run_reaper"]

# An unknown workflow's workspace is removed only when the directory is older than this.
NOT_FOUND_GRACE = timedelta(hours=1)
# Describe calls in flight at once.
_CONCURRENCY = 16


class ReapReport(BaseModel):
    """What one reaper pass did."""

    workspaces_removed: list[str] = Field(default_factory=list)
    workspaces_kept: int = 0
    holders_released: list[str] = Field(default_factory=list)
    locks_released: int = 0
    # "<what>: <category>: <message>" per item that failed (the pass went on).
    errors: list[str] = Field(default_factory=list)

    @property
    def did_something(self) -> bool:
        return bool(self.workspaces_removed or self.holders_released)


async def reap_once(
    client: Client,
    settings: Settings,
    *,
    store: FindingsStore | None = None,
    not_found_grace: timedelta = NOT_FOUND_GRACE,
) -> ReapReport:
    """One pass: remove gone assessments' workspaces, release gone holders' locks."""
    report = ReapReport()
    limit = asyncio.Semaphore(_CONCURRENCY)
    await _reap_workspaces(client, settings.workspaces_dir, not_found_grace, limit, report)
    await _reap_locks(client, store or open_store(), limit, report)
    report.workspaces_removed.sort()
    report.holders_released.sort()
    return report


async def _reap_workspaces(client: Client, root: Path, grace: timedelta, limit: asyncio.Semaphore, report: ReapReport) -> None:
    def listing() -> list[Path]:
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))

    async def one(path: Path) -> None:
        async with limit:
            try:
                status = await workflow_status(client, path.name)
                if status == WorkflowExecutionStatus.RUNNING:
                    report.workspaces_kept += 1
                    return
                if status is None and time.time() - path.lstat().st_mtime < grace.total_seconds():
                    report.workspaces_kept += 1
                    return
                await asyncio.to_thread(shutil.rmtree, path)
                report.workspaces_removed.append(path.name)
            except FileNotFoundError:
                pass  # removed meanwhile (its own compensation, another worker's reaper)
            except Exception as exc:
                _failed(report, f"workspace {path.name}", exc)

    try:
        paths = await asyncio.to_thread(listing)
    except Exception as exc:
        _failed(report, f"workspaces dir {root}", exc)
        return
    await asyncio.gather(*(one(p) for p in paths))


async def _reap_locks(client: Client, store: FindingsStore, limit: asyncio.Semaphore, report: ReapReport) -> None:
    async def one(holder: str) -> None:
        async with limit:
            try:
                if not await workflow_is_gone(client, holder):
                    return
                released = await asyncio.to_thread(store.release_locks, holder)
                report.holders_released.append(holder)
                report.locks_released += released
            except Exception as exc:
                _failed(report, f"lock holder {holder}", exc)

    try:
        holders = await asyncio.to_thread(store.lock_holders)
    except Exception as exc:
        _failed(report, "scan lock holders", exc)
        return
    await asyncio.gather(*(one(h) for h in sorted(holders)))


def _failed(report: ReapReport, what: str, exc: BaseException) -> None:
    c = classify(exc)
    report.errors.append(f"{what}: {c.category.value}: {redact(str(exc))[:300]}")


async def run_reaper(client: Client, settings: Settings, interval: float) -> None:
    """Reap now, then every `interval` seconds, until cancelled (the worker stopping)."""
    log = get_logger(component="reaper")
    while True:
        try:
            report = await reap_once(client, settings)
            if report.did_something:
                log.warning(
                    "reclaimed what stopped assessments left behind",
                    workspaces_removed=report.workspaces_removed,
                    holders_released=report.holders_released,
                    locks_released=report.locks_released,
                )
            if report.errors:
                log.error("reaper could not check everything", failures=len(report.errors), first=report.errors[:5])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # classified and logged; the next pass tries again
            c = classify(exc)
            log.error("reaper pass failed", category=c.category.value, reason=c.reason, error=redact(str(exc)))
        await asyncio.sleep(interval)
