"""python -m starter errors stats [--since 24h] [--strategies] [--json]: error analytics from the ledger.

Counts by category, tool and dependency; automatic recovery rate; mean time to recovery;
open incidents; top recurring errors; DLQ entries by state. The computation is
`secflow.error_stats.compute_stats` (pure); this module reads the store, asks Temporal
for the open incidents and renders.

Open incidents are counted through Temporal visibility (running IncidentWorkflow
executions whose SecflowIncidentState is not `resolved`). When Temporal cannot be asked,
the store's figures are still printed, open incidents show as unknown (`null` in JSON),
a note goes to stderr, and the exit status stays 0: the ledger is the primary source.

`--strategies` shows instead how each recovery strategy performed per tool and dependency
(`secflow.error_stats.compute_strategies`: retries that succeeded at attempt k, retries
exhausted, fallback success rate, median/p90 time to recovery, sample size): the record
that `retry: {adaptive: true}` reads (docs/adaptive.md). It needs only the store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

from secflow.error_stats import (
    ErrorStats,
    StrategyStats,
    compute_stats,
    load_dead_letter_marks,
    load_error_rows,
    load_strategies,
    load_validations,
    parse_since,
)
from secflow.settings import Settings
from secflow.store import open_store
from starter.cli import EXIT_BAD_INPUT, EXIT_OK, CliError, connect_or_fail

CONNECT_TIMEOUT = 10.0  # seconds; an unreachable Temporal must not hang the report
_RUNNING_INCIDENTS = "WorkflowType = 'IncidentWorkflow' AND ExecutionStatus = 'Running'"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("errors", help="error analytics")
    esub = p.add_subparsers(dest="errors_command", required=True, metavar="ACTION")
    q = esub.add_parser("stats", help="counts, recovery rate, time to recovery, incidents, recurring errors")
    q.add_argument("--since", default="24h", metavar="DURATION", help="window back from now (default 24h; e.g. 30m, 7d)")
    q.add_argument("--all", action="store_true", help="every recorded error, ignoring --since")
    q.add_argument(
        "--strategies",
        action="store_true",
        help="per tool and dependency: how retries and fallbacks recovered (docs/adaptive.md)",
    )
    q.add_argument("--json", action="store_true")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    now = datetime.now(UTC)
    since: datetime | None = None
    if not args.all:
        try:
            since = parse_since(args.since, now)
        except ValueError as exc:
            raise CliError(f"--since: {exc}", EXIT_BAD_INPUT) from None
    store = open_store()
    if args.strategies:
        record = await asyncio.to_thread(load_strategies, store, since)
        print(render_strategies_json(record, since, now) if args.json else render_strategies(record, since))
        return EXIT_OK
    rows, marks, checks = await asyncio.to_thread(
        lambda: (load_error_rows(store, since), load_dead_letter_marks(store), load_validations(store, since))
    )
    incidents, why = await count_open_incidents(settings)
    if incidents is None:
        print(f"note: open incidents unknown: {why}", file=sys.stderr)
    stats = compute_stats(rows, marks, open_incidents=incidents, until=now, since=since, validations=checks)
    if args.json:
        print(stats.model_dump_json(indent=2))
    else:
        print(render(stats))
    return EXIT_OK


async def count_open_incidents(settings: Settings) -> tuple[int | None, str]:
    """(count, "") or (None, why not)."""
    try:
        client = await asyncio.wait_for(connect_or_fail(settings), CONNECT_TIMEOUT)
    except CliError as exc:
        return None, str(exc)
    except TimeoutError:
        return None, f"Temporal at {settings.temporal_address} did not answer within {CONNECT_TIMEOUT:g}s"
    try:
        running = (await client.count_workflows(_RUNNING_INCIDENTS)).count
        resolved = (
            (await client.count_workflows(f"{_RUNNING_INCIDENTS} AND SecflowIncidentState = 'resolved'")).count if running else 0
        )
    except Exception as exc:  # visibility refused the query (attribute not registered, ...)
        return None, f"visibility query failed: {getattr(exc, 'message', None) or exc}"
    return running - resolved, ""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _secs(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _counts(title: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return [f"{title}: none"]
    width = max(len(k) for k in counts)
    return [f"{title}:"] + [f"  {k:<{width}}  {v}" for k, v in counts.items()]


def render(stats: ErrorStats) -> str:
    window = f"since {stats.since:%Y-%m-%d %H:%M} UTC" if stats.since else "all time"
    lines = [f"errors {window}: {stats.total}"]
    lines += _counts("by category", stats.by_category)
    lines += _counts("by tool", stats.by_tool)
    lines += _counts("by dependency ('-' = not an outbound HTTP call)", stats.by_dependency)
    lines += _counts("by outcome ('open' = not resolved yet)", stats.by_outcome)
    lines.append(
        f"automatic recovery rate: {_pct(stats.automatic_recovery_rate)} "
        f"({stats.recovered_automatically} of {stats.resolved} resolved; {stats.recovered_with_human} more recovered after a human stepped in)"
    )
    lines.append(f"mean time to recovery: {_secs(stats.mean_time_to_recovery_seconds)} ({stats.recovered} recovered)")
    lines += _counts("by ladder rung ('-' = no rung recorded)", stats.by_rung)
    if stats.ladder_by_stage:
        lines.append("ladder per stage (rung that handled each error last: count):")
        for sid, rungs in stats.ladder_by_stage.items():
            lines.append(f"  {sid}: " + ", ".join(f"{k} {v}" for k, v in rungs.items()))
    v = stats.validations
    lines.append(f"recovery validations: {v.get('validated', 0)} validated, {v.get('failed', 0)} failed validation")
    lines.append(f"open incidents: {'unknown' if stats.open_incidents is None else stats.open_incidents}")
    lines.append("dead-letter queue: " + ", ".join(f"{n} {state}" for state, n in stats.dead_letters.items()))
    if stats.top_recurring:
        lines.append("top recurring errors:")
        for g in stats.top_recurring:
            lines.append(f"  {g.count:>4}x  {g.category:<13} {g.tool or '-':<14} {g.message}")
    return "\n".join(lines)


def render_strategies_json(record: list[StrategyStats], since: datetime | None, until: datetime) -> str:
    return json.dumps(
        {
            "since": since.isoformat() if since else None,
            "until": until.isoformat(),
            "strategies": [{**s.model_dump(mode="json"), "samples": s.samples} for s in record],
        },
        indent=2,
    )


def _attempts(counts: dict[int, int]) -> str:
    return " ".join(f"{k}:{n}" for k, n in sorted(counts.items())) or "-"


def render_strategies(record: list[StrategyStats], since: datetime | None) -> str:
    window = f"since {since:%Y-%m-%d %H:%M} UTC" if since else "all time"
    if not record:
        return f"recovery strategies {window}: nothing recovered or exhausted yet"
    head = ("tool/dependency", "samples", "retry ok at attempt k (k:n)", "p95", "exhausted", "fallback", "human",
            "ttr p50", "ttr p90")  # fmt: skip
    rows = [
        (
            f"{s.tool}/{s.dependency}",
            str(s.samples),
            _attempts(s.success_attempts),
            "-" if s.success_attempt_p95 is None else str(s.success_attempt_p95),
            str(s.retries_exhausted),
            "-" if not s.fallback_tried else f"{s.fallback_succeeded}/{s.fallback_tried} ({_pct(s.fallback_success_rate)})",
            str(s.recovered_with_human),
            _secs(s.time_to_recovery_median_seconds),
            _secs(s.time_to_recovery_p90_seconds),
        )
        for s in record
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"recovery strategies {window} (samples = retry recoveries + exhausted retries):"]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    return "\n".join(lines)
