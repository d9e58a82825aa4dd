"""Scan locks in bulk: one activity takes a batch of hosts' locks, one gives them back.

A batch is a slice of the spec's sorted lock keys (`secflow.locking.lock_keys`), named
by the spec's digest and a batch number so the input stays small at any target count;
explicit keys are accepted too. Both activities are idempotent: acquiring keys one
already holds succeeds again, releasing what is gone releases nothing.

A lock (or waiter ticket) whose holder is an assessment that is no longer running was
left by a run that never compensated (terminated by an operator or a server limit):
it is taken over, with a warning in the worker log, rather than making every later
scan of those hosts wait.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict

from temporalio import activity

from activities.runner import classified
from secflow.documents import load_spec
from secflow.errors import InvalidInputError
from secflow.liveness import workflow_is_gone
from secflow.locking import BulkLockOutcome, BulkLockRequest, lock_keys
from secflow.logging import get_logger
from secflow.store import FindingsStore, open_store

# Sorted keys per spec digest: 100 batches of a 100,000-target spec compute them once.
_KEYS_CACHE_SIZE = 8
_keys_cache: OrderedDict[str, list[str]] = OrderedDict()
_keys_lock = threading.Lock()


def _spec_keys(store: FindingsStore, ref: str) -> list[str]:
    with _keys_lock:
        keys = _keys_cache.get(ref)
        if keys is not None:
            _keys_cache.move_to_end(ref)
            return keys
    keys = lock_keys(load_spec(store, ref))
    with _keys_lock:
        _keys_cache[ref] = keys
        while len(_keys_cache) > _KEYS_CACHE_SIZE:
            _keys_cache.popitem(last=False)
    return keys


def _batch_keys(store: FindingsStore, req: BulkLockRequest) -> tuple[list[str], int]:
    """(the keys of this request, the spec's total key count or 0 for explicit keys)."""
    if req.spec_ref:
        if req.keys:
            raise InvalidInputError("a bulk lock request gives spec_ref or keys, not both")
        every = _spec_keys(store, req.spec_ref)
        start = req.batch * req.batch_size
        return every[start : start + req.batch_size], len(every)
    return sorted(set(req.keys)), 0


@activity.defn(name="acquire_scan_locks")
@classified
async def acquire_scan_locks(req: BulkLockRequest) -> BulkLockOutcome:
    """Take the batch's scan locks for `req.holder`, all or nothing (see the module doc)."""
    store = open_store()
    keys, total = await asyncio.to_thread(_batch_keys, store, req)
    if not keys:
        return BulkLockOutcome(acquired=True, keys=0, total_keys=total)
    result = await asyncio.to_thread(store.acquire_locks, keys, req.holder)
    if not result.acquired:
        blockers = sorted(set(result.conflicts.values()) - {req.holder})
        client = activity.client()
        gone = await asyncio.gather(*(workflow_is_gone(client, holder) for holder in blockers))
        stale = [holder for holder, is_gone in zip(blockers, gone, strict=True) if is_gone]
        if stale:
            log = get_logger(component="locks")
            for holder in stale:
                released = await asyncio.to_thread(store.release_locks, holder)
                log.warning(
                    "taking over stale scan locks",
                    stale_holder=holder,
                    new_holder=req.holder,
                    released=released,
                    keys=sorted(k for k, h in result.conflicts.items() if h == holder),
                )
            result = await asyncio.to_thread(store.acquire_locks, keys, req.holder)
    return BulkLockOutcome(acquired=result.acquired, conflicts=result.conflicts, keys=len(keys), total_keys=total)


@activity.defn(name="release_scan_locks")
@classified
async def release_scan_locks(req: BulkLockRequest) -> BulkLockOutcome:
    """Release `req.keys` of `req.holder` (every lock and waiter ticket when keys is empty)."""
    store = open_store()
    released = await asyncio.to_thread(store.release_locks, req.holder, req.keys or None)
    return BulkLockOutcome(acquired=False, keys=len(set(req.keys)), released=released)
