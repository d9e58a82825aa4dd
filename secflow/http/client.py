"""`client_for()`: the one way SecFlow builds an httpx client for an external API.

The transport stack, outermost first:

    breaker gate -> rate limiter -> retry -> circuit breaker -> body check (JSON APIs) -> deadline
        -> chaos (only with SECFLOW_CHAOS=1) -> httpx

so a request is refused at once while the dependency's breaker is open (the gate: no
token spent, no queueing behind the rate limiter; or, for a dependency with
`wait_for_half_open` called inside an activity attempt with time left, held at the gate
until the half-open trial), waits for its dependency's rate, gets jittered retries for
transient outcomes within a total deadline (each re-attempt takes a rate token too; 8
tries for the idempotent read APIs), and every attempt asks the breaker and reports to
it: each attempt's outcome goes into the breaker's failure-rate window, an attempt made
while the breaker is open is refused (the retries stop there, with the breaker's wait as
`retry_after`), and a half-open trial is exactly one attempt. Chaos sits innermost, where the network
would be: an injected 503 is retried, counted by the breaker and the metrics like a real
one, which is what fault injection is for. Limiter and breaker are per dependency and
shared by every client in the process: ten activities calling NVD share NVD's 5-per-30s.
"""

from __future__ import annotations

import httpx

from secflow.http.bodies import BodyCheckTransport
from secflow.http.breaker import BreakerGateTransport, CircuitBreakerTransport, breaker_for, reset_breakers
from secflow.http.chaos import ChaosTransport, SpecChaos, chaos_enabled, load_chaos_config, reset_chaos
from secflow.http.deadline import DeadlineTransport
from secflow.http.ratelimit import RateLimitTransport, limiter_for, reset_limiters
from secflow.http.registry import settings_for
from secflow.http.retry import RetryTransport

__all__ = ["DEFAULT_TIMEOUT", "build_transport", "client_for", "reset_http_state"]

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)


def build_transport(
    dependency: str,
    *,
    timeout: httpx.Timeout,
    inner: httpx.AsyncBaseTransport | None = None,
    chaos: SpecChaos | None = None,
) -> httpx.AsyncBaseTransport:
    """The resilience stack for `dependency` around `inner` (a real HTTP transport by default).

    `chaos`: an assessment spec's ``chaos:`` section (`ToolContext.chaos`); its faults for
    `dependency` replace ``SECFLOW_CHAOS_CONFIG``'s. Both only with ``SECFLOW_CHAOS=1``.
    """
    settings = settings_for(dependency)
    faults = None
    scope = ""
    if chaos_enabled():
        # Validate before anything is built: a typo in the config fails the client, loudly.
        faults = load_chaos_config().get(dependency)
        spec_faults = chaos.for_dependency(dependency) if chaos is not None else None
        if spec_faults is not None:
            faults, scope = spec_faults, chaos.scope  # type: ignore[union-attr]
    # Every attempt may use its full per-phase timeouts once; the deadline bounds them all.
    per_attempt = sum(t for t in (timeout.connect, timeout.read, timeout.write, timeout.pool) if t)
    deadline = max(settings.deadline, per_attempt)
    transport: httpx.AsyncBaseTransport = inner or httpx.AsyncHTTPTransport(retries=0, trust_env=False)
    if faults:
        transport = ChaosTransport(transport, dependency, faults, scope=scope)
    # The retry layer bounds the attempts up to the response's headers; this bounds each
    # attempt's body too, which a caller reads after the stack has returned.
    transport = DeadlineTransport(transport, deadline)
    limiter = limiter_for(dependency, settings)
    if settings.json_bodies:
        # Below the breaker: a cut-short or unparsable body is a failed call it counts,
        # and an error the retry transport resends like a 503.
        transport = BodyCheckTransport(transport)
    breaker = breaker_for(dependency, settings)
    transport = CircuitBreakerTransport(transport, breaker)
    transport = RetryTransport(transport, settings, dependency=dependency, deadline=deadline, limiter=limiter)
    transport = RateLimitTransport(transport, limiter)
    return BreakerGateTransport(transport, breaker)


def client_for(
    dependency: str,
    *,
    base_url: str,
    timeout: httpx.Timeout | None = None,
    headers: dict[str, str] | None = None,
    chaos: SpecChaos | None = None,
) -> httpx.AsyncClient:
    """An AsyncClient for `dependency` at `base_url`, resilient by construction.

    ``trust_env=False``: requests go to the configured endpoint only, never through a
    proxy picked up from the environment; redirects are not followed (a redirect off the
    API's host is not something to follow silently). `chaos`: the spec's fault injection
    (pass ``ctx.chaos`` from an activity). Raises ValueError when chaos is on and its
    config is invalid.
    """
    timeout = timeout or DEFAULT_TIMEOUT
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        headers=headers,
        trust_env=False,
        follow_redirects=False,
        transport=build_transport(dependency, timeout=timeout, chaos=chaos),
    )


def reset_http_state() -> None:
    """Forget every breaker, limiter and chaos counter (tests; a worker never needs this)."""
    reset_breakers()
    reset_limiters()
    reset_chaos()
