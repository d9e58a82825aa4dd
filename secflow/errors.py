"""SecFlow's one error taxonomy: every failure is classified once, here.

Rule 4 (docs/architecture.md): a failure becomes one `Category`; Temporal sees
``ApplicationError(type=<category>, non_retryable=...)``; retries, the DLQ, alert severity
and the report all read that one classification. This module holds:

- `Category` and the exceptions SecFlow raises itself (each carries its category);
- `classify()`, which turns anything that went wrong (an exception from httpx, the OS,
  subprocess, sqlite, a parser, Temporal... or a line of a scanner's stderr, an HTTP
  status, an exit code) into a `Classification`;
- `parse_retry_after()` for servers that say when to come back;
- `to_application_error()`, the one way an activity hands a failure to Temporal, with
  the message and any cause chain redacted (rule 7: nothing leaks, and Temporal
  history is durable).

How `classify()` decides, most authoritative first:

1. our own exceptions and ApplicationErrors already typed with a category keep it;
2. a scope/sandbox/injection phrase anywhere in the text means `security` (rule 9:
   "scope is law" beats every other reading of the same failure);
3. an explicit signal: a non-zero ``exit_code`` (signals have fixed meanings), an
   ``http_status`` or the status of an ``HTTPStatusError``;
4. the exception's type (and for wrapper types, the most specific exception in its
   ``__cause__``/``__context__`` chain);
5. the message text, through an ordered table of patterns (most specific first);
6. what is left: unknown exception types are `internal`. See `_UNKNOWN` for why.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno as _errno
import functools
import http.client
import importlib
import json
import re
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import urllib.error
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any
from xml.parsers import expat

from temporalio.exceptions import ApplicationError

from secflow.http_statuses import is_transient_status
from secflow.redaction import redact

__all__ = [
    "NON_RETRYABLE",
    "Category",
    "Classification",
    "ExternalToolError",
    "InternalError",
    "InvalidInputError",
    "PermanentError",
    "ResourceError",
    "ScopeViolation",
    "SecFlowError",
    "TransientError",
    "UserAbort",
    "classify",
    "parse_retry_after",
    "to_application_error",
]


class Category(str, Enum):
    TRANSIENT = "transient"
    RESOURCE = "resource"
    VALIDATION = "validation"
    PERMANENT = "permanent"
    EXTERNAL_TOOL = "external_tool"
    INTERNAL = "internal"
    SECURITY = "security"
    USER_ABORT = "user_abort"


#: Categories Temporal must never retry (the retry table lists them as non-retryable types).
NON_RETRYABLE: frozenset[Category] = frozenset(
    {
        Category.VALIDATION,
        Category.PERMANENT,
        Category.INTERNAL,
        Category.SECURITY,
        Category.USER_ABORT,
    }
)


class SecFlowError(Exception):
    """Base of errors SecFlow raises itself; each subclass carries its category."""

    category: Category = Category.INTERNAL

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class TransientError(SecFlowError):
    category = Category.TRANSIENT


class ResourceError(SecFlowError):
    category = Category.RESOURCE


class InvalidInputError(SecFlowError):
    category = Category.VALIDATION


class PermanentError(SecFlowError):
    category = Category.PERMANENT


class ExternalToolError(SecFlowError):
    category = Category.EXTERNAL_TOOL

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        stdout_tail: str = "",
        stderr_tail: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.exit_code = exit_code
        self.stdout_tail = stdout_tail
        self.stderr_tail = stderr_tail


class InternalError(SecFlowError):
    category = Category.INTERNAL


class ScopeViolation(SecFlowError):
    """A target, redirect or discovered host outside `scope.allow` was about to be touched."""

    category = Category.SECURITY


class UserAbort(SecFlowError):
    category = Category.USER_ABORT


# ======================================================================================
# Classification
# ======================================================================================
@dataclass(frozen=True)
class Classification:
    """The verdict on one failure.

    `reason` names the rule that matched ("ECONNREFUSED", "HTTP 503",
    "exit 139 (SIGSEGV)") so that a report or a DLQ entry can say *why* a failure was
    (not) retried. `retry_after` is the server's (or our own) hint in seconds.
    """

    category: Category
    retryable: bool
    reason: str
    retry_after: float | None = None


def _c(category: Category, reason: str, retry_after: float | None = None) -> Classification:
    # Reasons can quote a message (sqlite's, a certificate check's) and travel to the
    # error ledger and alerts: keep them short and clean.
    return Classification(category, category not in NON_RETRYABLE, redact(reason)[:200], retry_after)


_T, _R, _V, _P, _X, _I, _S, _U = (
    Category.TRANSIENT,
    Category.RESOURCE,
    Category.VALIDATION,
    Category.PERMANENT,
    Category.EXTERNAL_TOOL,
    Category.INTERNAL,
    Category.SECURITY,
    Category.USER_ABORT,
)

# Why unknown exception types are `internal`: `transient` would retry a bug until the
# attempts run out (hiding it behind "flaky" and multiplying side effects), while
# `internal` stops at once, logs the stack and lands in the DLQ where a human sees it.
# A genuinely flaky failure that lands here is one classification rule away from being
# retried; a bug retried forever is a silent cost. Bugs until proven otherwise.
_UNKNOWN = _c(_I, "unrecognised error (treated as a bug)")


# ======================================================================================
# Retry-After
# ======================================================================================
_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    Never negative (a date in the past means "now"); None when absent or unparsable.
    """
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000" and obsolete forms: HTTP-dates are always UTC
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


_RETRY_HINT = re.compile(
    r"(?:retry[- ]after[:=]?\s*|try again in\s+|retry in\s+|wait\s+)(\d+(?:\.\d+)?)\s*"
    r"(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?)?\b",
    re.IGNORECASE,
)


def _retry_hint_from_text(text: str) -> float | None:
    m = _RETRY_HINT.search(text)
    if not m:
        return None
    amount = float(m.group(1))
    unit = (m.group(2) or "s").lower()
    if unit.startswith(("ms", "milli")):
        return amount / 1000.0
    if unit.startswith("m"):
        return amount * 60.0
    return amount


# ======================================================================================
# HTTP statuses
# ======================================================================================
# Which statuses are transient is secflow/http_statuses.py's table, shared with the
# transport's retries (secflow/http/retry.py).
_HTTP_VALIDATION = {400, 413, 422}


def _from_http_status(status: int, retry_after: float | None = None) -> Classification | None:
    reason = f"HTTP {status}"
    if 400 <= status <= 599 and is_transient_status(status):
        return _c(_T, reason, retry_after)
    if 500 <= status <= 599:
        return _c(_P, reason)
    if status in _HTTP_VALIDATION:
        return _c(_V, reason)
    if 400 <= status <= 499:
        return _c(_P, reason)
    if 300 <= status <= 399:
        return _c(_P, f"{reason} (unexpected redirect)")
    return None  # 1xx/2xx: the status is not the problem


