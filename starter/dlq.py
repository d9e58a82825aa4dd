"""python -m starter dlq list|show|replay|purge: work the dead-letter queue.

IDs: an entry's id is its task id, ``<workflow id>/<run id>/<stage>/<target or ->/<reason>``
(it contains '/', and a URL target adds more). Every command also accepts the entry's
*ref*, the first 10 hex characters of the id's SHA-256 that `dlq list` shows (any unique
prefix of 6 or more works). A malformed id exits 2, an unknown one exits 1.

Replay: when the parked workflow still runs and its stage can be re-run there (failed,
skipped, partial, or waiting for a decision after failing), `replay` sends it the
`retry_stage` update and the stage re-runs in place. When the workflow has ended or its
update validator refuses (e.g. it is stopping), it starts a new assessment with just that stage (no
dependencies, not `always`) on just that target, id ``<original>-replay-<6 hex>``. The
entry becomes `replaying`; with `--wait` the command waits and records the outcome
(`replayed`, outcome completed / completed_with_errors / failed / cancelled / skipped).
Without `--wait`, `dlq list` and `dlq show` ask Temporal how a replay ended and record it
then (when Temporal is unreachable they say so and show the entry as still replaying).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from secflow import guidance
from secflow.dead_letters import (
    STATES,
    AmbiguousRef,
    BadDeadLetterId,
    DeadLetter,
    find_dead_letter,
    list_dead_letters,
    mark_replayed,
    mark_replaying,
    purge,
    restore_replay_state,
)
from secflow.launch import start_assessment
from secflow.models import TERMINAL_STAGE_STATES, AssessmentStatus
from secflow.settings import Settings
from secflow.spec import Spec, SpecError, validate_spec_data
from secflow.store import FindingsStore, open_store
from starter.cli import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    _status_from_failure,
    _stored_result,
    connect_or_fail,
    require_worker,
)

# The stage's final state after an in-place replay -> the outcome recorded on the entry.
_STAGE_OUTCOME = {
    "succeeded": "completed",
    "partial": "completed_with_errors",
    "unverified": "completed_with_errors",  # recovered, but its validation failed
    "failed": "failed",
    "awaiting_intervention": "failed",  # it failed again and waits again
    "skipped": "skipped",
    "cancelled": "cancelled",
}
_CLOSED_OUTCOME = {
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "continued_as_new",
}
POLL_INTERVAL = 0.5


def add_parser(sub: Any) -> None:
    p = sub.add_parser("dlq", help="the dead-letter queue: list, show, replay, purge")
    dsub = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    q = dsub.add_parser("list", help="entries, newest failure first")
    q.add_argument("--state", choices=[*STATES, "all"], default="all", help="filter by state (default: all)")
    q.add_argument("--workflow", metavar="ID", help="only entries of this assessment")
    q.add_argument("--since", metavar="DURATION", help="only entries whose last failure is this recent (e.g. 24h)")
    q.add_argument("--json", action="store_true")

    q = dsub.add_parser("show", help="one entry, with what a replay would run")
    q.add_argument("id", help="task id or ref (from dlq list)")
    q.add_argument("--json", action="store_true")

    q = dsub.add_parser("replay", help="re-run the stage (in place if its workflow waits, else a new assessment)")
    q.add_argument("id", help="task id or ref (from dlq list)")
    q.add_argument("--wait", action="store_true", help="wait for the replay to end and record its outcome")
    q.add_argument("--by", default=None, help="who replays (default: your user name)")

    q = dsub.add_parser(
        "purge",
        help="delete entries: by id (any state), or --state replayed (optionally --older-than)",
    )
    q.add_argument("ids", nargs="*", metavar="ID", help="task ids or refs to delete")
    q.add_argument("--state", choices=["replayed"], help="delete every replayed entry (unreplayed ones only by id)")
    q.add_argument("--older-than", metavar="DURATION", help="with --state replayed: only those whose last failure is older")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store()
    if args.dlq_command == "list":
        return await cmd_list(store, settings, args)
    if args.dlq_command == "show":
        return await cmd_show(store, settings, args)
    if args.dlq_command == "replay":
        return await cmd_replay(store, settings, args)
    return cmd_purge(store, args)


# --- helpers ----------------------------------------------------------------------------


def _since(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    from secflow.error_stats import parse_since

    try:
        return parse_since(value, datetime.now(UTC))
    except ValueError as exc:
        raise CliError(f"{flag}: {str(exc).replace('--since', flag)}", EXIT_BAD_INPUT) from None


def _find(store: FindingsStore, value: str) -> DeadLetter:
    try:
        entry = find_dead_letter(store, value)
    except BadDeadLetterId as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    except AmbiguousRef as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    if entry is None:
        raise CliError(f"no dead-letter entry {value!r} (see {guidance.CLI} dlq list)")
    return entry


async def _try_connect(settings: Settings) -> Client | None:
    try:
        return await connect_or_fail(settings)
    except CliError as exc:
        print(f"note: {exc}; replay outcomes not refreshed", file=sys.stderr)
        return None


async def resolve_outcome(client: Client, entry: DeadLetter) -> str | None:
    """How the entry's replay ended, asked from Temporal; None while it still runs."""
    assert entry.replay_workflow_id
    if entry.in_place:
        handle = client.get_workflow_handle(entry.workflow_id, run_id=entry.run_id, result_type=AssessmentStatus)
    else:
        handle = client.get_workflow_handle(entry.replay_workflow_id, result_type=AssessmentStatus)
    try:
        desc = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return "unknown"  # the replay's history is gone (retention): say so, once
        raise CliError(f"cannot describe {handle.id}: {err.message}") from None
    running = desc.status == WorkflowExecutionStatus.RUNNING
    if running:
        if not entry.in_place:
            return None
        try:
            status = await handle.query("status", result_type=AssessmentStatus)
        except RPCError:
            return None  # no worker to answer right now: still replaying as far as we know
    else:
        status = await _stored_result(handle)
        if status is None:
            return _CLOSED_OUTCOME.get(desc.status, "unknown") if desc.status else "unknown"
    if entry.in_place:
        stage = status.stages.get(entry.stage_id)
        if stage is None:
            return "unknown"
        if stage.state in TERMINAL_STAGE_STATES or stage.state == "awaiting_intervention":
            return _STAGE_OUTCOME.get(stage.state, stage.state)
        return None if running else (status.outcome or "unknown")
    return status.outcome or "unknown"


