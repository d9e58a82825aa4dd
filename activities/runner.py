"""How any tool becomes a Temporal activity: one wrapper, every tool.

The wrapper gives each tool run the same guarantees:
- liveness: a background heartbeat every second, so a killed worker is noticed within
  the workflow's heartbeat timeout, whatever the tool is doing;
- checkpoints: the tool calls `ctx.checkpoint(...)`; findings are written to the store
  FIRST and the checkpoint heartbeated after, so a resumed attempt never skips a finding
  and the store's fingerprint upsert means it never duplicates one;
- resume: `ctx.resume` is the last checkpoint of the previous attempt;
- errors: every failure is classified once (`secflow.errors.classify`), recorded in the
  store's error ledger, and raised as `ApplicationError(type=<category>)` with the
  jittered / Retry-After delay from the retry table;
- shutdown: a worker stopping (SIGTERM) hands the attempt back as a transient error so
  another worker resumes it from the checkpoint at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from secflow import metrics
from secflow.documents import cached_spec, load_spec
from secflow.engagement import EngagementLimits, apply_limits
from secflow.error_stats import dependency_of, resolve_recovered
from secflow.errors import Category, Classification, PermanentError, ScopeViolation, classify, to_application_error
from secflow.findings import Finding
from secflow.logging import get_logger
from secflow.models import StageTaskInput, StageTaskResult
from secflow.redaction import redact
from secflow.retries import next_delay
from secflow.scope import Address, Scope
from secflow.spec import Spec
from secflow.store import ErrorEvent, FindingsStore, open_store

HEARTBEAT_EVERY = 1.0  # seconds; the workflow's heartbeat timeouts: 4 s for tools, 5 s for bookkeeping


@dataclass
class ToolOutput:
    """What a tool returns: the COMPLETE set of its findings for this target."""

    findings: list[Finding] = field(default_factory=list)
    items_done: int = 0
    items_total: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    degraded_reason: str = ""  # non-empty: the stage succeeded but is marked degraded


class ToolContext:
    """What a tool may use: its input, the scope, the store, checkpoints and a logger."""

    def __init__(
        self, inp: StageTaskInput, store: FindingsStore, resume: dict[str, Any] | None, spec: Spec | None = None
    ) -> None:
        self.input = inp
        self.store = store
        self.resume = resume
        self.spec = spec  # the stored spec when the input names one (target auth reads it)
        # The scope and chaos section come from the stored spec when the input names it
        # (the sharded workflow never copies them per activity), else from the input.
        self.scope = Scope.parse(spec.scope.allow, spec.scope.deny) if spec is not None else Scope.parse(inp.scope)
        # Rules of engagement: the workflow folded the stage's limits into the options;
        # fold them again from the stored spec (idempotent), so an input built by an older
        # workflow, or for a fallback tool, still honours them (secflow/engagement.py).
        self.options = apply_limits(inp.tool, inp.options, _stage_limits(spec, inp.stage_id))
        self._chaos = dict(spec.chaos) if spec is not None else inp.chaos
        self.log = get_logger(stage=inp.stage_id, target=inp.target, tool=inp.tool)
        self.heartbeat_payload: dict[str, Any] = resume or {}
        self.inserted = 0

    @property
    def chaos(self) -> Any:
        """The spec's `chaos:` section for `client_for(..., chaos=ctx.chaos)` (first_n per assessment)."""
        from secflow.http import SpecChaos

        return SpecChaos(self._chaos, scope=self.input.assessment_id)

    def require_in_scope(self, *, url: str | None = None, host: str | None = None, path: str | None = None) -> None:
        """Defence in depth: the spec was validated, but check again right before touching.
        Tools that connect also check the address they connect to (`connect_address`)."""
        for kind, value in (("url", url), ("host", host), ("path", path)):
            if value is None:
                continue
            why = self.scope.refusal(kind, value)
            if why is not None:
                raise ScopeViolation(f"{kind} {redact(ascii(value)[1:-1])}: {why}")

    async def connect_address(self, host: str, port: int = 0) -> Address:
        """Resolve `host` once and check the address against the scope; connect only to it."""
        return await self.scope.connect_address(host, port)

    def source_tree(self) -> tuple[str, str]:
        """Resolve a `path:` target for a scanner: (real path, root directory).

        Scope is checked on the path as given AND after following symlinks, so a link
        inside scope cannot lead a scanner out of it; a path that does not exist is a
        permanent error (retrying will not create it).
        """
        given = os.path.abspath(self.input.target)
        real = os.path.realpath(self.input.target)  # not of `given`: `link/..` is the link target's parent
        self.require_in_scope(path=given)
        self.require_in_scope(path=real)
        if not os.path.exists(real):
            raise PermanentError(f"{self.input.tool} target {self.input.target} does not exist")
        return real, real if os.path.isdir(real) else os.path.dirname(real)

    def working_dir(self, fallback: str) -> str:
        """Where a scanner process runs: the assessment's workspace when there is one."""
        workspace = self.input.workspace
        return workspace if workspace and os.path.isdir(workspace) else fallback

    async def save_findings(self, findings: list[Finding]) -> None:
        if not findings:
            return
        result = await asyncio.to_thread(self.store.upsert_findings, self.input.assessment_id, self.input.stage_id, findings)
        self.inserted += result.inserted

    async def checkpoint(self, payload: dict[str, Any], findings: list[Finding] | None = None) -> None:
        """Persist `findings`, then make `payload` what the next attempt resumes from."""
        await self.save_findings(findings or [])
        self.heartbeat_payload = payload
        activity.heartbeat(payload)


