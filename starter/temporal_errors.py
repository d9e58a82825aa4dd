"""Temporal client errors as one line a person can act on.

The SDK's connect error is a Rust debug dump (`Failed client connect: Server connection
error: tonic::transport::Error(Transport, ConnectError(...))`) and an RPCError's message can
be one too. The starter shows the address it tried, what went wrong in words, and the fix;
the raw text goes to the starter's log (starter/crash_log.py), not the terminal.
"""

from __future__ import annotations

import re

# Seconds the starter gives a connect or a single RPC before it says so (issue 11: a
# refused or silent server must not cost 31 s).
CONNECT_TIMEOUT = 5.0

_START_HINT = "is the server running? `make demo` starts one; TEMPORAL_ADDRESS names another"
_MESSAGE = re.compile(r'message: "([^"]+)"')


def connect_error_line(address: str, exc: BaseException) -> str:
    """What went wrong connecting to `address`, in one line with the fix."""
    if isinstance(exc, TimeoutError):
        return f"cannot reach Temporal at {address}: no answer within {CONNECT_TIMEOUT:.0f} s ({_START_HINT})"
    text = str(exc)
    lowered = text.lower()
    if "connection refused" in lowered:
        return f"cannot reach Temporal at {address}: connection refused ({_START_HINT})"
    if "dns error" in lowered or "failed to lookup" in lowered or "name or service not known" in lowered:
        return f"cannot reach Temporal at {address}: the host name does not resolve (check TEMPORAL_ADDRESS)"
    if "invalid uri" in lowered or "invalid authority" in lowered or "invalid port" in lowered:
        return f"cannot reach Temporal at {address}: not a host:port address (check TEMPORAL_ADDRESS)"
    if "tls" in lowered or "certificate" in lowered or "handshake" in lowered:
        return f"cannot reach Temporal at {address}: TLS handshake failed (check the server's TLS settings and ours)"
    if "get_system_info" in lowered:
        return f"cannot reach Temporal at {address}: something answers there but it is not a Temporal frontend ({short(text)})"
    return f"cannot reach Temporal at {address}: {short(text)}"


def short(text: str, limit: int = 200) -> str:
    """The human part of an SDK error text: the innermost `message: "..."`, first line, bounded."""
    found = _MESSAGE.findall(text)
    if found:
        text = found[-1]
    text = text.replace("Failed client connect: ", "").strip()
    first = text.splitlines()[0] if text else "unknown error"
    return first if len(first) <= limit else first[: limit - 3] + "..."


def rpc_error_line(address: str, status_name: str, message: str) -> str:
    """An RPCError the starter did not handle itself, as one line."""
    if status_name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return f"Temporal at {address} did not answer ({status_name.lower()}: {short(message)}); {_START_HINT}"
    if status_name in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return f"Temporal at {address} refused the request ({status_name.lower()}): {short(message)}"
    return f"Temporal at {address}: {status_name.lower()}: {short(message)}"
