"""Scope is law: the one place that decides whether a host, URL or path may be touched.

`scope.allow` entries may be:
- a hostname (`localhost`, `app.example.com`) or a wildcard (`*.example.com`),
- an IP address (`127.0.0.1`, `::1`) or a CIDR (`10.0.0.0/8`),
- a URL prefix (`http://127.0.0.1:8089/app/`): scheme, host and port must be equal and the
  path must start with the prefix's path (compared after parsing, so
  `http://127.0.0.1:8089.evil.com/` does not pass as `http://127.0.0.1:8089`),
- a path prefix (`/srv/repos/`, `./examples/`): for `path:` targets.

Names are never resolved through DNS here: a name is in scope because it is listed,
not because of what it resolves to today.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _as_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True)
class _UrlPrefix:
    scheme: str
    host: str
    port: int
    path: str


@dataclass
class Scope:
    """A parsed allow-list. Build with `Scope.parse(entries)`; malformed entries raise ValueError."""

    hosts: set[str] = field(default_factory=set)
    wildcards: list[str] = field(default_factory=list)
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    url_prefixes: list[_UrlPrefix] = field(default_factory=list)
    path_prefixes: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, entries: list[str]) -> Scope:
        scope = cls()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                raise ValueError("empty scope entry")
            if "://" in entry:
                parts = urlsplit(entry)
                if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
                    raise ValueError(f"{raw!r} is not an http(s) URL prefix")
                scope.url_prefixes.append(
                    _UrlPrefix(
                        scheme=parts.scheme,
                        host=parts.hostname.lower(),
                        port=parts.port or _DEFAULT_PORTS[parts.scheme],
                        path=parts.path or "/",
                    )
                )
            elif entry.startswith(("/", "./", "../")) or entry == ".":
                scope.path_prefixes.append(os.path.normpath(os.path.abspath(entry)))
            elif "/" in entry:
                try:
                    scope.networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError as exc:
                    raise ValueError(f"{raw!r} is not a valid CIDR: {exc}") from None
            elif entry.startswith("*."):
                scope.wildcards.append(entry[1:].lower())
            elif _as_ip(entry) is not None:
                net = ipaddress.ip_network(entry.strip("[]"))
                scope.networks.append(net)
            else:
                if not _valid_hostname(entry):
                    raise ValueError(f"{raw!r} is not a hostname, IP, CIDR, URL or path prefix")
                scope.hosts.add(entry.lower().rstrip("."))
        return scope

    def permits_host(self, host: str) -> bool:
        host = host.strip().lower().rstrip(".")
        ip = _as_ip(host)
        if ip is not None:
            return any(ip in net for net in self.networks)
        if host in self.hosts:
            return True
        return any(host.endswith(suffix) for suffix in self.wildcards)

    def permits_url(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            return False
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            return False
        if self.permits_host(parts.hostname):
            return True
        path = parts.path or "/"
        return any(
            p.scheme == parts.scheme and p.host == parts.hostname.lower() and p.port == port and _path_within(path, p.path)
            for p in self.url_prefixes
        )

    def permits_path(self, path: str) -> bool:
        real = os.path.normpath(os.path.abspath(path))
        return any(real == prefix or real.startswith(prefix.rstrip("/") + "/") for prefix in self.path_prefixes)


def _path_within(path: str, prefix: str) -> bool:
    if prefix.endswith("/"):
        return path.startswith(prefix) or path + "/" == prefix
    return path == prefix or path.startswith(prefix + "/")


def _valid_hostname(name: str) -> bool:
    name = name.rstrip(".")
    if not name or len(name) > 253:
        return False
    for label in name.split("."):
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-"):
            return False
        if not all(c.isalnum() or c == "-" for c in label):
            return False
    return True
