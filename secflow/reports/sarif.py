"""SARIF 2.1.0 for code-scanning tools (validates against the OASIS schema; uploads to GitHub).

Structure decisions (the GitHub upload rules they meet are checked in tests/test_sarif_github.py):
- one `run` per tool, so a code-scanning service keeps each tool's alerts apart; an
  assessment with no tool at all still gets one empty `secflow` run, so an upload says
  "nothing found" rather than being refused;
- `automationDetails.id` is `secflow/<spec name>/<tool>/<assessment id>`: GitHub takes
  everything before the last `/` as the category (stable across runs of the same spec and
  tool, so alerts are tracked from one run to the next and two tools never close each
  other's alerts) and the assessment id as the run;
- the driver is the scanner: `name` (SecFlow's tool name, stable across uploads),
  `fullName`, `version` (the version that ran: package metadata or `--version`, see
  `tool_info.py`; `semanticVersion` too when it is one), `informationUri`;
- rules are the distinct `rule_id`s of the tool's findings: `shortDescription`,
  `fullDescription`, `help` (text + markdown: what was found, how to fix it and the
  references: CWE, OWASP Top 10, advisories, CVEs; from `remediation.py`), `helpUri`,
  `defaultConfiguration.level` and `properties.security-severity` from the most severe
  finding of the rule, `properties.tags` (at most 10: `security`, CWE ids, GitHub's
  `external/cwe/cwe-079` form, OWASP categories);
- results carry `ruleId`/`ruleIndex`, `level` (critical/high -> error, medium ->
  warning, low/info -> note), a message, exactly one location and
  `partialFingerprints["secflowFingerprint/v1"]` = the finding's fingerprint, which is
  what code scanning uses to match an alert across runs;
- a file finding (`path:line` of a path target) gets an artifact URI relative to the
  root of the repository that holds the target (the nearest directory above it with a
  `.git`; the target itself when there is none) with `uriBaseId` `SRCROOT` (`SRCROOT2`, ...
  for further repositories), and `originalUriBaseIds` gives each its absolute `file:`
  URI ending in `/`; an absolute path outside every root stays an absolute `file:` URI;
- anything else (an open port, a URL, a TLS endpoint, a CVE) is not a file: its location
  is a `logicalLocation` (kind `resource`) naming the URL or `host:port`, with `url`,
  `host`, `port` in the location's and the result's properties. GitHub refuses a result
  without a physical location, so it also gets a relative one under the base id
  `SECFLOW_TARGET` (`secflow-target:/`, described as "not a file"), `<host>/<port><path>`,
  never a `tcp://` or `http://` artifact;
- CVE enrichment (the `cve-enrich` stage) goes into each result's
  `properties.enrichment` (per CVE: CVSS v3.x/v4.0 score and vector, CWE, description,
  EPSS probability and percentile, KEV flag and due date, when it was fetched, and
  `stale`/`stale_age_seconds`/`partial` with the reason); the result message says when it
  is stale or partial. A rule's `security-severity` is the highest CVSS base score of its
  findings' CVEs where there is one (GitHub ranks alerts by it), else the severity table;
- `invocations[0]` says whether the tool's stages ran cleanly; every error SecFlow met
  with the tool is a `toolExecutionNotification` (recovered ones at level `note`);
- `properties.final` says whether the assessment had ended when the file was written
  (the report stage's file is a snapshot until the final re-render);
- a run holds at most 25,000 results (GitHub's limit), the most severe first; what was
  left out is said in a notification.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

from secflow.findings import SEVERITY_ORDER, Finding, Severity
from secflow.models import AssessmentStatus
from secflow.reports._common import (
    DEGRADED_STATES,
    age_text,
    enrichment_summary,
    is_final,
    outcome_of,
    prepare,
    snapshot_note,
    stage_note,
)
from secflow.reports.remediation import normalise_cwe, remediation_for
from secflow.reports.tool_info import info_for, is_semver, tool_version
from secflow.store import ErrorEvent

SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
FINGERPRINT_KEY = "secflowFingerprint/v1"
SRCROOT = "SRCROOT"
TARGET_BASE = "SECFLOW_TARGET"
TARGET_BASE_URI = "secflow-target:/"
# GitHub code scanning: results per run (hard limit 25,000) and tags per rule (20; 10 shown).
MAX_RESULTS_PER_RUN = 25_000
MAX_TAGS = 10

LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
# GitHub: > 9.0 critical, 7.0-8.9 high, 4.0-6.9 medium, 0.1-3.9 low.
SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "2.0",
    Severity.INFO: "0.0",
}
PRECISION = {"high": "high", "medium": "medium", "low": "low"}
# ErrorEvent.outcome -> notification level: what was recovered is a note, the rest matters.
NOTIFICATION_LEVEL = {"recovered": "note", "degraded": "warning", "skipped": "warning", "pending": "warning", "failed": "error"}

_FILE_LINE = re.compile(r"^(?P<path>.+?):(?P<line>[0-9]+)(?::(?P<col>[0-9]+))?$")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\s]+):(?P<port>[0-9]{1,5})(?:/(?P<proto>[a-z]+))?$")
_CWE = re.compile(r"^CWE-([0-9]+)$", re.IGNORECASE)
_URI_SAFE = "/:?#[]@!$&'()*+,;=%~"
_CATEGORY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _uri(text: str) -> str:
    return quote(text, safe=_URI_SAFE)


def _is_host(name: str, target: str) -> bool:
    """Whether `name` (the part before `:N`) is a host rather than a file path."""
    if "/" in name or "\\" in name:
        return False
    if name.startswith("[") and name.endswith("]"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if name.lower() == "localhost":
        return True
    target_host = urlsplit(target).hostname if "://" in target else target.split(":")[0]
    return bool(target_host) and name.lower() == str(target_host).lower().strip("[]")


def _is_path_target(target: str) -> bool:
    return bool(target) and "://" not in target and target.startswith("/")


# --- where files are: repository roots --------------------------------------------------
def _scan_dir(target: str) -> Path:
    p = Path(target)
    return p.parent if p.is_file() else p


def repository_root(target: str) -> Path:
    """The nearest directory at or above the target holding `.git` (a directory, or a file
    in a worktree); the target's directory when there is none (or it is not on this machine)."""
    start = _scan_dir(target)
    for d in (start, *start.parents):
        if (d / ".git").exists():
            return d
    return start


