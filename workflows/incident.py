"""IncidentWorkflow: one problem that needs a human, told to the right people on time.

One workflow per dedup key (id `incident-<key>`, see secflow/incidents.py), so the same
problem seen twice is one incident with two occurrences, never two pages. The process:

1. ask `plan_alerts` for the severity's plan (timers and channel tiers from the routing
   config: read by an activity so a replay sees the plan the run saw);
2. notify tier 1 at once (P4 is summary-only: no page, a `summary` message every
   `summary_every` seconds while unresolved);
3. escalate with durable timers (`workflow.wait_condition` with a timeout):
   - not acknowledged within `ack_within`  -> the next tier is paged;
   - not resolved within `resolve_within`  -> the next tier is paged, EVEN IF acknowledged:
     an ack says someone is on it, the resolve deadline says it is taking too long.
   An ack therefore stops the acknowledgement escalation only. Past the last tier, an
   escalation pages the last tier again. Each deadline fires at most once;
4. on `ack`, tell the channels already notified (`acknowledge`); on `resolve`, tell them
   (`resolve`) and end.

Every channel send is its own activity, all sends of one step run in parallel, and a
channel that stays down is recorded as `failed` in the incident's notifications, never
raised: a dead channel does not block the others, nor the escalation.

Signals `ack` / `resolve` take `{"by": "...", "note": "..."}` (IncidentAnswer), so
`temporal workflow signal --workflow-id incident-<key> --name ack --input '{"by":"alice"}'`
works; a payload that does not validate is recorded in `answers` with accepted=false and
the reason, and changes nothing. Updates of the same names are the starter's validated
path. `recur` (from the assessment) adds an occurrence; one that arrives after the
resolve (while the resolve messages go out) reopens the incident as a new run of the
same id (continue-as-new). Query `incident` answers the
whole record (IncidentStatus), which is also the workflow's result.

`assessment_ended` (from the assessment, at its end) applies the rule of
`secflow.incidents.settles_at_end`: an incident whose cause was lived with resolves itself
(by "secflow"); any other stays open and from then on offers the commands that work after
the end (`dlq replay`, `dlq list`, `report`) instead of `retry`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.alerts import plan_alerts, send_alert
    from secflow import guidance
    from secflow.incidents import (
        AlertPlan,
        AlertRequest,
        AnswerRecord,
        AssessmentEnded,
        Escalation,
        IncidentAnswer,
        IncidentEvent,
        IncidentRef,
        IncidentState,
        IncidentStatus,
        Notification,
        PlanRequest,
        Recurrence,
        default_plan,
        delivery_summary,
        settles_at_end,
    )
    from secflow.retries import ALERT_SEND_PLAN, INCIDENT_PLANNING_PLAN, to_retry_policy
    from workflows.failures import error_from_activity

SA_SEVERITY = SearchAttributeKey.for_keyword("SecflowIncidentSeverity")
SA_STATE = SearchAttributeKey.for_keyword("SecflowIncidentState")

PLAN_TIMEOUT = timedelta(seconds=30)
PLAN_RETRY = to_retry_policy(INCIDENT_PLANNING_PLAN)
SEND_TIMEOUT = timedelta(seconds=60)
# A channel gets a few tries; the alert activities already retry HTTP inside an attempt.
SEND_RETRY = to_retry_policy(ALERT_SEND_PLAN)

ANSWER_SHAPE = '{"by": "<who>", "note": "<optional>"}'


_Answer = Literal["ack", "resolve"]  # what a person may answer to an incident


def _answer_problem(payload: Any) -> tuple[IncidentAnswer | None, str]:
    """Validate an ack/resolve payload; return (answer, "") or (None, why not)."""
    if payload is None:
        return None, f"missing payload: expected {ANSWER_SHAPE}"
    if not isinstance(payload, dict):
        return None, f"expected a JSON object {ANSWER_SHAPE}, got {type(payload).__name__}"
    try:
        return IncidentAnswer.model_validate(payload), ""
    except ValidationError as err:
        problems = []
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"]) or "payload"
            msg = "unknown field (allowed: by, note)" if e["type"] == "extra_forbidden" else e["msg"]
            problems.append(f"{field}: {msg}")
        return None, "; ".join(problems)


@workflow.defn(name="IncidentWorkflow")
class IncidentWorkflow:
    @workflow.init
    def __init__(self, ref: IncidentRef) -> None:
        self._ref = ref
        self._s = IncidentStatus(
            incident_id=workflow.info().workflow_id,
            dedup_key=ref.dedup_key,
            severity=ref.severity,
            state=IncidentState.OPEN,
            reason=ref.reason,
            title=ref.title,
            category=ref.category,
            message=ref.message,
            assessment_id=ref.assessment_id,
            workflow_id=ref.workflow_id,
            stage_id=ref.stage_id,
            target=ref.target,
            commands=list(ref.commands),
            occurrences=max(ref.occurrences, 1),
        )
        self._notified: dict[str, int] = {}  # channel -> tier it was paged at, in order
        self._sequence = 0
        # Sends run in the background, in order per channel (a resolve never overtakes the
        # trigger it resolves), so a slow or dead channel delays neither the others nor
        # the escalation timers; the run waits for all of them before it ends.
        self._sends: list[asyncio.Task[None]] = []
        self._last_send: dict[str, asyncio.Task[None]] = {}
        self._seen_occurrences: set[str] = {ref.occurrence_id} if ref.occurrence_id else set()
        self._published_state: str | None = None
        self._running = False
        self._reopen: Recurrence | None = None  # the problem came back after the resolve

    # ------------------------------------------------------------------ the process

    @workflow.run
    async def run(self, ref: IncidentRef) -> IncidentStatus:
        s = self._s
        s.opened_at = workflow.now()
        self._running = True
        self._count("secflow_incidents_opened_total", "Incidents opened, by severity")
        self._publish()
        plan = await self._plan()
        s.plan = plan
        if plan.summary_only:
            await self._summaries(plan)
        else:
            if s.state != IncidentState.RESOLVED:  # resolved while the plan was read: nobody to wake
                self._page(IncidentEvent.TRIGGER, 1)
            await self._escalate(plan)
        self._send(IncidentEvent.RESOLVE, list(self._notified.items()), by=s.resolved_by, note=s.resolution_note)
        s.next_escalation_at = None
        self._publish()
        await workflow.wait_condition(lambda: all(t.done() for t in self._sends))
        for task in self._sends:
            task.result()  # a bug in the send bookkeeping fails the workflow task, visibly
        self._publish()
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._reopen is not None:
            # Same incident id, fresh run: new timers, tier 1 paged again, one occurrence.
            workflow.continue_as_new(
                self._ref.model_copy(
                    update={
                        "message": self._reopen.message or self._ref.message,
                        "occurrence_id": self._reopen.occurrence_id,
                        "occurrences": 1,
                        "opened_at": None,
                    }
                )
            )
        return s

    async def _plan(self) -> AlertPlan:
        try:
            return await workflow.execute_activity(
                plan_alerts,
                PlanRequest(severity=self._s.severity),
                start_to_close_timeout=PLAN_TIMEOUT,
                retry_policy=PLAN_RETRY,
            )
        except ActivityError as err:
            # Without a plan, the incident still exists, is visible and answerable, and
            # keeps the default timers; it just has nobody to page.
            error = error_from_activity(err, INCIDENT_PLANNING_PLAN)
            workflow.logger.error(
                "alert plan unavailable; using default timers without channels",
                extra={"category": error.category, "error": error.message},
            )
            return default_plan(self._s.severity)

    async def _escalate(self, plan: AlertPlan) -> None:
        """Tier by tier until resolved (the rule is in the module docstring)."""
        s = self._s
        assert s.opened_at is not None
        ack_at = s.opened_at + timedelta(seconds=plan.ack_within) if plan.ack_within else None
        resolve_at = s.opened_at + timedelta(seconds=plan.resolve_within) if plan.resolve_within else None
        ack_told = False
        while s.state != IncidentState.RESOLVED:
            if s.state == IncidentState.ACKNOWLEDGED and not ack_told:
                ack_told = True
                self._send(IncidentEvent.ACKNOWLEDGE, list(self._notified.items()), by=s.acknowledged_by, note=self._ack_note)
                continue
            pending: list[tuple[datetime, Literal["ack_deadline", "resolve_deadline"]]] = []
            if ack_at is not None and s.state == IncidentState.OPEN:
                pending.append((ack_at, "ack_deadline"))
            if resolve_at is not None:
                pending.append((resolve_at, "resolve_deadline"))
            before = s.state
            if not pending:
                s.next_escalation_at = None
                self._publish()
                await workflow.wait_condition(lambda: s.state != before)  # noqa: B023 - awaited in this iteration
                continue
            when, why = min(pending)
            s.next_escalation_at = when
            self._publish()
            remaining = (when - workflow.now()).total_seconds()
            if remaining > 0:
                try:
                    await workflow.wait_condition(lambda: s.state != before, timeout=remaining)  # noqa: B023 - awaited in this iteration
                    continue  # acked or resolved: look again at what is still due
                except TimeoutError:
                    pass
            if why == "ack_deadline":
                ack_at = None
            else:
                resolve_at = None
            tier = self._next_tier(plan)
            s.escalations.append(Escalation(at=workflow.now(), tier=tier, why=why))
            self._count("secflow_incident_escalations_total", "Incident escalations to a next tier, by severity", why=why)
            self._page(IncidentEvent.ESCALATE, tier)

    async def _summaries(self, plan: AlertPlan) -> None:
        """P4: nobody is paged; tier 1 gets a summary every `summary_every` while unresolved.
        (Unresolved means open or acknowledged: an ack does not make the problem go away.)"""
        s = self._s
        every = max(plan.summary_every, 60.0)
        while s.state != IncidentState.RESOLVED:
            s.next_escalation_at = workflow.now() + timedelta(seconds=every)
            self._publish()
            try:
                await workflow.wait_condition(lambda: s.state == IncidentState.RESOLVED, timeout=every)
                return
            except TimeoutError:
                pass
            channels = plan.tiers[0] if plan.tiers else []
            s.tier = max(s.tier, 1)
            for ch in channels:
                self._notified.setdefault(ch, 1)
            self._send(IncidentEvent.SUMMARY, [(ch, 1) for ch in channels])

    def _next_tier(self, plan: AlertPlan) -> int:
        if not plan.tiers:
            return self._s.tier + 1
        return min(self._s.tier + 1, len(plan.tiers))

    def _page(self, event: IncidentEvent, tier: int) -> None:
        plan = self._s.plan
        channels = plan.tiers[tier - 1] if plan and 0 < tier <= len(plan.tiers) else []
        self._s.tier = tier
        for ch in channels:
            self._notified.setdefault(ch, tier)
        self._publish()
        self._send(event, [(ch, tier) for ch in channels])

    def _send(self, event: IncidentEvent, targets: list[tuple[str, int]], *, by: str = "", note: str = "") -> None:
        """One activity per channel, in parallel across channels; failures are recorded,
        not raised. The message is built now (occurrences, tier as of this moment)."""
        for channel, tier in targets:
            self._sequence += 1
            previous = self._last_send.get(channel)
            task = asyncio.create_task(
                self._send_one(previous, event, channel, tier, self._sequence, by, note, workflow.now(), self._current_ref())
            )
            self._last_send[channel] = task
            self._sends.append(task)

    async def _send_one(
        self,
        previous: asyncio.Task[None] | None,
        event: IncidentEvent,
        channel: str,
        tier: int,
        sequence: int,
        by: str,
        note: str,
        at: Any,
        ref: IncidentRef,
    ) -> None:
        if previous is not None:
            await previous
        request = AlertRequest(incident=ref, event=event, channel=channel, tier=tier, sequence=sequence, by=by, note=note)
        try:
            result = await workflow.execute_activity(
                send_alert,
                request,
                start_to_close_timeout=SEND_TIMEOUT,
                retry_policy=SEND_RETRY,
            )
        except ActivityError as err:
            error = error_from_activity(err, ALERT_SEND_PLAN)
            workflow.logger.warning(
                "alert channel failed",
                extra={"channel": channel, "event": event.value, "category": error.category, "error": error.message},
            )
            notification = Notification(
                at=at,
                event=event,
                tier=tier,
                channel=channel,
                sequence=sequence,
                status="failed",
                error=f"{error.category}: {error.message}",
            )
        else:
            notification = Notification(
                at=at,
                event=event,
                tier=tier,
                channel=channel,
                sequence=sequence,
                status=result.status,
                merged_count=result.merged_count,
                external_ref=result.external_ref,
            )
        self._s.notifications.append(notification)
        self._publish()

    def _count(self, name: str, description: str, **labels: str) -> None:
        """A counter through Temporal's workflow metric meter: not emitted on replay, so a
        worker restart does not count an incident twice. Open = opened - resolved."""
        workflow.metric_meter().create_counter(name, description).add(1, {"severity": self._s.severity.value, **labels})

    def _current_ref(self) -> IncidentRef:
        return self._ref.model_copy(
            update={"incident_id": self._s.incident_id, "occurrences": self._s.occurrences, "opened_at": self._s.opened_at}
        )

    @property
    def _ack_note(self) -> str:
        for a in reversed(self._s.answers):
            if a.action == "ack" and a.accepted:
                return a.note
        return ""

    # ------------------------------------------------------------------ answers

    def _check(self, action: _Answer, payload: Any) -> tuple[IncidentAnswer | None, str]:
        answer, problem = _answer_problem(payload)
        if answer is None:
            return None, problem
        s = self._s
        if s.state == IncidentState.RESOLVED:
            return None, f"incident already resolved by {s.resolved_by}"
        if action == "ack" and s.state == IncidentState.ACKNOWLEDGED:
            return None, f"incident already acknowledged by {s.acknowledged_by}"
        return answer, ""

    def _apply(self, action: _Answer, answer: IncidentAnswer, via: Literal["signal", "update"]) -> str:
        s = self._s
        now = workflow.now()
        s.answers.append(AnswerRecord(action=action, at=now, via=via, by=answer.by, note=answer.note))
        if action == "ack":
            s.state = IncidentState.ACKNOWLEDGED
            s.acknowledged_by, s.acknowledged_at = answer.by, now
            message = f"{s.incident_id} acknowledged by {answer.by}"
            self._count("secflow_incidents_acknowledged_total", "Incidents acknowledged, by severity")
        else:
            s.state = IncidentState.RESOLVED
            s.resolved_by, s.resolved_at, s.resolution_note = answer.by, now, answer.note
            message = f"{s.incident_id} resolved by {answer.by}"
            self._count(
                "secflow_incidents_resolved_total",
                "Incidents resolved, by severity and by whom (secflow or a person)",
                by="secflow" if answer.by == "secflow" else "human",
            )
        self._publish()
        return message

    def _handle_signal(self, action: _Answer, payload: Any) -> None:
        answer, problem = self._check(action, payload)
        if answer is None:
            by = payload.get("by", "") if isinstance(payload, dict) and isinstance(payload.get("by"), str) else ""
            workflow.logger.warning("incident answer ignored", extra={"action": action, "reason": problem})
            self._s.answers.append(
                AnswerRecord(action=action, at=workflow.now(), via="signal", by=by[:200], accepted=False, problem=problem)
            )
            self._publish()
            return
        self._apply(action, answer, "signal")

    def _validate(self, action: _Answer, payload: Any) -> None:
        answer, problem = self._check(action, payload)
        if answer is None:
            raise ValueError(problem)

    @workflow.signal(name="ack")
    def ack_signal(self, payload: Any = None) -> None:
        self._handle_signal("ack", payload)

    @workflow.signal(name="resolve")
    def resolve_signal(self, payload: Any = None) -> None:
        self._handle_signal("resolve", payload)

    @workflow.signal(name="recur")
    def recur_signal(self, payload: Any = None) -> None:
        s = self._s
        try:
            recurrence = Recurrence.model_validate(payload if payload is not None else {})
            problem = ""
        except ValidationError as err:
            recurrence, problem = None, f"bad recur payload: {err.errors()[0]['msg']}"
        if recurrence is not None and not problem and recurrence.occurrence_id in self._seen_occurrences:
            problem = f"occurrence {recurrence.occurrence_id} already counted (a retried delivery)"
        if problem or recurrence is None:
            s.answers.append(AnswerRecord(action="recur", at=workflow.now(), accepted=False, problem=problem))
        elif s.state == IncidentState.RESOLVED:
            # The problem is back while this run is still telling people it was resolved:
            # once those messages are out, a new run of this incident opens it again.
            if recurrence.occurrence_id:
                self._seen_occurrences.add(recurrence.occurrence_id)
            self._reopen = recurrence
            s.answers.append(
                AnswerRecord(
                    action="recur",
                    at=workflow.now(),
                    by="secflow",
                    note=f"after the resolve: reopens as a new run. {recurrence.message}"[:2000],
                )
            )
        else:
            if recurrence.occurrence_id:
                self._seen_occurrences.add(recurrence.occurrence_id)
            s.occurrences += 1
            s.answers.append(AnswerRecord(action="recur", at=workflow.now(), by="secflow", note=recurrence.message[:2000]))
        self._publish()

    @workflow.signal(name="assessment_ended")
    def assessment_ended_signal(self, payload: Any = None) -> None:
        s = self._s
        try:
            ended = AssessmentEnded.model_validate(payload if payload is not None else {})
        except ValidationError as err:
            problem = f"bad assessment_ended payload: {err.errors()[0]['msg']}"
            s.answers.append(AnswerRecord(action="assessment_ended", at=workflow.now(), accepted=False, problem=problem))
            self._publish()
            return
        s.assessment_outcome = ended.outcome
        note = settles_at_end(s.reason, s.severity, ended)
        s.answers.append(
            AnswerRecord(
                action="assessment_ended",
                at=workflow.now(),
                by="secflow",
                note=(f"assessment {ended.outcome}" + (f": {note}" if note else ": stays open"))[:2000],
            )
        )
        if s.state == IncidentState.RESOLVED:
            self._publish()
            return
        if ended.commands:
            # `retry` and friends need a running assessment: offer what works now.
            s.commands = [*ended.commands, *self._answer_commands()]
            self._ref = self._ref.model_copy(update={"commands": list(s.commands)})
        if note:
            self._apply("resolve", IncidentAnswer(by="secflow", note=note), "signal")
        else:
            self._publish()

    def _answer_commands(self) -> list[str]:
        return guidance.incident_commands(self._s.incident_id)

    @workflow.update(name="ack")
    def ack_update(self, payload: Any = None) -> str:
        answer, _ = self._check("ack", payload)
        assert answer is not None  # the validator ran first
        return self._apply("ack", answer, "update")

    @ack_update.validator
    def _v_ack(self, payload: Any = None) -> None:
        self._validate("ack", payload)

    @workflow.update(name="resolve")
    def resolve_update(self, payload: Any = None) -> str:
        answer, _ = self._check("resolve", payload)
        assert answer is not None
        return self._apply("resolve", answer, "update")

    @resolve_update.validator
    def _v_resolve(self, payload: Any = None) -> None:
        self._validate("resolve", payload)

    @workflow.query(name="incident")
    def incident(self) -> IncidentStatus:
        return self._s

    # ------------------------------------------------------------------ Web UI

    def _publish(self) -> None:
        if not self._running:
            return
        s = self._s
        if s.state.value != self._published_state:
            self._published_state = s.state.value
            workflow.upsert_search_attributes([SA_SEVERITY.value_set(s.severity.value), SA_STATE.value_set(s.state.value)])
        workflow.set_current_details(self._details())

    def _details(self) -> str:
        s = self._s
        head = f"{s.severity.value} {s.state.value}"
        if s.state == IncidentState.RESOLVED:
            at = s.resolved_at.strftime("%H:%M UTC") if s.resolved_at else ""
            note = f": {s.resolution_note}" if s.resolution_note else ""
            sentence = f"{head} by {s.resolved_by} at {at}{note}"
        elif s.plan is not None and s.plan.summary_only:
            nxt = f", next summary at {s.next_escalation_at:%Y-%m-%d %H:%M} UTC" if s.next_escalation_at else ""
            sentence = f"{head}, summary only (no page){nxt}"
        else:
            told = delivery_summary(s)
            if s.state == IncidentState.ACKNOWLEDGED:
                told += f", acknowledged by {s.acknowledged_by}"
            sentence = f"{head}, {told}"
            if s.next_escalation_at is not None and s.plan is not None and any(s.plan.tiers):
                next_tier = min(s.tier + 1, len(s.plan.tiers)) if s.plan.tiers else s.tier + 1
                unless = "acknowledged" if s.state == IncidentState.OPEN and self._ack_deadline_next() else "resolved"
                sentence += f", escalates to tier {next_tier} at {s.next_escalation_at:%H:%M} UTC unless {unless}"
        if s.occurrences > 1:
            sentence += f" ({s.occurrences} occurrences)"
        if s.assessment_outcome and s.state != IncidentState.RESOLVED:
            sentence += f"; its assessment ended {s.assessment_outcome}"
        text = f"{sentence}. {s.title}"
        if s.state == IncidentState.RESOLVED:
            return text
        if s.assessment_outcome and s.commands:
            text += f"\n\nNow: `{s.commands[0]}`"
        return (
            text
            + f"\n\nAnswer: `{guidance.incident_ack_command(s.incident_id)}` or `{guidance.incident_commands(s.incident_id)[1]}`"
        )

    def _ack_deadline_next(self) -> bool:
        s = self._s
        if s.plan is None or not s.plan.ack_within or s.opened_at is None or s.next_escalation_at is None:
            return False
        return s.next_escalation_at == s.opened_at + timedelta(seconds=s.plan.ack_within)
