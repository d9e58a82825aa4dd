"""What tools exist, what they accept, and how they are retried.

This registry is metadata only (no scanner code), so the spec validator, the workflow and
the starter can all read it without importing activities. Each tool's `options` model is
where a typo in a spec's `options:` becomes a clear validation error.

Names: one convention, lowercase with hyphens like PyPI names (`http-headers`,
`detect-secrets`, `cve-enrich`). Other spellings (`detect_secrets`, `Detect-Secrets`) and
the scanners' PyPI names are aliases: a spec may use them, and validation rewrites them to
the canonical name. `TOOLS` answers for every spelling, because specs stored before the
rename (and the histories of running workflows) keep theirs; the worker registers each
tool's activity under its old name and its canonical name (`activity_names`).
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from secflow.durations import Duration
from secflow.secrets import SecretRef


class RetryClass(str, Enum):
    """Rows of the retry table (docs/architecture.md, rule 5); a tool belongs to one."""

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


ReportFormat = Literal["sarif", "md", "html", "json"]


def _all_report_formats() -> list[ReportFormat]:
    return ["sarif", "md", "html", "json"]


class ReportOptions(_Options):
    """`report`: SARIF 2.1.0 (code scanning), Markdown and HTML (people), JSON (machines)."""

    formats: list[ReportFormat] = Field(default_factory=_all_report_formats, min_length=1)


class ScaOptions(_Options):
    """`sca`: pinned Python dependencies checked against OSV (base URL from SECFLOW_OSV_URL)."""

    batch_size: int = Field(1000, ge=1, le=1000, description="queries per OSV querybatch request (OSV allows 1000)")
    request_timeout: Duration = Field(default="30s", validate_default=True)
    concurrency: int = Field(8, ge=1, le=64, description="advisory detail requests in flight")


class CveEnrichOptions(_Options):
    """`cve-enrich`: the assessment's CVEs enriched from NVD, FIRST EPSS and CISA KEV
    (base URLs from SECFLOW_NVD_URL, SECFLOW_EPSS_URL, SECFLOW_KEV_URL)."""

    max_age: Duration = Field(default="24h", validate_default=True, description="cached data younger than this is used as is")
    request_timeout: Duration = Field(default="30s", validate_default=True)
    # By reference only (docs/secrets.md); without it, SECFLOW_NVD_API_KEY if set.
    api_key: SecretRef | None = Field(None, description="NVD API key: {from_env: NAME} or {from_file: /path}")


class TlsOptions(_Options):
    """`tls`: protocol versions, certificate and weak cipher suites of an https URL."""

    connect_timeout: Duration = Field(default="5s", validate_default=True)
    ca_file: str | None = Field(None, description="PEM bundle trusted in addition to the system store")
    expiry_warning_days: int = Field(30, ge=0, le=3650)


class NmapOptions(_Options):
    """`nmap`: connect scan with service/version detection (`-sT -sV`) of one host, in port
    chunks of `chunk_ports` (`timeout` bounds the whole attempt, `host_timeout` each run)."""

    ports: str = "1-1024"
    timing: int = Field(3, ge=0, le=5, description="nmap timing template -T0..-T5")
    host_timeout: Duration = Field(default="15m", validate_default=True, description="nmap --host-timeout")
    timeout: Duration = Field(
        default="20m", validate_default=True, description="time for all nmap runs of one attempt; the run past it is killed"
    )
    version_intensity: int = Field(7, ge=0, le=9, description="nmap --version-intensity")
    max_rate: float | None = Field(None, gt=0, le=100000, description="nmap --max-rate, probes per second")
    skip_host_discovery: bool = Field(True, description="-Pn: scan the listed host even if it ignores pings")
    # One nmap run per chunk of the (sorted) port list; each finished chunk is stored and
    # checkpointed, so a crash or a server restart costs at most one chunk's scanning.
    chunk_ports: int = Field(250, ge=1, le=65535, description="ports per nmap run (the work a crash can lose)")

    @field_validator("ports")
    @classmethod
    def _ports_parse(cls, value: str) -> str:
        parse_port_spec(value)
        return value


class BanditOptions(_Options):
    """`bandit`: Python static analysis of a `path:` target (a directory or one file)."""

    timeout: Duration = Field(default="15m", validate_default=True, description="kill bandit after this long, per batch")
    min_severity: Literal["low", "medium", "high"] = "low"
    min_confidence: Literal["low", "medium", "high"] = "low"
    skip: list[str] = Field(default_factory=list, description="bandit test ids not to run, e.g. B101")
    exclude: list[str] = Field(default_factory=list, description="paths (globs) bandit does not scan")
    batch_files: int = Field(100, ge=1, le=5000, description="files per run of the tool; a crash loses at most one batch")
    batch_max_bytes: int = Field(
        8_000_000, ge=1024, le=1_000_000_000, description="bytes of source per batch (a larger file is a batch alone)"
    )

    @field_validator("skip")
    @classmethod
    def _test_ids(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"B\d{3}", item):
                raise ValueError(f"{item!r} is not a bandit test id like B101")
        return value

    @field_validator("exclude")
    @classmethod
    def _excludes(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item or item.startswith("-") or "," in item or any(c in item for c in "\n\r\x00"):
                raise ValueError(f"{item!r} is not a usable exclude path (empty, option-like or has a comma)")
        return value


class SemgrepOptions(_Options):
    """`semgrep`: rule-based static analysis of a `path:` target with SecFlow's own offline
    rules (rules/semgrep/), plus any extra LOCAL rule files. Registry configs (`p/...`,
    `auto`) and URLs are refused: a scan never fetches rules from the network."""

    timeout: Duration = Field(default="15m", validate_default=True, description="kill semgrep after this long, per batch")
    rules: list[str] = Field(default_factory=list, description="extra local rule files (absolute paths to .yml/.yaml)")
    exclude: list[str] = Field(default_factory=list, description="path globs semgrep does not scan (--exclude)")
    batch_files: int = Field(200, ge=1, le=5000, description="files per run of the tool; a crash loses at most one batch")
    batch_max_bytes: int = Field(
        8_000_000, ge=1024, le=1_000_000_000, description="bytes of source per batch (a larger file is a batch alone)"
    )

    @field_validator("rules")
    @classmethod
    def _local_rule_files(cls, value: list[str]) -> list[str]:
        for item in value:
            if "://" in item or not item.startswith("/") or not item.endswith((".yml", ".yaml")):
                raise ValueError(
                    f"{item!r} is not a local rules file: give an absolute path to a .yml/.yaml file (registry ids and URLs are not allowed)"
                )
            if any(c in item for c in "\n\r\x00"):
                raise ValueError(f"{item!r} contains control characters")
        return value

    @field_validator("exclude")
    @classmethod
    def _excludes(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item or item.startswith("-") or any(c in item for c in "\n\r\x00"):
                raise ValueError(f"{item!r} is not a usable exclude glob (empty, option-like or has control characters)")
        return value


class DetectSecretsOptions(_Options):
    """`detect-secrets`: hard-coded secrets in a `path:` target (every file, not only git's).
    Findings carry the secret's type, location and detect-secrets' hash, never its value."""

    timeout: Duration = Field(default="10m", validate_default=True, description="kill detect-secrets after this long, per batch")
    exclude_files: list[str] = Field(default_factory=list, description="regexes of relative paths not to scan")
    disable_plugins: list[str] = Field(default_factory=list, description="detect-secrets plugin class names to turn off")
    batch_files: int = Field(200, ge=1, le=5000, description="files per run of the tool; a crash loses at most one batch")
    batch_max_bytes: int = Field(
        8_000_000, ge=1024, le=1_000_000_000, description="bytes of source per batch (a larger file is a batch alone)"
    )

    @field_validator("exclude_files")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item or item.startswith("-"):
                raise ValueError(f"{item!r} is not a usable exclude regex (empty or option-like)")
            try:
                re.compile(item)
            except re.error as exc:
                raise ValueError(f"{item!r} is not a valid regular expression: {exc}") from None
        return value

    @field_validator("disable_plugins")
    @classmethod
    def _plugin_names(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"[A-Z][A-Za-z0-9]{1,80}", item):
                raise ValueError(f"{item!r} is not a detect-secrets plugin class name like Base64HighEntropyString")
        return value


@dataclass(frozen=True)
class ToolInfo:
    name: str
    kinds: frozenset[str]
    target_kinds: frozenset[str]  # host | url | path; empty: runs once, not per target
    retry_class: RetryClass
    options: type[_Options]
    description: str
    # Other names it answers to (PyPI names, the spelling it was registered under).
    aliases: tuple[str, ...] = ()


def _normal(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class ToolRegistry(dict[str, ToolInfo]):
    """The tools by canonical name; looking one up by any of its spellings works too."""

    def canonical(self, name: object) -> str | None:
        if not isinstance(name, str):
            return None
        if dict.__contains__(self, name):
            return name
        wanted = _normal(name)
        for info in self.values():
            if wanted == _normal(info.name) or wanted in (_normal(a) for a in info.aliases):
                return info.name
        return None

    def __getitem__(self, name: str) -> ToolInfo:
        return dict.__getitem__(self, self.canonical(name) or name)

    def get(self, name: str, default: ToolInfo | None = None) -> ToolInfo | None:  # type: ignore[override]
        canonical = self.canonical(name)
        return dict.__getitem__(self, canonical) if canonical else default

    def __contains__(self, name: object) -> bool:
        return self.canonical(name) is not None


TOOLS: ToolRegistry = ToolRegistry(
    (info.name, info)
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
            "http-headers",
            frozenset({"dast"}),
            frozenset({"url"}),
            RetryClass.SCANNER,
            HttpHeadersOptions,
            "missing/weak security headers, version disclosure, weak cookies",
            aliases=("http_headers",),
        ),
        ToolInfo(
            "sca",
            frozenset({"sca"}),
            frozenset({"path"}),
            RetryClass.HTTP_API,
            ScaOptions,
            "pinned Python dependencies (requirements*.txt, poetry.lock, Pipfile.lock) checked against OSV",
        ),
        ToolInfo(
            "tls",
            frozenset({"dast"}),
            frozenset({"url"}),
            RetryClass.SCANNER,
            TlsOptions,
            "TLS protocol versions, certificate problems and weak cipher suites of https URLs",
        ),
        ToolInfo(
            "nmap",
            frozenset({"discovery"}),
            frozenset({"host"}),
            RetryClass.SCANNER,
            NmapOptions,
            "nmap connect scan with service/version detection; one finding per open port",
        ),
        ToolInfo(
            "bandit",
            frozenset({"sast"}),
            frozenset({"path"}),
            RetryClass.SCANNER,
            BanditOptions,
            "bandit static analysis of Python code; one finding per issue at file:line",
        ),
        ToolInfo(
            "semgrep",
            frozenset({"sast"}),
            frozenset({"path"}),
            RetryClass.SCANNER,
            SemgrepOptions,
            "semgrep with SecFlow's offline rules (rules/semgrep/); one finding per match at file:line",
        ),
        ToolInfo(
            "detect-secrets",
            frozenset({"secrets"}),
            frozenset({"path"}),
            RetryClass.SCANNER,
            DetectSecretsOptions,
            "detect-secrets over every file; one finding per secret (type, file:line, hash; never the value)",
            aliases=("detect_secrets",),
        ),
        ToolInfo(
            "report",
            frozenset({"report"}),
            frozenset(),
            RetryClass.FILESYSTEM,
            ReportOptions,
            "SARIF 2.1.0, Markdown, HTML and JSON reports into the reports directory",
        ),
        ToolInfo(
            "cve-enrich",
            frozenset({"enrich"}),
            frozenset(),
            RetryClass.ENRICHMENT,
            CveEnrichOptions,
            "CVSS (NVD), EPSS and CISA KEV data for the CVEs of the assessment's findings; cached",
            aliases=("cve_enrich",),
        ),
    )
)

# The activity each tool was registered under before the names were made one convention:
# histories of running workflows schedule these, so the worker keeps them registered.
REGISTERED_ACTIVITY: dict[str, str] = {"http-headers": "http_headers", "detect-secrets": "detect_secrets"}


def activity_names(tool: str) -> list[str]:
    """Every activity name a tool's activity is registered under (first: the original)."""
    canonical = TOOLS.canonical(tool) or tool
    original = REGISTERED_ACTIVITY.get(canonical, canonical)
    return [original] if original == canonical else [original, canonical]


def canonical_tool(name: str) -> str | None:
    """The canonical name for any spelling of a tool (None: no such tool)."""
    return TOOLS.canonical(name)


def suggest_tool(name: str) -> str:
    """ " (did you mean 'x'?)" for an unknown tool name, or "" when nothing is close."""
    spellings = {_normal(info.name): info.name for info in TOOLS.values()}
    for info in TOOLS.values():
        spellings.update({_normal(a): info.name for a in info.aliases})
    close = difflib.get_close_matches(_normal(str(name)), list(spellings), n=1, cutoff=0.6)
    return f" (did you mean {spellings[close[0]]!r}?)" if close else ""


def canonical_spec_tools(data: object) -> object:
    """A copy of raw spec data whose stages name their tool (and fallback tool) canonically;
    a stage without a tool gets its kind's default, so every new stored spec says which
    tool runs. Unknown names are left for the validator to report."""
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        return data
    data = copy.copy(data)
    stages = []
    for stage in data["stages"]:
        if isinstance(stage, dict):
            stage = dict(stage)
            for field in ("tool", "fallback_tool"):
                name = stage.get(field)
                if isinstance(name, str) and (canonical := TOOLS.canonical(name)) is not None:
                    stage[field] = canonical
            kind = stage.get("kind")
            if stage.get("tool") is None and isinstance(kind, str) and kind in DEFAULT_TOOL_FOR_KIND:
                stage["tool"] = TOOLS.canonical(DEFAULT_TOOL_FOR_KIND[kind])
        stages.append(stage)
    data["stages"] = stages
    return data


# The tool a stage gets when its spec names none. Spelled as specs stored before the
# rename resolved it (their histories schedule these activity names); new specs are given
# the canonical name explicitly by `canonical_spec_tools`.
DEFAULT_TOOL_FOR_KIND: dict[str, str] = {
    "discovery": "portscan",
    "dast": "http_headers",
    "report": "report",
    "sca": "sca",
    "sast": "bandit",
    "secrets": "detect_secrets",
    "enrich": "cve-enrich",
}

# Options every stage accepts whatever its tool; the workflow reads them, not the tool.
# Options of the stage itself, not of its tool: how failures are tolerated and how its
# targets are fanned out (targets in flight at once; targets loaded per batch).
STAGE_OPTIONS = {"tolerated_failure_percent", "targets_in_flight", "targets_per_batch"}
DEFAULT_CONCURRENCY = 200
MAX_CONCURRENCY = 1000  # well under Temporal's 2,000 pending activities per run
DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 5000


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
