"""`secflow` (the console script) or `python -m starter`: start, watch and steer assessments.

Exit status: 0 ok (or `completed`), 1 failed / refused / not found, 2 bad input (nothing
started), 3 `completed_with_errors`, 4 `cancelled`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from typing import TYPE_CHECKING

from secflow import guidance

# Only what parsing needs is imported here: a command's modules (temporalio, pydantic, the
# store, httpx ...) are imported when it runs, so `--help` or a typo answers at once and
# each command pays only for itself (issue 11: 0.5 s before anything happened).
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
    from temporalio.service import RPCError

    from secflow.models import AssessmentStatus, Decision
    from secflow.settings import Settings
    from secflow.spec import Spec

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_WITH_ERRORS, EXIT_CANCELLED = 0, 1, 2, 3, 4
# The reader of our output went away (a pipe closed early): 128 + SIGPIPE, as a shell reports it.
EXIT_BROKEN_PIPE = 141
OUTCOME_EXIT = {
    "completed": EXIT_OK,
    "completed_with_errors": EXIT_WITH_ERRORS,
    "failed": EXIT_FAILED,
    "cancelled": EXIT_CANCELLED,
}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# starter command -> workflow update/signal name
INTERVENTIONS = {
    "approve": "approve",
    "reject": "reject",
    "retry": "retry_stage",
    "skip": "skip_stage",
    "abort": "abort",
    "pause": "pause",
    "resume": "resume",
}
NEEDS_STAGE = {"approve", "reject", "retry", "skip"}

# Command groups that live in their own module, one concern each. A module defines
# `add_parser(sub)` (adds the command to the subparsers) and
# `async def run(args, settings) -> int`; it raises `CliError` for failures and uses
# `connect_or_fail(settings)` for a Temporal client. Only the module of the command being
# run is imported (all of them for the top-level help), so adding one is one line here.
COMMAND_MODULES: dict[str, str] = {
    "breakers": "starter.breakers",
    "codec-server": "starter.codec_server",
    "dlq": "starter.dlq",
    "errors": "starter.error_stats",
    "incidents": "starter.incidents",
    "keygen": "starter.approvals",
    "sign": "starter.approvals",
    "audit": "starter.approvals",
}


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _workflow_id(value: str) -> str:
    if not _ID.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a valid assessment id (letters, digits, '.', '_', '-'; at most 128; no '/')"
        )
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= 10_000:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number from 1 to 10000")
    return number


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv` (default sys.argv[1:]): the built-in commands, plus the module
    of the command named in `argv`, or every module when none is named (help, a typo)."""
    parser = argparse.ArgumentParser(prog=guidance.CLI, description="Run and steer SecFlow assessments.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="validate a spec and start its assessment")
    p.add_argument("spec", help="assessment spec (YAML or JSON)")
    p.add_argument("--id", type=_workflow_id, help="workflow id (default: <spec name>-<random>)")
    p.add_argument("--wait", action="store_true", help="wait for the end and print the result")
    p.add_argument("--json", action="store_true", help="with --wait: print the result as JSON")

    p = sub.add_parser("validate", help="check a spec; exit 0 if valid, 2 with every problem otherwise")
    p.add_argument("spec")

    p = sub.add_parser("status", help="what an assessment is doing or waiting for")
    p.add_argument("id", type=_workflow_id)
    p.add_argument("--json", action="store_true")
    p.add_argument("--targets", action="store_true", help="per-target outcomes, paged from the findings store")
    p.add_argument("--stage", help="with --targets: only this stage")
    p.add_argument("--state", choices=["succeeded", "failed", "cancelled", "skipped"], help="with --targets: only this state")
    p.add_argument("--limit", type=_positive_int, default=50, help="with --targets: at most this many (default 50)")
    p.add_argument(
        "--after", default="", help="with --targets: continue after STAGE/TARGET (printed as 'next:' on the last page)"
    )

    p = sub.add_parser("result", help="wait for an assessment's end and print its result")
    p.add_argument("id", type=_workflow_id)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("findings", help="an assessment's findings, from the findings store")
    p.add_argument("id", type=_workflow_id)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("report", help="render an assessment's report (SARIF, Markdown, HTML or JSON)")
    p.add_argument("id", type=_workflow_id)
    p.add_argument("--format", required=True, choices=["sarif", "md", "html", "json"], help="report format")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (atomically) instead of stdout")

    for command, update in INTERVENTIONS.items():
        p = sub.add_parser(command, help=f"send '{update}' (a validated Temporal update)")
        p.add_argument("id", type=_workflow_id)
        if command in NEEDS_STAGE:
            p.add_argument("stage", help="stage id")
        p.add_argument("--by", default=None, help="who decides (default: your user name)")
        p.add_argument("--reason", default="", help="why, for the record")
    named = _command_word(sys.argv[1:] if argv is None else argv)
    if named in COMMAND_MODULES:
        importlib.import_module(COMMAND_MODULES[named]).add_parser(sub)
    elif named not in sub.choices:
        for module in COMMAND_MODULES.values():
            importlib.import_module(module).add_parser(sub)
    return parser


def _command_word(argv: list[str]) -> str | None:
    """The command named in argv (the top-level parser has no options besides -h)."""
    for arg in argv:
        return None if arg.startswith("-") else arg
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser(argv).parse_args(argv)
    except Exception as exc:  # a command module that fails to import, say: still one line
        return _unexpected(exc, _command_word(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "validate":
            return cmd_validate(args)
        import asyncio

        return asyncio.run(_dispatch(args))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader stopped reading (`starter findings ID | head`): what it took is what it
        # wanted. Exit as a program killed by SIGPIPE would, without a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        return _unexpected(exc, args.command)


def console() -> None:
    """The `secflow` console script (pyproject.toml [project.scripts]): `python -m starter`."""
    from secflow.exit import exit_now

    exit_now(main())


def _unexpected(exc: Exception, command: str | None) -> int:
    """Anything not handled above: one line on stderr, the traceback in the starter's log."""
    rpc_error = _as_rpc_error(exc)
    if rpc_error is not None:  # a gRPC error a command let through is still the server's answer
        from starter.temporal_errors import rpc_error_line

        print(f"error: {rpc_error_line(_address(), rpc_error.status.name, rpc_error.message)}", file=sys.stderr)
        return EXIT_FAILED
    from starter.crash_log import record_unexpected

    print(f"error: {record_unexpected(exc, command)}", file=sys.stderr)
    return EXIT_FAILED


def _as_rpc_error(exc: Exception) -> RPCError | None:
    service = sys.modules.get("temporalio.service")  # loaded if it can have raised
    if service is not None and isinstance(exc, service.RPCError) and exc.status is not None:
        return exc
    return None


def _address() -> str:
    return os.environ.get("TEMPORAL_ADDRESS", "localhost:7233")


async def _dispatch(args: argparse.Namespace) -> int:
    from secflow.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    if args.command in COMMAND_MODULES:
        return int(await importlib.import_module(COMMAND_MODULES[args.command]).run(args, settings))
    if args.command == "run":
        spec = _load_spec_or_exit(args.spec)
        client = await connect_or_fail(settings)
        return await cmd_run(client, settings, spec, args)
    if args.command == "findings":
        return cmd_findings(args)
    if args.command == "report":
        return await cmd_report(settings, args)
    if args.command in INTERVENTIONS:
        from starter.approvals import check_signing_key

        check_signing_key()  # a bad $SECFLOW_SIGNING_KEY is bad input: exit 2 before connecting
        decision = intervention_decision(args)

    from secflow.models import AssessmentStatus

    client = await connect_or_fail(settings)
    handle = client.get_workflow_handle(args.id, result_type=AssessmentStatus)
    if args.command == "status":
        return await cmd_status(client, handle, args)
    if args.command == "result":
        return await _print_result(handle, args.json, client=client)
    await require_running_worker(client, handle, f"`{args.command}` would wait for one")
    return await cmd_intervene(handle, args, decision)


async def connect_or_fail(settings: Settings) -> Client:
    """A connected client, or a CliError naming the address, the problem and the fix, within
    CONNECT_TIMEOUT seconds (a silent address is not waited on)."""
    import asyncio

    from secflow.codec import KeyRingError
    from secflow.temporal_client import connect
    from starter.temporal_errors import CONNECT_TIMEOUT, connect_error_line

    try:
        return await asyncio.wait_for(connect(settings), CONNECT_TIMEOUT)
    except KeyRingError as exc:  # the payload key ring (secflow/codec.py): a configuration error
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    except Exception as exc:  # connection problems are the user's to fix: say where we tried
        raise CliError(connect_error_line(settings.temporal_address, exc)) from None


async def require_worker(client: Client, task_queue: str, what: str) -> None:
    """CliError (exit 1) unless a worker polls `task_queue`; `what` says what would happen."""
    from temporalio.service import RPCError

    from starter.workers import NoWorker
    from starter.workers import require_worker as check

    try:
        await check(client, task_queue, what)
    except NoWorker as exc:
        raise CliError(str(exc)) from None
    except RPCError as err:
        from starter.temporal_errors import rpc_error_line

        raise CliError(rpc_error_line(_address(), err.status.name, err.message)) from None


async def require_running_worker(client: Client, handle: WorkflowHandle, what: str) -> str:
    """For a command that needs the running workflow's worker: CliError when the assessment
    is not running or no worker polls its task queue. Returns the task queue."""
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    try:
        desc = await handle.describe()
    except RPCError as err:
        raise _rpc_error(err, handle.id) from None
    if desc.status != WorkflowExecutionStatus.RUNNING:
        raise CliError(f"no running assessment with id {handle.id!r}")
    await require_worker(client, desc.task_queue, what)
    return desc.task_queue


def _load_spec_or_exit(path: str) -> Spec:
    from secflow.spec import SpecError, load_spec

    try:
        return load_spec(path)
    except SpecError as exc:
        print(f"{path}: invalid spec ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise CliError("nothing was started", EXIT_BAD_INPUT) from None


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _load_spec_or_exit(args.spec)
    print(f"{args.spec}: valid ({len(spec.targets)} targets, {len(spec.stages)} stages)")
    return EXIT_OK


async def cmd_run(client: Client, settings: Settings, spec: Spec, args: argparse.Namespace) -> int:
    import getpass
    import uuid

    from temporalio.common import WorkflowIDReusePolicy
    from temporalio.service import RPCError, RPCStatusCode

    from secflow.launch import start_assessment
    from starter.workers import live_pollers

    if args.wait:  # nothing is started that the starter would then wait on forever
        await require_worker(client, settings.task_queue, "`run --wait` would wait for one")
    elif await live_pollers(client, settings.task_queue) == 0:
        print(
            f"warning: no worker is polling task queue {settings.task_queue!r}; the assessment will wait for one. "
            f"Start one from the project folder: {guidance.worker_command(settings.task_queue)}",
            file=sys.stderr,
        )
    workflow_id = args.id or f"{spec.name}-{uuid.uuid4().hex[:8]}"
    try:
        handle = await start_assessment(
            client,
            spec,
            workflow_id=workflow_id,
            task_queue=settings.task_queue,
            requested_by=getpass.getuser(),
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        )
    except RPCError as err:
        if err.status == RPCStatusCode.ALREADY_EXISTS:
            raise CliError(f"an assessment with id {workflow_id!r} already exists; choose another --id") from None
        raise CliError(f"could not start the assessment: {err.message}") from None
    except Exception as exc:
        if type(exc).__name__ == "WorkflowAlreadyStartedError":
            raise CliError(f"an assessment with id {workflow_id!r} already exists; choose another --id") from None
        raise
    print(workflow_id)
    sys.stdout.flush()
    if not args.wait:
        print(f"follow it with: {guidance.status_command(workflow_id)}", file=sys.stderr)
        return EXIT_OK
    return await _print_result(handle, args.json, client=client, task_queue=settings.task_queue)


async def _print_result(handle: WorkflowHandle, as_json: bool, *, client: Client, task_queue: str | None = None) -> int:
    """Wait for the end (progress on stderr) and print the result. A finished assessment
    answers from its stored result; a running one needs a polling worker, checked first."""
    from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
    from temporalio.service import RPCError

    from starter.progress import result_with_progress

    if task_queue is None:
        try:
            desc = await handle.describe()
        except RPCError as err:
            raise _rpc_error(err, handle.id) from None
        if desc.status == WorkflowExecutionStatus.RUNNING:
            await require_worker(client, desc.task_queue, "`result` would wait for one")
            task_queue = desc.task_queue
    try:
        if task_queue is None:  # it has ended: the result is there, no worker needed
            status = await handle.result()
        else:
            status = await result_with_progress(handle, task_queue=task_queue)
    except WorkflowFailureError as err:
        status = _status_from_failure(err)
        if status is None:
            raise CliError(f"assessment {handle.id} failed: {_failure_message(err)}") from None
    except RPCError as err:
        raise _rpc_error(err, handle.id) from None
    return _show_result(status, as_json)


def _show_result(status: AssessmentStatus, as_json: bool) -> int:
    if as_json:
        print(status.model_dump_json(indent=2))
    else:
        print(render_status(status))
    return OUTCOME_EXIT.get(status.outcome or "", EXIT_FAILED)


def _status_from_failure(err: WorkflowFailureError) -> AssessmentStatus | None:
    from temporalio.exceptions import ApplicationError, CancelledError

    from secflow.models import AssessmentStatus

    cause = err.cause
    if isinstance(cause, (ApplicationError, CancelledError)) and cause.details:
        detail = cause.details[0]
        try:
            status = AssessmentStatus.model_validate(detail)
        except ValueError:
            return None
        if isinstance(cause, ApplicationError) and status.outcome is None:
            status.outcome = "failed"
        return status
    return None


def _failure_message(err: WorkflowFailureError) -> str:
    cause = err.cause
    return getattr(cause, "message", None) or str(cause)


def _rpc_error(err: RPCError, workflow_id: str) -> CliError:
    from temporalio.service import RPCStatusCode

    from starter.temporal_errors import rpc_error_line

    if err.status == RPCStatusCode.NOT_FOUND:
        return CliError(f"no assessment with id {workflow_id!r}")
    return CliError(rpc_error_line(_address(), err.status.name, err.message))


async def fetch_status(handle: WorkflowHandle, client: Client | None = None) -> AssessmentStatus:
    """The stored result of a finished assessment, else the `status` query (with `client`,
    after checking that a worker polls the assessment's task queue)."""
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    from secflow.models import AssessmentStatus

    try:
        desc = await handle.describe()
    except RPCError as err:
        raise _rpc_error(err, handle.id) from None
    if desc.status is not None and desc.status != WorkflowExecutionStatus.RUNNING:
        # A finished assessment answers from its stored result: no worker needed.
        stored = await _stored_result(handle)
        if stored is not None:
            return stored
    # A running one answers a query, which only a worker can: check for one first.
    if client is not None:
        await require_worker(client, desc.task_queue, "the status query would wait for one")
    try:
        return await handle.query("status", result_type=AssessmentStatus)
    except RPCError as err:
        raise CliError(f"status query failed (is a worker running on {desc.task_queue!r}?): {err.message}") from None


async def _stored_result(handle: WorkflowHandle) -> AssessmentStatus | None:
    from temporalio.client import WorkflowFailureError
    from temporalio.service import RPCError

    try:
        return await handle.result(follow_runs=False)
    except WorkflowFailureError as err:
        return _status_from_failure(err)
    except RPCError:
        return None


async def cmd_status(client: Client, handle: WorkflowHandle, args: argparse.Namespace) -> int:
    if args.targets:
        return await cmd_status_targets(handle.id, args)
    status = await fetch_status(handle, client)
    await _merge_live_progress(client, handle, status)
    await merge_recovery(status, handle)
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        print(render_status(status))
    return EXIT_OK


async def cmd_status_targets(assessment_id: str, args: argparse.Namespace) -> int:
    """Per-target detail lives in the store (the workflow keeps counts): page it from there."""
    import asyncio
    import json

    from secflow.store import open_store

    after: tuple[str, str] | None = None
    if args.after:
        stage, sep, target = args.after.partition("/")
        if not sep or not stage:
            raise CliError(f"--after {args.after!r}: expected STAGE/TARGET, as printed after 'next:'", EXIT_BAD_INPUT)
        after = (stage, target)
    store = open_store()
    rows = await asyncio.to_thread(
        store.list_target_outcomes, assessment_id, stage_id=args.stage, state=args.state, after=after, limit=args.limit
    )
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return EXIT_OK
    if not rows:
        print(
            f"no target outcomes for {assessment_id}"
            + (f" (stage {args.stage})" if args.stage else "")
            + (f" in state {args.state}" if args.state else "")
        )
        return EXIT_OK
    for r in rows:
        error = f"  {r.error_category}: {r.error_message}" if r.error_category else ""
        print(f"{r.stage_id:<16} {r.state:<10} attempts={r.attempts} findings={r.findings}  {r.target}{error}")
    if len(rows) == args.limit:
        last = rows[-1]
        print(f"next: --after {last.stage_id}/{last.target}")
    return EXIT_OK


async def _merge_live_progress(client: Client, handle: WorkflowHandle, status: AssessmentStatus) -> None:
    """Stage progress counts targets; a running scan heartbeats item progress too. Show it."""
    from temporalio.service import RPCError

    try:
        desc = await handle.describe()
    except RPCError:
        return
    converter = client.data_converter  # the same pydantic converter the worker uses
    for pending in desc.raw_description.pending_activities:
        if not pending.heartbeat_details.payloads:
            continue
        try:
            [details] = await converter.decode(pending.heartbeat_details.payloads[:1])
        except Exception:  # progress is a nicety: an undecodable heartbeat just isn't shown
            continue
        progress = details.get("progress") if isinstance(details, dict) else None
        if not isinstance(progress, dict):
            continue
        for st in status.stages.values():
            if st.state == "running" and st.tool == pending.activity_type.name and st.progress.total == 1:
                st.progress.done = int(progress.get("done", 0))
                st.progress.total = int(progress.get("total", 0)) or 1


async def merge_recovery(status: AssessmentStatus, handle: WorkflowHandle | None = None) -> None:
    """A stage that is running or waiting after a failure may be recovering: its lost
    attempt, category and rung are in the error ledger and the findings it kept are in the
    store before the workflow hears of them. Show them (docs/recovery.md)."""
    import asyncio

    from secflow.errors import classify
    from secflow.models import RecoveryInProgress
    from secflow.store import open_store

    live = [sid for sid, st in status.stages.items() if st.state in ("running", "awaiting_intervention")]
    if not live:
        return
    try:
        store = open_store()
        errors = await asyncio.to_thread(store.list_errors, status.workflow_id)
        kept = {sid: (await asyncio.to_thread(store.count_findings, status.workflow_id, sid)).total for sid in live}
    except Exception as exc:  # the view is a nicety: say why it is missing, show the rest
        c = classify(exc)
        print(f"note: recovery details unavailable ({c.category.value}: {c.reason})", file=sys.stderr)
        return
    retrying = await _retrying_activities(handle) if handle is not None else {}
    for sid in live:
        st = status.stages[sid]
        walking = [e for e in errors if e.stage_id == sid and e.outcome is None and e.rung_outcome in (None, "failed")]
        pending = retrying.get(st.tool)
        if not walking and pending is not None:
            # Temporal noticed the lost attempt (its heartbeat timed out) but no worker has
            # started the next one yet, so the ledger does not have it: say what Temporal says.
            attempt, message = pending
            st.recovering = RecoveryInProgress(
                lost_attempt=attempt - 1,
                category="transient",
                message=message or "attempt lost (worker gone or timed out); the retry waits for a worker",
                rung=st.rung or "retry",
                findings_kept=kept[sid],
            )
            continue
        if not walking:
            continue
        last = walking[-1]
        st.recovering = RecoveryInProgress(
            lost_attempt=last.attempt,
            target=last.target,
            category=last.category,
            message=last.message,
            rung=st.rung or last.rung or "retry",
            open_errors=len(walking),
            findings_kept=kept[sid],
        )


async def _retrying_activities(handle: WorkflowHandle) -> dict[str, tuple[int, str]]:
    """Activity type -> (attempt, last failure) of the assessment's pending activities that
    are past their first attempt, as Temporal has them (empty when it cannot be asked)."""
    from temporalio.service import RPCError

    try:
        desc = await handle.describe()
    except RPCError:
        return {}
    found: dict[str, tuple[int, str]] = {}
    for pending in desc.raw_description.pending_activities:
        if pending.attempt > 1:
            found[pending.activity_type.name] = (pending.attempt, pending.last_failure.message)
    return found


async def send_update(
    handle: WorkflowHandle,
    update: str,
    arg: object,
    *,
    command: str,
    gone: str,
    refused: Callable[[str], Awaitable[None]] | None = None,
) -> str:
    """Run a validated Temporal update; a refusal or a missing workflow becomes a CliError
    (`gone` is the message when the workflow is not running; `refused` hears a refusal first)."""
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.service import RPCError, RPCStatusCode

    try:
        return await handle.execute_update(update, arg, result_type=str)
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        reason = getattr(cause, "message", None) or str(cause)
        if refused is not None:
            await refused(reason)
        raise CliError(f"{command} refused: {reason}") from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CliError(gone) from None
        raise CliError(f"{command} failed: {err.message}") from None


def intervention_decision(args: argparse.Namespace) -> Decision:
    """The decision an intervention command sends, checked before anything is contacted:
    a bad payload (say a --reason longer than a decision may carry) is bad input, exit 2.
    Signed with $SECFLOW_SIGNING_KEY when set (an assessment with `approvals:` needs it)."""
    import getpass

    from starter.approvals import signed_decision

    name = INTERVENTIONS[args.command]
    decision = signed_decision(args.id, name, getattr(args, "stage", None), args.by or getpass.getuser(), args.reason)
    problem = decision.payload_problem()
    if problem:
        raise CliError(f"{args.command}: {problem}", EXIT_BAD_INPUT)
    return decision


async def cmd_intervene(handle: WorkflowHandle, args: argparse.Namespace, decision: Decision) -> int:
    from starter.approvals import record_refusal

    name = INTERVENTIONS[args.command]

    async def refused(reason: str) -> None:
        await record_refusal(handle.id, name, decision, reason)

    message = await send_update(
        handle, name, decision, command=args.command, gone=f"no running assessment with id {handle.id!r}", refused=refused
    )
    print(message)
    return EXIT_OK


def cmd_findings(args: argparse.Namespace) -> int:
    import json

    from secflow.findings import SEVERITY_ORDER
    from secflow.store import open_store

    findings = open_store().list_findings(args.id)
    if args.json:
        print(json.dumps([f.model_dump(mode="json") for f in findings], indent=2))
        return EXIT_OK
    if not findings:
        print(f"no findings for {args.id}")
        return EXIT_OK
    for f in findings:
        print(f"{f.severity.value:<8} {f.location:<40} {f.title}  [{f.tool}/{f.rule_id}]")
    counts = {s.value: sum(1 for f in findings if f.severity == s) for s in SEVERITY_ORDER}
    print(f"\n{len(findings)} findings: " + ", ".join(f"{n} {sev}" for sev, n in counts.items() if n))
    return EXIT_OK


async def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    """Render from the store plus the assessment's status (stored result once it has ended)."""
    import asyncio
    from pathlib import Path

    from secflow.models import AssessmentStatus
    from secflow.reports import RENDERERS
    from secflow.reports.files import write_private_file
    from secflow.store import open_store

    out = Path(args.output) if args.output else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise CliError(f"-o {args.output}: not a file in an existing directory", EXIT_BAD_INPUT)
    client = await connect_or_fail(settings)
    handle = client.get_workflow_handle(args.id, result_type=AssessmentStatus)
    status = await fetch_status(handle, client)
    store = open_store()
    findings, errors = await asyncio.to_thread(lambda: (store.list_findings(handle.id), store.list_errors(handle.id)))
    render, _ = RENDERERS[args.format]
    text = render(status, findings, errors)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return EXIT_OK
    try:
        # 0600, a random O_EXCL|O_NOFOLLOW temporary name, renamed over the target: a
        # link planted at either name is never followed.
        write_private_file(out, text)
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"{args.format} report of {handle.id} written to {out}", file=sys.stderr)
    return EXIT_OK


def render_status(status: AssessmentStatus) -> str:
    lines = [f"{status.workflow_id} ({status.name}): {status.status}"]
    if status.reason:
        lines.append(f"  reason: {status.reason}")
    for sid, st in status.stages.items():
        extra = f" - {st.reason}" if st.reason else (f" - {st.error.category}: {st.error.message}" if st.error else "")
        counts = " ".join(f"{state}={n}" for state, n in sorted(st.counts.items()) if state != "succeeded" and n)
        lines.append(
            f"  {sid:<16} {st.state:<22} {st.progress.done}/{st.progress.total} retries={st.retries}"
            + (f" rounds={st.rounds}" if st.rounds > 1 else "")
            + f" findings={st.findings}"
            + (f" {counts}" if counts else "")
            + extra
        )
        if st.approvals_required > 1 and st.state == "awaiting_approval":
            who = f" ({', '.join(st.approvals)})" if st.approvals else ""
            lines.append(f"      {len(st.approvals)} of {st.approvals_required} approvals{who}")
        r = st.recovering
        if r is not None:
            on = f" on {r.target}" if r.target else ""
            lines.append(
                f"      recovering: attempt {r.lost_attempt} lost{on} ({r.category}: {r.message[:160]}); "
                f"now handled by {r.rung}; {r.findings_kept} finding(s) already kept"
                + (f"; {r.open_errors} error(s) not settled yet" if r.open_errors > 1 else "")
            )
        if st.ladder:
            lines.append("      ladder: " + " > ".join(f"{step.rung} {step.outcome}" for step in st.ladder))
        if st.validation is not None:
            v = st.validation
            verdict = "passed" if v.passed else "FAILED: " + "; ".join(v.problems)
            lines.append(f"      validation after {v.after}: {verdict}")
        for failure in st.recent_failures:
            lines.append(f"      failed: {failure.target} ({failure.category}: {failure.message})")
        if st.counts.get("failed", 0) > len(st.recent_failures):
            lines.append(f"      all failed targets: {guidance.failed_targets_command(status.workflow_id, sid)}")
    if status.awaiting:
        lines.append(f"  awaiting a human: {', '.join(status.awaiting)}")
    for c in status.compensations:
        err = f" ({c.error.category}: {c.error.message})" if c.error else ""
        lines.append(f"  compensation {c.name}: {c.state}{err}")
    if status.incidents:
        lines.append(f"  incidents: {', '.join(status.incidents)} ({guidance.incident_show_command(status.incidents[-1])})")
    by = ", ".join(f"{n} {sev}" for sev, n in status.findings.by_severity.items() if n)
    lines.append(f"  findings: {status.findings.total}" + (f" ({by})" if by else ""))
    return "\n".join(lines)
