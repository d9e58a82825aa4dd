"""The activities a SecFlow worker registers: everything in one list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import activity

from activities.adaptive import choose_retry_plan
from activities.alerts import plan_alerts, send_alert
from activities.audit import record_decision
from activities.dlq import park_dead_letter
from activities.incidents import open_incident
from activities.locks import acquire_scan_locks, release_scan_locks
from activities.report import render_final_reports, report
from activities.resources import (
    acquire_scan_lock,
    create_workspace,
    finalize_assessment,
    release_scan_lock,
    remove_workspace,
)
from activities.scanners.bandit import bandit
from activities.scanners.detect_secrets import detect_secrets
from activities.scanners.enrich import cve_enrich
from activities.scanners.nmap import nmap
from activities.scanners.sca import sca
from activities.scanners.semgrep import semgrep
from activities.scanners.tls import tls
from activities.scanning import http_headers, portscan
from activities.stage_batches import (
    count_stage_targets,
    describe_spec,
    load_target_batch,
    park_stage_failures,
    record_target_results,
)
from activities.validation import settle_ladder_rung, validate_recovery
from secflow.models import StageTaskInput, StageTaskResult
from secflow.tools import activity_names

ALL_ACTIVITIES: list[Callable[..., Any]] = [
    portscan,
    http_headers,
    sca,
    tls,
    nmap,
    bandit,
    semgrep,
    detect_secrets,
    cve_enrich,
    report,
    render_final_reports,
    create_workspace,
    remove_workspace,
    acquire_scan_lock,
    release_scan_lock,
    finalize_assessment,
    park_dead_letter,
    plan_alerts,
    send_alert,
    open_incident,
    acquire_scan_locks,
    release_scan_locks,
    describe_spec,
    load_target_batch,
    record_target_results,
    count_stage_targets,
    park_stage_failures,
    record_decision,
    choose_retry_plan,
    settle_ladder_rung,
    validate_recovery,
]


def _alias(fn: Callable[[StageTaskInput], Awaitable[StageTaskResult]], name: str) -> Callable[..., Any]:
    """The same tool activity under another name (secflow/tools.py: one naming convention;
    histories of running workflows schedule the old name, new specs the canonical one)."""

    async def alias(inp: StageTaskInput) -> StageTaskResult:
        return await fn(inp)

    alias.__name__ = alias.__qualname__ = f"{fn.__name__}_as_{name.replace('-', '_')}"
    return activity.defn(name=name)(alias)


ALL_ACTIVITIES += [
    _alias(fn, name)
    for fn, tool in ((http_headers, "http-headers"), (detect_secrets, "detect-secrets"))
    for name in activity_names(tool)[1:]
]