# ======================================================================================
# Exit codes and signals
# ======================================================================================
# (category, meaning) per code; shells report signal N as 128+N, Python as -N.
_SIGNAL_EXITS: dict[int, tuple[Category, str]] = {
    9: (_R, "SIGKILL, usually the OOM killer"),
    11: (_X, "SIGSEGV"),
    6: (_X, "SIGABRT"),
    8: (_X, "SIGFPE"),
    7: (_X, "SIGBUS"),
    4: (_X, "SIGILL"),
    5: (_X, "SIGTRAP"),
    3: (_X, "SIGQUIT"),
    15: (_T, "SIGTERM, stopped by the host or a shutdown"),
    1: (_T, "SIGHUP"),
    2: (_U, "SIGINT, interrupted by an operator"),
    24: (_R, "SIGXCPU, CPU time limit"),
    25: (_R, "SIGXFSZ, file size limit"),
}
_FIXED_EXITS: dict[int, tuple[Category, str]] = {
    126: (_P, "not executable"),
    127: (_P, "command not found"),
    # GNU timeout(1) reports an expired time limit as 124.
    124: (_T, "timeout(1) expired"),
}
# curl's documented exit codes carry the failure kind; curl is the tool of choice for
# health checks and webhook deliveries in shell-based steps.
_CURL_EXITS: dict[int, tuple[Category, str]] = {
    3: (_V, "curl: malformed URL"),
    5: (_P, "curl: could not resolve proxy"),
    6: (_P, "curl: could not resolve host"),
    7: (_T, "curl: failed to connect"),
    18: (_T, "curl: partial transfer"),
    28: (_T, "curl: operation timed out"),
    35: (_T, "curl: TLS connect error"),
    47: (_P, "curl: too many redirects"),
    52: (_T, "curl: empty reply from server"),
    55: (_T, "curl: send failure"),
    56: (_T, "curl: receive failure"),
    60: (_P, "curl: TLS certificate problem"),
    67: (_P, "curl: login denied"),
}
# semgrep's exit codes (semgrep/error.py): rules it cannot use are the spec's rules
# being wrong. It reports a rules file it cannot load, malformed or absent, with 7, and
# with --json --quiet says why only on stdout (which the classifier does not see).
_SEMGREP_EXITS: dict[int, tuple[Category, str]] = {
    4: (_V, "semgrep: a rule does not parse"),
    5: (_V, "semgrep: rules YAML does not parse"),
    7: (_V, "semgrep: rules config unusable (invalid or missing)"),
    8: (_V, "semgrep: invalid language in a rule"),
    13: (_P, "semgrep: invalid API key"),
}
_TOOL_EXITS: dict[str, dict[int, tuple[Category, str]]] = {"curl": _CURL_EXITS, "semgrep": _SEMGREP_EXITS}


def _from_exit_code(code: int, text: str, tool: str | None) -> Classification:
    signo = -code if code < 0 else (code - 128 if 128 < code < 160 else None)
    if signo is not None and signo in _SIGNAL_EXITS:
        category, meaning = _SIGNAL_EXITS[signo]
        return _c(category, f"exit {code} ({meaning})")
    if code in _FIXED_EXITS:
        category, meaning = _FIXED_EXITS[code]
        # The loader reports an exhausted address space as "cannot run" (127) too.
        refined = _from_message(text, tool) if text and code in (126, 127) else None
        if refined is not None and refined.category is _R:
            return replace(refined, reason=f"exit {code}: {refined.reason}")
        return _c(category, f"exit {code} ({meaning})")
    table = _TOOL_EXITS.get((tool or "").lower())
    if table and code in table:
        category, meaning = table[code]
        return _c(category, f"exit {code} ({meaning})")
    # A generic failure code: the tool's own words say more than the number. Its
    # stderr is read in tool context, so a traceback in it is the tool's bug, not ours.
    refined = _from_message(text, tool or "subprocess") if text else None
    if refined is not None and refined.category is not _I:
        return replace(refined, reason=f"exit {code}: {refined.reason}")
    return _c(_X, f"exit {code}")


# ======================================================================================
# OS errors
# ======================================================================================
def _errno_table() -> dict[int, tuple[Category, str]]:
    table: dict[int, tuple[Category, str]] = {}

    def put(names: str, category: Category) -> None:
        for name in names.split():
            code = getattr(_errno, name, None)
            if code is not None:
                table.setdefault(code, (category, name))

    put(
        "ECONNREFUSED ECONNRESET ECONNABORTED ETIMEDOUT EHOSTUNREACH ENETUNREACH EPIPE EAGAIN "
        "EWOULDBLOCK EINTR EBUSY ETXTBSY ENOTCONN ENETDOWN ENETRESET ESHUTDOWN EHOSTDOWN "
        "EADDRINUSE EALREADY EINPROGRESS EPROTO ESTALE",
        _T,
    )
    put("ENOSPC EDQUOT EMFILE ENFILE ENOMEM ENOBUFS EFBIG EMLINK ENOLCK EIO", _R)
    put(
        "ENOENT EACCES EPERM ENOTDIR EISDIR ENOEXEC EROFS ELOOP EEXIST ENOTEMPTY EXDEV ESRCH "
        "ENODEV ENXIO EADDRNOTAVAIL EAFNOSUPPORT EPROTONOSUPPORT ENOTSUP EOPNOTSUPP",
        _P,
    )
    put("ENAMETOOLONG E2BIG EMSGSIZE", _V)
    put("EBADF EFAULT EINVAL ECHILD ENOTSOCK EDESTADDRREQ ENOPROTOOPT", _I)
    put("ECANCELED", _U)
    return table


_ERRNO = _errno_table()

_GAI_TRANSIENT = {socket.EAI_AGAIN}
_GAI_RESOURCE = {socket.EAI_MEMORY}

# OpenSSL reasons that come from configuration (wrong port/scheme, no common protocol or
# cipher, untrusted peer): the next handshake will fail the same way. Other SSL errors
# (EOF mid-handshake, resets, "bad record mac") are what a flaky network looks like.
_SSL_PERMANENT_REASONS = {
    "CERTIFICATE_VERIFY_FAILED",
    "WRONG_VERSION_NUMBER",
    "UNSUPPORTED_PROTOCOL",
    "NO_PROTOCOLS_AVAILABLE",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "NO_SHARED_CIPHER",
    "NO_CIPHERS_AVAILABLE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "TLSV1_ALERT_ACCESS_DENIED",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "CERTIFICATE_REQUIRED",
    "HTTP_REQUEST",  # spoke TLS, the server answered plain HTTP
}


def _from_ssl(exc: ssl.SSLError) -> Classification:
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = getattr(exc, "verify_message", None) or "certificate verify failed"
        return _c(_P, f"TLS certificate: {detail}")
    reason = getattr(exc, "reason", None) or ""
    if reason in _SSL_PERMANENT_REASONS:
        return _c(_P, f"TLS {reason}")
    if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError | ssl.SSLSyscallError):
        return _c(_T, f"TLS connection closed ({type(exc).__name__})")
    return _c(_T, f"TLS {reason or type(exc).__name__}")


def _from_gaierror(exc: socket.gaierror) -> Classification:
    code = exc.errno
    if code in _GAI_TRANSIENT:
        return _c(_T, "EAI_AGAIN (temporary DNS failure)")
    if code in _GAI_RESOURCE:
        return _c(_R, "EAI_MEMORY")
    if code == getattr(socket, "EAI_SYSTEM", None):
        return _c(_T, "EAI_SYSTEM")
    names = {
        socket.EAI_NONAME: "EAI_NONAME (no such host)",
        getattr(socket, "EAI_NODATA", -5): "EAI_NODATA (no address for host)",
        socket.EAI_FAIL: "EAI_FAIL (DNS refused the name)",
        socket.EAI_SERVICE: "EAI_SERVICE",
        socket.EAI_FAMILY: "EAI_FAMILY",
    }
    return _c(_P, names.get(code, f"getaddrinfo error {code}"))


def _from_oserror(exc: OSError, tool: str | None) -> Classification | None:
    code = exc.errno
    if code in _ERRNO:
        category, name = _ERRNO[code]
        if code == _errno.ENOENT:
            # subprocess reports a missing executable with its bare name as filename.
            filename = exc.filename if isinstance(exc.filename, str) else ""
            if filename and ("/" not in filename or filename.rsplit("/", 1)[-1] == tool):
                return _c(_P, f"ENOENT (missing binary: {filename})")
        return _c(category, name)
    # errno-less OSErrors: the subclass still says what happened.
    if isinstance(exc, TimeoutError):
        return _c(_T, "timeout")
    if isinstance(exc, ConnectionError):
        return _c(_T, type(exc).__name__)
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError):
        return _c(_P, type(exc).__name__)
    if isinstance(exc, BlockingIOError | InterruptedError):
        return _c(_T, type(exc).__name__)
    return None


