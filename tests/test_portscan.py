"""The TCP connect scan against real sockets on 127.0.0.1 (no mocks, nothing beyond loopback)."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
from collections.abc import Iterator

import pytest

from activities.tools.portscan import PortscanProgress, parse_ports, port_findings, scan_ports
from examples.demo_target import start_demo_target
from secflow.errors import InvalidInputError
from secflow.findings import Confidence, Severity

HOST = "127.0.0.1"


class Listener:
    """An open port that counts the connections it accepts."""

    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> "Listener":
        self.server = await asyncio.start_server(self._on_connect, HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def open_listeners(count: int) -> list[Listener]:
    return [await Listener().start() for _ in range(count)]


async def stop_all(listeners: list[Listener]) -> None:
    for listener in listeners:
        await listener.stop()


@pytest.fixture
def closed_ports() -> Iterator[list[int]]:
    """Ports that are bound but not listening: connects are refused, and nobody else can take them."""
    socks = []
    for _ in range(20):
        sock = socket.socket()
        sock.bind((HOST, 0))
        socks.append(sock)
    yield [s.getsockname()[1] for s in socks]
    for sock in socks:
        sock.close()


def blackhole() -> tuple[socket.socket, socket.socket]:
    """A listening port whose accept queue is full: further SYNs are dropped, connects hang."""
    server = socket.socket()
    server.bind((HOST, 0))
    server.listen(0)
    filler = socket.socket()
    filler.connect(server.getsockname())  # takes the one slot a backlog of 0 allows
    return server, filler


def probe_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("portscan-probe-") and not t.done()]


async def wait_for(predicate, what: str, limit: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        assert loop.time() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


# --- parse_ports --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("8000-8003", [8000, 8001, 8002, 8003]),
        ("22,80,443", [22, 80, 443]),
        ("443, 22 ,80,22", [22, 80, 443]),
        ("1-3,2-4,8080", [1, 2, 3, 4, 8080]),
        ("65535", [65535]),
        ("7-7", [7]),
    ],
)
def test_parse_ports_accepts_lists_and_ranges(spec: str, expected: list[int]) -> None:
    assert parse_ports(spec) == expected


def test_parse_ports_full_range() -> None:
    assert parse_ports("1-1024,8080")[-2:] == [1024, 8080]
    assert len(parse_ports("1-65535")) == 65535


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("http", "not a port"),
        ("80,,443", "empty item"),
        ("80,", "empty item"),
        ("0", "between 1 and 65535"),
        ("65536", "between 1 and 65535"),
        ("1-70000", "between 1 and 65535"),
        ("100-10", "below its start"),
        ("-5", "not a port"),
        ("1-2-3", "not a port"),
        ("80;443", "not a port"),
    ],
)
def test_parse_ports_rejects_garbage_with_a_reason(spec: str, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        parse_ports(spec)


# --- scanning -----------------------------------------------------------------------------


async def test_finds_exactly_the_open_ports(closed_ports: list[int]) -> None:
    listeners = await open_listeners(5)
    try:
        ports = sorted(closed_ports + [l.port for l in listeners])
        result = await scan_ports(HOST, ports, rate=5000, concurrency=50, connect_timeout=2.0)
    finally:
        await stop_all(listeners)
    assert result.next_index == len(ports)
    assert result.open_ports == sorted(l.port for l in listeners)


async def test_empty_port_list_reports_once_and_returns() -> None:
    seen: list[PortscanProgress] = []
    result = await scan_ports(HOST, [], on_progress=seen.append)
    assert result == PortscanProgress(next_index=0, open_ports=[])
    assert seen == [result]


async def test_scan_of_the_demo_target_finds_its_ports() -> None:
    target = start_demo_target(HOST, 0, [0, 0])
    try:
        expected = sorted([target.port, *target.extra_ports])
        result = await scan_ports(HOST, expected, rate=1000)
    finally:
        target.stop()
    assert result.open_ports == expected


async def test_resume_skips_the_probed_ports_and_keeps_their_results(closed_ports: list[int]) -> None:
    listeners = await open_listeners(6)
    try:
        ports = sorted(closed_ports + [l.port for l in listeners])
        index_of = {port: i for i, port in enumerate(ports)}
        mid = index_of[sorted(l.port for l in listeners)[3]]  # three open ports lie below
        below = [l for l in listeners if index_of[l.port] < mid]
        above = [l for l in listeners if index_of[l.port] >= mid]
        checkpoint = PortscanProgress(next_index=mid, open_ports=sorted(l.port for l in below))
        seen: list[PortscanProgress] = []

        result = await scan_ports(HOST, ports, rate=5000, resume=checkpoint, on_progress=seen.append)

        await wait_for(lambda: all(l.accepted for l in above), "the probes above the watermark")
        await asyncio.sleep(0.05)  # a stray probe below the watermark would have landed by now
        assert [l.accepted for l in below] == [0, 0, 0]  # not probed again
        assert [l.accepted for l in above] == [1, 1, 1]  # each probed exactly once
    finally:
        await stop_all(listeners)
    assert result.next_index == len(ports)
    assert result.open_ports == sorted(l.port for l in listeners)  # nothing lost, nothing twice
    assert all(p.next_index >= mid for p in seen)


async def test_resume_of_a_finished_scan_probes_nothing() -> None:
    done = PortscanProgress(next_index=3, open_ports=[2])
    assert await scan_ports("nonexistent.invalid", [1, 2, 3], resume=done) == done


async def test_resume_beyond_the_port_list_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="next_index"):
        await scan_ports(HOST, [1, 2], resume=PortscanProgress(next_index=3))


async def test_watermark_waits_for_a_slow_probe_and_never_claims_unprobed_ports(closed_ports: list[int]) -> None:
    # A port whose connect hangs until the timeout holds the watermark back while faster
    # probes of higher ports finish: progress must not claim those ports yet.
    hang_server, hang_filler = blackhole()
    listeners = await open_listeners(4)
    try:
        slow_port = hang_server.getsockname()[1]
        ports = [closed_ports[0], closed_ports[1], slow_port, *(l.port for l in listeners), *closed_ports[2:]]
        slow_index = 2
        truly_open = {l.port for l in listeners}
        after_slow = listeners[0]  # found open at once, above the held watermark
        seen: list[tuple[PortscanProgress, int]] = []

        def on_progress(progress: PortscanProgress) -> None:
            seen.append((progress.model_copy(deep=True), after_slow.accepted))

        result = await scan_ports(
            HOST, ports, rate=5000, connect_timeout=1.0, progress_interval=0.05, on_progress=on_progress
        )
    finally:
        await stop_all(listeners)
        hang_filler.close()
        hang_server.close()

    marks = [p.next_index for p, _ in seen]
    assert marks == sorted(marks), "the watermark went backwards"
    for progress, _ in seen:
        probed = ports[: progress.next_index]
        assert progress.open_ports == sorted(truly_open & set(probed))
    held = [(p, accepted) for p, accepted in seen if p.next_index == slow_index]
    assert any(accepted for _, accepted in held), "no report while the slow probe held the watermark"
    assert seen[-1][0] == result
    assert result.next_index == len(ports)
    assert result.open_ports == sorted(truly_open)  # the hanging port counts as filtered
    PortscanProgress.model_validate_json(result.model_dump_json())  # heartbeat-safe


async def test_unresolvable_host_raises_the_os_error() -> None:
    with pytest.raises(socket.gaierror):
        await scan_ports("nonexistent.invalid", [80, 443])
    assert probe_tasks() == []


async def test_cancellation_cancels_probes_and_propagates() -> None:
    holes = [blackhole() for _ in range(3)]
    try:
        ports = sorted(server.getsockname()[1] for server, _ in holes)
        scan = asyncio.create_task(scan_ports(HOST, ports, rate=1000, connect_timeout=60.0))
        await wait_for(lambda: len(probe_tasks()) == 3, "three probes in flight")
        scan.cancel()
        with pytest.raises(asyncio.CancelledError):
            await scan
        assert probe_tasks() == []
    finally:
        for server, filler in holes:
            filler.close()
            server.close()


async def test_too_many_open_files_stops_the_scan_with_the_os_error() -> None:
    holes = [blackhole() for _ in range(30)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = {int(fd) for fd in os.listdir("/proc/self/fd")}
    # Room for five new descriptors, far fewer than the probes that will hang. Descriptors
    # already open above the limit stay usable; only new ones must fit below it.
    limit = next(n for n in range(soft) if n - sum(fd < n for fd in in_use) >= 5)
    seen: list[PortscanProgress] = []
    try:
        ports = sorted(server.getsockname()[1] for server, _ in holes)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            with pytest.raises(OSError) as raised:
                await scan_ports(HOST, ports, rate=10000, concurrency=30, connect_timeout=60.0, on_progress=seen.append)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert raised.value.errno == errno.EMFILE
        assert probe_tasks() == []
        assert seen and seen[-1].next_index == 0  # a last checkpoint, claiming nothing
    finally:
        for server, filler in holes:
            filler.close()
            server.close()


async def test_bad_arguments_are_rejected_before_any_probe() -> None:
    with pytest.raises(InvalidInputError, match="between 1 and 65535"):
        await scan_ports(HOST, [0, 80])
    with pytest.raises(InvalidInputError, match="rate"):
        await scan_ports(HOST, [80], rate=0)
    with pytest.raises(InvalidInputError, match="concurrency"):
        await scan_ports(HOST, [80], concurrency=0)


# --- findings -----------------------------------------------------------------------------


def test_one_stable_finding_per_open_port() -> None:
    findings = port_findings("127.0.0.1", [8089, 22, 8089, 51234])
    assert [f.location for f in findings] == ["127.0.0.1:22", "127.0.0.1:8089", "127.0.0.1:51234"]
    assert {f.rule_id for f in findings} == {"open-port"}
    assert all(f.tool == "portscan" and f.target == "127.0.0.1" for f in findings)
    assert all(f.severity is Severity.INFO and f.confidence is Confidence.HIGH for f in findings)
    known = socket.getservbyport(22, "tcp")
    assert findings[0].title == f"Open TCP port 22 ({known})"
    assert findings[2].title == "Open TCP port 51234"  # no service name to guess
    again = port_findings("127.0.0.1", [22])
    assert again[0].fingerprint == findings[0].fingerprint
    assert port_findings("::1", [80])[0].location == "[::1]:80"
