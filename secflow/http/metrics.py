"""Metrics of the outbound HTTP layer, through Temporal's metric meter.

Emitted on ``temporalio.runtime.Runtime.default().metric_meter``: the worker sets its
Runtime (with the Prometheus endpoint, ``SECFLOW_METRICS_ADDR``) as the default at
startup, so these series appear on the same ``/metrics`` page as Temporal's own. Without
such a runtime the default meter is a no-op and recording costs well under a microsecond.

    secflow_http_breaker_state{dependency}              gauge: 0 closed, 1 half-open, 2 open
    secflow_http_breaker_transitions_total{dependency,to}  counter: to = closed|half_open|open
    secflow_http_refused_total{dependency}              counter: calls refused by an open breaker
    secflow_http_breaker_waits_total{dependency}        counter: refusals waited out inside an
        activity attempt (the call went on after the half-open time instead of failing)
    secflow_http_requests_total{dependency,outcome}     counter: requests sent (every attempt,
        retries included), by outcome: ok (< 400), client_error (4xx but 408/429), rate_limited (429),
        server_error (5xx, 408), transport_error (connect/read/timeout), cancelled

The meter is looked up lazily and again whenever the default runtime changes (a worker
that replaces the default after a first HTTP call still gets the series), and instruments
are bound per label set once, so the refused-call path stays a dictionary lookup and one
``add`` (about a microsecond).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["STATE_VALUE", "HttpMetrics", "http_metrics"]

STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class _Noop:
    def add(self, value: int) -> None:
        return None

    def set(self, value: int) -> None:
        return None


_NOOP = _Noop()


class HttpMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runtime: Any = None
        self._instruments: dict[str, Any] = {}
        self._bound: dict[tuple[str, ...], Any] = {}
        self._warned = False

    def _meter_instruments(self) -> dict[str, Any]:
        from temporalio.runtime import Runtime

        runtime = Runtime.default()
        if runtime is self._runtime:
            return self._instruments
        with self._lock:
            if runtime is not self._runtime:
                meter = runtime.metric_meter
                self._instruments = {
                    "state": meter.create_gauge(
                        "secflow_http_breaker_state", "circuit breaker state per dependency: 0 closed, 1 half-open, 2 open"
                    ),
                    "transitions": meter.create_counter(
                        "secflow_http_breaker_transitions_total", "circuit breaker state changes, by the state entered"
                    ),
                    "refused": meter.create_counter(
                        "secflow_http_refused_total", "requests refused without I/O because the breaker was open"
                    ),
                    "waits": meter.create_counter(
                        "secflow_http_breaker_waits_total",
                        "refusals of an open breaker waited out within the activity attempt",
                    ),
                    "requests": meter.create_counter("secflow_http_requests_total", "requests sent (every attempt), by outcome"),
                }
                self._bound = {}
                self._runtime = runtime
            return self._instruments

    def _instrument(self, name: str, **labels: str) -> Any:
        try:
            instruments = self._meter_instruments()
            key = (name, *labels.values())
            bound = self._bound.get(key)
            if bound is None:
                bound = self._bound[key] = instruments[name].with_additional_attributes(labels)
            return bound
        except Exception as exc:  # metrics must never fail a call: say so once, then stay quiet
            if not self._warned:
                self._warned = True
                from secflow.errors import classify
                from secflow.logging import get_logger

                c = classify(exc)
                get_logger(component="http.metrics").warning(
                    "http metrics unavailable", category=c.category.value, reason=c.reason, error=str(exc)
                )
            return _NOOP

    # --- what the layer records ----------------------------------------------------------
    def breaker_state(self, dependency: str, state: str) -> None:
        self._instrument("state", dependency=dependency).set(STATE_VALUE[state])

    def breaker_transition(self, dependency: str, to_state: str) -> None:
        self._instrument("transitions", dependency=dependency, to=to_state).add(1)
        self.breaker_state(dependency, to_state)

    def refused(self, dependency: str) -> None:
        self._instrument("refused", dependency=dependency).add(1)

    def waited(self, dependency: str) -> None:
        self._instrument("waits", dependency=dependency).add(1)

    def request(self, dependency: str, outcome: str) -> None:
        self._instrument("requests", dependency=dependency, outcome=outcome).add(1)


_METRICS = HttpMetrics()


def http_metrics() -> HttpMetrics:
    """The process-wide recorder (one per process, like the breakers)."""
    return _METRICS


def outcome_of_status(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status == 408 or status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return "ok"
