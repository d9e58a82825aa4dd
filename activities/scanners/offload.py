"""Blocking scanner work off the event loop: file walks and output parsing, in a bounded pool.

Async activities share the worker's one event loop with every other activity and with the
heartbeats that keep them alive. A walk over a million files (or a symlink farm), or the
parsing of a large report, done on the loop stalls all of them: another assessment's
portscan then fails "no heartbeat". Such work goes through `off_loop`, which runs it in a
small process-wide thread pool (bounded, so a burst of scans queues instead of spawning a
thread each) and tells a walk to stop when its activity is cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from secflow.scope import WalkStopped  # raised by the walks this pool runs

__all__ = ["POOL_SIZE", "WalkStopped", "off_loop"]

T = TypeVar("T")

POOL_SIZE = 4
_POOL = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="secflow-scan")


async def off_loop(fn: Callable[[threading.Event], T]) -> T:
    """Run `fn(stop)` in the pool; `stop` is set if the awaiting task is cancelled, and a
    long-running `fn` checks it (e.g. once per directory) and raises `WalkStopped`."""
    stop = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(_POOL, fn, stop)
    try:
        return await future
    except asyncio.CancelledError:
        stop.set()
        raise
