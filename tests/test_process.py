"""The scanner process runner, with real processes: exits, signals, hangs, floods."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from activities.process import ToolProcessError, run_process
from secflow.errors import Category, PermanentError, TransientError, classify

PY = sys.executable


async def test_success_returns_output() -> None:
    result = await run_process([PY, "-c", "print('hello')"], tool="t", timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == b"hello"


async def test_missing_binary_is_permanent() -> None:
    with pytest.raises(PermanentError) as info:
        await run_process(["no-such-scanner-binary", "--version"], tool="scanner", timeout=5)
    assert classify(info.value).category is Category.PERMANENT
    assert "not installed" in str(info.value)


@pytest.mark.parametrize(
    "code, category",
    [
        ("import sys; sys.stderr.write('boom'); sys.exit(2)", Category.EXTERNAL_TOOL),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", Category.EXTERNAL_TOOL),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", Category.RESOURCE),
        ("import sys; sys.exit(127)", Category.PERMANENT),
    ],
)
async def test_bad_endings_are_classified_and_keep_their_tails(code: str, category: Category) -> None:
    with pytest.raises(ToolProcessError) as info:
        await run_process([PY, "-c", code], tool="scanner", timeout=30)
    assert classify(info.value).category is category
    if "boom" in code:
        assert info.value.stderr_tail == "boom" and info.value.exit_code == 2


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(300)"
    )
    with pytest.raises(TransientError):
        await run_process([PY, "-c", script], tool="scanner", timeout=2)
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(grandchild):
        await asyncio.sleep(0.1)
    assert not _alive(grandchild), "the scanner's child must die with it"


async def test_cancellation_kills_the_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    task = asyncio.ensure_future(run_process([PY, "-c", script], tool="scanner", timeout=300))
    while not pidfile.exists() or not pidfile.read_text():
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(int(pidfile.read_text()))


async def test_output_flood_is_stopped() -> None:
    with pytest.raises(ToolProcessError) as info:
        await run_process([PY, "-c", "import sys\nwhile True: sys.stdout.write('x' * 65536)"], tool="t", timeout=30, max_output=1_000_000)
    assert "more than 1000000 bytes" in str(info.value)


async def test_arguments_are_never_a_shell() -> None:
    result = await run_process([PY, "-c", "import sys; print(sys.argv[1])", "$(touch /tmp/pwned); `id`"], tool="t", timeout=30)
    assert result.stdout.decode().strip() == "$(touch /tmp/pwned); `id`"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_killed_worker_takes_its_scanner_with_it(tmp_path: Path) -> None:
    """A worker SIGKILLed mid-scan must not leave the scanner running (in its own process
    group it used to outlive the worker, so the retry elsewhere scanned the target twice
    as fast as the stage allows). The "worker" here is a real process running
    `run_process`; it is SIGKILLed, and the scanner's pid must vanish."""
    import signal
    import subprocess

    pid_file = tmp_path / "scanner.pid"
    scanner = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    worker_code = (
        "import asyncio, sys\n"
        "from activities.process import run_process\n"
        f"asyncio.run(run_process([sys.executable, '-c', {scanner!r}], tool='t', timeout=300))\n"
    )
    root = Path(__file__).resolve().parents[1]
    worker = subprocess.Popen([PY, "-c", worker_code], cwd=root)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and worker.poll() is None, "the scanner never started"
            time.sleep(0.05)
        scanner_pid = int(pid_file.read_text())
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(scanner_pid):
            if time.monotonic() > deadline:
                os.kill(scanner_pid, signal.SIGKILL)
                pytest.fail("the scanner outlived its SIGKILLed worker")
            time.sleep(0.05)
    finally:
        if worker.poll() is None:
            worker.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"  # a zombie has died already
    except FileNotFoundError:
        return False
