"""`cve-enrich`: CVSS (NVD), EPSS (FIRST) and KEV (CISA) data for the assessment's CVEs.

Runs once per stage (no targets). Every call goes through `secflow.http.client_for`, so
NVD's public rate limit (5 per rolling 30 s) and each service's breaker are respected.
Fresh cache entries (younger than `max_age`) are used without a request. When a service
stays unavailable the stage does not fail: stale cache is used (and said to be stale),
else the CVE is marked partial and the stage degraded. Permanent answers (401, 404 for a
bad API key) are raised: retrying will not fix them.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx
from temporalio import activity

from activities.runner import ToolContext, ToolOutput, run_tool
from secflow.enrichment import CVE_ID, EnrichedCve, EpssScore, KevEntry, NvdRecord, parse_epss, parse_kev, parse_nvd
from secflow.errors import ExternalToolError, TransientError, classify
from secflow.http import client_for
from secflow.models import StageTaskInput, StageTaskResult
from secflow.tools import CveEnrichOptions

NVD_URL = "https://services.nvd.nist.gov"
EPSS_URL = "https://api.first.org"
KEV_URL = "https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json"
EPSS_BATCH = 50
CHECKPOINT_EVERY = 3


class Unavailable(Exception):
    """A service could not answer (after the client's own retries, or its breaker refused)."""


def _env_url(name: str, default: str) -> str:
    return (os.environ.get(name) or default).rstrip("/")


async def _get_json(http: httpx.AsyncClient, service: str, url: str, params: dict[str, str] | None = None) -> Any:
    try:
        response = await http.get(url, params=params)
    except (httpx.TransportError, TransientError) as exc:
        raise Unavailable(f"{service} unreachable: {exc}") from None
    status = response.status_code
    if service == "NVD" and status == 403:
        # NVD's documented answer when its rolling rate limit is exceeded: wait, not a bad key.
        raise Unavailable(f"{service} unavailable: HTTP 403 (rate limited)")
    if not response.is_success:
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            # The taxonomy decides: what a retry could fix degrades the stage, the rest fails it.
            if classify(exc).retryable:
                raise Unavailable(f"{service} unavailable: HTTP {status}") from None
            raise
    try:
        return json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExternalToolError(f"{service} answered with a malformed body ({len(response.content)} bytes): {exc}") from None


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

    now = datetime.now(timezone.utc)
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
        key = os.environ.get("SECFLOW_NVD_API_KEY", "").strip()
        if key:
            nvd_headers["apiKey"] = key
        kev_split = urlsplit(_env_url("SECFLOW_KEV_URL", KEV_URL))
        kev_base = f"{kev_split.scheme}://{kev_split.netloc}"
        kev_path = kev_split.path + (f"?{kev_split.query}" if kev_split.query else "")
        nvd_base, epss_base = _env_url("SECFLOW_NVD_URL", NVD_URL), _env_url("SECFLOW_EPSS_URL", EPSS_URL)

        async with (
            client_for("nvd", base_url=nvd_base, timeout=http_timeout, headers=nvd_headers) as nvd_http,
            client_for("epss", base_url=epss_base, timeout=http_timeout, headers=headers) as epss_http,
            client_for("kev", base_url=kev_base, timeout=http_timeout, headers=headers) as kev_http,
        ):
            epss: dict[str, EpssScore] = {}
            epss_err = ""
            wanted = [c for c, _ in todo]
            try:
                for i in range(0, len(wanted), EPSS_BATCH):
                    doc = await _get_json(epss_http, "EPSS", "/data/v1/epss", {"cve": ",".join(wanted[i : i + EPSS_BATCH])})
                    epss.update(parse_epss(doc))
            except Unavailable as exc:
                epss_err = str(exc)
            kev: dict[str, KevEntry] = {}
            kev_err = ""
            try:
                kev = parse_kev(await _get_json(kev_http, "KEV", kev_path))
            except Unavailable as exc:
                kev_err = str(exc)
            nvd_down = ""  # once NVD is down, do not spend its tiny rate budget on more failures

            for n, (cve, cached) in enumerate(todo, start=1):
                record: NvdRecord | None = None
                nvd_err = nvd_down
                if not nvd_down:
                    try:
                        record = parse_nvd(await _get_json(nvd_http, "NVD", "/rest/json/cves/2.0", {"cveId": cve}))
                    except Unavailable as exc:
                        nvd_err = nvd_down = str(exc)
                errors = [e for e in (nvd_err, epss_err, kev_err) if e]
                fetched = datetime.now(timezone.utc)
                if not errors:
                    result = EnrichedCve(cve_id=cve, nvd=record, epss=epss.get(cve), kev=kev.get(cve), fetched_at=fetched)
                    await asyncio.to_thread(store.put_enrichment, cve, result.model_dump_json(), fetched)
                    done[cve] = {"status": "enriched", "note": ""}
                elif cached is not None:
                    age = fetched - cached[1]
                    hours = age.total_seconds() / 3600
                    note = f"stale: cached data from {cached[1].isoformat(timespec='seconds')} ({hours:.1f} h old) used because {'; '.join(errors)}"
                    ctx.log.warning("using stale enrichment", cve=cve, age_hours=round(hours, 1), reason="; ".join(errors))
                    done[cve] = {"status": "stale", "note": note}
                else:
                    partial = EnrichedCve(
                        cve_id=cve, nvd=record, epss=None if epss_err else epss.get(cve), kev=None if kev_err else kev.get(cve),
                        fetched_at=fetched, partial=True, partial_reason="; ".join(errors),
                    )
                    ctx.log.warning("partial enrichment", cve=cve, reason=partial.partial_reason)
                    done[cve] = {"status": "partial", "note": partial.partial_reason, "payload": partial.model_dump_json()}
                if n % CHECKPOINT_EVERY == 0 or n == len(todo):
                    await ctx.checkpoint({"enrich": {"done": done}, "progress": {"done": len(done), "total": len(cves)}})

    # Write the enrichment back onto every finding.
    payloads: dict[str, dict[str, Any]] = {}
    for cve, state in done.items():
        if state["status"] == "partial":
            payload = json.loads(state["payload"])
        else:
            cached = await asyncio.to_thread(store.get_enrichment, cve)
            payload = json.loads(cached[0]) if cached else {"cve_id": cve, "partial": True, "partial_reason": "cache entry vanished"}
        payload["status"] = state["status"]
        if state["status"] == "stale":
            payload["stale"] = True
            payload["stale_reason"] = state["note"]
        payloads[cve] = payload
    by_finding: dict[str, list[dict[str, Any]]] = {}
    for cve in cves:
        for fp in fingerprints[cve]:
            by_finding.setdefault(fp, []).append(payloads[cve])
    for fp, entries in by_finding.items():
        await asyncio.to_thread(store.set_finding_enrichment, fp, json.dumps({"cves": entries}, sort_keys=True))

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
