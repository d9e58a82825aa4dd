"""Every command SecFlow prints runs as printed from the project folder (issue 11).

After a real assessment (dev server, worker, a gated stage), the commands it prints — the
run's own output, `status`, the Web UI's current details, the guidance texts incidents
and the dead-letter queue use, the demo's closing lines — are run through a shell from the
project folder with a PATH that has no virtualenv on it, exactly as a person pastes them.
They may be refused (an answer already given, an id that does not exist) but they must
parse and must not fail with "command not found" or ModuleNotFoundError.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from temporalio.client import Client

from secflow import guidance
from tests.helpers import LOOPBACK_SCOPE, make_spec, own_loopback_host, start, wait_for

ROOT = Path(__file__).resolve().parent.parent
# No virtualenv, no user bin: only what a fresh shell has.
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"
_BACKTICKED = re.compile(r"`([^`]+)`")


def printed_commands(text: str) -> list[str]:
    """The commands in a text: backticked ones, and lines that start with one."""
    found = [c for c in _BACKTICKED.findall(text) if c.startswith((guidance.CLI, guidance.TEMPORAL))]
    for line in text.splitlines():
        line = line.strip()
        at = min((line.find(p) for p in (guidance.CLI, guidance.TEMPORAL) if p in line), default=-1)
        if at >= 0 and "`" not in line:
            found.append(line[at:].rstrip(")"))
    return found


def run_as_printed(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def assert_runs(command: str, out: subprocess.CompletedProcess[str]) -> None:
    said = out.stdout + out.stderr
    assert out.returncode not in (2, 126, 127), (command, out.returncode, said)
    for broken in ("command not found", ": not found", "No such file or directory", "ModuleNotFoundError", "Traceback"):
        assert broken not in said, (command, said)


async def test_printed_commands_run_as_printed(client: Client, worker: str, server, tmp_path: Path) -> None:
    env = {
        "PATH": BARE_PATH,
        "HOME": os.environ.get("HOME", "/tmp"),
        "TEMPORAL_ADDRESS": server.address,
        "SECFLOW_DATA_DIR": os.environ["SECFLOW_DATA_DIR"],
        "SECFLOW_TASK_QUEUE": worker,
        "SECFLOW_LOG_LEVEL": "WARNING",
    }
    host = own_loopback_host()  # its re-run commands start assessments that stay at their gates
    spec = make_spec(
        [{"host": host}],
        [
            {"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": "1"}, "requires_approval": True},
            # a second gate keeps the assessment running while the first gate's texts are tried
            {"id": "later", "kind": "discovery", "tool": "portscan", "options": {"ports": "1"}, "requires_approval": True,
             "depends_on": ["ports"]},
        ],
        scope=LOOPBACK_SCOPE,
    )
    handle = await start(client, spec, worker)
    await wait_for(handle, lambda s: s.awaiting == ["ports"])
    wid = handle.id

    # What the Web UI shows as the assessment's current details.
    meta = await handle.query("__temporal_workflow_metadata")
    details = meta.current_details if hasattr(meta, "current_details") else meta["currentDetails"]
    from_details = printed_commands(details)
    assert any(" approve " in c for c in from_details), details

    # What `status` prints, run as printed.
    status = await asyncio.to_thread(run_as_printed, guidance.status_command(wid), env)
    assert_runs(guidance.status_command(wid), status)

    # The incident the gate opened: its texts (the Web UI's current details) and commands.
    [incident] = (await handle.query("status")).get("incidents") or [None]
    assert incident is not None and incident in status.stdout, status.stdout
    incident_meta = await client.get_workflow_handle(incident).query("__temporal_workflow_metadata")
    incident_details = incident_meta.current_details if hasattr(incident_meta, "current_details") else incident_meta["currentDetails"]
    from_incident = printed_commands(incident_details)
    assert any(" incidents ack " in c for c in from_incident), incident_details

    # `run` itself: the id on stdout, the follow-up command on stderr.
    spec_file = tmp_path / "spec.json"
    quick = make_spec(
        [{"host": host}], [{"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": "1"}}], scope=LOOPBACK_SCOPE
    )
    spec_file.write_text(quick.model_dump_json(exclude_defaults=True))
    started = await asyncio.to_thread(run_as_printed, f"{guidance.CLI} run {spec_file}", env)
    assert_runs("run", started)
    assert started.returncode == 0 and started.stdout.strip(), started.stderr
    from_run = printed_commands(started.stderr)
    assert from_run == [guidance.status_command(started.stdout.strip())], started.stderr

    # The guidance catalogue, with this run's ids (incidents and dead letters use it).
    catalogue = [
        guidance.status_command(wid),
        guidance.failed_targets_command(wid, "ports"),
        guidance.incident_show_command(incident),
        guidance.incident_ack_command(incident),
        *guidance.incident_commands(incident),
        guidance.dlq_replay_command("0000000000"),
        *guidance.rerun_commands(wid, "ports"),
    ]
    # The demo's closing lines (examples/run_demo.py) and the run's own hint.
    demo = [f"{guidance.CLI} findings {wid}", f"{guidance.CLI} incidents list", f"{guidance.CLI} dlq list --workflow {wid}",
            f"{guidance.CLI} report {wid} --format md", f"{guidance.CLI} --help"]
    # Approve first (it answers the gate), then the rest of the gate's texts are refusals.
    commands = [*from_details, *printed_commands(status.stdout), *from_incident, *from_run, *catalogue, *demo, guidance.abort_command(wid),
                guidance.resume_command(wid)]
    ran = []
    for command in dict.fromkeys(commands):  # each once, in order
        out = await asyncio.to_thread(run_as_printed, command, env)
        assert_runs(command, out)
        ran.append((command, out.returncode))
    assert (f"{guidance.CLI} approve {wid} ports", 0) in ran, ran
    assert any(c.startswith(f"{guidance.TEMPORAL} workflow signal") and rc == 0 for c, rc in ran), ran
    assert (guidance.abort_command(wid), 0) in ran, ran

    # The worker command: the interpreter and module are there (a bad setting stops it at once).
    cmd = guidance.worker_command(worker)
    out = await asyncio.to_thread(run_as_printed, cmd, {**env, "SECFLOW_MAX_CONCURRENT_ACTIVITIES": "0"})
    assert out.returncode == 2 and "SECFLOW_MAX_CONCURRENT_ACTIVITIES" in out.stderr, (cmd, out.stderr)
    assert "ModuleNotFoundError" not in out.stderr


def test_commands_without_a_server_run_from_a_bare_path(tmp_path: Path) -> None:
    """`validate` and `--help` need no server; they run from the bare PATH too."""
    env = {"PATH": BARE_PATH, "HOME": os.environ.get("HOME", "/tmp"), "SECFLOW_DATA_DIR": str(tmp_path)}
    for command in (f"{guidance.CLI} validate examples/demo.yaml", f"{guidance.CLI} dlq --help", f"{guidance.CLI} status --help"):
        out = run_as_printed(command, env)
        assert out.returncode == 0, (command, out.stderr)


def test_parsing_imports_no_command_modules() -> None:
    """The parser knows the command before anything heavy is imported (issue 11, item 7)."""
    probe = (
        "import sys\n"
        "from starter.cli import COMMAND_MODULES, build_parser\n"
        "for argv in (['status', 'x'], ['approve', 'x', 's'], ['report', 'x', '--format', 'md'], ['findings', 'x']):\n"
        "    build_parser(argv).parse_args(argv)\n"
        "heavy = [m for m in ('temporalio', 'pydantic', 'httpx', 'yaml', 'structlog', *COMMAND_MODULES.values()) if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "build_parser(['dlq', 'list']).parse_args(['dlq', 'list'])\n"
        "assert 'starter.dlq' in sys.modules and 'starter.incidents' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
