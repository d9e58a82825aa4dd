"""The `semgrep` tool, for real: SecFlow's offline rules against examples/vulnerable-app, and
real executables standing in for a broken semgrep (truncated JSON, SIGSEGV, a hang).

semgrep starts slowly (~2 s), so the real scan happens once, in the workflow test, and the
failure modes use fake binaries put first on PATH.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from temporalio.client import Client

from activities.runner import ToolContext
from activities.scanners.semgrep import RULES_FILE, semgrep_tool
from secflow.errors import Category, ScopeViolation, classify
from secflow.models import StageTaskInput
from secflow.retries import RETRY_TABLE
from secflow.spec import SpecError
from secflow.store import open_store
from secflow.tools import RetryClass, SemgrepOptions
from tests.helpers import final_status, make_spec, start

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "vulnerable-app"
# rule id -> (a snippet of the vulnerable line, severity, CWE); the line is looked up in the
# sources so the test follows edits to the example app.
EXPECTED = {
    "secflow.python.subprocess-shell-true": ("shell=True", "high", "CWE-78"),
    "secflow.python.tls-verify-disabled": ("verify=False", "high", "CWE-295"),
    "secflow.python.yaml-unsafe-load": ("yaml.load(", "high", "CWE-502"),
    "secflow.python.pickle-loads": ("pickle.loads(", "high", "CWE-502"),
    "secflow.python.weak-hash": ("hashlib.md5(", "medium", "CWE-327"),
    "secflow.python.hardcoded-password": ("password = ", "medium", "CWE-798"),
}
FALLBACK_APP = {
    "app.py": 'import subprocess\nimport requests\n\n\ndef ping(host):\n    return subprocess.call("ping -c 1 " + host, shell=True)\n\n\n'
    "def fetch(url):\n    return requests.get(url, verify=False, timeout=10)\n",
    "config.py": 'password = "not-a-real-secret-demo-only"\n',
    "crypto.py": "import hashlib\n\n\ndef h(p):\n    return hashlib.md5(p.encode()).hexdigest()\n",
    "storage.py": "import pickle\nimport yaml\n\n\ndef a(b):\n    return pickle.loads(b)\n\n\ndef c(t):\n    return yaml.load(t)\n",
}


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A copy of examples/vulnerable-app (or a stand-in if it is missing), plus two files that
    test semgrep's edges: one the tree tries to hide with .semgrepignore, one it cannot parse."""
    root = tmp_path / "app"
    if EXAMPLE.is_dir():
        shutil.copytree(EXAMPLE, root)
    else:
        root.mkdir()
        for name, text in FALLBACK_APP.items():
            (root / name).write_text(text)
    (root / "hidden.py").write_text("import pickle\n\n\ndef load(blob):\n    return pickle.loads(blob)\n")
    (root / ".semgrepignore").write_text("hidden.py\n")
    (root / "broken.py").write_text('import pickle\npickle.loads(b"")\ndb_password = = "hunter2-broken-line"\n')
    return root


