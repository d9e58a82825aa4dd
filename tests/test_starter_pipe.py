"""`python -m starter findings ID | head`: the reader leaving early is not an error to shout about."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from secflow.findings import Finding, Severity
from secflow.store import open_store

ROOT = Path(__file__).resolve().parent.parent


def test_findings_into_a_pipe_closed_early_exits_quietly() -> None:
    assessment = f"pipe-{uuid.uuid4().hex[:8]}"
    findings = [
        Finding.new(tool="bandit", rule_id=f"B{i:03d}", title=f"problem {i}", severity=Severity.LOW,
                    target="app", location=f"app.py:{i}", evidence="x")
        for i in range(3000)
    ]
    open_store().upsert_findings(assessment, "sast", findings)
    # head exits after one line; the starter is still writing thousands more
    out = subprocess.run(
        f"{sys.executable} -m starter findings {assessment} | head -n 1",
        shell=True,
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.count("\n") == 1 and "app.py:" in out.stdout
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
