"""The alert channels end to end: `send_alert` in a real workflow on a real Temporal dev
server, talking to stand-ins on 127.0.0.1 that speak Slack, a signed webhook, PagerDuty
Events v2, Jira REST v2 and SMTP (STARTTLS + AUTH) and record what they receive.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from activities.alerts import plan_alerts, send_alert
from activities.alerts.channels import jira_label
from secflow.incidents import AlertRequest, IncidentEvent, IncidentRef, Severity
from secflow.store import open_store
from tests.alert_standins import (
    Fault,
    JiraIssue,
    JiraStandin,
    PagerDutyStandin,
    SlackStandin,
    SmtpStandin,
    WebhookStandin,
    make_cert,
)
from tests.pg import pg_server, pg_url  # noqa: F401  (pytest fixtures)
from tests.servers import closed_port
from tests.support_alert_workflow import AlertFanoutWorkflow, FanoutInput, FanoutResult

PD_KEY = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY01"  # 32 characters, as PagerDuty wants
HOOK_SECRET = "whsec-test-0123456789abcdef"
JIRA_EMAIL, JIRA_TOKEN = "bot@example.com", "jira-api-token-0123456789"
SMTP_USER, SMTP_PASS = "alerts@example.com", "smtp-pass-0123456789"

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI makes the SMTP certificate")


# --------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------
@pytest.fixture
async def alert_queue(client: Client, task_queue: str) -> AsyncIterator[str]:
    async with Worker(client, task_queue=task_queue, workflows=[AlertFanoutWorkflow], activities=[plan_alerts, send_alert]):
        yield task_queue


@pytest.fixture
def sfx() -> str:
    """A suffix of this test's own for channel names: groups and caps never cross tests."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_PD_KEY", PD_KEY)
    monkeypatch.setenv("T_HOOK_SECRET", HOOK_SECRET)
    monkeypatch.setenv("T_JIRA_TOKEN", JIRA_TOKEN)
    monkeypatch.setenv("T_SMTP_PASS", SMTP_PASS)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI makes the SMTP certificate")
    return make_cert(tmp_path_factory.mktemp("smtp-cert"))


def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, channels: dict[str, Any], routing: dict[str, Any] | None = None) -> Path:
    path = tmp_path / f"alerts-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump({"channels": channels, "routing": routing or {}}))
    monkeypatch.setenv("SECFLOW_ALERTS_CONFIG", str(path))
    return path


def incident(severity: Severity = Severity.P2, **overrides: Any) -> IncidentRef:
    uid = uuid.uuid4().hex
    fields: dict[str, Any] = {
        "incident_id": f"incident-{uid[:12]}",
        "dedup_key": uid,
        "severity": severity,
        "reason": "required_stage_failed",
        "title": "Stage ports failed on 127.0.0.1",
        "category": "transient",
        "message": "connection refused by 127.0.0.1:8443 after 3 attempts",
        "assessment_id": f"assess-{uid[:8]}",
        "workflow_id": f"assessment-wf-{uid[:10]}",
        "run_id": str(uuid.uuid4()),
        "stage_id": "ports",
        "target": "127.0.0.1",
        "trace_id": uuid.uuid4().hex,
        "commands": [
            f"python -m starter incidents ack incident-{uid[:12]} --by YOUR_NAME",
            f"python -m starter retry assessment-wf-{uid[:10]} ports",
        ],
    }
    fields.update(overrides)
    return IncidentRef(**fields)


def req(inc: IncidentRef, channel: str, event: IncidentEvent = IncidentEvent.TRIGGER, **kw: Any) -> AlertRequest:
    return AlertRequest(incident=inc, event=event, channel=channel, **kw)


async def fanout(client: Client, queue: str, inp: FanoutInput) -> tuple[FanoutResult, Any]:
    handle = await client.start_workflow(
        AlertFanoutWorkflow.run, inp, id=f"alerts-{uuid.uuid4().hex[:10]}", task_queue=queue, result_type=FanoutResult
    )
    return await handle.result(), handle


async def attempts_of(handle: Any) -> list[int]:
    out = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            out.append(event.activity_task_started_event_attributes.attempt)
    return out


def slack_cfg(s: SlackStandin, **kw: Any) -> dict[str, Any]:
    return {"type": "slack", "url": s.webhook_url, **kw}


