"""Recovery validation: what is checked after a stage recovers, as pure functions.

After any recovery (a retry that succeeded, a resume from a checkpoint, a fallback, a
human's retry, a dead-letter replay run in place) the assessment runs the
`validate_recovery` activity (activities/validation.py). It checks and records:

1. the findings against the checkpoint: no finding stored twice for the stage (two
   fingerprints for one identity, or a fingerprint that is not its identity's), and none
   missing that the tool runs counted (the store holds at least what they reported);
2. the tool's output schema: every stored finding validates as a `Finding` and was
   produced by the stage's tool (or its fallback tool);
3. a health probe of what failed: an HTTP GET of the dependency's base URL (osv, nvd,
   epss, kev), or of the target itself for a target tool (a url target: GET; a host:
   the name resolves; a path: it exists).

A failed check marks the stage `unverified` (the assessment ends
`completed_with_errors`), opens an incident and shows in the report (docs/recovery.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from secflow.findings import Finding, fingerprint
from secflow.tools import REGISTERED_ACTIVITY, canonical_tool

__all__ = ["RecoveryValidationRequest", "RecoveryValidationResult", "RungSettlement", "finding_problems"]

MOST_PROBLEMS = 10  # problems kept per check (the rest are counted)


class RungSettlement(BaseModel):
    """A ladder rung ended for a stage: its still-unsettled error events get (rung, outcome)."""

    assessment_id: str
    stage_id: str
    rung: str
    outcome: str


class RecoveryValidationRequest(BaseModel):
    assessment_id: str
    stage_id: str
    check_id: str  # unique per check within the stage (a retried write is one row)
    after: str  # the rung that recovered the stage: retry | resume | fallback | human
    tools: list[str]  # the stage's tool and its fallback tool
    reported_findings: int = 0  # what the tool runs counted (the status's `findings`)


class RecoveryValidationResult(BaseModel):
    passed: bool
    problems: list[str] = Field(default_factory=list)
    findings: int = 0  # findings of the stage in the store
    probed: list[str] = Field(default_factory=list)  # what the health probe reached


def _same_tool(name: str) -> str:
    canonical = canonical_tool(name) or name
    return REGISTERED_ACTIVITY.get(canonical, canonical)


def finding_problems(
    rows: Iterable[dict[str, Any]], tools: list[str], reported: int, elsewhere: int = 0
) -> tuple[list[str], int]:
    """(problems, findings stored) for a stage's stored finding rows. `elsewhere`: findings
    of the same tools another stage of the assessment reported first (they count as kept)."""
    allowed = {_same_tool(t) for t in tools if t}
    problems: list[str] = []
    identities: dict[tuple[str, str, str, str], list[str]] = {}
    count = 0
    for row in rows:
        count += 1
        fp = str(row.get("fingerprint", ""))[:16]
        try:
            finding = Finding.model_validate(row)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "finding"
            problems.append(f"finding {fp}: does not match the Finding schema ({where}: {first['msg']})")
            continue
        tool = _same_tool(finding.tool)
        if tool not in allowed:
            problems.append(f"finding {fp}: produced by {finding.tool!r}, not by the stage's tool ({', '.join(sorted(allowed))})")
        identity = (tool, finding.rule_id, finding.target, finding.location)
        identities.setdefault(identity, []).append(finding.fingerprint)
        if finding.fingerprint != fingerprint(finding.tool, finding.rule_id, finding.target, finding.location):
            problems.append(f"finding {fp}: its fingerprint is not its identity's (a duplicate waiting to happen)")
    for (tool, rule, target, location), fps in identities.items():
        if len(fps) > 1:
            problems.append(f"duplicate finding: {tool} {rule} at {target} {location} stored under {len(fps)} fingerprints")
    if count + elsewhere < reported:
        kept = count + elsewhere
        problems.append(f"{reported - kept} finding(s) the tool runs counted are missing from the store ({kept} of {reported})")
    return problems, count
