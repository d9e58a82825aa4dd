"""How to fix a finding: remediation text and references (CWE, OWASP Top 10), per rule.

The catalogue is `rules/remediation.yaml` (next to the semgrep rules, shipped with the
code). A finding's entry is its rule's (`rules.<tool>.<rule id>`), else its tool's
(`tools.<tool>`: sca advisories), else its first CWE's (`cwe.<CWE-n>`); OWASP categories
come from the entry, or from the CWE's when the rule names none. Read once per process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from secflow.findings import Finding

CATALOGUE = Path(__file__).resolve().parents[2] / "rules" / "remediation.yaml"
_CWE = re.compile(r"^CWE-0*([0-9]+)", re.IGNORECASE)
_ADVISORY = re.compile(r"^(GHSA|PYSEC|OSV|RUSTSEC|GO)-", re.IGNORECASE)


@dataclass(frozen=True)
class Reference:
    label: str  # "CWE-78", "OWASP A03:2021 Injection", "GHSA-...", "CVE-..."
    url: str


@dataclass(frozen=True)
class Remediation:
    text: str  # "" when the catalogue knows nothing for the finding
    references: tuple[Reference, ...]


def normalise_cwe(cwe: str) -> str:
    """`CWE-078: Improper ...` -> `CWE-78`; anything else is returned stripped."""
    m = _CWE.match(cwe.strip())
    return f"CWE-{int(m[1])}" if m else cwe.strip()


def _tool_key(tool: str) -> str:
    # One spelling for lookups: tools are named `detect_secrets` or `detect-secrets`.
    return tool.strip().lower().replace("-", "_")


@lru_cache(maxsize=1)
def _catalogue() -> dict[str, Any]:
    doc = yaml.safe_load(CATALOGUE.read_text(encoding="utf-8")) or {}
    rules = {_tool_key(tool): dict(entries or {}) for tool, entries in (doc.get("rules") or {}).items()}
    tools = {_tool_key(tool): entry for tool, entry in (doc.get("tools") or {}).items()}
    return {
        "owasp": doc.get("owasp") or {},
        "cwe": {normalise_cwe(k): v for k, v in (doc.get("cwe") or {}).items()},
        "tools": tools,
        "rules": rules,
    }


def cwe_url(cwe: str) -> str | None:
    m = _CWE.match(cwe)
    return f"https://cwe.mitre.org/data/definitions/{int(m[1])}.html" if m else None


def _rule_entry(rules: dict[str, Any], rule_id: str) -> dict[str, Any] | None:
    """The rule's entry; semgrep prefixes its ids with the rules file's folder
    (`rules.semgrep.secflow.python.x`), so a dotted suffix matches too."""
    if rule_id in rules:
        return rules[rule_id]
    return next((v for k, v in rules.items() if rule_id.endswith("." + k)), None)


def remediation_for(f: Finding) -> Remediation:
    """The remediation of a finding (its rule's, its tool's or its CWE's) and its references."""
    cat = _catalogue()
    cwes = [normalise_cwe(c) for c in f.cwe]
    tool = _tool_key(f.tool)
    entry: dict[str, Any] = (
        _rule_entry(cat["rules"].get(tool, {}), f.rule_id)
        or cat["tools"].get(tool)
        or cat["tools"].get(_tool_key(f.rule_id))
        or next((cat["cwe"][c] for c in cwes if c in cat["cwe"]), None)
        or {}
    )
    if entry.get("cwe") and normalise_cwe(entry["cwe"]) not in cwes:
        cwes.append(normalise_cwe(entry["cwe"]))
    owasp = list(entry.get("owasp") or [])
    if not owasp:
        for c in cwes:
            owasp += [o for o in (cat["cwe"].get(c) or {}).get("owasp", []) if o not in owasp]
    refs: list[Reference] = []
    for c in cwes:
        url = cwe_url(c)
        if url:
            refs.append(Reference(c, url))
    for o in owasp:
        info = cat["owasp"].get(o) or {}
        refs.append(Reference(f"OWASP {o} {info.get('name', '')}".strip(), info.get("url", "https://owasp.org/Top10/")))
    if _ADVISORY.match(f.rule_id):
        refs.append(Reference(f.rule_id, f"https://osv.dev/vulnerability/{quote(f.rule_id)}"))
    for cve in f.cve:
        refs.append(Reference(cve, f"https://nvd.nist.gov/vuln/detail/{quote(cve)}"))
    return Remediation(text=str(entry.get("text") or "").strip(), references=tuple(refs))


__all__ = ["CATALOGUE", "Reference", "Remediation", "cwe_url", "normalise_cwe", "remediation_for"]
