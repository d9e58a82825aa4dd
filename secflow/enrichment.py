"""CVE enrichment: pure parsers for the NVD, EPSS and CISA KEV wire formats (no I/O).

Each parser takes the decoded JSON document a service answered and returns SecFlow's
models. A document of the wrong shape (a proxy's HTML error page decoded by luck, a
JSON error object, a truncated or renamed field) is the service's "unusable output":
`secflow.errors.ExternalToolError`, never a `KeyError`/`TypeError` (which `classify()`
would call our own bug) and never a silently empty result.

Formats (as documented by each service):
- NVD CVE API 2.0, https://nvd.nist.gov/developers/vulnerabilities:
  ``{"resultsPerPage", "startIndex", "totalResults", "format": "NVD_CVE", "version": "2.0",
  "vulnerabilities": [{"cve": {...}}]}``; ``totalResults: 0`` means "no such CVE".
- FIRST EPSS API, https://www.first.org/epss/api: ``{"status": "OK", "data": [{"cve",
  "epss", "percentile", "date"}], "total", "offset", "limit"}``; numbers are strings.
- CISA KEV catalog, https://www.cisa.gov/known-exploited-vulnerabilities-catalog:
  ``{"catalogVersion", "dateReleased", "count", "vulnerabilities": [{"cveID", ...}]}``.

The HTTP side (rate limits, retries, batching) lives elsewhere; these functions only read.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secflow.errors import ExternalToolError

__all__ = [
    "CVE_ID",
    "EnrichedCve",
    "EpssScore",
    "KevEntry",
    "NvdRecord",
    "parse_epss",
    "parse_kev",
    "parse_nvd",
]

#: A CVE identifier as assigned by MITRE: year, then at least four digits.
CVE_ID = re.compile(r"CVE-\d{4}-\d{4,}")
_CWE = re.compile(r"CWE-\d+")


class NvdRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    cve_id: str
    description: str = ""
    published: datetime | None = None
    last_modified: datetime | None = None
    vuln_status: str = ""
    cvss3_score: float | None = Field(default=None, ge=0, le=10)
    cvss3_vector: str | None = None
    cvss3_severity: str | None = None
    cvss4_score: float | None = Field(default=None, ge=0, le=10)
    cvss4_vector: str | None = None
    cwe_ids: tuple[str, ...] = ()


class EpssScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    cve_id: str
    probability: float = Field(ge=0, le=1)
    percentile: float = Field(ge=0, le=1)
    date: date


class KevEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    cve_id: str
    vendor_project: str = ""
    product: str = ""
    name: str = ""
    date_added: date
    due_date: date | None = None
    known_ransomware_use: bool = False
    required_action: str = ""


class EnrichedCve(BaseModel):
    """What enrichment knows about one CVE; `partial` when a service could not answer."""

    model_config = ConfigDict(frozen=True)

    cve_id: str
    nvd: NvdRecord | None = None
    epss: EpssScore | None = None
    kev: KevEntry | None = None
    fetched_at: datetime
    partial: bool = False
    partial_reason: str = ""

    @property
    def in_kev(self) -> bool:
        """Known exploited (as far as the KEV catalog we read says)."""
        return self.kev is not None


def _bad(service: str, why: str) -> ExternalToolError:
    return ExternalToolError(f"{service}: unusable response ({why})")


def _obj(value: Any, service: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(service, f"{what} is {type(value).__name__}, not an object")
    return value


def _list(value: Any, service: str, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(service, f"{what} is {type(value).__name__}, not a list")
    return value


# --- NVD ------------------------------------------------------------------------------
def _primary_metric(metrics: dict[str, Any], key: str) -> dict[str, Any] | None:
    """NVD's own ("Primary", nvd@nist.gov) score first, else the first CNA score."""
    entries = _list(metrics.get(key, []), "NVD", f"metrics.{key}")
    if not entries:
        return None
    entries = [_obj(e, "NVD", f"metrics.{key}[]") for e in entries]
    entries.sort(key=lambda e: 0 if e.get("type") == "Primary" else 1)
    data = _obj(entries[0].get("cvssData"), "NVD", f"metrics.{key}[].cvssData")
    return data


