"""The alert routing file: the README's example is valid, defaults are the issue's table,
every kind of mistake is reported with its field path, and `python worker.py` refuses to
start (and never polls) with a bad file.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from activities.alerts import plan_alerts
from secflow.alerting.config import AlertConfigError, load_alerts_config, parse_alerts_config, plan_for
from secflow.incidents import PlanRequest, Severity

ROOT = Path(__file__).resolve().parent.parent
README_ENV = {
    "SECFLOW_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/abcdef",
    "SECFLOW_PD_ROUTING_KEY": "0123456789abcdef0123456789abcdef",
    "SECFLOW_WEBHOOK_SECRET": "whsec",
    "SECFLOW_SMTP_PASSWORD": "pw",
    "SECFLOW_JIRA_TOKEN": "tok",
}


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Routing file example", 1)[1]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def problems_of(doc: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(AlertConfigError) as info:
        parse_alerts_config(doc, env=env or {})
    return info.value.problems


def test_the_readme_example_is_valid_and_means_what_it_says(tmp_path: Path) -> None:
    data = yaml.safe_load(readme_example())
    ca = tmp_path / "ca.pem"
    ca.write_text("placeholder")
    data["channels"]["leads-mail"]["ca_file"] = str(ca)  # the example's path may not exist here
    config = parse_alerts_config(data, env=README_ENV)
    assert sorted(config.channels) == ["leads-mail", "oncall-pd", "sec-jira", "security-hook", "team-slack"]
    p1 = plan_for(config, Severity.P1)
    assert (p1.ack_within, p1.resolve_within) == (900.0, 3600.0)
    assert p1.tiers == [["team-slack", "oncall-pd", "security-hook"], ["leads-mail", "sec-jira"]]
    assert plan_for(config, Severity.P3).resolve_within is None
    p4 = plan_for(config, Severity.P4)
    assert p4.summary_only and p4.summary_every == 86400.0 and p4.tiers == [["leads-mail"]]
    assert config.channels["team-slack"].cooldown.total_seconds() == 600
    assert config.channels["sec-jira"].cooldown.total_seconds() == 0


def test_no_config_means_no_channels_and_the_default_table() -> None:
    config = load_alerts_config({})
    assert config.channels == {}
    plans = {s: plan_for(config, s) for s in Severity}
    assert (plans[Severity.P1].ack_within, plans[Severity.P1].resolve_within) == (900.0, 3600.0)
    assert (plans[Severity.P2].ack_within, plans[Severity.P2].resolve_within) == (3600.0, 14400.0)
    assert (plans[Severity.P3].ack_within, plans[Severity.P3].resolve_within) == (14400.0, None)
    assert plans[Severity.P4].summary_only and plans[Severity.P4].summary_every == 86400.0
    assert all(p.tiers == [] for p in plans.values())


async def test_plan_alerts_reads_the_file_and_fills_in_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump({
        "channels": {"s": {"type": "slack", "url": "https://hooks.example.com/x"}},
        "routing": {"P2": {"tiers": [["s"]], "ack_within": "30m"}},
    }))
    monkeypatch.setenv("SECFLOW_ALERTS_CONFIG", str(path))
    plan = await plan_alerts(PlanRequest(severity=Severity.P2))
    assert plan.tiers == [["s"]] and plan.ack_within == 1800.0
    assert plan.resolve_within == 14400.0  # not in the file: the table's value
    assert (await plan_alerts(PlanRequest(severity=Severity.P1))).tiers == []


@pytest.mark.parametrize(
    ("doc", "env", "expected"),
    [
        (  # routing names a channel that does not exist
            {"channels": {"a": {"type": "slack", "url": "https://h.example/x"}}, "routing": {"P1": {"tiers": [["a", "b"]]}}},
            {},
            "routing.P1.tiers.0.1: unknown channel 'b' (defined: a)",
        ),
        (  # a secret's variable is not set
            {"channels": {"pd": {"type": "pagerduty", "routing_key_env": "NOPE_PD_KEY"}}},
            {},
            "channels.pd.routing_key_env: environment variable NOPE_PD_KEY is not set",
        ),
        (  # not an http(s) URL
            {"channels": {"h": {"type": "webhook", "url": "ftp://h.example/x", "secret_env": "S"}}},
            {"S": "x"},
            "channels.h.url: not an http(s) URL",
        ),
        (  # credentials inline
            {"channels": {"j": {"type": "jira", "base_url": "https://bot:hunter2@jira.example", "project": "SEC", "auth": "bearer", "token_env": "T"}}},
            {"T": "x"},
            "channels.j.base_url: must not contain credentials",
        ),
        (  # a URL in the environment is checked too
            {"channels": {"s": {"type": "slack", "url_env": "SLACK"}}},
            {"SLACK": "not a url"},
            "channels.s.url_env: SLACK: not an http(s) URL",
        ),
        (
            {"channels": {"s": {"type": "slack", "url": "https://h.example/x", "colour": "red"}}},
            {},
            "channels.s.colour: unknown field",
        ),
        (
            {"channels": {"s": {"type": "pigeon"}}},
            {},
            "channels.s: unknown channel type (use one of: slack, webhook, pagerduty, email, jira)",
        ),
        (
            {"channels": {"s": {"type": "slack", "url": "https://h.example/x", "cooldown": "soon"}}},
            {},
            "channels.s.cooldown: unparsable duration 'soon'",
        ),
        (
            {"channels": {"s": {"type": "slack", "url": "https://h.example/x", "max_per_hour": 0}}},
            {},
            "channels.s.max_per_hour: Input should be greater than or equal to 1",
        ),
        (
            {"routing": {"P1": {"ack_within": "-5m"}}},
            {},
            "routing.P1.ack_within: unparsable duration '-5m'",
        ),
        (
            {"routing": {"P5": {}}},
            {},
            "routing.P5: unknown field",
        ),
        (
            {"channels": {"j": {"type": "jira", "base_url": "https://jira.example", "project": "SEC", "token_env": "T"}}},
            {"T": "x"},
            "channels.j.email: required for `auth: basic`",
        ),
        (
            {"channels": {"m": {"type": "email", "host": "smtp.example", "starttls": False, "username": "u",
                                "password_env": "P", "from": "a@example.com", "to": ["b@example.com"]}}},
            {"P": "x"},
            "channels.m.starttls: AUTH is only sent over STARTTLS",
        ),
        (
            {"channels": {"m": {"type": "email", "host": "smtp.example", "from": "a@example.com", "to": ["not an address"]}}},
            {},
            "channels.m.to: not e-mail addresses",
        ),
        (
            {"channels": {"m": {"type": "email", "host": "smtp.example", "from": "a@example.com", "to": ["b@example.com"],
                                "ca_file": "/nonexistent/ca.pem"}}},
            {},
            "channels.m.ca_file: no such file",
        ),
        (
            {"channels": {"Bad Name": {"type": "slack", "url": "https://h.example/x"}}},
            {},
            "channels: channel names must match",
        ),
        (
            {"channels": {"s": {"type": "slack", "url": "https://h.example/x", "url_env": "X"}}},
            {"X": "https://h.example/y"},
            "channels.s: give exactly one of `url` or `url_env`",
        ),
    ],
)
def test_errors_name_the_field_and_the_reason(doc: dict, env: dict[str, str], expected: str) -> None:
    problems = problems_of(doc, env)
    assert any(p.startswith(expected) for p in problems), problems


def test_errors_never_echo_a_secret() -> None:
    problems = problems_of({"channels": {"h": {"type": "webhook", "url": "gopher://u:hunter2@h.example/x?token=abc", "secret_env": "S"}}}, {"S": "x"})
    assert not any("hunter2" in p or "abc" in p for p in problems), problems


def test_a_bad_file_says_where(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text("channels:\n  a: {type: slack\n")
    with pytest.raises(AlertConfigError) as info:
        load_alerts_config({"SECFLOW_ALERTS_CONFIG": str(path)})
    assert "not valid YAML: line" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(AlertConfigError, match=r"\(file\): cannot read"):
        load_alerts_config({"SECFLOW_ALERTS_CONFIG": str(tmp_path / "missing.yaml")})


async def test_the_worker_refuses_to_start_with_a_bad_config_and_never_polls(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump({
        "channels": {"team-slack": {"type": "slack", "url": "https://hooks.example.com/x"}},
        "routing": {"P1": {"tiers": [["team-slack", "pagerdutty"]]}},
    }))
    queue = f"alerts-refuse-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SECFLOW_ALERTS_CONFIG": str(path), "SECFLOW_TASK_QUEUE": queue}
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "worker.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "bad alerts configuration" in proc.stderr
    assert "routing.P1.tiers.0.1: unknown channel 'pagerdutty'" in proc.stderr
    assert "worker started" not in proc.stdout + proc.stderr
    # The server never saw a poller on that queue.
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind)
        )
        assert list(described.pollers) == []

    # The same worker with the file fixed gets past the check (and is then stopped).
    path.write_text(yaml.safe_dump({"channels": {"team-slack": {"type": "slack", "url": "https://hooks.example.com/x"}},
                                    "routing": {"P1": {"tiers": [["team-slack"]]}}}))
    started = await asyncio.create_subprocess_exec(
        sys.executable, "worker.py", cwd=ROOT, env={**env, "SECFLOW_LOG_LEVEL": "INFO"}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        seen = b""
        async with asyncio.timeout(60):
            while b"worker started" not in seen:
                line = await started.stdout.readline()
                assert line, f"worker exited early: {seen.decode()}"
                seen += line
    finally:
        started.terminate()
        await started.wait()


# --- secrets by reference, https only (issue 10, items 3 and 9) ------------------------------
@pytest.mark.parametrize(
    ("channel", "field"),
    [
        ({"type": "webhook", "url": "http://alerts.example.com/in", "secret_env": "S"}, "url"),
        ({"type": "slack", "url": "http://chat.example.com/hook"}, "url"),
        ({"type": "pagerduty", "base_url": "http://events.pagerduty.com", "routing_key_env": "S"}, "base_url"),
        ({"type": "jira", "base_url": "http://jira.example.com", "project": "SEC", "email": "a@example.com", "token_env": "S"},
         "base_url"),
    ],
)
def test_channels_require_https_except_to_loopback(channel: dict, field: str) -> None:
    problems = problems_of({"channels": {"c": channel}}, {"S": "s" * 32})
    assert any(p.startswith(f"channels.c.{field}: must be https://") for p in problems), problems
    for loopback in ("http://127.0.0.1:8080", "http://localhost:9", "http://[::1]:9", "http://127.3.4.5"):
        parse_alerts_config({"channels": {"c": {**channel, field: loopback}}}, env={"S": "s" * 32})


def test_a_url_given_by_reference_must_be_https_too() -> None:
    problems = problems_of({"channels": {"s": {"type": "slack", "url": {"from_env": "HOOK"}}}},
                           {"HOOK": "http://hooks.example.com/services/T0/B0/Pl4ntedT0ken"})
    assert problems == ["channels.s.url: {from_env: HOOK}: must be https:// (plain http is allowed to loopback only): "
                        "'http://hooks.example.com/...'"]


@pytest.mark.parametrize(
    ("channel", "field", "reason"),
    [
        ({"type": "webhook", "url": "https://h.example/x", "secret": "Pl4ntedT0ken"}, "secret", "an inline secret is refused"),
        ({"type": "pagerduty", "routing_key": "Pl4ntedT0ken"}, "routing_key", "an inline secret is refused"),
        ({"type": "jira", "base_url": "https://j.example", "project": "SEC", "email": "a@example.com", "token": "Pl4ntedT0ken"},
         "token", "an inline secret is refused"),
        ({"type": "email", "host": "smtp.example", "from": "a@example.com", "to": ["b@example.com"], "username": "u",
          "password": "Pl4ntedT0ken"}, "password", "an inline secret is refused"),
        ({"type": "webhook", "url": "https://h.example/x?token=Pl4ntedT0ken", "secret_env": "S"}, "url",
         "carries a credential in query parameter 'token'; give the whole URL by reference"),
        ({"type": "slack", "url": "https://hooks.slack.com/services/T0/B0/Pl4ntedT0ken"}, "url",
         "carries a credential in its path (a webhook token)"),
    ],
)
def test_inline_channel_secrets_are_refused_without_echoing_them(channel: dict, field: str, reason: str) -> None:
    problems = problems_of({"channels": {"c": channel}}, {"S": "x"})
    assert any(p.startswith(f"channels.c.{field}: {reason}") for p in problems), problems
    assert "{from_env: NAME} or {from_file: /absolute/path}" in " ".join(problems)
    assert not any("Pl4ntedT0ken" in p for p in problems), problems


def test_references_from_env_and_file(tmp_path: Path) -> None:
    key = tmp_path / "pd-key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    key.chmod(0o600)
    doc = {"channels": {
        "pd": {"type": "pagerduty", "routing_key": {"from_file": str(key)}},
        "hook": {"type": "webhook", "url": {"from_env": "HOOK_URL"}, "secret": {"from_env": "HOOK_SECRET"}},
    }}
    config = parse_alerts_config(doc, env={"HOOK_URL": "https://h.example/hooks/abc123def456ghi789", "HOOK_SECRET": "s3"})
    assert config.channels["pd"].secret_ref("routing_key").from_file == str(key)
    # The references are what the config holds; nothing resolved is kept on it.
    dumped = config.model_dump_json()
    assert "0123456789abcdef" not in dumped and "abc123def456ghi789" not in dumped and "HOOK_URL" in dumped

    key.chmod(0o644)
    assert problems_of(doc, {"HOOK_URL": "https://h.example/x", "HOOK_SECRET": "s3"}) == [
        f"channels.pd.routing_key: {{from_file: {key}}}: file mode 0644 is too open (readable or writable by others); "
        f"chmod 600 {key}"
    ]
    assert problems_of(doc, {"HOOK_URL": "https://h.example/x"}) == [
        f"channels.pd.routing_key: {{from_file: {key}}}: file mode 0644 is too open (readable or writable by others); "
        f"chmod 600 {key}",
        "channels.hook.secret: {from_env: HOOK_SECRET}: environment variable HOOK_SECRET is not set",
    ]


def test_a_secret_given_twice_or_not_at_all() -> None:
    both = {"type": "jira", "base_url": "https://j.example", "project": "SEC", "email": "a@example.com",
            "token": {"from_env": "T"}, "token_env": "T"}
    assert "channels.j: give exactly one of `token` or `token_env`" in problems_of({"channels": {"j": both}}, {"T": "x"})
    neither = {"type": "pagerduty"}
    assert "channels.p: give exactly one of `routing_key` or `routing_key_env`" in problems_of({"channels": {"p": neither}})
