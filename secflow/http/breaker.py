"""A circuit breaker per dependency, shared by every client in the worker process.

closed --(failure_threshold failures within failure_window)--> open
open --(open_timeout elapsed)--> half_open: up to half_open_max_calls trial calls
half_open --(a trial succeeds)--> closed (the open timeout resets)
half_open --(a trial fails)--> open again, with the timeout doubled (capped)

While open, a request is refused before any I/O with `TransientError(retry_after=<seconds
until half-open>)`: the activity wrapper turns that into ``next_retry_delay``, so a dead
API costs neither sockets nor the retry budget's patience. The breaker sits below the
retry transport, so it sees every attempt: what counts as a failure is a failed attempt,
a transport error (connect, read, timeouts) or a 408/5xx answer. Any other answer,
including 4xx and 429, proves the service is up (429 is the rate limiter's business).

Visible: every transition is logged, counted in the metrics (`secflow.http.metrics`), and
its state written to the store's ``breaker_states`` table by a background thread
(`secflow.http.breaker_store`; `python -m starter breakers` reads it). A refused call
does neither I/O nor a store write: it only bumps a counter.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from enum import Enum

import httpx
from pydantic import BaseModel

from secflow.errors import TransientError
from secflow.http.breaker_store import BreakerRow, publisher
from secflow.http.metrics import http_metrics, outcome_of_status
from secflow.http.registry import DependencySettings
from secflow.logging import get_logger

__all__ = [
    "BreakerSnapshot",
    "BreakerGateTransport",
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerTransport",
    "breaker_for",
    "breaker_states",
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


class BreakerSnapshot(BaseModel):
    """One breaker, readable (times are on the breaker's monotonic clock, in seconds)."""

    dependency: str
    state: BreakerState
    failures: int  # within the current window
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
        self._failures: deque[float] = deque()
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
                raise TransientError(f"circuit breaker for {self.dependency} is open; retry in {wait:.1f}s", retry_after=wait)
        elif state is BreakerState.HALF_OPEN and self._trials >= self.settings.half_open_max_calls:
            wait = min(self.settings.open_timeout, 1.0)
            raise TransientError(
                f"circuit breaker for {self.dependency} is half-open with trials in flight; retry in {wait:.1f}s",
                retry_after=wait,
            )

    # --- the protocol a caller follows: before_call(), then on_success()/on_failure() ---
    def before_call(self) -> None:
        """Refuse at once (TransientError) while open; count a trial while half-open."""
        with self._lock:
            now = self.clock()
            if self._state is BreakerState.OPEN and self._next_half_open_at is not None and now >= self._next_half_open_at:
                self._move(BreakerState.HALF_OPEN)
                self._trials = 0
            if self._state is BreakerState.OPEN:
                wait = max(0.0, (self._next_half_open_at or now) - now)
                raise TransientError(
                    f"circuit breaker for {self.dependency} is open; retry in {wait:.1f}s", retry_after=wait
                )
            if self._state is BreakerState.HALF_OPEN:
                if self._trials >= self.settings.half_open_max_calls:
                    # Trials are in flight; their outcome decides. Come back shortly.
                    wait = min(self.settings.open_timeout, 1.0)
                    raise TransientError(
                        f"circuit breaker for {self.dependency} is half-open with trials in flight; retry in {wait:.1f}s",
                        retry_after=wait,
                    )
                self._trials += 1

    def on_success(self) -> None:
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._failures.clear()
                self._timeout = self.settings.open_timeout
                self._opened_at = self._next_half_open_at = None
                self._opened_wall = self._half_open_wall = None
                self._move(BreakerState.CLOSED)

    def on_failure(self) -> None:
        with self._lock:
            now = self.clock()
            if self._state is BreakerState.HALF_OPEN:
                self._timeout = min(self._timeout * 2, self.settings.max_open_timeout)
                self._open(now)
                return
            if self._state is BreakerState.OPEN:
                return
            self._failures.append(now)
            self._prune(now)
            if len(self._failures) >= self.settings.failure_threshold:
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
            return BreakerSnapshot(
                dependency=self.dependency,
                state=self._state,
                failures=len(self._failures),
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
        while self._failures and self._failures[0] <= now - self.settings.failure_window:
            self._failures.popleft()

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._next_half_open_at = now + self._timeout
        self._opened_wall = datetime.now(timezone.utc)
        self._half_open_wall = self._opened_wall + timedelta(seconds=self._timeout)
        self.trips += 1
        self._move(BreakerState.OPEN)

    def _row(self) -> BreakerRow:
        return BreakerRow.now(
            self.dependency,
            state=self._state.value,
            failures=len(self._failures),
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
            failures=len(self._failures),
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


class BreakerGateTransport(httpx.AsyncBaseTransport):
    """Outermost: refuses at once while the breaker is open (before the rate limiter)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # Name the dependency on the request, so whatever error this call ends in (an
        # httpx error or a status error carries its request) can be counted per
        # dependency by the error ledger (secflow.error_stats.dependency_of).
        request.extensions[DEPENDENCY_EXTENSION] = self.breaker.dependency
        try:
            self.breaker.refuse_if_open()
        except TransientError as refused:
            self.breaker._metrics.refused(self.breaker.dependency)
            refused.dependency = self.breaker.dependency  # type: ignore[attr-defined]
            raise
        return await self.inner.handle_async_request(request)

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
        except TransientError:
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