@dataclass
class _Roots:
    """Repository roots of one run, each with its base id (SRCROOT, SRCROOT2, ...)."""

    by_target: dict[str, Path]
    ids: dict[Path, str]

    @classmethod
    def of(cls, findings: list[Finding]) -> _Roots:
        targets = sorted({f.target for f in findings if _is_path_target(f.target)})
        by_target = {t: repository_root(t) for t in targets}
        ids: dict[Path, str] = {}
        for n, root in enumerate(sorted(set(by_target.values()))):
            ids[root] = SRCROOT if n == 0 else f"{SRCROOT}{n + 1}"
        return cls(by_target, ids)

    def artifact(self, target: str, path: str) -> dict:
        """`path` (relative to the scanned target, or absolute) as an artifactLocation."""
        path = path.replace("\\", "/")
        absolute = PurePosixPath(path) if path.startswith("/") else PurePosixPath(_scan_dir(target).as_posix()) / path
        absolute = PurePosixPath(_normpath(absolute.as_posix()))
        root = self.by_target.get(target)
        roots = ([root] if root else []) + sorted(self.ids)
        for r in roots:
            try:
                rel = absolute.relative_to(r.as_posix())
            except ValueError:
                continue
            return {"uri": _uri(rel.as_posix()), "uriBaseId": self.ids[r]}
        return {"uri": Path(absolute.as_posix()).as_uri()}

    def base_ids(self) -> dict:
        return {
            base: {
                "uri": root.as_uri().rstrip("/") + "/",
                "description": {"text": "root of the repository that holds the scanned path target"},
            }
            for root, base in sorted(self.ids.items(), key=lambda kv: kv[1])
        }


def _normpath(path: str) -> str:
    import posixpath

    return posixpath.normpath(path)


# --- locations --------------------------------------------------------------------------
def _resource(name: str, props: dict, uri_path: str) -> dict:
    """A location that is not a file (see the module docstring)."""
    return {
        "physicalLocation": {"artifactLocation": {"uri": _uri(uri_path.lstrip("/")) or "unknown", "uriBaseId": TARGET_BASE}},
        "logicalLocations": [{"name": name, "fullyQualifiedName": name, "kind": "resource"}],
        "properties": props,
    }


