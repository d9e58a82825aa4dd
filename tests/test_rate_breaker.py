"""The circuit breaker opens on a failure rate over a sliding window, never below its
minimum number of calls; it recovers through half-open; its settings are validated with
the field named; and inside a wait budget a refusal is waited out until the half-open
trial instead of failing the call.

The breaker's own rules run on a fake clock (no sleeping); the waiting runs for real
against a loopback server.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from secflow.errors import Category, classify
from secflow.http import (
    BreakerOpenError,
    BreakerState,
    CircuitBreaker,
    DependencySettings,
    breaker_wait_budget,
    client_for,
    register_dependency,
    reset_http_state,
    settings_for,
)
from secflow.http.registry import unregister_dependency
from tests.servers import Reply, ScriptedServer

RATE = DependencySettings(failure_rate=0.5, minimum_calls=20, failure_window=60.0, open_timeout=30.0,
                          max_open_timeout=120.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def calls(breaker: CircuitBreaker, outcomes: str, clock: FakeClock | None = None, step: float = 0.0) -> None:
    """Feed outcomes through the caller's protocol: "f" failed, "s" succeeded."""
    for outcome in outcomes:
        breaker.before_call()
        breaker.on_failure() if outcome == "f" else breaker.on_success()
        if clock is not None:
            clock.now += step


def breaker(settings: DependencySettings = RATE) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(f"rate-{uuid.uuid4().hex[:6]}", settings, clock=clock), clock


# --- the rule ------------------------------------------------------------------------------
def test_below_the_minimum_number_of_calls_it_never_opens() -> None:
    b, _ = breaker()
    calls(b, "f" * 19)  # every call failed, but 19 calls say nothing about a rate
    snap = b.snapshot()
    assert snap.state is BreakerState.CLOSED and (snap.failures, snap.calls, snap.failure_rate) == (19, 19, 1.0)


def test_fifty_percent_of_twenty_calls_opens() -> None:
    b, _ = breaker()
    calls(b, "sf" * 9 + "s")  # 9 of 19 failed
    assert b.state is BreakerState.CLOSED
    calls(b, "f")  # 10 of 20: exactly 50 %
    snap = b.snapshot()
    assert snap.state is BreakerState.OPEN and snap.trips == 1 and (snap.failures, snap.calls) == (10, 20)
    with pytest.raises(BreakerOpenError) as refused:
        b.before_call()
    assert refused.value.retry_after == pytest.approx(30.0)
    assert classify(refused.value).category is Category.TRANSIENT


def test_a_success_that_completes_the_minimum_at_a_high_rate_opens() -> None:
    b, _ = breaker()
    calls(b, "f" * 12 + "s" * 7)  # 19 calls, 63 % failed: too few calls yet
    assert b.state is BreakerState.CLOSED
    calls(b, "s")  # the 20th call, a success: 12 of 20 = 60 %
    assert b.state is BreakerState.OPEN


def test_nine_of_twenty_and_thirty_percent_at_random_stay_closed() -> None:
    b, _ = breaker()
    calls(b, "f" * 9 + "s" * 11)
    assert b.state is BreakerState.CLOSED
    # A busy dependency failing 30 % of its calls at random: 2,000 calls, 100 per window.
    b, clock = breaker()
    rng = random.Random(7)
    calls(b, "".join("f" if rng.random() < 0.3 else "s" for _ in range(2000)), clock, step=0.6)
    snap = b.snapshot()
    assert snap.state is BreakerState.CLOSED and snap.trips == 0 and 80 <= snap.calls <= 100


def test_the_window_slides_old_failures_out() -> None:
    b, clock = breaker()
    calls(b, "f" * 15)
    clock.now += 61  # those fifteen are now older than the 60 s window
    calls(b, "f" * 4 + "s" * 10)
    snap = b.snapshot()
    assert snap.state is BreakerState.CLOSED and (snap.failures, snap.calls) == (4, 14)
    calls(b, "f" * 6)  # 10 of 20 within the window
    assert b.state is BreakerState.OPEN