def parse_nvd(payload: dict[str, Any]) -> NvdRecord | None:
    """The one CVE in an NVD CVE API 2.0 answer to ``?cveId=``; None when NVD has none."""
    doc = _obj(payload, "NVD", "the document")
    if doc.get("format") not in (None, "NVD_CVE") or "totalResults" not in doc:
        raise _bad("NVD", "not an NVD_CVE document")
    vulns = _list(doc.get("vulnerabilities", []), "NVD", "vulnerabilities")
    if doc["totalResults"] == 0 or not vulns:
        if doc["totalResults"] not in (0, None):
            raise _bad("NVD", "totalResults > 0 but no vulnerabilities")
        return None
    cve = _obj(_obj(vulns[0], "NVD", "vulnerabilities[0]").get("cve"), "NVD", "vulnerabilities[0].cve")
    cve_id = cve.get("id")
    if not isinstance(cve_id, str) or not CVE_ID.fullmatch(cve_id):
        raise _bad("NVD", f"cve.id {cve_id!r} is not a CVE id")
    metrics = _obj(cve.get("metrics", {}), "NVD", "metrics")
    v3 = _primary_metric(metrics, "cvssMetricV31") or _primary_metric(metrics, "cvssMetricV30")
    v4 = _primary_metric(metrics, "cvssMetricV40")
    description = ""
    for d in _list(cve.get("descriptions", []), "NVD", "descriptions"):
        if isinstance(d, dict) and d.get("lang") == "en":
            description = str(d.get("value", ""))
            break
    cwes: list[str] = []
    for weakness in _list(cve.get("weaknesses", []), "NVD", "weaknesses"):
        for d in _list(_obj(weakness, "NVD", "weaknesses[]").get("description", []), "NVD", "weaknesses[].description"):
            value = d.get("value") if isinstance(d, dict) else None
            # NVD also uses "NVD-CWE-Other" / "NVD-CWE-noinfo": not CWE ids.
            if isinstance(value, str) and _CWE.fullmatch(value) and value not in cwes:
                cwes.append(value)
    try:
        return NvdRecord(
            cve_id=cve_id,
            description=description,
            published=cve.get("published"),
            last_modified=cve.get("lastModified"),
            vuln_status=str(cve.get("vulnStatus", "")),
            cvss3_score=v3.get("baseScore") if v3 else None,
            cvss3_vector=v3.get("vectorString") if v3 else None,
            cvss3_severity=v3.get("baseSeverity") if v3 else None,
            cvss4_score=v4.get("baseScore") if v4 else None,
            cvss4_vector=v4.get("vectorString") if v4 else None,
            cwe_ids=tuple(cwes),
        )
    except ValidationError as exc:
        raise _bad("NVD", f"{exc.error_count()} invalid field(s): {_fields(exc)}") from None


# --- EPSS -----------------------------------------------------------------------------
def parse_epss(payload: dict[str, Any]) -> dict[str, EpssScore]:
    """EPSS scores by CVE id, for one page of ``/data/v1/epss``. CVEs EPSS lacks are absent."""
    doc = _obj(payload, "EPSS", "the document")
    if doc.get("status") != "OK" or "data" not in doc:
        raise _bad("EPSS", f"status {doc.get('status')!r}")
    out: dict[str, EpssScore] = {}
    for row in _list(doc["data"], "EPSS", "data"):
        row = _obj(row, "EPSS", "data[]")
        cve_id = row.get("cve")
        if not isinstance(cve_id, str) or not CVE_ID.fullmatch(cve_id):
            raise _bad("EPSS", f"data[].cve {cve_id!r} is not a CVE id")
        try:
            out[cve_id] = EpssScore.model_validate(
                {"cve_id": cve_id, "probability": row.get("epss"), "percentile": row.get("percentile"), "date": row.get("date")}
            )
        except ValidationError as exc:
            raise _bad("EPSS", f"{cve_id}: {_fields(exc)}") from None
    return out


# --- KEV ------------------------------------------------------------------------------
def parse_kev(payload: dict[str, Any]) -> dict[str, KevEntry]:
    """The KEV catalog by CVE id."""
    doc = _obj(payload, "KEV", "the document")
    if "catalogVersion" not in doc or "vulnerabilities" not in doc:
        raise _bad("KEV", "not a KEV catalog")
    out: dict[str, KevEntry] = {}
    for row in _list(doc["vulnerabilities"], "KEV", "vulnerabilities"):
        row = _obj(row, "KEV", "vulnerabilities[]")
        cve_id = row.get("cveID")
        if not isinstance(cve_id, str) or not CVE_ID.fullmatch(cve_id):
            raise _bad("KEV", f"cveID {cve_id!r} is not a CVE id")
        try:
            out[cve_id] = KevEntry.model_validate(
                {
                    "cve_id": cve_id,
                    "vendor_project": str(row.get("vendorProject", "")),
                    "product": str(row.get("product", "")),
                    "name": str(row.get("vulnerabilityName", "")),
                    "date_added": row.get("dateAdded"),
                    "due_date": row.get("dueDate") or None,
                    # "Known" or "Unknown" in the catalog.
                    "known_ransomware_use": str(row.get("knownRansomwareCampaignUse", "")).lower() == "known",
                    "required_action": str(row.get("requiredAction", "")),
                }
            )
        except ValidationError as exc:
            raise _bad("KEV", f"{cve_id}: {_fields(exc)}") from None
    return out


def _fields(exc: ValidationError) -> str:
    return ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors())
