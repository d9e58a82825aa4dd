"""The scanning tools as activities: thin adapters from a tool to `run_tool`'s guarantees."""

from __future__ import annotations

import asyncio

import httpx
from temporalio import activity

from activities.runner import ToolContext, ToolOutput, run_tool
from activities.tools.http_headers import ScopedTransport, check_headers
from activities.tools.portscan import PortscanProgress, parse_ports, port_findings, scan_ports
from secflow.http.deadline import DeadlineTransport
from secflow.models import StageTaskInput, StageTaskResult
from secflow.secrets import TargetAuth, auth_headers
from secflow.tools import HttpHeadersOptions, PortscanOptions


async def portscan_tool(ctx: ToolContext) -> ToolOutput:
    host = ctx.input.target
    ctx.require_in_scope(host=host)
    opts = PortscanOptions.model_validate(ctx.options)
    # Resolved once and checked against the scope (deny list and DNS answers included);
    # every probe goes to this address, never to the name again (no DNS rebinding).
    address = await ctx.connect_address(host)
    ports = parse_ports(opts.ports)
    resume = _resume_point(ctx, len(ports))
    if resume is not None:
        ctx.log.info("resuming port scan", next_index=resume.next_index, open_so_far=len(resume.open_ports))

    # scan_ports reports progress synchronously; a checkpointer task turns the latest
    # report into "store new open ports, then heartbeat the watermark".
    latest: list[PortscanProgress] = []
    saved: set[int] = set(resume.open_ports) if resume else set()
    wake = asyncio.Event()

    def on_progress(progress: PortscanProgress) -> None:
        latest[:] = [progress]
        wake.set()

    async def save(progress: PortscanProgress) -> None:
        new = [p for p in progress.open_ports if p not in saved]
        await ctx.checkpoint(
            {"portscan": progress.model_dump(), "progress": {"done": progress.next_index, "total": len(ports)}},
            port_findings(host, new),
        )
        saved.update(new)

    async def checkpointer() -> None:
        while True:
            await wake.wait()
            wake.clear()
            await save(latest[0])

    saver = asyncio.create_task(checkpointer())
    try:
        final = await scan_ports(
            address.ip,
            ports,
            rate=opts.rate,
            connect_timeout=opts.connect_timeout.total_seconds(),
            concurrency=opts.concurrency,
            resume=resume,
            on_progress=on_progress,
        )
    finally:
        saver.cancel()
    await save(final)
    return ToolOutput(findings=port_findings(host, final.open_ports), items_done=len(ports), items_total=len(ports))


def _resume_point(ctx: ToolContext, total: int) -> PortscanProgress | None:
    raw = (ctx.resume or {}).get("portscan")
    if not raw:
        return None
    try:
        progress = PortscanProgress.model_validate(raw)
    except ValueError as exc:
        # A checkpoint from an older, incompatible version: scanning again is safe (findings
        # are upserted by fingerprint), so start over rather than fail.
        ctx.log.warning("ignoring unreadable checkpoint", error=str(exc))
        return None
    if progress.next_index > total:
        ctx.log.warning("ignoring checkpoint beyond the port list", next_index=progress.next_index, total=total)
        return None
    return progress


def _target_auth(ctx: ToolContext, url: str) -> tuple[TargetAuth | None, str]:
    """The spec's `auth` for this URL target (references only) and its field path."""
    if ctx.spec is not None:
        for i, target in enumerate(ctx.spec.targets):
            if target.url == url and target.auth is not None:
                return target.auth, f"targets[{i}].auth"
    return None, ""


async def http_headers_tool(ctx: ToolContext) -> ToolOutput:
    url = ctx.input.target
    ctx.require_in_scope(url=url)
    opts = HttpHeadersOptions.model_validate(ctx.options)
    auth, where = _target_auth(ctx, url)
    # Resolved here, right before use; the values never leave this activity (rule 7).
    credentials = auth_headers(auth, where=where)
    # trust_env=False: a scan must go to the target itself, never through a proxy from
    # the environment. Redirects are followed by check_headers, scope-checked hop by hop,
    # and every connection (redirects included) goes to an address checked at connect time.
    # `request_timeout` is each request's total deadline (headers and body), not httpx's
    # per-read timeout, which a target dribbling a header line a second never trips.
    seconds = opts.request_timeout.total_seconds()
    async with httpx.AsyncClient(
        follow_redirects=False,
        timeout=seconds,
        trust_env=False,
        transport=DeadlineTransport(ScopedTransport(ctx.scope, verify=opts.verify_tls), seconds),
    ) as client:
        report = await check_headers(
            url, client=client, permits_url=ctx.scope.permits_url, max_redirects=opts.max_redirects, auth_headers=credentials
        )
    return ToolOutput(findings=report.findings, items_done=1, items_total=1)


@activity.defn(name="portscan")
async def portscan(inp: StageTaskInput) -> StageTaskResult:
    return await run_tool(portscan_tool, inp)


@activity.defn(name="http_headers")
async def http_headers(inp: StageTaskInput) -> StageTaskResult:
    return await run_tool(http_headers_tool, inp)
