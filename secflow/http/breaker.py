"""A circuit breaker per dependency, shared by every client in the worker process.

closed --(failure_threshold failures within failure_window)--> open
open --(open_timeout elapsed)--> half_open: up to half_open_max_calls trial calls
half_open --(a trial succeeds)--> closed (the open timeout resets)
half_open --(a trial fails)--> open again, with the timeout doubled (capped)

While open, a request is refused before any I/O with `TransientError(retry_after=<seconds
until half-open>)`: the activity wrapper turns that into ``next_retry_delay``, so a dead
API costs neither sockets nor the retry budget's patience. What counts as a failure:
transport errors (connect, read, timeouts) and 408/5xx answers. Any other answer,
including 4xx and 429, proves the service is up (429 is the rate limiter's business).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum

import httpx
from pydantic import BaseModel

from secflow.errors import TransientError
from secflow.http.registry import DependencySettings
from secflow.logging import get_logger

__all__ = [
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerTransport",
    "breaker_for",
    "breaker_states",
    "reset_breakers",
]

Clock = Callable[[], float]


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
        self._timeout = settings.open_timeout
        self._trials = 0
        self.trips = 0
        self._log = get_logger(component="http.breaker", dependency=dependency)

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

    # --- internals (lock held) -----------------------------------------------------------
    def _prune(self, now: float) -> None:
        while self._failures and self._failures[0] <= now - self.settings.failure_window:
            self._failures.popleft()

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._next_half_open_at = now + self._timeout
        self.trips += 1
        self._move(BreakerState.OPEN)

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is new:
            return
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


def reset_breakers() -> None:
    """Forget every breaker (tests; a worker never needs this)."""
    with _REGISTRY_LOCK:
        _BREAKERS.clear()


class CircuitBreakerTransport(httpx.AsyncBaseTransport):
    """Asks the breaker before each request and reports the outcome after it."""

    def __init__(self, inner: httpx.AsyncBaseTransport, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.breaker.before_call()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError:
            self.breaker.on_failure()
            raise
        except BaseException:
            self.breaker.on_abandoned()
            raise
        if is_failure_status(response.status_code):
            self.breaker.on_failure()
        else:
            self.breaker.on_success()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
