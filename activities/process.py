"""Running a scanner binary safely: argument lists only, own process group, timeout,
kill on cancel, bounded output, and failures classified by how the process ended.

Every external scanner adapter calls `run_process`; none spawns processes by itself.
Liveness heartbeats come from the activity wrapper (activities/runner.py), so a
scanner that runs for an hour keeps its activity alive without doing anything here.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from temporalio import activity

from secflow.errors import Category, ExternalToolError, PermanentError, TransientError, classify
from secflow.redaction import redact

TAIL_BYTES = 4000
# Scanners can be chatty; past this much output we stop reading and fail the run
# rather than let one tool exhaust the worker's memory.
MAX_OUTPUT_BYTES = 64 * 1024 * 1024
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL on cancellation


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGKILL the scanner when the worker dies.

    A scanner runs in its own process group (so a timeout kills its children too), which
    also means a SIGKILLed worker leaves it running: the retry on another worker then
    scans the same target alongside it, doubling the rate the stage allows. PR_SET_PDEATHSIG
    ties the scanner's life to the worker's. libc and prctl are bound here, in the parent:
    the hook itself only makes one system call, safe between fork and exec in a threaded
    process. Elsewhere than Linux there is no such call and no hook."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)

    return hook


_DIE_WITH_PARENT = _die_with_parent_hook()


@dataclass
class ProcessResult:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes
    duration: float

    @property
    def stdout_tail(self) -> str:
        return tail(self.stdout)

    @property
    def stderr_tail(self) -> str:
        return tail(self.stderr)


class ToolProcessError(ExternalToolError):
    """A scanner process that ended badly; its category follows how it ended
    (exit 127 -> permanent, 137/SIGKILL -> resource, SIGSEGV -> external_tool, ...)."""

    def __init__(self, message: str, *, category: Category, exit_code: int | None, stdout_tail: str, stderr_tail: str) -> None:
        super().__init__(message, exit_code=exit_code, stdout_tail=stdout_tail, stderr_tail=stderr_tail)
        self.category = category


def tail(data: bytes, limit: int = TAIL_BYTES) -> str:
    text = data[-limit:].decode("utf-8", errors="replace")
    return redact(text)


def locate_binary(name: str, env_var: str) -> str:
    """Which `name` to run: `$env_var` if set (a name or a path), else `name` on PATH, else the
    copy installed beside this interpreter (scanners from PyPI are secflow dependencies, and a
    worker started as ``.venv/bin/python worker.py`` has no venv on its PATH). A name that is
    not found ends in run_process's PermanentError ("not installed").

    A set `$env_var` that names nothing runnable is a PermanentError naming the variable
    and its value (a configuration mistake: no retry helps, a person fixes the setting)."""
    override = os.environ.get(env_var, "").strip()
    if override:
        return _checked_override(name, env_var, override)
    found = shutil.which(name)
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else name


def _checked_override(name: str, env_var: str, value: str) -> str:
    fix = f"set {env_var} to the {name} executable, or unset it to use {name} from PATH"
    if os.sep not in value and not value.startswith("~"):
        found = shutil.which(value)
        if found is None:
            raise PermanentError(f"{env_var}={value!r}: {value!r} is not installed (not on PATH; {fix})")
        return found
    path = os.path.expanduser(value)
    if not os.path.exists(path):
        raise PermanentError(f"{env_var}={value!r}: no such file ({fix})")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise PermanentError(f"{env_var}={value!r}: not an executable file ({fix})")
    return path


def find_binary(name: str, tool: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PermanentError(f"{tool}: the {name!r} binary is not installed (not found on PATH)")
    return path


async def run_process(
    argv: Sequence[str],
    *,
    tool: str,
    cwd: str | None = None,
    timeout: float,
    env: dict[str, str] | None = None,
    ok_codes: Sequence[int] = (0,),
    max_output: int = MAX_OUTPUT_BYTES,
) -> ProcessResult:
    """Run `argv` (a list, never a shell string) and return its output.

    Raises ToolProcessError for an exit code outside `ok_codes` or a death by signal,
    TransientError when it exceeds `timeout` (its whole process group is killed), and
    re-raises cancellation after killing the process group.
    """
    argv = [str(a) for a in argv]
    argv[0] = find_binary(argv[0], tool) if os.sep not in argv[0] else argv[0]
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, so we can kill its children too
            preexec_fn=_DIE_WITH_PARENT,  # and it dies with the worker (see _die_with_parent_hook)
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        # A path that vanished or lost its x bit (or a bad working directory): the
        # environment is wrong, not the scanner; name what could not be run.
        missing = exc.filename if exc.filename is not None else argv[0]
        raise PermanentError(f"{tool}: cannot run {argv[0]!r}: {exc.strerror or exc} ({missing})") from None
    try:
        stdout, stderr = await asyncio.wait_for(_read_all(proc, max_output), timeout=timeout)
    except TimeoutError:
        await _kill_group(proc, grace=0)
        raise TransientError(f"{tool} exceeded its timeout of {timeout:g}s; its process group was killed") from None
    except asyncio.CancelledError:
        await _kill_group(proc, grace=KILL_GRACE)
        raise
    except _TooMuchOutput:
        await _kill_group(proc, grace=0)
        raise ToolProcessError(
            f"{tool} produced more than {max_output} bytes of output; stopped",
            category=Category.EXTERNAL_TOOL,
            exit_code=None,
            stdout_tail="",
            stderr_tail="",
        ) from None
    result = ProcessResult(
        argv, proc.returncode if proc.returncode is not None else -1, stdout, stderr, time.monotonic() - started
    )
    if result.returncode not in ok_codes:
        how = _describe_exit(result.returncode)
        classification = classify(f"{tool} {how}: {result.stderr_tail[-500:]}", exit_code=result.returncode, tool=tool)
        raise ToolProcessError(
            f"{tool} {how}; stderr: {result.stderr_tail[-1000:].strip() or '(empty)'}",
            category=classification.category,
            exit_code=result.returncode,
            stdout_tail=result.stdout_tail,
            stderr_tail=result.stderr_tail,
        )
    return result


class _TooMuchOutput(Exception):
    pass


async def _read_all(proc: asyncio.subprocess.Process, max_output: int) -> tuple[bytes, bytes]:
    assert proc.stdout is not None and proc.stderr is not None

    async def drain(stream: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while chunk := await stream.read(65536):
            size += len(chunk)
            if size > max_output:
                raise _TooMuchOutput()
            chunks.append(chunk)
        return b"".join(chunks)

    stdout, stderr = await asyncio.gather(drain(proc.stdout), drain(proc.stderr))
    await proc.wait()
    return stdout, stderr


async def _kill_group(proc: asyncio.subprocess.Process, *, grace: float) -> None:
    """SIGTERM (if grace) then SIGKILL to the whole group; reap the child."""
    if proc.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if sig == signal.SIGTERM and grace <= 0:
            continue
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(proc.wait(), timeout=wait)
            return
        except TimeoutError:
            continue


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def time_budget(configured: float) -> float:
    """The tool's timeout, cut to end a little before the stage's own per-attempt timeout, so
    a hung scanner is killed and classified here (transient) instead of dying with its activity."""
    try:
        stage = activity.info().start_to_close_timeout
    except RuntimeError:  # called outside an activity (direct tests)
        return configured
    if not stage:
        return configured
    seconds = stage.total_seconds()
    return max(0.5, min(configured, seconds - min(5.0, seconds * 0.1)))
