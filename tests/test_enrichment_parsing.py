"""The NVD / EPSS / KEV parsers on the shipped real-CVE fixtures and on malformed payloads."""

from __future__ import annotations

import copy
import json
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from secflow.enrichment import EnrichedCve, parse_epss, parse_kev, parse_nvd
from secflow.errors import Category, ExternalToolError, classify

FIXTURES = Path(__file__).parent / "fixtures" / "enrich"
NVD = json.loads((FIXTURES / "nvd.json").read_text())["vulnerabilities"]
EPSS = json.loads((FIXTURES / "epss.json").read_text())
KEV = json.loads((FIXTURES / "kev.json").read_text())
BY_ID = {v["cve"]["id"]: v for v in NVD}


def envelope(*vulns: dict[str, Any]) -> dict[str, Any]:
    return {
        "resultsPerPage": len(vulns),
        "startIndex": 0,
        "totalResults": len(vulns),
        "format": "NVD_CVE",
        "version": "2.0",
        "timestamp": "2025-01-15T16:00:00.000",
        "vulnerabilities": list(vulns),
    }


def test_fixtures_are_consistent() -> None:
    ids = [v["cve"]["id"] for v in NVD]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    assert {r["cve"] for r in EPSS["data"]} == set(ids)
    assert {k["cveID"] for k in KEV["vulnerabilities"]} <= set(ids)
    assert KEV["count"] == len(KEV["vulnerabilities"])
    for wanted in ("CVE-2019-10906", "CVE-2020-1747", "CVE-2020-14343", "CVE-2018-18074", "CVE-2019-11236", "CVE-2019-11324"):
        assert wanted in BY_ID


@pytest.mark.parametrize("cve_id", sorted(BY_ID))
def test_parse_nvd_every_fixture(cve_id: str) -> None:
    record = parse_nvd(envelope(BY_ID[cve_id]))
    assert record is not None and record.cve_id == cve_id
    assert record.cvss3_score is not None and record.cvss3_vector and record.cvss3_vector.startswith("CVSS:3.")
    assert record.cvss3_severity in {"LOW", "MEDIUM", "HIGH", "CRITICAL"}
    assert record.cwe_ids and all(c.startswith("CWE-") for c in record.cwe_ids)
    assert record.description


def test_parse_nvd_log4shell() -> None:
    record = parse_nvd(envelope(BY_ID["CVE-2021-44228"]))
    assert record is not None
    assert record.cvss3_score == 10.0
    assert record.cvss3_vector == "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H"
    assert record.cvss3_severity == "CRITICAL"
    assert record.cvss4_score is None
    assert "CWE-917" in record.cwe_ids
    assert record.published == datetime(2021, 12, 10, 10, 15, 9, 143000)


def test_parse_nvd_v30_only_record() -> None:
    record = parse_nvd(envelope(BY_ID["CVE-2018-18074"]))
    assert record is not None
    assert record.cvss3_vector == "CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"
    assert record.cvss3_score == 7.5 and record.cwe_ids == ("CWE-522",)


def test_parse_nvd_v40_and_secondary_and_noinfo() -> None:
    # Synthetic record built from a fixture: shapes as NVD serves them (a CNA "Secondary"
    # v3.1 score next to NVD's "Primary" one, a v4.0 metric, NVD-CWE-noinfo).
    vuln = copy.deepcopy(BY_ID["CVE-2021-44228"])
    metrics = vuln["cve"]["metrics"]
    secondary = copy.deepcopy(metrics["cvssMetricV31"][0])
    secondary.update(source="cna@example.org", type="Secondary")
    secondary["cvssData"]["baseScore"] = 9.9
    metrics["cvssMetricV31"].insert(0, secondary)
    metrics["cvssMetricV40"] = [
        {
            "source": "cna@example.org",
            "type": "Secondary",
            "cvssData": {
                "version": "4.0",
                "vectorString": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
                "baseScore": 9.3,
                "baseSeverity": "CRITICAL",
            },
        }
    ]
    vuln["cve"]["weaknesses"].append({"source": "x", "type": "Secondary", "description": [{"lang": "en", "value": "NVD-CWE-noinfo"}]})
    record = parse_nvd(envelope(vuln))
    assert record is not None
    assert record.cvss3_score == 10.0  # the Primary one
    assert record.cvss4_score == 9.3 and record.cvss4_vector.startswith("CVSS:4.0/")
    assert "NVD-CWE-noinfo" not in record.cwe_ids


