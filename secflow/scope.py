"""Scope is law: the one place that decides whether a host, URL, path or address may be touched.

`scope.allow` and `scope.deny` entries take the same forms:
- a hostname (`localhost`, `app.example.com`, `bücher.example`) or a wildcard
  (`*.example.com`, which matches names below it, not `example.com` itself),
- an IP address (`127.0.0.1`, `::1`) or a CIDR (`10.0.0.0/8`),
- a URL prefix (`http://127.0.0.1:8089/app/`): scheme, host and port must be equal and the
  normalised path must lie under the prefix's path,
- a path prefix (`/srv/repos/`, `./examples/`): for `path:` targets.

A deny entry wins over every allow entry.

Everything is compared in ONE canonical form, computed here, so that the checker and the
resolver / HTTP client / scanner can never read a name differently (docs/scope.md):
- hostnames: no control characters, whitespace or percent signs; IDNA (UTS 46) to the
  ASCII form; lower case; no trailing dot; letters, digits and hyphens in labels of at
  most 63; an IP address written in a non-standard notation (`127.1`, `0x7f000001`,
  `2130706433`, full-width digits) is refused rather than guessed at;
- IP addresses: `ipaddress` strict parsing; IPv4-mapped IPv6 is its IPv4 address;
- URL paths: every reading a server might take (percent-decoded or not, `\\` as `/`,
  `;params` dropped, repeated slashes collapsed or not, dot segments removed) must lie
  under an allowed prefix, and none under a denied one;
- filesystem paths: symlinks followed (`os.path.realpath`) on both sides.

Names are never resolved through DNS to decide if a *name* is in scope: a name is in scope
because it is listed. What a name resolves to is checked separately, right before a tool
connects (`Scope.connect_address`): the address must not be denied, and an address that is
not public (loopback, private, link-local, ...) must be allowed by an IP/CIDR entry itself
(the name `localhost` may reach loopback). Tools then connect to that checked address, so
a second resolution (DNS rebinding) cannot send them elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import threading
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import idna

from secflow.errors import ScopeViolation

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_DECODE_ROUNDS = 4  # %252e -> %2e -> . ; deeper nesting is refused, not followed
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")

# getaddrinfo(host, port, family, type, proto, flags) -> [(family, type, proto, canonname, sockaddr)]
Resolver = Callable[[str, int], Awaitable[list[tuple[Any, ...]]]]


# ======================================================================================
# Canonical forms
# ======================================================================================
def _unsafe_char(text: str) -> str | None:
    """The first control, format or whitespace character in `text`, if any."""
    for char in text:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp", "Zs"):
            return char
    return None


def strict_ip(text: str) -> IPAddress | None:
    """`text` as an IP address in its standard notation, or None. IPv4-mapped IPv6 is IPv4."""
    if not text.isascii() or "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _numeric_looking(name: str) -> bool:
    """Would a resolver read `name` as an IPv4 address (`127.1`, `0x7f000001`, `2130706433`)?"""
    last = name.rsplit(".", 1)[-1]
    if last.isdigit() or last.startswith("0x"):
        return True
    try:
        socket.inet_aton(name)  # pure parsing: glibc's lenient IPv4 notations
    except OSError:
        return False
    return True


def canonical_host(raw: str) -> str:
    """The one form a host is compared and connected in; ValueError(reason) if it is not a host.

    IP addresses come back in their standard form (IPv6 without brackets); names in IDNA
    ASCII, lower case, without a trailing dot.
    """
    if not isinstance(raw, str) or not raw:
        raise ValueError("empty host")
    bad = _unsafe_char(raw)
    if bad is not None:
        raise ValueError(f"host contains a control or whitespace character ({bad!a})")
    if "%" in raw:
        raise ValueError("host contains '%' (percent-encoding or an IPv6 zone id)")
    if raw.startswith("[") or raw.endswith("]"):
        inner = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else ""
        ip = strict_ip(inner)
        if ip is None or (isinstance(ipaddress.ip_address(inner), ipaddress.IPv4Address)):
            raise ValueError("brackets hold only an IPv6 address")
        return str(ip)
    ip = strict_ip(raw)
    if ip is not None:
        return str(ip)
    name = raw
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True, std3_rules=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise ValueError(f"not a valid internationalised hostname ({exc})") from None
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        raise ValueError("a hostname has 1 to 253 characters")
    for label in name.split("."):
        if not label or len(label) > 63 or not set(label) <= _LDH or label[0] == "-" or label[-1] == "-":
            raise ValueError(f"label {label!r} is not 1-63 letters, digits or inner hyphens")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise ValueError(f"label {label!r} is not valid punycode ({exc})") from None
    if _numeric_looking(name):
        raise ValueError("looks like an IP address in a non-standard notation; write it as a.b.c.d")
    return name


@dataclass(frozen=True)
class NormalUrl:
    """An http(s) URL as scope sees it: canonical host, explicit port, every reading of its path."""

    scheme: str
    host: str
    port: int
    raw_paths: frozenset[str]  # readings with percent-encoding left alone
    decoded_paths: frozenset[str]  # readings after percent-decoding

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def parse_url(url: str) -> NormalUrl:
    """ValueError(reason) unless `url` is an http(s) URL whose every part is unambiguous."""
    if not isinstance(url, str) or not url:
        raise ValueError("empty URL")
    bad = _unsafe_char(url)
    if bad is not None:
        raise ValueError(f"URL contains a control or whitespace character ({bad!a})")
    if "\\" in url:
        raise ValueError("URL contains a backslash (read as '/' by some clients and servers)")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{scheme or 'no'} scheme; only http and https")
    authority = parts.netloc.rpartition("@")[2]  # userinfo is not where the request goes
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep:
            raise ValueError("unclosed '[' in the host")
        host = f"[{host}]"
        if rest and not rest.startswith(":"):
            raise ValueError("garbage after the IPv6 address")
        port_text = rest[1:]
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        raise ValueError("no host")
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    else:
        port = _DEFAULT_PORTS[scheme]
    raw_paths, decoded_paths = path_readings(parts.path or "/")
    return NormalUrl(scheme, canonical_host(host), port, raw_paths, decoded_paths)


def path_readings(path: str) -> tuple[frozenset[str], frozenset[str]]:
    """Every way a server may read `path`, dot segments removed: (raw readings, decoded readings).

    Percent-decoding is repeated (double encoding) up to a bound; invalid UTF-8 after
    decoding (overlong `%c0%ae`) and decoded control characters are refused.
    """
    decoded = path
    for _ in range(_MAX_DECODE_ROUNDS):
        try:
            nxt = unquote(decoded, errors="strict")
        except UnicodeDecodeError:
            raise ValueError("path has percent-encoding that is not valid UTF-8") from None
        if nxt == decoded:
            break
        decoded = nxt
    else:
        raise ValueError(f"path is percent-encoded more than {_MAX_DECODE_ROUNDS - 1} times over")
    # An encoded space is an ordinary path character; a decoded NUL or line break is not.
    bad = next((c for c in decoded if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise ValueError(f"path decodes to a control character ({bad!a})")
    return _variants(path), _variants(decoded.replace("\\", "/"))


def _variants(path: str) -> frozenset[str]:
    if not path.startswith("/"):
        path = "/" + path
    out = set()
    for params in (False, True):
        for collapse in (False, True):
            segments = path.split("/")[1:]
            if params:  # Tomcat and friends drop ";..." from every segment: /app/..;/admin
                segments = [s.split(";", 1)[0] for s in segments]
            if collapse:  # many servers treat // as /
                segments = [s for i, s in enumerate(segments) if s or i == len(segments) - 1]
            out.add(_remove_dot_segments(segments))
    return frozenset(out)


def _remove_dot_segments(segments: list[str]) -> str:
    """RFC 3986 section 5.2.4 over a path's segments (after the leading slash)."""
    out: list[str] = []
    for seg in segments:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    if segments and segments[-1] in (".", ".."):
        out.append("")  # /app/.. is the directory /, with its slash
    return "/" + "/".join(out)


