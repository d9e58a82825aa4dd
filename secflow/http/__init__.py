"""Outbound HTTP resilience: one layer, as httpx transports, for every external API call.

Build clients with `client_for("nvd", base_url=...)`; read breaker states with
`breaker_states()`. See `client.py` for the stack and `registry.py` for the settings.
"""

from secflow.http.breaker import BreakerSnapshot, BreakerState, CircuitBreaker, breaker_for, breaker_states
from secflow.http.chaos import chaos_enabled, load_chaos_config
from secflow.http.client import DEFAULT_TIMEOUT, build_transport, client_for, reset_http_state
from secflow.http.ratelimit import RollingWindowLimiter, TokenBucket, limiter_for
from secflow.http.registry import DependencySettings, register_dependency, settings_for
from secflow.http.retry import RetryTransport, is_retryable_status

__all__ = [
    "DEFAULT_TIMEOUT",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "DependencySettings",
    "RetryTransport",
    "RollingWindowLimiter",
    "TokenBucket",
    "breaker_for",
    "breaker_states",
    "build_transport",
    "chaos_enabled",
    "client_for",
    "is_retryable_status",
    "limiter_for",
    "load_chaos_config",
    "register_dependency",
    "reset_http_state",
    "settings_for",
]
