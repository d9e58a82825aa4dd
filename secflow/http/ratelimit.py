"""Rate limiters per dependency, shared by every client in the worker process.

Two shapes, because APIs publish two shapes of limit:
- `TokenBucket`: a steady `rate` per second with bursts up to `burst` (most APIs);
- `RollingWindowLimiter`: at most `limit` requests in any rolling `window` seconds
  (NVD: "5 requests in a rolling 30 second window", 50 with an API key).

Both work by *reservation*: `acquire()` computes, without awaiting, the moment its
request may go and books it, then sleeps until then. With no await between reading and
booking, concurrent coroutines can never both take the last token, and no asyncio.Lock
is needed (one that would be bound to the first event loop that used it). A reservation
whose caller is cancelled while waiting stays booked: the limiter errs on the slow side.

The rolling window counts a request from when the *server* may have seen it, which is
later than when the client booked it (event-loop delays, network): a booking is
*settled* when its answer arrives (`acquire_slot()` ... `settle()`), and the window
runs from the later of the two. So a client that sends one request at a time can never
have L+1 requests inside one of the server's windows, whatever the jitter (a plain
"send time + window" rule got NVD stand-in 403s on a loaded machine).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import httpx

from secflow.http.registry import DependencySettings

__all__ = ["Limiter", "RateLimitTransport", "RollingWindowLimiter", "Slot", "TokenBucket", "limiter_for", "reset_limiters"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Limiter(Protocol):
    async def acquire(self) -> float:
        """Wait for permission to send one request; returns the seconds waited."""
        ...

    async def acquire_slot(self) -> Slot:
        """Like `acquire`; the returned slot is settled when the request's answer arrived."""
        ...


class Slot:
    """One booked request; `settle()` moves its time in the window to 'answer received'."""

    __slots__ = ("_clock", "_lock", "time")

    def __init__(self, at: float, clock: Clock | None = None, lock: threading.Lock | None = None) -> None:
        self.time = at
        self._clock = clock
        self._lock = lock

    def settle(self) -> None:
        if self._clock is None or self._lock is None:
            return
        with self._lock:
            self.time = max(self.time, self._clock())


_UNSETTLED = Slot(0.0)


class TokenBucket:
    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Book one token; the seconds until it may be used (0: now)."""
        with self._lock:
            now = self.clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0  # may go negative: a debt later callers queue behind
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> float:
        wait = self.reserve()
        if wait > 0:
            await self.sleep(wait)
        return wait

    async def acquire_slot(self) -> Slot:
        await self.acquire()
        return _UNSETTLED  # a token bucket paces sends; nothing to settle


class RollingWindowLimiter:
    def __init__(self, limit: int, window: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a rolling window needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self.clock = clock
        self.sleep = sleep
        self._granted: deque[Slot] = deque()  # booked in order; times settle later
        self._lock = threading.Lock()

    def _book(self) -> tuple[float, Slot]:
        with self._lock:
            now = self.clock()
            # Drop bookings that left the window (settled ones may be out of order; a
            # slot kept a little longer only makes the limiter more careful).
            while self._granted and self._granted[0].time <= now - self.window:
                self._granted.popleft()
            at = now
            if len(self._granted) >= self.limit:
                times = sorted(slot.time for slot in self._granted)
                at = max(now, times[-self.limit] + self.window)
            slot = Slot(at, self.clock, self._lock)
            self._granted.append(slot)
            return at - now, slot

    def reserve(self) -> float:
        """Book the earliest send time keeping <= limit sends in any window; seconds until it."""
        return self._book()[0]

    async def acquire(self) -> float:
        wait = self.reserve()
        if wait > 0:
            await self.sleep(wait)
        return wait

    async def acquire_slot(self) -> Slot:
        wait, slot = self._book()
        if wait > 0:
            await self.sleep(wait)
        return slot


_LIMITERS: dict[str, Limiter] = {}
_REGISTRY_LOCK = threading.Lock()


def limiter_for(
    dependency: str, settings: DependencySettings, *, clock: Clock | None = None, sleep: Sleep | None = None
) -> Limiter:
    """The process-wide limiter of `dependency` (created on first use with `settings`)."""
    with _REGISTRY_LOCK:
        limiter = _LIMITERS.get(dependency)
        if limiter is None:
            now, wait = clock or time.monotonic, sleep or asyncio.sleep
            if settings.window_limit is not None:
                limiter = RollingWindowLimiter(settings.window_limit, settings.window_seconds, clock=now, sleep=wait)
            else:
                limiter = TokenBucket(settings.rate, settings.burst, clock=now, sleep=wait)
            _LIMITERS[dependency] = limiter
        return limiter


def reset_limiters() -> None:
    with _REGISTRY_LOCK:
        _LIMITERS.clear()


class RateLimitTransport(httpx.AsyncBaseTransport):
    """Waits for the dependency's limiter before each request (one token per request)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, limiter: Limiter) -> None:
        self.inner = inner
        self.limiter = limiter

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        slot = await self.limiter.acquire_slot()
        try:
            return await self.inner.handle_async_request(request)
        finally:
            slot.settle()  # the server saw it no later than now

    async def aclose(self) -> None:
        await self.inner.aclose()