def _path_within(path: str, prefix: str) -> bool:
    if prefix.endswith("/"):
        return path.startswith(prefix) or path + "/" == prefix
    return path == prefix or path.startswith(prefix + "/")


def _fs_within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


# ======================================================================================
# Rules
# ======================================================================================
@dataclass(frozen=True)
class _UrlPrefix:
    scheme: str
    host: str
    port: int
    raw_path: str
    decoded_path: str

    def covers_all(self, url: NormalUrl) -> bool:
        return (
            url.origin == (self.scheme, self.host, self.port)
            and all(_path_within(p, self.raw_path) for p in url.raw_paths)
            and all(_path_within(p, self.decoded_path) for p in url.decoded_paths)
        )

    def covers_any(self, url: NormalUrl) -> bool:
        return url.origin == (self.scheme, self.host, self.port) and (
            any(_path_within(p, self.raw_path) for p in url.raw_paths)
            or any(_path_within(p, self.decoded_path) for p in url.decoded_paths)
        )


@dataclass
class Rules:
    """One list of scope entries (allow or deny), parsed into canonical forms."""

    hosts: set[str] = field(default_factory=set)
    wildcards: list[str] = field(default_factory=list)  # ".example.com"
    networks: list[IPNetwork] = field(default_factory=list)
    url_prefixes: list[_UrlPrefix] = field(default_factory=list)
    path_prefixes: list[str] = field(default_factory=list)  # as given (absolute) and real

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Rules:
        rules = cls()
        for raw in entries:
            rules._add(raw)
        return rules

    def _add(self, raw: str) -> None:
        entry = raw.strip() if isinstance(raw, str) else ""
        if not entry:
            raise ValueError("empty scope entry")
        bad = _unsafe_char(entry)
        if bad is not None:
            raise ValueError(f"{raw!r} contains a control or whitespace character ({bad!a})")
        if "://" in entry:
            try:
                url = parse_url(entry)
            except ValueError as exc:
                raise ValueError(f"{raw!r} is not a usable http(s) URL prefix: {exc}") from None
            path = urlsplit(entry).path or "/"
            self.url_prefixes.append(
                _UrlPrefix(url.scheme, url.host, url.port, _single(url.raw_paths, path), _single(url.decoded_paths, path))
            )
        elif entry.startswith(("/", "./", "../")) or entry == ".":
            given = os.path.normpath(os.path.abspath(entry))
            self.path_prefixes.extend(dict.fromkeys((given, os.path.realpath(entry), os.path.realpath(given))))
        elif "/" in entry:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as exc:
                raise ValueError(f"{raw!r} is not a valid CIDR: {exc}") from None
        elif entry.startswith("*."):
            try:
                self.wildcards.append("." + canonical_host(entry[2:]))
            except ValueError as exc:
                raise ValueError(f"{raw!r} is not a valid wildcard: {exc}") from None
        else:
            try:
                host = canonical_host(entry)
            except ValueError as exc:
                raise ValueError(f"{raw!r} is not a hostname, IP, CIDR, URL or path prefix: {exc}") from None
            ip = strict_ip(host)
            if ip is not None:
                self.networks.append(ipaddress.ip_network(ip))
            else:
                self.hosts.add(host)

    def has_name(self, name: str) -> bool:
        """`name` (canonical, not an IP) is listed or under a wildcard."""
        return name in self.hosts or any(name.endswith(suffix) for suffix in self.wildcards)

    def has_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)

    def has_host(self, host: str) -> bool:
        """`host` (canonical) is listed by name, or is an IP inside a listed network."""
        ip = strict_ip(host)
        return self.has_ip(ip) if ip is not None else self.has_name(host)

    def has_path(self, *paths: str) -> bool:
        return any(_fs_within(p, prefix) for p in paths for prefix in self.path_prefixes)