# --------------------------------------------------------------------------------------
# wire formats
# --------------------------------------------------------------------------------------
async def test_slack_blocks_carry_severity_stage_error_commands_and_correlation_ids(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str
) -> None:
    with SlackStandin() as slack:
        monkeypatch.setenv("T_SLACK_URL", slack.webhook_url)
        name = f"slack-{sfx}"
        configure(tmp_path, monkeypatch, {name: {"type": "slack", "url_env": "T_SLACK_URL"}})
        inc = incident(Severity.P1, category="security", reason="security_violation", message="redirect to 10.9.9.9 is outside scope")
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=[req(inc, name)]))

        assert result.outcomes[0].result is not None and result.outcomes[0].result.status == "sent"
        [doc] = slack.delivered()
        assert slack.received[0].header("Content-Type") == "application/json"
        assert doc["text"].startswith("[P1] Stage ports failed on 127.0.0.1")
        blocks = doc["blocks"]
        assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "[P1] Stage ports failed on 127.0.0.1", "emoji": False}}
        fields = {f["text"].split("\n", 1)[0].strip("*"): f["text"].split("\n", 1)[1] for f in blocks[1]["fields"]}
        assert fields["Severity"] == "P1"
        assert fields["Assessment"] == inc.assessment_id
        assert fields["Stage"] == "ports" and fields["Target"] == "127.0.0.1"
        assert fields["Error category"] == "security (security_violation)"
        body = json.dumps(blocks)
        assert "redirect to 10.9.9.9 is outside scope" in body
        answer = next(b for b in blocks if b["type"] == "section" and b.get("text", {}).get("text", "").startswith("*To answer*"))
        for command in inc.commands:
            assert command in answer["text"]["text"]
        context = blocks[-1]
        assert context["type"] == "context"
        ids = context["elements"][0]["text"]
        for value in (inc.workflow_id, inc.run_id, inc.trace_id, inc.incident_id):
            assert value in ids


async def test_webhook_is_signed_and_a_receiver_can_verify_it(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str, secrets_env: None
) -> None:
    with WebhookStandin() as hook:
        name = f"hook-{sfx}"
        configure(tmp_path, monkeypatch, {name: {"type": "webhook", "url": hook.url + "/secflow", "secret_env": "T_HOOK_SECRET"}})
        inc = incident(Severity.P3)
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=[req(inc, name)]))
        assert result.outcomes[0].result.status == "sent"

        [got] = hook.received
        # What a receiver does: recompute the HMAC over "<timestamp>.<raw body>", compare
        # in constant time, and refuse timestamps outside its replay window.
        timestamp = got.header("X-SecFlow-Timestamp")
        signature = got.header("X-SecFlow-Signature")
        expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), timestamp.encode() + b"." + got.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(signature, expected)
        assert abs(time.time() - int(timestamp)) < 300
        forged = "sha256=" + hmac.new(b"wrong-secret", timestamp.encode() + b"." + got.body, hashlib.sha256).hexdigest()
        assert not hmac.compare_digest(signature, forged)

        doc = got.json()
        assert got.header("X-SecFlow-Event") == "trigger" == doc["event"]
        assert got.header("X-SecFlow-Delivery") == doc["delivery_id"]
        assert doc["severity"] == "P3"
        assert doc["incident"]["dedup_key"] == inc.dedup_key
        assert doc["incident"]["stage_id"] == "ports"
        assert doc["correlation"]["workflow_id"] == inc.workflow_id
        assert doc["correlation"]["run_id"] == inc.run_id
        assert doc["correlation"]["trace_id"] == inc.trace_id
        assert doc["commands"] == inc.commands


async def test_pagerduty_trigger_acknowledge_resolve_share_the_dedup_key(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str, secrets_env: None
) -> None:
    with PagerDutyStandin() as pd:
        name = f"pd-{sfx}"
        configure(tmp_path, monkeypatch, {name: {"type": "pagerduty", "base_url": pd.url, "routing_key_env": "T_PD_KEY"}})
        inc = incident(Severity.P2)
        requests = [
            req(inc, name, IncidentEvent.TRIGGER, sequence=1),
            req(inc, name, IncidentEvent.ACKNOWLEDGE, sequence=2, by="alice", note="looking"),
            req(inc, name, IncidentEvent.RESOLVE, sequence=3, by="alice"),
            req(inc, name, IncidentEvent.SUMMARY, sequence=4),  # a pager gets no summaries
        ]
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=requests, sequential=True))

        assert [o.result.status for o in result.outcomes] == ["sent", "sent", "sent", "skipped"]
        assert result.outcomes[0].result.external_ref == inc.dedup_key
        events = pd.events()
        assert len(events) == len(pd.received) == 3
        assert [e["event_action"] for e in events] == ["trigger", "acknowledge", "resolve"]
        assert {e["dedup_key"] for e in events} == {inc.dedup_key}
        assert {e["routing_key"] for e in events} == {PD_KEY}
        payload = events[0]["payload"]
        assert payload["severity"] == "error"  # P2
        assert payload["summary"].startswith("[P2] ")
        assert payload["source"] == "127.0.0.1" and payload["component"] == "ports"
        details = payload["custom_details"]
        assert (details["workflow_id"], details["run_id"], details["trace_id"]) == (inc.workflow_id, inc.run_id, inc.trace_id)


