"""Fault injection as a transport: make external APIs fail on purpose, on demand.

Honoured only when ``SECFLOW_CHAOS=1``; the faults come from ``SECFLOW_CHAOS_CONFIG`` (the
worker's environment) and from an assessment spec's ``chaos:`` section (passed to
``client_for(..., chaos=ctx.chaos)``), both a mapping of a dependency name to an ordered
list of faults; for a dependency the spec names, the spec's list replaces the env's:

    {"osv": [{"fault": "status", "status": 503, "first_n": 2},
             {"fault": "status", "status": 429, "retry_after": 1, "probability": 0.2},
             {"fault": "latency", "seconds": 0.5},
             {"fault": "hang"}, {"fault": "reset"}, {"fault": "truncate"}, {"fault": "malformed"}]}

Each fault fires on the first ``first_n`` requests of the dependency and/or with
``probability`` (default 1). ``first_n`` is counted per fault across attempts, so a
retried request or activity sees the fault run out: process-wide for the env's faults,
per assessment for a spec's (a second assessment with the same spec gets its own first
n). The transport sits innermost, just above the network, so an injected fault looks to
the retry transport, the breaker and the metrics exactly like the dependency failing:
each retry is a request and counts. For each request the faults are tried in order:
``latency`` adds its delay and goes on; the first other fault that fires decides the
outcome:

- ``status``: an answer with that status (and ``Retry-After`` when given), no I/O;
- ``hang``: waits out the request's read timeout, then ``httpx.ReadTimeout``;
- ``reset``: ``httpx.ReadError`` (connection reset by peer);
- ``truncate``: the real answer with only the first half of its body;
- ``malformed``: the real answer's status with a body that is not what was asked for.

The env config is validated at client creation (a mistake is a ValueError naming
SECFLOW_CHAOS_CONFIG and the field); a spec's section by `load_spec`, with the same
validator (`chaos_problems`), as problems such as ``chaos.nvd[0].status``.
``SECFLOW_CHAOS_SEED`` seeds the randomness.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from secflow.logging import get_logger

__all__ = [
    "CHAOS_CONFIG_ENV",
    "CHAOS_ENV",
    "ChaosTransport",
    "SpecChaos",
    "chaos_enabled",
    "chaos_problems",
    "load_chaos_config",
    "reset_chaos",
    "validate_chaos",
]

CHAOS_ENV = "SECFLOW_CHAOS"
CHAOS_CONFIG_ENV = "SECFLOW_CHAOS_CONFIG"
CHAOS_SEED_ENV = "SECFLOW_CHAOS_SEED"
MALFORMED_BODY = b'<html><body>502 Bad Gateway</body></html>{"results": ['


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    probability: float = Field(1.0, ge=0.0, le=1.0)
    first_n: int | None = Field(None, ge=1)


class StatusFault(_Fault):
    fault: Literal["status"]
    status: int = Field(ge=100, le=599)
    retry_after: float | str | None = None


class LatencyFault(_Fault):
    fault: Literal["latency"]
    seconds: float = Field(gt=0, le=600)


class HangFault(_Fault):
    fault: Literal["hang"]


class ResetFault(_Fault):
    fault: Literal["reset"]


class TruncateFault(_Fault):
    fault: Literal["truncate"]


class MalformedFault(_Fault):
    fault: Literal["malformed"]


Fault = Annotated[
    StatusFault | LatencyFault | HangFault | ResetFault | TruncateFault | MalformedFault,
    Field(discriminator="fault"),
]
_KINDS = ("status", "latency", "hang", "reset", "truncate", "malformed")
_CONFIG = TypeAdapter(dict[str, list[Fault]])


def chaos_enabled() -> bool:
    return os.environ.get(CHAOS_ENV, "").strip() == "1"


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    # loc is (dependency, index, fault kind, field): say it the way a user writes it
    loc = list(loc)
    if len(loc) >= 3 and isinstance(loc[1], int) and loc[2] in _KINDS:
        del loc[2]
    parts = [f"[{item}]" if isinstance(item, int) else f".{item}" for item in loc]
    return "".join(parts).lstrip(".")


def chaos_problems(doc: Any) -> list[tuple[str, str]]:
    """Every problem of a chaos config, as (path like ``osv[0].status``, reason); [] if valid."""
    try:
        _CONFIG.validate_python(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            reason = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append((_where(err["loc"]), reason))
        return problems
    return []


def validate_chaos(doc: Any, *, source: str = CHAOS_CONFIG_ENV) -> dict[str, list[Fault]]:
    """The validated faults by dependency, or ValueError naming `source`, the field and why."""
    try:
        return _CONFIG.validate_python(doc)
    except ValidationError:
        where, reason = chaos_problems(doc)[0]
        raise ValueError(f"{source}: {where or '(top level)'}: {reason}") from None


def load_chaos_config(text: str | None = None) -> dict[str, list[Fault]]:
    """Parse and validate the config (from `SECFLOW_CHAOS_CONFIG` when `text` is None)."""
    raw = os.environ.get(CHAOS_CONFIG_ENV, "") if text is None else text
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{CHAOS_CONFIG_ENV} is not valid JSON: {exc}") from None
    return validate_chaos(doc)


@dataclass(frozen=True)
class SpecChaos:
    """An assessment spec's ``chaos:`` section, as handed to `client_for(..., chaos=)`.

    `scope` keys the ``first_n`` counters (the assessment id), so "the first 2 calls"
    means the first 2 of this assessment, whatever else the worker is doing.
    """

    faults: Mapping[str, Any] = field(default_factory=dict)
    scope: str = ""

    def for_dependency(self, dependency: str) -> list[Fault] | None:
        """This dependency's validated faults, or None when the section does not name it."""
        if dependency not in self.faults:
            return None
        return validate_chaos({dependency: self.faults[dependency]}, source="chaos")[dependency]