# ======================================================================================
# Message patterns
# ======================================================================================
@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    category: Category | None  # None: a "garbage output" rule, decided by tool context
    reason: str


def _p(regex: str, category: Category | None, reason: str) -> _Pattern:
    return _Pattern(re.compile(regex, re.IGNORECASE | re.MULTILINE), category, reason)


# Scope is law: these phrases win over every other reading of the same text.
_SECURITY_STRONG = [
    _p(
        r"scope[ _-]violation|\bout[- ]of[- ]scope\b|outside (?:of )?(?:the )?(?:allowed |permitted |assessment |spec(?:'s)? )?scope"
        r"|not (?:in|within) (?:the )?(?:allowed |permitted )?scope|not allowed by scope",
        _S,
        "scope violation",
    ),
    _p(r"sandbox (?:escape|breakout|violation)|escaped? (?:from )?the sandbox|container escape", _S, "sandbox escape"),
    _p(
        r"sandbox\b.{0,40}\b(?:denied|blocked|refused|not permitted|killed)|denied by (?:the )?sandbox|seccomp",
        _S,
        "sandbox denied an action",
    ),
    _p(
        r"(?:command|sql|shell|os|template|ldap|xpath|header|crlf|prompt|code|argument) injection|injection (?:attempt|detected|blocked)",
        _S,
        "injection attempt",
    ),
    _p(r"(?:path|directory) traversal (?:attempt|detected|blocked)", _S, "path traversal attempt"),
    _p(r"unauthori[sz]ed action|action not permitted by policy|policy violation", _S, "unauthorised action"),
]

# A tool that rejects its command line says so in a few fixed shapes (argparse,
# cmdliner, getopt). Read before anything else: an option's *name* ("--timeout",
# "--rate-limit") quoted in such a message says nothing about the failure.
_USAGE = _p(
    r"option '[^'\n]+': invalid value|invalid value '[^'\n]*' for|: invalid choice: |: invalid (?:int|float) value|"
    r"unrecognized option|unknown (?:test|plugin|rule|check|detector|timing mode|scan type)s?\b|"
    r"no tests would be run|please choose only one|more than one type of|mutually exclusive|"
    r"cannot be used (?:together|with)|conflicting (?:options|arguments|flags)",
    _V,
    "command line rejected",
)
# argparse's parser.error(): a usage line, then "<prog>: error: <why>". A file argparse
# could not open is still a missing file, not a usage mistake.
_ARGPARSE_ERROR = re.compile(
    r"(?:^|: )usage: [\s\S]*^(?:[\w.-]+: )?error: (?![^\n]*(?:can't open|No such file))", re.IGNORECASE | re.MULTILINE
)

_PATTERNS: list[_Pattern] = [
    # --- operator cancelled ------------------------------------------------------------
    _p(
        r"cancel+ed by (?:the )?(?:user|operator)|abort(?:ed)? by (?:the )?(?:user|operator)|"
        r"(?:user|operator)[ -](?:abort|cancel)|terminated by (?:the )?operator|KeyboardInterrupt|interrupted by user|\bCancelledError\b",
        _U,
        "cancelled by operator",
    ),
    # --- local capacity ------------------------------------------------------------------
    _p(
        r"out of memory|OutOfMemoryError|cannot allocate memory|memory allocation (?:of \d+ bytes )?failed|"
        r"failed to allocate|\bMemoryError\b|Java heap space|oom[-_ ]?kill|OOMKilled|Killed process \d+|"
        r"std::bad_alloc|heap out of memory|memory limit (?:exceeded|reached)|\bENOMEM\b|failed to map segment from shared object",
        _R,
        "out of memory",
    ),
    _p(r"^\s*Killed\s*$|: Killed\s*$|signal: killed|\b(?:zsh|bash|sh|dash|ksh):[^\n]{0,30}\bkilled\b", _R, "killed (SIGKILL)"),
    _p(
        r"no space left on device|\bENOSPC\b|database or disk is full|disk (?:is )?full|disk quota exceeded|\bEDQUOT\b|"
        r"insufficient (?:disk|storage) space|not enough space on the disk",
        _R,
        "disk full",
    ),
    _p(r"too many open files|\bEMFILE\b|\bENFILE\b|file table overflow", _R, "too many open files"),
    _p(
        r"can't start new thread|fork: (?:retry: )?resource temporarily unavailable|cannot fork|fork failed|"
        r"pthread_create failed|unable to create (?:new )?native thread",
        _R,
        "process/thread limit",
    ),
    _p(r"disk I/O error|input/output error", _R, "I/O error"),
    # --- databases: the message says whose fault it is -------------------------------------
    _p(
        r"no such (?:table|column|function|index)|has no column named|syntax error at or near|near \"[^\"]*\": syntax error|"
        r"relation \"[^\"]+\" does not exist|column \"[^\"]+\" does not exist|(?:UNIQUE|FOREIGN KEY|NOT NULL|CHECK) constraint failed|"
        r"duplicate key value violates unique constraint|violates (?:foreign key|not-null|check) constraint",
        _I,
        "database schema/query bug",
    ),
    _p(
        r"file is not a database|database disk image is malformed|attempt to write a readonly database|unable to open database file",
        _P,
        "database file unusable",
    ),
    _p(
        r"database is locked|database table is locked|SQLITE_BUSY|could not serialize access|deadlock detected|lock wait timeout|"
        r"the database system is (?:starting up|shutting down|in recovery mode|not yet accepting connections)|"
        r"terminating connection due to administrator command|"
        r"too many (?:clients|connections)|remaining connection slots are reserved",
        _T,
        "database busy",
    ),
    _p(
        r"\.lock'?:? File exists|another [\w-]+ process (?:seems to be|is) running|could not get lock|waiting for (?:cache )?lock|"
        r"port is already allocated|address already in use|\bEADDRINUSE\b|"
        r"(?:another|an) (?:operation|process|instance|job)\b[^\n]{0,60}?\b(?:is )?(?:in progress|already running)",
        _T,
        "held by another process",
    ),
    # --- rate limits (before auth: GitHub says "403 Forbidden" for rate limits) ------------
    _p(
        r"rate[- _]?limit|ratelimited|too many requests|toomanyrequests|throttl|slow ?down|request limit exceeded|"
        r"quota exceeded|exceeded (?:your|the) (?:\w+ )?quota|retry[- ]after",
        _T,
        "rate limited",
    ),
    _p(r"temporary failure in name resolution|\bEAI_AGAIN\b|try again later|please try again|\btry again\b", _T, "try again"),
    # --- TLS and DNS: configuration, not flakiness -------------------------------------
    _p(
        r"certificate verify failed|CERTIFICATE_VERIFY_FAILED|\bx509: |SSL certificate problem|unable to get local issuer certificate|"
        r"self[- ]signed certificate|certificate has expired|PKIX path building failed|unable to find valid certification path|"
        r"hostname mismatch|certificate is not valid for|doesn't match (?:either of|any of)|unknown certificate authority|ERR_CERT_",
        _P,
        "TLS certificate",
    ),
    _p(
        r"wrong version number|WRONG_VERSION_NUMBER|unsupported protocol|no protocols available|alert protocol version|"
        r"no shared cipher|server gave HTTP response to HTTPS client|plain HTTP request was sent to HTTPS port",
        _P,
        "TLS misconfiguration",
    ),
    _p(
        r"name or service not known|nodename nor servname|no such host|could not resolve (?:host|hostname)|unknown host|"
        r"UnknownHostException|\bENOTFOUND\b|\bNXDOMAIN\b|name does not resolve|failed to resolve|host not found|"
        r"no address associated with hostname|\bEAI_NONAME\b|could not translate host name",
        _P,
        "DNS name not found",
    ),
    # --- authentication / authorisation ------------------------------------------------------
    _p(
        r"authentication failed|auth(?:entication)? failure|password authentication failed|"
        r"invalid (?:api[ _-]?key|apikey|token|access token|credentials|username or password|auth|client|grant|signature)|"
        r"bad credentials|incorrect (?:api key|password|username or password)|api key (?:not valid|invalid|is invalid|expired|missing)|"
        r"\b(?:invalid_auth|not_authed|token_revoked|token_expired|account_inactive|invalid_grant|invalid_client|missing_scope)\b|"
        r"\bunauthori[sz]ed\b|\bunauthenticated\b|not authori[sz]ed|\bforbidden\b|access denied|access is denied|permission denied|"
        r"operation not permitted|you must be logged in|login required|requires authentication|(?:token|credentials?) (?:has |have )?expired|"
        r"expired (?:token|credentials)|(?:token|credentials?)\b[^\n]{0,60}?\b(?:is|has|have|are) expired|no pg_hba\.conf entry|(?:unable to locate|no|missing) credentials|insufficient (?:scope|permissions?|privileges?)|\bEACCES\b|\bEPERM\b|requires root privileges",
        _P,
        "not authorised",
    ),
]