async def test_pagerduty_400_is_not_retried(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str
) -> None:
    monkeypatch.setenv("T_PD_SHORT_KEY", "too-short")
    with PagerDutyStandin() as pd:
        name = f"pd-{sfx}"
        configure(tmp_path, monkeypatch, {name: {"type": "pagerduty", "base_url": pd.url, "routing_key_env": "T_PD_SHORT_KEY"}})
        result, handle = await fanout(client, alert_queue, FanoutInput(requests=[req(incident(), name)], max_attempts=5))
        [outcome] = result.outcomes
        assert outcome.error_type == "validation" and outcome.non_retryable
        assert "HTTP 400" in outcome.error and "routing_key" in outcome.error
        assert "too-short" not in outcome.error  # the key itself is scrubbed from the message
        assert len(pd.received) == 1 and await attempts_of(handle) == [1]


@needs_openssl
async def test_email_arrives_over_starttls_with_auth(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str, secrets_env: None,
    cert: tuple[Path, Path],
) -> None:
    with SmtpStandin(*cert, user=SMTP_USER, password=SMTP_PASS) as smtp:
        name = f"mail-{sfx}"
        configure(tmp_path, monkeypatch, {name: {
            "type": "email", "host": "127.0.0.1", "port": smtp.port, "ca_file": str(cert[0]),
            "username": SMTP_USER, "password_env": "T_SMTP_PASS", "from": "secflow@example.com",
            "to": ["oncall@example.com", "leads@example.com"],
        }})
        inc = incident(Severity.P2)
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=[req(inc, name, IncidentEvent.ESCALATE, tier=2)]))
        assert result.outcomes[0].result.status == "sent"

        [mail] = smtp.messages
        assert mail.tls, "the message must have come after STARTTLS"
        assert mail.login == SMTP_USER and mail.auth_mechanism in ("LOGIN", "PLAIN")
        assert mail.mail_from == "secflow@example.com"
        assert sorted(mail.rcpt_tos) == ["leads@example.com", "oncall@example.com"]
        parsed = email.message_from_bytes(mail.data, policy=email.policy.default)
        assert parsed["Subject"] == "[SecFlow] [P2] ESCALATED (tier 2): Stage ports failed on 127.0.0.1"
        assert parsed.get_content_type() == "text/plain"
        body = parsed.get_content()
        for value in (inc.workflow_id, inc.run_id, inc.trace_id, *inc.commands):
            assert value in body
        assert parsed["Message-ID"] == f"<{result.outcomes[0].result.external_ref.strip('<>')}>"


@needs_openssl
async def test_email_refuses_a_server_certificate_it_cannot_verify(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str, secrets_env: None,
    cert: tuple[Path, Path],
) -> None:
    other_ca, _ = make_cert(tmp_path)  # a different self-signed certificate as the "CA"
    with SmtpStandin(*cert, user=SMTP_USER, password=SMTP_PASS) as smtp:
        name = f"mail-{sfx}"
        configure(tmp_path, monkeypatch, {name: {
            "type": "email", "host": "127.0.0.1", "port": smtp.port, "ca_file": str(other_ca),
            "username": SMTP_USER, "password_env": "T_SMTP_PASS", "from": "secflow@example.com", "to": ["oncall@example.com"],
        }})
        result, handle = await fanout(client, alert_queue, FanoutInput(requests=[req(incident(), name)], max_attempts=3))
        [outcome] = result.outcomes
        assert outcome.error_type == "permanent" and outcome.non_retryable
        assert "certificate" in outcome.error.lower()
        assert smtp.messages == [] and smtp.auth_attempts == []  # no password went to an unverified server
        assert await attempts_of(handle) == [1]