# first_n counters: per (scope, dependency, fault index); scope "" is the env's, process-wide
_SEEN: dict[tuple[str, str, int], int] = {}
_SEEN_LOCK = threading.Lock()
_SEEN_MAX = 100_000  # a long-lived worker sees many assessments: forget the oldest counters


def reset_chaos() -> None:
    with _SEEN_LOCK:
        _SEEN.clear()


class ChaosTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        dependency: str,
        faults: list[Fault],
        *,
        scope: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.dependency = dependency
        self.scope = scope
        self.faults = list(faults)
        if rng is None:
            seed = os.environ.get(CHAOS_SEED_ENV, "").strip()
            rng = random.Random(seed) if seed else random.Random()
        self.rng = rng
        self._log = get_logger(component="http.chaos", dependency=dependency, chaos_scope=scope or "env")

    def _fires(self, index: int, fault: _Fault) -> bool:
        if fault.first_n is not None:
            key = (self.scope, self.dependency, index)
            with _SEEN_LOCK:
                seen = _SEEN.get(key, 0)
                if seen >= fault.first_n:
                    return False
                _SEEN[key] = seen + 1
                if len(_SEEN) > _SEEN_MAX:
                    del _SEEN[next(iter(_SEEN))]
        return fault.probability >= 1.0 or self.rng.random() < fault.probability

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for index, fault in enumerate(self.faults):
            if not self._fires(index, fault):
                continue
            self._log.warning("chaos fault injected", fault=fault.fault, method=request.method, host=request.url.host)
            if isinstance(fault, LatencyFault):
                await asyncio.sleep(fault.seconds)
                continue
            if isinstance(fault, StatusFault):
                headers = {"Content-Type": "application/json"}
                if fault.retry_after is not None:
                    value = fault.retry_after
                    headers["Retry-After"] = f"{value:g}" if isinstance(value, float) else str(value)
                body = json.dumps({"message": f"chaos: injected HTTP {fault.status}"}).encode()
                return httpx.Response(fault.status, headers=headers, content=body, request=request)
            if isinstance(fault, HangFault):
                timeout = (request.extensions.get("timeout") or {}).get("read") or 30.0
                await asyncio.sleep(timeout)
                raise httpx.ReadTimeout(f"chaos: no answer within the read timeout ({timeout:g}s)", request=request)
            if isinstance(fault, ResetFault):
                raise httpx.ReadError("chaos: connection reset by peer", request=request)
            response = await self.inner.handle_async_request(request)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
            kept = [
                (k, v)
                for k, v in response.headers.items()
                if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
            ]
            body = body[: len(body) // 2] if isinstance(fault, TruncateFault) else MALFORMED_BODY
            return httpx.Response(response.status_code, headers=kept, content=body, request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
