"""nmap: service/version detection of one host, as a SecFlow tool.

What runs: ``nmap -sT -sV -Pn -n --unprivileged -oX - -p <ports> -T<n> --host-timeout <s>
[-6] -- <host>``. A TCP connect scan (no raw sockets, so no root needed and nothing odd on
the wire), version probes on open ports, XML on stdout, no reverse DNS, and the target as
ONE argv element after ``--``: it can never be read as an option. Before that, the host is
checked to be an IP address or a hostname (letters, digits, dots, hyphens, no leading
hyphen): a target such as ``-oN /tmp/x`` or ``127.0.0.1; rm -rf /`` is refused as an
injection attempt (security) before any process starts. A name is then resolved once
and its address checked against the scope (`Scope.connect_address`); nmap is given that
address, so it scans exactly what was checked. ``--max-rate`` and ``-p`` carry the stage's
``limits`` (secflow/engagement.py). The port list is re-written in a
canonical form from `parse_port_spec`, so only digits, commas and hyphens reach ``-p``.

Findings: one per open port, rule ``open-port``, location ``host:port`` (``[v6]:port``),
with the service name, product and version nmap identified in the title and evidence.
The fingerprint includes the tool, so nmap's and portscan's findings of the same port are
distinct rows (a fallback from nmap to portscan does not overwrite anything).

Chunks and resume: the port list (sorted) is scanned in chunks of ``chunk_ports`` ports,
one nmap run each. After each run its findings are stored, then a checkpoint is
heartbeated: the port-list digest, a watermark (every port below ``next_index`` is
scanned) and the fingerprints of the findings so far. A retried attempt (the worker was
SIGKILLed, or the server restarted and the attempt's heartbeat timed out) reads its
earlier findings back from the store and starts at the first unscanned chunk, so a crash
costs at most the chunk in flight. The same checkpoint is also written to this host's data
directory (`LocalCheckpoint`): a heartbeat the server never got (the SDK throttles them to
one per 0.8 x the heartbeat timeout; a server restart drops them) does not cost a chunk
when the retry runs on a worker sharing that directory. Findings are upserted by fingerprint,
so a chunk scanned twice never duplicates one. ``timeout`` bounds all runs of an attempt;
``--host-timeout`` each run. A target is always ONE host (the workflow fans a stage out
per target), so there is no host dimension to chunk here.

Failures: nmap not installed -> `PermanentError` from `run_process` (a stage with
``on_failure: fallback, fallback_tool: portscan`` degrades to the built-in scan); a crash or
unusable XML (truncated, not nmap's, ``exit="error"``) -> `ExternalToolError` with the
output tails; a hang past ``timeout`` -> transient (the process group is killed); a host
that exceeds ``--host-timeout`` -> transient.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import json
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from temporalio import activity

from activities.process import run_process, tail
from activities.runner import ToolContext, ToolOutput, run_tool
from activities.scanners.offload import off_loop
from secflow.errors import (
    Category,
    ExternalToolError,
    InvalidInputError,
    PermanentError,
    SecFlowError,
    TransientError,
    classify,
)
from secflow.findings import Confidence, Finding, Severity
from secflow.models import StageTaskInput, StageTaskResult
from secflow.settings import ensure_private_dir
from secflow.store import DATA_DIR_ENV
from secflow.tools import NmapOptions, parse_port_spec

TOOL = "nmap"
RULE_OPEN_PORT = "open-port"

# What may never appear in a host handed to a scanner's command line.
_SUSPICIOUS = re.compile(r"[\s;|&$`<>(){}\\'\"*?!#~=,]")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class ArgumentInjection(SecFlowError):
    """A value about to become a command-line argument looks like an option or a command."""

    category = Category.SECURITY


def validate_host(host: str) -> str:
    """`host` if it is an IP address or a DNS hostname; raise otherwise.

    Something that could be read as an option (leading ``-``) or carries shell/glob
    metacharacters or whitespace is an injection attempt (security); anything else that
    is not a hostname or IP is plain bad input (validation).
    """
    value = host.strip()
    if value != host or not value:
        raise InvalidInputError(f"nmap target {host!r} is not a hostname or IP address")
    if value.startswith("-") or _SUSPICIOUS.search(value):
        raise ArgumentInjection(
            f"nmap target {host!r} looks like an argument injection attempt "
            "(option prefix or shell metacharacters); refused before running anything"
        )
    if value.startswith("[") or value.endswith("]"):
        try:  # a bracketed IPv6 literal, and nothing else
            if value.startswith("[") and value.endswith("]"):
                return str(ipaddress.IPv6Address(value[1:-1]))
        except ValueError:
            pass
        raise InvalidInputError(f"nmap target {host!r} is not a hostname or IP address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value.rstrip(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise InvalidInputError(f"nmap target {host!r} is not a hostname or IP address")
    if re.fullmatch(r"[0-9-]+", name.rsplit(".", 1)[-1]):
        # Not a DNS name (no top-level label is numeric) but nmap's octet-range syntax,
        # e.g. 127.0.0.1-254: it would widen one target into many.
        raise ArgumentInjection(f"nmap target {host!r} is an address range, not one host; refused")
    return name


def port_argument(spec: str | list[int]) -> str:
    """The canonical ``-p`` value for a port spec or list: ``"22, 80-82"`` -> ``"22,80-82"``."""
    ports = parse_port_spec(spec) if isinstance(spec, str) else sorted(set(spec))
    ranges: list[str] = []
    start = prev = ports[0]
    for port in ports[1:] + [None]:
        if port is not None and port == prev + 1:
            prev = port
            continue
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
        if port is not None:
            start = prev = port
    return ",".join(ranges)


def build_argv(host: str, opts: NmapOptions, ports: list[int] | None = None) -> list[str]:
    """nmap's argv for `host`: `ports` (one chunk) when given, else all of ``opts.ports``."""
    host = validate_host(host)
    argv = [
        "nmap",
        "-sT",  # connect scan: unprivileged, a full handshake like any client
        "-sV",
        "--version-intensity",
        str(opts.version_intensity),
        "-n",  # no reverse DNS: nothing but the target is contacted
        "--unprivileged",
        "-oX",
        "-",
        "-p",
        port_argument(ports if ports is not None else opts.ports),
        f"-T{opts.timing}",
        "--host-timeout",
        f"{max(1, int(opts.host_timeout.total_seconds()))}s",
    ]
    if opts.skip_host_discovery:
        argv.append("-Pn")  # the spec named this host: scan it even if it ignores pings
    if opts.max_rate is not None:
        argv += ["--max-rate", f"{opts.max_rate:g}"]
    if ":" in host:
        argv.append("-6")
    argv += ["--", host]
    return argv