async def test_jira_issue_created_once_commented_on_escalation_transitioned_on_resolve(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str, secrets_env: None
) -> None:
    with JiraStandin("SEC", email=JIRA_EMAIL, token=JIRA_TOKEN) as jira:
        name = f"jira-{sfx}"
        configure(tmp_path, monkeypatch, {name: {
            "type": "jira", "base_url": jira.url, "project": "SEC", "email": JIRA_EMAIL, "token_env": "T_JIRA_TOKEN",
            "transitions": {"resolve": "Done"},
        }})
        inc = incident(Severity.P2)
        trigger = req(inc, name, IncidentEvent.TRIGGER, sequence=1)
        steps = [
            trigger,
            trigger,  # the same delivery again (a replayed or retried call): nothing new
            req(inc, name, IncidentEvent.TRIGGER, sequence=2),  # a later trigger of the same incident
            req(inc, name, IncidentEvent.ESCALATE, tier=2, sequence=3),
            req(inc, name, IncidentEvent.RESOLVE, sequence=4, by="alice", note="rotated the key"),
        ]
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=steps, sequential=True))
        statuses = [o.result.status for o in result.outcomes]
        assert statuses == ["sent"] * 5, result.outcomes
        assert {o.result.external_ref for o in result.outcomes} == {"SEC-1"}

        assert list(jira.issues) == ["SEC-1"], "one issue per incident, whatever happens"
        issue = jira.issues["SEC-1"]
        assert issue.fields["summary"] == "[P2] Stage ports failed on 127.0.0.1"
        assert issue.fields["issuetype"] == {"name": "Task"}
        assert inc.workflow_id in issue.fields["description"] and inc.trace_id in issue.fields["description"]
        creates = [r for r in jira.received if r.method == "POST" and r.path == "/rest/api/2/issue"]
        assert len(creates) == 1
        assert len(issue.comments) == 3  # later trigger, escalation, resolution note
        assert "ESCALATED (tier 2)" in issue.comments[1]
        assert "Resolved by alice: rotated the key" in issue.comments[2]
        assert issue.status == "Done"
        transitions = [r.json() for r in jira.received if r.method == "POST" and r.path.endswith("/transitions")]
        assert [t["transition"]["id"] for t in transitions] == ["31"]
        assert all(r.header("Authorization").startswith("Basic ") for r in jira.received)

        # P4 never reaches Jira.
        p4, _ = await fanout(client, alert_queue, FanoutInput(requests=[req(incident(Severity.P4), name)]))
        assert p4.outcomes[0].result.status == "skipped"
        assert list(jira.issues) == ["SEC-1"]


async def test_jira_finds_an_issue_whose_key_was_never_recorded(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str, secrets_env: None
) -> None:
    """A create whose answer was lost (worker died after Jira made the issue): the next
    attempt finds the issue by its incident label instead of filing a second one."""
    with JiraStandin("SEC", email=JIRA_EMAIL, token=JIRA_TOKEN) as jira:
        name = f"jira-{sfx}"
        configure(tmp_path, monkeypatch, {name: {
            "type": "jira", "base_url": jira.url, "project": "SEC", "auth": "bearer", "token_env": "T_JIRA_TOKEN",
        }})
        inc = incident(Severity.P1, category="security")
        # Jira already has the issue (filed by the lost attempt); our store knows nothing.
        jira.issues["SEC-7"] = JiraIssue(id="10007", key="SEC-7", fields={"labels": ["secflow", jira_label(inc.dedup_key)]})
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=[req(inc, name)]))
        assert result.outcomes[0].result.external_ref == "SEC-7"
        assert list(jira.issues) == ["SEC-7"]
        assert all(r.header("Authorization") == f"Bearer {JIRA_TOKEN}" for r in jira.received)


async def test_jira_401_is_not_retried(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str
) -> None:
    monkeypatch.setenv("T_JIRA_BAD", "not-the-token")
    with JiraStandin("SEC", email=JIRA_EMAIL, token=JIRA_TOKEN) as jira:
        name = f"jira-{sfx}"
        configure(tmp_path, monkeypatch, {name: {
            "type": "jira", "base_url": jira.url, "project": "SEC", "email": JIRA_EMAIL, "token_env": "T_JIRA_BAD",
        }})
        result, handle = await fanout(client, alert_queue, FanoutInput(requests=[req(incident(), name)], max_attempts=4))
        [outcome] = result.outcomes
        assert outcome.error_type == "permanent" and outcome.non_retryable and "HTTP 401" in outcome.error
        assert jira.issues == {} and len(jira.received) == 1
        assert await attempts_of(handle) == [1]


