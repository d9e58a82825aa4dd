"""The bandit adapter for real: real bandit on examples/vulnerable-app, a real fake bandit
(an executable printing truncated JSON), a really missing binary, scope refusals, and one
run through the real workflow.

examples/vulnerable-app is only ever read as text by bandit: nothing here imports it.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.scanners.bandit import BINARY_ENV, bandit, bandit_binary, build_argv, parse_bandit_json
from secflow.errors import Category, ExternalToolError
from secflow.models import StageTaskInput, StageTaskResult
from secflow.retries import plan_for
from secflow.store import open_store
from secflow.tools import TOOLS, BanditOptions
from tests.helpers import final_status, make_spec, start

APP = (Path(__file__).resolve().parent.parent / "examples" / "vulnerable-app").resolve()

# What was planted (README.md of the app): rule -> (file:line, severity, CWE)
PLANTED = {
    "B602": ("app.py:10", "high", "CWE-78"),  # subprocess shell=True
    "B501": ("app.py:15", "high", "CWE-295"),  # requests verify=False
    "B301": ("storage.py:10", "medium", "CWE-502"),  # pickle.loads
    "B506": ("storage.py:15", "medium", "CWE-20"),  # yaml.load
    "B105": ("config.py:5", "low", "CWE-259"),  # hardcoded password
    "B324": ("crypto.py:8", "high", "CWE-327"),  # md5
}
PLANTED_SECRET = "not-a-real-secret-demo-only"


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def stage_input(target: str, *, scope: list[str], options: dict[str, Any] | None = None, workspace: str = "") -> StageTaskInput:
    return StageTaskInput(
        assessment_id=f"t-{uuid.uuid4().hex[:10]}",
        stage_id="sast",
        kind="sast",
        tool="bandit",
        target=target,
        target_kind="path",
        options=options or {},
        scope=scope,
        workspace=workspace,
        retry=plan_for(TOOLS["bandit"].retry_class),
    )


async def run_bandit(inp: StageTaskInput) -> StageTaskResult:
    return await ActivityEnvironment().run(bandit, inp)


async def bandit_failure(inp: StageTaskInput) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await run_bandit(inp)
    return caught.value


def fake_bandit(directory: Path, body: str) -> Path:
    """A real executable `directory/bandit` (Python) that records that it ran, then runs `body`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bandit"
    log = directory / "bandit.ran"
    path.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(log)!r}, 'a').write(repr(sys.argv[1:]) + '\\n')\n"
        + textwrap.dedent(body)
    )
    path.chmod(0o755)
    return path