@dataclass(frozen=True)
class OpenPort:
    host: str
    port: int
    protocol: str
    service: str
    product: str
    version: str
    extrainfo: str
    method: str
    confidence: int
    reason: str


def parse_nmap_xml(stdout: bytes, *, stderr: bytes = b"") -> list[OpenPort]:
    """Open ports from nmap's ``-oX`` output. Anything unusable raises ExternalToolError."""

    def broken(why: str) -> ExternalToolError:
        return ExternalToolError(f"nmap output unusable: {why}", stdout_tail=tail(stdout), stderr_tail=tail(stderr))

    if not stdout.strip():
        raise broken("no XML on stdout")
    try:
        root = ET.fromstring(stdout)
    except ET.ParseError as exc:
        raise broken(f"malformed or truncated XML ({exc})") from None
    if root.tag != "nmaprun":
        raise broken(f"root element is <{root.tag}>, not <nmaprun>")
    finished = root.find("runstats/finished")
    if finished is None:
        raise broken("no <runstats><finished>: the run did not complete")
    if finished.get("exit") == "error":
        raise broken(f"nmap reported an error: {finished.get('errormsg') or '(no message)'}")
    hosts = root.findall("host")
    if not hosts:
        skipped = root.find("target")
        if skipped is not None and skipped.get("status") == "skipped":
            raise PermanentError(f"nmap skipped the target: {skipped.get('reason') or 'unknown reason'}")
        raise PermanentError(
            "nmap scanned no host: the target did not resolve; stderr: " + (tail(stderr, 500).strip() or "(empty)")
        )
    found: list[OpenPort] = []
    for host in hosts:
        address = host.find("address")
        addr = address.get("addr", "") if address is not None else ""
        if not addr:
            raise broken("a <host> without an address")
        if host.get("timedout") == "true":
            raise TransientError(f"nmap gave up on {addr}: it exceeded --host-timeout")
        for port in host.findall("ports/port"):
            state = port.find("state")
            if state is None or state.get("state") != "open":
                continue
            service = port.find("service")
            svc = service.attrib if service is not None else {}
            try:
                number = int(port.get("portid", ""))
                conf = int(svc.get("conf", "0"))
            except ValueError:
                raise broken(f"unreadable port entry {ET.tostring(port, encoding='unicode')[:200]}") from None
            found.append(
                OpenPort(
                    host=addr,
                    port=number,
                    protocol=port.get("protocol", "tcp"),
                    service=svc.get("name", ""),
                    product=svc.get("product", ""),
                    version=svc.get("version", ""),
                    extrainfo=svc.get("extrainfo", ""),
                    method=svc.get("method", ""),
                    confidence=conf,
                    reason=state.get("reason", ""),
                )
            )
    return found


