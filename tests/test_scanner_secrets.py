"""The `detect_secrets` tool, for real, and the promise that a found secret's VALUE goes
nowhere: not the store, not the reports, not the workflow history, not the worker's logs.

The planted secrets are generated at test time (random, real-looking), so the repository
itself carries no secret-shaped strings for other scanners to trip over.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import secrets
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToJson
from temporalio.client import Client

from activities.runner import ToolContext
from activities.scanners.detect_secrets import detect_secrets_tool, parse_detect_secrets_json
from secflow.errors import Category, ExternalToolError, ScopeViolation, classify
from secflow.logging import configure_logging, reset_logging
from secflow.models import StageTaskInput
from secflow.retries import RETRY_TABLE
from secflow.settings import load_settings
from secflow.spec import SpecError
from secflow.store import open_store
from secflow.tools import RetryClass
from tests.helpers import final_status, make_spec, start


def _pick(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


@dataclass
class Planted:
    root: Path
    values: dict[str, str]  # what -> the secret value; none of these may leak anywhere


@pytest.fixture
def planted(tmp_path: Path) -> Planted:
    root = tmp_path / "secrets-repo"
    (root / "config").mkdir(parents=True)
    aws_id = "AKIA" + _pick(string.ascii_uppercase + "234567", 16)
    aws_secret = _pick(string.ascii_letters + string.digits + "+/", 40)
    github = "ghp_" + _pick(string.ascii_letters + string.digits, 36)
    password = _pick(string.ascii_letters + string.digits, 12) + "#" + _pick(string.ascii_letters + string.digits, 6)
    body = base64.b64encode(secrets.token_bytes(600)).decode()
    key_lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    private_key = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(key_lines) + "\n-----END RSA PRIVATE KEY-----\n"
    (root / "settings.py").write_text(
        f'AWS_ACCESS_KEY_ID = "{aws_id}"\naws_secret_access_key = "{aws_secret}"\nGITHUB_TOKEN = "{github}"\n'
    )
    (root / "deploy_key.pem").write_text(private_key)
    (root / "config" / "app.ini").write_text(f"[db]\nhost = db.internal\npassword = {password}\n")
    (root / "README.md").write_text("nothing to see here\n")
    # a symlink out of the tree: detect-secrets would follow it; SecFlow must not
    outside_token = "ghp_" + _pick(string.ascii_letters + string.digits, 36)
    (tmp_path / "outside.env").write_text(f"OUTSIDE_TOKEN={outside_token}\n")
    (root / "linked.env").symlink_to(tmp_path / "outside.env")
    values = {"aws_id": aws_id, "aws_secret": aws_secret, "github": github, "password": password, "outside": outside_token}
    values.update({f"key_line_{i}": line for i, line in enumerate(key_lines) if len(line) >= 16})
    return Planted(root, values)


def inp(target: Path, scope: list[str], **options: object) -> StageTaskInput:
    return StageTaskInput(
        assessment_id="a-secrets", stage_id="secrets", kind="secrets", tool="detect_secrets", target=str(target),
        target_kind="path", scope=scope, options=dict(options), retry=RETRY_TABLE[RetryClass.SCANNER],
    )


async def run_direct(target: Path, **options: object):  # type: ignore[no-untyped-def]
    return await detect_secrets_tool(ToolContext(inp(target, [str(target)], **options), open_store(), None))


def fake_bin(directory: Path, body: str) -> None:
    path = directory / "detect-secrets"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "fakebin"
    d.mkdir()
    monkeypatch.delenv("SECFLOW_DETECT_SECRETS", raising=False)
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ.get('PATH', '')}")
    return d


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Everything the in-process worker logs, at DEBUG, as it would reach a log shipper."""
    root = logging.getLogger()
    old_level = root.level
    buf = io.StringIO()
    configure_logging("DEBUG", stream=buf)
    try:
        yield buf
    finally:
        reset_logging()
        root.setLevel(old_level)


# --- edges -----------------------------------------------------------------------------------
async def test_path_outside_scope_is_refused_before_the_tool_runs(planted: Planted, tmp_path: Path, fakes: Path) -> None:
    marker = tmp_path / "ran"
    fake_bin(fakes, f'touch {marker}\necho \'{{"results": {{}}}}\'')
    with pytest.raises(SpecError) as err:
        make_spec([{"path": str(planted.root)}], [{"id": "s", "kind": "secrets"}], scope={"allow": [str(tmp_path / "elsewhere")]})
    assert "targets[0].path" in str(err.value)
    with pytest.raises(ScopeViolation) as info:
        await detect_secrets_tool(ToolContext(inp(planted.root, [str(tmp_path / "elsewhere")]), open_store(), None))
    assert classify(info.value).category is Category.SECURITY
    assert not marker.exists()


