"""Outbound HTTP resilience: one layer, as httpx transports, for every external API call.

Build clients with `client_for("nvd", base_url=...)` (activities pass `chaos=ctx.chaos`);
read this process's breakers with `breaker_states()`, every worker's from the store
(`breaker_store.py`, `python -m starter breakers`); metrics in `metrics.py`. See
`client.py` for the stack and `registry.py` for the settings.
"""

from secflow.http.breaker import (
    BreakerOpenError,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    breaker_for,
    breaker_states,
    breaker_wait_budget,
    flush_breaker_states,
)
from secflow.http.chaos import SpecChaos, chaos_enabled, chaos_problems, load_chaos_config
from secflow.http.client import DEFAULT_TIMEOUT, build_transport, client_for, reset_http_state
from secflow.http.ratelimit import RollingWindowLimiter, TokenBucket, limiter_for
from secflow.http.registry import DependencySettings, register_dependency, settings_for
from secflow.http.retry import RetryTransport, is_retryable_status

__all__ = [
    "DEFAULT_TIMEOUT",
    "BreakerOpenError",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "DependencySettings",
    "RetryTransport",
    "RollingWindowLimiter",
    "SpecChaos",
    "TokenBucket",
    "breaker_for",
    "breaker_states",
    "breaker_wait_budget",
    "build_transport",
    "chaos_enabled",
    "chaos_problems",
    "client_for",
    "flush_breaker_states",
    "is_retryable_status",
    "limiter_for",
    "load_chaos_config",
    "register_dependency",
    "reset_http_state",
    "settings_for",
]
