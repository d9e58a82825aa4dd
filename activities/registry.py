"""The activities a SecFlow worker registers: everything in one list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.alerts import plan_alerts, send_alert
from activities.audit import record_decision
from activities.dlq import park_dead_letter
from activities.incidents import open_incident
from activities.locks import acquire_scan_locks, release_scan_locks
from activities.report import report
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
]