async def _refresh(store: FindingsStore, client: Client | None, entries: list[DeadLetter]) -> list[DeadLetter]:
    out = []
    for entry in entries:
        if entry.state == "replaying" and entry.replay_workflow_id and client is not None:
            outcome = await resolve_outcome(client, entry)
            if outcome is not None:
                await asyncio.to_thread(mark_replayed, store, entry.task_id, outcome, entry.replay_workflow_id)
                entry = find_dead_letter(store, entry.task_id) or entry
        out.append(entry)
    return out


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


# --- commands ---------------------------------------------------------------------------


async def cmd_list(store: FindingsStore, settings: Settings, args: argparse.Namespace) -> int:
    since = _since(args.since, "--since")
    state = None if args.state == "all" else args.state
    entries = await asyncio.to_thread(lambda: list_dead_letters(store, state=state, workflow_id=args.workflow, since=since))
    if any(e.state == "replaying" for e in entries):
        entries = await _refresh(store, await _try_connect(settings), entries)
        if state is not None:
            entries = [e for e in entries if e.state == state]
    if args.json:
        print(json.dumps([e.as_json() for e in entries], indent=2))
        return EXIT_OK
    if not entries:
        print("the dead-letter queue is empty" + (f" (state {state})" if state else ""))
        return EXIT_OK
    print(f"{'REF':<10}  {'STATE':<9}  {'LAST FAILURE':<19}  {'CATEGORY':<13}  {'STAGE':<14}  TARGET / WORKFLOW")
    for e in entries:
        outcome = f" -> {e.replay_outcome}" if e.replay_outcome else ""
        why = f"  why: {e.error_reason}" if e.error_reason else ""  # the classifier's reason
        print(
            f"{e.ref:<10}  {e.state:<9}  {_when(e.last_failure_at):<19}  {e.category:<13}  {e.stage_id:<14}  "
            f"{e.target or '-'}  ({e.workflow_id}){outcome}{why}"
        )
    print(f"\n{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}; `{guidance.CLI} dlq show REF` for details")
    return EXIT_OK


async def cmd_show(store: FindingsStore, settings: Settings, args: argparse.Namespace) -> int:
    entry = _find(store, args.id)
    if entry.state == "replaying":
        [entry] = await _refresh(store, await _try_connect(settings), [entry])
    if args.json:
        print(json.dumps(entry.as_json(), indent=2))
        return EXIT_OK
    lines = [
        f"{entry.task_id}",
        f"  ref:            {entry.ref}",
        f"  state:          {entry.state}" + (f" ({entry.replay_outcome})" if entry.replay_outcome else ""),
        f"  workflow:       {entry.workflow_id} (run {entry.run_id})",
        f"  stage / tool:   {entry.stage_id} / {entry.tool or '-'}",
        f"  target:         {entry.target or '-'}",
        f"  reason:         {entry.reason}",
        f"  category:       {entry.category}",
        f"  why:            {entry.error_reason or '-'}  (the classifier's reason for the category)",
        f"  attempts:       {entry.attempts}",
        f"  failures:       first {_when(entry.first_failure_at)}, last {_when(entry.last_failure_at)} (UTC)",
        f"  message:        {entry.message}",
    ]
    if entry.replay_workflow_id:
        where = "in place" if entry.in_place else entry.replay_workflow_id
        lines.append(f"  replay:         {where}, started {_when(entry.replayed_at)}")
    if entry.replay is None:
        lines.append("  replayable:     no (nothing to re-run: clean up by hand, then `dlq purge ID`)")
    elif _is_security(entry):
        lines.append("  replayable:     no (a security violation is never retried: fix scope/targets, run anew)")
    else:
        lines.append(f"  replayable:     yes: {guidance.dlq_replay_command(entry.ref)}")
    print("\n".join(lines))
    return EXIT_OK


