"""A success answer's body, checked inside the attempt: a cut-short or unparsable JSON body
is a fault of the dependency, like a 503, not of the request.

For a dependency whose settings say `json_bodies` (the read APIs OSV, NVD, EPSS, KEV),
`BodyCheckTransport` reads every 2xx body to its end within the attempt and parses it as
JSON. A body that ends early (fewer bytes than Content-Length, broken chunking: httpx's
`RemoteProtocolError`) or does not parse (`MalformedBodyError`) is raised as a transport
error, so the circuit breaker above counts it as a failed call and the retry transport
sends the request again like a 503. When the retries run out on a malformed body, the
retry transport hands that last answer (`MalformedBodyError.response`) to the caller,
whose parser raises the classified error it always has; a body that parses but is
semantically wrong passes untouched to the caller's checks, as before.

Sits below the breaker and above the per-request deadline, so a slow body still ends at
the deadline. Bodies here are small JSON documents; they are held in memory once read.
"""

from __future__ import annotations

import json

import httpx

__all__ = ["BodyCheckTransport", "MalformedBodyError"]

# 2xx answers that carry no body by definition.
_NO_BODY = frozenset({204, 205})


class MalformedBodyError(httpx.RemoteProtocolError):
    """A complete 2xx body that is not the JSON the API documents; `response` holds it (read)."""

    def __init__(self, message: str, *, request: httpx.Request, response: httpx.Response) -> None:
        super().__init__(message, request=request)
        self.response = response


class BodyCheckTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not response.is_success or response.status_code in _NO_BODY or request.method.upper() == "HEAD":
            return response
        try:
            # Raw bytes (still content-encoded): the caller's client decodes them as usual.
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        checked = httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(raw),
            extensions=response.extensions,
            request=request,
        )
        why = await _malformed(response.status_code, response.headers, raw)
        if why is not None:
            await checked.aread()
            raise MalformedBodyError(
                f"{request.method} {request.url.path}: HTTP {response.status_code} with a malformed JSON body "
                f"({len(raw)} bytes): {why}",
                request=request,
                response=checked,
            )
        return checked

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _malformed(status: int, headers: httpx.Headers, raw: bytes) -> str | None:
    """Why `raw` is not a JSON document (after content decoding), or None when it is."""
    view = httpx.Response(status_code=status, headers=headers, stream=httpx.ByteStream(raw))
    try:
        await view.aread()
        json.loads(view.content)
    except httpx.DecodingError as exc:
        return f"content decoding failed: {exc}"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return str(exc)
    return None
