"""Documents addressed by digest: the spec is stored once and travels as a reference.

An assessment's spec can be megabytes (100,000 targets); copying it into every
activity input would pass Temporal's payload limits. `save_spec` stores it in the
findings store under "sha256:<hex>"; activities get the digest and `load_spec` it.
Parsing a large spec costs real time, so each process keeps the last few parsed specs
by digest (a digest names one body forever, so the cache never goes stale). Callers
must treat a loaded Spec as read-only: it is shared.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from secflow.errors import PermanentError
from secflow.spec import Spec
from secflow.store import FindingsStore, document_digest

__all__ = ["SPEC_CACHE_SIZE", "cached_spec", "clear_spec_cache", "load_spec", "save_spec"]

# Parsed specs kept per process. Small: each may hold 100,000 targets.
SPEC_CACHE_SIZE = 8

_cache: OrderedDict[str, Spec] = OrderedDict()
_cache_lock = threading.Lock()


def save_spec(store: FindingsStore, spec: Spec) -> str:
    """Store the spec (its JSON) and return its digest, the reference to pass around."""
    ref = store.put_document(spec.model_dump_json())
    _remember(ref, spec)
    return ref


def load_spec(store: FindingsStore, ref: str) -> Spec:
    """The spec stored under `ref`, parsed once per process.

    Raises PermanentError when `ref` is not a digest or nothing is stored under it
    (a retry cannot make it appear: the store is not the one the spec was saved in).
    """
    if not isinstance(ref, str) or not ref.startswith("sha256:"):
        raise PermanentError(f"spec reference {ref!r} is not a document digest (expected sha256:<hex>)")
    with _cache_lock:
        spec = _cache.get(ref)
        if spec is not None:
            _cache.move_to_end(ref)
            return spec
    body = store.get_document(ref)
    if body is None:
        raise PermanentError(
            f"spec document {ref} is not in the findings store at {store.url}: "
            "was the assessment started against another SECFLOW_DB_URL or data dir?"
        )
    if document_digest(body) != ref:
        raise PermanentError(f"spec document {ref} in the findings store does not match its digest")
    spec = Spec.model_validate_json(body)
    _remember(ref, spec)
    return spec


def cached_spec(ref: str) -> Spec | None:
    """The spec under `ref` if this process has parsed it already (no store access)."""
    with _cache_lock:
        return _cache.get(ref)


def clear_spec_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _remember(ref: str, spec: Spec) -> None:
    with _cache_lock:
        _cache[ref] = spec
        _cache.move_to_end(ref)
        while len(_cache) > SPEC_CACHE_SIZE:
            _cache.popitem(last=False)
