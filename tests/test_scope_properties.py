"""Property-based tests of secflow/scope.py: over hostile encodings of hosts, ports, URL paths,
filesystem paths and resolver answers, nothing out of scope is ever accepted.

Each property judges an accepted value with an oracle written independently of the code
under test: how a C resolver, Python's socket layer (IDNA 2003 codec), a server normalising
paths (posixpath, Tomcat's `;` rule) or the filesystem (realpath) would read it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import posixpath
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secflow.scope import Scope, canonical_host

# SCOPE_PROPERTY_EXAMPLES=5000 for a longer hunt; 400 keeps the suite quick.
SETTINGS = settings(max_examples=int(os.environ.get("SCOPE_PROPERTY_EXAMPLES", "400")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

INSIDE_IP = ipaddress.ip_address("127.0.0.1")
HOST_SCOPE = Scope.parse(["127.0.0.1", "*.example.com", "app.example.org"], ["deny.example.com"])

# Ways to write the out-of-scope 127.0.0.2 (and friends) that some reader accepts.
OUTSIDE_SPELLINGS = [
    "127.0.0.2", "127.2", "127.0.2", "0x7f000002", "0x7f.0.0.2", "0177.0.0.2", "2130706434", "127.000.000.002",
    "１２７．０．０．２", "127。0。0。2", "[::ffff:127.0.0.2]", "::ffff:7f00:2", "[::ffff:7f00:2]", "127.0.0.2.", "[127.0.0.2]",
    "%31%32%37.0.0.2", "10.0.0.1", "169.254.169.254", "[::1]", "localhost",
]  # fmt: skip
JUNK = ["\x00", "\t", "\n", "\r", "\x0b", "\x0c", " ", "\u200b", "\u00a0", "\u3000", "%00", "%0a", "#", "@", "/", "\\", ":", "?", "."]
SUFFIXES = [".example.com", ".example.com.", ".EXAMPLE.com", ".example.com\x00", ".example.org", "", ".app.example.org"]


def hosts() -> st.SearchStrategy[str]:
    """Out-of-scope addresses in many spellings, with junk and in-scope suffixes around them,
    plus arbitrary text."""
    glued = st.tuples(st.sampled_from(OUTSIDE_SPELLINGS), st.sampled_from(JUNK + [""]), st.sampled_from(SUFFIXES)).map("".join)
    prefixed = st.tuples(st.sampled_from(["", "a.", "xn--", "-", "ß", "ｅｘａｍｐｌｅ", "a\x00"]), st.sampled_from(SUFFIXES)).map(
        lambda t: "app" + t[0] + t[1] if t[0] else "app" + t[1]
    )
    return st.one_of(glued, prefixed, st.text(min_size=1, max_size=40), st.sampled_from(OUTSIDE_SPELLINGS))


def resolver_readings(host: str) -> list[str]:
    """Names a resolver might be handed for `host`: the C string (cut at NUL) and Python's
    IDNA 2003 encoding of it, each lower-cased without a trailing dot and brackets."""
    readings = set()
    for text in (host, host.split("\x00", 1)[0]):
        candidates = [text]
        try:
            candidates.append(text.encode("idna").decode("ascii"))
        except (UnicodeError, ValueError):
            pass
        for c in candidates:
            readings.add(c.strip("[]").lower().rstrip("."))
    return sorted(readings)


def numeric_reading(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """What a C resolver makes of `name` without DNS: inet_aton's lenient IPv4 forms, IPv6."""
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except (OSError, ValueError):
        pass
    try:
        ip6 = ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, name))
    except (OSError, ValueError):
        return None
    return ip6.ipv4_mapped or ip6


@SETTINGS
@given(hosts())
def test_an_accepted_host_is_read_the_same_by_every_reader_and_is_in_scope(host: str) -> None:
    if not HOST_SCOPE.permits_host(host):
        return
    canon = canonical_host(host)
    assert canon.isascii() and all(c.isalnum() or c in ".-:" for c in canon), canon
    assert not any(ord(c) < 0x21 or ord(c) == 0x7F for c in host)
    for reading in resolver_readings(host):
        ip = numeric_reading(reading)
        assert ip is None or ip == INSIDE_IP, (host, reading, ip)
    ip = numeric_reading(canon)
    if ip is not None:
        assert ip == INSIDE_IP
    else:
        assert canon == "app.example.org" or (canon.endswith(".example.com") and canon != "deny.example.com"), canon


