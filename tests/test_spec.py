"""Spec validation: every problem, with its field path and reason; nothing starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from secflow.retries import Backoff
from secflow.spec import SpecError, load_spec, validate_spec_data

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.yaml"


def demo_data() -> dict:
    return yaml.safe_load(DEMO.read_text())


def problems_of(data: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate_spec_data(data)
    return [str(p) for p in info.value.problems]


def test_demo_spec_is_valid() -> None:
    spec = load_spec(DEMO)
    assert [s.id for s in spec.stages] == ["ports", "headers", "tls", "bandit", "semgrep", "secrets", "sca", "report"]
    headers = spec.stage("headers")
    assert headers.effective_timeout == timedelta(minutes=10)
    plan = headers.retry_plan()
    assert plan.max_attempts == 3 and plan.backoff is Backoff.EXPONENTIAL


def test_every_problem_is_reported_with_its_path() -> None:
    data = demo_data()
    data["targets"].append({"host": "10.1.2.3"})
    data["stages"][0]["kind"] = "bogus"
    data["stages"][1]["timeout"] = "ten minutes"
    data["stages"][1]["colour"] = "red"
    data["stages"][1]["depends_on"] = ["nope"]
    data["stages"][2]["tool"] = "nmapp"
    found = problems_of(data)
    joined = "\n".join(found)
    assert "stages[0].kind" in joined
    assert "stages[1].timeout: unparsable duration 'ten minutes'" in joined
    assert "stages[1].colour: unknown field" in joined
    assert "stages[1].depends_on[0]: no stage has id 'nope'" in joined
    assert "stages[2].tool: unknown tool 'nmapp'" in joined
    assert "targets[4].host: '10.1.2.3' is outside scope.allow" in joined


def test_cycle_is_named() -> None:
    data = demo_data()
    data["stages"][0]["depends_on"] = ["headers"]
    found = problems_of(data)
    assert any("dependency cycle: " in p and "ports" in p and "headers" in p for p in found)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["stages"][0]["options"].update(ports="70000"), "stages[0].options.ports"),
        (lambda d: d["stages"][0]["options"].update(speed=3), "stages[0].options.speed: unknown field"),
        (lambda d: d["stages"][1].update(on_failure="fallback"), "stages[1].fallback_tool: on_failure: fallback needs a fallback_tool"),
        (lambda d: d["stages"][1].update(retry={"max_attempts": 0}), "stages[1].retry.max_attempts"),
        (lambda d: d["stages"][1].update(on_wait_timeout="approve"), "stages[1].on_wait_timeout"),
        (lambda d: d["stages"].append(dict(d["stages"][0])), "duplicate stage id 'ports'"),
        (lambda d: d["targets"].append({"url": "http://evil.example/"}), "outside scope.allow"),
        (lambda d: d["targets"].append({"host": "127.0.0.1", "url": "http://127.0.0.1/"}), "exactly one of host, url or path"),
        (lambda d: d["scope"].update(allow=["10.0.0.0/33"]), "scope.allow[0]"),
        (lambda d: d["stages"][1].update(tool="portscan"), "does not run in a 'dast' stage"),
        (lambda d: d["stages"][1].update(options={"tolerated_failure_percent": 150}), "tolerated_failure_percent"),
        (lambda d: d.pop("stages"), "stages: Field required"),
    ],
)
def test_single_problems(mutate, expected: str) -> None:
    data = demo_data()
    mutate(data)
    assert any(expected in p for p in problems_of(data)), problems_of(data)


def test_url_prefix_scope_is_parsed_not_string_matched() -> None:
    data = demo_data()
    data["scope"]["allow"] = ["http://127.0.0.1:8089/"]
    data["targets"] = [{"url": "http://127.0.0.1:8089.evil.example/"}]
    data["stages"] = [{"id": "headers", "kind": "dast", "tool": "http_headers"}]
    assert any("outside scope.allow" in p for p in problems_of(data))


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "starter", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_validate_cli_exit_codes(tmp_path: Path) -> None:
    ok = run_cli("validate", str(DEMO))
    assert ok.returncode == 0 and "valid" in ok.stdout
    data = demo_data()
    data["stages"][0]["depends_on"] = ["ghost"]
    data["stages"][1]["kind"] = "dastt"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    out = run_cli("validate", str(bad))
    assert out.returncode == 2
    assert "stages[0].depends_on[0]: no stage has id 'ghost'" in out.stderr
    assert "stages[1].kind" in out.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    out = run_cli("validate", str(broken))
    assert out.returncode == 2 and "invalid YAML at line" in out.stderr
    missing = run_cli("validate", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_run_with_invalid_spec_starts_nothing(tmp_path: Path, server) -> None:
    data = demo_data()
    data["name"] = "never-started"
    data["targets"].append({"host": "192.0.2.1"})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    out = run_cli("run", str(bad), "--id", "never-started-1")
    assert out.returncode == 2
    assert "outside scope.allow" in out.stderr
    listed = server.cli("workflow", "list", "--query", "WorkflowId='never-started-1'", "-o", "json")
    assert json.loads(listed.stdout or "[]") == [], listed.stdout


def test_bad_cli_arguments_exit_2() -> None:
    out = run_cli("status", "bad/id")
    assert out.returncode == 2 and "not a valid assessment id" in out.stderr
    out = run_cli("approve", "some-id")  # missing stage
    assert out.returncode == 2
    out = run_cli("status", "x", env={"SECFLOW_MAX_CONCURRENT_ACTIVITIES": "lots"})
    assert out.returncode == 2 and "SECFLOW_MAX_CONCURRENT_ACTIVITIES" in out.stderr


def test_worker_refuses_bad_configuration() -> None:
    out = subprocess.run([sys.executable, "worker.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SECFLOW_SHUTDOWN_GRACE": "soon"})
    assert out.returncode == 2
    assert "SECFLOW_SHUTDOWN_GRACE" in out.stderr and "unparsable duration" in out.stderr


def test_relative_paths_are_resolved_against_the_spec_file(tmp_path: Path) -> None:
    repo = tmp_path / "specs" / "repo"
    repo.mkdir(parents=True)
    spec_file = tmp_path / "specs" / "s.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "paths", "scope": {"allow": ["./repo/"]}, "targets": [{"path": "repo"}],
        "stages": [{"id": "r", "kind": "report"}],
    }))
    spec = load_spec(spec_file)
    assert spec.targets[0].path == str(repo)
    assert spec.scope.allow == [str(repo)]
    outside = tmp_path / "specs" / "o.yaml"
    outside.write_text(yaml.safe_dump({
        "name": "paths", "scope": {"allow": ["./repo/"]}, "targets": [{"path": "../elsewhere"}],
        "stages": [{"id": "r", "kind": "report"}],
    }))
    with pytest.raises(SpecError) as info:
        load_spec(outside)
    assert "outside scope.allow" in str(info.value)
