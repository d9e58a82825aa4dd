"""The header check against real local servers on 127.0.0.1 (no mocks, nothing beyond loopback)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from activities.tools.http_headers import SetCookie, check_headers, cookie_findings, header_findings
from examples.demo_target import NotLoopbackError, start_demo_target
from secflow.errors import ScopeViolation
from secflow.findings import Severity
from secflow.scope import Scope

HOST = "127.0.0.1"

STRONG_HEADERS = [
    ("Server", "nginx"),
    ("Content-Type", "text/html"),
    ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("Strict-Transport-Security", "max-age=63072000; includeSubDomains"),
    ("Set-Cookie", "session=strong-cookie-value; Path=/; Secure; HttpOnly; SameSite=Lax"),
]

DEMO_RULES = {
    "csp-missing",
    "x-content-type-options-missing",
    "clickjacking",
    "referrer-policy-missing",
    "server-version-disclosure",
    "x-powered-by-version-disclosure",
    "cookie-missing-httponly",
}


def http_response(status: int, headers: list[tuple[str, str]], body: bytes = b"ok") -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RawServer:
    """A local server answering each request with the bytes `respond(path)` returns.

    `respond` returning None means: keep the connection open and never answer.
    Counts connections, so a test can prove that nothing reached it at all.
    """

    def __init__(self, respond: Callable[[str], bytes | None]) -> None:
        self.respond = respond
        self.connections = 0
        self.paths: list[str] = []
        self._closing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    async def start(self) -> "RawServer":
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._closing.set()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("latin-1")
            self.paths.append(path)
            reply = self.respond(path)
            if reply is None:
                await self._closing.wait()
            else:
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client went away first; nothing left to answer
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Callable[[str], bytes | None]], "asyncio.Future[RawServer]"]]:
    servers: list[RawServer] = []

    async def start(respond: Callable[[str], bytes | None]) -> RawServer:
        server = await RawServer(respond).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=False, timeout=5.0) as c:
        yield c


def in_scope(*entries: str) -> Callable[[str], bool]:
    return Scope.parse(list(entries)).permits_url


# --- whole responses ----------------------------------------------------------------------


async def test_demo_target_yields_the_expected_findings(client: httpx.AsyncClient) -> None:
    target = start_demo_target(HOST, 0)
    try:
        report = await check_headers(target.url, client=client, permits_url=in_scope(target.url))
    finally:
        target.stop()
    assert report.status == 200
    assert report.url == report.final_url == target.url
    assert {f.rule_id for f in report.findings} == DEMO_RULES
    assert len(report.findings) == len(DEMO_RULES)
    by_rule = {f.rule_id: f for f in report.findings}
    assert by_rule["server-version-disclosure"].evidence == "Server: Apache/2.4.41 (Ubuntu)"
    assert by_rule["x-powered-by-version-disclosure"].evidence == "X-Powered-By: PHP/7.2.1"
    cookie = by_rule["cookie-missing-httponly"]
    assert cookie.location == f"{target.url}#cookie=PHPSESSID"
    assert cookie.evidence == "PHPSESSID=[REDACTED]; Path=/"
    assert by_rule["clickjacking"].severity is Severity.MEDIUM
    assert by_rule["clickjacking"].cwe == ["CWE-1021"]
    assert all(f.tool == "http-headers" and f.target == target.url and f.cwe for f in report.findings)
    assert all(f.location == target.url for f in report.findings if f.rule_id != "cookie-missing-httponly")


async def test_demo_target_findings_are_stable_across_runs(client: httpx.AsyncClient) -> None:
    with start_demo_target(HOST, 0) as target:
        first = await check_headers(target.url, client=client, permits_url=in_scope(target.url))
        second = await check_headers(target.url, client=client, permits_url=in_scope(target.url))
    assert sorted(f.fingerprint for f in first.findings) == sorted(f.fingerprint for f in second.findings)


async def test_strong_headers_yield_no_findings(serve, client: httpx.AsyncClient) -> None:
    server = await serve(lambda path: http_response(200, STRONG_HEADERS))
    report = await check_headers(server.url(), client=client, permits_url=in_scope(server.url()))
    assert report.findings == []


async def test_client_errors_are_assessed_not_raised(serve, client: httpx.AsyncClient) -> None:
    server = await serve(lambda path: http_response(404, [("Server", "Microsoft-IIS/10.0")]))
    report = await check_headers(server.url("/gone"), client=client, permits_url=in_scope(server.url()))
    assert report.status == 404
    assert "server-version-disclosure" in {f.rule_id for f in report.findings}


async def test_cookie_values_never_reach_findings(serve, client: httpx.AsyncClient) -> None:
    cookies = [
        ("Set-Cookie", "session=TOPSECRET-session-value; Path=/; SameSite=Strict"),
        ("Set-Cookie", "csrf=TOPSECRET-csrf-value"),
        ("Set-Cookie", "theme=TOPSECRET-theme; HttpOnly"),
    ]
    server = await serve(lambda path: http_response(200, cookies))
    report = await check_headers(server.url(), client=client, permits_url=in_scope(server.url()))
    cookie_findings_seen = [f for f in report.findings if f.rule_id.startswith("cookie-")]
    assert {(f.rule_id, f.location) for f in cookie_findings_seen} == {
        ("cookie-missing-httponly", server.url() + "#cookie=session"),
        ("cookie-missing-httponly", server.url() + "#cookie=csrf"),
    }
    assert "session=[REDACTED]; Path=/; SameSite=Strict" in report.model_dump_json()
    assert "TOPSECRET" not in report.model_dump_json()


# --- redirects and scope ------------------------------------------------------------------


async def test_redirect_chain_inside_scope_is_followed(serve, client: httpx.AsyncClient) -> None:
    def respond(path: str) -> bytes:
        if path == "/start":
            return http_response(302, [("Location", "/middle"), ("Set-Cookie", "sid=TOPSECRET-sid; Path=/")])
        if path == "/middle":
            return http_response(301, [("Location", f"http://{HOST}:{server.port}/end?x=1#frag")])
        return http_response(200, STRONG_HEADERS)

    server = await serve(respond)
    report = await check_headers(server.url("/start"), client=client, permits_url=in_scope(server.url()))
    assert server.paths == ["/start", "/middle", "/end?x=1"]
    assert report.url == server.url("/start")
    assert report.final_url == server.url("/end?x=1")
    assert report.status == 200
    # The session cookie set by the first hop is assessed too, located at the final URL.
    assert [(f.rule_id, f.location, f.target) for f in report.findings] == [
        ("cookie-missing-httponly", server.url("/end?x=1#cookie=sid"), server.url("/start"))
    ]
    assert "TOPSECRET" not in report.model_dump_json()


async def test_redirect_out_of_scope_raises_before_connecting(serve, client: httpx.AsyncClient) -> None:
    outside = await serve(lambda path: http_response(200, STRONG_HEADERS))
    inside = await serve(lambda path: http_response(302, [("Location", outside.url("/admin"))]))
    with pytest.raises(ScopeViolation) as raised:
        await check_headers(inside.url("/go"), client=client, permits_url=in_scope(inside.url()))
    assert outside.url("/admin") in str(raised.value)
    assert inside.paths == ["/go"]
    assert outside.connections == 0


async def test_start_url_out_of_scope_raises_before_connecting(serve, client: httpx.AsyncClient) -> None:
    server = await serve(lambda path: http_response(200, STRONG_HEADERS))
    with pytest.raises(ScopeViolation):
        await check_headers(server.url(), client=client, permits_url=in_scope(f"http://{HOST}:1/"))
    assert server.connections == 0


async def test_credentials_in_urls_are_not_repeated(serve, client: httpx.AsyncClient) -> None:
    server = await serve(lambda path: http_response(302, [("Location", f"http://admin:hunter2@{HOST}:1/")]))
    with pytest.raises(ScopeViolation) as raised:
        await check_headers(server.url(), client=client, permits_url=in_scope(server.url()))
    assert "hunter2" not in str(raised.value) and f"@{HOST}:1/" in str(raised.value)


async def test_redirect_loop_raises_too_many_redirects(serve, client: httpx.AsyncClient) -> None:
    server = await serve(lambda path: http_response(302, [("Location", "/loop")]))
    with pytest.raises(httpx.TooManyRedirects):
        await check_headers(server.url("/loop"), client=client, permits_url=in_scope(server.url()), max_redirects=3)
    assert len(server.paths) == 4  # the first request and three redirects, no more


async def test_redirect_without_location_is_assessed(serve, client: httpx.AsyncClient) -> None:
    server = await serve(lambda path: http_response(302, STRONG_HEADERS))
    report = await check_headers(server.url(), client=client, permits_url=in_scope(server.url()))
    assert report.status == 302 and report.findings == []


# --- failures the caller classifies -------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429])
async def test_overload_raises_with_retry_after(serve, client: httpx.AsyncClient, status: int) -> None:
    server = await serve(lambda path: http_response(status, [("Retry-After", "7")]))
    with pytest.raises(httpx.HTTPStatusError) as raised:
        await check_headers(server.url(), client=client, permits_url=in_scope(server.url()))
    assert raised.value.response.status_code == status
    assert raised.value.response.headers["Retry-After"] == "7"


async def test_server_that_never_answers_raises_read_timeout(serve) -> None:
    server = await serve(lambda path: None)
    async with httpx.AsyncClient(follow_redirects=False, timeout=0.3) as quick:
        with pytest.raises(httpx.ReadTimeout):
            await check_headers(server.url(), client=quick, permits_url=in_scope(server.url()))
    assert server.connections == 1


async def test_garbage_answer_raises_remote_protocol_error(serve, client: httpx.AsyncClient) -> None:
    server = await serve(lambda path: b"\x00\xff\xfeSSH-2.0-not-http\r\n\r\n")
    with pytest.raises(httpx.RemoteProtocolError):
        await check_headers(server.url(), client=client, permits_url=in_scope(server.url()))


# --- the rules, on headers alone (HTTPS without a TLS server) --------------------------------


def rules(headers: list[tuple[str, str]], url: str = "https://app.test/") -> set[str]:
    return {f.rule_id for f in header_findings(url, url, httpx.Headers(headers))}


def strong(**replace: str | None) -> list[tuple[str, str]]:
    """STRONG_HEADERS with some replaced (value) or removed (None); keys like x_frame_options."""
    names = {k.replace("_", "-").lower(): v for k, v in replace.items()}
    kept = [(n, v) for n, v in STRONG_HEADERS if n.lower() not in names and n != "Set-Cookie"]
    return kept + [(n, v) for n, v in names.items() if v is not None]


def test_strong_headers_over_https_are_clean() -> None:
    assert rules(strong()) == set()


def test_hsts_rules_apply_to_https_only() -> None:
    assert rules(strong(strict_transport_security=None)) == {"hsts-missing"}
    assert rules(strong(strict_transport_security=None), url="http://app.test/") == set()
    assert rules(strong(strict_transport_security="max-age=86400")) == {"hsts-short-max-age"}
    assert rules(strong(strict_transport_security="includeSubDomains")) == {"hsts-missing"}
    assert rules(strong(strict_transport_security='max-age="31536000"')) == set()
    (finding,) = header_findings("https://a.test/", "https://a.test/", httpx.Headers(strong(strict_transport_security=None)))
    assert finding.severity is Severity.MEDIUM and finding.cwe == ["CWE-319"]
    assert finding.evidence == "Strict-Transport-Security: (absent)"


def test_csp_weaknesses() -> None:
    csp = "content_security_policy"
    assert rules(strong(**{csp: "default-src 'self'; script-src 'self' 'unsafe-inline'; frame-ancestors 'self'"})) == {
        "csp-unsafe-inline"
    }
    assert rules(strong(**{csp: "script-src 'unsafe-eval'; frame-ancestors 'none'"})) == {"csp-unsafe-eval"}
    assert rules(strong(**{csp: "default-src *; frame-ancestors 'none'"})) == {"csp-wildcard-default-src"}
    # A nonce makes browsers ignore 'unsafe-inline' (it is there for old browsers only).
    assert rules(strong(**{csp: "script-src 'nonce-abc' 'unsafe-inline'; frame-ancestors 'none'"})) == set()
    assert rules(strong(**{csp: None})) == {"csp-missing"}  # X-Frame-Options still covers framing
    only_report = strong(**{csp: None, "content_security_policy_report_only": "default-src 'self'"})
    (finding,) = header_findings("https://a.test/", "https://a.test/", httpx.Headers(only_report))
    assert finding.rule_id == "csp-missing" and "Report-Only" in finding.evidence


def test_framing_protection_from_either_header() -> None:
    no_ancestors = "default-src 'self'"
    assert rules(strong(content_security_policy=no_ancestors)) == set()  # X-Frame-Options: DENY
    assert rules(strong(content_security_policy=no_ancestors, x_frame_options="SAMEORIGIN")) == set()
    assert rules(strong(content_security_policy=no_ancestors, x_frame_options="ALLOW-FROM https://x/")) == {
        "clickjacking"
    }
    assert rules(strong(content_security_policy=no_ancestors, x_frame_options=None)) == {"clickjacking"}
    assert rules(strong(x_frame_options=None)) == set()  # frame-ancestors 'none'


def test_nosniff_referrer_and_version_disclosure() -> None:
    assert rules(strong(x_content_type_options="sniff")) == {"x-content-type-options-missing"}
    assert rules(strong(referrer_policy=None)) == {"referrer-policy-missing"}
    assert rules(strong(referrer_policy="unsafe-url")) == {"referrer-policy-unsafe-url"}
    assert rules(strong(referrer_policy="unsafe-url, no-referrer")) == set()  # the last one applies
    assert rules(strong(server="Apache/2.4.41 (Ubuntu)")) == {"server-version-disclosure"}
    assert rules(strong(server="Apache")) == set()
    assert rules(strong(x_powered_by="Express")) == set()
    assert rules(strong(x_powered_by="PHP/7.2.1")) == {"x-powered-by-version-disclosure"}
    assert rules(strong(x_aspnet_version="4.0.30319")) == {"x-aspnet-version-version-disclosure"}


def test_cookie_rules_over_https() -> None:
    raw = [
        "sid=TOPSECRET-1; Path=/; HttpOnly",
        "pref=TOPSECRET-2; Secure",
        "both=TOPSECRET-3",
        "gone=; Max-Age=0",
        "old=TOPSECRET-4; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        "sid=TOPSECRET-5; Path=/app",  # the same name twice: still one finding per attribute
    ]
    cookies = [SetCookie.parse(r, over_https=True) for r in raw]
    findings = cookie_findings("https://a.test/", "https://a.test/home", cookies)
    assert sorted((f.rule_id, f.location) for f in findings) == [
        ("cookie-missing-httponly", "https://a.test/home#cookie=both"),
        ("cookie-missing-httponly", "https://a.test/home#cookie=pref"),
        ("cookie-missing-httponly", "https://a.test/home#cookie=sid"),
        ("cookie-missing-secure", "https://a.test/home#cookie=both"),
        ("cookie-missing-secure", "https://a.test/home#cookie=sid"),
    ]
    secure = next(f for f in findings if f.rule_id == "cookie-missing-secure")
    assert secure.severity is Severity.MEDIUM and secure.cwe == ["CWE-614"]
    assert all(f.cwe == ["CWE-1004"] for f in findings if f.rule_id == "cookie-missing-httponly")
    assert not any("TOPSECRET" in f.model_dump_json() for f in findings)


# --- the demo target itself ---------------------------------------------------------------

DEMO_SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "demo_target.py"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_demo_target_refuses_non_loopback_addresses(host: str) -> None:
    with pytest.raises(NotLoopbackError):
        start_demo_target(host, 0)
    run = subprocess.run(
        [sys.executable, str(DEMO_SCRIPT), "--host", host, "--port", "0"], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2
    assert "loopback" in run.stderr and run.stdout == ""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_demo_target_cli_reports_ready_and_stops_on_signal(signum: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(DEMO_SCRIPT), "--port", "0", "--extra-ports", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("demo target ready on http://127.0.0.1:"), ready
        url = ready.split()[4]
        assert httpx.get(url, timeout=5).headers["server"] == "Apache/2.4.41 (Ubuntu)"
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


async def test_tokens_in_the_url_do_not_reach_findings(serve, client: httpx.AsyncClient) -> None:
    server = await serve(lambda path: http_response(200, [("Set-Cookie", "sid=TOPSECRET-sid")]))
    url = server.url("/?api_key=TOPSECRET-key")
    report = await check_headers(url, client=client, permits_url=in_scope(server.url()))
    assert server.paths == ["/?api_key=TOPSECRET-key"]  # the request itself is unchanged
    assert report.findings and "TOPSECRET" not in report.model_dump_json()