# HTTP statuses quoted in text: "HTTP 503", "HTTP/1.1 502", "status 429", "status code 404",
# "returned error: 403", "'statusCode': 503", "Server error '503 Service Unavailable'".
_STATUS_IN_TEXT = [
    re.compile(r"\bHTTP(?:/\d(?:\.\d)?)?[ :/]+([1-5]\d\d)\b", re.IGNORECASE),
    re.compile(
        r"(?<!exit )(?<!exit_)(?<!exited with )\b(?:status(?:[ _-]?code)?|statusCode|response code|http_status|"
        r"returned (?:error|status|code)|error code|code)[\"']?\s*[:=]?\s*[\"']?([45]\d\d)\b",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b([45]\d\d)[ -]+(?:Service Unavailable|Bad Gateway|Gateway Time-?out|Too Many Requests|Internal Server Error|"
        r"Not Found|Forbidden|Unauthori[sz]ed|Bad Request|Unprocessable (?:Entity|Content)|Request Time-?out|Conflict|Gone|"
        r"Not Implemented|Payload Too Large|Request Entity Too Large|Method Not Allowed|Precondition Failed|Too Early|"
        r"HTTP Version Not Supported|Insufficient Storage|Network Authentication Required|Not Acceptable|Length Required)\b",
        re.IGNORECASE,
    ),
    re.compile(r"(?:error|failed)[^\n]{0,20}?\(([45]\d\d)\)", re.IGNORECASE),
]

_PATTERNS_AFTER_STATUS: list[_Pattern] = [
    # --- things that clear by themselves ------------------------------------------------
    _p(
        r"service ?unavailable|unable to handle the request|temporarily unavailable|temporarily_unavailable|bad gateway|gateway time-?out|"
        r"upstream (?:connect error|request timeout)|no healthy upstream|server is (?:busy|overloaded)|\boverloaded\b|"
        r"internal server error|\bserver_error\b|\bunavailable\b",
        _T,
        "service unavailable",
    ),
    _p(
        r"connection (?:was )?(?:refused|reset|aborted|closed|lost|timed out|error)|\bECONNREFUSED\b|\bECONNRESET\b|\bECONNABORTED\b|"
        r"broken pipe|\bEPIPE\b|reset by peer|refused to connect|connection to [^\n]{0,80}? was refused|closed the connection unexpectedly|could ?n[o']t connect|failed to connect|unable to connect|cannot connect|"
        r"network is unreachable|no route to host|host is unreachable|\bENETUNREACH\b|\bEHOSTUNREACH\b|server disconnected|"
        r"remote end (?:closed connection|hung up)|EOF occurred in violation of protocol|unexpected eof while reading|"
        r"empty reply from server|recv failure|send failure|transfer closed with|socket hang up|network error|"
        r"dial tcp [^\n]*: (?:connect|i/o)|: EOF\s*$|\bEOF$|the remote end hung up|early EOF|RPC failed|"
        r"resource temporarily unavailable|\bEAGAIN\b|\bEWOULDBLOCK\b|leader (?:not available|election)|\bbusy\b",
        _T,
        "connection failure",
    ),
    _p(
        r"timed? ?out|timeout|time-out|deadline exceeded|\bETIMEDOUT\b|i/o timeout|took too long",
        _T,
        "timeout",
    ),
    # --- environment or configuration wrong -----------------------------------------
    _p(
        r"command not found|executable file not found|not recognized as an internal or external command|"
        r"cannot execute binary file|exec format error|is not executable|cannot execute|no such file or directory|\bENOENT\b|"
        r"can't open file|could not (?:read|open|load) (?:the )?(?:config(?:uration)? |rules? |input |baseline )?file",
        _P,
        "missing file or binary",
    ),
    _p(r"read-only file system|\bEROFS\b", _P, "read-only file system"),
    _p(
        r"(?:schema|database|data|protocol) version [^\n]{0,60}newer than|please upgrade|upgrade (?:required|secflow)",
        _P,
        "version mismatch (upgrade needed)",
    ),
    _p(
        r"could not find a version that satisfies|no matching distribution|not a git repository|terminal prompts disabled|"
        r"could not read (?:Username|Password)|repository (?:'[^']*' )?not found|pull access denied|manifest unknown|"
        r"no such (?:container|image|object|bucket|key|user|repository|file)|\bnot found\b|does not exist|"
        r"\b(?:channel_not_found|user_not_found|not_in_channel|is_archived)\b|unsupported|not supported|not implemented",
        _P,
        "not found / unsupported",
    ),
    # --- the input is wrong -------------------------------------------------------------
    _p(
        r"invalid (?:input|argument|value|parameter|target|cidr|ip|ip address|hostname|host|url|uri|port|port range|request|"
        r"spec|option|syntax|format|netmask|range|date|email|payload|field|cron|rule|path|config|configuration|query|schema)|is not a valid|"
        r"(?:must|should) be (?:a|an|one of|between|greater|less|at least|at most|positive|non-empty|provided|set|specified)|\bis required\b|"
        r"(?:unsupported|invalid|unknown) language|supported language tags are|"
        r"required (?:field|parameter|property|argument|flag)|missing required|input should be|field required|unrecognized arguments?|unknown (?:option|flag|argument|field|shorthand flag)|error: argument [^\n]+: |"
        r"validation (?:error|failed)|failed validation|schema validation|does not match (?:the )?(?:schema|pattern|regex)|"
        r"bad request|malformed request|unprocessable|\b(?:invalid_payload|invalid_blocks|invalid_arguments|msg_too_long|invalid_arg_name)\b|"
        r"payload too large|request entity too large|too long|exceeds (?:the )?max(?:imum)?|illegal netmask|no targets were specified|"
        r"event object is invalid|you must specify|cannot be empty|cannot be blank|ValueError|extra inputs are not permitted",
        _V,
        "invalid input",
    ),
    # --- a tool crashed ----------------------------------------------------------------------
    _p(
        r"segmentation fault|segmentation violation|\bSIGSEGV\b|core dumped|\bAborted\b|\bSIGABRT\b|bus error|\bSIGBUS\b|"
        r"illegal instruction|\bSIGILL\b|floating point exception|\bSIGFPE\b|stack smashing detected|double free|"
        r"free\(\): invalid|malloc\(\): |corrupted (?:size|double-linked)|\bpanic: |goroutine \d+ \[|fatal error: |"
        r"Exception in thread \"|\bat [\w$.]+\([\w$]+\.java:\d+\)|StackOverflowError|panicked at|"
        r"unhandled exception|uncaught exception|has crashed|\bcrashed\b",
        _X,
        "tool crashed",
    ),
    # --- a bug (ours, or the tool's when a tool is involved) -------------------------
    _p(
        r"\b(?:KeyError|TypeError|AttributeError|IndexError|NameError|UnboundLocalError|AssertionError|ZeroDivisionError|"
        r"NotImplementedError|RecursionError|NullPointerException|ClassCastException|IllegalStateException|"
        r"ArrayIndexOutOfBoundsException|IndexOutOfBoundsException|ConcurrentModificationException|ReferenceError)\b|"
        r"nil pointer dereference|index out of range|is not a function|Cannot read propert(?:y|ies) of (?:undefined|null)|"
        r"object has no attribute|unhashable type|not subscriptable|takes \d+ positional arguments? but|"
        r"missing \d+ required positional argument|assertion failed|Traceback \(most recent call last\)",
        _I,
        "bug",
    ),
    # --- unusable output -----------------------------------------------------------------
    _p(
        r"unexpected EOF|unexpected end of (?:file|input|JSON input|data|stream)|\btruncated\b|\bmalformed\b|parse error|"
        r"parsing error|failed to parse|could not parse|unable to parse|cannot parse|JSONDecodeError|Expecting value|"
        r"Expecting property name|Extra data: line|not well-formed|no element found|XML syntax error|unterminated string|"
        r"premature end of|junk after document element|cannot unmarshal|invalid character '.' looking for|invalid JSON|"
        r"invalid XML|Unexpected token|ParseError|ExpatError|codec can't decode|invalid (?:start|continuation) byte|"
        r"mapping values are not allowed|did not find expected|could not find expected|found character that cannot start",
        None,
        "unusable output",
    ),
    # --- weak security signals: only when nothing more specific matched ------------------
    _p(r"\bsandbox\b", _S, "sandbox"),
    _p(r"\binjection\b", _S, "injection"),
]


def _from_pattern(pattern: _Pattern, tool: str | None) -> Classification:
    if pattern.category is None:  # garbage: a tool's fault when a tool produced it
        return _c(_X if tool else _V, pattern.reason)
    if pattern.category is _I and tool:
        return _c(_X, f"{pattern.reason} in {tool}")
    return _c(pattern.category, pattern.reason)


def _security_in(text: str) -> Classification | None:
    for pattern in _SECURITY_STRONG:
        if pattern.regex.search(text):
            return _c(_S, pattern.reason)
    return None


def _status_in_text(text: str) -> int | None:
    for regex in _STATUS_IN_TEXT:
        m = regex.search(text)
        if m:
            status = int(m.group(1))
            if 400 <= status <= 599:
                return status
    return None


_PY_TRACEBACK = "Traceback (most recent call last)"
_EXC_LINE = re.compile(
    r"^([A-Za-z_][\w.]*?(?:Error|Exception|Exit|Interrupt|Timeout|Refused|Failure|Fault|Expired)):?(?: (.*))?$", re.MULTILINE
)


_MAX_SCAN = 16000  # head + tail of long stderr: the verdict is at the start or the end


def _from_message(text: str, tool: str | None = None) -> Classification | None:
    """The table-driven reading of a message; None when nothing matched."""
    if not text:
        return None
    if len(text) > _MAX_SCAN:
        text = text[:4000] + "\n" + text[-(_MAX_SCAN - 4000) :]
    found = _security_in(text)
    if found:
        return found
    # A Python traceback: the last exception line is the failure, the rest is context.
    if _PY_TRACEBACK in text:
        lines = _EXC_LINE.findall(text)
        if lines:
            name, message = lines[-1]
            verdict = _from_type_name(name.rsplit(".", 1)[-1], message or "", tool)
            if verdict is not None:
                if verdict.category is _I and tool:
                    return _c(_X, f"traceback ({name}) in {tool}")
                return verdict
    verdict = _scan(text, tool)
    if verdict is not None and verdict.category in (_T, _R):
        hint = _retry_hint_from_text(text)
        if hint is not None:
            verdict = replace(verdict, retry_after=hint)
    return verdict


def _scan(text: str, tool: str | None) -> Classification | None:
    if _USAGE.regex.search(text) or _ARGPARSE_ERROR.search(text):
        return _c(_V, _USAGE.reason)
    for pattern in _PATTERNS:
        if pattern.regex.search(text):
            return _from_pattern(pattern, tool)
    status = _status_in_text(text)
    if status is not None:
        return _from_http_status(status)
    for pattern in _PATTERNS_AFTER_STATUS:
        if pattern.regex.search(text):
            return _from_pattern(pattern, tool)
    return None


# ======================================================================================
# Exception type names (ApplicationError.type from Temporal's converter, traceback text,
# exceptions of libraries we do not import)
# ======================================================================================
_TYPE_NAMES: dict[str, Category] = {}
for _names, _cat in (
    (
        "ConnectionError ConnectionRefusedError ConnectionResetError ConnectionAbortedError BrokenPipeError "
        "TimeoutError TimeoutExpired ConnectError ConnectTimeout ReadTimeout WriteTimeout PoolTimeout ReadError "
        "WriteError RemoteProtocolError NetworkError RemoteDisconnected IncompleteRead IncompleteReadError "
        "ProxyError SocketTimeoutException ConnectException SocketException SMTPServerDisconnected "
        "SMTPConnectError ServerDisconnectedError ClientConnectorError BlockingIOError InterruptedError",
        _T,
    ),
    ("MemoryError OutOfMemoryError", _R),
    (
        "FileNotFoundError PermissionError IsADirectoryError NotADirectoryError FileExistsError "
        "UnknownHostException SSLCertVerificationError SMTPAuthenticationError TooManyRedirects "
        "ModuleNotFoundError ImportError AccessDeniedException NoSuchFileException",
        _P,
    ),
    (
        "ValueError ValidationError YAMLError ScannerError ParserError InvalidURL UnsupportedProtocol "
        "IllegalArgumentException UnicodeEncodeError",
        _V,
    ),
    (
        "KeyError TypeError AttributeError AssertionError IndexError NameError ZeroDivisionError "
        "NotImplementedError UnboundLocalError RecursionError LookupError StopIteration "
        "IntegrityError ProgrammingError InterfaceError LocalProtocolError StreamConsumed ResponseNotRead "
        "RequestNotRead StreamClosed InvalidStateError NullPointerException ClassCastException "
        "IllegalStateException ArrayIndexOutOfBoundsException",
        _I,
    ),
    ("CancelledError KeyboardInterrupt", _U),
    ("DecodingError", _X),
):
    for _n in _names.split():
        _TYPE_NAMES[_n] = _cat

# Names whose category depends on the message (errno, SQL message, status in text).
_REFINE_BY_MESSAGE = {
    "OSError",
    "IOError",
    "HTTPStatusError",
    "HTTPError",
    "CalledProcessError",
    "OperationalError",
    "DatabaseError",
    "SSLError",
    "gaierror",
    "RuntimeError",
    "Exception",
    "URLError",
}
# Names of parse errors: external_tool with a tool, validation without.
_PARSE_ERROR_NAMES = {"JSONDecodeError", "ParseError", "ExpatError", "UnicodeDecodeError", "XMLSyntaxError", "TOMLDecodeError"}


def _from_type_name(name: str, message: str, tool: str | None) -> Classification | None:
    """Classify by an exception's class *name* plus its message."""
    found = _security_in(message)
    if found:
        return found
    if name in _PARSE_ERROR_NAMES:
        return _c(_X if tool else _V, name)
    if name in _REFINE_BY_MESSAGE:
        errno_match = re.match(r"\[Errno (-?\d+)\]", message)
        if errno_match:
            code = int(errno_match.group(1))
            if code in _ERRNO:
                category, errname = _ERRNO[code]
                return _c(category, errname)
        return _from_message(message, tool)
    if name in _TYPE_NAMES:
        category = _TYPE_NAMES[name]
        if name == "ValueError":
            # ValueError is every library's "bad value": a more telling message wins.
            refined = _from_message(message, tool)
            if refined is not None and refined.category is not _V:
                return refined
        if category in (_T, _P):
            # "ConnectError: [Errno -2] Name or service not known" is DNS, not a flake.
            refined = _from_message(message, tool)
            if refined is not None and refined.category in (_P, _S) and category is _T:
                return replace(refined, reason=f"{name}: {refined.reason}")
        return _c(category, name)
    # Heuristics on unfamiliar names (other libraries' exception classes).
    lowered = name.lower()
    for fragments, category in (
        (("timeout", "timedout"), _T),
        (("ratelimit", "throttl", "toomanyrequests"), _T),
        (("connection", "connect", "unavailable", "network", "socket"), _T),
        (("outofmemory", "memory"), _R),
        (("notfound", "nosuch"), _P),
        (("auth", "permission", "forbidden", "accessdenied", "credential"), _P),
        (("validation", "invalid", "schema"), _V),
        (("parse", "decode", "syntax"), _X if tool else _V),
        (("cancel", "abort"), _U),
        (("scope", "security", "sandbox"), _S),
    ):
        if any(f in lowered for f in fragments):
            return _c(category, name)
    return _from_message(message, tool)


# ======================================================================================
# Exceptions
# ======================================================================================
@functools.cache
def _lib(name: str) -> Any:  # a module or None; Any: callers read its attributes by name
    """Import a library on first use (httpx, pydantic, yaml, parts of temporalio).

    All are SecFlow dependencies; importing them lazily keeps `secflow.errors` cheap for
    workflow code, which imports it (passed through the sandbox) mostly for `Category`.
    """
    try:
        return importlib.import_module(name)
    except Exception:  # pragma: no cover
        return None


_CATEGORY_VALUES = {c.value: c for c in Category}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """Exceptions behind `exc`: causes, implicit contexts and exceptions wrapped in args."""
    seen = {id(exc)}
    todo = [exc]
    while todo:
        current = todo.pop(0)
        nxt: list[BaseException] = []
        if current.__cause__ is not None:
            nxt.append(current.__cause__)
        elif current.__context__ is not None and not current.__suppress_context__:
            nxt.append(current.__context__)
        nxt.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
        texc = _lib("temporalio.exceptions")
        if texc is not None and isinstance(current, texc.FailureError) and getattr(current, "cause", None) is not None:
            nxt.append(current.cause)
        for item in nxt:
            if id(item) not in seen and len(seen) < 32:
                seen.add(id(item))
                todo.append(item)
                yield item


def _text_of(value: object, limit: int = 4000) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value)
    return text[-limit:]


