"""The OSV stand-in as a degraded dependency: random 5xx at a seeded rate, and counts.

`FlakyOsv` is `tests.osv_standin.OsvStandin` (same wire format, same advisories) that also
answers `error_status` to a share `error_rate` of requests, drawn from `random.Random(seed)`
in the order requests arrive (scripted faults still come first). `error_rate` may be
changed while it runs: 1.0 is a dead dependency, 0.0 a healthy one again. It records what
the dependency felt: every request's arrival time (`times`), every TCP connection
accepted (`connections`), and how many answers were injected errors (`injected`).

Used by tests/test_degraded_dependency.py and bench/degraded_dependency.py. Loopback only.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from typing import Any

from tests.osv_standin import Fault, OsvStandin, Request

__all__ = ["FlakyOsv", "vulnerable_and_clean_pins"]

# Ten pinned packages: five with advisories among the shipped fixtures, five without.
TEN_PINS = [
    ("Jinja2", "2.10"),
    ("PyYAML", "5.3"),
    ("requests", "2.19.0"),
    ("urllib3", "1.24.1"),
    ("click", "8.1.7"),
    ("six", "1.16.0"),
    ("idna", "3.7"),
    ("certifi", "2024.2.2"),
    ("attrs", "23.2.0"),
    ("packaging", "24.0"),
]


def vulnerable_and_clean_pins() -> str:
    """A requirements.txt pinning the ten packages (one per line)."""
    return "".join(f"{name}=={version}\n" for name, version in TEN_PINS)


@dataclass
class FlakyOsv(OsvStandin):
    error_rate: float = 0.0
    seed: int = 0
    error_status: int = 503

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.times: list[float] = []
        self.connections: list[float] = []
        self.injected = 0
        super().__post_init__()
        serve_connection = self.httpd.finish_request

        def counted(request: Any, client_address: Any) -> None:  # one call per accepted connection
            with self._lock:
                self.connections.append(time.monotonic())
            serve_connection(request, client_address)

        self.httpd.finish_request = counted  # type: ignore[method-assign]
        report = self.httpd.handle_error

        def quiet(request: Any, client_address: Any) -> None:
            # A client that gave up on a connection (closed it with an answer unread) is
            # part of the scenario, not a stand-in error worth a traceback.
            if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                report(request, client_address)

        self.httpd.handle_error = quiet  # type: ignore[method-assign]

    def _log(self, request: Request) -> None:
        with self._lock:
            self.times.append(time.monotonic())
        super()._log(request)

    def _next_fault(self, endpoint: str) -> Fault | None:
        scripted = super()._next_fault(endpoint)
        if scripted is not None:
            return scripted
        with self._lock:
            if self.rng.random() < self.error_rate:
                self.injected += 1
                return Fault(self.error_status, body={"code": 14, "message": "injected: dependency degraded"})
        return None

    def expected(self, pins: list[tuple[str, str]] = TEN_PINS) -> set[tuple[str, str]]:
        """Ground truth for `vulnerable_and_clean_pins()`: (advisory id, location) of every
        finding the stand-in's data implies (one per affected pin and advisory)."""
        return {
            (record["id"], f"requirements.txt:{line}")
            for line, (name, version) in enumerate(pins, start=1)
            for record in self.matching(name, version)
        }

    def requests_between(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for t in self.times if start <= t < end)

    def connections_between(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for t in self.connections if start <= t < end)
