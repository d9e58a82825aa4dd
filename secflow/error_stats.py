"""Error analytics: what `python -m starter errors stats` reports, computed from the ledger.

The figures come from the store's `error_events` (every failed attempt, with its outcome
once known) and `dead_letters`; open incidents come from Temporal (the caller passes the
count, or None when it could not ask). `compute_stats()` is a pure function of those
rows, so every figure is unit-testable with exact numbers.

How outcomes are written (activities/runner.py, activities/resources.py):
* a later attempt of the same activity succeeds -> the runner marks the stage/target's
  open events `recovered`;
* the assessment ends -> `finalize_assessment` marks what is still open from the stage's
  final state: succeeded -> recovered, partial -> degraded, failed, skipped, cancelled.

"Recovered without a human": an error marked `recovered` counts as automatic unless a
human was needed first, i.e. unless its task was parked in the dead-letter queue (same
assessment, stage and target) at or after the moment the error happened. Errors that
reached the DLQ had exhausted their retries; whatever recovered them afterwards (an
operator's retry, a DLQ replay) involved a person.

Figures:
* automatic recovery rate = automatically recovered / resolved (any outcome), or None
  when nothing is resolved yet;
* mean time to recovery = mean of (resolved_at - occurred_at) over every `recovered`
  event (automatic or not), or None without any;
* top recurring errors: grouped by normalised message (numbers, ids, hosts:ports and
  quoted values masked) + category + tool.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from secflow.durations import parse_duration
from secflow.http.breaker import DEPENDENCY_EXTENSION
from secflow.store import ErrorEvent, TargetOutcome

if TYPE_CHECKING:
    from secflow.store import FindingsStore
    from secflow.store.recovery import ValidationRow

__all__ = [
    "DeadLetterMark",
    "ErrorStats",
    "RecurringError",
    "StrategyStats",
    "compute_stats",
    "compute_strategies",
    "dependency_of",
    "load_dead_letter_marks",
    "load_error_rows",
    "load_strategies",
    "load_validations",
    "normalise_message",
    "parse_since",
    "percentile",
    "resolve_recovered",
]

NO_DEPENDENCY = "-"
TOP_N = 10


# --- inputs ---------------------------------------------------------------------------------


class DeadLetterMark(BaseModel):
    """The part of a DLQ entry the statistics need."""

    workflow_id: str
    stage_id: str
    target: str
    last_failure_at: datetime
    state: str


# --- outputs --------------------------------------------------------------------------------


class RecurringError(BaseModel):
    message: str  # normalised
    category: str
    tool: str
    count: int
    last_seen: datetime
    example: str  # one real (redacted) message of the group


class ErrorStats(BaseModel):
    since: datetime | None
    until: datetime
    total: int
    by_category: dict[str, int]
    by_tool: dict[str, int]
    by_dependency: dict[str, int]
    by_outcome: dict[str, int]  # "open" for events without an outcome yet
    resolved: int
    recovered: int
    recovered_automatically: int
    recovered_with_human: int
    automatic_recovery_rate: float | None
    mean_time_to_recovery_seconds: float | None
    open_incidents: int | None  # None: Temporal could not be asked
    dead_letters: dict[str, int]
    top_recurring: list[RecurringError] = Field(default_factory=list)
    # The recovery ladder (secflow/ladder.py): errors by the rung that handled them last
    # and its outcome ("retry: recovered", "-" = not walked yet), the same per stage id,
    # and the recovery validations of the window (validated = passed).
    by_rung: dict[str, int] = Field(default_factory=dict)
    ladder_by_stage: dict[str, dict[str, int]] = Field(default_factory=dict)
    validations: dict[str, int] = Field(default_factory=lambda: {"validated": 0, "failed": 0})


# --- the computation ------------------------------------------------------------------------

_NORMALISERS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<id>"),
    (re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{12,}\b", re.I), "<id>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<host>"),
    (re.compile(r"(?<=:)\d{2,5}\b"), "<port>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<value>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
]


def normalise_message(message: str) -> str:
    """The message with what varies between occurrences masked, for grouping."""
    text = message.strip()
    for pattern, repl in _NORMALISERS:
        text = pattern.sub(repl, text)
    return text[:300]


def _human_needed(row: ErrorEvent, marks: dict[tuple[str, str, str], list[datetime]]) -> bool:
    parked = marks.get((row.assessment_id, row.stage_id, row.target), [])
    return any(at >= row.occurred_at for at in parked)


def compute_stats(
    rows: list[ErrorEvent],
    dead_letters: list[DeadLetterMark],
    *,
    open_incidents: int | None,
    until: datetime,
    since: datetime | None = None,
    top_n: int = TOP_N,
    validations: list[ValidationRow] | None = None,
) -> ErrorStats:
    """Every figure of `errors stats`, from rows already filtered to the window.

    `dead_letters` are all entries (not only the window's): an error in the window may
    have been parked later, and the DLQ counts are a current picture.
    """
    marks: dict[tuple[str, str, str], list[datetime]] = {}
    for d in dead_letters:
        marks.setdefault((d.workflow_id, d.stage_id, d.target), []).append(d.last_failure_at)

    by_category = Counter(r.category for r in rows)
    by_tool = Counter(r.tool or NO_DEPENDENCY for r in rows)
    by_dependency = Counter(r.dependency or NO_DEPENDENCY for r in rows)
    by_outcome = Counter(r.outcome or "open" for r in rows)
    resolved = [r for r in rows if r.outcome is not None]
    recovered = [r for r in resolved if r.outcome == "recovered"]
    automatic = [r for r in recovered if not _human_needed(r, marks)]
    durations = [(r.resolved_at - r.occurred_at).total_seconds() for r in recovered if r.resolved_at is not None]

    groups: dict[tuple[str, str, str], list[ErrorEvent]] = {}
    for r in rows:
        groups.setdefault((normalise_message(r.message), r.category, r.tool), []).append(r)
    recurring = [
        RecurringError(
            message=key[0],
            category=key[1],
            tool=key[2],
            count=len(members),
            last_seen=max(m.occurred_at for m in members),
            example=max(members, key=lambda m: m.occurred_at).message[:500],
        )
        for key, members in groups.items()
    ]
    recurring.sort(key=lambda g: (-g.count, -g.last_seen.timestamp(), g.message))

    dlq_counts = {"parked": 0, "replaying": 0, "replayed": 0}
    for d in dead_letters:
        dlq_counts[d.state] = dlq_counts.get(d.state, 0) + 1

    return ErrorStats(
        since=since,
        until=until,
        total=len(rows),
        by_category=dict(by_category.most_common()),
        by_tool=dict(by_tool.most_common()),
        by_dependency=dict(by_dependency.most_common()),
        by_outcome=dict(by_outcome.most_common()),
        resolved=len(resolved),
        recovered=len(recovered),
        recovered_automatically=len(automatic),
        recovered_with_human=len(recovered) - len(automatic),
        automatic_recovery_rate=(len(automatic) / len(resolved)) if resolved else None,
        mean_time_to_recovery_seconds=(sum(durations) / len(durations)) if durations else None,
        open_incidents=open_incidents,
        dead_letters=dlq_counts,
        top_recurring=recurring[:top_n],
        by_rung=dict(Counter(_rung_of(r) for r in rows).most_common()),
        ladder_by_stage=_ladder_by_stage(rows),
        validations={
            "validated": sum(1 for v in validations or [] if v.passed),
            "failed": sum(1 for v in validations or [] if not v.passed),
        },
    )


def _rung_of(row: ErrorEvent) -> str:
    if not row.rung:
        return NO_DEPENDENCY
    return f"{row.rung}: {row.rung_outcome or 'handling'}"


def _ladder_by_stage(rows: list[ErrorEvent]) -> dict[str, dict[str, int]]:
    stages: dict[str, Counter[str]] = {}
    for r in rows:
        if r.rung:
            stages.setdefault(r.stage_id, Counter())[_rung_of(r)] += 1
    return {sid: dict(c.most_common()) for sid, c in sorted(stages.items())}


def parse_since(value: str, now: datetime) -> datetime:
    """`--since 24h` (a duration back from now) -> the window's start. ValueError if bad."""
    delta = parse_duration(value)
    if delta <= timedelta(0):
        raise ValueError(f"must be a positive duration such as 24h or 7d, got {value!r}")
    try:
        return now - delta
    except OverflowError:
        raise ValueError(f"--since {value!r} reaches before the year 1") from None


# --- reading the store ----------------------------------------------------------------------


def load_error_rows(store: FindingsStore, since: datetime | None = None) -> list[ErrorEvent]:
    """Every error event (of every assessment) that occurred at or after `since`."""
    return store.list_errors_since(since)


def load_validations(store: FindingsStore, since: datetime | None = None) -> list[ValidationRow]:
    """Recovery validations checked at or after `since` (all if None)."""
    return store.recovery.validations(since)


def load_dead_letter_marks(store: FindingsStore) -> list[DeadLetterMark]:
    return [
        DeadLetterMark(workflow_id=workflow_id, stage_id=stage_id, target=target, last_failure_at=at, state=state)
        for workflow_id, stage_id, target, at, state in store.dead_letters.marks()
    ]


def resolve_recovered(
    store: FindingsStore, assessment_id: str, stage_id: str, target: str, execution_prefix: str
) -> dict[str, list[float]]:
    """A later attempt succeeded: mark the stage/target's open events `recovered`.

    Returns, by category, the time to recovery (seconds from the error to now) of those
    that belong to this activity execution (event ids starting with `execution_prefix`):
    those were recovered automatically, by Temporal's retry. Events from an earlier
    execution of the stage (before an operator retried it) are marked too but not
    counted as automatic.
    """
    events = store.list_open_errors(assessment_id, stage_id, target)
    store.resolve_errors(assessment_id, stage_id, target, "recovered")
    now = datetime.now(UTC)
    recovered: dict[str, list[float]] = {}
    for event in events:
        if event.event_id.startswith(execution_prefix):
            seconds = max((now - event.occurred_at).total_seconds(), 0.0)
            recovered.setdefault(event.category, []).append(seconds)
    return recovered


# --- attribution ----------------------------------------------------------------------------


def dependency_of(exc: BaseException | None) -> str | None:
    """The outbound HTTP dependency an exception came from, if it says so.

    Looks through the exception and its causes for a `dependency` string attribute (set
    by the secflow.http transports) or an httpx request carrying the
    ``secflow.dependency`` extension.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = getattr(exc, "dependency", None)
        if isinstance(name, str) and name:
            return name
        request = None
        try:
            request = getattr(exc, "request", None)  # httpx raises RuntimeError when unset
        except Exception:  # an exception without a request is simply not HTTP
            request = None
        extensions = getattr(request, "extensions", None)
        if isinstance(extensions, dict):
            name = extensions.get(DEPENDENCY_EXTENSION)
            if isinstance(name, str) and name:
                return name
        exc = exc.__cause__ or exc.__context__
    return None


# --- recovery strategies (`errors stats --strategies`, and what adaptive retries read) --------
#
# Per tool and dependency, how each way of recovering performed. Computed on demand from
# the ledger and the stage results (`target_outcomes`: the tool that last ran a target,
# its state and the attempt it ended on), so nothing new is written on the hot path:
# * a retry recovered a target when its outcome is `succeeded` by the same tool at
#   attempt k > 1, the latest activity execution's errors reach attempt k-1, and no human
#   stepped in (no dead letter for it at or after its first error): "succeeded at k";
# * retries ran out when the outcome is `failed` by the same tool and its last error was
#   retryable (a non-retryable error is not a retry strategy's failure);
# * a fallback was tried when another tool (the stage's fallback) wrote the outcome of a
#   target this tool failed on; it succeeded when that outcome is `succeeded`;
# * anything else the tool failed on and that ended `succeeded` was recovered by a human
#   (an operator's retry, a DLQ replay).
# Time to recovery: from an execution's first error to its success (the ledger's
# `resolved_at`, written by the succeeding attempt).


class StrategyStats(BaseModel):
    tool: str
    dependency: str  # "-": not an outbound HTTP call
    retry_recoveries: int = 0
    success_attempts: dict[int, int] = Field(default_factory=dict)  # attempt -> recoveries at it
    success_attempt_p95: int | None = None
    retries_exhausted: int = 0
    # p95 of the attempt that was needed, counting an exhausted run of n attempts as n+1
    # (it needed more than it had): what an adaptive plan sizes its attempts by
    attempts_needed_p95: int | None = None
    fallback_tried: int = 0
    fallback_succeeded: int = 0
    fallback_success_rate: float | None = None
    recovered_with_human: int = 0
    time_to_recovery_median_seconds: float | None = None
    time_to_recovery_p90_seconds: float | None = None
    # median over recoveries of (time to recovery / retries it took): the backoff that record suggests
    seconds_per_retry_median: float | None = None

    @property
    def samples(self) -> int:
        """Runs the retry strategy was tried on and the result is known."""
        return self.retry_recoveries + self.retries_exhausted


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


def _execution(event: ErrorEvent) -> str:
    """Events of one activity execution share their id up to the attempt number."""
    return event.event_id.rsplit("/", 1)[0]


class _Tally:
    def __init__(self) -> None:
        self.attempts: list[int] = []
        self.exhausted: list[int] = []
        self.ttr: list[float] = []
        self.per_retry: list[float] = []
        self.fallback_tried = 0
        self.fallback_succeeded = 0
        self.human = 0


def compute_strategies(
    rows: list[ErrorEvent],
    outcomes: dict[tuple[str, str, str], TargetOutcome],
    dead_letters: list[DeadLetterMark],
) -> list[StrategyStats]:
    """Every figure of `errors stats --strategies` (pure; see the comment above)."""
    marks: dict[tuple[str, str, str], list[datetime]] = {}
    for d in dead_letters:
        marks.setdefault((d.workflow_id, d.stage_id, d.target), []).append(d.last_failure_at)
    by_key: dict[tuple[str, str, str], dict[str, list[ErrorEvent]]] = {}
    for r in rows:
        by_key.setdefault((r.assessment_id, r.stage_id, r.target), {}).setdefault(r.tool, []).append(r)

    tallies: dict[tuple[str, str], _Tally] = {}
    for key, per_tool in by_key.items():
        outcome = outcomes.get(key)
        if outcome is None:
            continue  # still running, or its results were never written: nothing known yet
        for tool, events in per_tool.items():
            deps = Counter(e.dependency for e in events if e.dependency)
            tally = tallies.setdefault((tool, deps.most_common(1)[0][0] if deps else NO_DEPENDENCY), _Tally())
            if outcome.tool != tool:
                if outcome.state in ("succeeded", "failed"):
                    tally.fallback_tried += 1
                    tally.fallback_succeeded += outcome.state == "succeeded"
                continue
            executions: dict[str, list[ErrorEvent]] = {}
            for e in events:
                executions.setdefault(_execution(e), []).append(e)
            last = max(executions.values(), key=lambda ev: (min(e.occurred_at for e in ev), _execution(ev[0])))
            first_error = min(e.occurred_at for e in last)
            last_attempt = max(e.attempt for e in last)
            if outcome.state == "failed":
                if max(last, key=lambda e: (e.attempt, e.occurred_at)).retryable:
                    tally.exhausted.append(last_attempt)
                continue
            if outcome.state != "succeeded":
                continue
            human = any(at >= first_error for at in marks.get(key, []))
            if outcome.attempts > 1 and last_attempt < outcome.attempts and not human:
                resolved = [e.resolved_at for e in last if e.resolved_at is not None]
                end = max(resolved) if resolved else outcome.updated_at
                seconds = max((end - first_error).total_seconds(), 0.0) if end is not None else None
                tally.attempts.append(outcome.attempts)
                if seconds is not None:
                    tally.ttr.append(seconds)
                    tally.per_retry.append(seconds / (outcome.attempts - 1))
            else:
                tally.human += 1

    result = []
    for (tool, dependency), t in sorted(tallies.items()):
        needed = t.attempts + [n + 1 for n in t.exhausted]
        p95 = percentile([float(a) for a in t.attempts], 95)
        p95_needed = percentile([float(a) for a in needed], 95)
        result.append(
            StrategyStats(
                tool=tool,
                dependency=dependency,
                retry_recoveries=len(t.attempts),
                success_attempts=dict(sorted(Counter(t.attempts).items())),
                success_attempt_p95=int(p95) if p95 is not None else None,
                retries_exhausted=len(t.exhausted),
                attempts_needed_p95=int(p95_needed) if p95_needed is not None else None,
                fallback_tried=t.fallback_tried,
                fallback_succeeded=t.fallback_succeeded,
                fallback_success_rate=(t.fallback_succeeded / t.fallback_tried) if t.fallback_tried else None,
                recovered_with_human=t.human,
                time_to_recovery_median_seconds=percentile(t.ttr, 50),
                time_to_recovery_p90_seconds=percentile(t.ttr, 90),
                seconds_per_retry_median=percentile(t.per_retry, 50),
            )
        )
    return result


def load_outcomes(store: FindingsStore, keys: set[tuple[str, str, str]]) -> dict[tuple[str, str, str], TargetOutcome]:
    """The stage results of `keys` (assessment, stage, target), read stage by stage."""
    stages: dict[tuple[str, str], set[str]] = {}
    for assessment_id, stage_id, target in keys:
        stages.setdefault((assessment_id, stage_id), set()).add(target)
    found: dict[tuple[str, str, str], TargetOutcome] = {}
    for (assessment_id, stage_id), targets in stages.items():
        after: tuple[str, str] | None = None
        while True:
            page = store.list_target_outcomes(assessment_id, stage_id=stage_id, after=after, limit=1000)
            for o in page:
                if o.target in targets:
                    found[(assessment_id, stage_id, o.target)] = o
            if len(page) < 1000:
                break
            after = (page[-1].stage_id, page[-1].target)
    return found


def load_strategies(store: FindingsStore, since: datetime | None = None, *, tools: set[str] | None = None) -> list[StrategyStats]:
    """`compute_strategies` over the ledger since `since` (of `tools` only, when given)."""
    rows = load_error_rows(store, since)
    if tools is not None:
        # a fallback still shows: its tool is the one on the outcome, not in these rows
        rows = [r for r in rows if r.tool in tools]
    outcomes = load_outcomes(store, {(r.assessment_id, r.stage_id, r.target) for r in rows})
    return compute_strategies(rows, outcomes, load_dead_letter_marks(store))