def _is_security(entry: DeadLetter) -> bool:
    return entry.reason == "security_violation" or entry.category == "security"


def replay_spec(entry: DeadLetter) -> Spec:
    """The one-stage, one-target spec a new-assessment replay runs."""
    recipe = entry.replay
    assert recipe is not None
    stage = _without_none(dict(recipe.stage))
    stage["depends_on"] = []
    stage["always"] = False
    targets = [recipe.target] if recipe.target else list(recipe.spec_targets)
    data = {"name": recipe.spec_name, "scope": {"allow": list(recipe.scope)}, "targets": targets, "stages": [stage]}
    try:
        return validate_spec_data(json.loads(json.dumps(data)))
    except SpecError as exc:
        problems = "; ".join(str(p) for p in exc.problems)
        raise CliError(f"cannot build a replay spec from the entry's recipe: {problems}") from None


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


async def cmd_replay(store: FindingsStore, settings: Settings, args: argparse.Namespace) -> int:
    entry = _find(store, args.id)
    if entry.replay is None:
        raise CliError(f"entry {entry.ref} ({entry.reason}) has nothing to replay; clean up by hand, then purge it")
    if _is_security(entry):
        # Scope is law: a replay is a retry, and a security violation is never retried.
        raise CliError(
            f"entry {entry.ref} is a security violation and is not replayed; fix the spec's scope or targets "
            "and start a new assessment, then purge it"
        )
    client = await connect_or_fail(settings)
    # Both replay forms need a worker (the parked run's query and update, or the new run).
    await require_worker(client, entry.replay.task_queue or settings.task_queue, "the replay would wait for one")
    if entry.state == "replaying":
        [entry] = await _refresh(store, client, [entry])
        if entry.state == "replaying":
            raise CliError(f"entry {entry.ref} is already being replayed in {entry.replay_workflow_id}; see dlq show {entry.ref}")
    by = args.by or getpass.getuser()
    if await _retryable_in_place(client, entry):
        try:
            return await _replay_in_place(store, client, entry, by, args.wait)
        except _InPlaceRefused as refused:
            # e.g. the assessment is stopping after a failed required stage: it cannot
            # re-run anything any more, so the stage runs in an assessment of its own.
            print(f"{entry.ref}: {entry.workflow_id} refused the retry ({refused}); replaying as a new assessment")
    return await _replay_as_new(store, client, settings, entry, args.wait)


class _InPlaceRefused(Exception):
    """The parked workflow's update validator said no; nothing changed there."""


# A stage in one of these states can be re-run by the `retry_stage` update while its
# assessment still runs (the workflow's validator has the last word).
_RETRYABLE_STATES = {"awaiting_intervention", "failed", "skipped", "partial", "unverified", "cancelled"}


async def _retryable_in_place(client: Client, entry: DeadLetter) -> bool:
    handle = client.get_workflow_handle(entry.workflow_id, run_id=entry.run_id, result_type=AssessmentStatus)
    try:
        desc = await handle.describe()
        if desc.status != WorkflowExecutionStatus.RUNNING:
            return False
        status = await handle.query("status", result_type=AssessmentStatus)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise CliError(f"cannot ask {entry.workflow_id} whether it still waits: {err.message}") from None
    stage = status.stages.get(entry.stage_id)
    return stage is not None and stage.state in _RETRYABLE_STATES