def test_parse_nvd_unknown_cve_is_none() -> None:
    assert parse_nvd(envelope()) is None


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "<html>503</html>",
        {},
        {"message": "Invalid apiKey"},
        {**envelope(), "format": "OTHER"},
        {**envelope(), "totalResults": 1},
        {**envelope(), "vulnerabilities": "nope"},
        envelope({"nope": {}}),
        envelope({"cve": {"id": "not-a-cve"}}),
        envelope({"cve": {"id": "CVE-2021-44228", "metrics": []}}),
        envelope({"cve": {"id": "CVE-2021-44228", "metrics": {"cvssMetricV31": [{"cvssData": "x"}]}}}),
        envelope({"cve": {"id": "CVE-2021-44228", "metrics": {"cvssMetricV31": [{"cvssData": {"baseScore": 42}}]}}}),
        envelope({"cve": {"id": "CVE-2021-44228", "published": "yesterday"}}),
        envelope({"cve": {"id": "CVE-2021-44228", "weaknesses": [{"description": 3}]}}),
    ],
)
def test_parse_nvd_malformed(payload: Any) -> None:
    with pytest.raises(ExternalToolError) as info:
        parse_nvd(payload)
    assert classify(info.value).category is Category.EXTERNAL_TOOL


def test_parse_epss() -> None:
    scores = parse_epss(EPSS)
    assert set(scores) == {v["cve"]["id"] for v in NVD}
    log4shell = scores["CVE-2021-44228"]
    assert 0 <= log4shell.probability <= 1 and 0 <= log4shell.percentile <= 1
    assert log4shell.date == date(2025, 1, 15)
    assert parse_epss({**EPSS, "data": [], "total": 0}) == {}


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {"status": "error", "message": "bad"},
        {"status": "OK"},
        {"status": "OK", "data": {}},
        {"status": "OK", "data": [{"cve": "x", "epss": "0.1", "percentile": "0.2", "date": "2025-01-15"}]},
        {"status": "OK", "data": [{"cve": "CVE-2021-44228", "epss": "high", "percentile": "0.2", "date": "2025-01-15"}]},
        {"status": "OK", "data": [{"cve": "CVE-2021-44228", "epss": "1.5", "percentile": "0.2", "date": "2025-01-15"}]},
        {"status": "OK", "data": [{"cve": "CVE-2021-44228", "epss": "0.1", "percentile": "0.2"}]},
    ],
)
def test_parse_epss_malformed(payload: Any) -> None:
    with pytest.raises(ExternalToolError):
        parse_epss(payload)


def test_parse_kev() -> None:
    kev = parse_kev(KEV)
    assert len(kev) == KEV["count"]
    log4shell = kev["CVE-2021-44228"]
    assert log4shell.date_added == date(2021, 12, 10) and log4shell.due_date == date(2021, 12, 24)
    assert log4shell.known_ransomware_use is True
    assert kev["CVE-2014-0160"].known_ransomware_use is False
    assert "CVE-2024-3094" not in kev


@pytest.mark.parametrize(
    "payload",
    [
        "x",
        {"vulnerabilities": []},
        {"catalogVersion": "1", "vulnerabilities": {}},
        {"catalogVersion": "1", "vulnerabilities": ["CVE-2021-44228"]},
        {"catalogVersion": "1", "vulnerabilities": [{"cveID": "CVE-2021-44228"}]},
        {"catalogVersion": "1", "vulnerabilities": [{"cveID": "CVE-2021-44228", "dateAdded": "soon"}]},
        {"catalogVersion": "1", "vulnerabilities": [{"cveID": None, "dateAdded": "2021-12-10"}]},
    ],
)
def test_parse_kev_malformed(payload: Any) -> None:
    with pytest.raises(ExternalToolError):
        parse_kev(payload)


def test_enriched_cve_combines() -> None:
    cve = "CVE-2021-44228"
    now = datetime(2025, 1, 15, tzinfo=timezone.utc)
    full = EnrichedCve(
        cve_id=cve,
        nvd=parse_nvd(envelope(BY_ID[cve])),
        epss=parse_epss(EPSS)[cve],
        kev=parse_kev(KEV)[cve],
        fetched_at=now,
    )
    assert full.in_kev and not full.partial and full.nvd is not None and full.nvd.cvss3_score == 10.0
    again = EnrichedCve.model_validate_json(full.model_dump_json())
    assert again == full
    partial = EnrichedCve(cve_id=cve, fetched_at=now, partial=True, partial_reason="NVD: HTTP 503 after 3 attempts")
    assert partial.nvd is None and partial.partial and not partial.in_kev