# --------------------------------------------------------------------------------------
# failures and recovery
# --------------------------------------------------------------------------------------
async def test_503_then_200_recovers_through_the_temporal_retry(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str
) -> None:
    with SlackStandin(faults=[Fault(503)]) as slack:
        name = f"slack-{sfx}"
        configure(tmp_path, monkeypatch, {name: slack_cfg(slack)})
        inc = incident()
        result, handle = await fanout(client, alert_queue, FanoutInput(requests=[req(inc, name)]))
        assert result.outcomes[0].result.status == "sent"
        assert len(slack.received) == 2  # 503, then the same message again, answered ok
        assert slack.received[0].body == slack.received[1].body
        # One request per attempt: the second attempt was Temporal's, not the transport's.
        assert await attempts_of(handle) == [2]
        # The failed attempt is in the error ledger, by dependency, and marked recovered.
        [event] = open_store().list_errors(inc.assessment_id)
        assert (event.stage_id, event.target, event.tool, event.dependency) == ("alerts", name, "alert.slack", f"alert.slack.{name}")
        assert (event.category, event.attempt, event.outcome) == ("transient", 1, "recovered")


async def test_a_hung_channel_times_out_and_the_retry_delivers(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str
) -> None:
    with SlackStandin(faults=[Fault.hang(5)]) as slack:
        name = f"slack-{sfx}"
        configure(tmp_path, monkeypatch, {name: slack_cfg(slack, timeout="1s")})
        result, handle = await fanout(client, alert_queue, FanoutInput(requests=[req(incident(), name)]))
        assert result.outcomes[0].result.status == "sent"
        assert len(slack.delivered()) == 2  # the hung request was read, never answered
        assert await attempts_of(handle) == [2]


async def test_a_dead_channel_fails_only_its_own_delivery(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str, secrets_env: None
) -> None:
    with SlackStandin() as slack, PagerDutyStandin() as pd:
        dead = f"http://127.0.0.1:{closed_port()}/hook"
        names = {"slack": f"slack-{sfx}", "dead": f"dead-{sfx}", "pd": f"pd-{sfx}"}
        configure(tmp_path, monkeypatch, {
            names["slack"]: slack_cfg(slack),
            names["dead"]: {"type": "webhook", "url": dead, "secret_env": "T_HOOK_SECRET"},
            names["pd"]: {"type": "pagerduty", "base_url": pd.url, "routing_key_env": "T_PD_KEY"},
        })
        inc = incident(Severity.P1, category="security")
        result, _ = await fanout(
            client, alert_queue, FanoutInput(requests=[req(inc, n) for n in names.values()], max_attempts=3)
        )
        by_channel = {o.channel: o for o in result.outcomes}
        assert by_channel[names["slack"]].result.status == "sent"
        assert by_channel[names["pd"]].result.status == "sent"
        dead_outcome = by_channel[names["dead"]]
        assert dead_outcome.result is None and dead_outcome.error_type == "transient"
        assert not dead_outcome.non_retryable  # retried to the policy's end, then given up
        assert len(slack.delivered()) == 1 and len(pd.events()) == 1
        # The ledger says how it ended: all 3 attempts `failed` (the last one knew it was last).
        dead_events = [e for e in open_store().list_errors(inc.assessment_id) if e.target == names["dead"]]
        assert [(e.attempt, e.outcome) for e in dead_events] == [(1, "failed"), (2, "failed"), (3, "failed")]


# --------------------------------------------------------------------------------------
# grouping, caps, idempotency
# --------------------------------------------------------------------------------------
async def test_identical_alerts_within_the_cooldown_are_merged_with_a_count(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str
) -> None:
    with SlackStandin() as slack:
        name = f"slack-{sfx}"
        configure(tmp_path, monkeypatch, {name: slack_cfg(slack, cooldown="1s")})
        # Three incidents (three targets) failing the same way: numbers differ, text does not.
        incs = [
            incident(target=f"10.0.0.{i}", message=f"connection refused by 10.0.0.{i}:8443 after {i} attempts")
            for i in (1, 2, 3)
        ]
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=[req(i, name) for i in incs], sequential=True))
        assert [(o.result.status, o.result.merged_count) for o in result.outcomes] == [("sent", 0), ("merged", 1), ("merged", 2)]
        assert len(slack.delivered()) == 1

        # Acknowledgements are never merged: each one tells people to stop working on something.
        acks = [req(i, name, IncidentEvent.ACKNOWLEDGE, sequence=1, by="bob") for i in incs[:2]]
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=acks, sequential=True))
        assert [o.result.status for o in result.outcomes] == ["sent", "sent"]

        time.sleep(1.05)  # let the 1 s cooldown pass: the next alert of the group goes out
        later = incident(target="10.0.0.4", message="connection refused by 10.0.0.4:8443 after 4 attempts")
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=[req(later, name)]))
        assert (result.outcomes[0].result.status, result.outcomes[0].result.merged_count) == ("sent", 2)
        last = slack.delivered()[-1]
        assert "2 identical alert(s) merged since the previous one" in last["text"]
        assert len(slack.delivered()) == 4


