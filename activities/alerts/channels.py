"""One sender per channel type: the wire formats of Slack, a signed webhook, PagerDuty
Events v2, SMTP e-mail and Jira REST v2.

HTTP goes through `secflow.http.client_for("alert.<type>.<name>")`, so each channel
instance has its own rate limiter and circuit breaker. Inside the transport a request is
tried once (`ALERT_HTTP`): the activity's Temporal retry is the retry loop, and the
delivery row (secflow/alerting/deliveries.py) keeps it from sending twice what already
went out. A non-2xx answer becomes a `ChannelError` carrying the taxonomy's verdict
(400/401/403/404 are not retried; 429/5xx are, honouring Retry-After).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import smtplib
import ssl
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import httpx

from secflow.alerting import deliveries
from secflow.alerting.config import (
    EmailChannel,
    JiraChannel,
    PagerDutyChannel,
    SlackChannel,
    WebhookChannel,
    check_url,
)
from secflow.alerting.render import AlertMessage
from secflow.errors import Classification, PermanentError, classify, parse_retry_after
from secflow.http import DependencySettings, client_for, register_dependency
from secflow.incidents import AlertRequest, IncidentEvent, Severity
from secflow.redaction import redact, register_secret
from secflow.secrets import SecretUnavailable, resolve
from secflow.store import FindingsStore

__all__ = ["ChannelError", "Outcome", "SendContext", "applies", "dependency_name", "secret_values", "send", "sign"]

# One try per request inside the transport; Temporal retries the activity.
ALERT_HTTP = DependencySettings(rate=5.0, burst=10, retry_attempts=1, minimum_calls=5, open_timeout=30.0, deadline=30.0)
# Slack: about one message per second per webhook, with short bursts.
SLACK_HTTP = ALERT_HTTP.model_copy(update={"rate": 1.0, "burst": 10})
_registered: set[str] = set()

PD_SEVERITY = {Severity.P1: "critical", Severity.P2: "error", Severity.P3: "warning", Severity.P4: "info"}
PD_ACTION = {
    IncidentEvent.TRIGGER: "trigger",
    IncidentEvent.ESCALATE: "trigger",  # same dedup_key: PagerDuty updates the open alert
    IncidentEvent.ACKNOWLEDGE: "acknowledge",
    IncidentEvent.RESOLVE: "resolve",
}
SIGNATURE_HEADER = "X-SecFlow-Signature"
TIMESTAMP_HEADER = "X-SecFlow-Timestamp"


class ChannelError(Exception):
    """A channel answered, but not with success: the message is safe, the verdict is set."""

    def __init__(self, message: str, classification: Classification) -> None:
        super().__init__(message)
        self.classification = classification


@dataclass
class Outcome:
    status: Literal["sent", "skipped"] = "sent"
    external_ref: str = ""


@dataclass
class SendContext:
    name: str
    channel: Any
    req: AlertRequest
    msg: AlertMessage
    store: FindingsStore
    delivery_id: str
    secrets: list[str]  # values to scrub from any error text

    def scrub(self, text: str) -> str:
        for value in self.secrets:
            if value:
                text = text.replace(value, "[REDACTED]")
        return redact(text)


def dependency_name(channel: Any, name: str) -> str:
    return f"alert.{channel.type}.{name}"


def applies(channel: Any, req: AlertRequest) -> bool:
    """Whether this channel has anything to say about this event at all."""
    if isinstance(channel, PagerDutyChannel):
        return req.event in PD_ACTION  # no daily summaries to a pager
    if isinstance(channel, JiraChannel):
        return req.incident.severity is not Severity.P4 and req.event is not IncidentEvent.SUMMARY
    return True


def secret_values(channel: Any) -> list[str]:
    """The channel's secrets that resolve now (to scrub from error texts); none is kept."""
    values = []
    for ref in channel.secret_refs().values():
        try:
            values.append(resolve(ref))
        except SecretUnavailable:
            pass
    return values


def _secret(ctx: SendContext, field: str) -> str:
    """The channel's credential `field`, resolved now (SecretUnavailable -> permanent)."""
    ref = ctx.channel.secret_ref(field)
    if ref is None:
        raise PermanentError(f"channels.{ctx.name}.{field}: not configured")
    return resolve(ref, where=f"channels.{ctx.name}.{field}")


def _url(ctx: SendContext) -> str:
    """A Slack or webhook channel's URL: written in the file, or resolved from its reference
    and checked like one written out (https except to loopback)."""
    url = ctx.channel.url
    if isinstance(url, str):
        return url
    value = _secret(ctx, "url")
    try:
        return check_url(value, inline=False)
    except ValueError as exc:
        raise PermanentError(f"channels.{ctx.name}.url: {exc}") from None


