"""`python -m starter codec-server` (Temporal's remote codec protocol) as a real process.

The temporal CLI decodes a real encrypted history through it; the Web UI's CORS preflight
and the bearer token are checked on the wire.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from tests.devserver import DevServer
from tests.helpers import final_status, make_spec, start
from tests.servers import Reply, ScriptedServer

ROOT = Path(__file__).resolve().parent.parent
UI_ORIGIN = "http://localhost:8233"


class CodecServer:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "starter", "codec-server", "--port", "0", *args],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise AssertionError(f"codec server did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.url = line.split("listening on ", 1)[1].split()[0]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def codec_server() -> Iterator[CodecServer]:
    srv = CodecServer()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def token_server() -> Iterator[tuple[CodecServer, str]]:
    token = uuid.uuid4().hex
    srv = CodecServer(env={"SECFLOW_CODEC_TOKEN": token})
    yield srv, token
    srv.stop()


def http() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=10)


def payload_text(cli_json: str) -> str:
    """The payload data in `temporal ... --output json` (proto3 JSON: base64), as text."""
    texts: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "metadata" in node and isinstance(node.get("data"), str):
                texts.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(cli_json))
    return "\n".join(texts)


def plain_payloads(value: object) -> dict[str, object]:
    """What the UI sends to /encode: a json/plain payload, proto3 JSON (base64 bytes)."""
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return {"payloads": [{"metadata": {"encoding": b64(b"json/plain")}, "data": b64(json.dumps(value).encode())}]}


async def test_temporal_cli_decodes_a_real_encrypted_history(
    client: Client, worker: str, server: DevServer, codec_server: CodecServer, token_server: tuple[CodecServer, str]
) -> None:
    marker = f"mk{uuid.uuid4().hex[:12]}"
    target = ScriptedServer(lambda n, path: Reply(503, {}) if path.endswith("-down") else Reply(200, {}))
    try:
        spec = make_spec(
            [{"url": f"{target.url}{marker}/"}, {"url": f"{target.url}{marker}-down"}],
            [{"id": "headers", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 1}}],
        )
        handle = await start(client, spec, worker)
        await final_status(handle)
    finally:
        target.close()

    show = ["workflow", "show", "--workflow-id", handle.id, "--output", "json"]
    raw = server.cli(*show)
    assert handle.id in raw.stdout and marker not in payload_text(raw.stdout)  # stored encrypted

    decoded = server.cli(*show, "--codec-endpoint", codec_server.url)
    assert marker in payload_text(decoded.stdout)  # targets and results, decrypted for the person asking
    events = json.loads(decoded.stdout)["events"]
    failed = [e for e in events if "activityTaskFailedEventAttributes" in e]
    assert failed and marker in payload_text(json.dumps(failed))  # the failure message too (encoded attributes)

    tsrv, token = token_server
    # Without the token the CLI gets 401s (it retries them until its deadline) and shows nothing.
    refused = server.cli(*show, "--codec-endpoint", tsrv.url, "--command-timeout", "3s", check=False)
    assert refused.returncode != 0 and marker not in refused.stdout
    accepted = server.cli(*show, "--codec-endpoint", tsrv.url, "--codec-auth", f"Bearer {token}")
    assert marker in payload_text(accepted.stdout)


def test_encode_then_decode_round_trip_and_refusals(codec_server: CodecServer) -> None:
    with http() as c:
        enc = c.post(f"{codec_server.url}/encode", json=plain_payloads({"a": 1}), headers={"X-Namespace": "default"})
        assert enc.status_code == 200
        [payload] = enc.json()["payloads"]
        assert base64.b64decode(payload["metadata"]["encoding"]) == b"binary/encrypted"
        dec = c.post(f"{codec_server.url}/decode", json=enc.json(), headers={"X-Namespace": "default"})
        assert dec.json() == plain_payloads({"a": 1})
        # Plain payloads pass through decode unchanged (what tctl and the CLI sent).
        assert c.post(f"{codec_server.url}/decode", json=plain_payloads("x")).json() == plain_payloads("x")
        other = c.post(f"{codec_server.url}/decode", json=enc.json(), headers={"X-Namespace": "elsewhere"})
        assert other.status_code == 403
        # A templated endpoint (`--codec-endpoint http://host:port/{namespace}`) puts it in the path.
        assert c.post(f"{codec_server.url}/default/decode", json=enc.json()).json() == plain_payloads({"a": 1})
        assert c.post(f"{codec_server.url}/elsewhere/decode", json=enc.json()).status_code == 403
        bad = c.post(f"{codec_server.url}/decode", content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and "payloads" in bad.json()["error"]
        assert c.get(f"{codec_server.url}/decode").status_code == 405


def test_cors_preflight_admits_the_web_ui_origin_only(codec_server: CodecServer) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
    }
    with http() as c:
        ok = c.options(f"{codec_server.url}/decode", headers={"Origin": UI_ORIGIN, **preflight})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == UI_ORIGIN
        assert ok.headers["access-control-allow-credentials"] == "true"
        assert "x-namespace" in ok.headers["access-control-allow-headers"].lower()
        assert "POST" in ok.headers["access-control-allow-methods"]
        evil = c.options(f"{codec_server.url}/decode", headers={"Origin": "http://evil.example", **preflight})
        assert evil.status_code == 400 and "access-control-allow-origin" not in evil.headers
        # The actual request from the UI's origin carries the CORS answer too.
        post = c.post(f"{codec_server.url}/decode", json=plain_payloads(1), headers={"Origin": UI_ORIGIN})
        assert post.headers["access-control-allow-origin"] == UI_ORIGIN


def test_bearer_token_refused_and_accepted(token_server: tuple[CodecServer, str]) -> None:
    srv, token = token_server
    with http() as c:
        assert c.post(f"{srv.url}/decode", json=plain_payloads(1)).status_code == 401
        wrong = c.post(f"{srv.url}/decode", json=plain_payloads(1), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        right = c.post(f"{srv.url}/decode", json=plain_payloads(1), headers={"Authorization": f"Bearer {token}"})
        assert right.status_code == 200
        # A preflight carries no credentials; it is answered without the token.
        pre = c.options(
            f"{srv.url}/decode",
            headers={"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
        )
        assert pre.status_code == 200


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--host", "0.0.0.0"], {}, "SECFLOW_CODEC_TOKEN"),
        (["--cors-origin", "*"], {}, "--cors-origin"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], {}, "--tls-cert"),
        ([], {"SECFLOW_CODEC_KEYS_FILE": "/nonexistent/keys.json"}, "/nonexistent/keys.json"),
        ([], {"SECFLOW_CODEC": "off"}, "SECFLOW_CODEC=off"),
        (["--port", "70000"], {}, "--port"),
    ],
    ids=["public-without-token", "wildcard-origin", "missing-cert", "missing-keys", "codec-off", "bad-port"],
)
def test_bad_codec_server_arguments_exit_2(args: list[str], env: dict[str, str], needle: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "starter", "codec-server", "--port", "0", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out
    assert needle in out.stderr and "Traceback" not in out.stderr


def test_serves_https_with_a_certificate(tmp_path: Path) -> None:
    """A Web UI served over https may only call an https codec endpoint."""
    import datetime as dt
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "codec.pem", tmp_path / "codec.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    srv = CodecServer("--tls-cert", str(cert_path), "--tls-key", str(key_path))
    try:
        assert srv.url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert_path))
        with httpx.Client(trust_env=False, timeout=10, verify=trust) as c:
            assert c.post(f"{srv.url}/decode", json=plain_payloads(1)).json() == plain_payloads(1)
    finally:
        srv.stop()