_BODY_RATE_LIMIT = re.compile(r"rate[- _]?limit|too many requests|throttl|ratelimited", re.IGNORECASE)


def _status_with_body(status: int, body: str, retry_after: float | None) -> Classification | None:
    """An HTTP status read together with what the server said alongside it.

    Two real-world exceptions to "the status decides": GitHub (and others) signal rate
    limits with 403 (or 400) plus headers or a message, and some APIs answer a bad API
    key with 400/404 instead of 401 ("API key not valid", NVD's 404).
    """
    if status in (400, 403) and (retry_after is not None or _BODY_RATE_LIMIT.search(body) is not None):
        return _c(_T, f"HTTP {status} (rate limited)", retry_after)
    verdict = _from_http_status(status, retry_after)
    if verdict is not None and status in (400, 404) and body:
        refined = _from_message(body)
        if refined is not None and refined.reason == "not authorised":
            return replace(refined, reason=f"HTTP {status}: {refined.reason}")
    return verdict


def _from_http_status_error(exc: Any) -> Classification:  # an httpx.HTTPStatusError (httpx is imported lazily)
    response = exc.response
    status = response.status_code
    headers = response.headers
    retry_after = parse_retry_after(headers.get("retry-after"))
    try:
        body = response.text[:4000]
    except Exception:  # a streamed response that was never read
        body = ""
    exhausted = headers.get("x-ratelimit-remaining") == "0" or headers.get("ratelimit-remaining") == "0"
    if retry_after is None and (exhausted or status == 429):
        retry_after = _ratelimit_reset(headers)
    if exhausted and 400 <= status < 500:
        return _c(_T, f"HTTP {status} (rate limited)", retry_after)
    if status == 403 and _is_nvd_api(exc):
        # NVD answers its rolling rate limit with a bare 403 (and a bad API key with 404):
        # https://nvd.nist.gov/developers/start-here
        return _c(_T, "HTTP 403 (NVD rate limit)", retry_after)
    verdict = _status_with_body(status, body, retry_after)
    if verdict is None:
        return _from_message(body) or _c(_P, f"HTTP {status}")
    return verdict