def _resource_props(f: Finding) -> tuple[str, dict, str] | None:
    """(name, properties, relative path) of a non-file location; None for a file."""
    loc = f.location.strip()
    if "://" in loc:
        try:
            parts = urlsplit(loc)
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
            host, path = parts.hostname or "", parts.path or "/"
        except ValueError:  # a redacted or malformed authority: the URL is still the name
            port, host, path = None, "", "/" + loc.split("://", 1)[1]
        props: dict = {"url": loc, "host": host}
        if port:
            props["port"] = port
        return loc, props, f"{host}/{port or ''}{path}"
    m = _HOST_PORT.match(loc)
    if m and (_is_host(m["host"], f.target) or not _is_path_target(f.target)):
        host = m["host"].strip("[]")
        props = {"host": host, "port": int(m["port"]), "protocol": m["proto"] or "tcp"}
        return loc, props, f"{host}/{m['port']}" + (f"/{m['proto']}" if m["proto"] else "")
    if _is_path_target(f.target) and loc:
        return None  # a file of the scanned tree
    name = loc or f.target or f.tool
    props = {"name": name}
    if f.target:
        props["target"] = f.target
    return name, props, name


def location(f: Finding, roots: _Roots | None = None) -> dict:
    """The SARIF location of a finding (see the module docstring)."""
    roots = roots or _Roots.of([f])
    resource = _resource_props(f)
    if resource is not None:
        return _resource(*resource)
    loc = f.location.strip()
    m = _FILE_LINE.match(loc)
    if m:
        region: dict = {"startLine": max(1, int(m["line"]))}
        if m["col"]:
            region["startColumn"] = max(1, int(m["col"]))
        return {"physicalLocation": {"artifactLocation": roots.artifact(f.target, m["path"]), "region": region}}
    return {"physicalLocation": {"artifactLocation": roots.artifact(f.target, loc)}}


# --- rules ------------------------------------------------------------------------------
def _cwe_tags(cwes: list[str]) -> list[str]:
    tags = []
    for c in cwes:
        m = _CWE.match(c.strip())
        if m:
            tags += [f"CWE-{int(m[1])}", f"external/cwe/cwe-{int(m[1]):03d}"]
        else:
            tags.append(c)
    return tags


