"""Retries inside the transport: a few quick attempts for outcomes that clear by themselves.

Every re-attempt first takes a token from the dependency's rate limiter (NVD counts
retries too), within the deadline. Retried: connect/read/write errors, timeouts, a dropped connection, and the answers
408, 425, 429 and 5xx except 501 (Not Implemented) and 505 (HTTP Version Not Supported),
which will not change on a second try. Also retried, for the JSON APIs (`json_bodies`): a 2xx body
cut short or not parsing (`secflow.http.bodies`); out of attempts, the last such answer goes
to the caller's parser. Never retried: any other 4xx (the same request gets
the same answer). POST and PATCH are retried only when the server surely did not act on
them (no connection; 429 or 503) unless the dependency says they are idempotent. The delay is `secflow.retries.next_delay`'s: full jitter, and a
``Retry-After`` (seconds or HTTP-date) wins. Attempts are bounded by the dependency's
`retry_attempts` (3 by default; 8 for the idempotent read APIs OSV, NVD, EPSS and KEV,
enough to ride through a third of requests failing at random) and by the request's total
deadline: the activity's Temporal retry is the outer loop, so when the server asks for a
wait longer than the deadline leaves, the answer goes back to the caller at once and the
activity waits out ``Retry-After`` via ``next_retry_delay``. An attempt the breaker
refuses ends the retries (`BreakerOpenError`; the breaker gate above may wait for the
half-open trial and send the request again).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx

from secflow.errors import parse_retry_after
from secflow.http.bodies import MalformedBodyError
from secflow.http.ratelimit import Limiter
from secflow.http.registry import DependencySettings
from secflow.http_statuses import STATUS_RULES, is_resent_status
from secflow.logging import get_logger
from secflow.retries import Backoff, RetryPlan, next_delay

__all__ = ["RETRYABLE_STATUSES", "RetryTransport", "is_retryable_status", "retry_plan"]

# Which answers are resent is secflow/http_statuses.py's table, shared with the classifier.
# The 4xx among them (every 5xx is resent except those the table says not to):
RETRYABLE_STATUSES = frozenset(status for status, rule in STATUS_RULES.items() if rule.resend and status < 500)
_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# What proves a request was never acted on, so even a POST may be sent again.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_NOT_ACTED_STATUSES = frozenset({429, 503})

Sleep = Callable[[float], Awaitable[None]]


def is_retryable_status(status: int) -> bool:
    return is_resent_status(status)


def retry_plan(settings: DependencySettings) -> RetryPlan:
    return RetryPlan(
        max_attempts=settings.retry_attempts,
        backoff=Backoff.EXPONENTIAL,
        initial_interval=timedelta(seconds=settings.retry_initial),
        backoff_coefficient=2.0,
        max_interval=timedelta(seconds=max(settings.retry_max, settings.retry_initial)),
    )


class RetryTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        settings: DependencySettings,
        *,
        dependency: str = "",
        deadline: float | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        limiter: Limiter | None = None,
    ) -> None:
        self.inner = inner
        # Re-attempts are requests too: they take a token from the dependency's limiter
        # (the first attempt took its token outside, before the breaker).
        self.limiter = limiter
        self.plan = retry_plan(settings)
        self.unsafe_ok = settings.retry_unsafe_methods
        self.deadline = deadline if deadline is not None else settings.deadline
        self.rng = rng or random.Random()
        self.sleep = sleep
        self._log = get_logger(component="http.retry", dependency=dependency)
        self.delays: list[float] = []  # what it waited, last request (for tests and debugging)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()  # a streamed body can be sent once; read it so it can be resent
        started = time.monotonic()
        self.delays = []
        safe = self.unsafe_ok or request.method.upper() in _IDEMPOTENT
        try:
            async with asyncio.timeout(self.deadline) as scope:
                return await self._attempts(request, started, safe)
        except TimeoutError:
            if scope.expired():
                raise httpx.ReadTimeout(f"total deadline of {self.deadline:g}s exceeded", request=request) from None
            raise

    async def _attempts(self, request: httpx.Request, started: float, safe: bool) -> httpx.Response:
        attempt = 1
        while True:
            retry_after: float | None = None
            slot = await self.limiter.acquire_slot() if attempt > 1 and self.limiter is not None else None
            try:
                response = await self.inner.handle_async_request(request)
            except _RETRYABLE_ERRORS as exc:
                if not safe and not isinstance(exc, _NOT_SENT_ERRORS):
                    if isinstance(exc, MalformedBodyError):
                        return exc.response  # the caller's parser classifies it, as before
                    raise
                outcome: str = type(exc).__name__
                error: BaseException | None = exc
                response = None
            finally:
                if slot is not None:
                    slot.settle()  # the server saw this attempt no later than now
            if response is not None:
                status = response.status_code
                if not is_retryable_status(status) or (not safe and status not in _NOT_ACTED_STATUSES):
                    return response
                outcome, error = f"HTTP {response.status_code}", None
                retry_after = parse_retry_after(response.headers.get("Retry-After"))

            delay = next_delay(self.plan, attempt, retry_after=retry_after, rng=self.rng)
            remaining = self.deadline - (time.monotonic() - started)
            if delay is None or delay.total_seconds() >= remaining:
                # Out of attempts, or the wait would outlive the deadline: hand the last
                # outcome to the caller (its classification carries any Retry-After).
                if isinstance(error, MalformedBodyError):
                    # Still malformed after every retry: the caller's parser sees the body
                    # and raises its classified error, as it would have without retries.
                    return error.response
                if error is not None:
                    raise error
                return response  # type: ignore[return-value]
            if response is not None:
                # Read the (small) error body before closing: an unread body would make
                # httpx drop the connection, and every retry would open a new one.
                try:
                    await response.aread()
                except httpx.HTTPError:
                    pass  # the connection is gone anyway; the next attempt opens another
                finally:
                    await response.aclose()
            seconds = delay.total_seconds()
            self.delays.append(seconds)
            self._log.info(
                "retrying request",
                method=request.method,
                host=request.url.host,
                outcome=outcome,
                attempt=attempt,
                delay=round(seconds, 3),
                retry_after=retry_after,
            )
            await self.sleep(seconds)
            attempt += 1

    async def aclose(self) -> None:
        await self.inner.aclose()