async def test_a_retried_delivery_is_not_sent_twice(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str, secrets_env: None
) -> None:
    with WebhookStandin() as hook:
        name = f"hook-{sfx}"
        configure(tmp_path, monkeypatch, {name: {"type": "webhook", "url": hook.url, "secret_env": "T_HOOK_SECRET", "cooldown": "0s"}})
        inc = incident()
        same = req(inc, name, IncidentEvent.ESCALATE, tier=2, sequence=5)
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=[same, same, same], sequential=True))
        assert [o.result.status for o in result.outcomes] == ["sent"] * 3
        assert len(hook.received) == 1
        # A different sequence number is a different delivery.
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=[req(inc, name, IncidentEvent.ESCALATE, tier=2, sequence=6)]))
        assert len(hook.received) == 2


async def test_the_hourly_cap_holds_but_never_for_p1_or_resolutions(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str
) -> None:
    with SlackStandin() as slack:
        name = f"slack-{sfx}"
        configure(tmp_path, monkeypatch, {name: slack_cfg(slack, cooldown="0s", max_per_hour=2)})
        p2s = [incident(Severity.P2, stage_id=f"stage{c}", message=f"different failure {c}") for c in "abcd"]
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=[req(i, name) for i in p2s], sequential=True))
        assert [o.result.status for o in result.outcomes] == ["sent", "sent", "capped", "capped"]
        assert [o.result.merged_count for o in result.outcomes[2:]] == [1, 2]
        assert len(slack.delivered()) == 2

        p1 = incident(Severity.P1, category="security", message="scope violation")
        follow_up = [req(p1, name), req(p2s[0], name, IncidentEvent.RESOLVE, sequence=9, by="carol")]
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=follow_up, sequential=True))
        assert [o.result.status for o in result.outcomes] == ["sent", "sent"]
        assert len(slack.delivered()) == 4
        assert "2 alert(s) held back by this channel's hourly cap" in slack.delivered()[2]["text"]


# --------------------------------------------------------------------------------------
# nothing leaks
# --------------------------------------------------------------------------------------
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZWNmbG93In0.c2lnbmF0dXJlLXNlY3JldA"
PASSWORD = "Hunter2-Sup3rSecret"
URL_PASSWORD = "dbpass-9f8e7d6c"
LEAKY_MESSAGE = f"""scanner failed: upload to https://admin:{URL_PASSWORD}@db.internal.example:5432/x refused
Authorization: Bearer {BEARER}
aws_access_key_id={AWS_KEY} password={PASSWORD}
Traceback (most recent call last):
  File "/opt/secflow/activities/scanning.py", line 42, in portscan
    result = await probe(host, password="{PASSWORD}")
  File "/usr/lib/python3.11/asyncio/streams.py", line 48, in open_connection
    raise OSError("boom")
OSError: [Errno 111] Connection refused"""