def expected_locations(root: Path) -> set[tuple[str, str]]:
    found = set()
    for rule, (needle, _, _) in EXPECTED.items():
        for path in sorted(root.rglob("*.py")):
            if path.name in ("hidden.py", "broken.py"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if needle in line and not line.lstrip().startswith("#"):
                    found.add((rule, f"{path.relative_to(root).as_posix()}:{number}"))
    return found


def fake_bin(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def inp(target: Path, scope: list[str], **options: object) -> StageTaskInput:
    return StageTaskInput(
        assessment_id="a-semgrep", stage_id="sast", kind="sast", tool="semgrep", target=str(target),
        target_kind="path", scope=scope, options=dict(options), retry=RETRY_TABLE[RetryClass.SCANNER],
    )


async def run_direct(target: Path, **options: object):  # type: ignore[no-untyped-def]
    return await semgrep_tool(ToolContext(inp(target, [str(target)], **options), open_store(), None))


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory put first on PATH for fake `semgrep` executables."""
    d = tmp_path / "fakebin"
    d.mkdir()
    monkeypatch.delenv("SECFLOW_SEMGREP", raising=False)
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ.get('PATH', '')}")
    return d


# --- options and edges -----------------------------------------------------------------------
def test_rules_file_ships_and_options_refuse_network_configs() -> None:
    assert RULES_FILE.is_file()
    for bad in ("p/python", "auto", "https://semgrep.dev/c/p/python", "rules.yml", "/etc/passwd"):
        with pytest.raises(ValueError):
            SemgrepOptions(rules=[bad])
    assert SemgrepOptions(rules=["/opt/rules/extra.yaml"]).rules == ["/opt/rules/extra.yaml"]


async def test_path_outside_scope_is_refused_before_semgrep_runs(app: Path, tmp_path: Path, fakes: Path) -> None:
    marker = tmp_path / "semgrep-ran"
    fake_bin(fakes, "semgrep", f"touch {marker}\necho '{{\"results\": [], \"errors\": []}}'")
    with pytest.raises(SpecError) as err:
        make_spec([{"path": str(app)}], [{"id": "sast", "kind": "sast", "tool": "semgrep"}], scope={"allow": [str(tmp_path / "elsewhere")]})
    assert "targets[0].path" in str(err.value)
    with pytest.raises(ScopeViolation) as info:
        await semgrep_tool(ToolContext(inp(app, [str(tmp_path / "elsewhere")]), open_store(), None))
    assert classify(info.value).category is Category.SECURITY
    # a symlink inside the scope that leads out of it is refused the same way
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "link").symlink_to(app)
    with pytest.raises(ScopeViolation):
        await semgrep_tool(ToolContext(inp(tmp_path / "elsewhere" / "link", [str(tmp_path / "elsewhere")]), open_store(), None))
    assert not marker.exists(), "semgrep must not run for an out-of-scope target"


@pytest.mark.parametrize(
    "body, category, words",
    [
        ("""printf '{"version": "1.182.0", "results": [{"check_id": "x", "pa'""", Category.EXTERNAL_TOOL, "not JSON or truncated"),
        ("echo 'Segmentation fault' >&2\nkill -SEGV $$", Category.EXTERNAL_TOOL, "SIGSEGV"),
        ("""echo '{"results": [], "errors": [{"code": 2, "level": "error", "message": "Fatal: core crashed"}]}'\nexit 2""",
         Category.EXTERNAL_TOOL, "core crashed"),
    ],
    ids=["truncated-json", "sigsegv", "fatal-exit-2"],
)
async def test_broken_semgrep_is_an_external_tool_failure(app: Path, fakes: Path, body: str, category: Category, words: str) -> None:
    fake_bin(fakes, "semgrep", body)
    with pytest.raises(Exception) as info:
        await run_direct(app)
    assert classify(info.value).category is category
    assert words in str(info.value)


async def test_missing_semgrep_is_permanent(app: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # PATH without semgrep...
    monkeypatch.setenv("SECFLOW_SEMGREP", "semgrep")  # ...and no fallback to the venv's copy
    with pytest.raises(Exception) as info:
        await run_direct(app)
    assert classify(info.value).category is Category.PERMANENT
    assert "not installed" in str(info.value)


async def test_invalid_rules_file_is_permanent_with_semgreps_reason(app: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad-rules.yml"
    bad.write_text("rules: [{id: x, bad\n")
    with pytest.raises(Exception) as info:
        await run_direct(app, rules=[str(bad)])
    assert classify(info.value).category is Category.PERMANENT
    assert "exit 7" in str(info.value) and "Invalid YAML" in str(info.value)


# --- in a real workflow -------------------------------------------------------------------
async def test_workflow_real_semgrep_finds_the_planted_issues(client: Client, worker: str, app: Path) -> None:
    spec = make_spec([{"path": str(app)}], [{"id": "sast", "kind": "sast", "tool": "semgrep"}], scope={"allow": [str(app)]})
    handle = await start(client, spec, worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    findings = [f for f in open_store().list_findings(handle.id) if f.tool == "semgrep"]
    got = {(f.rule_id, f.location) for f in findings}
    assert expected_locations(app) <= got, sorted(got)
    # .semgrepignore in the scanned tree does not hide code from the scanner
    assert ("secflow.python.pickle-loads", "hidden.py:5") in got
    # a file semgrep can only partly parse still yields what it could read, and is counted
    assert ("secflow.python.pickle-loads", "broken.py:2") in got
    assert int(status.stages["sast"].outputs["errors"]) >= 1
    for f in findings:
        if f.rule_id in EXPECTED:
            needle, severity, cwe = EXPECTED[f.rule_id]
            assert f.severity.value == severity and f.cwe == [cwe], f
            assert f.title and f.evidence, f
            if not f.location.startswith(("hidden.py", "broken.py")):
                assert needle in f.evidence, f
    passwords = [f for f in findings if f.rule_id == "secflow.python.hardcoded-password"]
    assert len(passwords) >= 2  # config.py, and the half-parsed line in broken.py
    for f in passwords:
        assert "[REDACTED]" in f.evidence, f
    dumped = " ".join(f.model_dump_json() for f in findings)
    assert "not-a-real-secret" not in dumped and "hunter2-broken-line" not in dumped
    assert status.stages["sast"].findings == len(findings)


async def test_workflow_hang_past_the_stage_timeout_is_transient(client: Client, worker: str, app: Path, fakes: Path) -> None:
    fake_bin(fakes, "semgrep", "exec sleep 300")
    spec = make_spec(
        [{"path": str(app)}],
        [{"id": "sast", "kind": "sast", "tool": "semgrep", "timeout": "3s", "retry": {"max_attempts": 1}}],
        scope={"allow": [str(app)]},
    )
    handle = await start(client, spec, worker)
    status = await final_status(handle)
    assert status.outcome == "failed"
    error = status.stages["sast"].error
    assert error.category == "transient", error
    assert "exceeded its timeout" in error.message
