"""`cve-enrich`: CVSS (NVD), EPSS (FIRST) and KEV (CISA) data for the assessment's CVEs.

Runs once per stage (no targets). Every call goes through `secflow.http.client_for`, so
NVD's public rate limit (5 per rolling 30 s) and each service's breaker are respected.
Fresh cache entries (younger than `max_age`) are used without a request.

The transport rides through intermittent failures itself (NVD, EPSS and KEV requests are
idempotent: up to 8 jittered tries each), and while a service's breaker is open a request
waits for the half-open trial inside the attempt when the attempt has time left for it.
When a service still cannot answer (down, 5xx/429 after the transport's retries, breaker
open beyond what the attempt can wait) or answers with an unusable body
(invalid/truncated JSON, the wrong shape: external_tool), an attempt that is not the
stage's last checkpoints what it finished and fails with that classification, so
Temporal retries it; a breaker's wait until half-open, or a server's Retry-After, becomes
the retry's `next_retry_delay` (the outage is waited out, not hammered), and the next
attempt resumes from the checkpoint. Only the last attempt
degrades: stale cache is used (and said to be stale, and how stale), else the CVE is
marked partial with the reason, and the stage completes degraded. Permanent answers (401,
404 for a bad API key) are raised at once: retrying will not fix them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from temporalio import activity

from activities.runner import ToolContext, ToolOutput, run_tool
from secflow.enrichment import CVE_ID, EnrichedCve, EpssScore, KevEntry, NvdRecord, parse_epss, parse_kev, parse_nvd
from secflow.errors import ExternalToolError, SecFlowError, TransientError, classify
from secflow.http import breaker_for, client_for, settings_for
from secflow.models import StageTaskInput, StageTaskResult
from secflow.redaction import register_secret
from secflow.secrets import resolve
from secflow.tools import CveEnrichOptions

NVD_URL = "https://services.nvd.nist.gov"
EPSS_URL = "https://api.first.org"
KEV_URL = "https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json"
EPSS_BATCH = 50
# After every CVE: a checkpoint is only a heartbeat (the SDK throttles what it sends), and
# each CVE costs NVD rate budget that a resumed attempt should not spend again.
CHECKPOINT_EVERY = 1


class Unavailable(Exception):
    """A service could not answer (after the client's own retries, or its breaker refused).

    `retry_after`: when to try again, if anyone knows (the breaker's time to half-open,
    the server's Retry-After).
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _breaker_wait(dependency: str) -> float | None:
    """Seconds until `dependency`'s breaker lets a trial through, when it is open."""
    snap = breaker_for(dependency, settings_for(dependency)).snapshot()
    if snap.state.value != "open" or snap.next_half_open_at is None:
        return None
    return max(0.0, snap.next_half_open_at - time.monotonic())


def _retry_error(failure: Exception) -> SecFlowError:
    """What a non-final attempt fails with, so the next attempt waits the right time."""
    if isinstance(failure, SecFlowError):
        return failure
    retry_after = getattr(failure, "retry_after", None)
    return TransientError(str(failure), retry_after=retry_after)


def _env_url(name: str, default: str) -> str:
    return (os.environ.get(name) or default).rstrip("/")


async def _get_json(http: httpx.AsyncClient, service: str, url: str, params: dict[str, str] | None = None) -> Any:
    dependency = service.lower()
    try:
        response = await http.get(url, params=params)
    except TransientError as exc:  # the breaker refused: no request was sent
        raise Unavailable(f"{service} unreachable: {exc}", exc.retry_after) from None
    except httpx.TransportError as exc:
        raise Unavailable(f"{service} unreachable: {type(exc).__name__}: {exc}", _breaker_wait(dependency)) from None
    status = response.status_code
    if service == "NVD" and status == 403:
        # NVD's documented answer when its rolling rate limit is exceeded: wait, not a bad
        # key; the rolling window has room again at the latest one window from now.
        wait: float | None = _breaker_wait(dependency) or settings_for(dependency).window_seconds
        raise Unavailable(f"{service} unavailable: HTTP 403 (rate limited)", wait)
    if not response.is_success:
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            # The taxonomy decides: what a retry could fix degrades the stage, the rest fails it.
            verdict = classify(exc)
            if verdict.retryable:
                wait = _breaker_wait(dependency)
                if verdict.retry_after is not None:
                    wait = max(wait or 0.0, verdict.retry_after)
                raise Unavailable(f"{service} unavailable: HTTP {status}", wait) from None
            raise
    try:
        return json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExternalToolError(f"{service} answered with a malformed body ({len(response.content)} bytes): {exc}") from None


def _reason(exc: Exception) -> str:
    """The partial reason of a service's failure, with its category when it is not transient."""
    if isinstance(exc, ExternalToolError):
        return f"external_tool: {exc}"
    return str(exc)


async def cve_enrich_tool(ctx: ToolContext) -> ToolOutput:
    opts = CveEnrichOptions.model_validate(ctx.options)
    store = ctx.store
    findings = await asyncio.to_thread(store.list_findings, ctx.input.assessment_id)
    fingerprints: dict[str, list[str]] = {}
    for f in findings:
        for cve in f.cve:
            if CVE_ID.fullmatch(cve):
                fingerprints.setdefault(cve, []).append(f.fingerprint)
    cves = sorted(fingerprints)

    raw = (ctx.resume or {}).get("enrich")
    done: dict[str, dict[str, Any]] = dict(raw.get("done") or {}) if isinstance(raw, dict) else {}
    done = {c: v for c, v in done.items() if c in fingerprints}
    if done:
        ctx.log.info("resuming cve-enrich", done=len(done), of=len(cves))

    # Only the stage's last attempt degrades; earlier ones fail (classified) and are retried.
    last_attempt = activity.info().attempt >= ctx.input.retry.max_attempts
    failure: Exception | None = None  # the first reason this attempt could not finish

    async def give_up_for_now(exc: Exception) -> None:
        """Checkpoint what is done, then fail this attempt so Temporal retries it."""
        ctx.log.warning("enrichment attempt incomplete; will retry", reason=str(exc), done=len(done), of=len(cves))
        await ctx.checkpoint({"enrich": {"done": dict(done)}, "progress": {"done": len(done), "total": len(cves)}})
        raise _retry_error(exc)

    now = datetime.now(UTC)
    max_age = opts.max_age
    todo: list[tuple[str, tuple[str, datetime] | None]] = []
    for cve in cves:
        if cve in done:
            continue
        cached = await asyncio.to_thread(store.get_enrichment, cve)
        if cached is not None and now - cached[1] < max_age:
            done[cve] = {"status": "enriched", "note": "cached"}
        else:
            todo.append((cve, cached))

    if todo:
        timeout = opts.request_timeout.total_seconds()
        http_timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        headers = {"User-Agent": "secflow-cve-enrich"}
        nvd_headers = dict(headers)
        # The stage's `api_key` reference, resolved here and now; else the worker's variable.
        if opts.api_key is not None:
            key = resolve(opts.api_key, where=f"{ctx.input.stage_id}.options.api_key")
        else:
            key = os.environ.get("SECFLOW_NVD_API_KEY", "").strip()
            register_secret(key)
        if key:
            nvd_headers["apiKey"] = key
        kev_split = urlsplit(_env_url("SECFLOW_KEV_URL", KEV_URL))
        kev_base = f"{kev_split.scheme}://{kev_split.netloc}"
        kev_path = kev_split.path + (f"?{kev_split.query}" if kev_split.query else "")
        nvd_base, epss_base = _env_url("SECFLOW_NVD_URL", NVD_URL), _env_url("SECFLOW_EPSS_URL", EPSS_URL)

        async with (
            client_for("nvd", base_url=nvd_base, timeout=http_timeout, headers=nvd_headers, chaos=ctx.chaos) as nvd_http,
            client_for("epss", base_url=epss_base, timeout=http_timeout, headers=headers, chaos=ctx.chaos) as epss_http,
            client_for("kev", base_url=kev_base, timeout=http_timeout, headers=headers, chaos=ctx.chaos) as kev_http,
        ):
            epss: dict[str, EpssScore] = {}
            epss_err = ""
            wanted = [c for c, _ in todo]
            try:
                for i in range(0, len(wanted), EPSS_BATCH):
                    doc = await _get_json(epss_http, "EPSS", "/data/v1/epss", {"cve": ",".join(wanted[i : i + EPSS_BATCH])})
                    epss.update(parse_epss(doc))
            except (Unavailable, ExternalToolError) as exc:
                if not last_attempt:  # before spending NVD's small rate budget
                    await give_up_for_now(exc)
                epss_err = _reason(exc)
            kev: dict[str, KevEntry] = {}
            kev_err = ""
            try:
                kev = parse_kev(await _get_json(kev_http, "KEV", kev_path))
            except (Unavailable, ExternalToolError) as exc:
                if not last_attempt:
                    await give_up_for_now(exc)
                kev_err = _reason(exc)
            nvd_down = ""  # once NVD is down, do not spend its tiny rate budget on more failures

            for n, (cve, cached) in enumerate(todo, start=1):
                record: NvdRecord | None = None
                nvd_err = nvd_down
                if not nvd_down:
                    try:
                        record = parse_nvd(await _get_json(nvd_http, "NVD", "/rest/json/cves/2.0", {"cveId": cve}))
                    except Unavailable as exc:
                        nvd_err = nvd_down = _reason(exc)
                        if not last_attempt:
                            await give_up_for_now(exc)
                    except ExternalToolError as exc:
                        # This CVE's answer was unusable; the others may be fine.
                        nvd_err = _reason(exc)
                        ctx.log.warning("unusable NVD answer", cve=cve, category="external_tool", reason=str(exc))
                        if not last_attempt:
                            failure = failure or exc
                            continue
                errors = [e for e in (nvd_err, epss_err, kev_err) if e]
                fetched = datetime.now(UTC)
                if not errors:
                    result = EnrichedCve(cve_id=cve, nvd=record, epss=epss.get(cve), kev=kev.get(cve), fetched_at=fetched)
                    await asyncio.to_thread(store.put_enrichment, cve, result.model_dump_json(), fetched)
                    done[cve] = {"status": "enriched", "note": ""}
                elif cached is not None:
                    age = fetched - cached[1]
                    hours = age.total_seconds() / 3600
                    note = f"stale: cached data from {cached[1].isoformat(timespec='seconds')} ({hours:.1f} h old) used because {'; '.join(errors)}"
                    ctx.log.warning("using stale enrichment", cve=cve, age_hours=round(hours, 1), reason="; ".join(errors))
                    done[cve] = {"status": "stale", "note": note, "age_s": age.total_seconds()}
                else:
                    partial = EnrichedCve(
                        cve_id=cve,
                        nvd=record,
                        epss=None if epss_err else epss.get(cve),
                        kev=None if kev_err else kev.get(cve),
                        fetched_at=fetched,
                        partial=True,
                        partial_reason="; ".join(errors),
                    )
                    ctx.log.warning("partial enrichment", cve=cve, reason=partial.partial_reason)
                    done[cve] = {"status": "partial", "note": partial.partial_reason, "payload": partial.model_dump_json()}
                if n % CHECKPOINT_EVERY == 0 or n == len(todo):
                    await ctx.checkpoint({"enrich": {"done": dict(done)}, "progress": {"done": len(done), "total": len(cves)}})
            if failure is not None:
                await give_up_for_now(failure)

    # Write the enrichment back onto every finding.
    payloads: dict[str, dict[str, Any]] = {}
    for cve, state in done.items():
        if state["status"] == "partial":
            payload = json.loads(state["payload"])
        else:
            cached = await asyncio.to_thread(store.get_enrichment, cve)
            payload = (
                json.loads(cached[0]) if cached else {"cve_id": cve, "partial": True, "partial_reason": "cache entry vanished"}
            )
        payload["status"] = state["status"]
        if state["status"] == "stale":
            payload["stale"] = True
            payload["stale_reason"] = state["note"]
            payload["stale_age_seconds"] = state.get("age_s")
        payloads[cve] = payload
    by_finding: dict[str, list[dict[str, Any]]] = {}
    for cve in cves:
        for fp in fingerprints[cve]:
            by_finding.setdefault(fp, []).append(payloads[cve])
    for fp, entries in by_finding.items():
        await asyncio.to_thread(
            store.set_finding_enrichment, ctx.input.assessment_id, fp, json.dumps({"cves": entries}, sort_keys=True)
        )

    counts = {s: sum(1 for v in done.values() if v["status"] == s) for s in ("enriched", "partial", "stale")}
    outputs = {k: str(v) for k, v in counts.items()}
    stale_notes = sorted({v["note"] for v in done.values() if v["status"] == "stale"})
    if stale_notes:
        outputs["stale_note"] = stale_notes[0]
    degraded = ""
    if counts["partial"]:
        reasons = sorted({v["note"] for v in done.values() if v["status"] == "partial"})
        degraded = f"enrichment degraded: {counts['partial']} of {len(cves)} CVEs partial ({reasons[0]})"
    ctx.log.info("cve enrichment done", cves=len(cves), **counts)
    return ToolOutput(
        findings=[],
        items_done=len(done),
        items_total=len(cves),
        outputs=outputs,
        degraded_reason=degraded,
    )


@activity.defn(name="cve-enrich")
async def cve_enrich(inp: StageTaskInput) -> StageTaskResult:
    return await run_tool(cve_enrich_tool, inp)
