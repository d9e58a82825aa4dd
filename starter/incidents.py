"""`python -m starter incidents list|show|ack|resolve`: the people side of escalation.

`list` reads Temporal visibility (WorkflowType and the SecflowIncidentState search
attribute), so it needs no worker; `show` asks the running incident (query `incident`) or
reads a closed one's result; `ack`/`resolve` are validated Temporal Updates: a refusal
(already acknowledged, already resolved) is an error for the caller and leaves no trace.
The same answers by signal, for tctl and the temporal CLI, are in the README.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from secflow.incidents import IncidentAnswer, IncidentStatus, delivery_summary
from secflow.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
_INCIDENT_ID = re.compile(r"^incident-[0-9a-f]{8,64}$")
STATES = ("open", "acknowledged", "resolved", "active", "all")
SA_SEVERITY = SearchAttributeKey.for_keyword("SecflowIncidentSeverity")
SA_STATE = SearchAttributeKey.for_keyword("SecflowIncidentState")


def _incident_id(value: str) -> str:
    if not _INCIDENT_ID.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an incident id (incident-<hex>, as `incidents list` and `starter status` show it)"
        )
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser("incidents", help="list, show, acknowledge and resolve incidents")
    isub = p.add_subparsers(dest="incidents_command", required=True, metavar="ACTION")

    q = isub.add_parser("list", help="incidents from Temporal visibility")
    q.add_argument(
        "--state",
        choices=STATES,
        default="active",
        help="open, acknowledged, resolved, active (open or acknowledged; the default) or all",
    )
    q.add_argument("--json", action="store_true")

    q = isub.add_parser("show", help="one incident: state, tier, occurrences, notifications, answers")
    q.add_argument("id", type=_incident_id)
    q.add_argument("--json", action="store_true")

    for action, what in (
        ("ack", "acknowledge: stops the acknowledgement escalation"),
        ("resolve", "resolve: tells the channels and ends it"),
    ):
        q = isub.add_parser(action, help=what)
        q.add_argument("id", type=_incident_id)
        q.add_argument("--by", default=None, help="who answers (default: your user name)")
        q.add_argument("--note", default="", help="what was done / why")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    from starter.cli import CliError, connect_or_fail

    answer: IncidentAnswer | None = None
    if args.incidents_command in ("ack", "resolve"):
        try:
            answer = IncidentAnswer(by=args.by if args.by is not None else getpass.getuser(), note=args.note)
        except ValidationError as err:
            problems = "; ".join(f"--{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
            raise CliError(problems, EXIT_BAD_INPUT) from None
    client = await connect_or_fail(settings)
    if args.incidents_command == "list":
        return await cmd_list(client, args)
    if args.incidents_command == "show":
        return await cmd_show(client, args)
    assert answer is not None
    return await cmd_answer(client, args.incidents_command, args.id, answer)


def _visibility_query(state: str) -> str:
    query = "WorkflowType = 'IncidentWorkflow'"
    if state == "active":
        query += " AND SecflowIncidentState IN ('open', 'acknowledged')"
    elif state != "all":
        query += f" AND SecflowIncidentState = '{state}'"
    return query


async def _readable_memo(wf: Any) -> dict[str, Any]:
    """The incident's memo, or a note when this key ring cannot decrypt it (an incident
    written under another ring must not stop the listing of all the others)."""
    from secflow.codec import CodecError

    try:
        return dict(await wf.memo())
    except CodecError as err:
        return {"title": f"(memo unreadable: {err})"}


async def cmd_list(client: Client, args: argparse.Namespace) -> int:
    from starter.cli import CliError

    rows: list[dict[str, Any]] = []
    try:
        async for wf in client.list_workflows(_visibility_query(args.state)):
            sa = wf.typed_search_attributes
            memo = await _readable_memo(wf)
            rows.append(
                {
                    "incident_id": wf.id,
                    "severity": sa.get(SA_SEVERITY) or "",
                    "state": sa.get(SA_STATE) or "",
                    "workflow_status": wf.status.name if wf.status else "",
                    "opened_at": wf.start_time.isoformat(),
                    "closed_at": wf.close_time.isoformat() if wf.close_time else None,
                    "title": memo.get("title", ""),
                    "assessment_id": memo.get("assessment_id", ""),
                    "stage_id": memo.get("stage_id", ""),
                    "reason": memo.get("reason", ""),
                }
            )
    except RPCError as err:
        raise CliError(f"listing incidents failed: {err.message}") from None
    rows.sort(key=lambda r: (r["severity"] or "P9", r["opened_at"] or ""))
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no incidents ({args.state})")
        return EXIT_OK
    # What a person reads first (severity, state, which assessment and stage), then the id
    # to answer with and the title.
    width_a = max([len("ASSESSMENT"), *(len(r["assessment_id"]) for r in rows)])
    width_s = max([len("STAGE"), *(len(r["stage_id"]) for r in rows)])
    print(f"{'SEV':<3} {'STATE':<12} {'ASSESSMENT':<{width_a}} {'STAGE':<{width_s}} {'INCIDENT':<41} TITLE")
    for r in rows:
        print(
            f"{r['severity'] or '?':<3} {r['state'] or '?':<12} {r['assessment_id'] or '-':<{width_a}} "
            f"{r['stage_id'] or '-':<{width_s}} {r['incident_id']:<41} {r['title']}"
        )
    print(f"\n{len(rows)} incident{'s' if len(rows) != 1 else ''} ({args.state})")
    return EXIT_OK


async def fetch_incident(client: Client, incident_id: str) -> IncidentStatus:
    from starter.cli import CliError, require_worker

    handle = client.get_workflow_handle(incident_id, result_type=IncidentStatus)
    try:
        desc = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no incident with id {incident_id!r}") from None
        raise CliError(err.message) from None
    if desc.status is not None and desc.status.name != "RUNNING":
        try:
            return await handle.result(follow_runs=False)
        except (WorkflowFailureError, RPCError) as err:
            raise CliError(f"incident {incident_id} ended without a record ({desc.status.name}): {err}") from None
    await require_worker(client, desc.task_queue, "the incident query would wait for one")
    try:
        return await handle.query("incident", result_type=IncidentStatus)
    except RPCError as err:
        raise CliError(f"incident query failed (is a worker running on this task queue?): {err.message}") from None


async def cmd_show(client: Client, args: argparse.Namespace) -> int:
    status = await fetch_incident(client, args.id)
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        print(render_incident(status))
    return EXIT_OK


async def cmd_answer(client: Client, action: str, incident_id: str, answer: IncidentAnswer) -> int:
    from starter.cli import CliError, require_worker, send_update

    handle = client.get_workflow_handle(incident_id)
    try:
        desc = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no incident with id {incident_id!r}") from None
        raise CliError(err.message) from None
    if desc.status is None or desc.status.name != "RUNNING":
        raise CliError(f"{action} refused: incident {incident_id} has ended (it is resolved)")
    await require_worker(client, desc.task_queue, f"`incidents {action}` would wait for one")
    message = await send_update(
        handle, action, answer, command=action, gone=f"{action} refused: incident {incident_id} has ended"
    )
    print(message)
    sys.stdout.flush()
    return EXIT_OK


def render_incident(s: IncidentStatus) -> str:
    lines = [f"{s.incident_id}: {s.severity.value} {s.state.value} - {s.title}"]
    told = "summary only (no page)" if s.plan is not None and s.plan.summary_only else delivery_summary(s)
    lines.append(f"  reason: {s.reason} ({s.category}); occurrences: {s.occurrences}; {told}")
    lines.append(
        f"  assessment: {s.assessment_id}"
        + (f", stage {s.stage_id}" if s.stage_id else "")
        + (f", target {s.target}" if s.target else "")
    )
    if s.assessment_outcome:
        lines[-1] += f" (ended {s.assessment_outcome})"
    lines.append(f"  message: {s.message}")
    if s.opened_at:
        lines.append(f"  opened: {s.opened_at:%Y-%m-%d %H:%M:%S} UTC")
    if s.next_escalation_at:
        lines.append(f"  next escalation: {s.next_escalation_at:%Y-%m-%d %H:%M:%S} UTC")
    if s.acknowledged_by:
        lines.append(f"  acknowledged by {s.acknowledged_by} at {s.acknowledged_at:%Y-%m-%d %H:%M:%S} UTC")
    if s.resolved_by:
        note = f": {s.resolution_note}" if s.resolution_note else ""
        lines.append(f"  resolved by {s.resolved_by} at {s.resolved_at:%Y-%m-%d %H:%M:%S} UTC{note}")
    for n in s.notifications:
        extra = f" ({n.error})" if n.error else (f" x{n.merged_count}" if n.merged_count else "")
        lines.append(f"  {n.at:%H:%M:%S} {n.event.value:<11} tier {n.tier} {n.channel:<12} {n.status}{extra}")
    for e in s.escalations:
        lines.append(f"  {e.at:%H:%M:%S} escalated to tier {e.tier} ({e.why})")
    for a in s.answers:
        if not a.accepted:
            lines.append(f"  {a.at:%H:%M:%S} {a.action} via {a.via} NOT accepted: {a.problem}")
    if s.commands and s.state.value != "resolved":
        lines.append("  answer with:")
        lines += [f"    {c}" for c in s.commands]
    return "\n".join(lines)