def port_findings(target: str, ports: list[OpenPort]) -> list[Finding]:
    findings: dict[str, Finding] = {}
    for p in sorted(ports, key=lambda p: (p.host, p.protocol, p.port)):
        shown = f"[{p.host}]" if ":" in p.host else p.host
        software = " ".join(x for x in (p.product, p.version) if x)
        what = p.service or "unknown service"
        if software:
            what += f" ({software}{', ' + p.extrainfo if p.extrainfo else ''})"
        title = f"Open {p.protocol.upper()} port {p.port}: {what}"
        identified = f"identified by {p.method} (confidence {p.confidence}/10)" if p.method else "not identified"
        evidence = (
            f"{p.port}/{p.protocol} open ({p.reason or 'no reason given'}); service={p.service or '?'}"
            f" product={p.product or '?'} version={p.version or '?'}"
            + (f" extrainfo={p.extrainfo}" if p.extrainfo else "")
            + f"; {identified}"
        )
        finding = Finding.new(
            tool=TOOL,
            rule_id=RULE_OPEN_PORT,
            title=title,
            severity=Severity.INFO,
            confidence=Confidence.HIGH,
            target=target,
            location=f"{shown}:{p.port}" if p.protocol == "tcp" else f"{shown}:{p.port}/{p.protocol}",
            evidence=evidence,
        )
        findings[finding.fingerprint] = finding
    return list(findings.values())


class NmapCheckpoint(BaseModel):
    """What an attempt heartbeats after each chunk (under ``"nmap"``); small and JSON."""

    digest: str  # of the canonical port list: a checkpoint of another scan is ignored
    next_index: int = Field(ge=0)  # every port of the sorted list below this is scanned
    chunks_done: int = Field(0, ge=0)
    found: int = Field(0, ge=0)  # findings stored for the ports below next_index
    # Their fingerprints while there are at most LISTED_FINDINGS of them; a host answering
    # on every port (a tarpit) would otherwise make the heartbeat megabytes long.
    fingerprints: list[str] = Field(default_factory=list)


LISTED_FINDINGS = 1000  # about 66 KB of fingerprints in a heartbeat


def _parse(stdout: bytes, stderr: bytes, _stop: threading.Event) -> list[OpenPort]:
    return parse_nmap_xml(stdout, stderr=stderr)


def port_chunks(ports: list[int], size: int, start: int = 0) -> list[tuple[int, list[int]]]:
    """(index of its first port, ports) of each chunk of `ports` from index `start` on."""
    return [(i, ports[i : i + size]) for i in range(start, len(ports), size)]


def ports_digest(ports: list[int]) -> str:
    return hashlib.sha256(port_argument(ports).encode()).hexdigest()[:32]


