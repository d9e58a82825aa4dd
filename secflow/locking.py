"""Scan locks: which key a target locks, and the bulk lock activities' inputs and outputs.

Scan locks protect targets from being scanned twice at once, so they are per host: a
URL target and a host target on the same machine share one key. A path target (a
repository read by SAST, secrets and SCA tools) is only read, so it needs no lock and
two assessments of the same repository never wait on each other.

Locks are taken in bulk (`FindingsStore.acquire_locks`): a batch of keys at a time,
sorted and all or nothing, first come first served. The keys of an assessment are
`lock_keys(spec)`; batch `i` of size `n` is ``lock_keys(spec)[i*n:(i+1)*n]``, so a
workflow can carry a spec reference and a batch number instead of the keys themselves.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from secflow.spec import Spec, Target

__all__ = ["BulkLockOutcome", "BulkLockRequest", "lock_key", "lock_keys"]


def lock_key(target: Target) -> str | None:
    """The scan-lock key of `target`: its lowercased host; None for a path target."""
    if target.kind == "url":
        return (urlsplit(target.value).hostname or target.value).lower()
    if target.kind == "host":
        return target.value.lower()
    return None


def lock_keys(spec: Spec) -> list[str]:
    """Every scan-lock key the spec's targets need, sorted and deduplicated."""
    return sorted({key for key in map(lock_key, spec.targets) if key is not None})


class BulkLockRequest(BaseModel):
    """Input of `acquire_scan_locks` / `release_scan_locks`.

    Either `spec_ref` (a stored spec's digest) with `batch` and `batch_size`, so the
    payload stays small whatever the number of hosts, or explicit `keys`. For release,
    empty `keys` means every lock and waiter ticket of `holder`.
    """

    holder: str = Field(min_length=1)
    spec_ref: str = ""
    batch: int = Field(0, ge=0)
    batch_size: int = Field(1000, ge=1)
    keys: list[str] = Field(default_factory=list)


class BulkLockOutcome(BaseModel):
    """What a bulk lock activity did.

    `acquired`: every key of the batch is held by the holder. `conflicts`: key -> the
    holder (or older waiter) in the way, at most 20 entries. `keys`: keys in this batch;
    `total_keys`: keys of the whole spec (0 when explicit keys were given); `released`:
    locks released (release only).
    """

    acquired: bool = False
    conflicts: dict[str, str] = Field(default_factory=dict)
    keys: int = 0
    released: int = 0
    total_keys: int = 0