def _is_nvd_api(exc: Any) -> bool:  # an httpx.HTTPStatusError
    try:
        path = exc.request.url.path
    except Exception:  # no request attached
        return False
    return bool(re.match(r"/rest/json/cve(?:s|history)/", path))


def _ratelimit_reset(headers: Any) -> float | None:  # httpx.Headers (httpx is imported lazily)
    value = headers.get("x-ratelimit-reset") or headers.get("ratelimit-reset")
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if number > 1_000_000_000:  # an epoch timestamp (GitHub), not a delta
        return max(0.0, number - datetime.now(UTC).timestamp())
    return max(0.0, number)


_HTTP_GARBAGE = re.compile(r"\b(?:illegal|invalid|malformed|unexpected|bad|unsupported)\b", re.IGNORECASE)


def _from_httpx(exc: BaseException, tool: str | None) -> Classification | None:
    httpx = _lib("httpx")
    if httpx is None:
        return None
    if isinstance(exc, httpx.HTTPStatusError):
        return _from_http_status_error(exc)
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return _c(_V, type(exc).__name__)
    # A redirect loop is the endpoint's misconfiguration: the next attempt walks the same
    # loop. external_tool would imply "limited retry", which cannot help here.
    if isinstance(exc, httpx.TooManyRedirects):
        return _c(_P, "TooManyRedirects (redirect loop)")
    if isinstance(exc, httpx.StreamError | httpx.CookieConflict | httpx.LocalProtocolError):
        return _c(_I, type(exc).__name__)
    if isinstance(exc, httpx.DecodingError):
        return _c(_X, "DecodingError (undecodable response body)")
    if isinstance(exc, httpx.TimeoutException):
        return _c(_T, type(exc).__name__)
    if isinstance(exc, httpx.RemoteProtocolError) and _HTTP_GARBAGE.search(str(exc)):
        # The peer answered, but not in HTTP (h11 could not parse it): unusable output,
        # not a connection cut short ("Server disconnected", "peer closed connection").
        return _c(_X if tool else _V, "RemoteProtocolError (malformed HTTP from the server)")
    if isinstance(exc, httpx.TransportError):
        # The most specific cause decides: DNS NXDOMAIN and certificate failures arrive
        # as ConnectError too, and they are not going to clear by themselves.
        for cause in _chain(exc):
            if isinstance(cause, OSError):
                verdict = _from_exception(cause, tool)
                if verdict is not None and verdict.category is not _T:
                    return replace(verdict, reason=f"{type(exc).__name__}: {verdict.reason}")
        refined = _from_message(str(exc), tool)
        if refined is not None and refined.category in (_P, _R):
            return replace(refined, reason=f"{type(exc).__name__}: {refined.reason}")
        return _c(_T, type(exc).__name__)
    if isinstance(exc, httpx.HTTPError):
        return _c(_T, type(exc).__name__)
    return None


