"""The proof that secrets travel by reference: planted values reach the places that need
them and nothing else.

One real assessment on a real dev server, run by a real worker process, against loopback
stand-ins: a URL target stand-in that checks Basic, Bearer and X-Api-Key credentials and
records what it saw, and alert channels (a signed webhook whose URL carries its token,
PagerDuty, Jira). Every credential is a random value planted in an environment variable
or a 0600 file and named in the spec or the routing file by reference only. One target
answers 503 (echoing the credential it was sent) until its retries run out, so the stage
fails: its task is parked in the dead-letter queue and a P2 incident pages the channels.

Then every place a value could leak is searched for every planted value (raw, Basic-
encoded and base64): the raw history of every workflow in the namespace (assessment,
stage children, incident), `status --json`, `result --json`, `dlq list --json`,
`incidents list --json`, every row of every store table, the report files, the bodies the
alert channels received, the worker's /metrics and the worker's whole log (DEBUG).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from temporalio.client import Client

from secflow.dead_letters import list_dead_letters
from secflow.settings import load_settings
from tests.alert_standins import HttpStandin, JiraStandin, PagerDutyStandin, Received, Reply, WebhookStandin
from tests.devserver import DevServer, free_port
from tests.helpers import final_status, start
from tests.history_payloads import decoded_bytes
from tests.test_dlq import starter

ROOT = Path(__file__).resolve().parent.parent
GOOD_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class TargetStandin(HttpStandin):
    """A URL target that wants credentials: /basic, /bearer, /header answer 200 when the
    expected credential came (401 otherwise); /down checks it too, then answers 503 with
    the credential it was sent in the body, as a careless backend would."""

    def __init__(self, expected: dict[str, tuple[str, str]]) -> None:
        self.expected = expected  # path -> (header, value)
        super().__init__()

    def answer(self, req: Received) -> Reply:
        header, wanted = self.expected.get(req.path, ("Authorization", ""))
        sent = req.header(header) or ""
        if not wanted or sent != wanted:
            return Reply(401, "unauthorised", {"WWW-Authenticate": 'Bearer realm="proof"'}, "text/plain")
        if req.path == "/down":
            return Reply(503, f"backend down; you sent {header}: {sent}", {}, "text/plain")
        return Reply(200, "ok", GOOD_HEADERS, "text/plain")


def _secret_file(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value + "\n")  # a trailing newline, as editors write it
    path.chmod(0o600)
    return path


def _forms(value: str) -> list[bytes]:
    """The ways a value could be written down: raw, base64 (standard and urlsafe)."""
    raw = value.encode()
    return [raw, base64.b64encode(raw).rstrip(b"="), base64.urlsafe_b64encode(raw).rstrip(b"=")]


def _leaks(blob: bytes | str, planted: dict[str, str]) -> list[str]:
    data = blob.encode() if isinstance(blob, str) else blob
    return [name for name, value in planted.items() for form in _forms(value) if form in data]


def _dump_store(db: Path) -> bytes:
    """Every row of every table of the SQLite store, as text."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out = []
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 (names from sqlite_master)
                out.append(f"{table}: {row!r}")
        assert "findings" in tables and "dead_letters" in tables, tables
        return "\n".join(out).encode()
    finally:
        conn.close()