ToolFn = Callable[[ToolContext], Awaitable[ToolOutput]]


def _stage_limits(spec: Spec | None, stage_id: str) -> EngagementLimits | None:
    if spec is None:
        return None
    try:
        return spec.stage(stage_id).engagement_limits
    except KeyError:
        return None


async def run_tool(tool: ToolFn, inp: StageTaskInput) -> StageTaskResult:
    info = activity.info()
    store = open_store()
    resume = _last_checkpoint(info.heartbeat_details)
    spec = (cached_spec(inp.spec_ref) or await asyncio.to_thread(load_spec, store, inp.spec_ref)) if inp.spec_ref else None
    ctx = ToolContext(inp, store, resume, spec)
    log = ctx.log.bind(attempt=info.attempt)
    # A first attempt starting is routine (one line per target at 100,000 targets); a
    # retry or a resume is what an operator looks for.
    (log.info if info.attempt > 1 or resume else log.debug)("tool attempt started", resumed=bool(resume))
    await _account_for_lost_attempt(store, inp, info)

    keepalive = asyncio.create_task(_keep_heartbeating(ctx))
    try:
        output = await tool(ctx)
        await ctx.save_findings(output.findings)
    except asyncio.CancelledError:
        if activity.is_worker_shutdown():
            # Not a user cancel: this worker is stopping. Hand the attempt back so another
            # worker resumes from the last checkpoint right away.
            activity.heartbeat(ctx.heartbeat_payload)
            log.warning("worker shutting down; handing the attempt back")
            message = "worker shut down during the attempt; resuming elsewhere from the last checkpoint"
            event = _event(inp, info, Category.TRANSIENT, message, retryable=True)
            event.reason = "worker shutdown"
            await _record(ctx.store, event, log)
            raise ApplicationError(
                message,
                {"attempt": info.attempt},
                type=Category.TRANSIENT.value,
                next_retry_delay=timedelta(milliseconds=100),
            ) from None
        log.info("tool attempt cancelled")
        raise
    except Exception as exc:  # classified, recorded and re-raised below
        raise await _fail(exc, ctx, info) from exc
    finally:
        keepalive.cancel()

    if info.attempt > 1 and output.degraded_reason:
        # It finished with less than it should have (e.g. a service stayed down): the
        # earlier attempts' errors were lived with, not recovered from.
        await asyncio.to_thread(store.resolve_errors, inp.assessment_id, inp.stage_id, inp.target, "degraded")
    elif info.attempt > 1:
        recovered = await asyncio.to_thread(
            resolve_recovered, store, inp.assessment_id, inp.stage_id, inp.target, _attempt_prefix(info)
        )
        for category, seconds in recovered.items():
            metrics.record_recoveries(category, seconds)
    if info.attempt > 1 or inp.rung != "retry":
        # The ladder: this rung (Temporal's retry, the fallback tool, a human's retry)
        # healed the target's earlier errors (secflow/ladder.py).
        await _settle_rung(store, inp, "degraded" if output.degraded_reason else "recovered", log)
    counts = _by_severity(output.findings)
    log.info("tool attempt succeeded", findings=len(output.findings))
    return StageTaskResult(
        target=inp.target,
        tool=inp.tool,
        attempt=info.attempt,
        findings=len(output.findings),
        inserted=ctx.inserted,
        by_severity=counts,
        items_done=output.items_done,
        items_total=output.items_total,
        outputs=output.outputs,
        degraded_reason=output.degraded_reason,
        resumed=bool(resume),
    )


