"""Prometheus metrics from the worker: Temporal's own, plus SecFlow's error figures.

`configure_metrics(settings)` builds a temporalio `Runtime` whose telemetry exports
Prometheus text on ``SECFLOW_METRICS_ADDR`` (``host:port``; unset = no endpoint) and makes
it the process default BEFORE any client connects: a client (and every worker built on
it) reports through the runtime that was the default when it connected.

SecFlow's own metrics go through that runtime's metric meter, so one ``/metrics``
endpoint carries both:

    secflow_errors_total{category,tool,dependency}      every error the runner records
    secflow_error_recoveries_total{category}            errors that ended 'recovered'
                                                        by a later attempt (no human)
    secflow_error_recovery_seconds{category}            histogram: error -> that recovery
    secflow_dead_letters_total{reason,category}         tasks newly parked in the DLQ

Incidents are counted by the incident workflow through Temporal's workflow metric meter
(workflows/incident.py: secflow_incidents_opened_total / _acknowledged_total /
_resolved_total / secflow_incident_escalations_total, by severity), which skips replays,
so open incidents = opened - resolved summed over workers. `python -m starter errors
stats` asks Temporal's visibility for the exact figure.

Recording a metric never fails the caller: without a configured runtime the counters
go to the default runtime, which exports nothing (cheap no-ops).
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from secflow.logging import get_logger

__all__ = [
    "METRICS_ADDR_ENV",
    "configure_metrics",
    "parse_metrics_addr",
    "record_dead_letter",
    "record_error",
    "record_recoveries",
]

METRICS_ADDR_ENV = "SECFLOW_METRICS_ADDR"

_lock = threading.Lock()
_instruments: dict[tuple[int, str], Any] = {}


def parse_metrics_addr(raw: str) -> str | None:
    """Validate ``host:port`` (IPv4, ``[IPv6]`` or ``localhost``); '' -> None (no endpoint).

    Raises ValueError naming the variable and what is wrong.
    """
    value = (raw or "").strip()
    if not value:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{METRICS_ADDR_ENV}: expected host:port (e.g. 127.0.0.1:9464), got {value!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{METRICS_ADDR_ENV}: the port must be a number from 1 to 65535, got {port_text!r}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare != "localhost":
        try:
            ip = ipaddress.ip_address(bare)
        except ValueError:
            raise ValueError(
                f"{METRICS_ADDR_ENV}: the host must be an IP address or localhost (e.g. 127.0.0.1:9464), got {host!r}"
            ) from None
        if ip.version == 6 and not host.startswith("["):
            raise ValueError(f"{METRICS_ADDR_ENV}: write an IPv6 address in brackets, e.g. [::1]:9464")
    # The Prometheus exporter binds a socket address; give it an IP.
    if bare == "localhost":
        host = "127.0.0.1"
    return f"{host}:{int(port_text)}"


def configure_metrics(metrics_addr: str | None) -> Runtime | None:
    """Install a Prometheus-exporting Runtime as the default, if an address is given.

    Call once per process, before `Client.connect`. Returns the runtime (None when no
    address was configured). The bind happens here: an address in use fails now, with
    the address in the message, instead of at the first scrape.
    """
    if not metrics_addr:
        return None
    try:
        runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=metrics_addr)))
    except Exception as exc:  # the exporter could not bind: say where
        raise RuntimeError(f"{METRICS_ADDR_ENV}: cannot serve metrics on {metrics_addr}: {exc}") from exc
    Runtime.set_default(runtime, error_if_already_set=False)
    with _lock:
        _instruments.clear()
    get_logger(component="metrics").info("prometheus metrics enabled", address=metrics_addr)
    return runtime


def _instrument(name: str, create: Any) -> Any:
    """One instrument per (default runtime, name), created on first use."""
    runtime = Runtime.default()
    key = (id(runtime), name)
    with _lock:
        instrument = _instruments.get(key)
        if instrument is None:
            instrument = _instruments[key] = create(runtime.metric_meter, name)
        return instrument


def _counter(name: str, description: str) -> Any:
    return _instrument(name, lambda meter, n: meter.create_counter(n, description))


def _add(name: str, description: str, value: int, attributes: dict[str, str]) -> None:
    if value <= 0:
        return
    try:
        _counter(name, description).add(value, attributes)
    except Exception as exc:  # metrics are never worth failing an activity for; say so
        get_logger(component="metrics").warning("could not record metric", metric=name, error=str(exc))


def record_error(category: str, tool: str, dependency: str | None) -> None:
    _add(
        "secflow_errors_total",
        "Errors SecFlow met (every failed attempt), by category, tool and outbound dependency",
        1,
        {"category": category, "tool": tool or "-", "dependency": dependency or "-"},
    )


def record_recoveries(category: str, seconds: list[float]) -> None:
    """Errors a later automatic attempt recovered from, with each one's time to recovery."""
    _add(
        "secflow_error_recoveries_total",
        "Errors that a later automatic attempt recovered from (no human involved), by category",
        len(seconds),
        {"category": category},
    )
    try:
        histogram = _instrument(
            "secflow_error_recovery_seconds",
            lambda meter, name: meter.create_histogram_float(
                name, "Time from an error to the automatic attempt that recovered from it", "s"
            ),
        )
        for value in seconds:
            histogram.record(value, {"category": category})
    except Exception as exc:  # metrics are never worth failing an activity for; say so
        get_logger(component="metrics").warning(
            "could not record metric", metric="secflow_error_recovery_seconds", error=str(exc)
        )


def record_dead_letter(reason: str, category: str) -> None:
    _add(
        "secflow_dead_letters_total",
        "Tasks newly parked in the dead-letter queue, by reason and category",
        1,
        {"reason": reason, "category": category},
    )
