"""Per-dependency settings for outbound HTTP: rate, circuit breaker, retries, deadline.

One row per external API SecFlow talks to. Unknown names get `DEFAULTS`, so a new client
is resilient before anyone tunes it. A few knobs can be overridden from the environment
without a code change (an operator facing a stricter quota at 3 a.m.):

    SECFLOW_HTTP_<DEP>_RATE       requests per second (token bucket)
    SECFLOW_HTTP_<DEP>_RETRIES    attempts per request inside the transport (1 = no retry)
    SECFLOW_HTTP_<DEP>_FAILURES   failures within the window that open the breaker

``<DEP>`` is the dependency name upper-cased, other characters as ``_`` (``osv`` -> ``OSV``).
"""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULTS", "DependencySettings", "register_dependency", "settings_for", "unregister_dependency"]


class DependencySettings(BaseModel):
    """How one dependency is called. Times are in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Rate limiting: a token bucket (`rate` per second, bursts up to `burst`), or, when
    # `window_limit` is set, at most `window_limit` requests in any rolling `window_seconds`.
    rate: float = Field(10.0, gt=0)
    burst: int = Field(10, ge=1)
    window_limit: int | None = Field(None, ge=1)
    window_seconds: float = Field(30.0, gt=0)

    # Circuit breaker: `failure_threshold` failures within `failure_window` open it for
    # `open_timeout`; every failed half-open trial doubles that, up to `max_open_timeout`.
    failure_threshold: int = Field(5, ge=1)
    failure_window: float = Field(60.0, gt=0)
    open_timeout: float = Field(30.0, gt=0)
    max_open_timeout: float = Field(600.0, gt=0)
    half_open_max_calls: int = Field(1, ge=1)

    # Retries inside the transport (the activity's Temporal retry is the outer loop, so
    # keep these few and short); full jitter between `retry_initial` and `retry_max`.
    retry_attempts: int = Field(3, ge=1)
    retry_initial: float = Field(0.5, gt=0)
    retry_max: float = Field(5.0, gt=0)
    # POST/PATCH are retried only when the server surely did not act on them (no
    # connection, 429/503) unless the API documents them as idempotent (OSV querybatch).
    retry_unsafe_methods: bool = False

    # Total time one request may take, retries and waits included (the per-phase
    # connect/read/write/pool timeouts still apply to every attempt).
    deadline: float = Field(60.0, gt=0)


DEFAULTS = DependencySettings()

_REGISTRY: dict[str, DependencySettings] = {
    # OSV checkpoints per batch and its activity retry is the recovery loop the sca tests
    # assert on (503 -> a second attempt that resumes): no retries inside the transport.
    "osv": DependencySettings(rate=20.0, burst=20, retry_attempts=1, retry_unsafe_methods=True),
    # NVD's public limit: 5 requests in a rolling 30 s window (50 with an API key).
    "nvd": DependencySettings(window_limit=5, window_seconds=30.0, open_timeout=60.0, deadline=120.0),
    "epss": DependencySettings(rate=5.0, burst=5),
    # CISA KEV is one static JSON file: rarely fetched, never hammered.
    "kev": DependencySettings(rate=1.0, burst=2),
}

_ENV_OVERRIDES = {"RATE": ("rate", float), "RETRIES": ("retry_attempts", int), "FAILURES": ("failure_threshold", int)}


def _env_name(dependency: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", dependency.upper())


def settings_for(dependency: str) -> DependencySettings:
    """The effective settings of `dependency`: registry row (or defaults) + env overrides."""
    base = _REGISTRY.get(dependency, DEFAULTS)
    updates: dict[str, object] = {}
    if dependency == "nvd" and base.window_limit == 5 and os.environ.get("SECFLOW_NVD_API_KEY", "").strip():
        updates["window_limit"] = 50
    for suffix, (field, kind) in _ENV_OVERRIDES.items():
        name = f"SECFLOW_HTTP_{_env_name(dependency)}_{suffix}"
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        try:
            updates[field] = kind(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if not updates:
        return base
    # Validate the overrides (a rate of 0 must fail here, not divide by zero later).
    return DependencySettings.model_validate({**base.model_dump(), **updates})


def register_dependency(dependency: str, settings: DependencySettings) -> None:
    """Add or replace a row (for a new integration, or a test's own dependency)."""
    _REGISTRY[dependency] = settings


def unregister_dependency(dependency: str) -> None:
    _REGISTRY.pop(dependency, None)