async def _settle_rung(store: FindingsStore, inp: StageTaskInput, outcome: str, log: Any) -> None:
    try:
        await asyncio.to_thread(store.recovery.settle, inp.assessment_id, inp.stage_id, inp.target, inp.rung, outcome)
    except Exception as exc:  # the ledger is down: the findings are stored; say so, keep going
        c = classify(exc)
        log.error("could not record the ladder rung in the store", category=c.category.value, reason=c.reason, error=str(exc))


async def _fail(exc: BaseException, ctx: ToolContext, info: activity.Info) -> ApplicationError:
    """Classify once, record in the ledger, and build what Temporal sees."""
    inp = ctx.input
    classification: Classification = classify(exc, tool=inp.tool)
    delay = next_delay(inp.retry, info.attempt, retry_after=classification.retry_after) if classification.retryable else None
    error = to_application_error(
        exc,
        classification,
        next_retry_delay=delay,
        details=[{"attempt": info.attempt, "category": classification.category.value, "reason": classification.reason}],
    )
    log = ctx.log.bind(attempt=info.attempt, category=classification.category.value)
    if classification.category in (Category.INTERNAL, Category.SECURITY):
        log.critical("tool attempt failed", error=error.message, reason=classification.reason, exc_info=exc)
    else:
        log.warning("tool attempt failed", error=error.message, reason=classification.reason)
    event = _event(inp, info, classification.category, error.message, classification.retryable)
    event.dependency = dependency_of(exc)
    event.reason = classification.reason
    await _record(ctx.store, event, log)
    return error


def _event(
    inp: StageTaskInput, info: activity.Info, category: Category, message: str, retryable: bool, *, attempt: int | None = None
) -> ErrorEvent:
    """One ledger entry per attempt: the id is the attempt's, so recording twice is harmless."""
    attempt = info.attempt if attempt is None else attempt
    return ErrorEvent(
        event_id=f"{_attempt_prefix(info)}{attempt}",
        assessment_id=inp.assessment_id,
        stage_id=inp.stage_id,
        target=inp.target,
        tool=inp.tool,
        attempt=attempt,
        category=category.value,
        message=message,
        retryable=retryable,
        occurred_at=datetime.now(UTC),
        outcome=None,
        rung=inp.rung,
    )


async def _account_for_lost_attempt(store: FindingsStore, inp: StageTaskInput, info: activity.Info) -> None:
    """A previous attempt killed with its worker never recorded its own error: do it now."""
    if info.attempt <= 1:
        return
    event = _event(
        inp,
        info,
        Category.TRANSIENT,
        "attempt ended without reporting back (worker lost, timed out or shut down)",
        True,
        attempt=info.attempt - 1,
    )
    event.reason = "attempt lost (no report from its worker)"
    # insert-or-ignore: if that attempt did record its error, this changes nothing
    await _record(store, event, get_logger(stage=inp.stage_id, target=inp.target))


def _attempt_prefix(info: activity.Info) -> str:
    """Event ids of one activity execution share this prefix (then the attempt number)."""
    return f"{info.workflow_run_id}/{info.activity_id}/"


async def _record(store: FindingsStore, event: ErrorEvent, log: Any) -> None:
    try:
        stored = await asyncio.to_thread(store.record_error, event)
    except Exception as exc:  # the ledger is down: say so loudly, keep the original error
        stored = True  # the metric still counts it: it happened
        c = classify(exc)
        log.error("could not record error in the store", category=c.category.value, reason=c.reason, error=str(exc))
    if stored:  # once per event, like the ledger (a re-recorded lost attempt is not new)
        metrics.record_error(event.category, event.tool, event.dependency)


