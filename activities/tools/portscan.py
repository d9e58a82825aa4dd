"""An asyncio TCP connect scan with a resumable watermark.

Plain async Python: no Temporal here. The activity that wraps `scan_ports` heartbeats the
`PortscanProgress` it receives through `on_progress` and passes the last one back as
`resume` on the next attempt, so a scan interrupted by a worker crash picks up where it
stopped instead of starting over.

Probes run concurrently and finish out of order, so progress is a *watermark*: every port
at an index below `next_index` has been fully probed, and `open_ports` holds only the open
ports below it. A port found open above the watermark is kept back until the watermark
passes it; if the scan dies first, the resumed scan probes that port again. Nothing is
counted twice and nothing is lost.

Scope is the caller's job: `scan_ports` connects to whatever `host` it is given. The
activity (activities/scanning.py) gives it the address `Scope.connect_address` checked.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import deque
from collections.abc import Callable, Iterable

from pydantic import BaseModel, Field

from secflow.errors import InvalidInputError
from secflow.findings import Confidence, Finding, Severity
from secflow.tools import parse_port_spec

TOOL = "portscan"

# Outcomes of a single connect that say something about *that port* only. Anything else
# (EMFILE, ENFILE, ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL, ...) says the scan as a whole
# cannot go on, and is raised for the caller to classify.
_PORT_NOT_OPEN_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,  # closed: the host answered with a RST
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,  # filtered: the kernel gave up before our own timeout
    }
)


class PortscanProgress(BaseModel):
    """Heartbeat and checkpoint payload of a scan: small and JSON-serialisable.

    `next_index` is a watermark into the scanned port list: every port with a lower index
    has been fully probed. `open_ports` are the open ports below the watermark, no others.
    """

    next_index: int = Field(0, ge=0)
    open_ports: list[int] = Field(default_factory=list)


def parse_ports(spec: str) -> list[int]:
    """`"8000-8100"`, `"22,80,443"`, `"1-1024,8080"` -> sorted, de-duplicated ports.

    Raises `InvalidInputError` saying what is wrong: garbage, 0 or >65535, a reversed
    range, an empty list. Same rules as the spec validator, which uses the same parser.
    """
    try:
        return parse_port_spec(spec)
    except ValueError as exc:
        raise InvalidInputError(f"invalid port list: {exc}") from None


async def scan_ports(
    host: str,
    ports: list[int],
    *,
    rate: float = 200.0,
    connect_timeout: float = 1.0,
    concurrency: int = 100,
    resume: PortscanProgress | None = None,
    on_progress: Callable[[PortscanProgress], None] | None = None,
    progress_interval: float = 0.5,
) -> PortscanProgress:
    """TCP connect scan of `ports` on `host`; returns the final progress (all probed).

    A port is open when the connect succeeds (the connection is closed at once), closed on
    ECONNREFUSED, filtered on timeout. At most `rate` probes start per second (token
    bucket; bursts of at most max(1, rate/50)) and at most `concurrency` are in flight.

    `on_progress` is called at least every `progress_interval` seconds while the scan runs,
    once at the end, and once more before an error that stops the scan is raised, so the
    last checkpoint is as fresh as it can be.

    Errors that stop the scan (a name that does not resolve, EMFILE/ENFILE, the host or
    network unreachable, ...) are raised as the original `OSError` after the in-flight
    probes are cancelled. Cancellation cancels the in-flight probes and propagates.
    """
    _check_arguments(ports, rate, connect_timeout, concurrency, progress_interval, resume)
    watermark = resume.next_index if resume else 0
    confirmed_open: list[int] = list(resume.open_ports) if resume else []

    def snapshot() -> PortscanProgress:
        return PortscanProgress(next_index=watermark, open_ports=sorted(set(confirmed_open)))

    def report() -> None:
        if on_progress is not None:
            on_progress(snapshot())

    if watermark >= len(ports):
        report()
        return snapshot()

    loop = asyncio.get_running_loop()
    family, sockaddr = await _resolve(host)

    finished = bytearray(len(ports))
    found_open: set[int] = set()  # indices found open, above or below the watermark
    inflight: dict[asyncio.Task[bool], int] = {}  # probe -> index of its port
    completed: deque[asyncio.Task[bool]] = deque()
    wake = asyncio.Event()
    pacer = _TokenBucket(rate, burst=max(1.0, rate / 50), now=loop.time())
    next_to_start = watermark
    progress_due = loop.time() + progress_interval

    def on_probe_done(task: asyncio.Task[bool]) -> None:
        completed.append(task)
        wake.set()

    try:
        while True:
            now = loop.time()
            while next_to_start < len(ports) and len(inflight) < concurrency and pacer.take(now):
                port = ports[next_to_start]
                task = loop.create_task(
                    _probe(family, _with_port(sockaddr, port), connect_timeout),
                    name=f"portscan-probe-{host}:{port}",
                )
                task.add_done_callback(on_probe_done)
                inflight[task] = next_to_start
                next_to_start += 1

            stop_error: BaseException | None = None
            while completed:
                task = completed.popleft()
                index = inflight.pop(task)
                error = task.exception()
                if error is not None:
                    stop_error = stop_error or error
                    continue
                finished[index] = 1
                if task.result():
                    found_open.add(index)
            while watermark < len(ports) and finished[watermark]:
                if watermark in found_open:
                    confirmed_open.append(ports[watermark])
                watermark += 1
            if stop_error is not None:
                # The scan cannot go on (see _PORT_NOT_OPEN_ERRNOS): checkpoint what is
                # done, then the handler below cancels the rest before it propagates.
                report()
                raise stop_error

            if watermark >= len(ports):
                break
            if now >= progress_due:
                report()
                progress_due = now + progress_interval

            deadline = progress_due
            if next_to_start < len(ports) and len(inflight) < concurrency:
                deadline = min(deadline, pacer.ready_at())
            wake.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await wake.wait()
            except TimeoutError:
                continue  # time to start a probe or to report progress
    except BaseException:
        # Cancellation, a probe error that stops the scan, or a failing on_progress:
        # cancel what is in flight and wait for it, so no probe or socket outlives us.
        await _cancel_all(inflight)
        raise

    report()
    return snapshot()


def port_findings(host: str, open_ports: Iterable[int]) -> list[Finding]:
    """One informational finding per open port, fingerprinted by host and port."""
    shown_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    findings = []
    for port in sorted(set(open_ports)):
        service = _service_name(port)
        title = f"Open TCP port {port}" + (f" ({service})" if service else "")
        findings.append(
            Finding.new(
                tool=TOOL,
                rule_id="open-port",
                title=title,
                severity=Severity.INFO,
                confidence=Confidence.HIGH,
                target=host,
                location=f"{shown_host}:{port}",
                evidence=f"TCP connect to {shown_host}:{port} succeeded",
            )
        )
    return findings


class _TokenBucket:
    """Start pacing: `rate` tokens a second, at most `burst` saved up, one per probe."""

    def __init__(self, rate: float, *, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = 1.0  # the first probe starts at once
        self._stamp = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def ready_at(self) -> float:
        return self._stamp + max(0.0, 1.0 - self._tokens) / self._rate


async def _probe(family: int, sockaddr: tuple, timeout: float) -> bool:
    """True when a TCP connect succeeds; False when the port is closed or filtered."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, sockaddr)
        return True
    except TimeoutError:
        return False  # filtered: nothing answered in time
    except OSError as exc:
        if exc.errno in _PORT_NOT_OPEN_ERRNOS:
            return False
        raise
    finally:
        sock.close()


