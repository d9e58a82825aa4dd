"""The normalised finding: what every tool produces and the store keeps.

A finding's identity is its fingerprint, a hash of what makes it *the same problem*
(tool, rule, target, location) and nothing that changes between runs or retries
(time, attempt, assessment). That is what lets a retried activity upsert instead of
duplicating, and a re-run assessment update `last_seen` instead of adding a row.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secflow.tools import REGISTERED_ACTIVITY


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
    """Stable identity of a finding: same inputs, same id, on any machine, any run.

    A renamed tool (secflow/tools.py: `http_headers` is now `http-headers`) is
    fingerprinted under its first name, so its alerts keep matching across the rename."""
    tool = REGISTERED_ACTIVITY.get(tool, tool)
    material = "\x1f".join((tool, rule_id, target, location)).encode("utf-8")
    return hashlib.sha256(material).hexdigest()


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CveEnrichment(BaseModel):
    """What the `cve-enrich` stage learned about one CVE of a finding (flat, for reports).

    `status` says how good the data is: ``enriched`` (fetched by this enrichment, or a
    cache entry younger than the stage's `max_age`), ``stale`` (a service was down and an
    older cache entry was used: `stale_age_seconds` old when used, `stale_reason` why), or
    ``partial`` (a service was down and nothing was cached: the fields of that service are
    empty and `partial_reason` says which and why).
    """

    model_config = ConfigDict(frozen=True)

    cve_id: str
    status: Literal["enriched", "stale", "partial"] = "enriched"
    # NVD
    cvss3_score: float | None = None
    cvss3_vector: str | None = None
    cvss3_severity: str | None = None
    cvss4_score: float | None = None
    cvss4_vector: str | None = None
    cwe: list[str] = Field(default_factory=list)
    description: str = ""
    # FIRST EPSS
    epss_probability: float | None = None
    epss_percentile: float | None = None
    epss_date: date | None = None
    # CISA KEV
    in_kev: bool = False
    kev_date_added: date | None = None
    kev_due_date: date | None = None
    kev_ransomware: bool = False
    # provenance
    fetched_at: datetime | None = None
    stale: bool = False
    stale_age_seconds: float | None = None
    stale_reason: str = ""
    partial: bool = False
    partial_reason: str = ""

    @property
    def cvss_score(self) -> float | None:
        """The score to rank by: CVSS v3.x (NVD's primary) when there is one, else v4.0."""
        return self.cvss3_score if self.cvss3_score is not None else self.cvss4_score

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> CveEnrichment:
        """From what `cve-enrich` writes onto a finding (an `EnrichedCve` dump + status)."""
        nvd = payload.get("nvd") or {}
        epss = payload.get("epss") or {}
        kev = payload.get("kev") or {}
        status: Literal["enriched", "stale", "partial"] = payload.get("status") or (
            "partial" if payload.get("partial") else "enriched"
        )
        return cls(
            cve_id=payload["cve_id"],
            status=status,
            cvss3_score=nvd.get("cvss3_score"),
            cvss3_vector=nvd.get("cvss3_vector"),
            cvss3_severity=nvd.get("cvss3_severity"),
            cvss4_score=nvd.get("cvss4_score"),
            cvss4_vector=nvd.get("cvss4_vector"),
            cwe=list(nvd.get("cwe_ids") or []),
            description=nvd.get("description") or "",
            epss_probability=epss.get("probability"),
            epss_percentile=epss.get("percentile"),
            epss_date=epss.get("date"),
            in_kev=bool(kev),
            kev_date_added=kev.get("date_added"),
            kev_due_date=kev.get("due_date"),
            kev_ransomware=bool(kev.get("known_ransomware_use")),
            fetched_at=payload.get("fetched_at"),
            stale=bool(payload.get("stale")) or status == "stale",
            stale_age_seconds=payload.get("stale_age_seconds"),
            stale_reason=payload.get("stale_reason") or "",
            partial=bool(payload.get("partial")) or status == "partial",
            partial_reason=payload.get("partial_reason") or "",
        )


class FindingEnrichment(BaseModel):
    """Enrichment attached to a finding: one entry per CVE of the finding.

    Not part of the finding's identity (the fingerprint ignores it) and not written by
    `upsert_findings`: the `cve-enrich` stage sets it, `list_findings` reads it back.
    `unreadable` is set (and `cves` empty) when the stored value could not be read.
    """

    model_config = ConfigDict(frozen=True)

    cves: list[CveEnrichment] = Field(default_factory=list)
    unreadable: str = ""

    @property
    def partial(self) -> bool:
        return any(c.partial for c in self.cves)

    @property
    def stale(self) -> bool:
        return any(c.stale for c in self.cves)

    @property
    def cvss_score(self) -> float | None:
        scores = [c.cvss_score for c in self.cves if c.cvss_score is not None]
        return max(scores) if scores else None

    @classmethod
    def from_stored(cls, raw: str | None) -> FindingEnrichment | None:
        """Parse the `findings.enrichment` column (``{"cves": [payload, ...]}``); None if unset."""
        if raw is None or raw == "":
            return None
        try:
            doc = json.loads(raw)
            return cls(cves=[CveEnrichment.from_payload(p) for p in doc["cves"]])
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            # A report must still be written: it says the enrichment could not be read,
            # and the log says why (classified like any other failure).
            from secflow.errors import classify
            from secflow.logging import get_logger

            verdict = classify(exc)
            get_logger(component="findings").error(
                "stored finding enrichment unreadable",
                category=verdict.category.value,
                reason=verdict.reason,
                error=str(exc)[:200],
            )
            return cls(unreadable=f"{type(exc).__name__}: {str(exc)[:200]}")


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
    # Set by the `cve-enrich` stage (see FindingEnrichment); never part of the fingerprint.
    enrichment: FindingEnrichment | None = None

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
    ) -> Finding:
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
