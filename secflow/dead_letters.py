"""The dead-letter queue: tasks that ended unrecoverable, parked for an operator.

A task lands here when its retries are exhausted and its stage failed, when a
compensation failed, or on a security violation. Each entry keeps what is needed to
replay it (`ReplayRecipe`): `python -m starter dlq replay ID` re-runs the stage in the
parked workflow when it still waits, or starts a new assessment for just that stage and
target.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:  # the workflow sandbox imports the models; keep the store out of it
    from secflow.store import FindingsStore

__all__ = [
    "AmbiguousRef",
    "BadDeadLetterId",
    "DeadLetter",
    "DeadLetterInput",
    "DeadLetterReason",
    "DeadLetterResult",
    "ReplayRecipe",
    "counts_by_state",
    "dead_letter_task_id",
    "find_dead_letter",
    "get_dead_letter",
    "list_dead_letters",
    "mark_replayed",
    "mark_replaying",
    "park",
    "purge",
    "ref_for",
    "restore_replay_state",
]

DeadLetterReason = Literal["retries_exhausted", "compensation_failed", "security_violation"]


class ReplayRecipe(BaseModel):
    """Enough of the original spec to run the one stage on the one target again."""

    spec_name: str
    scope: list[str]
    stage: dict[str, Any]  # the spec's Stage, as JSON (dependencies dropped on replay)
    target: dict[str, Any] | None = None  # the spec's Target; None for target-less tools
    task_queue: str = ""
    # For a target-less tool (enrich, report): the spec's targets, so the one-stage spec
    # of a replay is still a valid spec. Empty: use `target`.
    spec_targets: list[dict[str, Any]] = Field(default_factory=list)


class DeadLetterInput(BaseModel):
    task_id: str  # deterministic (see dead_letter_task_id): parking twice is one entry
    workflow_id: str
    run_id: str
    stage_id: str
    target: str = ""
    tool: str = ""
    reason: DeadLetterReason
    category: str
    message: str  # redacted again by the activity before it is stored
    attempts: int = 1
    first_failure_at: datetime
    last_failure_at: datetime
    replay: ReplayRecipe | None = None  # None for what cannot be replayed (a compensation)
    extra: dict[str, Any] = Field(default_factory=dict)
    # Why the failure got `category` (the classifier's reason, e.g. "ECONNREFUSED"). Empty:
    # the store takes the latest reason the error ledger holds for the stage and target.
    error_reason: str = ""


class DeadLetterResult(BaseModel):
    task_id: str
    created: bool  # False when the entry already existed (a retried activity, a replay)


def dead_letter_task_id(workflow_id: str, run_id: str, stage_id: str, target: str, reason: str) -> str:
    return f"{workflow_id}/{run_id}/{stage_id}/{target or '-'}/{reason}"


# --- store access --------------------------------------------------------------------------
#
# Functions over a FindingsStore, so the activity, the starter and the tests share one
# implementation; the SQL is the store's dead-letter repository (`store.dead_letters`,
# secflow/store/dead_letters.py). States:
#
#   parked     waiting for an operator (a new failure of the same task re-parks it here)
#   replaying  `dlq replay` started it again; `replay_workflow_id` says where
#   replayed   the replay ended; `replay_outcome` says how (completed, failed, ...)

DeadLetterState = Literal["parked", "replaying", "replayed"]
STATES: tuple[str, ...] = ("parked", "replaying", "replayed")

# A short, stable alias for an id (which contains '/' and can be long): the first
# characters of its SHA-256. `dlq` commands accept it wherever they accept the id.
REF_LENGTH = 10
MIN_REF_LENGTH = 6
_REF_RE = re.compile(r"^[0-9a-f]{%d,64}$" % MIN_REF_LENGTH)  # noqa: UP031 - an f-string would need the braces doubled
MAX_ID_LENGTH = 2048


class DeadLetter(BaseModel):
    """One DLQ entry as stored."""

    task_id: str
    workflow_id: str
    run_id: str
    stage_id: str
    target: str
    tool: str
    reason: str
    category: str
    message: str
    attempts: int
    first_failure_at: datetime
    last_failure_at: datetime
    replay: ReplayRecipe | None = None
    state: DeadLetterState
    replayed_at: datetime | None = None
    replay_outcome: str | None = None
    replay_workflow_id: str | None = None
    error_reason: str = ""  # the classifier's reason for `category` ("" when none is known)

    @property
    def ref(self) -> str:
        return ref_for(self.task_id)

    @property
    def in_place(self) -> bool:
        """Whether the replay re-ran the stage inside the parked workflow itself."""
        return bool(self.replay_workflow_id) and self.replay_workflow_id == self.workflow_id

    def as_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["ref"] = self.ref
        return data


class BadDeadLetterId(ValueError):
    """A string that can be neither a task id nor a ref (exit 2 in the CLI)."""


class AmbiguousRef(LookupError):
    """A ref prefix that matches several entries."""


def ref_for(task_id: str) -> str:
    return hashlib.sha256(task_id.encode("utf-8")).hexdigest()[:REF_LENGTH]


def check_id(value: str) -> str:
    """Refuse what cannot be an id or a ref: empty, control characters, absurd length."""
    if not isinstance(value, str) or not value.strip():
        raise BadDeadLetterId("a dead-letter id must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise BadDeadLetterId(f"a dead-letter id is at most {MAX_ID_LENGTH} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise BadDeadLetterId("a dead-letter id has no control characters")
    if "/" not in value and not _REF_RE.match(value):
        raise BadDeadLetterId(
            f"{value[:80]!r} is neither a dead-letter id (workflow/run/stage/target/reason) "
            f"nor a ref ({MIN_REF_LENGTH}+ lowercase hex characters, as `dlq list` shows)"
        )
    return value


def park(store: FindingsStore, inp: DeadLetterInput) -> DeadLetterResult:
    """Write the entry, or refresh it: parking the same task twice is one entry.

    A second park (a retried activity, or the task failing again after a replay) keeps
    first_failure_at, moves last_failure_at forward (never back), keeps the highest
    attempt count and the latest message, and puts a replayed entry back to `parked`:
    it failed again, so it needs an operator again.
    """
    return store.dead_letters.park(inp)


def list_dead_letters(
    store: FindingsStore,
    *,
    state: str | None = None,
    workflow_id: str | None = None,
    since: datetime | None = None,
) -> list[DeadLetter]:
    """Entries, newest failure first; filtered by state, parked workflow and last failure time."""
    return store.dead_letters.list_entries(state=state, workflow_id=workflow_id, since=since)


def get_dead_letter(store: FindingsStore, task_id: str) -> DeadLetter | None:
    return store.dead_letters.get(task_id)


def find_dead_letter(store: FindingsStore, id_or_ref: str) -> DeadLetter | None:
    """By full task id, or by ref (a prefix of at least MIN_REF_LENGTH of `ref_for(id)`).

    Raises BadDeadLetterId for malformed input and AmbiguousRef when a prefix matches
    more than one entry.
    """
    check_id(id_or_ref)
    entry = get_dead_letter(store, id_or_ref)
    if entry is not None or "/" in id_or_ref:
        return entry
    ids = store.dead_letters.task_ids()
    matches = [i for i in ids if hashlib.sha256(i.encode("utf-8")).hexdigest().startswith(id_or_ref)]
    if len(matches) > 1:
        raise AmbiguousRef(f"ref {id_or_ref!r} matches {len(matches)} entries; give more characters or the full id")
    return get_dead_letter(store, matches[0]) if matches else None


def mark_replaying(store: FindingsStore, task_id: str, replay_workflow_id: str, *, claim: bool = False) -> bool:
    """The entry is being replayed in `replay_workflow_id`. False if the entry is gone.

    `claim=True` is a compare-and-set: it only succeeds when the entry is not already
    `replaying`, so two operators replaying at once start one replay, not two.
    """
    return store.dead_letters.mark_replaying(task_id, replay_workflow_id, claim=claim)


def restore_replay_state(store: FindingsStore, entry: DeadLetter, replay_workflow_id: str) -> bool:
    """Undo a claim whose replay could not be started: put back what `entry` had."""
    return store.dead_letters.restore_replay_state(entry, replay_workflow_id)


def mark_replayed(store: FindingsStore, task_id: str, outcome: str, replay_workflow_id: str) -> bool:
    """The replay in `replay_workflow_id` ended with `outcome`.

    Only the replay the entry points at may close it: a stale `--wait` from an older
    replay does not overwrite a newer one. False when nothing was changed.
    """
    return store.dead_letters.mark_replayed(task_id, outcome, replay_workflow_id)


def purge(
    store: FindingsStore,
    *,
    task_ids: list[str] | None = None,
    replayed: bool = False,
    older_than: datetime | None = None,
) -> list[str]:
    """Delete entries; returns the ids deleted.

    Either name entries (`task_ids`: deleted whatever their state; naming is explicit
    enough), or `replayed=True` for every entry in state `replayed` (optionally only
    those whose last failure is before `older_than`). Anything else is refused: an
    unreplayed entry is never dropped by a broad filter.
    """
    return store.dead_letters.purge(task_ids=task_ids, replayed=replayed, older_than=older_than)


def counts_by_state(store: FindingsStore) -> dict[str, int]:
    """Entries per state, every state present (zero included)."""
    return store.dead_letters.counts_by_state()