async def _until(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.mark.timeout(300)
async def test_planted_secrets_reach_the_standins_and_nowhere_else(
    client: Client, server: DevServer, task_queue: str, tmp_path: Path
) -> None:
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(mode=0o700)
    planted = {
        "basic_password": secrets.token_urlsafe(18),
        "bearer_token": secrets.token_urlsafe(24),
        "api_key_header": secrets.token_hex(20),
        "down_token": secrets.token_urlsafe(20),
        "hook_url_token": secrets.token_hex(16),
        "hook_signing_secret": secrets.token_urlsafe(24),
        "pagerduty_routing_key": secrets.token_hex(16),  # Events v2 keys are 32 characters
        "jira_token": secrets.token_urlsafe(24),
    }
    basic_file = _secret_file(secret_dir, "basic-password", planted["basic_password"])
    down_file = _secret_file(secret_dir, "down-token", planted["down_token"])
    hook_secret_file = _secret_file(secret_dir, "hook-secret", planted["hook_signing_secret"])
    pd_file = _secret_file(secret_dir, "pd-key", planted["pagerduty_routing_key"])
    basic_value = "Basic " + base64.b64encode(f"scanner:{planted['basic_password']}".encode()).decode()
    planted["basic_header"] = basic_value.removeprefix("Basic ")

    target = TargetStandin(
        {
            "/basic": ("Authorization", basic_value),
            "/bearer": ("Authorization", f"Bearer {planted['bearer_token']}"),
            "/header": ("X-Api-Key", planted["api_key_header"]),
            "/down": ("Authorization", f"Bearer {planted['down_token']}"),
        }
    )
    hook = WebhookStandin()
    pager = PagerDutyStandin()
    jira = JiraStandin(email="secflow@example.com", token=planted["jira_token"])
    routing = tmp_path / "alerts.yaml"
    routing.write_text(
        yaml.safe_dump(
            {
                "channels": {
                    "hook": {"type": "webhook", "url": {"from_env": "PROOF_HOOK_URL"}, "secret": {"from_file": str(hook_secret_file)}},
                    "pager": {"type": "pagerduty", "base_url": pager.url, "routing_key": {"from_file": str(pd_file)}},
                    "tickets": {"type": "jira", "base_url": jira.url, "project": "SEC", "email": "secflow@example.com",
                                "token": {"from_env": "PROOF_JIRA_TOKEN"}},
                },
                "routing": {"P2": {"tiers": [["hook", "pager", "tickets"]]}},
            }
        )
    )
    metrics_port = free_port()
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "SECFLOW_TASK_QUEUE": task_queue,
        "TEMPORAL_ADDRESS": server.address,
        "SECFLOW_ALERTS_CONFIG": str(routing),
        "SECFLOW_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "SECFLOW_LOG_LEVEL": "DEBUG",
        "PROOF_BEARER": planted["bearer_token"],
        "PROOF_API_KEY": planted["api_key_header"],
        "PROOF_HOOK_URL": f"{hook.url}/hooks/{planted['hook_url_token']}",
        "PROOF_JIRA_TOKEN": planted["jira_token"],
    }
    base = target.url
    spec_doc = {
        "name": "secrets-proof",
        "scope": {"allow": ["127.0.0.1"]},
        "targets": [
            {"url": f"{base}/basic", "auth": {"basic": {"username": "scanner", "password": {"from_file": str(basic_file)}}}},
            {"url": f"{base}/bearer", "auth": {"bearer": {"from_env": "PROOF_BEARER"}}},
            {"url": f"{base}/header", "auth": {"header": {"name": "X-Api-Key", "value": {"from_env": "PROOF_API_KEY"}}}},
            {"url": f"{base}/down", "auth": {"bearer": {"from_file": str(down_file)}}},
        ],
        "stages": [
            {"id": "headers", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 2, "initial_interval": "200ms"}},
            {"id": "report", "kind": "report", "always": True},
        ],
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_doc))
    # The spec as a person runs it: `validate` accepts it (references only).
    validated = await starter("validate", str(spec_path))
    assert validated.returncode == 0, validated.stderr

    from secflow.spec import load_spec

    spec = load_spec(spec_path)
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        handle = await start(client, spec, task_queue, workflow_id=f"proof-{uuid.uuid4().hex[:8]}")
        status = await final_status(handle, timeout=180)
        await _until(lambda: hook.received and pager.received and jira.issues, 90, "the P2 page on every channel")
        metrics_text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()  # loopback
        )
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        for standin in (target, hook, pager, jira):
            standin.close()

    # --- the values reached the stand-ins that need them ------------------------------------
    assert status.status == "failed", status.model_dump_json(indent=1)
    assert status.stages["headers"].state == "failed"
    seen = {(r.path, r.header("Authorization"), r.header("X-Api-Key")) for r in target.received}
    assert ("/basic", basic_value, None) in seen
    assert ("/bearer", f"Bearer {planted['bearer_token']}", None) in seen
    assert ("/header", None, planted["api_key_header"]) in seen
    assert ("/down", f"Bearer {planted['down_token']}", None) in seen
    assert all(r.path != "/down" or r.header("X-Api-Key") is None for r in target.received)
    posted = hook.received[0]
    assert posted.path == f"/hooks/{planted['hook_url_token']}"
    mac = hmac.new(planted["hook_signing_secret"].encode(), posted.header("X-SecFlow-Timestamp").encode() + b"." + posted.body,
                   hashlib.sha256).hexdigest()
    assert posted.header("X-SecFlow-Signature") == f"sha256={mac}"
    assert pager.events() and pager.events()[0]["routing_key"] == planted["pagerduty_routing_key"]
    assert jira.issues, "Jira accepted the token (it answers 401 otherwise)"

    # --- ... and appear nowhere else ---------------------------------------------------------
    places: dict[str, bytes] = {}
    runs = []
    for _ in range(100):  # visibility lags a little behind the start of the incident
        runs = [wf async for wf in client.list_workflows()]
        if any(wf.id.startswith("incident-") for wf in runs):
            break
        await asyncio.sleep(0.2)
    for wf in runs:
        # Every workflow in the namespace (the assessment, its stage children, the incident):
        # the raw protobuf of every event, where payload data sits as it was written.
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        raw = b"".join(e.SerializeToString() for e in history.events)
        places[f"history {wf.workflow_type} {wf.id}"] = raw + await decoded_bytes(client, history.events)
    types = {name.split()[1] for name in places}
    assert {"Assessment", "IncidentWorkflow"} <= types, sorted(places)
    for args in (("status", handle.id, "--json"), ("result", handle.id, "--json"), ("dlq", "list", "--json"),
                 ("incidents", "list", "--state", "all", "--json"), ("findings", handle.id, "--json")):
        out = await starter(*args)
        assert out.returncode in (0, 1), (args, out.stderr)
        places[" ".join(args[:2])] = (out.stdout + out.stderr).encode()
    settings = load_settings()
    places["store"] = _dump_store(settings.data_dir / "secflow.db")
    report_dir = settings.data_dir / "reports" / handle.id
    reports = sorted(p for p in report_dir.rglob("*") if p.is_file())
    assert reports, f"no report files in {report_dir}"
    for path in reports:
        places[f"report {path.name}"] = path.read_bytes()
    for name, standin in (("webhook", hook), ("pagerduty", pager), ("jira", jira)):
        places[f"alerts to {name}"] = b"\n".join(r.body for r in standin.received)
    places["metrics"] = metrics_text.encode()
    places["worker log"] = log_path.read_bytes()

    # The channels' own credentials go where their protocol puts them and nowhere else.
    allowed = {"alerts to pagerduty": {"pagerduty_routing_key"}}
    leaks = {place: found for place, blob in places.items() if (found := set(_leaks(blob, planted)) - allowed.get(place, set()))}
    assert not leaks, leaks

    # The failed target was parked and paged with its reference, which is what travels.
    parked = list_dead_letters(_open_store(), workflow_id=handle.id)
    assert [(d.target, d.reason) for d in parked] == [(f"{base}/down", "retries_exhausted")]
    assert parked[0].replay is not None and parked[0].replay.target["auth"] == {"bearer": {"from_file": str(down_file)}}
    log_text = log_path.read_text(errors="replace")
    assert '"HTTP Request: POST' in log_text, "httpx's request lines are in the log, redacted"
    assert f"/hooks/{planted['hook_url_token']}" not in log_text
    # What travels and is stored is the reference: in the stored spec and the DLQ's recipe.
    assert str(down_file).encode() in places["store"] and str(down_file).encode() in places["dlq list"]
    assert sum(len(v) for k, v in places.items() if k.startswith("history")) > 10_000, "real histories were searched"


def _open_store():  # noqa: ANN202
    from secflow.store import open_store

    return open_store()
