"""A total deadline per HTTP request: headers and body, however slowly they arrive.

httpx's timeouts are per phase and per read: a server that sends one header line or one
body byte every few seconds never trips a 10 s read timeout and holds the request (and
the scan lock of its host) until the stage's own timeout. `DeadlineTransport` bounds the
whole exchange, from sending the request to the last byte of the body, by one clock, and
turns the overrun into `httpx.ReadTimeout` (a timeout, classified `transient` by
secflow/errors.py like any other).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

__all__ = ["DeadlineTransport"]


def _overrun(seconds: float, request: httpx.Request) -> httpx.ReadTimeout:
    return httpx.ReadTimeout(f"total request deadline of {seconds:g}s exceeded (headers and body)", request=request)


class _DeadlineStream(httpx.AsyncByteStream):
    """The response body, each chunk awaited against the request's deadline."""

    def __init__(self, inner: httpx.AsyncByteStream, deadline: float, seconds: float, request: httpx.Request) -> None:
        self._inner = inner
        self._deadline = deadline
        self._seconds = seconds
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._inner.__aiter__()
        while True:
            try:
                async with asyncio.timeout_at(self._deadline) as scope:
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                if scope.expired():
                    raise _overrun(self._seconds, self._request) from None
                raise
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class DeadlineTransport(httpx.AsyncBaseTransport):
    """Wraps `inner` so that each request, body included, ends within `seconds`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, seconds: float) -> None:
        if not seconds >= 0:  # NaN included
            raise ValueError(f"a request deadline must be a number of seconds, got {seconds!r}")
        self._inner = inner
        self.seconds = seconds

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        deadline = asyncio.get_running_loop().time() + self.seconds
        try:
            async with asyncio.timeout_at(deadline) as scope:
                response = await self._inner.handle_async_request(request)
        except TimeoutError:
            if scope.expired():
                raise _overrun(self.seconds, request) from None
            raise
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_DeadlineStream(stream, deadline, self.seconds, request),
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()