def _md(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", text)


def _help(group: list[Finding], worst: Finding) -> tuple[str, str, str | None, list[str]]:
    """(text, markdown, helpUri, OWASP labels) of a rule: what, how to fix, references."""
    fix = remediation_for(worst)
    refs = list(dict.fromkeys(r for f in group for r in remediation_for(f).references))
    text = [worst.title, ""]
    md = [f"**{_md(worst.title)}**", ""]
    if fix.text:
        text += ["Remediation: " + fix.text, ""]
        md += ["**Remediation:** " + _md(fix.text), ""]
    if refs:
        text.append("References:")
        md.append("**References:**")
        for r in refs:
            text.append(f"- {r.label}: {r.url}")
            md.append(f"- [{_md(r.label)}]({r.url})")
    owasp = [r.label.split()[1] for r in refs if r.label.startswith("OWASP ")]
    return "\n".join(text).strip(), "\n".join(md).strip(), (refs[0].url if refs else None), owasp


def _rules(findings: list[Finding]) -> list[dict]:
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    by_rule: dict[str, list[Finding]] = {}
    for f in findings:
        by_rule.setdefault(f.rule_id, []).append(f)
    rules = []
    for rule_id in sorted(by_rule):
        group = by_rule[rule_id]
        worst = min(group, key=lambda f: (rank[f.severity], f.title))
        cwes = sorted({normalise_cwe(c) for f in group for c in f.cwe}, key=lambda c: (len(c), c))
        cves = sorted({c for f in group for c in f.cve})
        text, markdown, help_uri, owasp = _help(group, worst)
        owasp_tags = [f"external/owasp/owasp-{o.split(':')[0].lower()}" for o in owasp]
        tags = list(dict.fromkeys(["security", *_cwe_tags(cwes), *owasp_tags, *cves]))[:MAX_TAGS]
        props: dict = {
            "tags": tags,
            "security-severity": _security_severity(group, worst),
            "precision": PRECISION.get(worst.confidence.value, "medium"),
            "problem.severity": LEVEL[worst.severity] if LEVEL[worst.severity] != "note" else "recommendation",
        }
        if cwes:
            props["cwe"] = cwes
        if cves:
            props["cve"] = cves
        if owasp:
            props["owasp"] = owasp
        rule: dict = {
            "id": rule_id,
            "name": rule_id,
            "shortDescription": {"text": worst.title[:1024] or rule_id},
            "fullDescription": {"text": worst.title or rule_id},
            "help": {"text": text, "markdown": markdown},
            "defaultConfiguration": {"level": LEVEL[worst.severity]},
            "properties": props,
        }
        if help_uri:
            rule["helpUri"] = help_uri
        rules.append(rule)
    return rules


def _cvss(findings: list[Finding]) -> float | None:
    scores = [f.enrichment.cvss_score for f in findings if f.enrichment is not None and f.enrichment.cvss_score is not None]
    return max(scores) if scores else None


def _security_severity(group: list[Finding], worst: Finding) -> str:
    """The CVSS base score where enrichment has one (what GitHub ranks by), else the table."""
    cvss = _cvss(group)
    return f"{cvss:.1f}" if cvss is not None else SECURITY_SEVERITY[worst.severity]


def _enrichment_props(f: Finding) -> dict | None:
    if f.enrichment is None:
        return None
    cves = [c.model_dump(mode="json", exclude_none=True) for c in f.enrichment.cves]
    out: dict = {"cves": cves, "partial": f.enrichment.partial, "stale": f.enrichment.stale}
    if f.enrichment.unreadable:
        out["unreadable"] = f.enrichment.unreadable
    return out


def _enrichment_sentence(f: Finding) -> str:
    """A few words for the result message: the scores, and a warning when not current."""
    if f.enrichment is None or not f.enrichment.cves:
        return ""
    bits = []
    for c in f.enrichment.cves:
        facts = []
        if c.cvss_score is not None:
            facts.append(f"CVSS {c.cvss_score:.1f}")
        if c.epss_probability is not None:
            facts.append(f"EPSS {c.epss_probability:.3f}")
        if c.in_kev:
            facts.append("in CISA KEV" + (f" (due {c.kev_due_date.isoformat()})" if c.kev_due_date else ""))
        if c.stale:
            facts.append(f"STALE data, {age_text(c.stale_age_seconds)} old")
        if c.partial:
            facts.append(f"PARTIAL data: {c.partial_reason}")
        bits.append(f"{c.cve_id}: {', '.join(facts) or 'no scores published'}")
    return " Enrichment: " + "; ".join(bits) + "."


def _result(f: Finding, rule_index: int, roots: _Roots) -> dict:
    message = f.title + (f" Evidence: {f.evidence}" if f.evidence else "") + _enrichment_sentence(f)
    loc = location(f, roots)
    props: dict = {
        "severity": f.severity.value,
        "confidence": f.confidence.value,
        "target": f.target,
        "location": f.location,
        "firstSeen": f.first_seen.isoformat(),
        "lastSeen": f.last_seen.isoformat(),
        **{k: v for k, v in loc.get("properties", {}).items() if k in ("url", "host", "port", "protocol")},
    }
    if f.cwe:
        props["cwe"] = list(f.cwe)
    if f.cve:
        props["cve"] = list(f.cve)
    if f.evidence:
        props["evidence"] = f.evidence
    enrichment = _enrichment_props(f)
    if enrichment is not None:
        props["enrichment"] = enrichment
        cvss = _cvss([f])
        if cvss is not None:
            props["security-severity"] = f"{cvss:.1f}"
    return {
        "ruleId": f.rule_id,
        "ruleIndex": rule_index,
        "level": LEVEL[f.severity],
        "message": {"text": message},
        "locations": [loc],
        "partialFingerprints": {FINGERPRINT_KEY: f.fingerprint},
        "properties": props,
    }


def _notification(e: ErrorEvent) -> dict:
    outcome = outcome_of(e)
    target = f" on {e.target}" if e.target else ""
    return {
        "descriptor": {"id": e.category},
        "level": NOTIFICATION_LEVEL.get(outcome, "warning"),
        "message": {"text": f"stage {e.stage_id}{target}, attempt {e.attempt}: {e.category} error ({outcome}): {e.message}"},
        "timeUtc": e.occurred_at.isoformat().replace("+00:00", "Z"),
        "properties": {
            "eventId": e.event_id,
            "stage": e.stage_id,
            "target": e.target,
            "attempt": e.attempt,
            "category": e.category,
            "retryable": e.retryable,
            "outcome": outcome,
        },
    }


def _tools(status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]) -> list[str]:
    tools = {st.tool for st in status.stages.values() if st.tool and st.kind != "report"}
    tools |= {f.tool for f in findings} | {e.tool for e in errors if e.tool}
    return sorted(tools)


def automation_id(status: AssessmentStatus, tool: str) -> str:
    """`secflow/<spec>/<tool>/<assessment id>`: GitHub's category is all before the last `/`."""
    spec = _CATEGORY_UNSAFE.sub("-", status.name).strip("-") or "assessment"
    return f"secflow/{spec}/{_CATEGORY_UNSAFE.sub('-', tool)}/{status.workflow_id.replace('/', '-')}"


