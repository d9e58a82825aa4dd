"""The normalised finding: what every tool produces and the store keeps.

A finding's identity is its fingerprint, a hash of what makes it *the same problem*
(tool, rule, target, location) and nothing that changes between runs or retries
(time, attempt, assessment). That is what lets a retried activity upsert instead of
duplicating, and a re-run assessment update `last_seen` instead of adding a row.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class Severity(str, Enum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


SEVERITY_ORDER: tuple[Severity, ...] = (
    Severity.CRITICAL,
    Severity.HIGH,
    Severity.MEDIUM,
    Severity.LOW,
    Severity.INFO,
)


class Confidence(str, Enum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


def fingerprint(tool: str, rule_id: str, target: str, location: str) -> str:
    """Stable identity of a finding: same inputs, same id, on any machine, any run."""
    material = "\x1f".join((tool, rule_id, target, location)).encode("utf-8")
    return hashlib.sha256(material).hexdigest()


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Finding(BaseModel):
    """One normalised finding. Evidence must already be redacted when it gets here."""

    model_config = ConfigDict(extra="forbid")

    fingerprint: str
    tool: str
    rule_id: str
    title: str
    severity: Severity
    confidence: Confidence = Confidence.MEDIUM
    target: str
    location: str
    cwe: list[str] = Field(default_factory=list)
    cve: list[str] = Field(default_factory=list)
    evidence: str = ""
    first_seen: datetime = Field(default_factory=_utcnow)
    last_seen: datetime = Field(default_factory=_utcnow)
    assessment_id: str = ""

    @classmethod
    def new(
        cls,
        *,
        tool: str,
        rule_id: str,
        title: str,
        severity: Severity,
        target: str,
        location: str,
        confidence: Confidence = Confidence.MEDIUM,
        cwe: list[str] | None = None,
        cve: list[str] | None = None,
        evidence: str = "",
        assessment_id: str = "",
    ) -> "Finding":
        """Build a finding and derive its fingerprint, so callers cannot get it wrong."""
        return cls(
            fingerprint=fingerprint(tool, rule_id, target, location),
            tool=tool,
            rule_id=rule_id,
            title=title,
            severity=severity,
            confidence=confidence,
            target=target,
            location=location,
            cwe=list(cwe or []),
            cve=list(cve or []),
            evidence=evidence,
            assessment_id=assessment_id,
        )