async def _cancel_all(tasks: dict[asyncio.Task[bool], int]) -> None:
    for task in tasks:
        task.cancel()
    # Wait for them so every socket is closed before we return or raise. Their outcomes
    # no longer matter: the scan is stopping and the error that stopped it propagates.
    await asyncio.gather(*tasks, return_exceptions=True)
    tasks.clear()


async def _resolve(host: str) -> tuple[int, tuple]:
    """Resolve once per scan (not per probe); prefer IPv4 like nmap does."""
    name = host.strip().strip("[]")
    if name.lower().rstrip(".").endswith(".invalid") or name.lower().rstrip(".") == "invalid":
        # RFC 6761 section 6.4: ".invalid" never resolves, so answer without asking a
        # resolver (which would send a query off this machine).
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    if not infos:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    family, _, _, _, sockaddr = next((info for info in infos if info[0] == socket.AF_INET), infos[0])
    return family, sockaddr


def _with_port(sockaddr: tuple, port: int) -> tuple:
    return (sockaddr[0], port, *sockaddr[2:])


def _service_name(port: int) -> str | None:
    try:
        return socket.getservbyport(port, "tcp")
    except OSError:
        return None


def _check_arguments(
    ports: list[int],
    rate: float,
    connect_timeout: float,
    concurrency: int,
    progress_interval: float,
    resume: PortscanProgress | None,
) -> None:
    bad_ports = [p for p in ports if not isinstance(p, int) or not 1 <= p <= 65535]
    if bad_ports:
        raise InvalidInputError(f"ports must be between 1 and 65535, got {bad_ports[:5]}")
    if not rate > 0:
        raise InvalidInputError(f"rate must be > 0 probes per second, got {rate}")
    if not connect_timeout > 0:
        raise InvalidInputError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")
    if concurrency < 1:
        raise InvalidInputError(f"concurrency must be >= 1, got {concurrency}")
    if not progress_interval > 0:
        raise InvalidInputError(f"progress_interval must be > 0 seconds, got {progress_interval}")
    if resume is not None and resume.next_index > len(ports):
        raise InvalidInputError(f"resume.next_index {resume.next_index} is beyond the {len(ports)} ports being scanned")