def _from_sqlite(exc: sqlite3.Error) -> Classification:
    text = str(exc)
    low = text.lower()
    if isinstance(exc, sqlite3.OperationalError):
        if "locked" in low or "busy" in low:
            return _c(_T, "sqlite: database is locked")
        if "database or disk is full" in low or "disk i/o error" in low:
            return _c(_R, f"sqlite: {text}")
        if (
            "no such table" in low
            or "no such column" in low
            or "syntax error" in low
            or "no such function" in low
            or "has no column named" in low
        ):
            return _c(_I, f"sqlite: {text}")
        if "readonly database" in low or "unable to open database file" in low:
            return _c(_P, f"sqlite: {text}")
        if "interrupted" in low:
            return _c(_T, "sqlite: interrupted")
        return _from_message(text) or _c(_I, f"sqlite: {text}")
    if isinstance(exc, sqlite3.IntegrityError):
        return _c(_I, f"sqlite integrity: {text}")
    if isinstance(exc, sqlite3.DataError):
        return _c(_V, f"sqlite data: {text}")
    if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError | sqlite3.NotSupportedError):
        return _c(_I, f"sqlite: {type(exc).__name__}")
    if "file is not a database" in low or "malformed" in low:
        return _c(_P, f"sqlite: {text}")
    return _from_message(text) or _c(_I, f"sqlite: {text}")


def _from_temporal(exc: BaseException, tool: str | None) -> Classification | None:
    texc = _lib("temporalio.exceptions")
    tclient = _lib("temporalio.client")
    tservice = _lib("temporalio.service")
    if texc is not None:
        if isinstance(exc, texc.ApplicationError):
            category = _CATEGORY_VALUES.get(exc.type or "")
            retry_after = exc.next_retry_delay.total_seconds() if exc.next_retry_delay else None
            if category is not None:
                return _c(category, f"ApplicationError({category.value})", retry_after)
            if exc.cause is not None or exc.__cause__ is not None:
                inner = _first_specific_cause(exc, tool)
                if inner is not None:
                    return inner
            if exc.type:
                verdict = _from_type_name(exc.type, exc.message, tool)
                if verdict is not None:
                    return verdict
            verdict = _from_message(exc.message, tool)
            if verdict is not None:
                return verdict
            if exc.non_retryable:
                return _c(_P, "non-retryable ApplicationError")
            return _UNKNOWN
        if isinstance(exc, texc.TimeoutError):
            return _c(_T, f"Temporal timeout ({getattr(exc.type, 'name', exc.type)})")
        if isinstance(exc, texc.CancelledError | texc.TerminatedError):
            return _c(_U, type(exc).__name__)
        if isinstance(exc, texc.WorkflowAlreadyStartedError):
            return _c(_P, "WorkflowAlreadyStartedError")
        if isinstance(exc, texc.ServerError):
            return _c(_P if exc.non_retryable else _T, "ServerError")
        if isinstance(exc, texc.FailureError):  # ActivityError, ChildWorkflowError, ...
            inner = _first_specific_cause(exc, tool)
            return inner or _from_message(exc.message, tool) or _UNKNOWN
    if tclient is not None and isinstance(exc, getattr(tclient, "WorkflowFailureError", ())):
        inner = _first_specific_cause(exc, tool)
        return inner or _UNKNOWN
    if tservice is not None and isinstance(exc, tservice.RPCError):
        return _from_rpc_status(exc)
    return None


def _from_rpc_status(exc: Any) -> Classification:  # a temporalio.service.RPCError (imported lazily)
    code = _lib("temporalio.service").RPCStatusCode
    status = exc.status
    table = {
        code.UNAVAILABLE: _T,
        code.DEADLINE_EXCEEDED: _T,
        code.RESOURCE_EXHAUSTED: _T,
        code.ABORTED: _T,
        code.INTERNAL: _T,
        code.UNKNOWN: _T,
        code.NOT_FOUND: _P,
        code.PERMISSION_DENIED: _P,
        code.UNAUTHENTICATED: _P,
        code.UNIMPLEMENTED: _P,
        code.FAILED_PRECONDITION: _P,
        code.ALREADY_EXISTS: _P,
        code.DATA_LOSS: _P,
        code.INVALID_ARGUMENT: _V,
        code.OUT_OF_RANGE: _V,
        code.CANCELLED: _U,
    }
    return _c(table.get(status, _I), f"RPC {getattr(status, 'name', status)}")


def _first_specific_cause(exc: BaseException, tool: str | None) -> Classification | None:
    for cause in _chain(exc):
        verdict = _classify_exception(cause, None, None, tool)
        if verdict is not _UNKNOWN:
            return verdict
    return None


_INTERNAL_TYPES = (
    KeyError,
    TypeError,
    AttributeError,
    AssertionError,
    IndexError,
    NameError,  # includes UnboundLocalError
    ZeroDivisionError,
    NotImplementedError,
    RecursionError,
    LookupError,
    StopIteration,
    StopAsyncIteration,
    asyncio.InvalidStateError,
    ArithmeticError,
)


def _from_exception(exc: BaseException, tool: str | None) -> Classification | None:
    """Classification from the exception's type alone; None for types we do not know."""
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
        return _c(_U, type(exc).__name__)
    if isinstance(exc, MemoryError):
        return _c(_R, "MemoryError")
    if isinstance(exc, RecursionError):
        return _c(_I, "RecursionError")
    if isinstance(exc, subprocess.TimeoutExpired):
        return _c(_T, "TimeoutExpired (tool hung)")
    if isinstance(exc, subprocess.CalledProcessError):
        text = _text_of(exc.stderr) + "\n" + _text_of(exc.output)
        if exc.returncode == 0:
            return _from_message(text.strip(), tool) or _UNKNOWN
        return _from_exit_code(exc.returncode, text.strip(), tool)
    verdict = _from_httpx(exc, tool)
    if verdict is not None:
        return verdict
    if isinstance(exc, ssl.SSLError):
        return _from_ssl(exc)
    if isinstance(exc, socket.gaierror):
        return _from_gaierror(exc)
    if isinstance(exc, socket.herror):
        return _c(_P, "herror (reverse lookup failed)")
    if isinstance(exc, http.client.IncompleteRead) and isinstance(exc.__cause__ or exc.__context__, ValueError):
        # http.client reads a chunk size it cannot parse as IncompleteRead from ValueError.
        return _c(_X if tool else _V, "IncompleteRead (malformed chunked body)")
    if isinstance(exc, asyncio.IncompleteReadError):
        return _c(_T, "IncompleteReadError (connection closed mid-read)")
    smtp = _from_smtp(exc)  # before OSError: smtplib's exceptions subclass it
    if smtp is not None:
        return smtp
    if isinstance(exc, OSError):
        verdict = _from_oserror(exc, tool)
        if verdict is not None:
            return verdict
        return _from_message(str(exc), tool)
    if isinstance(exc, json.JSONDecodeError | ET.ParseError | expat.ExpatError | UnicodeDecodeError):
        return _c(_X if tool else _V, type(exc).__name__)
    yaml = _lib("yaml")
    if yaml is not None and isinstance(exc, yaml.YAMLError):
        return _c(_X if tool else _V, type(exc).__name__)
    pydantic = _lib("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        return _c(_V, "ValidationError")
    if isinstance(exc, sqlite3.Error):
        return _from_sqlite(exc)
    if isinstance(exc, EOFError):
        return _c(_T, "EOFError (stream closed)")
    if isinstance(exc, _INTERNAL_TYPES):
        return _c(_I, type(exc).__name__)
    if isinstance(exc, ValueError):
        return _c(_V, type(exc).__name__)
    if isinstance(exc, ImportError):
        return _c(_P, f"{type(exc).__name__} (missing dependency)")
    if isinstance(exc, SystemExit):
        code = exc.code
        if isinstance(code, int) and code != 0:
            return _from_exit_code(code, "", tool)
        return _UNKNOWN
    return None


def _from_smtp(exc: BaseException) -> Classification | None:
    if not isinstance(exc, smtplib.SMTPException):
        return None
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return _c(_P, "SMTP authentication failed")
    if isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError):
        return _c(_T, type(exc).__name__)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return _c(_V, "SMTP recipients refused")
    code = getattr(exc, "smtp_code", None)
    if isinstance(code, int):
        return _c(_T if 400 <= code < 500 else _P, f"SMTP {code}")
    return _c(_T, type(exc).__name__)