async def send(ctx: SendContext) -> Outcome:
    channel = ctx.channel
    if isinstance(channel, SlackChannel):
        return await _slack(ctx)
    if isinstance(channel, WebhookChannel):
        return await _webhook(ctx)
    if isinstance(channel, PagerDutyChannel):
        return await _pagerduty(ctx)
    if isinstance(channel, EmailChannel):
        return await _email(ctx)
    if isinstance(channel, JiraChannel):
        return await _jira(ctx)
    raise PermanentError(f"channel {ctx.name}: unsupported type {type(channel).__name__}")


# --------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------
def _client(ctx: SendContext, url: str) -> tuple[httpx.AsyncClient, str]:
    dep = dependency_name(ctx.channel, ctx.name)
    if dep not in _registered:
        register_dependency(dep, SLACK_HTTP if isinstance(ctx.channel, SlackChannel) else ALERT_HTTP)
        _registered.add(dep)
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    seconds = ctx.channel.timeout.total_seconds()
    timeout = httpx.Timeout(seconds, connect=min(seconds, 5.0))
    return client_for(dep, base_url=base, timeout=timeout, headers={"User-Agent": "secflow-alerts"}), path


async def _request(
    ctx: SendContext,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    path: str | None = None,
) -> httpx.Response:
    """One request through the channel's resilient client; a non-2xx answer raises ChannelError."""
    client, url_path = _client(ctx, url)
    async with client as http:
        response = await http.request(method, path or url_path, content=body, headers=headers)
    if response.is_success:
        return response
    host = urlsplit(url).hostname or "?"
    said = ctx.scrub(response.text[:300].strip())
    text = f"channel {ctx.name} ({ctx.channel.type}): HTTP {response.status_code} from {host}" + (f": {said}" if said else "")
    verdict = classify(text, http_status=response.status_code)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if retry_after is not None and verdict.retryable:
        verdict = replace(verdict, retry_after=retry_after)
    raise ChannelError(text, verdict)


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------------------
# Slack incoming webhook
# --------------------------------------------------------------------------------------
def _mrkdwn(text: str) -> str:
    # Slack's three control characters, and no way to close our code block early.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("```", "'''")


def slack_payload(msg: AlertMessage) -> dict[str, Any]:
    fields = [
        ("Severity", msg.severity),
        ("Assessment", msg.assessment_id),
        ("Stage", msg.stage_id or "-"),
        ("Target", msg.target or "-"),
        ("Error category", f"{msg.category} ({msg.reason})"),
        ("Occurrences", str(msg.occurrences)),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": msg.headline[:150], "emoji": False}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{_mrkdwn(v)[:1900]}"} for k, v in fields]},
    ]
    if msg.event in (IncidentEvent.ACKNOWLEDGE, IncidentEvent.RESOLVE):
        who = f"by {msg.by}" if msg.by else ""
        note = f": {msg.note}" if msg.note else ""
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(f"{msg.event.value.capitalize()} {who}{note}")[:2900]}}
        )
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Error*\n```{_mrkdwn(msg.message or '-')[:2800]}```"}})
    notices = [n for n in msg.notices() if n]
    if notices:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _mrkdwn(" ".join(notices))}]})
    if msg.commands:
        commands = "\n".join(msg.commands)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*To answer*\n```{_mrkdwn(commands)[:2800]}```"}})
    ids = " · ".join(f"{k} `{_mrkdwn(v)}`" for k, v in msg.correlation.items() if v)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": ids[:2900]}]})
    return {"text": msg.text()[:3000], "blocks": blocks}


async def _slack(ctx: SendContext) -> Outcome:
    url = _url(ctx)
    await _request(ctx, "POST", url, body=_json(slack_payload(ctx.msg)), headers={"Content-Type": "application/json"})
    return Outcome()


