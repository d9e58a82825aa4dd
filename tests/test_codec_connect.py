"""Connection security to Temporal through temporalio.envconfig, and private file modes.

The connection settings (profile file, TEMPORAL_API_KEY, TEMPORAL_TLS_*, gRPC metadata) are
read once by load_settings and passed to every Client.connect; a profile pointing at the dev
server is used by a real starter process. A TLS dev server is not available here, so TLS and
mTLS are checked as the connect configuration built from the environment.

File modes: after a real assessment run by a `python worker.py` process and `python -m
starter run --wait`, everything in the data directory is 0700 (directories) or 0600 (files).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from temporalio.service import TLSConfig

from secflow.settings import SettingsError, load_settings
from secflow.temporal_client import connect
from tests.devserver import DevServer
from tests.servers import Reply, ScriptedServer, closed_port

ROOT = Path(__file__).resolve().parent.parent
# Variables that would otherwise override a profile under test.
_TEMPORAL_ENV = [k for k in os.environ if k.startswith("TEMPORAL_")]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _TEMPORAL_ENV}
    env.pop("TEMPORAL_ADDRESS", None)
    return {**env, **extra}


def pem_pair(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_mtls_and_api_key_from_env_reach_the_connect_config(tmp_path: Path) -> None:
    ca, _ = pem_pair(tmp_path, "ca")
    cert, key = pem_pair(tmp_path, "client")
    settings = load_settings(
        base_env(
            TEMPORAL_ADDRESS="temporal.example.internal:7233",
            TEMPORAL_NAMESPACE="secflow-prod",
            TEMPORAL_API_KEY="api-key-123",
            TEMPORAL_TLS="true",
            TEMPORAL_TLS_SERVER_NAME="temporal.example.internal",
            TEMPORAL_TLS_SERVER_CA_CERT_PATH=str(ca),
            TEMPORAL_TLS_CLIENT_CERT_PATH=str(cert),
            TEMPORAL_TLS_CLIENT_KEY_PATH=str(key),
            TEMPORAL_GRPC_META_X_TEAM="appsec",
        )
    )
    assert settings.temporal_address == "temporal.example.internal:7233"
    assert settings.namespace == "secflow-prod"
    conf = settings.temporal_connect
    assert conf["api_key"] == "api-key-123"
    tls = conf["tls"]
    assert isinstance(tls, TLSConfig)
    assert tls.domain == "temporal.example.internal"
    assert tls.server_root_ca_cert == ca.read_bytes()
    assert tls.client_cert == cert.read_bytes() and tls.client_private_key == key.read_bytes()
    assert conf["rpc_metadata"] == {"x-team": "appsec"}
    assert "api-key-123" not in repr(settings)  # secrets stay out of logs and tracebacks

    # An API key alone turns TLS on (Temporal Cloud); TEMPORAL_TLS=false turns it off again.
    assert load_settings(base_env(TEMPORAL_API_KEY="k")).temporal_connect["tls"] is True
    assert load_settings(base_env(TEMPORAL_API_KEY="k", TEMPORAL_TLS="false")).temporal_connect["tls"] is False


def test_profile_file_is_read_and_env_overrides_it(tmp_path: Path) -> None:
    ca, _ = pem_pair(tmp_path, "ca")
    config = tmp_path / "temporal.toml"
    config.write_text(
        f'[profile.prod]\naddress = "prod.example:7233"\nnamespace = "assess"\napi_key = "from-file"\n'
        f'[profile.prod.tls]\nserver_name = "prod.example"\nserver_ca_cert_path = "{ca}"\n'
    )
    env = base_env(TEMPORAL_CONFIG_FILE=str(config), TEMPORAL_PROFILE="prod")
    settings = load_settings(env)
    assert (settings.temporal_address, settings.namespace) == ("prod.example:7233", "assess")
    assert settings.temporal_connect["api_key"] == "from-file"
    assert settings.temporal_connect["tls"].server_root_ca_cert == ca.read_bytes()
    assert load_settings({**env, "TEMPORAL_NAMESPACE": "other"}).namespace == "other"
    # Without any configuration: the defaults of old.
    plain = load_settings(base_env(TEMPORAL_CONFIG_FILE=str(tmp_path / "none.toml")) | {"TEMPORAL_CONFIG_FILE": ""})
    assert (plain.temporal_address, plain.namespace, dict(plain.temporal_connect)) == ("localhost:7233", "default", {})


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"TEMPORAL_CONFIG_FILE": "/nonexistent/temporal.toml"}, "TEMPORAL_CONFIG_FILE: /nonexistent/temporal.toml"),
        ({"TEMPORAL_TLS_CLIENT_CERT_PATH": "/nonexistent/client.pem"}, "/nonexistent/client.pem"),
        ({"TEMPORAL_PROFILE": "nope", "TEMPORAL_CONFIG_FILE": "@toml"}, "Profile 'nope' not found"),
    ],
    ids=["missing-config-file", "missing-cert", "unknown-profile"],
)
def test_bad_connection_configuration_exits_2_naming_it(tmp_path: Path, extra: dict[str, str], needle: str) -> None:
    if extra.get("TEMPORAL_CONFIG_FILE") == "@toml":
        (tmp_path / "t.toml").write_text('[profile.default]\naddress = "x:1"\n')
        extra = {**extra, "TEMPORAL_CONFIG_FILE": str(tmp_path / "t.toml")}
    with pytest.raises(SettingsError, match="nope|nonexistent"):
        load_settings(base_env(**extra))
    for argv in ([sys.executable, "-m", "starter", "status", "x"], [sys.executable, "worker.py"]):
        out = subprocess.run(argv, cwd=ROOT, env=base_env(**extra), capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out


async def test_a_profile_pointing_at_the_dev_server_connects(server: DevServer, tmp_path: Path) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text(
        f'[profile.local]\naddress = "{server.address}"\nnamespace = "default"\napi_key = "sent-as-bearer"\n'
        "[profile.local.tls]\ndisabled = true\n"
        f'[profile.elsewhere]\naddress = "127.0.0.1:{closed_port()}"\n'
    )
    env = base_env(TEMPORAL_CONFIG_FILE=str(config), TEMPORAL_PROFILE="local")
    client = await connect(load_settings(env))
    assert (await client.count_workflows()).count >= 0
    # The starter, as a process, with only the profile to go on: it reaches the server
    # (which answers "not found") rather than failing to connect.
    missing = f"no-such-{uuid.uuid4().hex[:6]}"
    out = subprocess.run([sys.executable, "-m", "starter", "status", missing], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and missing in out.stderr and "cannot reach" not in out.stderr, out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "starter", "status", missing], cwd=ROOT, env={**env, "TEMPORAL_PROFILE": "elsewhere"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and "cannot reach Temporal at 127.0.0.1:" in out.stderr, out.stderr


def _loose(root: Path) -> list[str]:
    loose = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            continue
        want = 0o700 if path.is_dir() else 0o600
        if mode & 0o077 or (path.is_dir() and mode != want):
            loose.append(f"{oct(mode)} {path.relative_to(root.parent)}")
    return loose


@pytest.mark.slow
def test_data_directory_is_private_after_a_real_assessment(server: DevServer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # as an older SecFlow left it: tightened on first use
    data.chmod(0o755)
    queue = f"modes-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SECFLOW_DATA_DIR": str(data), "SECFLOW_TASK_QUEUE": queue, "TEMPORAL_ADDRESS": server.address}
    env.pop("SECFLOW_CODEC_KEYS_FILE", None)
    target = ScriptedServer([Reply(200, {})])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "name": "modes", "scope": {"allow": ["127.0.0.1"]}, "targets": [{"url": target.url}],
        "stages": [{"id": "headers", "kind": "dast", "tool": "http_headers"}, {"id": "report", "kind": "report", "depends_on": ["headers"]}],
    }))  # fmt: skip
    log = (tmp_path / "worker.log").open("ab")
    worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "starter", "run", str(spec), "--wait"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
        )
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        target.close()
    assert run.returncode in (0, 3), run.stderr
    names = {p.name for p in data.rglob("*")}
    assert {"secflow.db", "codec-keys.json", "workspaces"} <= names, names
    assert _loose(data) == []
