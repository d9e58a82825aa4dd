"""The recovery ladder: what `on_failure` means as an ordered list of rungs.

After Temporal's own retries of a stage's tool (the implicit first rung, `retry`), a
stage that still has failed targets walks its ladder top to bottom:

- `fallback`: run `fallback_tool` on the failed targets (the stage ends `partial`);
- `await_approval`: a human answers `retry` (re-run the failed targets; if they fail
  again the same human rung asks again), `skip` (stage skipped) or `reject` (fall to the
  next rung); a wait that reaches its deadline applies `on_wait_timeout` (`fail`/`reject`
  fall to the next rung, `skip` skips);
- `dead_letter` (terminal): park the failed targets in the dead-letter queue; the stage
  ends `failed` (a required stage stops the assessment);
- `fail` (terminal): the stage ends `failed`, nothing is parked;
- `skip` (terminal): the stage ends `skipped` (its failed targets are parked, as always
  when a stage is skipped after failing).

A ladder that does not end in a terminal rung ends in `dead_letter`. The single values
keep the meaning they always had:

    fail           == [dead_letter]
    skip           == [skip]
    await_approval == [await_approval, dead_letter]
    fallback       == [fallback, dead_letter]

Every error event in the ledger records the rung that handled it last and its outcome
(`retry: recovered`, `fallback: failed`, `human: skipped`, `dead_letter: parked`); the
ledger's rung names are `RUNG_LABEL`'s (`await_approval` is `human` there).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

Rung = Literal["fallback", "await_approval", "dead_letter", "fail", "skip"]
RUNGS: tuple[str, ...] = get_args(Rung)
TERMINAL_RUNGS = frozenset({"dead_letter", "fail", "skip"})
SINGLE_VALUES = ("fail", "skip", "await_approval", "fallback")

# A single `on_failure` value as the ladder it always meant.
SINGLE_LADDERS: dict[str, tuple[str, ...]] = {
    "fail": ("dead_letter",),
    "skip": ("skip",),
    "await_approval": ("await_approval", "dead_letter"),
    "fallback": ("fallback", "dead_letter"),
}

# How each rung is named in the error ledger, `status`, reports and `errors stats`.
RUNG_LABEL: dict[str, str] = {
    "retry": "retry",
    "fallback": "fallback",
    "await_approval": "human",
    "dead_letter": "dead_letter",
    "fail": "fail",
    "skip": "skip",
}

# Outcomes a rung can end with, as the ledger writes them.
RungOutcome = Literal["recovered", "failed", "skipped", "parked", "cancelled", "degraded"]


def ladder_of(on_failure: str | list[str]) -> tuple[str, ...]:
    """The rungs `on_failure` walks after retries, ending in a terminal rung. Assumes a
    validated value (`ladder_problems` is empty)."""
    if isinstance(on_failure, str):
        return SINGLE_LADDERS[on_failure]
    rungs = tuple(on_failure)
    if not rungs or rungs[-1] not in TERMINAL_RUNGS:
        rungs += ("dead_letter",)
    return rungs


def ladder_problems(on_failure: Any, *, has_fallback_tool: bool) -> list[tuple[str, str]]:
    """(field suffix, reason) for each problem of an `on_failure` value; [] when valid.
    The suffix is "" for the field itself or "[i]" for one rung."""
    if isinstance(on_failure, str):
        if on_failure not in SINGLE_VALUES:
            return [
                (
                    "",
                    f"unknown policy {on_failure!r}; one of {', '.join(SINGLE_VALUES)}, or a list of rungs from {', '.join(RUNGS)}",
                )
            ]
        if on_failure == "fallback" and not has_fallback_tool:
            return [("", "on_failure: fallback needs a fallback_tool")]
        return []
    if not isinstance(on_failure, list) or not on_failure:
        return [("", "must be one of fail, skip, await_approval, fallback or a non-empty list of rungs")]
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    terminal_at: int | None = None
    for i, rung in enumerate(on_failure):
        where = f"[{i}]"
        if not isinstance(rung, str) or rung not in RUNGS:
            problems.append((where, f"unknown rung {rung!r}; rungs: {', '.join(RUNGS)}"))
            continue
        if rung in seen:
            problems.append((where, f"rung {rung!r} appears twice; each rung is tried once"))
            continue
        seen.add(rung)
        if terminal_at is not None:
            problems.append(
                (where, f"rung {rung!r} comes after the terminal rung {on_failure[terminal_at]!r}; nothing after it runs")
            )
            continue
        if rung in TERMINAL_RUNGS:
            terminal_at = i
        if rung == "fallback" and not has_fallback_tool:
            problems.append((where, "rung fallback needs a fallback_tool"))
    return problems