def runs_of_fake(directory: Path) -> int:
    log = directory / "bandit.ran"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def fake_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory put FIRST on PATH: a fake `bandit` written there shadows the real one."""
    directory = tmp_path / "fakebin"
    directory.mkdir()
    monkeypatch.delenv(BINARY_ENV, raising=False)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")
    return directory


# ---------------------------------------------------------------------------------------
# real bandit on the planted issues
# ---------------------------------------------------------------------------------------
async def test_real_bandit_finds_the_planted_issues_at_file_and_line(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    inp = stage_input(str(APP), scope=[str(APP)], workspace=str(workspace))
    result = await run_bandit(inp)

    findings = open_store().list_findings(inp.assessment_id)
    assert result.findings == len(findings) > 0
    by_rule = {f.rule_id: f for f in findings}
    for rule, (location, severity, cwe) in PLANTED.items():
        assert rule in by_rule, f"planted {rule} not found; got {sorted(by_rule)}"
        f = by_rule[rule]
        assert f.location == location
        assert f.severity.value == severity, (rule, f.severity)
        assert f.cwe == [cwe], (rule, f.cwe)
        assert f.tool == "bandit" and f.target == str(APP)
        assert f.title and f.evidence
    assert all(":" in f.location and not f.location.startswith("/") for f in findings), "locations are relative"
    assert "shell=True" in by_rule["B602"].evidence and "10 " in by_rule["B602"].evidence
    assert by_rule["B324"].confidence.value == "high"
    # bandit quotes the hardcoded password in its issue text and in the snippet: redacted
    for f in findings:
        assert PLANTED_SECRET not in f.title and PLANTED_SECRET not in f.evidence
    assert "[REDACTED]" in by_rule["B105"].title
    assert list(workspace.iterdir()) == [], "bandit writes nothing into the workspace"


async def test_a_single_file_target_and_the_severity_filter() -> None:
    target = str(APP / "storage.py")
    inp = stage_input(target, scope=[str(APP)], options={"min_severity": "medium"})
    await run_bandit(inp)
    findings = open_store().list_findings(inp.assessment_id)
    assert sorted((f.rule_id, f.location) for f in findings) == [("B301", "storage.py:10"), ("B506", "storage.py:15")]


async def test_a_planted_dot_bandit_file_cannot_silence_the_scan(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "run.py").write_text("import subprocess\nsubprocess.call('ls ' + input(), shell=True)\n")
    (repo / ".bandit").write_text("[bandit]\nskips = B602,B404\nexclude = run.py\n")
    inp = stage_input(str(repo), scope=[str(tmp_path)])
    await run_bandit(inp)
    rules = {f.rule_id for f in open_store().list_findings(inp.assessment_id)}
    assert "B602" in rules


# ---------------------------------------------------------------------------------------
# scope and input
# ---------------------------------------------------------------------------------------
async def test_path_outside_scope_is_refused_before_bandit_runs(fake_dir: Path, tmp_path: Path) -> None:
    fake_bandit(fake_dir, "print('{}')")
    inside = tmp_path / "allowed"
    inside.mkdir()
    for target in (str(APP), str(inside / ".." / ".." / "elsewhere"), "/etc"):
        error = await bandit_failure(stage_input(target, scope=[str(inside)]))
        assert error.type == Category.SECURITY.value, error.message
        assert error.non_retryable
    assert runs_of_fake(fake_dir) == 0, "bandit must not have been started"


async def test_symlink_in_scope_leading_out_of_it_is_refused(fake_dir: Path, tmp_path: Path) -> None:
    fake_bandit(fake_dir, "print('{}')")
    inside = tmp_path / "allowed"
    inside.mkdir()
    (inside / "link").symlink_to(APP)
    error = await bandit_failure(stage_input(str(inside / "link"), scope=[str(inside)]))
    assert error.type == Category.SECURITY.value
    assert runs_of_fake(fake_dir) == 0


async def test_missing_target_path_is_permanent(tmp_path: Path) -> None:
    error = await bandit_failure(stage_input(str(tmp_path / "nope"), scope=[str(tmp_path)]))
    assert error.type == Category.PERMANENT.value


def test_options_are_validated_and_argv_ends_with_the_path() -> None:
    for bad in ({"skip": ["B1"]}, {"exclude": ["--help"]}, {"min_severity": "extreme"}, {"recursive": False}):
        with pytest.raises(ValueError):
            BanditOptions.model_validate(bad)
    argv = build_argv("/srv/-repo", BanditOptions(skip=["B101"], exclude=["tests/"]))
    assert argv[-2:] == ["--", "/srv/-repo"]
    assert "--exit-zero" in argv and argv[argv.index("--ini") + 1] == os.devnull
    assert argv[argv.index("--skip") + 1] == "B101"
    assert argv[argv.index("--exclude") + 1].endswith(",tests/")


# ---------------------------------------------------------------------------------------
# a misbehaving or missing bandit
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "output",
    [
        '{"errors": [], "results": [{"code": "1 import os", "filename": "/x/a.py", "issue_con',  # truncated
        "Traceback (most recent call last):\n  garbage",
        "",
        '["not", "a", "report"]',
        '{"results": [{"filename": "a.py"}]}',  # results without the fields
    ],
    ids=["truncated", "garbage", "empty", "wrong-shape", "bad-entry"],
)
async def test_unusable_json_is_external_tool(output: str, fake_dir: Path) -> None:
    fake_bandit(fake_dir, f"sys.stdout.write({output!r})")
    error = await bandit_failure(stage_input(str(APP), scope=[str(APP)]))
    assert error.type == Category.EXTERNAL_TOOL.value, error.message
    assert not error.non_retryable
    assert runs_of_fake(fake_dir) == 1


def test_parse_errors_keep_the_output_tails() -> None:
    with pytest.raises(ExternalToolError) as caught:
        parse_bandit_json(b'{"results": [', root="/x", target="/x", opts=BanditOptions(), stderr=b"boom")
    assert caught.value.stdout_tail == '{"results": ['
    assert caught.value.stderr_tail == "boom"


async def test_bandit_crashing_is_external_tool(fake_dir: Path) -> None:
    fake_bandit(fake_dir, "sys.stderr.write('Traceback (most recent call last):\\nRuntimeError: boom\\n')\nsys.exit(1)\n")
    error = await bandit_failure(stage_input(str(APP), scope=[str(APP)]))
    assert error.type == Category.EXTERNAL_TOOL.value, error.message


async def test_missing_bandit_is_permanent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv(BINARY_ENV, "bandit")  # a name: looked up on PATH, where there is none
    error = await bandit_failure(stage_input(str(APP), scope=[str(APP)]))
    assert error.type == Category.PERMANENT.value, error.message
    assert error.non_retryable
    assert "not installed" in error.message


def test_without_bandit_on_path_the_one_beside_the_interpreter_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(BINARY_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert bandit_binary() == os.path.join(os.path.dirname(sys.executable), "bandit")


async def test_files_bandit_cannot_parse_are_counted_not_fatal(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "broken.py").write_text("def oops(:\n")
    (repo / "ok.py").write_text("import pickle\npickle.loads(b'')\n")
    inp = stage_input(str(repo), scope=[str(repo)])
    result = await run_bandit(inp)
    assert result.outputs["files_not_scanned"] == "1"
    assert "B301" in {f.rule_id for f in open_store().list_findings(inp.assessment_id)}


def test_report_parses_into_relative_locations() -> None:
    doc = {
        "errors": [],
        "results": [
            {"code": "3 x = 1\n", "filename": "/r/pkg/m.py", "issue_confidence": "MEDIUM", "issue_cwe": {"id": 0},
             "issue_severity": "UNDEFINED", "issue_text": "t", "line_number": 3, "test_id": "B999"},
        ],
    }
    findings, errors = parse_bandit_json(json.dumps(doc).encode(), root="/r", target="/r", opts=BanditOptions())
    assert errors == []
    (f,) = findings
    assert f.location == "pkg/m.py:3" and f.cwe == [] and f.severity.value == "info"


# ---------------------------------------------------------------------------------------
# through the real workflow
# ---------------------------------------------------------------------------------------
async def test_bandit_stage_through_the_workflow(client: Client, worker: str) -> None:
    spec = make_spec(
        [{"path": str(APP)}],
        [{"id": "sast", "kind": "sast", "tool": "bandit"}],
        scope={"allow": [str(APP)]},
    )
    handle = await start(client, spec, worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    assert status.stages["sast"].state == "succeeded"
    findings = open_store().list_findings(handle.id)
    found = {(f.rule_id, f.location) for f in findings if f.tool == "bandit"}
    assert {(rule, loc) for rule, (loc, _, _) in PLANTED.items()} <= found
    assert status.findings.total == len(findings)
