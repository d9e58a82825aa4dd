"""Security-header check of one URL: missing or weak headers, version disclosure, weak cookies.

Plain async Python: no Temporal here. Redirects are followed by hand so that scope is
checked before every hop: an out-of-scope redirect raises `ScopeViolation` before any
connection to it is made. With `ScopedTransport` every connection also goes to an address
checked at connect time (docs/scope.md): DNS answers and redirects to denied or
non-public addresses are refused, and a name is never resolved twice. Transport errors (timeouts, resets, garbage on the wire) and
5xx/429 answers propagate as httpx exceptions for the caller to classify.

Evidence carries header values, but never cookie values: only cookie names and attributes.
URLs and evidence go through `secflow.redaction.redact`, so credentials in a URL or a token
in a CSP report-uri do not end up in a finding either.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from pydantic import BaseModel

from secflow.errors import ScopeViolation
from secflow.findings import Confidence, Finding, Severity
from secflow.redaction import REDACTED, redact
from secflow.scope import Scope

TOOL = "http-headers"  # its canonical name (secflow/tools.py); fingerprints keep the first spelling

HSTS_MIN_MAX_AGE = 15_552_000  # 180 days, the usual floor (and the HSTS preload list's minimum is higher)
_EVIDENCE_MAX = 300

# A version number: "2.4.41", "7.2.1", "10.0", or a product/version token like "nginx/1".
_VERSION = re.compile(r"\d+(?:\.\d+)+|/\s*v?\d")
_DISCLOSING_HEADERS = ("Server", "X-Powered-By", "X-AspNet-Version", "X-AspNetMvc-Version")


class HeaderReport(BaseModel):
    """What `check_headers` saw: the URL asked for, where the redirects led, and findings."""

    url: str
    final_url: str
    status: int
    findings: list[Finding]


async def check_headers(
    url: str,
    *,
    client: httpx.AsyncClient,
    permits_url: Callable[[str], bool],
    max_redirects: int = 5,
    auth_headers: Mapping[str, str] | None = None,
) -> HeaderReport:
    """GET `url`, follow redirects inside scope, and assess the final response's headers.

    `client` must not follow redirects itself (`follow_redirects=False`): each hop is
    checked with `permits_url` first, and a hop outside scope raises `ScopeViolation`
    without connecting. More than `max_redirects` hops raise `httpx.TooManyRedirects`.
    A final 5xx or 429 raises `httpx.HTTPStatusError` (its response keeps Retry-After);
    any other status is assessed, since the headers are what is being checked.

    `auth_headers` (resolved credentials, docs/secrets.md) go with requests to `url`'s own
    origin only: a redirect to another host, port or scheme gets none, as browsers and
    httpx do with Authorization, so one in-scope host never receives another's secret.
    """
    origin = _origin(url)
    current = url
    if not permits_url(current):
        raise ScopeViolation(f"{redact(current)} is outside scope.allow")
    cookies: list[SetCookie] = []
    redirects = 0
    while True:
        # follow_redirects=False per request too: a hop must never bypass the scope check.
        headers = dict(auth_headers) if auth_headers and _origin(current) == origin else None
        async with client.stream("GET", current, follow_redirects=False, headers=headers) as response:
            # Cookies set on the way (a login redirect often sets the session) count too.
            cookies.extend(
                SetCookie.parse(raw, over_https=response.url.scheme == "https") for raw in response.headers.get_list("set-cookie")
            )
            if response.has_redirect_location:
                if redirects >= max_redirects:
                    raise httpx.TooManyRedirects(f"Exceeded maximum of {max_redirects} redirects", request=response.request)
                target = str(response.url.join(response.headers["location"]).copy_with(fragment=None))
                if not permits_url(target):
                    raise ScopeViolation(f"redirect from {redact(current)} to {redact(target)} leaves scope.allow; not followed")
                redirects += 1
                current = target
                continue
            if response.status_code == 429 or response.status_code >= 500:
                response.raise_for_status()
            findings = header_findings(url, current, response.headers)
            findings += cookie_findings(url, current, cookies)
            return HeaderReport(
                url=redact(url),
                final_url=redact(current),
                status=response.status_code,
                findings=findings,
            )


class _ScopedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Every TCP connection goes to an address `Scope.connect_address` checked a moment
    before: the URL's name is resolved once, here, and the answer is checked against the
    scope (deny list, non-public addresses); TLS still uses the name for SNI and for
    certificate checks (httpcore passes it to start_tls, not to connect_tcp)."""

    def __init__(self, scope: Scope) -> None:
        self._scope = scope
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        address = await self._scope.connect_address(host, port)
        return await self._inner.connect_tcp(address.ip, port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        raise ScopeViolation("unix sockets are never a scan target")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class ScopedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport whose connections are checked against `scope` at connect time."""

    def __init__(self, scope: Scope, *, verify: bool = True) -> None:
        super().__init__(verify=verify, trust_env=False)
        # httpx takes no network backend, so its pool is rebuilt with ours (same settings).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=httpx.Limits().max_connections,
            network_backend=_ScopedNetworkBackend(scope),
        )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = httpx.URL(url)
    return parts.scheme, parts.host, parts.port


def header_findings(target: str, final_url: str, headers: httpx.Headers) -> list[Finding]:
    """Findings about the response headers of `final_url` (pure: no I/O)."""
    location = redact(final_url)
    found: list[Finding] = []

    def add(rule_id: str, title: str, severity: Severity, cwe: str, evidence: str) -> None:
        found.append(
            Finding.new(
                tool=TOOL,
                rule_id=rule_id,
                title=title,
                severity=severity,
                confidence=Confidence.HIGH,
                target=redact(target),
                location=location,
                cwe=[cwe],
                evidence=_clip(redact(evidence)),
            )
        )

    csp_values = headers.get_list("content-security-policy")
    policies = [_parse_csp(value) for value in csp_values]
    if not policies:
        report_only = headers.get("content-security-policy-report-only")
        add(
            "csp-missing",
            "Content-Security-Policy header is missing",
            Severity.MEDIUM,
            "CWE-693",
            "Content-Security-Policy: (absent)"
            + ("; only the Report-Only variant is set, which enforces nothing" if report_only else ""),
        )
    else:
        evidence = "Content-Security-Policy: " + " , ".join(csp_values)
        weaknesses = (
            ("csp-unsafe-inline", "allows 'unsafe-inline'", _allows_unsafe_inline),
            ("csp-unsafe-eval", "allows 'unsafe-eval'", lambda p: any("'unsafe-eval'" in v for v in p.values())),
            ("csp-wildcard-default-src", "has default-src *", lambda p: "*" in p.get("default-src", ())),
        )
        for rule_id, what, present in weaknesses:
            if any(present(policy) for policy in policies):
                add(rule_id, f"Content-Security-Policy {what}", Severity.LOW, "CWE-693", evidence)

    if urlsplit(final_url).scheme.lower() == "https":
        hsts = headers.get("strict-transport-security")
        max_age = _hsts_max_age(hsts) if hsts is not None else None
        if max_age is None:
            add(
                "hsts-missing",
                "Strict-Transport-Security header is missing on HTTPS",
                Severity.MEDIUM,
                "CWE-319",
                "Strict-Transport-Security: (absent)"
                if hsts is None
                else f"Strict-Transport-Security: {hsts} (no valid max-age, so browsers ignore it)",
            )
        elif max_age < HSTS_MIN_MAX_AGE:
            add(
                "hsts-short-max-age",
                f"Strict-Transport-Security max-age is below {HSTS_MIN_MAX_AGE} seconds",
                Severity.LOW,
                "CWE-319",
                f"Strict-Transport-Security: {hsts}",
            )

    nosniff = headers.get("x-content-type-options")
    if nosniff is None or nosniff.strip().lower() != "nosniff":
        add(
            "x-content-type-options-missing",
            "X-Content-Type-Options is not set to nosniff",
            Severity.LOW,
            "CWE-693",
            f"X-Content-Type-Options: {'(absent)' if nosniff is None else nosniff}",
        )

    xfo = headers.get("x-frame-options")  # repeated headers arrive joined with ","
    xfo_ok = xfo is not None and {v.strip().upper() for v in xfo.split(",")} <= {"DENY", "SAMEORIGIN"}
    frame_ancestors = any("frame-ancestors" in p for p in policies)
    if not xfo_ok and not frame_ancestors:
        add(
            "clickjacking",
            "Neither X-Frame-Options nor CSP frame-ancestors protects against framing (clickjacking)",
            Severity.MEDIUM,
            "CWE-1021",
            f"X-Frame-Options: {'(absent)' if xfo is None else xfo}; CSP frame-ancestors: (absent)",
        )

    referrer = headers.get("referrer-policy")
    # The header may list fallbacks; browsers apply the last one they understand.
    last_policy = referrer.split(",")[-1].strip().lower() if referrer else ""
    if not last_policy:
        add(
            "referrer-policy-missing",
            "Referrer-Policy header is missing",
            Severity.LOW,
            "CWE-200",
            "Referrer-Policy: (absent)",
        )
    elif last_policy == "unsafe-url":
        add(
            "referrer-policy-unsafe-url",
            "Referrer-Policy unsafe-url sends full URLs to other sites",
            Severity.LOW,
            "CWE-200",
            f"Referrer-Policy: {referrer}",
        )

    for name in _DISCLOSING_HEADERS:
        for value in headers.get_list(name):
            if _VERSION.search(value):
                add(
                    f"{name.lower()}-version-disclosure",
                    f"{name} header discloses a software version",
                    Severity.LOW,
                    "CWE-200",
                    f"{name}: {value}",
                )
                break
    return found


def cookie_findings(target: str, final_url: str, cookies: list[SetCookie]) -> list[Finding]:
    """One finding per cookie name and missing attribute (Secure on HTTPS, HttpOnly)."""
    missing: dict[tuple[str, str], SetCookie] = {}
    for cookie in cookies:
        if cookie.deletes:
            continue  # clearing a cookie exposes nothing
        if cookie.over_https and not cookie.secure:
            missing.setdefault((cookie.name, "secure"), cookie)
        if not cookie.httponly:
            missing.setdefault((cookie.name, "httponly"), cookie)
    location_base = redact(final_url)
    findings = []
    for (name, attribute), cookie in missing.items():
        if attribute == "secure":
            rule_id, title, severity, cwe = (
                "cookie-missing-secure",
                f"Cookie {name} is set without the Secure attribute over HTTPS",
                Severity.MEDIUM,
                "CWE-614",
            )
        else:
            rule_id, title, severity, cwe = (
                "cookie-missing-httponly",
                f"Cookie {name} is set without the HttpOnly attribute",
                Severity.LOW,
                "CWE-1004",
            )
        findings.append(
            Finding.new(
                tool=TOOL,
                rule_id=rule_id,
                title=title,
                severity=severity,
                confidence=Confidence.HIGH,
                target=redact(target),
                location=f"{location_base}#cookie={name}",
                cwe=[cwe],
                # Just the cookie string: a "Set-Cookie:" prefix would make redact() (ours
                # or a later pass) blank the whole line, names and attributes included.
                evidence=_clip(redact(cookie.redacted())),
            )
        )
    return findings


@dataclass(frozen=True)
class SetCookie:
    """A Set-Cookie header reduced to what is safe to keep: name and attributes, no value."""

    name: str
    attributes: tuple[tuple[str, str | None], ...]  # (name as sent, value or None)
    over_https: bool

    @classmethod
    def parse(cls, raw: str, *, over_https: bool) -> SetCookie:
        pair, *attribute_texts = raw.split(";")
        name = pair.partition("=")[0].strip()
        attributes = []
        for text in attribute_texts:
            key, sep, value = text.partition("=")
            if key.strip():
                attributes.append((key.strip(), value.strip() if sep else None))
        return cls(name=name, attributes=tuple(attributes), over_https=over_https)

    def _values(self, key: str) -> list[str | None]:
        return [v for k, v in self.attributes if k.lower() == key]

    def _has(self, key: str) -> bool:
        return bool(self._values(key))

    @property
    def secure(self) -> bool:
        return self._has("secure")

    @property
    def httponly(self) -> bool:
        return self._has("httponly")

    @property
    def deletes(self) -> bool:
        """Max-Age <= 0 or an Expires in the past: the header removes the cookie."""
        for value in self._values("max-age"):  # Max-Age wins over Expires
            if value is not None and value.lstrip("-").isdigit():
                return int(value) <= 0
        for value in self._values("expires"):
            if value:
                try:
                    expires = parsedate_to_datetime(value)
                except (TypeError, ValueError):
                    return False  # an unparseable date keeps the cookie for the session
                if expires.tzinfo is None:
                    expires = expires.replace(tzinfo=UTC)
                return expires <= datetime.now(UTC)
        return False

    def redacted(self) -> str:
        """The header with its value replaced: what evidence may show."""
        attributes = "".join(f"; {k}" if v is None else f"; {k}={v}" for k, v in self.attributes)
        return f"{self.name}={REDACTED}{attributes}"


def _parse_csp(value: str) -> dict[str, tuple[str, ...]]:
    """`"default-src 'self'; script-src 'unsafe-inline'"` -> directive -> sources (lower-case)."""
    policy: dict[str, tuple[str, ...]] = {}
    for directive in value.split(";"):
        tokens = directive.strip().lower().split()
        if tokens and tokens[0] not in policy:  # the first occurrence of a directive wins
            policy[tokens[0]] = tuple(tokens[1:])
    return policy


def _allows_unsafe_inline(policy: dict[str, tuple[str, ...]]) -> bool:
    # Browsers ignore 'unsafe-inline' in a directive that also has a nonce, a hash or
    # 'strict-dynamic', so only a directive without them really allows inline code.
    for sources in policy.values():
        overridden = any(s.startswith(_NONCE_OR_HASH) or s == "'strict-dynamic'" for s in sources)
        if "'unsafe-inline'" in sources and not overridden:
            return True
    return False


_NONCE_OR_HASH = ("'nonce-", "'sha256-", "'sha384-", "'sha512-")


def _hsts_max_age(value: str) -> int | None:
    for directive in value.split(";"):
        key, sep, number = directive.strip().partition("=")
        if key.strip().lower() == "max-age" and sep:
            number = number.strip().strip('"')
            return int(number) if number.isdigit() else None
    return None


def _clip(text: str) -> str:
    return text if len(text) <= _EVIDENCE_MAX else text[: _EVIDENCE_MAX - 3] + "..."
