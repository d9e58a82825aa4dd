"""secflow.secrets: references, their resolution, and the refusal of inline credentials.

The CLI checks run the real starter (`validate` and `run`), the auth checks a real httpx
client against loopback servers.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from activities.tools.http_headers import check_headers
from secflow.errors import Category, classify
from secflow.redaction import REDACTED, forget_secrets, redact
from secflow.secrets import SecretRef, SecretUnavailable, TargetAuth, auth_headers, inline_url_credentials, resolve
from secflow.spec import SpecError, validate_spec_data
from tests.alert_standins import HttpStandin, Received, Reply
from tests.history_payloads import decoded_bytes

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _forget() -> None:
    yield
    forget_secrets()


def _file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / f"secret-{secrets.token_hex(4)}"
    path.write_text(text)
    path.chmod(mode)
    return path


# --- references ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("hunter2-inline", "an inline secret is refused"),
        ({"from_env": "A", "from_file": "/x"}, "exactly one of from_env or from_file"),
        ({}, "exactly one of from_env or from_file"),
        ({"from_env": "1BAD NAME"}, "is not an environment variable name"),
        ({"from_file": "relative/token"}, "is not an absolute path"),
        ({"from_vault": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_references_are_refused(raw: object, expected: str) -> None:
    with pytest.raises(ValueError, match=expected) as info:
        SecretRef.model_validate(raw)
    assert "hunter2-inline" not in str(info.value).split("input_value")[0]


def test_env_reference_resolves_and_is_scrubbed_afterwards() -> None:
    value = secrets.token_urlsafe(16)
    ref = SecretRef(from_env="SECFLOW_TEST_REF")
    assert resolve(ref, env={"SECFLOW_TEST_REF": f"  {value}\n"}) == value
    # Once resolved, the value is scrubbed from any text that is redacted, whatever it looks like.
    assert redact(f"upstream said: {value} is wrong") == f"upstream said: {REDACTED} is wrong"


def test_unset_env_is_a_permanent_error_naming_the_reference() -> None:
    with pytest.raises(SecretUnavailable) as info:
        resolve(SecretRef(from_env="SECFLOW_NOT_SET_ANYWHERE"), where="targets[2].auth.bearer", env={})
    message = str(info.value)
    assert message == (
        "targets[2].auth.bearer: secret {from_env: SECFLOW_NOT_SET_ANYWHERE}: "
        "environment variable SECFLOW_NOT_SET_ANYWHERE is not set in the worker"
    )
    assert classify(info.value).category is Category.PERMANENT


def test_file_reference(tmp_path: Path) -> None:
    value = secrets.token_urlsafe(16)
    assert resolve(SecretRef(from_file=str(_file(tmp_path, value + "\n")))) == value
    assert resolve(SecretRef(from_file=str(_file(tmp_path, value, 0o440)))) == value  # group-readable: allowed


@pytest.mark.parametrize(
    ("mode", "text", "expected"),
    [
        (0o644, "s3cr3t-file-value", "file mode 0644 is too open"),
        (0o620, "s3cr3t-file-value", "file mode 0620 is too open"),
        (0o600, "\n", "file is empty"),
        (0o600, None, "cannot open: No such file or directory"),
    ],
)
def test_file_reference_failures_name_the_reference_never_the_value(tmp_path: Path, mode: int, text: str | None, expected: str) -> None:
    path = _file(tmp_path, text, mode) if text is not None else tmp_path / "missing"
    with pytest.raises(SecretUnavailable) as info:
        resolve(SecretRef(from_file=str(path)), where="channels.pager.routing_key")
    message = str(info.value)
    assert message.startswith(f"channels.pager.routing_key: secret {{from_file: {path}}}: ")
    assert expected in message and "s3cr3t-file-value" not in message
    assert classify(info.value).category is Category.PERMANENT


def test_a_directory_is_not_a_secret_file(tmp_path: Path) -> None:
    with pytest.raises(SecretUnavailable, match="not a regular file"):
        resolve(SecretRef(from_file=str(tmp_path)))


def test_auth_headers_for_each_form(tmp_path: Path) -> None:
    password, token = secrets.token_urlsafe(12), secrets.token_hex(12)
    env = {"T": token}
    basic = TargetAuth.model_validate({"basic": {"username": "scan", "password": {"from_file": str(_file(tmp_path, password))}}})
    encoded = base64.b64encode(f"scan:{password}".encode()).decode()
    assert auth_headers(basic, env=env) == {"Authorization": f"Basic {encoded}"}
    assert encoded not in redact(f"sent Basic {encoded}"), "the derived Basic token is scrubbed too"
    assert auth_headers(TargetAuth.model_validate({"bearer": {"from_env": "T"}}), env=env) == {"Authorization": f"Bearer {token}"}
    header = TargetAuth.model_validate({"header": {"name": "X-Api-Key", "value": {"from_env": "T"}}})
    assert auth_headers(header, env=env) == {"X-Api-Key": token}
    assert auth_headers(None) == {}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"bearer": "inline-token-123"}, "an inline secret is refused"),
        ({"basic": {"username": "a:b", "password": {"from_env": "P"}}}, "cannot contain ':'"),
        ({"header": {"name": "Host", "value": {"from_env": "P"}}}, "set by the HTTP client"),
        ({"header": {"name": "bad header", "value": {"from_env": "P"}}}, "is not an HTTP header name"),
        ({"bearer": {"from_env": "P"}, "header": {"name": "X", "value": {"from_env": "P"}}}, "exactly one of basic, bearer or header"),
    ],
)
def test_bad_auth_is_refused(raw: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        TargetAuth.model_validate(raw)


def test_inline_url_credentials() -> None:
    found = inline_url_credentials("http://admin:pw1@127.0.0.1/x?page=2&api_key=k1&access_token=t1&KEY=k2&sort=asc")
    assert [what for what, _ in found] == ["userinfo", "userinfo", "query parameter 'api_key'",
                                           "query parameter 'access_token'", "query parameter 'KEY'"]
    # Ordinary parameters, even with a secret word as their value, are not credentials.
    assert inline_url_credentials("http://127.0.0.1:8080/app?page=2&sort_key=name&q=token&max_tokens=5") == []


# --- the spec -------------------------------------------------------------------------------
def _spec(targets: list[dict], options: dict | None = None) -> dict:
    return {
        "name": "refs",
        "scope": {"allow": ["127.0.0.1"]},
        "targets": targets,
        "stages": [{"id": "headers", "kind": "dast", "tool": "http_headers", "options": options or {}}],
    }


@pytest.mark.parametrize(
    ("targets", "options", "path", "reason"),
    [
        ([{"url": "http://admin:Pl4nted-pw@127.0.0.1/"}], None, "targets[0].url", "credentials in the URL (userinfo) are refused"),
        ([{"url": "http://127.0.0.1/?api_key=Pl4nted-pw"}], None, "targets[0].url", "(query parameter 'api_key') are refused"),
        ([{"url": "http://127.0.0.1/?token=Pl4nted-pw"}], None, "targets[0].url", "auth: {bearer: REF}"),
        ([{"url": "http://127.0.0.1/", "auth": {"bearer": "Pl4nted-pw"}}], None, "targets[0].auth.bearer", "an inline secret is refused"),
        ([{"url": "http://127.0.0.1/"}], {"api_token": "Pl4nted-pw"}, "stages[0].options.api_token", "{from_env: NAME}"),
        ([{"host": "127.0.0.1", "auth": {"bearer": {"from_env": "X"}}}, {"url": "http://127.0.0.1/"}], None, "targets[0]",
         "auth is only for url targets"),
    ],
)
def test_inline_credentials_are_refused_with_the_path_and_the_reference_form(
    targets: list[dict], options: dict | None, path: str, reason: str
) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec_data(_spec(targets, options))
    problems = [(p.path, p.reason) for p in info.value.problems]
    assert any(p == path and reason in r for p, r in problems), problems
    assert "Pl4nted-pw" not in str(info.value)


def test_outside_scope_message_does_not_echo_the_inline_password() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec_data(_spec([{"url": "http://admin:Pl4nted-pw@10.9.9.9/"}]))
    assert "outside scope.allow" in str(info.value) and "Pl4nted-pw" not in str(info.value)


def test_short_inline_values_are_masked_in_their_url_without_garbling_paths() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec_data(_spec([{"url": "http://10.1.1.1/?token=1"}, {"url": "http://u:ab@10.1.1.1/"}]))
    text = str(info.value)
    assert "'http://10.1.1.1/?token=[REDACTED]' is outside scope.allow" in text
    assert "'http://[REDACTED]@10.1.1.1/' is outside scope.allow" in text
    assert "targets[1].url" in text and ":ab@" not in text


def test_references_validate_and_only_the_reference_is_in_the_spec() -> None:
    spec = validate_spec_data(_spec([{"url": "http://127.0.0.1/", "auth": {"bearer": {"from_env": "SCAN_TOKEN"}}}]))
    assert spec.targets[0].auth is not None and spec.targets[0].auth.refs() == [SecretRef(from_env="SCAN_TOKEN")]
    assert "SCAN_TOKEN" in spec.model_dump_json()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_starter_refuses_inline_credentials_with_exit_2(tmp_path: Path, command: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec([{"url": "http://admin:Pl4nted-pw@127.0.0.1:8089/"}])))
    # `run` must refuse before it connects: no server is needed to say no.
    env = {**os.environ, "TEMPORAL_ADDRESS": "127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-m", "starter", command, str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "targets[0].url: credentials in the URL (userinfo) are refused" in out.stderr
    assert "{from_env: NAME}" in out.stderr and "Traceback" not in out.stderr
    assert "Pl4nted-pw" not in out.stdout + out.stderr


# --- credentials on the wire: the target's own origin only ----------------------------------
class _Recorder(HttpStandin):
    def __init__(self, redirect_to: str = "") -> None:
        self.redirect_to = redirect_to
        super().__init__()

    def answer(self, req: Received) -> Reply:
        if self.redirect_to and req.path == "/start":
            return Reply(302, None, {"Location": self.redirect_to})
        if self.redirect_to and req.path == "/again":
            return Reply(302, None, {"Location": "/final"})
        return Reply(200, "ok", {"X-Content-Type-Options": "nosniff"}, "text/plain")


async def test_credentials_go_to_the_target_origin_and_not_across_a_redirect() -> None:
    token = secrets.token_hex(16)
    other = _Recorder()
    first = _Recorder(redirect_to=f"{other.url}/landing")
    try:
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
            await check_headers(f"{first.url}/start", client=client, permits_url=lambda _: True,
                                auth_headers={"Authorization": f"Bearer {token}"})
            await check_headers(f"{first.url}/again", client=client, permits_url=lambda _: True,
                                auth_headers={"Authorization": f"Bearer {token}"})
    finally:
        first.close()
        other.close()
    seen_first = [(r.path, r.header("Authorization")) for r in first.received]
    assert seen_first == [("/start", f"Bearer {token}"), ("/again", f"Bearer {token}"), ("/final", f"Bearer {token}")]
    assert [(r.path, r.header("Authorization")) for r in other.received] == [("/landing", None)]


def test_check_headers_runs_without_credentials() -> None:
    server = _Recorder()
    try:
        async def go() -> None:
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
                await check_headers(f"{server.url}/", client=client, permits_url=lambda _: True)

        asyncio.run(go())
    finally:
        server.close()
    assert [r.header("Authorization") for r in server.received] == [None]


# --- an option that carries a secret: the NVD API key by reference -----------------------------
async def test_nvd_api_key_option_by_reference(client, worker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from secflow.http import reset_http_state
    from tests.enrich_standins import EpssStandin, KevStandin, NvdStandin
    from tests.helpers import final_status, make_spec, start
    from tests.test_enrich import ALL_CVES, seed_findings

    reset_http_state()
    monkeypatch.delenv("SECFLOW_NVD_API_KEY", raising=False)
    key = f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(2)}-{secrets.token_hex(2)}-{secrets.token_hex(6)}"
    key_file = _file(tmp_path, key + "\n")
    nvd, epss, kev = NvdStandin(api_key=key), EpssStandin(), KevStandin()
    for name, url in (("NVD", nvd.url), ("EPSS", epss.url), ("KEV", kev.feed_url)):
        monkeypatch.setenv(f"SECFLOW_{name}_URL", url)
    root = tmp_path / "app"
    root.mkdir()
    cves = ALL_CVES[:2]
    workflow_id = seed_findings(root, cves)
    stage = {"id": "enrich", "kind": "enrich", "tool": "cve-enrich", "options": {"api_key": {"from_file": str(key_file)}},
             "retry": {"max_attempts": 1}}
    spec = make_spec([{"path": str(root)}], [stage], scope={"allow": [str(root)]})
    try:
        handle = await start(client, spec, worker, workflow_id=workflow_id)
        status = await final_status(handle)
    finally:
        for server in (nvd, epss, kev):
            server.close()
    assert status.outcome == "completed", status.reason
    assert nvd.requests and all(r.headers.get("apiKey") == key for r in nvd.requests)
    history = await handle.fetch_history()
    raw = b"".join(e.SerializeToString() for e in history.events) + await decoded_bytes(client, history.events)
    assert key.encode() not in raw and str(key_file).encode() in raw, "the reference travels, not the key"

    with pytest.raises(SpecError) as info:
        make_spec([{"path": str(root)}], [{**stage, "options": {"api_key": key}}], scope={"allow": [str(root)]})
    assert [p.path for p in info.value.problems][-1] == "stages[0].options.api_key" and key not in str(info.value)


# --- a reference that does not resolve in the worker: permanent, parked, named -------------------
async def test_an_unresolvable_reference_fails_once_as_permanent_and_is_parked_by_name(
    client, worker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secflow.dead_letters import list_dead_letters
    from secflow.store import open_store
    from tests.helpers import final_status, make_spec, start

    monkeypatch.delenv("SECFLOW_TEST_NEVER_SET", raising=False)
    target = _Recorder()
    loose = _file(tmp_path, "Pl4nted-file-value", 0o644)
    try:
        spec = make_spec(
            [{"url": f"{target.url}/a", "auth": {"bearer": {"from_env": "SECFLOW_TEST_NEVER_SET"}}},
             {"url": f"{target.url}/b", "auth": {"header": {"name": "X-Api-Key", "value": {"from_file": str(loose)}}}}],
            [{"id": "headers", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 3, "initial_interval": "100ms"}}],
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "failed" and status.stages["headers"].state == "failed"
    assert target.received == [], "nothing was sent without its credential"
    parked = {d.target: d for d in list_dead_letters(open_store(), workflow_id=handle.id)}
    assert set(parked) == {f"{target.url}/a", f"{target.url}/b"}
    a, b = parked[f"{target.url}/a"], parked[f"{target.url}/b"]
    assert (a.category, a.attempts, b.category, b.attempts) == ("permanent", 1, "permanent", 1), "never retried"
    assert "targets[0].auth.bearer: secret {from_env: SECFLOW_TEST_NEVER_SET}: environment variable" in a.message
    assert f"targets[1].auth.header.value: secret {{from_file: {loose}}}: file mode 0644 is too open" in b.message
    assert "Pl4nted-file-value" not in a.message + b.message
