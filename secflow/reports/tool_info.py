"""Who made each tool a SARIF run names, and which version ran: asked once per process.

A scanner installed from PyPI (bandit, semgrep, detect-secrets) answers from its package
metadata; nmap answers `nmap --version` (the binary on PATH, as the scanner finds it);
SecFlow's own tools (portscan, http_headers, tls, sca, cve-enrich, report) carry
SecFlow's version. A version that cannot be found is left out rather than guessed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from importlib import metadata

_VERSION = re.compile(r"([0-9]+(?:\.[0-9]+)+(?:[-+.][0-9A-Za-z.]+)?)")
_SEMVER = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_VERSION_TIMEOUT = 5.0  # seconds; `nmap --version` answers in milliseconds


@dataclass(frozen=True)
class ToolInfo:
    full_name: str
    information_uri: str | None
    package: str | None = None  # PyPI distribution that carries the version
    binary: str | None = None  # else: a program that answers `--version`
    organization: str | None = None


SECFLOW = ToolInfo("SecFlow", None, package="secflow", organization="SecFlow")

# Keyed by SecFlow's tool name, `-` and `_` alike (see `info_for`).
TOOL_INFO: dict[str, ToolInfo] = {
    "bandit": ToolInfo("Bandit", "https://bandit.readthedocs.io/", package="bandit", organization="PyCQA"),
    "semgrep": ToolInfo("Semgrep", "https://semgrep.dev/", package="semgrep", organization="Semgrep"),
    "detect_secrets": ToolInfo(
        "detect-secrets", "https://github.com/Yelp/detect-secrets", package="detect-secrets", organization="Yelp"
    ),
    "nmap": ToolInfo("Nmap", "https://nmap.org/", binary="nmap", organization="Nmap Project"),
    # SecFlow's built-in tools: the page of the reference each one checks against.
    "portscan": ToolInfo("SecFlow TCP port scan", None, package="secflow", organization="SecFlow"),
    "http_headers": ToolInfo(
        "SecFlow HTTP security headers",
        "https://owasp.org/www-project-secure-headers/",
        package="secflow",
        organization="SecFlow",
    ),
    "tls": ToolInfo(
        "SecFlow TLS configuration",
        "https://wiki.mozilla.org/Security/Server_Side_TLS",
        package="secflow",
        organization="SecFlow",
    ),
    "sca": ToolInfo("SecFlow dependency audit (OSV)", "https://osv.dev/", package="secflow", organization="SecFlow"),
    "cve_enrich": ToolInfo(
        "SecFlow CVE enrichment (NVD, FIRST EPSS, CISA KEV)", "https://nvd.nist.gov/", package="secflow", organization="SecFlow"
    ),
    "secflow": SECFLOW,
}


def info_for(tool: str) -> ToolInfo:
    return TOOL_INFO.get(tool.strip().lower().replace("-", "_"), ToolInfo(f"SecFlow {tool}", None, package="secflow"))


@cache
def _package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@cache
def _binary_version(binary: str) -> str | None:
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=_VERSION_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None  # not runnable here: the report says nothing rather than guess
    m = _VERSION.search(proc.stdout or "")
    return m[1] if m else None


def tool_version(tool: str) -> str | None:
    info = info_for(tool)
    if info.package:
        return _package_version(info.package)
    if info.binary:
        return _binary_version(info.binary)
    return None


def is_semver(version: str) -> bool:
    return bool(_SEMVER.match(version))


__all__ = ["TOOL_INFO", "ToolInfo", "info_for", "is_semver", "tool_version"]