_SEVERITY_ORDER = [_S, _I, _U, _P, _V, _R, _X, _T]  # for exception groups: the worst member wins


def _classify_exception(exc: BaseException, http_status: int | None, exit_code: int | None, tool: str | None) -> Classification:
    if isinstance(exc, SecFlowError):
        return _c(exc.category, type(exc).__name__, exc.retry_after)
    if isinstance(exc, BaseExceptionGroup):
        verdicts = [_classify_exception(e, http_status, exit_code, tool) for e in exc.exceptions]
        if not verdicts:
            return _UNKNOWN
        return min(verdicts, key=lambda v: _SEVERITY_ORDER.index(v.category))

    message = _exception_text(exc)
    temporal = _from_temporal(exc, tool)
    if temporal is not None:
        return temporal
    found = _security_in(message)
    if found:
        return found

    if isinstance(exc, urllib.error.HTTPError):
        retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
        verdict = _from_http_status(exc.code, retry_after)
        if verdict is not None:
            return verdict
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return _classify_exception(exc.reason, http_status, exit_code, tool)

    if exit_code not in (None, 0):
        if isinstance(exc, subprocess.CalledProcessError):  # its str() is the command line
            message = (_text_of(exc.stderr) + "\n" + _text_of(exc.output)).strip()
        return _from_exit_code(exit_code, message, tool)
    if http_status is not None and http_status >= 300:
        verdict = _from_http_status(http_status)
        if verdict is not None:
            return verdict

    verdict = _from_exception(exc, tool)
    if verdict is not None:
        return verdict
    # A type we do not know (RuntimeError, Exception, a library's own class): the most
    # specific cause decides, then the message, then the class name.
    inner = _first_specific_cause(exc, tool)
    if inner is not None:
        return inner
    verdict = _from_message(message, tool)
    if verdict is not None:
        return verdict
    if type(exc).__name__ not in ("RuntimeError", "Exception"):
        verdict = _from_type_name(type(exc).__name__, "", tool)
        if verdict is not None:
            return verdict
    return _UNKNOWN


def _exception_text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not break classification
        return type(exc).__name__


def classify(
    error: BaseException | str,
    *,
    http_status: int | None = None,
    exit_code: int | None = None,
    tool: str | None = None,
) -> Classification:
    """Classify one failure into the taxonomy.

    `error` is an exception (anything raised, including Temporal's wrappers) or a message
    (a tool's stderr, an API's error body). `http_status` and `exit_code` are signals the
    caller has besides the error; `tool` says the output came from that tool, which turns
    "unparsable output" and tracebacks into the tool's failure (`external_tool`) rather
    than bad input or our own bug.
    """
    if isinstance(error, BaseException):
        return _classify_exception(error, http_status, exit_code, tool)
    text = str(error)
    found = _security_in(text)
    if found:
        return found
    if exit_code not in (None, 0):
        return _from_exit_code(exit_code, text, tool)
    if http_status is not None and http_status >= 300:
        verdict = _status_with_body(http_status, text, _retry_hint_from_text(text))
        if verdict is not None:
            return verdict
    verdict = _from_message(text, tool)
    if verdict is not None:
        return verdict
    if tool:
        # A tool failed in words we do not recognise: its failure, limited retry.
        return _c(_X, f"unrecognised {tool} failure")
    return _UNKNOWN


# ======================================================================================
# To Temporal
# ======================================================================================
_MAX_MESSAGE = 4000  # small payloads (rule 3): a failure message is a summary, not a log
_MAX_CAUSE_DEPTH = 8


def _redacted_message(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        text = _exception_text(error)
        raw = f"{type(error).__name__}: {text}" if text else type(error).__name__
    else:
        raw = str(error)
    message = redact(raw)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 40] + f" ... [{len(message) - _MAX_MESSAGE + 40} chars cut]"
    return message


def _sanitised(cause: BaseException | None, depth: int = 0) -> BaseException | None:
    """A stand-in for `cause` that is safe to serialise: same type name, redacted text."""
    if cause is None or depth >= _MAX_CAUSE_DEPTH:
        return None
    if isinstance(cause, _RedactedApplicationError):
        return cause
    stand_in = _RedactedApplicationError(_redacted_message(cause), type=type(cause).__name__)
    stand_in.__traceback__ = cause.__traceback__  # code locations only, no values
    inner = cause.__cause__
    if inner is None and not cause.__suppress_context__:
        inner = cause.__context__
    stand_in.__cause__ = _sanitised(inner, depth + 1)
    stand_in.__suppress_context__ = True
    return stand_in


_RAW_CAUSE = BaseException.__dict__["__cause__"]


class _RedactedApplicationError(ApplicationError):
    """An ApplicationError whose cause chain is redacted whenever it is read.

    Temporal serialises ``__cause__`` into history (message and all). ``raise
    to_application_error(err) from err`` is an easy mistake to make, and rule 7 says
    nothing leaks, so reading ``__cause__`` here yields a redacted stand-in of the chain
    (same type names, redacted messages) instead of the raw exceptions.
    """

    @property
    def __cause__(self) -> BaseException | None:
        raw = _RAW_CAUSE.__get__(self)
        cached = self.__dict__.get("_sanitised_cause")
        if cached is not None and cached[0] is raw:
            return cached[1]
        clean = _sanitised(raw)
        self.__dict__["_sanitised_cause"] = (raw, clean)
        return clean

    @__cause__.setter
    def __cause__(self, value: BaseException | None) -> None:
        _RAW_CAUSE.__set__(self, value)


def to_application_error(
    error: BaseException | str,
    classification: Classification | None = None,
    *,
    next_retry_delay: timedelta | None = None,
    details: Sequence[object] = (),
) -> ApplicationError:
    """The `ApplicationError` an activity raises for `error`: typed, redacted, retry-aware.

    ``type`` is the category value, which is what `RetryPolicy.non_retryable_error_types`
    and the workflow read; ``non_retryable`` repeats the decision so that it holds even
    under a policy that forgot a category. The message is redacted: Temporal history is
    durable and visible in the Web UI. `details` go to history as given: keep them small
    and free of secrets.

    Prefer ``raise to_application_error(err) from None``: the original exception adds
    nothing the message does not say. If it is raised ``from err`` anyway (or inside an
    ``except`` block), the chain Temporal serialises is a redacted stand-in, never the
    raw exception text.
    """
    verdict = classification or classify(error)
    app = _RedactedApplicationError(
        _redacted_message(error),
        *details,
        type=verdict.category.value,
        non_retryable=not verdict.retryable,
        next_retry_delay=next_retry_delay,
    )
    app.__suppress_context__ = True
    return app