# --- URLs: ports and paths ----------------------------------------------------------------
PREFIX = "http://127.0.0.1:8089/app/"
URL_SCOPE = Scope.parse([PREFIX, "http://127.0.0.1:8089/public"], ["http://127.0.0.1:8089/app/private/"])
SEGMENTS = [
    "..", ".", "%2e%2e", "%2E%2e", ".%2e", "%2e.", "%252e%252e", "%25252e%25252e", "..;", "..;x=1", ";", "%3b", "%2f", "%2F",
    "%5c", "%5C..", "..%2f", "..%5c", "admin", "app", "private", "x", "", "%00", "%0a", "%c0%ae%c0%ae", "．．", "%u002e", "a;b",
    "%70rivate", "publicity", "public",
]  # fmt: skip
PORTS = ["8089", "08089", "8089 ", "+8089", "８０８９", "8089.evil.example", "80", "", "65536", "0x1f99", "-8089"]
HOSTS = ["127.0.0.1", "127.0.0.1.", "127.1", "[::ffff:127.0.0.1]", "127.0.0.2", "localhost", "127.0.0.1\x00.evil", "127.0.0.1@127.0.0.2"]


@st.composite
def urls(draw: Any) -> str:
    host = draw(st.sampled_from(HOSTS))
    port = draw(st.sampled_from(PORTS))
    path = "/".join(draw(st.lists(st.sampled_from(SEGMENTS), max_size=6)))
    start = draw(st.sampled_from(["/app/", "/", "/public/", "/app", "//app/"]))
    scheme = draw(st.sampled_from(["http", "HTTP", "https", "http"]))
    return f"{scheme}://{host}{':' + port if port else ''}{start}{path}"


def server_readings(path: str) -> set[str]:
    """Independent oracle: decode repeatedly, try `\\` as `/`, drop `;params` or not, then
    posixpath.normpath (which also collapses //)."""
    out = set()
    decoded = path
    seen = [path]
    for _ in range(5):
        nxt = unquote(decoded, errors="replace")
        if nxt == decoded:
            break
        decoded = nxt
        seen.append(decoded)
    for text in seen:
        for p in (text, text.replace("\\", "/")):
            for q in (p, "/".join(s.split(";", 1)[0] for s in p.split("/"))):
                normal = posixpath.normpath(q) if q else "/"
                out.add(normal + ("/" if q.endswith("/") and normal != "/" else ""))
    return out


@SETTINGS
@given(urls())
def test_an_accepted_url_is_under_the_prefix_on_every_reading(url: str) -> None:
    if not URL_SCOPE.permits_url(url):
        return
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.scheme.lower() == "http" and parts.hostname is not None, url
    host = ipaddress.ip_address(parts.hostname)
    assert (host.ipv4_mapped if isinstance(host, ipaddress.IPv6Address) else host) == INSIDE_IP, url
    assert parts.port == 8089 and parts.netloc.rsplit(":", 1)[1] in ("8089", "08089"), url
    for reading in server_readings(parts.path):
        inside = reading.startswith("/app/") or reading in ("/app", "/public") or reading.startswith("/public/")
        assert inside and not reading.startswith("/app/private"), (url, reading)
        assert "\x00" not in reading and "\n" not in reading and "\ufffd" not in reading, (url, reading)


# --- addresses: what a name resolves to ---------------------------------------------------
ADDR_SCOPE = Scope.parse(["*.example.com", "10.1.0.0/16", "localhost"], ["10.1.2.0/24", "203.0.113.0/24"])
ALLOWED_NET = ipaddress.ip_network("10.1.0.0/16")
DENIED_NETS = [ipaddress.ip_network("10.1.2.0/24"), ipaddress.ip_network("203.0.113.0/24")]


def addresses() -> st.SearchStrategy[str]:
    v4 = st.one_of(
        st.ip_addresses(v=4),
        st.sampled_from(["10.1.2.3", "10.1.9.9", "127.0.0.1", "127.0.0.2", "169.254.169.254", "203.0.113.5", "8.8.8.8", "0.0.0.0"]),
    ).map(str)
    v6 = st.one_of(st.ip_addresses(v=6).map(str), v4.map(lambda a: f"::ffff:{a}"))
    return st.one_of(v4, v6)


