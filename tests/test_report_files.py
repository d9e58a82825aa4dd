"""Report files on disk (secflow/reports/files.py): 0600 files, 0700 directories, written
without following a link planted at the temporary name, the target or the directory.
And the renderers' snapshot/final wording and issue grouping, which need no server."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import secflow.reports.files as files
from secflow.findings import Finding, Severity
from secflow.models import AssessmentStatus, CompensationRecord, StageStatus
from secflow.reports import RENDERERS, render_json, render_markdown
from secflow.reports._common import group_issues, prepare
from secflow.reports.files import UnsafeReportPath, write_private_file


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The loosest umask: modes must come from the writer, not from the environment."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("not yours\n")
    return victim


def test_new_files_are_0600_in_0700_directories(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "reports" / "a-1" / "report.md"
    write_private_file(path, "# report\n", make_dir=True)
    assert path.read_text() == "# report\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    # an existing report directory made by an older version (0755) is narrowed
    os.chmod(path.parent, 0o755)
    write_private_file(path, "again\n", make_dir=True)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and path.read_text() == "again\n"


def test_a_link_planted_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    path = tmp_path / "report.sarif"
    path.symlink_to(victim)
    write_private_file(path, "{}\n")
    assert victim.read_text() == "not yours\n"
    assert not path.is_symlink() and path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_link_planted_at_the_temporary_name_is_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = _victim(tmp_path)
    path = tmp_path / "report.md"
    # Plant links at the names the writer will try first (as if the attacker guessed them).
    planted = [".report.md.guess1.tmp", ".report.md.guess2.tmp"]
    for name in planted:
        (tmp_path / name).symlink_to(victim)
    names = iter([*planted, ".report.md.fresh.tmp"])
    monkeypatch.setattr(files, "temp_name", lambda final: next(names))
    write_private_file(path, "# report\n")
    assert victim.read_text() == "not yours\n"
    assert path.read_text() == "# report\n" and not path.is_symlink()
    assert all((tmp_path / n).is_symlink() for n in planted), "the planted links are left alone"
    assert not (tmp_path / ".report.md.fresh.tmp").exists()


def test_when_every_temporary_name_is_taken_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = _victim(tmp_path)
    (tmp_path / ".report.md.taken.tmp").symlink_to(victim)
    monkeypatch.setattr(files, "temp_name", lambda final: ".report.md.taken.tmp")
    with pytest.raises(FileExistsError):
        write_private_file(tmp_path / "report.md", "# report\n")
    assert victim.read_text() == "not yours\n" and not (tmp_path / "report.md").exists()


def test_a_link_planted_as_the_report_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chmod(elsewhere, 0o755)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "a-1").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeReportPath, match="symbolic link"):
        write_private_file(tmp_path / "reports" / "a-1" / "report.md", "x", make_dir=True)
    assert list(elsewhere.iterdir()) == []
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755  # never chmod-ed through the link
    with pytest.raises(UnsafeReportPath):
        write_private_file(tmp_path / "reports" / "a-1" / "report.md", "x")


# --- snapshot or final ------------------------------------------------------------------
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _status(final: bool) -> AssessmentStatus:
    return AssessmentStatus(
        workflow_id="a-7",
        name="demo",
        status="completed" if final else "running",
        outcome="completed" if final else None,
        started_at=T0,
        finished_at=T0 if final else None,
        stages={"report": StageStatus(kind="report", tool="report", state="succeeded" if final else "running")},
        compensations=[CompensationRecord(name="remove workspace", state="done" if final else "registered")],
    )


@pytest.mark.parametrize("fmt", sorted(RENDERERS))
def test_a_running_assessment_is_reported_as_a_snapshot_and_an_ended_one_as_final(fmt: str) -> None:
    render, _ = RENDERERS[fmt]
    snap, final = render(_status(False), [], []), render(_status(True), [], [])
    assert "SNAPSHOT: the assessment was still running" in snap
    assert "report a-7 --format md" in snap  # the command that renders the current state
    assert "SNAPSHOT" not in final


def test_markdown_and_json_say_outcome_and_finish_only_when_final() -> None:
    md = render_markdown(_status(True), [], [])
    assert "- Outcome: **completed**" in md and "- Finished: 2026-01-02T03:04:05+00:00" in md
    md = render_markdown(_status(False), [], [])
    assert "State when this snapshot was written: **running**" in md and "Finished: not yet (snapshot)" in md
    assert json.loads(render_json(_status(True), [], []))["final"] is True


# --- one issue per target, location and CWE ------------------------------------------------
def _f(tool: str, rule: str, location: str, cwe: list[str], target: str = "/srv/app", sev: Severity = Severity.HIGH) -> Finding:
    return Finding.new(tool=tool, rule_id=rule, title=f"{tool} {rule}", severity=sev, target=target, location=location, cwe=cwe)


def test_issues_group_only_the_same_target_location_and_cwe() -> None:
    findings = [
        _f("bandit", "B602", "app.py:10", ["CWE-78"]),
        _f("semgrep", "rules.semgrep.secflow.python.subprocess-shell-true", "app.py:10", ["CWE-078"], sev=Severity.MEDIUM),
        _f("bandit", "B506", "app.py:15", ["CWE-20"]),  # same line as the next, another CWE: two issues
        _f("semgrep", "yaml", "app.py:15", ["CWE-502"]),
        _f("bandit", "B602", "app.py:10", ["CWE-78"], target="/srv/other"),  # another target
        _f("http_headers", "csp-missing", "http://h/", []),  # no CWE: stands alone
        _f("tls", "tls-x", "http://h/", []),
    ]
    _, prepared, _ = prepare(_status(True), findings, [])
    issues = group_issues(prepared)
    assert len(issues) == 6
    [shell] = [i for i in issues if i.lead.location == "app.py:10" and i.lead.target == "/srv/app"]
    assert shell.tools == ("bandit", "semgrep") and shell.cwe == ("CWE-78",)
    assert shell.lead.tool == "bandit"  # the most severe finding leads
    # semgrep's prefixed rule id still finds its remediation
    assert "shell=False" in shell.remediation.text
    assert any(r.label == "OWASP A03:2021 Injection" for r in shell.remediation.references)


# --- the final re-render meets a planted link: refused, said, the assessment still ends ----
async def test_final_reports_refuse_a_report_directory_swapped_for_a_link(client, worker: str, tmp_path: Path) -> None:
    import shutil

    from temporalio.api.enums.v1 import EventType

    from secflow.models import Decision
    from secflow.settings import load_settings
    from tests.helpers import activity_order, final_status, make_spec, start, wait_for

    app = Path(__file__).resolve().parent.parent / "examples" / "vulnerable-app"
    spec = make_spec(
        [{"path": str(app)}],
        [
            {"id": "bandit", "kind": "sast", "tool": "bandit"},
            {"id": "report", "kind": "report", "depends_on": ["bandit"], "options": {"formats": ["md"]}},
            {"id": "late", "kind": "sast", "tool": "bandit", "depends_on": ["report"], "requires_approval": True},
        ],
        scope={"allow": [str(app)]},
    )
    handle = await start(client, spec, worker)
    await wait_for(handle, lambda s: s.awaiting == ["late"], timeout=120)
    report_dir = load_settings().reports_dir / handle.id
    assert "SNAPSHOT" in (report_dir / "report.md").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(report_dir)
    report_dir.symlink_to(elsewhere, target_is_directory=True)
    await handle.signal("reject", Decision(stage="late", by="tests"))
    status = await final_status(handle)
    assert status.outcome == "completed_with_errors"
    assert "the final report files could not be written (permanent:" in status.reason
    assert "symbolic link" in status.reason
    assert list(elsewhere.iterdir()) == []
    assert (await activity_order(handle))[-1] == "render_final_reports"
    attempts = [
        e.activity_task_started_event_attributes.attempt
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert attempts[-1] == 1  # permanent: not retried