async def _replay_in_place(store: FindingsStore, client: Client, entry: DeadLetter, by: str, wait: bool) -> int:
    handle = client.get_workflow_handle(entry.workflow_id, run_id=entry.run_id, result_type=AssessmentStatus)
    before = (await handle.query("status", result_type=AssessmentStatus)).stages[entry.stage_id].attempts
    from starter.approvals import signed_decision  # signed with $SECFLOW_SIGNING_KEY when set

    decision = signed_decision(entry.workflow_id, "retry_stage", entry.stage_id, by, f"dlq replay {entry.ref}")
    # Claimed before the update: a re-run that fails again at once re-parks the entry,
    # and that must not be overwritten by a late "replaying".
    if not await asyncio.to_thread(mark_replaying, store, entry.task_id, entry.workflow_id, claim=True):
        raise CliError(f"entry {entry.ref} is already being replayed; see dlq show {entry.ref}")
    try:
        message = await handle.execute_update("retry_stage", decision, result_type=str)
    except BaseException as exc:
        await asyncio.to_thread(restore_replay_state, store, entry, entry.workflow_id)
        if isinstance(exc, WorkflowUpdateFailedError):
            reason = getattr(exc.cause, "message", None) or str(exc.cause)
            raise _InPlaceRefused(reason) from None
        if isinstance(exc, RPCError):
            raise CliError(f"replay failed: {exc.message}") from None
        raise
    print(f"{entry.ref}: replaying in place in {entry.workflow_id}: {message}")
    if not wait:
        return EXIT_OK
    sys.stdout.flush()
    while True:
        desc = await handle.describe()
        if desc.status != WorkflowExecutionStatus.RUNNING:
            status = await _stored_result(handle)
        else:
            status = await handle.query("status", result_type=AssessmentStatus)
        stage = status.stages[entry.stage_id] if status is not None else None
        done = stage is not None and (
            stage.state in TERMINAL_STAGE_STATES or (stage.state == "awaiting_intervention" and stage.attempts > before)
        )
        if done or desc.status != WorkflowExecutionStatus.RUNNING:
            outcome = _STAGE_OUTCOME.get(stage.state, stage.state) if stage is not None else "unknown"
            break
        await asyncio.sleep(POLL_INTERVAL)
    await asyncio.to_thread(mark_replayed, store, entry.task_id, outcome, entry.workflow_id)
    print(f"{entry.ref}: replayed: {outcome}")
    return EXIT_OK if outcome == "completed" else EXIT_FAILED


async def _replay_as_new(store: FindingsStore, client: Client, settings: Settings, entry: DeadLetter, wait: bool) -> int:
    spec = replay_spec(entry)
    workflow_id = f"{entry.workflow_id[:100]}-replay-{uuid.uuid4().hex[:6]}"
    task_queue = (entry.replay.task_queue if entry.replay else "") or settings.task_queue
    # Claim the entry first: of two operators replaying at once, one starts a replay.
    if not await asyncio.to_thread(mark_replaying, store, entry.task_id, workflow_id, claim=True):
        raise CliError(f"entry {entry.ref} is already being replayed (or was just purged); see dlq show {entry.ref}")
    try:
        handle = await start_assessment(
            client, spec, workflow_id=workflow_id, task_queue=task_queue, requested_by=f"dlq replay {entry.ref}", store=store
        )
    except BaseException as exc:
        await asyncio.to_thread(restore_replay_state, store, entry, workflow_id)
        if isinstance(exc, RPCError):
            raise CliError(f"could not start the replay assessment: {exc.message}") from None
        raise
    print(f"{entry.ref}: replaying as new assessment {workflow_id} (stage {entry.stage_id}, target {entry.target or '-'})")
    if not wait:
        return EXIT_OK
    sys.stdout.flush()
    try:
        status: AssessmentStatus | None = await handle.result()
    except WorkflowFailureError as err:  # a failed or cancelled assessment carries its status
        status = _status_from_failure(err)
    except RPCError as err:
        raise CliError(f"lost track of {workflow_id}: {err.message}; `dlq show {entry.ref}` records the outcome later") from None
    outcome = (status.outcome if status is not None else None) or "failed"
    await asyncio.to_thread(mark_replayed, store, entry.task_id, outcome, workflow_id)
    print(f"{entry.ref}: replayed: {outcome}")
    return EXIT_OK if outcome == "completed" else EXIT_FAILED


def cmd_purge(store: FindingsStore, args: argparse.Namespace) -> int:
    if args.ids and args.state:
        raise CliError("give ids OR --state replayed, not both", EXIT_BAD_INPUT)
    if args.older_than and not args.state:
        raise CliError(
            "--older-than needs --state replayed (entries that were never replayed are only purged by id)", EXIT_BAD_INPUT
        )
    if not args.ids and not args.state:
        raise CliError("name the entries to purge, or use --state replayed [--older-than 30d]", EXIT_BAD_INPUT)
    if args.ids:
        entries = [_find(store, value) for value in args.ids]  # all or nothing: check first
        deleted = purge(store, task_ids=[e.task_id for e in entries])
    else:
        older = _since(args.older_than, "--older-than")
        deleted = purge(store, replayed=True, older_than=older)
    for task_id in deleted:
        print(f"purged {task_id}")
    print(f"{len(deleted)} entr{'y' if len(deleted) == 1 else 'ies'} purged")
    return EXIT_OK
