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


# --- hostile input: every case is exit 2 with a field path and a reason, never a traceback


def _write_demo_with(tmp_path: Path, name: str, mutate) -> Path:
    data = demo_data()
    mutate(data)
    out = tmp_path / name
    out.write_text(yaml.safe_dump(data))
    return out


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILE_FILES = {
    "duration-1e30": (lambda tmp: _write_demo_with(tmp, "s.yaml", lambda d: d["stages"][1].update(timeout=1e30)),
                      "stages[1].timeout: duration 1e+30 is too long: at most 365d"),
    "duration-inf": (lambda tmp: _write_demo_with(tmp, "s.yaml", lambda d: d["stages"][1].update(timeout=float("inf"))),
                     "stages[1].timeout: duration inf is too long"),
    "duration-nan": (lambda tmp: _write_demo_with(tmp, "s.yaml", lambda d: d["stages"][1].update(wait_timeout=float("nan"))),
                     "stages[1].wait_timeout: duration nan is not a number"),
    "duration-negative": (lambda tmp: _write_demo_with(tmp, "s.yaml", lambda d: d["stages"][1]["retry"].update(max_interval=-5)),
                          "stages[1].retry.max_interval: duration -5 is negative"),
    "duration-huge-int": (lambda tmp: _write_demo_with(tmp, "s.yaml", lambda d: d["stages"][1].update(timeout=10**400)),
                          "stages[1].timeout: duration"),
    "duration-huge-text": (lambda tmp: _write_demo_with(tmp, "s.yaml", lambda d: d["stages"][1].update(timeout="9" * 30 + "d")),
                           "is too long: at most 365d"),
    "deep-yaml": (lambda tmp: _text(tmp, "s.yaml", "name: demo\nchaos: " + _nested(5000) + "\n"),
                  "nested more than 32 levels deep at line 2"),
    "deep-yaml-block": (lambda tmp: _text(tmp, "s.yaml", "name: demo\nchaos:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 3000))),
                        "nested more than 32 levels deep at line"),
    "deep-json": (lambda tmp: _text(tmp, "s.json", '{"name": "demo", "chaos": ' + _nested(100_000) + "}"),
                  "nested more than 32 levels deep"),
    "deep-json-shallow-for-python": (lambda tmp: _text(tmp, "s.json", '{"name": "demo", "chaos": {"x": ' + _nested(40) + "}}"),
                                     "chaos.x" + "[0]" * 31 + ": nested more than 32 levels deep"),
    "not-utf8": (lambda tmp: _bytes(tmp, "s.yaml", DEMO.read_text().replace("Discovery", "D\u00e9couverte").encode("latin-1")),
                 "not UTF-8: byte 0xe9 at line 4"),
    "lone-surrogate": (lambda tmp: _text(tmp, "s.yaml", DEMO.read_text().replace(
        "description: Discovery, web checks, TLS, SAST and SCA against local targets, then reports.",
        'description: "\\ud800 evil"')),
                       "description: contains a lone surrogate (U+D800)"),
    "duplicate-top-level-scope": (lambda tmp: _text(tmp, "s.yaml", DEMO.read_text() + "scope:\n  allow: ['0.0.0.0/0']\n"),
                                  "duplicate key 'scope' at line"),
    "duplicate-nested-key": (lambda tmp: _text(tmp, "s.yaml", DEMO.read_text().replace("    timeout: 10m\n", "    timeout: 10m\n    timeout: 1s\n")),
                             "duplicate key 'timeout' at line"),
    "duplicate-json-key": (lambda tmp: _text(tmp, "s.json", '{"name": "a",\n "scope": {"allow": ["127.0.0.1"]},\n "scope": {"allow": ["0.0.0.0/0"]}}'),
                           "duplicate key 'scope' at line 3"),
    "cycle-3000": (lambda tmp: _write_demo_with(tmp, "s.yaml", lambda d: d.update(stages=[
        {"id": f"s{i}", "kind": "report", "depends_on": [f"s{(i + 1) % 3000}"]} for i in range(3000)])),
                   "dependency cycle: s0 -> s1"),
    "spec-50MB": (lambda tmp: _text(tmp, "s.yaml", DEMO.read_text() + "# " + "x" * (50 * 1024 * 1024) + "\n"),
                  "s.yaml is 52,430,"),
    "long-string": (lambda tmp: _write_demo_with(tmp, "s.yaml", lambda d: d.update(description="x" * 9000)),
                    "description: 9,000 characters; at most 8,192"),
    "long-target": (lambda tmp: _write_demo_with(tmp, "s.yaml", lambda d: d["targets"].append({"url": "http://127.0.0.1/" + "a" * 9000})),
                    "targets[4].url: 9,017 characters; at most 8,192"),
    "stages-too-large": (lambda tmp: _write_demo_with(tmp, "s.yaml", lambda d: d["stages"][5].update(options={
        "exclude_files": [f"^x{i}" + "a" * 8000 for i in range(80)]})),
                         "bytes of stages (as JSON); at most 524,288: they travel in the workflow's input"),
    "unknown-field": (lambda tmp: _write_demo_with(tmp, "s.yaml", lambda d: d["stages"][1].update(timeuot="5m")),
                      "stages[1].timeuot: unknown field; did you mean 'timeout'?"),
}


def _text(tmp: Path, name: str, text: str) -> Path:
    out = tmp / name
    out.write_text(text, encoding="utf-8", errors="surrogatepass")
    return out


def _bytes(tmp: Path, name: str, raw: bytes) -> Path:
    out = tmp / name
    out.write_bytes(raw)
    return out


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_spec_is_refused_with_a_field_path(case: str, tmp_path: Path) -> None:
    make, expected = HOSTILE_FILES[case]
    spec_file = make(tmp_path)
    out = run_cli("validate", str(spec_file))
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert expected in out.stderr, out.stderr[-3000:]


def test_target_and_stage_counts_are_limited() -> None:
    from secflow.spec_input import MAX_STAGES, MAX_TARGETS

    data = demo_data()
    data["targets"] = [{"host": "127.0.0.1"}] * (MAX_TARGETS + 1)
    data["stages"] = [{"id": f"r{i}", "kind": "report"} for i in range(MAX_STAGES + 1)]
    found = problems_of(data)
    assert f"targets: {MAX_TARGETS + 1:,} targets; at most {MAX_TARGETS:,} per assessment (split the scope)" in found
    assert f"stages: {MAX_STAGES + 1:,} stages; at most {MAX_STAGES}" in found


def test_yaml_aliases_cannot_multiply_a_small_file(tmp_path: Path) -> None:
    """A billion-laughs document is small on disk and huge once aliases are expanded."""
    lines = ['a0: ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    spec = tmp_path / "laughs.yaml"
    spec.write_text("\n".join(lines[:1]).replace("a0:", "name: demo\nchaos:\n  a0: &a0") + "\n"
                    + "\n".join(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)) + "\n")
    out = run_cli("validate", str(spec))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "more than 1,000,000 values (aliases expanding?)" in out.stderr


def test_unexpected_exception_is_one_line_and_a_log_entry(tmp_path: Path) -> None:
    """Not bad input (that has its own messages): an environment nothing anticipated. A data
    directory that is a file used to end `findings` in a FileExistsError traceback."""
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("")
    out = run_cli("findings", "some-id", env={"SECFLOW_DATA_DIR": str(not_a_dir), "HOME": str(tmp_path)})
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unexpected FileExistsError"), out.stderr
    log = tmp_path / ".cache" / "secflow" / "starter.log"
    assert str(log) in lines[0]
    assert "Traceback" in log.read_text() and oct(log.stat().st_mode & 0o777) == "0o600"


def test_run_with_a_50mb_spec_starts_nothing(tmp_path: Path, server) -> None:
    """Before: it validated, then the start failed with a raw gRPC message-size error."""
    big = tmp_path / "big.yaml"
    big.write_text(DEMO.read_text().replace("name: demo", "name: never-started-big") + "# " + "x" * (50 * 1024 * 1024) + "\n")
    out = run_cli("run", str(big), "--id", "never-started-big-1")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "a spec may have at most 8,388,608" in out.stderr
    listed = server.cli("workflow", "list", "--query", "WorkflowId='never-started-big-1'", "-o", "json")
    assert json.loads(listed.stdout or "[]") == [], listed.stdout