# --------------------------------------------------------------------------------------
# Generic webhook, HMAC-SHA256 signed
# --------------------------------------------------------------------------------------
def webhook_payload(ctx: SendContext) -> dict[str, Any]:
    msg, inc = ctx.msg, ctx.req.incident
    return {
        "delivery_id": msg.delivery_id,
        "event": msg.event.value,
        "severity": msg.severity,
        "headline": msg.headline,
        "title": msg.title,
        "tier": msg.tier,
        "by": msg.by,
        "note": msg.note,
        "incident": {
            "incident_id": msg.correlation["incident"],
            "dedup_key": inc.dedup_key,
            "reason": msg.reason,
            "category": msg.category,
            "message": msg.message,
            "assessment_id": msg.assessment_id,
            "stage_id": msg.stage_id,
            "target": msg.target,
            "occurrences": msg.occurrences,
            "opened_at": inc.opened_at.isoformat() if inc.opened_at else None,
        },
        "commands": msg.commands,
        "correlation": msg.correlation,
        "merged_since": msg.merged_since,
        "capped_since": msg.capped_since,
        "sent_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def sign(secret_value: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`."""
    mac = hmac.new(secret_value.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


async def _webhook(ctx: SendContext) -> Outcome:
    url = _url(ctx)
    key = _secret(ctx, "secret")
    body = _json(webhook_payload(ctx))
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-SecFlow-Event": ctx.msg.event.value,
        "X-SecFlow-Delivery": ctx.msg.delivery_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(key, timestamp, body),
    }
    await _request(ctx, "POST", url, body=body, headers=headers)
    return Outcome()


# --------------------------------------------------------------------------------------
# PagerDuty Events API v2
# --------------------------------------------------------------------------------------
def pagerduty_event(ctx: SendContext, routing_key: str) -> dict[str, Any]:
    msg, inc = ctx.msg, ctx.req.incident
    action = PD_ACTION[ctx.req.event]
    event: dict[str, Any] = {"routing_key": routing_key, "event_action": action, "dedup_key": inc.dedup_key}
    if action == "trigger":
        channel: PagerDutyChannel = ctx.channel
        event["payload"] = {
            "summary": msg.headline[:1024],
            "source": (msg.target or channel.source)[:255],
            "severity": PD_SEVERITY[inc.severity],
            "component": msg.stage_id or None,
            "group": msg.assessment_id or None,
            "class": msg.category or None,
            "custom_details": {
                "message": msg.message,
                "reason": msg.reason,
                "occurrences": msg.occurrences,
                "tier": msg.tier,
                "commands": msg.commands,
                "merged_since": msg.merged_since,
                **msg.correlation,
            },
        }
        event["payload"] = {k: v for k, v in event["payload"].items() if v is not None}
        event["client"] = "SecFlow"
    return event


async def _pagerduty(ctx: SendContext) -> Outcome:
    channel: PagerDutyChannel = ctx.channel
    key = _secret(ctx, "routing_key")
    url = channel.base_url.rstrip("/") + "/v2/enqueue"
    response = await _request(
        ctx, "POST", url, body=_json(pagerduty_event(ctx, key)), headers={"Content-Type": "application/json"}
    )
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    return Outcome(external_ref=str(answer.get("dedup_key") or ctx.req.incident.dedup_key))


# --------------------------------------------------------------------------------------
# E-mail over SMTP (STARTTLS, AUTH), in a thread
# --------------------------------------------------------------------------------------
def email_message(ctx: SendContext) -> EmailMessage:
    channel: EmailChannel = ctx.channel
    msg = ctx.msg
    mail = EmailMessage()
    mail["Subject"] = "[SecFlow] " + msg.headline.replace("\r", " ").replace("\n", " ")[:250]
    mail["From"] = channel.sender
    mail["To"] = ", ".join(channel.to)
    mail["Date"] = formatdate(localtime=False)
    # One Message-ID per delivery (a resent retry is recognisably the same message), all
    # messages of an incident threaded under one reference.
    mail["Message-ID"] = f"<{msg.delivery_id}@secflow>"
    mail["References"] = f"<incident-{ctx.req.incident.dedup_key}@secflow>"
    mail["X-SecFlow-Delivery"] = msg.delivery_id
    mail["X-SecFlow-Severity"] = msg.severity
    mail.set_content(msg.text())
    return mail


def _smtp_send(channel: EmailChannel, password: str | None, mail: EmailMessage) -> None:
    context = ssl.create_default_context(cafile=str(channel.ca_file) if channel.ca_file else None)
    with smtplib.SMTP(channel.host, channel.port, timeout=channel.timeout.total_seconds()) as smtp:
        smtp.ehlo()
        if channel.starttls:
            if not smtp.has_extn("starttls"):
                raise PermanentError(f"SMTP server {channel.host}:{channel.port} does not offer STARTTLS")
            smtp.starttls(context=context)
            smtp.ehlo()
        if channel.username:
            smtp.login(channel.username, password or "")
        smtp.send_message(mail)


async def _email(ctx: SendContext) -> Outcome:
    channel: EmailChannel = ctx.channel
    password = _secret(ctx, "password") if channel.secret_ref("password") is not None else None
    await asyncio.to_thread(_smtp_send, channel, password, email_message(ctx))
    return Outcome(external_ref=f"<{ctx.msg.delivery_id}@secflow>")


# --------------------------------------------------------------------------------------
# Jira REST API v2
# --------------------------------------------------------------------------------------
def jira_label(dedup_key: str) -> str:
    return f"secflow-{dedup_key[:20]}"


def _jira_auth(ctx: SendContext) -> str:
    channel: JiraChannel = ctx.channel
    token = _secret(ctx, "token")
    if channel.auth == "bearer":
        return f"Bearer {token}"
    raw = f"{channel.email}:{token}".encode()
    encoded = base64.b64encode(raw).decode()
    register_secret(encoded)  # derived from the token: scrubbed from any text like it
    return "Basic " + encoded


async def _jira_call(ctx: SendContext, method: str, path: str, doc: Any = None) -> httpx.Response:
    channel: JiraChannel = ctx.channel
    base = channel.base_url.rstrip("/")
    headers = {"Authorization": _jira_auth(ctx), "Accept": "application/json"}
    body = None
    if doc is not None:
        headers["Content-Type"] = "application/json"
        body = _json(doc)
    split = urlsplit(base)
    prefix = split.path.rstrip("/")
    return await _request(ctx, method, base, body=body, headers=headers, path=prefix + path)


async def _jira_find(ctx: SendContext) -> str:
    """The incident's issue if one exists: the store first, then Jira itself (by label),
    which covers a create whose answer was lost before its key was recorded."""
    key = await asyncio.to_thread(deliveries.external_ref_for, ctx.store, ctx.req.incident.dedup_key, ctx.name)
    if key:
        return key
    channel: JiraChannel = ctx.channel
    jql = f'project = "{channel.project}" AND labels = "{jira_label(ctx.req.incident.dedup_key)}" ORDER BY created ASC'
    response = await _jira_call(ctx, "GET", "/rest/api/2/search?" + urlencode({"jql": jql, "fields": "key", "maxResults": "1"}))
    issues = response.json().get("issues") or []
    return str(issues[0].get("key") or "") if issues else ""


async def _jira(ctx: SendContext) -> Outcome:
    channel: JiraChannel = ctx.channel
    event = ctx.req.event
    msg = ctx.msg
    key = await _jira_find(ctx)
    if not key:
        if event not in (IncidentEvent.TRIGGER, IncidentEvent.ESCALATE):
            return Outcome(status="skipped")  # nothing was ever filed: nothing to update
        labels = [*channel.labels, jira_label(ctx.req.incident.dedup_key), f"secflow-{msg.severity}"]
        doc = {
            "fields": {
                "project": {"key": channel.project},
                "issuetype": {"name": channel.issue_type},
                "summary": msg.headline.replace("\n", " ")[:250],
                "description": msg.text()[:30000],
                "labels": labels,
            }
        }
        created = (await _jira_call(ctx, "POST", "/rest/api/2/issue", doc)).json()
        key = str(created.get("key") or "")
        if not key:
            raise ChannelError(
                f"channel {ctx.name} (jira): issue created without a key", classify("malformed answer", tool="jira")
            )
        # Remember it at once: a later event (or a retry) comments on this issue.
        await asyncio.to_thread(deliveries.set_external_ref, ctx.store, ctx.delivery_id, key)
        return Outcome(external_ref=key)
    if event is IncidentEvent.RESOLVE:
        await _jira_resolve(ctx, key)
        return Outcome(external_ref=key)
    await _jira_call(ctx, "POST", f"/rest/api/2/issue/{key}/comment", {"body": msg.text()[:30000]})
    return Outcome(external_ref=key)


async def _jira_resolve(ctx: SendContext, key: str) -> None:
    channel: JiraChannel = ctx.channel
    wanted = channel.transitions.resolve
    listed = (await _jira_call(ctx, "GET", f"/rest/api/2/issue/{key}/transitions")).json().get("transitions") or []
    match = next((t for t in listed if str(t.get("name", "")).lower() == wanted.lower()), None)
    if match is None:
        names = ", ".join(str(t.get("name")) for t in listed) or "none"
        raise PermanentError(f"channel {ctx.name} (jira): no transition named {wanted!r} for {key} (available: {names})")
    doc = {"transition": {"id": str(match["id"])}, "update": {"comment": [{"add": {"body": ctx.msg.text()[:30000]}}]}}
    await _jira_call(ctx, "POST", f"/rest/api/2/issue/{key}/transitions", doc)
