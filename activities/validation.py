"""The recovery ladder's bookkeeping activities (secflow/ladder.py, secflow/recovery.py).

- `settle_ladder_rung`: a rung ended for a stage (its fallback failed, a human skipped,
  the failures were parked, ...): the stage's error events still walking the ladder get
  that rung and outcome in the ledger;
- `validate_recovery`: after a stage recovered, check its stored findings (duplicates,
  missing, schema, tool) and probe what failed (the dependency's base URL, or the
  target); the check is recorded in `recovery_validations` whatever it finds.

Both idempotent: settled events keep their rung, a check id is written once.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

import httpx
from temporalio import activity

from activities.runner import classified
from activities.scanners.enrich import EPSS_URL, KEV_URL, NVD_URL
from activities.scanners.sca import osv_base_url
from secflow.logging import get_logger
from secflow.recovery import (
    MOST_PROBLEMS,
    RecoveryValidationRequest,
    RecoveryValidationResult,
    RungSettlement,
    finding_problems,
)
from secflow.redaction import redact
from secflow.store import open_store
from secflow.store.recovery import ValidationRow
from secflow.tools import activity_names

PROBE_TIMEOUT = 3.0  # seconds per probe
PROBE_TRIES = 3  # GETs per probe before it counts as down
PROBE_SPACING = 0.2  # seconds between them
# Sent with every probe, so a dependency's logs (and test stand-ins) can tell it apart.
PROBE_HEADERS = {"X-SecFlow-Probe": "recovery-validation"}
MOST_PROBES = 5  # targets probed per check (the latest that failed)


def dependency_base_url(name: str) -> str | None:
    """Where a named outbound dependency lives (the tools' own settings), or None."""
    urls = {
        "osv": osv_base_url,
        "nvd": lambda: (os.environ.get("SECFLOW_NVD_URL") or NVD_URL).rstrip("/"),
        "epss": lambda: (os.environ.get("SECFLOW_EPSS_URL") or EPSS_URL).rstrip("/"),
        "kev": lambda: os.environ.get("SECFLOW_KEV_URL") or KEV_URL,
    }
    found = urls.get(name)
    return found() if found is not None else None


@activity.defn(name="settle_ladder_rung")
@classified
async def settle_ladder_rung(req: RungSettlement) -> int:
    store = open_store()
    return await asyncio.to_thread(store.recovery.settle, req.assessment_id, req.stage_id, None, req.rung, req.outcome)


@activity.defn(name="validate_recovery")
@classified
async def validate_recovery(req: RecoveryValidationRequest) -> RecoveryValidationResult:
    store = open_store()
    rows = await asyncio.to_thread(store.recovery.stage_finding_rows, req.assessment_id, req.stage_id)
    elsewhere = 0
    if len(rows) < req.reported_findings:  # only then: were they reported by another stage first?
        names = sorted({n for t in req.tools for n in (t, *activity_names(t))})
        elsewhere = await asyncio.to_thread(store.recovery.findings_elsewhere, req.assessment_id, req.stage_id, names)
    problems, stored = finding_problems(rows, req.tools, req.reported_findings, elsewhere)
    errors = [e for e in await asyncio.to_thread(store.list_errors, req.assessment_id) if e.stage_id == req.stage_id]
    probed: list[str] = []
    dependencies = sorted({e.dependency for e in errors if e.dependency})
    targets = list(dict.fromkeys(e.target for e in reversed(errors) if e.target))[:MOST_PROBES]
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, follow_redirects=False, trust_env=False, headers=PROBE_HEADERS) as http:
        for name in dependencies:
            url = dependency_base_url(name)
            if url is None:
                continue
            probed.append(f"dependency {name}")
            problem = await _probe_url(http, url)
            if problem:
                problems.append(f"health probe of dependency {name} ({redact(url)}): {problem}")
        if not dependencies:
            for target in targets:
                probed.append(f"target {redact(target)}")
                problem = await _probe_target(http, target)
                if problem:
                    problems.append(f"health probe of target {redact(target)}: {problem}")
    shown = problems[:MOST_PROBLEMS] + (
        [f"... and {len(problems) - MOST_PROBLEMS} more"] if len(problems) > MOST_PROBLEMS else []
    )
    result = RecoveryValidationResult(passed=not problems, problems=shown, findings=stored, probed=probed)
    await asyncio.to_thread(
        store.recovery.record_validation,
        ValidationRow(
            assessment_id=req.assessment_id,
            stage_id=req.stage_id,
            check_id=req.check_id,
            after_rung=req.after,
            passed=result.passed,
            problems=result.problems,
            findings=stored,
        ),
    )
    log = get_logger(stage=req.stage_id, activity_type="validate_recovery")
    (log.info if result.passed else log.warning)(
        "recovery validated" if result.passed else "recovery validation failed", after=req.after, problems=result.problems
    )
    return result


async def _probe_url(http: httpx.AsyncClient, url: str) -> str | None:
    """None when the URL answers (any status below 500) to one of PROBE_TRIES GETs, else
    why not: a dependency that errs now and then is still up; one that never answers is not."""
    problem = ""
    for attempt in range(PROBE_TRIES):
        if attempt:
            await asyncio.sleep(PROBE_SPACING)
        try:
            response = await http.get(url)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {redact(str(exc))[:200] or 'no answer'}"
            continue
        if response.status_code < 500:
            return None
        problem = f"answered HTTP {response.status_code}"
    return f"{problem} ({PROBE_TRIES} tries)"


async def _probe_target(http: httpx.AsyncClient, target: str) -> str | None:
    if urlsplit(target).scheme in ("http", "https"):
        return await _probe_url(http, target)
    if target.startswith("/") or os.sep in target:
        return None if os.path.exists(target) else "the path does not exist"
    try:
        await asyncio.get_running_loop().getaddrinfo(target, None)
    except OSError as exc:
        return f"the host does not resolve ({exc})"
    return None
