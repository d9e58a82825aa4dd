"""What an alert says: one `AlertMessage` per delivery, rendered by each channel its own way.

Every piece of text that leaves in an alert passes `clean()` first: stack traces are
removed (a person needs the error, not our frames, and frames carry paths and values) and
`secflow.redaction.redact` takes out secrets. Correlation ids (incident id, the
assessment's workflow id and run id, the trace id) travel on every message, so whoever
reads it can find the run in the Web UI and the log lines that belong to it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from secflow.incidents import AlertRequest, IncidentEvent, IncidentRef
from secflow.redaction import redact

__all__ = ["AlertMessage", "build_message", "clean", "group_key", "normalise", "strip_stack_traces"]

MAX_MESSAGE = 1500  # characters of the error message in a body
MAX_TITLE = 200

_TRACEBACK_START = re.compile(r"^\s*Traceback \(most recent call last\):\s*$")
_PY_FRAME = re.compile(r'^\s*File "[^"]*", line \d+')
_CHAINED = re.compile(
    r"^\s*(During handling of the above exception, another exception occurred:|"
    r"The above exception was the direct cause of the following exception:)\s*$"
)
_JAVA_FRAME = re.compile(r"^\s+at [\w$.<>/]+\(.*\)\s*$|^\s+\.\.\. \d+ more\s*$")
_GO_FRAME = re.compile(r"^goroutine \d+ \[.*\]:\s*$|^\s+/\S+\.go:\d+")
TRACE_REMOVED = "[stack trace removed]"


def strip_stack_traces(text: str) -> str:
    """Drop Python, Java and Go stack frames; keep the final `Type: message` lines."""
    out: list[str] = []
    in_trace = False
    removed = False
    for line in text.splitlines():
        if _TRACEBACK_START.match(line) or _CHAINED.match(line):
            in_trace, removed = True, True
            continue
        if in_trace:
            # Inside a Python traceback every frame line and its source line is indented;
            # the first line that is not is the exception itself.
            if not line.strip() or line[:1].isspace():
                continue
            in_trace = False
        if _PY_FRAME.match(line) or _JAVA_FRAME.match(line) or _GO_FRAME.match(line):
            removed = True
            continue
        out.append(line)
    result = "\n".join(out).strip()
    if removed:
        result = f"{result}\n{TRACE_REMOVED}" if result else TRACE_REMOVED
    return result


def clean(text: str, limit: int | None = None) -> str:
    """Safe to send: stack traces removed, secrets redacted, cut to `limit` characters."""
    result = redact(strip_stack_traces(text or ""))
    if limit is not None and len(result) > limit:
        result = result[: limit - 12].rstrip() + " ...[cut]"
    return result


_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_HEX = re.compile(r"\b[0-9a-f]{8,}\b")
_NUMBER = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")


def normalise(message: str) -> str:
    """The message with what varies between repeats (ids, numbers, spacing) flattened, so
    "timeout after 30.2s on 10.0.0.5:443" and "... 31.0s on 10.0.0.7:443" group together."""
    text = clean(message).lower()
    text = _UUID.sub("<id>", text)
    text = _HEX.sub("<id>", text)
    text = _NUMBER.sub("#", text)
    return _SPACE.sub(" ", text).strip()


def group_key(channel: str, incident: IncidentRef, event: IncidentEvent) -> str:
    """Alerts with this key on this channel are "identical" for cooldown merging. The event
    is part of it: a trigger never merges into an escalation, nor the other way round."""
    raw = "\x1f".join(
        (channel, incident.severity.value, incident.category, incident.stage_id, event.value, normalise(incident.message))
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


_EVENT_WORDS = {
    IncidentEvent.TRIGGER: "",
    IncidentEvent.ESCALATE: "ESCALATED",
    IncidentEvent.ACKNOWLEDGE: "Acknowledged",
    IncidentEvent.RESOLVE: "Resolved",
    IncidentEvent.SUMMARY: "Daily summary",
}


@dataclass
class AlertMessage:
    """Everything a channel renders; every string already clean."""

    delivery_id: str
    event: IncidentEvent
    severity: str
    headline: str  # one line: "[P1] ESCALATED (tier 2): <title>"
    title: str
    message: str
    assessment_id: str
    stage_id: str
    target: str
    category: str
    reason: str
    occurrences: int
    tier: int
    by: str
    note: str
    commands: list[str]
    correlation: dict[str, str]
    merged_since: int = 0  # identical alerts merged into the previous one of this group
    capped_since: int = 0  # alerts held back by the channel's hourly cap since its last message
    extra_lines: list[str] = field(default_factory=list)

    def text(self) -> str:
        """Plain text: the e-mail body, Slack's fallback, a Jira description/comment."""
        lines = [self.headline, ""]
        if self.event in (IncidentEvent.ACKNOWLEDGE, IncidentEvent.RESOLVE):
            who = f"by {self.by}" if self.by else ""
            lines.append(f"{_EVENT_WORDS[self.event]} {who}".strip() + (f": {self.note}" if self.note else ""))
            lines.append("")
        lines += [
            f"Severity:    {self.severity}",
            f"Assessment:  {self.assessment_id}",
            f"Stage:       {self.stage_id or '-'}",
            f"Target:      {self.target or '-'}",
            f"Error:       {self.category} ({self.reason})",
            f"Occurrences: {self.occurrences}",
            "",
            "Message:",
            self.message or "-",
        ]
        lines += self.notices()
        if self.commands:
            lines += ["", "To answer:"] + [f"  {c}" for c in self.commands]
        lines += ["", "Correlation: " + ", ".join(f"{k}={v}" for k, v in self.correlation.items() if v)]
        return "\n".join(lines)

    def notices(self) -> list[str]:
        out = []
        if self.merged_since:
            out.append(f"({self.merged_since} identical alert(s) merged since the previous one)")
        if self.capped_since:
            out.append(f"({self.capped_since} alert(s) held back by this channel's hourly cap)")
        return ["", *out] if out else []


def build_message(req: AlertRequest, delivery_id: str, *, merged_since: int = 0, capped_since: int = 0) -> AlertMessage:
    inc = req.incident
    word = _EVENT_WORDS[req.event]
    if req.event is IncidentEvent.ESCALATE:
        word = f"ESCALATED (tier {req.tier})"
    title = clean(inc.title, MAX_TITLE).replace("\n", " ")
    headline = f"[{inc.severity.value}] " + (f"{word}: " if word else "") + title
    correlation = {
        "incident": clean(inc.incident_id),
        "workflow_id": clean(inc.workflow_id),
        "run_id": clean(inc.run_id),
        "trace_id": clean(inc.trace_id),
        "dedup_key": inc.dedup_key,
    }
    return AlertMessage(
        delivery_id=delivery_id,
        event=req.event,
        severity=inc.severity.value,
        headline=headline,
        title=title,
        message=clean(inc.message, MAX_MESSAGE),
        assessment_id=clean(inc.assessment_id),
        stage_id=clean(inc.stage_id),
        target=clean(inc.target),
        category=clean(inc.category),
        reason=clean(inc.reason),
        occurrences=inc.occurrences,
        tier=req.tier,
        by=clean(req.by, 200).replace("\n", " "),
        note=clean(req.note, 1000),
        commands=[clean(c, 500) for c in inc.commands],
        correlation=correlation,
        merged_since=merged_since,
        capped_since=capped_since,
    )