def _mapped(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    parsed = ipaddress.ip_address(ip)
    return parsed.ipv4_mapped or parsed if isinstance(parsed, ipaddress.IPv6Address) else parsed


@SETTINGS
@given(st.sampled_from(["app.example.com", "localhost", "x.y.example.com"]), st.lists(addresses(), min_size=1, max_size=5))
def test_a_connect_address_is_never_denied_nor_private_unless_allowed(name: str, answers: list[str]) -> None:
    async def resolver(host: str, port: int) -> list[tuple[Any, ...]]:
        assert host == name  # the canonical name is what gets resolved
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port) if ":" not in a else (a, port, 0, 0))
            for a in answers
        ]

    try:
        address = asyncio.run(ADDR_SCOPE.connect_address(name, 443, resolver=resolver))
    except Exception as exc:  # refused: that is always safe
        assert type(exc).__name__ == "ScopeViolation", exc
        return
    ip = _mapped(address.ip)
    assert str(ip) in {str(_mapped(a)) for a in answers}, "connects only to an address the resolver gave"
    assert not any(ip.version == n.version and ip in n for n in DENIED_NETS), ip
    in_allowed_net = ip.version == 4 and ip in ALLOWED_NET
    assert in_allowed_net or ip.is_global or (name == "localhost" and ip.is_loopback), (name, ip)


# --- filesystem paths ---------------------------------------------------------------------
_ROOT = Path(tempfile.mkdtemp(prefix="scope-props-")).resolve()
(_ROOT / "outside").mkdir()
(_ROOT / "outside" / "secret").write_text("x")
(_ROOT / "tree" / "sub").mkdir(parents=True)
(_ROOT / "tree" / "sub" / "file").write_text("x")
(_ROOT / "tree" / "vendor").mkdir()
(_ROOT / "tree" / "out").symlink_to(_ROOT / "outside", target_is_directory=True)
(_ROOT / "tree" / "sub" / "up").symlink_to(_ROOT / "tree")
(_ROOT / "tree" / "sub" / "to_secret").symlink_to(_ROOT / "outside" / "secret")
(_ROOT / "tree" / "to_vendor").symlink_to(_ROOT / "tree" / "vendor")
PATH_SCOPE = Scope.parse([str(_ROOT / "tree")], [str(_ROOT / "tree" / "vendor")])
PATH_SEGMENTS = ["..", ".", "", "sub", "file", "out", "up", "to_secret", "secret", "vendor", "to_vendor", "tree", "outside"]


@SETTINGS
@given(st.lists(st.sampled_from(PATH_SEGMENTS), max_size=7), st.sampled_from(["tree", "tree/sub", "outside", ""]))
def test_an_accepted_path_stays_in_the_tree_when_links_are_followed(segments: list[str], base: str) -> None:
    path = os.path.join(str(_ROOT), base, *segments) if segments else os.path.join(str(_ROOT), base)
    if not PATH_SCOPE.permits_path(path):
        return
    real = os.path.realpath(path)
    tree = str(_ROOT / "tree")
    assert real == tree or real.startswith(tree + "/"), (path, real)
    vendor = str(_ROOT / "tree" / "vendor")
    assert not (real == vendor or real.startswith(vendor + "/")), (path, real)


def test_escaping_links_lists_exactly_the_links_that_leave() -> None:
    links = PATH_SCOPE.escaping_links(str(_ROOT / "tree"))
    assert links == sorted([str(_ROOT / "tree" / "out"), str(_ROOT / "tree" / "sub" / "to_secret"), str(_ROOT / "tree" / "to_vendor")])


# --- the properties are not vacuous: these are accepted -----------------------------------
def test_ordinary_targets_are_still_accepted() -> None:
    for host in ("127.0.0.1", "a.example.com", "A.Example.COM.", "app.example.org", "bücher.example.com", "[::ffff:127.0.0.1]"):
        assert HOST_SCOPE.permits_host(host), host
    assert canonical_host("bücher.example.com") == "xn--bcher-kva.example.com"
    for url in (PREFIX, PREFIX + "x/../y", PREFIX + "a%20b", "http://127.0.0.1:08089/app/x?q=/../..", "http://127.0.0.1:8089/public"):
        assert URL_SCOPE.permits_url(url), url
    for url in (PREFIX + "private/x", PREFIX + "x/../private/", PREFIX + "%70rivate/", "http://127.0.0.1:8089/publicity"):
        assert not URL_SCOPE.permits_url(url), url
    assert PATH_SCOPE.permits_path(str(_ROOT / "tree" / "sub" / "up" / "sub" / "file"))
    assert not PATH_SCOPE.permits_path(str(_ROOT / "tree" / "sub" / "up" / ".."))
    assert not PATH_SCOPE.permits_path(str(_ROOT / "tree" / "to_vendor"))