async def _keep_heartbeating(ctx: ToolContext) -> None:
    # Sleep first: most tool runs on one target end within a second, and a heartbeat at
    # once would double the calls to the server for them. A killed worker is still noticed
    # by the heartbeat timeout (4 s), counted from the attempt's start.
    while True:
        await asyncio.sleep(HEARTBEAT_EVERY)
        activity.heartbeat(ctx.heartbeat_payload)


async def _keep_alive() -> None:
    # Sleep first, as the tool runner does: most bookkeeping ends within a second.
    while True:
        await asyncio.sleep(HEARTBEAT_EVERY)
        activity.heartbeat()


def _last_checkpoint(details: Any) -> dict[str, Any] | None:
    if details and isinstance(details[0], dict) and details[0]:
        return details[0]
    return None


def _by_severity(findings: list[Finding]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.severity.value] = counts.get(f.severity.value, 0) + 1
    return counts


def classified(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """For small non-tool activities: any exception leaves as a classified ApplicationError.

    They carry no retry plan of their own (the workflow's policy decides when), but the
    category still decides whether Temporal retries at all.

    While the activity runs it heartbeats in the background (every `HEARTBEAT_EVERY`, no
    details), so with the heartbeat timeout the workflow sets (workflows/assessment/calls.py)
    a killed worker is noticed in seconds, not at the start-to-close timeout. An activity
    that heartbeats progress itself still may; nothing resumes from these details.
    """
    import functools

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        keepalive = asyncio.create_task(_keep_alive())
        try:
            result = await fn(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # classified, recorded and re-raised for Temporal
            classification = classify(exc)
            info = activity.info()
            log = get_logger(activity_type=info.activity_type)
            log.warning("activity failed", category=classification.category.value, reason=classification.reason)
            # Already an ApplicationError (typed by whoever raised it): recorded, passed on as is.
            error = (
                exc
                if isinstance(exc, ApplicationError)
                else to_application_error(
                    exc,
                    classification,
                    details=[
                        {"attempt": info.attempt, "category": classification.category.value, "reason": classification.reason}
                    ],
                )
            )
            try:
                event = classified_event(info, args[0] if args else None, classification, redact(error.message))
                event.dependency = dependency_of(exc)
                store = open_store()
            except Exception as ledger_exc:  # no ledger: say so, keep the original error
                c = classify(ledger_exc)
                log.error("could not record error in the store", category=c.category.value, reason=c.reason)
            else:
                await _record(store, event, log)
            if error is exc:
                raise
            raise error from exc
        finally:
            keepalive.cancel()
        info = activity.info()
        if info.attempt > 1:  # Temporal's retry recovered the earlier attempts' failures
            earlier = [_classified_event_id(info, n) for n in range(1, info.attempt)]
            try:
                await asyncio.to_thread(open_store().resolve_error_ids, earlier, "recovered")
            except Exception as exc:  # the ledger is down: the result still counts
                c = classify(exc)
                get_logger(activity_type=info.activity_type).error(
                    "could not resolve recovered errors", category=c.category.value, reason=c.reason
                )
        return result

    return wrapper


def _classified_event_id(info: activity.Info, attempt: int) -> str:
    return f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}/{attempt}"


def classified_event(info: activity.Info, arg: Any, classification: Classification, message: str) -> ErrorEvent:
    """The ledger entry of a failed `@classified` attempt.

    The id is ``<workflow id>/<run id>/<activity id>/<attempt>``: recording the same
    attempt twice stores it once. The assessment, stage and target come from the input
    when it names them (else the assessment is the workflow id).
    """
    stage_id = getattr(arg, "stage_id", "")
    target = getattr(arg, "target", "")
    return ErrorEvent(
        event_id=_classified_event_id(info, info.attempt),
        assessment_id=getattr(arg, "assessment_id", "") or info.workflow_id or info.activity_type,
        stage_id=stage_id if isinstance(stage_id, str) else "",
        target=target if isinstance(target, str) else "",
        tool=info.activity_type,
        attempt=info.attempt,
        category=classification.category.value,
        message=message,
        retryable=classification.retryable,
        occurred_at=datetime.now(UTC),
        reason=classification.reason,
    )
