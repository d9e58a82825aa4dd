"""The fault soak's scenario table: each scenario is a spec, its injected faults, and what
it must end as (outcome, stage state, error categories, recovery rungs, findings).

Expectations are data (`Expect`), so that when the recovery ladder, recovery validation
and adaptive retries land, adjusting the soak is an edit of `KINDS` below, not of the
harness. Rungs are named as the ladder names them:

    retry          Temporal's retries healed it (errors in the ledger, the stage succeeded)
    fallback       the stage's fallback tool ran
    await_approval a human answered (a gate, or a failure wait answered with `retry`)
    wait_timeout   a human wait reached its deadline unanswered
    skip           the stage was skipped (on_failure skip)
    dead_letter    the task was parked in the DLQ
    abort          the assessment stopped (a security failure)
    compensation_failed  a compensation failed and was raised for a human

`on_failure` is a list in the table (the ladder, secflow/ladder.py), written to the spec as
a list when the spec validator accepts one (`ladder_lists_supported`). Rungs are observed
in the stage's ladder trail (`StageStatus.ladder`), the error ledger's `rung` /
`rung_outcome` (where `await_approval` is labelled `human`), the interventions, the
compensations and the DLQ. `ledger_required` names `rung:outcome` pairs (ledger labels)
the scenario's error events must show; `validated` asks for a passed recovery validation
(and none failed): the stage recovered and was checked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

PROBABILITIES = (0.1, 0.2, 0.3, 0.4, 0.5)
ANY_ERROR = frozenset({"transient", "resource", "external_tool", "permanent", "validation", "security", "internal"})


@dataclass(frozen=True)
class Expect:
    outcomes: frozenset[str]
    stage_states: frozenset[str]
    categories_required: frozenset[str] = frozenset()
    # transient is always allowed: a SIGKILLed worker's lost attempt is recorded as one
    categories_allowed: frozenset[str] = frozenset({"transient"})
    rungs_required: frozenset[str] = frozenset()
    rungs_allowed: frozenset[str] = frozenset({"retry"})
    findings: bool = True  # compare with the stand-in's ground truth (else: none expected)
    # `rung:outcome` pairs, as the ledger labels them (retry, fallback, human, dead_letter,
    # fail, skip), that some error event of the scenario must end with
    ledger_required: frozenset[str] = frozenset()
    validated: bool = False  # a recovery validation passed (and none failed)


@dataclass(frozen=True)
class Kind:
    """A family of scenarios: how to build one, what it expects, its share of the mix."""

    name: str
    tool: str  # portscan | http_headers | sca | bandit | detect_secrets | semgrep
    fault: str  # what is injected (web mode, tool mode, chaos fault, human)
    expect: Expect
    weight: int = 1
    transient: bool = False  # draws a fault probability from PROBABILITIES
    ladder: tuple[str, ...] = ()  # on_failure, as the ladder lists it
    # approve | retry (fix the fault, then retry_stage) | reject | sabotage_then_approve |
    # "" (none, or unanswered)
    human: str = ""
    long: bool = False  # runs long enough for kills to hit it (always in the mix)
    stage_extra: dict[str, Any] = field(default_factory=dict)


def _e(outcomes: str, states: str, **kw: Any) -> Expect:
    conv = {k: frozenset(v) if isinstance(v, (set, tuple, list)) else v for k, v in kw.items()}
    return Expect(frozenset(outcomes.split("|")), frozenset(states.split("|")), **conv)


OK = _e("completed", "succeeded")
PATIENT = {"retry": {"max_attempts": 12, "initial_interval": "200ms", "backoff": 2.0, "max_interval": "2s"}}
# Long scans are what the worker kills hit most: every kill of their worker costs an attempt.
LONG = {"retry": {"max_attempts": 40, "initial_interval": "200ms", "backoff": 2.0, "max_interval": "2s"}}

KINDS: tuple[Kind, ...] = (
    # --- web target (http_headers) -------------------------------------------------------
    Kind("web_clean", "http_headers", "ok", OK),
    Kind("web_flaky", "http_headers", "flaky", OK, weight=3, transient=True, stage_extra=PATIENT),
    Kind("web_reset", "http_headers", "reset", OK, weight=2, transient=True, stage_extra=PATIENT),
    Kind(
        "web_malformed",
        "http_headers",
        "malformed",
        _e("completed", "succeeded", categories_allowed={"transient", "external_tool"}),
        weight=2,
        transient=True,
        stage_extra=PATIENT,
    ),
    Kind(
        "web_storm",
        "http_headers",
        "storm",
        _e("completed", "succeeded", categories_required={"transient"}, rungs_required={"retry"}),
        stage_extra=PATIENT,
    ),
    Kind(
        "web_hang",
        "http_headers",
        "hang",
        _e("completed", "succeeded", categories_required={"transient"}, rungs_required={"retry"}),
        stage_extra={**PATIENT, "options": {"request_timeout": 1}},
    ),
    Kind("web_slow", "http_headers", "slow", OK, stage_extra={"options": {"request_timeout": 20}}),
    Kind("web_truncated", "http_headers", "truncated", OK, stage_extra=PATIENT),
    Kind(
        "web_redirect_out",
        "http_headers",
        "redirect_out",
        _e(
            "failed",
            "failed",
            categories_required={"security"},
            categories_allowed={"transient", "security"},
            rungs_required={"abort"},
            rungs_allowed={"abort", "dead_letter"},
            findings=False,
        ),
    ),
    Kind(
        "web_down_skip",
        "http_headers",
        "down",
        _e(
            "completed_with_errors",
            "skipped",
            categories_required={"transient"},
            rungs_required={"retry", "skip"},
            rungs_allowed={"retry", "skip", "dead_letter"},
            findings=False,
            ledger_required={"skip:skipped"},
        ),
        ladder=("skip",),
        stage_extra={"retry": {"max_attempts": 2, "initial_interval": "200ms"}},
    ),
    # --- humans ---------------------------------------------------------------------------
    Kind(
        "gate_approved",
        "http_headers",
        "ok",
        _e("completed", "succeeded", rungs_required={"await_approval"}, rungs_allowed={"retry", "await_approval"}),
        human="approve",
        stage_extra={"requires_approval": True},
    ),
    Kind(
        "gate_unanswered",
        "http_headers",
        "ok",
        _e(
            "completed_with_errors|completed",
            "skipped",
            rungs_required={"wait_timeout"},
            rungs_allowed={"wait_timeout", "skip"},
            findings=False,
        ),
        stage_extra={"requires_approval": True, "wait_timeout": "4s", "on_wait_timeout": "skip"},
    ),
    Kind(
        "failure_wait_retry",
        "http_headers",
        "down",
        _e(
            "completed",
            "succeeded",
            categories_required={"transient"},
            rungs_required={"retry", "await_approval"},
            rungs_allowed={"retry", "await_approval"},
            ledger_required={"human:recovered"},
            validated=True,
        ),
        ladder=("await_approval", "dead_letter"),
        human="retry",
        stage_extra={"retry": {"max_attempts": 2, "initial_interval": "200ms"}},
    ),
    Kind(
        "compensation_fails",
        "http_headers",
        "ok",
        _e(
            "failed",
            "succeeded",
            # the failed compensation itself is an error event (permanent: not a directory)
            categories_allowed={"transient", "permanent"},
            rungs_required={"await_approval", "compensation_failed"},
            rungs_allowed={"retry", "await_approval", "compensation_failed", "dead_letter"},
        ),
        human="sabotage_then_approve",
        stage_extra={"requires_approval": True},
    ),
    # --- long scans (what the worker kills mostly hit) ---------------------------------------
    Kind("ports_slow", "portscan", "ok", OK, weight=3, stage_extra=LONG, long=True),
    Kind("bandit_slow", "bandit", "slow", OK, weight=2, stage_extra=LONG, long=True),
    # --- dependency faults through the spec's chaos section (OSV) ------------------------------
    Kind("sca_flaky", "sca", "status", OK, weight=3, transient=True),
    Kind("sca_reset", "sca", "reset", OK, weight=2, transient=True),
    Kind(
        "sca_truncate",
        "sca",
        "truncate",
        _e("completed", "succeeded", categories_allowed={"transient", "external_tool"}),
        transient=True,
    ),
    Kind(
        "sca_malformed",
        "sca",
        "malformed",
        _e("completed", "succeeded", categories_allowed={"transient", "external_tool"}),
        transient=True,
    ),
    Kind("sca_hang", "sca", "hang", OK, stage_extra={"options": {"request_timeout": 2}}),
    # --- scanner processes ------------------------------------------------------------------
    Kind(
        "bandit_crash",
        "bandit",
        "crash",
        _e("completed", "succeeded", categories_allowed={"transient", "external_tool"}),
        weight=2,
        transient=True,
        stage_extra=PATIENT,
    ),
    Kind(
        "bandit_garbage",
        "bandit",
        "garbage",
        _e(
            "completed",
            "succeeded",
            categories_required={"external_tool"},
            categories_allowed={"transient", "external_tool"},
            rungs_required={"retry"},
        ),
        stage_extra=PATIENT,
    ),
    Kind(
        "bandit_missing_skip",
        "bandit",
        "missing",
        _e(
            "completed_with_errors",
            "skipped",
            categories_required={"permanent"},
            categories_allowed={"transient", "permanent"},
            rungs_required={"skip"},
            rungs_allowed={"skip", "dead_letter"},
            findings=False,
            ledger_required={"skip:skipped"},
        ),
        ladder=("skip",),
    ),
    Kind(
        "semgrep_missing_fallback",
        "semgrep",
        "missing_binary",
        _e(
            "completed|completed_with_errors",
            "succeeded|partial",
            categories_required={"permanent"},
            categories_allowed={"transient", "permanent"},
            rungs_required={"fallback"},
            rungs_allowed={"fallback", "dead_letter"},
            ledger_required={"fallback:recovered"},
            validated=True,
        ),
        ladder=("fallback", "dead_letter"),
        stage_extra={"fallback_tool": "bandit"},
    ),
    # --- the whole ladder: a failed fallback, then a human ----------------------------------
    Kind(
        # semgrep is missing, and so is its fallback bandit (exit 127); the human rung
        # answers once bandit is back (the bench re-plans its wrapper) with retry_stage,
        # which re-runs the failed target with the fallback tool
        "ladder_fallback_human",
        "semgrep",
        "missing_both",
        _e(
            "completed|completed_with_errors",
            "succeeded|partial",
            categories_required={"permanent"},
            categories_allowed={"transient", "permanent", "external_tool"},
            rungs_required={"fallback", "await_approval"},
            rungs_allowed={"fallback", "await_approval", "dead_letter"},
            ledger_required={"human:recovered"},
            validated=True,
        ),
        ladder=("fallback", "await_approval", "dead_letter"),
        human="retry",
        stage_extra={"fallback_tool": "bandit"},
    ),
    Kind(
        # the target stays down and the human rejects: the next rung parks it
        "ladder_human_reject",
        "http_headers",
        "down",
        _e(
            "failed|completed_with_errors",
            "failed",
            categories_required={"transient"},
            rungs_required={"await_approval", "dead_letter"},
            rungs_allowed={"await_approval", "dead_letter"},
            findings=False,
            ledger_required={"dead_letter:parked"},
        ),
        ladder=("await_approval", "dead_letter"),
        human="reject",
        stage_extra={"retry": {"max_attempts": 2, "initial_interval": "200ms"}},
    ),
    Kind(
        "secrets_crash",
        "detect_secrets",
        "crash",
        _e("completed", "succeeded", categories_allowed={"transient", "external_tool"}),
        transient=True,
        stage_extra=PATIENT,
    ),
)


@dataclass
class Scenario:
    sid: str
    kind: Kind
    probability: float = 0.0
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        e = self.kind.expect
        return {
            "sid": self.sid,
            "kind": self.kind.name,
            "tool": self.kind.tool,
            "fault": self.kind.fault,
            "probability": self.probability,
            "ladder": list(self.kind.ladder),
            "human": self.kind.human,
            "expect": {
                "outcomes": sorted(e.outcomes),
                "stage_states": sorted(e.stage_states),
                "categories_required": sorted(e.categories_required),
                "categories_allowed": sorted(e.categories_allowed),
                "rungs_required": sorted(e.rungs_required),
                "rungs_allowed": sorted(e.rungs_allowed),
                "findings": e.findings,
                "ledger_required": sorted(e.ledger_required),
                "validated": e.validated,
            },
        }


def build_scenarios(n: int, seed: int) -> list[Scenario]:
    """`n` scenarios: every kind at least once when n allows, then by weight; transient
    kinds cycle through the fault probabilities so each probability gets a fair share."""
    rng = random.Random(seed)
    if n >= len(KINDS):
        kinds: list[Kind] = list(KINDS)
    else:  # a small mix (the smoke run) still has the long scans the kills are for
        longs = [k for k in KINDS if k.long][:n]
        kinds = longs + rng.sample([k for k in KINDS if not k.long], n - len(longs))
    pool = [k for k in KINDS for _ in range(k.weight)]
    while len(kinds) < n:
        kinds.append(rng.choice(pool))
    rng.shuffle(kinds)
    out: list[Scenario] = []
    seen: dict[str, int] = {}
    for i, kind in enumerate(kinds):
        j = seen.get(kind.name, 0)
        seen[kind.name] = j + 1
        p = PROBABILITIES[(j + rng.randrange(len(PROBABILITIES))) % len(PROBABILITIES)] if kind.transient else 0.0
        out.append(Scenario(sid=f"s{i:03d}-{kind.name.replace('_', '-')}", kind=kind, probability=p, seed=rng.randrange(1 << 30)))
    return out


def on_failure_value(ladder: tuple[str, ...], lists_supported: bool) -> str | list[str] | None:
    if not ladder:
        return None
    if len(ladder) == 1 and not lists_supported:
        return ladder[0]
    return list(ladder)


def ladder_lists_supported() -> bool:
    """Does this code's spec accept `on_failure` as a list (the recovery ladder)?"""
    from secflow.spec import validate_spec_data

    try:
        validate_spec_data(
            {
                "name": "probe",
                "scope": {"allow": ["127.0.0.1"]},
                "targets": [{"host": "127.0.0.1"}],
                "stages": [{"id": "a", "kind": "discovery", "on_failure": ["skip"]}],
            }
        )
    except Exception:
        return False
    return True
