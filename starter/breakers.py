"""python -m starter breakers [--json] [--all]: every worker's circuit breakers, from the store.

Workers write one row per (worker, dependency) to ``breaker_states`` on every transition
and refresh all their rows every ``SECFLOW_BREAKER_REFRESH`` seconds (default 60). Staleness
rule: a worker whose newest row is older than 3 refresh intervals (default 180 s) has
stopped, crashed or lost the store; its rows are "possibly stale". So is a worker whose id
is ``<this host>:<pid>`` when no process with that pid runs here (it ended; no need to
wait the 180 s). They are hidden unless
``--all`` is given (then shown and marked); a line at the end says how many were hidden.
No Temporal connection is needed: this reads the store (``SECFLOW_DB_URL`` /
``SECFLOW_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

from secflow.http.breaker_store import STALE_AFTER_REFRESHES, BreakerRow, list_breaker_rows, refresh_interval
from secflow.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser("breakers", help="circuit breaker state per worker and dependency (from the store)")
    p.add_argument("--json", action="store_true", help="print JSON (a list of rows)")
    p.add_argument("--all", action="store_true", help="include workers not heard from recently (marked possibly stale)")


def _ago(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _clock(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _gone_from_this_host(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but not ours (EPERM), or cannot tell
        return False
    return False


def describe(rows: list[BreakerRow], *, now: datetime, stale_after: float) -> list[dict[str, Any]]:
    """Rows with what a reader wants: staleness of their worker, time to half-open."""
    newest: dict[str, datetime] = {}
    for r in rows:
        if r.worker_id not in newest or r.updated_at > newest[r.worker_id]:
            newest[r.worker_id] = r.updated_at
    gone = {w for w in newest if _gone_from_this_host(w)}
    out = []
    for r in rows:
        heard = (now - newest[r.worker_id]).total_seconds()
        stale_reason = ""
        if heard > stale_after:
            stale_reason = f"not heard from in {_ago(heard)} (refreshes every {_ago(stale_after / 3)})"
        elif r.worker_id in gone:
            stale_reason = "its process is not running on this host"
        half_open_in = None
        if r.state == "open" and r.next_half_open_at is not None:
            half_open_in = round((r.next_half_open_at - now).total_seconds(), 3)
        out.append(
            {
                "worker_id": r.worker_id,
                "dependency": r.dependency,
                "state": r.state,
                "failures": r.failures,
                "trips": r.trips,
                "opened_at": r.opened_at.isoformat() if r.opened_at else None,
                "next_half_open_at": r.next_half_open_at.isoformat() if r.next_half_open_at else None,
                "half_open_in_seconds": half_open_in,
                "updated_at": r.updated_at.isoformat(),
                "updated_seconds_ago": round((now - r.updated_at).total_seconds(), 3),
                "worker_last_seen_seconds": round(heard, 3),
                "stale": bool(stale_reason),
                "stale_reason": stale_reason,
            }
        )
    return out


def _table(items: list[dict[str, Any]]) -> str:
    head = ["WORKER", "DEPENDENCY", "STATE", "FAILURES", "TRIPS", "OPENED AT (UTC)", "HALF-OPEN", "UPDATED"]
    lines = [head]
    for it in items:
        state = it["state"]
        if it["stale"]:
            state += " (possibly stale)"
        if state.startswith("open") and it["half_open_in_seconds"] is not None:
            left = it["half_open_in_seconds"]
            when = datetime.fromisoformat(it["next_half_open_at"])
            half = f"{_clock(when)} (in {_ago(left)})" if left > 0 else f"{_clock(when)} (due: next call is a trial)"
        elif it["state"] == "half_open":
            half = "now (trial calls)"
        else:
            half = "-"
        opened = _clock(datetime.fromisoformat(it["opened_at"])) if it["opened_at"] else "-"
        updated = f"{_clock(datetime.fromisoformat(it['updated_at']))} ({_ago(it['updated_seconds_ago'])} ago)"
        lines.append([it["worker_id"], it["dependency"], state, str(it["failures"]), str(it["trips"]), opened, half, updated])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines)


def _load() -> list[BreakerRow]:
    from secflow.store import open_store

    return list_breaker_rows(open_store())


async def run(args: argparse.Namespace, settings: Settings) -> int:
    from starter.cli import CliError

    try:
        stale_after = STALE_AFTER_REFRESHES * refresh_interval()
    except ValueError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    try:
        rows = await asyncio.to_thread(_load)
    except ValueError as exc:  # a malformed SECFLOW_DB_URL / busy timeout: the user's to fix
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    except Exception as exc:
        from secflow.errors import classify
        from secflow.redaction import redact

        c = classify(exc)
        raise CliError(f"cannot read breaker states from the store ({c.category.value}: {redact(str(exc))})") from None
    items = describe(rows, now=datetime.now(UTC), stale_after=stale_after)
    hidden = [it for it in items if it["stale"]] if not args.all else []
    shown = [it for it in items if args.all or not it["stale"]]
    if args.json:
        print(json.dumps(shown, indent=2))
        return EXIT_OK
    if not shown:
        print("no circuit breaker states recorded" + (" by live workers" if hidden else ""))
    else:
        print(_table(shown))
    if hidden:
        workers = len({it["worker_id"] for it in hidden})
        print(
            f"\n{len(hidden)} row(s) of {workers} possibly stale worker(s) hidden (not heard from in over "
            f"{timedelta(seconds=stale_after)}, or no longer running); --all shows them"
        )
    return EXIT_OK