class LocalCheckpoint:
    """A copy of the latest checkpoint on this host, in ``$SECFLOW_DATA_DIR/checkpoints/nmap``.

    Why: a Temporal server restart of a few seconds times the attempt out on its heartbeat
    (4 s), while the healthy worker keeps scanning; a chunk that finishes during the outage
    is stored, but its heartbeat never reaches the server, so the retry would resume one
    chunk too early (and a SIGKILL within the SDK's heartbeat throttle, 0.8 x the timeout,
    loses the newest checkpoint the same way). The retry usually runs on the same host
    (the same worker, or one sharing the data directory, as every SQLite deployment does):
    it resumes from whichever of the two checkpoints is further, after checking both
    against the store. Elsewhere the heartbeat checkpoint alone still bounds the loss.
    Keyed by the activity execution (workflow run, activity id), removed on success.
    """

    STALE_AFTER = 7 * 24 * 3600.0  # seconds; a file left by a run that failed for good

    def __init__(self, inp: StageTaskInput, info: activity.Info, data_dir: Path | None = None) -> None:
        parts = (info.workflow_id or "", info.workflow_run_id or "", info.activity_id, inp.stage_id, inp.target)
        key = "\x1f".join(parts)
        base = data_dir or Path(os.environ.get(DATA_DIR_ENV, "").strip() or ".secflow").expanduser().resolve()
        self.directory = base / "checkpoints" / TOOL
        self.path = self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"

    def read(self) -> dict[str, Any] | None:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable: the heartbeat checkpoint (or a full scan) is the fallback
        return raw if isinstance(raw, dict) else None

    def write(self, payload: dict[str, Any]) -> None:
        ensure_private_dir(self.directory)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(payload, out)
        os.replace(tmp, self.path)  # atomic: a reader sees the old or the new checkpoint

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        now = time.time()
        try:
            for old in self.directory.glob("*.json"):
                if now - old.stat().st_mtime > self.STALE_AFTER:
                    old.unlink(missing_ok=True)
        except OSError:
            pass  # tidying only


def _usable(ctx: ToolContext, raw: Any, digest: str, total: int, source: str) -> NmapCheckpoint | None:
    if not raw:
        return None
    try:
        point = NmapCheckpoint.model_validate(raw)
    except ValidationError as exc:
        ctx.log.warning("ignoring unreadable nmap checkpoint", source=source, error=str(exc).splitlines()[0])
        return None
    if point.digest != digest or point.next_index > total:
        ctx.log.info("ignoring an nmap checkpoint of another port list", source=source)
        return None
    return point


def _port_of(location: str) -> int | None:
    try:
        return int(location.rsplit(":", 1)[1].split("/", 1)[0])
    except (IndexError, ValueError):
        return None


def _kept_findings(point: NmapCheckpoint, stored: list[Finding], target: str, ports: list[int]) -> list[Finding] | None:
    """The stored findings `point` counted, or None if any is missing from the store."""
    if point.fingerprints or not point.found:
        if len(point.fingerprints) != point.found:
            return None  # not a checkpoint this code wrote
        by_fingerprint = {f.fingerprint: f for f in stored}
        if not all(fp in by_fingerprint for fp in point.fingerprints):
            return None
        return [by_fingerprint[fp] for fp in point.fingerprints]
    # Too many to list: this tool's findings of this target on the ports below the mark.
    scanned = set(ports[: point.next_index])
    kept = [f for f in stored if f.tool == TOOL and f.target == target and _port_of(f.location) in scanned]
    return kept if len(kept) >= point.found else None


async def _resume(
    ctx: ToolContext, digest: str, ports: list[int], local: dict[str, Any] | None = None
) -> tuple[NmapCheckpoint | None, list[Finding]]:
    """The furthest usable checkpoint (the previous attempt's heartbeat, or the copy on
    this host) and its findings, read back from the store; or (None, []) to scan from the
    first port. Scanning again is always safe (findings are upserted by fingerprint)."""
    candidates = [
        (point, source)
        for raw, source in (((ctx.resume or {}).get(TOOL), "heartbeat"), (local, "local"))
        if (point := _usable(ctx, raw, digest, len(ports), source)) is not None
    ]
    if not candidates:
        return None, []
    need_store = any(p.found for p, _ in candidates)
    stored = await asyncio.to_thread(ctx.store.list_findings, ctx.input.assessment_id) if need_store else []
    for point, source in sorted(candidates, key=lambda c: c[0].next_index, reverse=True):
        kept = _kept_findings(point, stored, ctx.input.target, ports)
        if kept is not None:
            if source == "local" and len(candidates) > 1:
                ctx.log.info("the local nmap checkpoint is ahead of the heartbeat", local=point.next_index)
            return point, kept
        ctx.log.warning("checkpointed nmap findings missing from the store; ignoring that checkpoint", source=source)
    return None, []


