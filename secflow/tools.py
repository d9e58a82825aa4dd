"""What tools exist, what they accept, and how they are retried.

This registry is metadata only (no scanner code), so the spec validator, the workflow and
the starter can all read it without importing activities. Each tool's `options` model is
where a typo in a spec's `options:` becomes a clear validation error.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from secflow.durations import Duration


class RetryClass(str, Enum):
    """Rows of the retry table (design brief); a tool belongs to one."""

    HTTP_API = "http_api"
    ENRICHMENT = "enrichment"
    SCANNER = "scanner"
    FILESYSTEM = "filesystem"
    SANDBOX = "sandbox"


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PortscanOptions(_Options):
    ports: str = "1-1024"
    rate: float = Field(200.0, gt=0, le=20000, description="probes started per second")
    concurrency: int = Field(100, ge=1, le=2000)
    connect_timeout: Duration = Field(default="1s", validate_default=True)

    @field_validator("ports")
    @classmethod
    def _ports_parse(cls, value: str) -> str:
        parse_port_spec(value)
        return value


class HttpHeadersOptions(_Options):
    request_timeout: Duration = Field(default="10s", validate_default=True)
    max_redirects: int = Field(5, ge=0, le=20)
    verify_tls: bool = True


class ReportOptions(_Options):
    formats: list[Literal["json", "md"]] = Field(default_factory=lambda: ["json", "md"])


@dataclass(frozen=True)
class ToolInfo:
    name: str
    kinds: frozenset[str]
    target_kinds: frozenset[str]  # host | url | path; empty: runs once, not per target
    retry_class: RetryClass
    options: type[_Options]
    description: str


TOOLS: dict[str, ToolInfo] = {
    info.name: info
    for info in (
        ToolInfo(
            "portscan",
            frozenset({"discovery"}),
            frozenset({"host"}),
            RetryClass.SCANNER,
            PortscanOptions,
            "asyncio TCP connect scan; one finding per open port",
        ),
        ToolInfo(
            "http_headers",
            frozenset({"dast"}),
            frozenset({"url"}),
            RetryClass.SCANNER,
            HttpHeadersOptions,
            "missing/weak security headers, version disclosure, weak cookies",
        ),
        ToolInfo(
            "report",
            frozenset({"report"}),
            frozenset(),
            RetryClass.FILESYSTEM,
            ReportOptions,
            "JSON and Markdown report of the assessment into the output directory",
        ),
    )
}

# The tool a stage gets when its spec names none.
DEFAULT_TOOL_FOR_KIND: dict[str, str] = {"discovery": "portscan", "dast": "http_headers", "report": "report"}

# Options every stage accepts whatever its tool; the workflow reads them, not the tool.
STAGE_OPTIONS = {"tolerated_failure_percent"}


def parse_port_spec(spec: str) -> list[int]:
    """`"8000-8100,22"` -> sorted unique ports. Raises ValueError with the reason."""
    ports: set[int] = set()
    text = str(spec).strip()
    if not text:
        raise ValueError("port list is empty")
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty item in port list {spec!r}")
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise ValueError(f"{part!r} is not a port or a port range like 8000-8100") from None
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise ValueError(f"{part!r}: ports must be between 1 and 65535")
        if hi < lo:
            raise ValueError(f"{part!r}: range end is below its start")
        ports.update(range(lo, hi + 1))
    return sorted(ports)