@needs_openssl
async def test_planted_secrets_and_stack_traces_reach_no_channel(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str, secrets_env: None,
    cert: tuple[Path, Path],
) -> None:
    with (
        SlackStandin() as slack,
        WebhookStandin() as hook,
        PagerDutyStandin() as pd,
        JiraStandin("SEC", email=JIRA_EMAIL, token=JIRA_TOKEN) as jira,
        SmtpStandin(*cert, user=SMTP_USER, password=SMTP_PASS) as smtp,
    ):
        names = [f"{kind}-{sfx}" for kind in ("slack", "hook", "pd", "jira", "mail")]
        configure(tmp_path, monkeypatch, {
            names[0]: slack_cfg(slack),
            names[1]: {"type": "webhook", "url": hook.url, "secret_env": "T_HOOK_SECRET"},
            names[2]: {"type": "pagerduty", "base_url": pd.url, "routing_key_env": "T_PD_KEY"},
            names[3]: {"type": "jira", "base_url": jira.url, "project": "SEC", "email": JIRA_EMAIL, "token_env": "T_JIRA_TOKEN"},
            names[4]: {"type": "email", "host": "127.0.0.1", "port": smtp.port, "ca_file": str(cert[0]),
                       "username": SMTP_USER, "password_env": "T_SMTP_PASS", "from": "secflow@example.com", "to": ["oncall@example.com"]},
        })
        inc = incident(
            Severity.P2,
            title=f"sca failed: token={PASSWORD}",
            message=LEAKY_MESSAGE,
            target=f"https://scan:{URL_PASSWORD}@app.example",
            commands=[f"python -m starter retry wf ports  # api_key={AWS_KEY}"],
        )
        requests = [req(inc, n, IncidentEvent.TRIGGER, sequence=1) for n in names]
        requests += [req(inc, n, IncidentEvent.RESOLVE, sequence=2, by="dave", note=f"rotated password={PASSWORD}") for n in names]
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=requests, sequential=True))
        assert [(o.channel, o.result and o.result.status, o.error) for o in result.outcomes] == [
            (r.channel, "sent", "") for r in requests
        ]

        mails = [email.message_from_bytes(m.data, policy=email.policy.default) for m in smtp.messages]
        decoded_mails = [(str(p["Subject"]) + "\n" + p.get_content()).encode() for p in mails]
        payloads = [r.body for s in (slack, hook, pd, jira) for r in s.received] + [m.data for m in smtp.messages] + decoded_mails
        assert len(smtp.messages) == 2 and len(slack.received) == 2 and len(pd.received) == 2
        assert any(b"Connection refused" in p for p in payloads)  # the error itself still says what broke
        everything = b"\n".join(payloads).decode("utf-8", "replace")
        everything_unescaped = everything + json.dumps(everything)  # JSON-escaped variants too
        for secret in (AWS_KEY, BEARER, PASSWORD, URL_PASSWORD):
            assert secret not in everything_unescaped, f"{secret!r} leaked"
        for trace_part in ("Traceback (most recent call last)", 'File "/opt/secflow', "line 42, in portscan", "asyncio/streams.py"):
            assert trace_part not in everything, f"stack trace leaked: {trace_part!r}"
        # Correlation ids on every message (PagerDuty's resolve event has no fields for them:
        # its dedup_key is the link; GETs to Jira have no body).
        messages = [r.body for s in (slack, hook, jira) for r in s.received if r.body] + decoded_mails
        messages += [r.body for r in pd.received if r.json()["event_action"] == "trigger"]
        assert len(messages) == 2 + 2 + 2 + 2 + 1
        for message in messages:
            for value in (inc.workflow_id, inc.run_id, inc.trace_id):
                assert value.encode() in message, (value, message[:300])


# --------------------------------------------------------------------------------------
# the bookkeeping underneath, on both store backends, with a hand-moved clock
# --------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def delivery_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    from secflow.store import FindingsStore

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'deliveries.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    store = FindingsStore(url)
    yield store
    store.close()