def test_recovery_through_half_open() -> None:
    b, clock = breaker()
    calls(b, "f" * 20)
    assert b.state is BreakerState.OPEN
    clock.now += 30
    calls(b, "f")  # the trial fails: open again, the wait doubled
    snap = b.snapshot()
    assert snap.state is BreakerState.OPEN and snap.trips == 2
    assert snap.next_half_open_at - clock.now == pytest.approx(60.0)
    clock.now += 59
    with pytest.raises(BreakerOpenError):
        b.before_call()
    clock.now += 1
    b.before_call()  # the one trial ...
    with pytest.raises(BreakerOpenError):
        b.before_call()  # ... and nobody else while it is in flight
    b.on_success()
    snap = b.snapshot()
    assert snap.state is BreakerState.CLOSED and (snap.failures, snap.calls) == (0, 0), "a fresh window after recovery"
    calls(b, "f" * 19)  # and a fresh minimum: 19 failures do not reopen it
    assert b.state is BreakerState.CLOSED
    calls(b, "f")
    assert b.snapshot().next_half_open_at - clock.now == pytest.approx(30.0), "the open timeout is back to 30 s"


# --- settings ------------------------------------------------------------------------------
def test_defaults_and_the_legacy_threshold_name() -> None:
    d = DependencySettings()
    assert (d.failure_rate, d.minimum_calls, d.failure_window) == (0.5, 20, 60.0)
    # A row written before the breaker counted a rate still means what it did for a dead
    # dependency: that many failed calls open it.
    assert DependencySettings(failure_threshold=5).minimum_calls == 5
    assert DependencySettings.model_validate({**d.model_dump(), "failure_threshold": 2}).minimum_calls == 2
    for dep in ("osv", "nvd", "epss", "kev"):
        s = settings_for(dep)
        assert s.retry_attempts >= 8 and s.wait_for_half_open, dep
    assert settings_for("osv").retry_unsafe_methods  # querybatch only reads
    assert not DependencySettings().wait_for_half_open


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"failure_rate": 0}, "failure_rate"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"failure_window": -1}, "failure_window"),
        ({"open_timeout": 60, "max_open_timeout": 30}, "max_open_timeout"),
        ({"unknown_knob": 1}, "unknown_knob"),
    ],
)
def test_bad_settings_name_the_field(fields: dict, named: str) -> None:
    with pytest.raises(ValidationError) as err:
        DependencySettings(**fields)
    assert named in str(err.value)


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("SECFLOW_HTTP_OSV_FAILURE_RATE", "150%", "SECFLOW_HTTP_OSV_FAILURE_RATE='150%': failure_rate:"),
        ("SECFLOW_HTTP_OSV_FAILURE_RATE", "half", "SECFLOW_HTTP_OSV_FAILURE_RATE='half': failure_rate: not a valid"),
        ("SECFLOW_HTTP_OSV_MIN_CALLS", "0", "SECFLOW_HTTP_OSV_MIN_CALLS='0': minimum_calls:"),
        ("SECFLOW_HTTP_OSV_FAILURE_WINDOW", "soon", "SECFLOW_HTTP_OSV_FAILURE_WINDOW='soon': failure_window:"),
        ("SECFLOW_HTTP_OSV_OPEN_TIMEOUT", "900", "SECFLOW_HTTP_OSV_OPEN_TIMEOUT='900': open_timeout: max_open_timeout"),
    ],
)
def test_bad_env_overrides_name_the_variable_and_field(monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError) as err:
        settings_for("osv")
    assert str(err.value).startswith(message), str(err.value)
    with pytest.raises(ValueError):  # and no client is built (nothing could be sent)
        client_for("osv", base_url="http://127.0.0.1:9")