async def nmap_tool(ctx: ToolContext) -> ToolOutput:
    started = time.monotonic()
    target = ctx.input.target
    opts = NmapOptions.model_validate(ctx.options)
    build_argv(target, opts)  # validates the host first: nothing runs on a bad one
    ctx.require_in_scope(host=target)
    # nmap gets the address checked against the scope (deny list and DNS answers
    # included), never the name: with -n it resolves nothing itself, so what it scans is
    # exactly what was checked.
    address = await ctx.connect_address(target)
    ports = parse_port_spec(opts.ports)
    digest = ports_digest(ports)
    local = LocalCheckpoint(ctx.input, activity.info())
    point, findings = await _resume(ctx, digest, ports, await asyncio.to_thread(local.read))
    next_index = point.next_index if point else 0
    chunks_done = point.chunks_done if point else 0
    if point is not None:
        ctx.log.info(
            "resuming nmap scan",
            next_port_index=next_index,
            of=len(ports),
            chunks_done=chunks_done,
            findings_so_far=len(findings),
        )
    chunks = port_chunks(ports, opts.chunk_ports, next_index)
    total_chunks = chunks_done + len(chunks)
    budget = opts.timeout.total_seconds()
    workspace = ctx.input.workspace if ctx.input.workspace and os.path.isdir(ctx.input.workspace) else None
    for first, chunk in chunks:
        left = budget - (time.monotonic() - started)
        if left <= 0:
            # Transient, like a run past its timeout: the next attempt resumes here.
            raise TransientError(f"nmap exceeded its timeout of {budget:g}s with {len(ports) - first} of {len(ports)} ports left")
        argv = build_argv(address.ip, opts, chunk)
        result = await run_process(argv, tool=TOOL, cwd=workspace, timeout=left)
        found = await off_loop(functools.partial(_parse, result.stdout, result.stderr))  # up to 64 MB of XML
        new = port_findings(target, found)
        findings.extend(new)
        chunks_done += 1
        next_index = first + len(chunk)
        # Findings first, then the checkpoint (ctx.checkpoint): a resumed attempt never
        # skips a finding, and the fingerprint upsert means it never duplicates one.
        so_far = sorted({f.fingerprint for f in findings})
        checkpoint = NmapCheckpoint(
            digest=digest,
            next_index=next_index,
            chunks_done=chunks_done,
            found=len(so_far),
            fingerprints=so_far if len(so_far) <= LISTED_FINDINGS else [],
        )
        payload = {TOOL: checkpoint.model_dump(), "progress": {"done": next_index, "total": len(ports)}}
        await ctx.checkpoint(payload, new)
        try:
            await asyncio.to_thread(local.write, payload[TOOL])
        except OSError as exc:  # the heartbeat checkpoint still holds; say why this copy is missing
            ctx.log.warning("could not write the local nmap checkpoint", category=classify(exc).category.value, error=str(exc))
        ctx.log.info(
            "nmap chunk finished",
            chunk=chunks_done,
            of=total_chunks,
            ports=port_argument(chunk),
            open_ports=len(new),
            seconds=round(result.duration, 1),
        )
    unique = list({f.fingerprint: f for f in findings}.values())
    try:
        await asyncio.to_thread(local.remove)
    except OSError as exc:  # a stale copy is ignored by any later run (another activity's key)
        ctx.log.warning("could not remove the local nmap checkpoint", category=classify(exc).category.value, error=str(exc))
    ctx.log.info("nmap finished", open_ports=len(unique), chunks=total_chunks, seconds=round(time.monotonic() - started, 1))
    return ToolOutput(
        findings=unique,
        items_done=len(ports),
        items_total=len(ports),
        outputs={"open_ports": str(len(unique))},
    )


@activity.defn(name="nmap")
async def nmap(inp: StageTaskInput) -> StageTaskResult:
    return await run_tool(nmap_tool, inp)
