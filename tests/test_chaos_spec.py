"""The spec's `chaos:` section: validated like SECFLOW_CHAOS_CONFIG, injected per assessment.

Real assessments (in-process worker, real dev server) against the OSV stand-in: with
SECFLOW_CHAOS=1 the spec's "503 for the first 2 OSV calls" costs each assessment two
failed attempts and then recovers; without SECFLOW_CHAOS the same spec injects nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from secflow.http import reset_http_state
from secflow.spec import SpecError, validate_spec_data
from secflow.store import open_store
from tests.helpers import final_status, make_spec, start
from tests.osv_standin import OsvStandin

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
CHAOS = {"osv": [{"fault": "status", "status": 503, "first_n": 2}]}


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    (root / "requirements.txt").write_text("Jinja2==2.10\nurllib3==1.24.1\n")
    return root


@pytest.fixture
def osv(monkeypatch: pytest.MonkeyPatch) -> Iterator[OsvStandin]:
    # A fresh osv breaker/limiter: other tests' OSV failures must not count towards ours.
    reset_http_state()
    server = OsvStandin()
    monkeypatch.setenv("SECFLOW_OSV_URL", server.url)
    monkeypatch.delenv("SECFLOW_CHAOS_CONFIG", raising=False)
    # One try per request inside the transport: each injected 503 fails an attempt.
    monkeypatch.setenv("SECFLOW_HTTP_OSV_RETRIES", "1")
    yield server
    server.close()
    reset_http_state()


def chaos_spec(root: Path, chaos: dict | None = CHAOS):
    stage = {"id": "deps", "kind": "sca", "tool": "sca", "retry": {"initial_interval": "100ms", "max_attempts": 5}}
    extra = {"chaos": chaos} if chaos is not None else {}
    return make_spec([{"path": str(root)}], [stage], scope={"allow": [str(root)]}, **extra)


async def test_spec_chaos_503_first_2_calls_recovers_per_assessment(
    client: Client, worker: str, app: Path, osv: OsvStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECFLOW_CHAOS", "1")
    for _ in range(2):  # each assessment gets its own "first 2 calls"
        asked = osv.count("POST", "/v1/querybatch")
        handle = await start(client, chaos_spec(app), worker)
        status = await final_status(handle)
        assert status.outcome == "completed", status.reason
        # no retries inside the transport here: each injected 503 failed one attempt
        assert status.stages["deps"].attempts == 3
        # injected answers never reached the stand-in; the third attempt did, once
        assert osv.count("POST", "/v1/querybatch") == asked + 1
        errors = open_store().list_errors(handle.id)
        assert [(e.category, e.outcome) for e in errors] == [("transient", "recovered")] * 2
        assert all("503" in e.message for e in errors), [e.message for e in errors]
        assert status.stages["deps"].findings > 0


async def test_spec_chaos_is_ignored_without_secflow_chaos(
    client: Client, worker: str, app: Path, osv: OsvStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SECFLOW_CHAOS", raising=False)
    handle = await start(client, chaos_spec(app), worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    assert status.stages["deps"].attempts == 1
    assert osv.count("POST", "/v1/querybatch") == 1
    assert open_store().list_errors(handle.id) == []


async def test_spec_chaos_replaces_the_env_faults_for_its_dependencies(
    client: Client, worker: str, app: Path, osv: OsvStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The env would fail every OSV call; the spec's own list for osv (one latency fault) wins.
    monkeypatch.setenv("SECFLOW_CHAOS", "1")
    monkeypatch.setenv("SECFLOW_CHAOS_CONFIG", json.dumps({"osv": [{"fault": "status", "status": 500}]}))
    handle = await start(client, chaos_spec(app, {"osv": [{"fault": "latency", "seconds": 0.05}]}), worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    assert status.stages["deps"].attempts == 1


@pytest.mark.parametrize(
    ("chaos", "path"),
    [
        ({"nvd": [{"fault": "status", "status": 999}]}, "chaos.nvd[0].status"),
        ({"nvd": [{"fault": "latency"}]}, "chaos.nvd[0].seconds"),
        ({"osv": [{"fault": "status", "status": 503, "first_n": 0}]}, "chaos.osv[0].first_n"),
        ({"osv": [{"fault": "explode"}]}, "chaos.osv[0]"),
        ({"osv": [{"fault": "reset", "typo": 1}]}, "chaos.osv[0].typo"),
        ({"osv": {"fault": "reset"}}, "chaos.osv"),
    ],
)
def test_bad_chaos_section_names_the_field(tmp_path: Path, chaos: dict, path: str) -> None:
    data = {"name": "t", "scope": {"allow": [str(tmp_path)]}, "targets": [{"path": str(tmp_path)}],
            "stages": [{"id": "deps", "kind": "sca"}], "chaos": chaos}
    with pytest.raises(SpecError) as err:
        validate_spec_data(json.loads(json.dumps(data)))
    assert path in [p.path for p in err.value.problems], err.value.problems


async def test_validate_exits_2_naming_the_chaos_field(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: t\nscope: {allow: [./]}\ntargets: [{path: ./}]\nstages: [{id: deps, kind: sca}]\n"
        "chaos:\n  osv:\n    - {fault: status, status: 503, first_n: 2}\n    - {fault: status, status: 999}\n"
    )
    result = await asyncio.to_thread(
        subprocess.run, [PYTHON, "-m", "starter", "validate", str(spec)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "chaos.osv[1].status" in result.stderr and "599" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text(spec.read_text().replace("status: 999", "status: 502"))
    result = await asyncio.to_thread(
        subprocess.run, [PYTHON, "-m", "starter", "validate", str(good)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
