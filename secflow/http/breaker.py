"""A circuit breaker per dependency, shared by every client in the worker process.

closed --(failure share >= failure_rate over the calls of the last failure_window
          seconds, once there are at least minimum_calls of them)--> open
open --(open_timeout elapsed)--> half_open: up to half_open_max_calls trial calls
half_open --(a trial succeeds)--> closed (the open timeout resets, the window starts afresh)
half_open --(a trial fails)--> open again, with the timeout doubled (capped)

A rate over a sliding window, not a count: a busy dependency failing 30 % of its calls
keeps its breaker closed (the retry transport rides through the failures), while a dead
one opens it after `minimum_calls` calls. Below `minimum_calls` it never opens: a handful
of calls says nothing about a rate.

While open, a request is refused before any I/O with `BreakerOpenError` (a
`TransientError` whose `retry_after` is the time until half-open). Where the dependency
says `wait_for_half_open` and the call runs inside a Temporal activity attempt with time
left for it, the outermost transport waits for the half-open trial instead (the
activity's background heartbeat keeps it alive), so an outage of a minute costs no
attempt of the stage; otherwise the refusal goes to the caller and the activity wrapper
turns `retry_after` into ``next_retry_delay``. Either way a dead API costs neither sockets
nor the retry budget's patience. The breaker sits below the retry transport, so it sees
every attempt: what counts as a failure is a failed attempt, a transport error (connect,
read, timeouts) or a 408/5xx answer. Any other answer, including 4xx and 429, proves the
service is up (429 is the rate limiter's business) and counts as a success.

Visible: every transition is logged, counted in the metrics (`secflow.http.metrics`), and
its state written to the store's ``breaker_states`` table by a background thread
(`secflow.http.breaker_store`; `python -m starter breakers` reads it). A refused call
does neither I/O nor a store write: it only bumps a counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from enum import Enum

import httpx
from pydantic import BaseModel
from temporalio import activity

from secflow.errors import TransientError
from secflow.http.breaker_store import BreakerRow, publisher
from secflow.http.metrics import http_metrics, outcome_of_status
from secflow.http.registry import DependencySettings
from secflow.logging import get_logger

__all__ = [
    "BreakerGateTransport",
    "BreakerOpenError",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerTransport",
    "breaker_for",
    "breaker_states",
    "breaker_wait_budget",
    "flush_breaker_states",
    "reset_breakers",
]

Clock = Callable[[], float]

# httpx request extension naming the dependency a request was made for (read by the
# error ledger to count failures per dependency).
DEPENDENCY_EXTENSION = "secflow.dependency"


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpenError(TransientError):
    """A call refused, without I/O, because the dependency's breaker is open (or half-open
    with its trial calls in flight); `retry_after` is when to come back."""


class BreakerSnapshot(BaseModel):
    """One breaker, readable (times are on the breaker's monotonic clock, in seconds)."""

    dependency: str
    state: BreakerState
    failures: int  # failed calls within the current window
    calls: int = 0  # calls that ended within the current window
    failure_rate: float | None = None  # failures / calls (None: no calls in the window)
    opened_at: float | None
    next_half_open_at: float | None
    trips: int  # times it opened since the process started


def is_failure_status(status: int) -> bool:
    return status == 408 or status >= 500


class CircuitBreaker:
    def __init__(self, dependency: str, settings: DependencySettings, *, clock: Clock = time.monotonic) -> None:
        self.dependency = dependency
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()  # cheap, and safe if a client is used from threads
        self._state = BreakerState.CLOSED
        # The sliding window: (end time, failed) per call, oldest first, and how many failed.
        self._calls: deque[tuple[float, bool]] = deque()
        self._failed = 0
        self._opened_at: float | None = None
        self._next_half_open_at: float | None = None
        # The same two instants on the wall clock (UTC), taken when the breaker opens: what
        # the store and the CLI show (the monotonic ones have no meaning outside this process).
        self._opened_wall: datetime | None = None
        self._half_open_wall: datetime | None = None
        self._timeout = settings.open_timeout
        self._trials = 0
        self.trips = 0
        self._log = get_logger(component="http.breaker", dependency=dependency)
        self._metrics = http_metrics()
        self._metrics.breaker_state(dependency, self._state.value)
        with self._lock:
            self._publish()

    def refuse_if_open(self) -> None:
        """The fast path, before any queueing: raise at once while open and not yet due (or
        half-open with its trial calls in flight).

        Lock-free (two attribute reads): a stale read lets a call on to `before_call`,
        which decides under the lock. Used ahead of the rate limiter so that a refused
        call neither waits for nor spends a rate token.
        """
        state = self._state
        if state is BreakerState.OPEN:
            due = self._next_half_open_at
            now = self.clock()
            if due is not None and now < due:
                wait = due - now
                raise BreakerOpenError(f"circuit breaker for {self.dependency} is open; retry in {wait:.1f}s", retry_after=wait)
        elif state is BreakerState.HALF_OPEN and self._trials >= self.settings.half_open_max_calls:
            wait = min(self.settings.open_timeout, 1.0)
            raise BreakerOpenError(
                f"circuit breaker for {self.dependency} is half-open with trials in flight; retry in {wait:.1f}s",
                retry_after=wait,
            )

    # --- the protocol a caller follows: before_call(), then on_success()/on_failure() ---
    def before_call(self) -> None:
        """Refuse at once (BreakerOpenError) while open; count a trial while half-open."""
        with self._lock:
            now = self.clock()
            if self._state is BreakerState.OPEN and self._next_half_open_at is not None and now >= self._next_half_open_at:
                self._move(BreakerState.HALF_OPEN)
                self._trials = 0
            if self._state is BreakerState.OPEN:
                wait = max(0.0, (self._next_half_open_at or now) - now)
                raise BreakerOpenError(f"circuit breaker for {self.dependency} is open; retry in {wait:.1f}s", retry_after=wait)
            if self._state is BreakerState.HALF_OPEN:
                if self._trials >= self.settings.half_open_max_calls:
                    # Trials are in flight; their outcome decides. Come back shortly.
                    wait = min(self.settings.open_timeout, 1.0)
                    raise BreakerOpenError(
                        f"circuit breaker for {self.dependency} is half-open with trials in flight; retry in {wait:.1f}s",
                        retry_after=wait,
                    )
                self._trials += 1

    def on_success(self) -> None:
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._calls.clear()
                self._failed = 0
                self._timeout = self.settings.open_timeout
                self._opened_at = self._next_half_open_at = None
                self._opened_wall = self._half_open_wall = None
                self._move(BreakerState.CLOSED)
            elif self._state is BreakerState.CLOSED:
                # A success can complete the minimum number of calls at a rate already too high.
                if self._record(self.clock(), failed=False):
                    self._open(self.clock())

    def on_failure(self) -> None:
        with self._lock:
            now = self.clock()
            if self._state is BreakerState.HALF_OPEN:
                self._timeout = min(self._timeout * 2, self.settings.max_open_timeout)
                self._open(now)
                return
            if self._state is BreakerState.OPEN:
                return  # a call sent before it opened: the trip already counted its kind
            if self._record(now, failed=True):
                self._open(now)
            else:
                self._publish()  # the failure count is part of the visible state

    def on_abandoned(self) -> None:
        """A call ended without an outcome (cancelled): free its trial slot."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN and self._trials > 0:
                self._trials -= 1

    # --- reading -----------------------------------------------------------------------
    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            self._prune(self.clock())
            calls = len(self._calls)
            return BreakerSnapshot(
                dependency=self.dependency,
                state=self._state,
                failures=self._failed,
                calls=calls,
                failure_rate=self._failed / calls if calls else None,
                opened_at=self._opened_at,
                next_half_open_at=self._next_half_open_at,
                trips=self.trips,
            )

    @property
    def state(self) -> BreakerState:
        return self.snapshot().state

    def row(self) -> BreakerRow:
        """The current state as a ``breaker_states`` row (wall-clock UTC times)."""
        with self._lock:
            self._prune(self.clock())
            return self._row()

    # --- internals (lock held) -----------------------------------------------------------
    def _prune(self, now: float) -> None:
        horizon = now - self.settings.failure_window
        while self._calls and self._calls[0][0] <= horizon:
            _, failed = self._calls.popleft()
            self._failed -= failed

    def _record(self, now: float, *, failed: bool) -> bool:
        """Add one ended call to the window; True when the window now says "open"."""
        self._calls.append((now, failed))
        self._failed += failed
        self._prune(now)
        calls = len(self._calls)
        # failures / calls >= failure_rate, in integers (no float edge at exactly 50 %)
        return (
            calls >= self.settings.minimum_calls
            and self._failed * 1_000_000 >= round(self.settings.failure_rate * 1_000_000) * calls
        )

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._next_half_open_at = now + self._timeout
        self._opened_wall = datetime.now(UTC)
        self._half_open_wall = self._opened_wall + timedelta(seconds=self._timeout)
        self.trips += 1
        self._move(BreakerState.OPEN)

    def _row(self) -> BreakerRow:
        return BreakerRow.now(
            self.dependency,
            state=self._state.value,
            failures=self._failed,
            trips=self.trips,
            opened_at=self._opened_wall,
            next_half_open_at=self._half_open_wall,
        )

    def _publish(self) -> None:
        """Hand the current state to the store writer (never blocks on the store)."""
        try:
            publisher(_all_rows).publish(self._row())
        except Exception as exc:  # visibility must never fail a call: log, classified
            from secflow.errors import classify

            c = classify(exc)
            self._log.error("could not publish breaker state", category=c.category.value, reason=c.reason, error=str(exc))

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is new:
            return
        self._metrics.breaker_transition(self.dependency, new.value)
        self._publish()
        log = self._log.warning if new is BreakerState.OPEN else self._log.info
        log(
            "circuit breaker state changed",
            from_state=old.value,
            to_state=new.value,
            failures=self._failed,
            calls=len(self._calls),
            open_timeout=self._timeout if new is BreakerState.OPEN else None,
            trips=self.trips,
        )


_BREAKERS: dict[str, CircuitBreaker] = {}
_REGISTRY_LOCK = threading.Lock()


def breaker_for(dependency: str, settings: DependencySettings, *, clock: Clock | None = None) -> CircuitBreaker:
    """The process-wide breaker of `dependency` (created on first use with `settings`)."""
    with _REGISTRY_LOCK:
        breaker = _BREAKERS.get(dependency)
        if breaker is None:
            breaker = _BREAKERS[dependency] = CircuitBreaker(dependency, settings, clock=clock or time.monotonic)
        return breaker


def breaker_states() -> dict[str, BreakerSnapshot]:
    """Every breaker of this process, by dependency name."""
    with _REGISTRY_LOCK:
        breakers = list(_BREAKERS.values())
    return {b.dependency: b.snapshot() for b in breakers}


def _all_rows() -> list[BreakerRow]:
    with _REGISTRY_LOCK:
        breakers = list(_BREAKERS.values())
    return [b.row() for b in breakers]


def flush_breaker_states(timeout: float = 10.0) -> bool:
    """Wait until every breaker state published so far is in the store (tests, shutdown)."""
    return publisher(_all_rows).flush(timeout)


def reset_breakers() -> None:
    """Forget every breaker (tests; a worker never needs this)."""
    with _REGISTRY_LOCK:
        _BREAKERS.clear()


# --- waiting for the half-open trial instead of failing the attempt ---------------------------
# Seconds kept in hand when deciding whether a wait fits the time left: the trial itself
# and a clean, classified failure of the attempt must still fit after it.
WAIT_MARGIN = 2.0
_WAIT_UNTIL: contextvars.ContextVar[float | None] = contextvars.ContextVar("secflow_breaker_wait_until", default=None)


@contextlib.contextmanager
def breaker_wait_budget(seconds: float) -> Iterator[None]:
    """Let calls in this context (and tasks it starts) wait up to `seconds` from now for an
    open breaker's half-open trial (dependencies with `wait_for_half_open`).

    Inside a Temporal activity the budget is the attempt's remaining time without this;
    a benchmark, a script or a test outside one uses it to opt in.
    """
    token = _WAIT_UNTIL.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _WAIT_UNTIL.reset(token)


def time_left_to_wait() -> float | None:
    """Seconds this call may spend waiting for a breaker, or None (do not wait).

    `breaker_wait_budget()` when set; else, inside an activity, what is left of the
    current attempt: the earlier of start-to-close from this attempt's start and
    schedule-to-close from the first schedule.
    """
    until = _WAIT_UNTIL.get()
    if until is not None:
        return until - time.monotonic()
    if not activity.in_activity():
        return None
    info = activity.info()
    ends = []
    if info.start_to_close_timeout:
        ends.append(info.started_time + info.start_to_close_timeout)
    if info.schedule_to_close_timeout:
        ends.append(info.scheduled_time + info.schedule_to_close_timeout)
    if not ends:
        return None
    return (min(ends) - datetime.now(UTC)).total_seconds()


class BreakerGateTransport(httpx.AsyncBaseTransport):
    """Outermost: refuses at once while the breaker is open (before the rate limiter).

    With the dependency's `wait_for_half_open` and time left to wait (`time_left_to_wait`),
    a refusal (here, or from an attempt of the retry transport below) is waited out
    instead: sleep until the half-open time (plus a little jitter, so waiters do not all
    wake together), then send the request through the whole stack again. The trial goes
    to whoever gets there first; the others come back within a second to see how it went.
    A wait that would not end before the time left (less `WAIT_MARGIN`) is not started:
    the refusal goes to the caller, whose next attempt is scheduled at the half-open time.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, breaker: CircuitBreaker, *, rng: random.Random | None = None) -> None:
        self.inner = inner
        self.breaker = breaker
        self.rng = rng or random.Random()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # Name the dependency on the request, so whatever error this call ends in (an
        # httpx error or a status error carries its request) can be counted per
        # dependency by the error ledger (secflow.error_stats.dependency_of).
        breaker = self.breaker
        request.extensions[DEPENDENCY_EXTENSION] = breaker.dependency
        waited = 0.0
        while True:
            try:
                try:
                    breaker.refuse_if_open()
                except BreakerOpenError:
                    breaker._metrics.refused(breaker.dependency)
                    raise
                return await self.inner.handle_async_request(request)
            except BreakerOpenError as refused:
                wait = self._wait_for(refused)
                if wait is None:
                    refused.dependency = breaker.dependency  # type: ignore[attr-defined]
                    if waited:
                        refused.message = f"{refused.message} (after waiting {waited:.1f}s within the attempt)"
                        refused.args = (refused.message,)
                    raise
                if not waited:
                    breaker._log.info(
                        "breaker open; waiting for its half-open trial within the attempt",
                        method=request.method,
                        wait=round(wait, 2),
                    )
                breaker._metrics.waited(breaker.dependency)
                await asyncio.sleep(wait)
                waited += wait

    def _wait_for(self, refused: BreakerOpenError) -> float | None:
        """How long to sleep before trying again, or None to hand the refusal back."""
        if not self.breaker.settings.wait_for_half_open:
            return None
        left = time_left_to_wait()
        if left is None:
            return None
        due = max(0.0, refused.retry_after or 0.0)
        wait = due + min(0.5, 0.1 * due + 0.05) * self.rng.random()
        return wait if wait + WAIT_MARGIN <= left else None

    async def aclose(self) -> None:
        await self.inner.aclose()


class CircuitBreakerTransport(httpx.AsyncBaseTransport):
    """Asks the breaker before each request and reports the outcome after it."""

    def __init__(self, inner: httpx.AsyncBaseTransport, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        breaker, metrics = self.breaker, self.breaker._metrics
        try:
            breaker.before_call()
        except BreakerOpenError:
            metrics.refused(breaker.dependency)
            raise
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError:
            breaker.on_failure()
            metrics.request(breaker.dependency, "transport_error")
            raise
        except BaseException:
            breaker.on_abandoned()
            metrics.request(breaker.dependency, "cancelled")
            raise
        if is_failure_status(response.status_code):
            breaker.on_failure()
        else:
            breaker.on_success()
        metrics.request(breaker.dependency, outcome_of_status(response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
