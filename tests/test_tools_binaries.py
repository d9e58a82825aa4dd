"""A scanner binary named by SECFLOW_BANDIT / SECFLOW_SEMGREP / SECFLOW_DETECT_SECRETS that
cannot be run is a classified, non-retryable error naming the variable and its value,
never a raw FileNotFoundError (issue 11 papercut)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from activities.process import PermanentError, run_process
from activities.scanners import detect_secrets, semgrep
from activities.scanners.bandit import BINARY_ENV
from secflow.errors import Category
from tests.test_scanner_bandit import APP, bandit_failure, stage_input


async def test_a_bandit_path_that_does_not_exist_names_the_variable_and_the_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "bandit"
    monkeypatch.setenv(BINARY_ENV, str(missing))
    error = await bandit_failure(stage_input(str(APP), scope=[str(APP)]))
    assert error.type == Category.PERMANENT.value and error.non_retryable, error.message
    assert f"SECFLOW_BANDIT='{missing}': no such file" in error.message
    assert "FileNotFoundError" not in error.message and "Errno" not in error.message


def test_every_scanner_variable_is_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    not_executable = tmp_path / "semgrep"
    not_executable.write_text("#!/bin/sh\n")
    monkeypatch.setenv(semgrep.BINARY_ENV, str(not_executable))
    with pytest.raises(PermanentError, match=r"SECFLOW_SEMGREP='.*semgrep': not an executable file \(set SECFLOW_SEMGREP"):
        semgrep.semgrep_binary()
    monkeypatch.setenv(detect_secrets.BINARY_ENV, str(tmp_path))  # a directory
    with pytest.raises(PermanentError, match="SECFLOW_DETECT_SECRETS=.*: not an executable file"):
        detect_secrets.detect_secrets_binary()
    monkeypatch.setenv(detect_secrets.BINARY_ENV, "no-such-detect-secrets")
    with pytest.raises(PermanentError, match="SECFLOW_DETECT_SECRETS='no-such-detect-secrets': .* not installed"):
        detect_secrets.detect_secrets_binary()
    # a good path is used as given
    not_executable.chmod(not_executable.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(semgrep.BINARY_ENV, str(not_executable))
    assert semgrep.semgrep_binary() == str(not_executable)


async def test_a_binary_that_vanishes_before_it_runs_is_permanent(tmp_path: Path) -> None:
    gone = tmp_path / "scanner"
    assert not os.path.exists(gone)
    with pytest.raises(PermanentError, match=r"nmap: cannot run '.*scanner': No such file or directory"):
        await run_process([str(gone), "--version"], tool="nmap", timeout=5)