def test_claims_merge_cap_and_count_on_both_backends(delivery_store: Any) -> None:
    from datetime import datetime, timedelta, timezone

    from secflow.alerting import deliveries
    from secflow.alerting.render import group_key

    t0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    cooldown, cap = timedelta(minutes=10), 3

    def claim(inc: IncidentRef, at: timedelta, event: IncidentEvent = IncidentEvent.TRIGGER, seq: int = 0) -> Any:
        r = req(inc, "ch", event, sequence=seq)
        c = deliveries.claim(
            delivery_store, r, delivery_id=deliveries.delivery_id_for(r), group=group_key("ch", inc, event),
            cooldown=cooldown, max_per_hour=cap, now=t0 + at,
        )
        if c.send:
            deliveries.finish(delivery_store, c.delivery.delivery_id, "sent")
        return c

    same = [incident(target=f"10.0.0.{i}", message=f"timeout after {i}.5s") for i in range(4)]
    first = claim(same[0], timedelta(0))
    assert first.send
    assert [(c.delivery.status, c.count) for c in (claim(same[1], timedelta(minutes=1)), claim(same[2], timedelta(minutes=9)))] == [
        ("merged", 1), ("merged", 2)]
    # The same delivery asked again: the recorded answer, nothing new.
    again = claim(same[1], timedelta(minutes=2))
    assert (again.send, again.delivery.status, again.count) == (False, "merged", 1)
    # After the cooldown the group's next message goes out and reports the two merges.
    later = claim(same[3], timedelta(minutes=11))
    assert later.send and later.merged_since == 2

    others = [incident(stage_id=f"s{i}", message=f"distinct failure {chr(97 + i)}") for i in range(3)]
    c1 = claim(others[0], timedelta(minutes=12))
    assert c1.send  # the third message this hour (t0, t0+11m, now): at the cap of 3
    capped = claim(others[1], timedelta(minutes=13))
    assert (capped.send, capped.delivery.status, capped.count) == (False, "capped", 1)
    assert claim(others[1], timedelta(minutes=13, seconds=5)).count == 1  # asked again: same answer
    p1 = claim(incident(Severity.P1, message="scope violation"), timedelta(minutes=14))
    assert p1.send and p1.capped_since == 1  # P1 is never capped; it says what was held back
    resolve = claim(same[0], timedelta(minutes=15), IncidentEvent.RESOLVE, seq=9)
    assert resolve.send  # nor are resolutions
    # An hour after the first messages the window has room again.
    free = claim(others[2], timedelta(minutes=75))
    assert free.send and free.capped_since == 0

    # What a channel created for an incident (a Jira key) is found by incident and channel.
    assert deliveries.external_ref_for(delivery_store, same[0].dedup_key, "ch") == ""
    deliveries.set_external_ref(delivery_store, first.delivery.delivery_id, "SEC-42")
    assert deliveries.external_ref_for(delivery_store, same[0].dedup_key, "ch") == "SEC-42"
    assert deliveries.external_ref_for(delivery_store, same[0].dedup_key, "other") == ""
    assert deliveries.get_delivery(delivery_store, first.delivery.delivery_id).external_ref == "SEC-42"


# --------------------------------------------------------------------------------------
# text hygiene
# --------------------------------------------------------------------------------------
def test_stack_traces_are_stripped_but_the_error_line_stays() -> None:
    from secflow.alerting.render import TRACE_REMOVED, clean, normalise

    text = clean(LEAKY_MESSAGE)
    assert "Traceback" not in text and 'File "' not in text and "await probe" not in text
    assert "OSError: [Errno 111] Connection refused" in text and TRACE_REMOVED in text
    java = "java.lang.IllegalStateException: boom\n\tat com.example.Scanner.run(Scanner.java:42)\n\t... 3 more"
    assert clean(java) == f"java.lang.IllegalStateException: boom\n{TRACE_REMOVED}"
    chained = (
        "Traceback (most recent call last):\n  File \"a.py\", line 1, in <module>\nKeyError: 'x'\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n  File \"b.py\", line 2, in f\nValueError: bad"
    )
    assert clean(chained) == f"KeyError: 'x'\n\nValueError: bad\n{TRACE_REMOVED}"
    assert normalise("Timeout after 30.2s on 10.0.0.5:443 (id 9f86d081884c7d65)") == normalise(
        "timeout after 31.0s on 10.0.0.7:443   (id 2c26b46b68ffc68f)"
    )
    assert normalise("timeout on port 443") != normalise("connection refused on port 443")


async def test_concurrent_identical_alerts_make_one_message(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfx: str
) -> None:
    with SlackStandin() as slack:
        name = f"slack-{sfx}"
        configure(tmp_path, monkeypatch, {name: slack_cfg(slack)})
        incs = [incident(target=f"10.1.0.{i}") for i in range(4)]
        result, _ = await fanout(client, alert_queue, FanoutInput(requests=[req(i, name) for i in incs]))
        statuses = sorted(o.result.status for o in result.outcomes)
        assert statuses == ["merged", "merged", "merged", "sent"]
        assert sorted(o.result.merged_count for o in result.outcomes if o.result.status == "merged") == [1, 2, 3]
        assert len(slack.received) == 1


async def test_an_unknown_channel_is_a_validation_error(
    client: Client, alert_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(tmp_path, monkeypatch, {})
    result, handle = await fanout(client, alert_queue, FanoutInput(requests=[req(incident(), "nowhere")]))
    [outcome] = result.outcomes
    assert outcome.error_type == "validation" and outcome.non_retryable and "'nowhere'" in outcome.error
    assert await attempts_of(handle) == [1]