@pytest.mark.parametrize(
    "body, options, category, words",
    [
        ("""printf '{"version": "1.5.0", "results": {"settings.py": [{"type": "AWS Acc'""", {}, Category.EXTERNAL_TOOL, "not JSON or truncated"),
        ("echo 'Segmentation fault' >&2\nkill -SEGV $$", {}, Category.EXTERNAL_TOOL, "SIGSEGV"),
        ("exec sleep 300", {"timeout": "1s"}, Category.TRANSIENT, "exceeded its timeout"),
    ],
    ids=["truncated-json", "sigsegv", "hang"],
)
async def test_broken_detect_secrets(planted: Planted, fakes: Path, body: str, options: dict, category: Category, words: str) -> None:
    fake_bin(fakes, body)
    with pytest.raises(Exception) as info:
        await run_direct(planted.root, **options)
    assert classify(info.value).category is category
    assert words in str(info.value)


async def test_missing_detect_secrets_is_permanent(planted: Planted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("SECFLOW_DETECT_SECRETS", "detect-secrets")  # no fallback to the venv's copy
    with pytest.raises(Exception) as info:
        await run_direct(planted.root)
    assert classify(info.value).category is Category.PERMANENT


def test_a_report_carrying_something_other_than_a_hash_is_refused() -> None:
    value = "ghp_" + _pick(string.ascii_letters + string.digits, 36)
    doc = {"results": {"a.py": [{"type": "GitHub Token", "filename": "a.py", "hashed_secret": value, "line_number": 1}]}}
    with pytest.raises(ExternalToolError) as info:
        parse_detect_secrets_json(json.dumps(doc).encode(), target="/t")
    assert value not in str(info.value) and value not in info.value.stdout_tail


# --- in a real workflow -------------------------------------------------------------------
async def test_workflow_finds_secrets_and_never_stores_their_values(
    client: Client, worker: str, planted: Planted, logs: io.StringIO
) -> None:
    spec = make_spec(
        [{"path": str(planted.root)}],
        [
            {"id": "secrets", "kind": "secrets", "tool": "detect_secrets"},
            {"id": "report", "kind": "report", "always": True},
        ],
        scope={"allow": [str(planted.root)]},
    )
    handle = await start(client, spec, worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason

    store = open_store()
    findings = [f for f in store.list_findings(handle.id) if f.tool == "detect-secrets"]
    got = {(f.rule_id, f.location) for f in findings}
    assert {
        ("AWS Access Key", "settings.py:1"),
        ("GitHub Token", "settings.py:3"),
        ("Private Key", "deploy_key.pem:1"),
        ("Secret Keyword", "config/app.ini:3"),
    } <= got, sorted(got)
    assert not any(f.location.startswith("linked.env") for f in findings), "followed a symlink out of scope"
    assert status.stages["secrets"].outputs["symlinks_skipped"] == "1"
    for f in findings:
        kind, _, rest = f.evidence.partition(" at ")
        location, _, digest = rest.partition("; sha1 ")
        assert (kind, location) == (f.rule_id, f.location) and len(digest) == 40, f.evidence
        if f.rule_id in ("AWS Access Key", "GitHub Token", "Private Key", "Secret Keyword"):
            assert f.severity.value == "high", f
    assert next(f for f in findings if f.rule_id == "Private Key").cwe == ["CWE-321"]

    # Where a value could have gone: the store (findings and error ledger), the reports,
    # the workflow history and the worker's logs.
    places: dict[str, str] = {
        "store.findings": "\n".join(f.model_dump_json() for f in store.list_findings(handle.id)),
        "store.errors": "\n".join(repr(e) for e in store.list_errors(handle.id)),
        "logs": logs.getvalue(),
    }
    # this assessment's reports only: other tests' reports share the same file names
    reports = load_settings().reports_dir / handle.id
    report_files = [p for p in reports.rglob("*") if p.is_file()]
    assert len(report_files) == 4, f"expected 4 reports under {reports}: {report_files}"
    for path in report_files:
        places[f"report {path.name}"] = path.read_text(errors="replace")
    history_json, history_raw = [], []
    async for event in handle.fetch_history_events():
        history_json.append(MessageToJson(event))
        history_raw.append(event.SerializeToString())
    places["history.json"] = "\n".join(history_json)
    raw = b"".join(history_raw)

    assert "detect-secrets finished" in places["logs"], "the worker's logs were not captured"
    assert any("settings.py:1" in text for name, text in places.items() if name.startswith("report")), "findings missing from the reports"
    for what, value in planted.values.items():
        for place, text in places.items():
            assert value not in text, f"planted {what} leaked into {place}"
        assert value.encode() not in raw, f"planted {what} leaked into the workflow history"
