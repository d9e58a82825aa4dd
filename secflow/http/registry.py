"""Per-dependency settings for outbound HTTP: rate, circuit breaker, retries, deadline.

One row per external API SecFlow talks to. Unknown names get `DEFAULTS`, so a new client
is resilient before anyone tunes it. A few knobs can be overridden from the environment
without a code change (an operator facing a stricter quota at 3 a.m.):

    SECFLOW_HTTP_<DEP>_RATE           requests per second (token bucket)
    SECFLOW_HTTP_<DEP>_RETRIES        attempts per request inside the transport (1 = no retry)
    SECFLOW_HTTP_<DEP>_FAILURE_RATE   failure share that opens the breaker (0.5 or 50%)
    SECFLOW_HTTP_<DEP>_MIN_CALLS      calls the window must hold before the rate counts
    SECFLOW_HTTP_<DEP>_FAILURES       the same as _MIN_CALLS (its name before the breaker
                                      counted a rate)
    SECFLOW_HTTP_<DEP>_FAILURE_WINDOW the breaker's sliding window, seconds
    SECFLOW_HTTP_<DEP>_OPEN_TIMEOUT   seconds open before the first half-open trial

``<DEP>`` is the dependency name upper-cased, other characters as ``_`` (``osv`` -> ``OSV``).
A value that is not valid is a ValueError naming the variable, the field and why, raised
when a client for that dependency is built (nothing is sent).
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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

    # Circuit breaker: over the calls that ended within the last `failure_window` seconds,
    # once there are at least `minimum_calls` of them, a failure share of `failure_rate` or
    # more opens it for `open_timeout`; every failed half-open trial doubles that, up to
    # `max_open_timeout`. A rate, not a count: a busy dependency failing 30 % of its calls
    # stays usable (the retries ride through), a dead one opens within `minimum_calls`.
    failure_rate: float = Field(0.5, gt=0, le=1)
    minimum_calls: int = Field(20, ge=1)
    failure_window: float = Field(60.0, gt=0)
    open_timeout: float = Field(30.0, gt=0)
    max_open_timeout: float = Field(600.0, gt=0)
    half_open_max_calls: int = Field(1, ge=1)
    # While the breaker is open, a caller inside a Temporal activity waits for the
    # half-open trial (as long as the attempt's remaining time allows) instead of failing
    # the attempt at once. Only for callers that heartbeat in the background while they
    # wait (`activities.runner.run_tool` does); off by default.
    wait_for_half_open: bool = False

    # Retries inside the transport (the activity's Temporal retry is the outer loop); full
    # jitter between `retry_initial` and `retry_max`, all within `deadline`.
    retry_attempts: int = Field(3, ge=1)
    retry_initial: float = Field(0.5, gt=0)
    retry_max: float = Field(5.0, gt=0)
    # POST/PATCH are retried only when the server surely did not act on them (no
    # connection, 429/503) unless the API documents them as idempotent (OSV querybatch).
    retry_unsafe_methods: bool = False

    # The API answers JSON: a 2xx body cut short or not parsing is the dependency's
    # transient fault, retried inside the attempt and counted by the breaker like a 5xx
    # (`secflow.http.bodies`). Off for APIs whose bodies are not JSON documents.
    json_bodies: bool = False

    # Total time one request may take, retries and waits included (the per-phase
    # connect/read/write/pool timeouts still apply to every attempt).
    deadline: float = Field(60.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _legacy_failure_threshold(cls, data: Any) -> Any:
        # `failure_threshold` (N failures within the window) was the breaker's rule before
        # it counted a rate; rows that still say it mean "at least N calls", which for a
        # dead dependency opens exactly as before. Given with `minimum_calls` (a changed
        # copy of a dumped row), the named change wins.
        if isinstance(data, dict) and "failure_threshold" in data:
            data = dict(data)
            data["minimum_calls"] = data.pop("failure_threshold")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DependencySettings:
        if self.max_open_timeout < self.open_timeout:
            raise ValueError(
                f"max_open_timeout ({self.max_open_timeout:g}) must be at least open_timeout ({self.open_timeout:g})"
            )
        if self.retry_max < self.retry_initial:
            raise ValueError(f"retry_max ({self.retry_max:g}) must be at least retry_initial ({self.retry_initial:g})")
        return self


DEFAULTS = DependencySettings()

# The read-only APIs SecFlow queries (OSV, NVD, EPSS, KEV) are idempotent: a request may be
# sent again at no risk, so each gets enough tries to ride through a dependency failing a
# third of its requests at random (8 tries all failing at 30 %: 0.3^8, under 1 in 10,000)
# and waits out an open breaker inside its attempt. Retries take rate tokens and stay
# within `deadline`. All four answer JSON: a truncated or unparsable body is retried too.
_RIDE_THROUGH: dict[str, Any] = {"retry_attempts": 8, "wait_for_half_open": True, "json_bodies": True}

_REGISTRY: dict[str, DependencySettings] = {
    # OSV: GETs, and querybatch, a POST that only reads (documented as safe to repeat).
    "osv": DependencySettings(rate=20.0, burst=20, retry_initial=0.25, retry_max=4.0, retry_unsafe_methods=True, **_RIDE_THROUGH),
    # NVD's public limit: 5 requests in a rolling 30 s window (50 with an API key).
    "nvd": DependencySettings(window_limit=5, window_seconds=30.0, open_timeout=60.0, deadline=120.0, **_RIDE_THROUGH),
    "epss": DependencySettings(rate=5.0, burst=5, **_RIDE_THROUGH),
    # CISA KEV is one static JSON file: rarely fetched, never hammered.
    "kev": DependencySettings(rate=1.0, burst=2, **_RIDE_THROUGH),
}


def _fraction(text: str) -> float:
    """``0.5`` or ``50%``."""
    return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)


_ENV_OVERRIDES: dict[str, tuple[str, Any]] = {
    "RATE": ("rate", float),
    "RETRIES": ("retry_attempts", int),
    "FAILURE_RATE": ("failure_rate", _fraction),
    "MIN_CALLS": ("minimum_calls", int),
    "FAILURES": ("minimum_calls", int),
    "FAILURE_WINDOW": ("failure_window", float),
    "OPEN_TIMEOUT": ("open_timeout", float),
}
_KIND = {int: "whole number", float: "number", _fraction: "fraction (0.5) or percentage (50%)"}


def _env_name(dependency: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", dependency.upper())


def settings_for(dependency: str) -> DependencySettings:
    """The effective settings of `dependency`: registry row (or defaults) + env overrides.

    Raises ValueError naming the environment variable and the field when an override is
    not a valid value (or makes the row inconsistent, e.g. an open timeout above its cap).
    """
    base = _REGISTRY.get(dependency, DEFAULTS)
    updates: dict[str, object] = {}
    sources: dict[str, str] = {}
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
            raise ValueError(f"{name}={raw!r}: {field}: not a valid {_KIND[kind]}") from None
        sources[field] = f"{name}={raw!r}"
    if not updates:
        return base
    # Validate the overrides (a rate of 0 must fail here, not divide by zero later).
    try:
        return DependencySettings.model_validate({**base.model_dump(), **updates})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        reason = str(err["msg"]).removeprefix("Value error, ")
        if not field:  # a rule between fields: name the override(s) it is about
            field = next((f for f in sources if f in reason), "")
        where = sources.get(field) or ", ".join(sources.values()) or f"settings of {dependency}"
        raise ValueError(f"{where}: {field or 'settings'}: {reason}") from None


def register_dependency(dependency: str, settings: DependencySettings) -> None:
    """Add or replace a row (for a new integration, or a test's own dependency)."""
    _REGISTRY[dependency] = settings


def unregister_dependency(dependency: str) -> None:
    _REGISTRY.pop(dependency, None)
