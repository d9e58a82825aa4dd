"""The alert activities: `plan_alerts` (who is told what, when) and `send_alert` (tell one channel).

The incident workflow (workflows/incident.py) decides *when*; these decide *how*:

    plan = await workflow.execute_activity(plan_alerts, PlanRequest(severity=sev), ...)
    for channel in plan.tiers[0]:
        await workflow.execute_activity(send_alert, AlertRequest(incident=ref, event=..., channel=channel,
                                                                 tier=1, sequence=n), ...)

`send_alert` is idempotent per (incident, event, tier, channel, sequence): a retry of a
delivery that already went out answers with the first outcome and sends nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.alerts import channels
from secflow import metrics
from secflow.alerting import deliveries
from secflow.alerting.config import ENV_VAR, AlertConfigError, AlertsConfig, load_alerts_config, plan_for
from secflow.alerting.render import build_message, group_key
from secflow.errors import Category, InvalidInputError, classify, to_application_error
from secflow.incidents import AlertPlan, AlertRequest, AlertResult, PlanRequest
from secflow.logging import get_logger
from secflow.store import ErrorEvent, open_store

__all__ = ["current_config", "plan_alerts", "send_alert"]

_cache: tuple[tuple[str, float, int], AlertsConfig] | None = None


def current_config() -> AlertsConfig:
    """The routing file, re-read when it changes (validated every time it is read)."""
    global _cache
    path = os.environ.get(ENV_VAR, "").strip()
    stamp: tuple[str, float, int] = (path, 0.0, 0)
    if path:
        try:
            st = Path(path).stat()
            stamp = (path, st.st_mtime, st.st_size)
        except OSError:
            stamp = (path, -1.0, -1)
    if _cache is not None and _cache[0] == stamp:
        return _cache[1]
    config = load_alerts_config()
    _cache = (stamp, config)
    return config


def _config_or_fail() -> AlertsConfig:
    try:
        return current_config()
    except AlertConfigError as exc:
        # Someone broke the file after the worker started: fail loudly, do not guess.
        raise to_application_error(InvalidInputError(f"bad alert routing config: {exc}")) from None


@activity.defn(name="plan_alerts")
async def plan_alerts(req: PlanRequest) -> AlertPlan:
    """The escalation plan for one severity: SLA timers (seconds) and channel tiers."""
    return plan_for(_config_or_fail(), req.severity)


@activity.defn(name="send_alert")
async def send_alert(req: AlertRequest) -> AlertResult:
    """Send one message about one incident to one channel (or merge, cap or skip it)."""
    config = _config_or_fail()
    log = get_logger(component="alerts", channel=req.channel, event=req.event.value, incident=req.incident.incident_id)
    channel = config.channels.get(req.channel)
    if channel is None:
        raise to_application_error(InvalidInputError(f"channel: no alert channel named {req.channel!r} in {config.source}"))
    if not channels.applies(channel, req):
        return AlertResult(channel=req.channel, status="skipped")

    store = open_store()
    delivery_id = deliveries.delivery_id_for(req)
    grouping = group_key(req.channel, req.incident, req.event)
    claim = await asyncio.to_thread(
        deliveries.claim,
        store,
        req,
        delivery_id=delivery_id,
        group=grouping,
        cooldown=channel.cooldown,
        max_per_hour=channel.max_per_hour,
    )
    if not claim.send:
        status = claim.delivery.status
        if status in ("merged", "capped"):
            log.info(f"alert {status}", count=claim.count)
        # The row's status, read back from the store, is one of deliveries.FINAL: validated, not assumed.
        return AlertResult.model_validate(
            {"channel": req.channel, "status": status, "merged_count": claim.count, "external_ref": claim.delivery.external_ref}
        )

    message = build_message(req, delivery_id, merged_since=claim.merged_since, capped_since=claim.capped_since)
    ctx = channels.SendContext(
        name=req.channel,
        channel=channel,
        req=req,
        msg=message,
        store=store,
        delivery_id=delivery_id,
        secrets=channels.secret_values(channel),
    )
    try:
        outcome = await channels.send(ctx)
    except asyncio.CancelledError:
        raise
    except ApplicationError:
        raise
    except Exception as exc:  # classified, recorded on the delivery row, re-raised for Temporal
        raise await _failed(exc, ctx, log) from None
    await asyncio.to_thread(deliveries.finish, store, delivery_id, outcome.status, external_ref=outcome.external_ref or None)
    if activity.info().attempt > 1:
        await _ledger(lambda: store.resolve_errors(_ledger_assessment(req), LEDGER_STAGE, req.channel, "recovered"), log)
    log.info(
        "alert delivered" if outcome.status == "sent" else "alert skipped", status=outcome.status, merged_since=claim.merged_since
    )
    return AlertResult(
        channel=req.channel, status=outcome.status, merged_count=claim.merged_since, external_ref=outcome.external_ref
    )


# Channel failures go to the error ledger under this pseudo-stage of the incident's
# assessment (tool `alert.<type>`, target = channel name, dependency `alert.<type>.<name>`),
# so `errors stats` counts them by dependency and a later successful attempt marks them
# recovered.
LEDGER_STAGE = "alerts"


def _ledger_assessment(req: AlertRequest) -> str:
    return req.incident.assessment_id or req.incident.incident_id


async def _ledger(write: Callable[[], Any], log: Any) -> Any:
    try:
        return await asyncio.to_thread(write)
    except Exception as exc:  # the ledger is down: say so, keep the channel's outcome
        c = classify(exc)
        log.error("could not update the error ledger", category=c.category.value, reason=c.reason)
        return None


async def _failed(exc: BaseException, ctx: channels.SendContext, log: Any) -> ApplicationError:
    if isinstance(exc, channels.ChannelError):
        verdict, text = exc.classification, str(exc)
    else:
        verdict = classify(exc)
        text = f"channel {ctx.name} ({ctx.channel.type}): {type(exc).__name__}: {exc}"
    text = ctx.scrub(text)
    if not verdict.retryable:
        # A later call with the same delivery id (a replayed workflow task, a manual
        # retry) tries again; meanwhile the row is no group head and takes no cap slot.
        try:
            await asyncio.to_thread(deliveries.finish, ctx.store, ctx.delivery_id, "failed")
        except Exception as store_exc:  # keep the channel's error; say the store failed too
            c = classify(store_exc)
            log.error("could not record failed delivery", category=c.category.value, reason=c.reason)
    info = activity.info()
    # The last attempt Temporal will make: nothing will mark these errors recovered, so
    # this one and the earlier attempts' entries end `failed` in the ledger.
    max_attempts = info.retry_policy.maximum_attempts if info.retry_policy else 0
    final = not verdict.retryable or (max_attempts > 0 and info.attempt >= max_attempts)
    event = ErrorEvent(
        event_id=f"{info.workflow_run_id}/{info.activity_id}/{info.attempt}",
        assessment_id=_ledger_assessment(ctx.req),
        stage_id=LEDGER_STAGE,
        target=ctx.name,
        tool=f"alert.{ctx.channel.type}",
        attempt=info.attempt,
        category=verdict.category.value,
        message=text,
        retryable=verdict.retryable,
        occurred_at=datetime.now(UTC),
        outcome="failed" if final else None,
        dependency=channels.dependency_name(ctx.channel, ctx.name),
    )
    if await _ledger(lambda: ctx.store.record_error(event), log):
        metrics.record_error(event.category, event.tool, event.dependency)
    if final:
        await _ledger(lambda: ctx.store.resolve_errors(_ledger_assessment(ctx.req), LEDGER_STAGE, ctx.name, "failed"), log)
    level = "error" if verdict.category in (Category.PERMANENT, Category.VALIDATION, Category.INTERNAL) else "warning"
    getattr(log, level)(
        "alert delivery failed",
        category=verdict.category.value,
        reason=verdict.reason,
        retryable=verdict.retryable,
        attempt=activity.info().attempt,
        error=text,
    )
    delay = timedelta(seconds=verdict.retry_after) if verdict.retry_after else None
    return to_application_error(text, verdict, next_retry_delay=delay)