def _driver(tool: str, rules: list[dict]) -> dict:
    info = info_for(tool)
    version = tool_version(tool)
    driver: dict = {"name": tool, "fullName": info.full_name}
    if version:
        driver["version"] = version
        if is_semver(version):
            driver["semanticVersion"] = version
    if info.information_uri:
        driver["informationUri"] = info.information_uri
    if info.organization:
        driver["organization"] = info.organization
    driver["rules"] = rules
    return driver


def _run(tool: str, status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]) -> dict:
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    mine = [f for f in findings if f.tool == tool]
    left_out = 0
    if len(mine) > MAX_RESULTS_PER_RUN:  # GitHub rejects a run with more; keep the most severe
        kept = sorted(mine, key=lambda f: rank[f.severity])[:MAX_RESULTS_PER_RUN]
        left_out = len(mine) - len(kept)
        keep = {f.fingerprint for f in kept}
        mine = [f for f in mine if f.fingerprint in keep]
    roots = _Roots.of(mine)
    rules = _rules(mine)
    index = {r["id"]: i for i, r in enumerate(rules)}
    stages = {sid: st for sid, st in status.stages.items() if st.tool == tool}
    my_errors = [e for e in errors if e.tool == tool]
    unclean = [
        f"stage {sid} {st.state}{' (degraded)' if st.degraded else ''}: {stage_note(st) or 'no reason recorded'}"
        for sid, st in stages.items()
        if st.state in DEGRADED_STATES or st.degraded
    ]
    unresolved = [e for e in my_errors if outcome_of(e) != "recovered"]
    notifications = [_notification(e) for e in my_errors]
    if left_out:
        notifications.append(
            {
                "descriptor": {"id": "results-limit"},
                "level": "warning",
                "message": {
                    "text": f"{left_out} less severe result(s) left out: a code-scanning run holds at most "
                    f"{MAX_RESULTS_PER_RUN}; the Markdown, HTML and JSON reports list them all"
                },
            }
        )
    invocation: dict = {
        "executionSuccessful": not unclean and not unresolved,
        "toolExecutionNotifications": notifications,
    }
    if unclean:
        invocation["exitCodeDescription"] = "; ".join(unclean)[:2000]
    results = [_result(f, index[f.rule_id], roots) for f in mine]
    base_ids = roots.base_ids()
    if any(
        loc.get("physicalLocation", {}).get("artifactLocation", {}).get("uriBaseId") == TARGET_BASE
        for r in results
        for loc in r["locations"]
    ):
        base_ids[TARGET_BASE] = {
            "uri": TARGET_BASE_URI,
            "description": {
                "text": "not a file: a network target SecFlow scanned (host/port/path); the URL or host:port is in "
                "the location's logicalLocations and properties"
            },
        }
    run: dict = {
        "tool": {"driver": _driver(tool, rules)},
        "automationDetails": {
            "id": automation_id(status, tool),
            "description": {"text": f"SecFlow assessment {status.workflow_id} ({status.name}), tool {tool}"},
        },
        "invocations": [invocation],
        "originalUriBaseIds": base_ids,
        "columnKind": "unicodeCodePoints",
        "results": results,
        "properties": {
            "assessment": status.workflow_id,
            "assessmentStatus": status.status,
            "final": is_final(status),
            "stages": {sid: {"state": st.state, "degraded": st.degraded, "reason": stage_note(st)} for sid, st in stages.items()},
        },
    }
    if not is_final(status):
        run["properties"]["snapshot"] = snapshot_note(status)
    summary = enrichment_summary(mine)
    if summary.any:
        run["properties"]["enrichment"] = {
            "cves": summary.total,
            "current": summary.enriched,
            "stale": summary.stale,
            "partial": summary.partial,
            "oldestStaleAgeSeconds": summary.oldest_stale_age_seconds,
        }
    if status.started_at:
        invocation["startTimeUtc"] = status.started_at.isoformat().replace("+00:00", "Z")
    if status.finished_at:
        invocation["endTimeUtc"] = status.finished_at.isoformat().replace("+00:00", "Z")
    return run


def render_sarif(status: AssessmentStatus, findings: list[Finding], errors: list[ErrorEvent]) -> str:
    """The assessment as one SARIF 2.1.0 log, one run per tool."""
    status, findings, errors = prepare(status, findings, errors)
    tools = _tools(status, findings, errors) or ["secflow"]
    doc = {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [_run(tool, status, findings, errors) for tool in tools],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


__all__ = [
    "FINGERPRINT_KEY",
    "LEVEL",
    "MAX_RESULTS_PER_RUN",
    "SECURITY_SEVERITY",
    "automation_id",
    "location",
    "render_sarif",
    "repository_root",
]