def test_env_overrides_shape_the_breaker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECFLOW_HTTP_OSV_FAILURE_RATE", "25%")
    monkeypatch.setenv("SECFLOW_HTTP_OSV_MIN_CALLS", "40")
    monkeypatch.setenv("SECFLOW_HTTP_OSV_FAILURE_WINDOW", "120")
    monkeypatch.setenv("SECFLOW_HTTP_OSV_OPEN_TIMEOUT", "5")
    s = settings_for("osv")
    assert (s.failure_rate, s.minimum_calls, s.failure_window, s.open_timeout) == (0.25, 40, 120.0, 5.0)
    monkeypatch.setenv("SECFLOW_HTTP_OSV_FAILURES", "7")  # the older name of the same knob
    monkeypatch.delenv("SECFLOW_HTTP_OSV_MIN_CALLS")
    assert settings_for("osv").minimum_calls == 7


# --- waiting for the half-open trial (real sockets, real time) ---------------------------------
@pytest.fixture
def waiting_dep() -> Iterator[str]:
    reset_http_state()
    name = f"wait-{uuid.uuid4().hex[:8]}"
    register_dependency(name, DependencySettings(
        rate=1000.0, burst=1000, retry_attempts=3, retry_initial=0.05, retry_max=0.1, minimum_calls=3,
        open_timeout=0.4, max_open_timeout=5.0, wait_for_half_open=True, deadline=5.0,
    ))
    yield name
    unregister_dependency(name)
    reset_http_state()


async def test_a_refusal_is_waited_out_until_the_trial_within_the_budget(waiting_dep: str) -> None:
    healthy = {"now": False}
    server = ScriptedServer(lambda n, path: Reply(200) if healthy["now"] else Reply(503))
    try:
        async with client_for(waiting_dep, base_url=server.url, timeout=httpx.Timeout(2.0)) as http:
            # three tries of one request, all failed: the breaker opens
            assert (await http.get("/")).status_code == 503
            # Outside a budget (and outside an activity) a refusal comes back at once.
            started = time.monotonic()
            with pytest.raises(BreakerOpenError):
                await http.get("/")
            assert time.monotonic() - started < 0.3
            # A budget shorter than the wait: refused at once too, nothing sent.
            with breaker_wait_budget(0.5), pytest.raises(BreakerOpenError):
                await http.get("/")
            assert len(server.requests) == 3
            # Within a budget: the call waits for the trial (which fails, 0.4 s; its retry is
            # refused), waits again (doubled, 0.8 s), and the next trial finds the service back.
            started = time.monotonic()
            with breaker_wait_budget(10.0):
                healthy_at = started + 0.9

                async def come_back() -> None:
                    await asyncio.sleep(max(0.0, healthy_at - time.monotonic()))
                    healthy["now"] = True

                back = asyncio.create_task(come_back())
                response = await http.get("/")
                await back
            waited = time.monotonic() - started
    finally:
        server.close()
    assert response.status_code == 200
    assert len(server.requests) == 5, "only the two half-open trials reached the server"
    assert 1.0 <= waited < 4.0, waited


async def test_a_dead_dependency_within_the_budget_gets_only_trials_then_the_refusal(waiting_dep: str) -> None:
    server = ScriptedServer([Reply(503)])
    try:
        async with client_for(waiting_dep, base_url=server.url, timeout=httpx.Timeout(2.0)) as http:
            await http.get("/")  # three failed tries: open
            started = time.monotonic()
            with breaker_wait_budget(4.5), pytest.raises(BreakerOpenError) as refused:
                await http.get("/")
            waited = time.monotonic() - started
    finally:
        server.close()
    # Trials at +0.4 s and +1.2 s (0.4, then 0.8 doubled); the third would be due at +2.8 s,
    # and 1.6 s of waiting plus the 2 s margin no longer fit in the 3.3 s left: handed back.
    assert len(server.requests) == 3 + 2, server.requests
    assert "after waiting" in str(refused.value)
    assert 1.0 <= waited < 2.5, waited