def _single(readings: frozenset[str], given: str) -> str:
    """The one normalised path of a prefix; a prefix must not itself be ambiguous."""
    if len(readings) != 1:
        raise ValueError(f"path {given!r} reads differently to different servers (dot segments, '//' or ';')")
    return next(iter(readings))


# ======================================================================================
# The scope
# ======================================================================================
@dataclass(frozen=True)
class Address:
    """A checked address to connect to: the socket family, the sockaddr and its text."""

    family: int
    sockaddr: tuple[Any, ...]

    @property
    def ip(self) -> str:
        return str(self.sockaddr[0])


@dataclass
class Scope:
    """A parsed `scope:` section. Build with `Scope.parse(allow, deny)`; bad entries raise ValueError."""

    allow: Rules = field(default_factory=Rules)
    deny: Rules = field(default_factory=Rules)

    @classmethod
    def parse(cls, allow: Iterable[str], deny: Iterable[str] = ()) -> Scope:
        return cls(allow=Rules.parse(allow), deny=Rules.parse(deny))

    # --- targets ----------------------------------------------------------------------
    def refusal(self, kind: str, value: str) -> str | None:
        """Why a `host`, `url` or `path` target is out of scope, in one phrase; None if it is in."""
        if kind == "host":
            try:
                canon = canonical_host(value)
            except ValueError as exc:
                return f"not a valid host ({exc}), so outside scope.allow"
            if self.deny.has_host(canon):
                return "matches scope.deny"
            return None if self.allow.has_host(canon) else "outside scope.allow"
        if kind == "url":
            try:
                url = parse_url(value)
            except ValueError as exc:
                return f"not a usable http(s) URL ({exc}), so outside scope.allow"
            if self.deny.has_host(url.host) or any(p.covers_any(url) for p in self.deny.url_prefixes):
                return "matches scope.deny"
            if self.allow.has_host(url.host) or any(p.covers_all(url) for p in self.allow.url_prefixes):
                return None
            if any(p.covers_any(url) for p in self.allow.url_prefixes):
                return "outside scope.allow once its path is normalised (dot segments, encoded dots or slashes)"
            return "outside scope.allow"
        if kind == "path":
            if not isinstance(value, str) or not value or any(c in value for c in "\x00\n\r"):
                return "not a usable path, so outside scope.allow"
            given = os.path.normpath(os.path.abspath(value))
            # `a/link/..` is the parent of the link's TARGET to the filesystem, but `a` to
            # a lexical normpath: both readings must be in scope.
            reals = dict.fromkeys((os.path.realpath(value), os.path.realpath(given)))
            if self.deny.has_path(given, *reals):
                return "matches scope.deny"
            outside = [real for real in reals if not self.allow.has_path(real)]
            if not outside:
                return None
            if outside[0] != given:
                return f"leads (symlinks followed) to {outside[0]}, outside scope.allow"
            return "outside scope.allow"
        raise ValueError(f"unknown target kind {kind!r}")

    def permits_host(self, host: str) -> bool:
        return self.refusal("host", host) is None

    def permits_url(self, url: str) -> bool:
        return self.refusal("url", url) is None

    def permits_path(self, path: str) -> bool:
        """`path` with its symlinks followed is allowed, and neither it nor its given form is denied."""
        return self.refusal("path", path) is None

    # --- connections ------------------------------------------------------------------
    def permits_address(self, ip: IPAddress | str, *, via: str | None = None) -> bool:
        """May a tool connect to `ip`, reached through the (allowed) name `via` if given?"""
        address = strict_ip(ip) if isinstance(ip, str) else ip
        if address is None:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if self.deny.has_ip(address):
            return False
        if self.allow.has_ip(address) or any(p.host == str(address) for p in self.allow.url_prefixes):
            return True
        if via is None or not self._name_allowed(via):
            return False
        if address.is_global:
            return True
        # RFC 6761: localhost names are loopback by definition; any other name that lands
        # on a non-public address needs that address allowed explicitly.
        return address.is_loopback and (via == "localhost" or via.endswith(".localhost"))

    def _name_allowed(self, name: str) -> bool:
        if self.deny.has_name(name):
            return False
        return self.allow.has_name(name) or any(p.host == name for p in self.allow.url_prefixes)

    async def connect_address(self, host: str, port: int = 0, *, resolver: Resolver | None = None) -> Address:
        """Resolve `host` once and return an address in scope to connect to (IPv4 first).

        Raises `ScopeViolation` when the host is not a canonical host, is not in scope, or
        none of its addresses is (`socket.gaierror` when the name does not resolve).
        Connect to the returned address, never to the name again.
        """
        try:
            canon = canonical_host(host)
        except ValueError as exc:
            raise ScopeViolation(f"host {host!r} refused before connecting: {exc}") from None
        ip = strict_ip(canon)
        if ip is not None:
            if not self.permits_address(ip):
                raise ScopeViolation(f"address {canon} is outside the scope (or denied); not connecting")
            return _address_of(ip, port)
        if not self._name_allowed(canon):
            raise ScopeViolation(f"host {canon} is outside the scope (or denied); not connecting")
        if canon == "invalid" or canon.endswith(".invalid"):
            # RFC 6761 section 6.4: never resolves, so no query leaves this machine.
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        infos = await (resolver or _getaddrinfo)(canon, port)
        answers = [info[4] for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        permitted = [a for a in answers if self.permits_address(str(a[0]), via=canon)]
        if not permitted:
            shown = ", ".join(sorted({str(a[0]) for a in answers}))
            raise ScopeViolation(
                f"host {canon} resolves to {shown}, outside the scope (denied, or not public and not allowed by an"
                " IP/CIDR entry of scope.allow); not connecting"
            )
        chosen = next((a for a in permitted if strict_ip(str(a[0])) and ":" not in str(a[0])), permitted[0])
        checked = strict_ip(str(chosen[0]))
        assert checked is not None
        return _address_of(checked, port)

    # --- source trees -------------------------------------------------------------------
    def escaping_links(self, root: str, stop: threading.Event | None = None) -> list[str]:
        """Absolute paths of the symlinks under `root` whose target leaves `root` or the scope.

        Path scanners exclude them: a link inside an allowed tree must not lead a scanner
        to read (and quote in findings) a file outside it. Links are not followed while
        walking, so a linked directory is reported once and never entered.

        Blocking (a walk of the whole tree): scanners run it off the event loop, and set
        `stop` when their activity is cancelled; the walk then ends at the next directory
        with `WalkStopped`.
        """
        root = os.path.realpath(root)
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            if stop is not None and stop.is_set():
                raise WalkStopped(root)
            for name in (*dirnames, *filenames):
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    continue
                try:
                    real = os.path.realpath(path)
                except (RecursionError, OSError):
                    # A chain of links longer than realpath can follow: the kernel will
                    # not follow it either, and nobody can say where it leads. Excluded.
                    found.append(path)
                    continue
                if not _fs_within(real, root) or not self.permits_path(path):
                    found.append(path)
        return sorted(found)


class WalkStopped(Exception):
    """Raised inside a walk whose activity was cancelled: nobody waits for its answer."""


def _address_of(ip: IPAddress, port: int) -> Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return Address(socket.AF_INET6, (str(ip), port, 0, 0))
    return Address(socket.AF_INET, (str(ip), port))


async def _getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
