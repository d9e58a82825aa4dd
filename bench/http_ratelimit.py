"""CVE enrichment against a stand-in enforcing NVD's rate limit: measured vs the theoretical
minimum that limit allows, and vs a no-resilience baseline (a plain httpx.AsyncClient), in
one run:

    .venv/bin/python -m bench.http_ratelimit [--cves 500] [--window-scale 1.0] [--modes public,key]

The real `cve-enrich` stage runs in a real assessment (Temporal dev server, in-process
SecFlow worker) over `--cves` CVE ids seeded as findings; NVD, EPSS and KEV are the
loopback stand-ins of tests/enrich_standins.py. NVD's stand-in enforces the public limit,
5 requests per rolling 30 s (mode "public"), or 50 with an API key (mode "key"), and
answers 403 beyond it like the real service; for ids outside its fixture it synthesises
a valid record (bench only). `--window-scale` shrinks the 30 s window on both sides (the
stand-in's and SecFlow's limiter) to measure faster: 0.1 = 5 per rolling 3 s.

Theoretical minimum for N requests at L per rolling window W: request k (0-based) cannot
go before floor(k / L) * W, so the last one goes at floor((N - 1) / L) * W
((500 - 5) / 5 * 30 s = 2970 s for 500 CVEs at the public limit). "NVD span" is the
stand-in's time from the first NVD request to the last; "stage" is the whole stage
(EPSS, KEV, store writes, heartbeats included). The baseline sends the same requests as
fast as it can: the figure is how many NVD refused (403).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import math
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

# A throwaway store: a benchmark never writes into a real one.
os.environ["SECFLOW_DATA_DIR"] = tempfile.mkdtemp(prefix="secflow-bench-")
os.environ.setdefault("SECFLOW_LOG_LEVEL", "ERROR")
os.environ.pop("SECFLOW_DB_URL", None)
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_var, None)

import httpx  # noqa: E402

from secflow.findings import Finding, Severity  # noqa: E402
from secflow.http import register_dependency, reset_http_state  # noqa: E402
from secflow.http import registry as http_registry  # noqa: E402
from secflow.models import AssessmentInput, AssessmentStatus  # noqa: E402
from secflow.spec import validate_spec_data  # noqa: E402
from secflow.store import open_store  # noqa: E402
from tests.devserver import DevServer  # noqa: E402
from tests.enrich_standins import (  # noqa: E402
    CVE_ID,
    NVD_LIMIT_PUBLIC,
    NVD_LIMIT_WITH_KEY,
    NVD_WINDOW_S,
    EpssStandin,
    KevStandin,
    NvdStandin,
    Reply,
    Request,
)


class SynthesisingNvd(NvdStandin):
    """NvdStandin that answers unknown (well-formed) CVE ids with a valid synthetic record."""

    def answer(self, request: Request) -> Reply:
        ids = request.query.get("cveId", [])
        if request.path == self.PATH and len(ids) == 1 and CVE_ID.fullmatch(ids[0]) and ids[0] not in self.records:
            template = next(iter(self.records.values()))
            record = copy.deepcopy(template)
            record["cve"]["id"] = ids[0]
            record["cve"]["descriptions"] = [{"lang": "en", "value": f"Synthetic record for {ids[0]} (benchmark)."}]
            record["cve"]["references"] = []
            with self._lock:
                self.records[ids[0]] = record
        return super().answer(request)


def theoretical_minimum(n: int, limit: int, window: float) -> float:
    return math.floor((n - 1) / limit) * window if n > 0 else 0.0


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = [head, *rows]
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


async def baseline(cves: list[str], window: float, api_key: str | None) -> tuple[int, int, float]:
    """A plain client asking NVD for every CVE as fast as it can: (answered, throttled, seconds)."""
    nvd = SynthesisingNvd(window_s=window, api_key=api_key)
    headers = {"apiKey": api_key} if api_key else {}
    ok = throttled = 0
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(base_url=nvd.url, trust_env=False, timeout=30.0, headers=headers) as http:
            for cve in cves:
                response = await http.get(NvdStandin.PATH, params={"cveId": cve})
                if response.status_code == 200:
                    ok += 1
                elif response.status_code == 403:
                    throttled += 1
    finally:
        nvd.close()
    return ok, throttled, time.monotonic() - started


async def secflow_run(client, queue: str, root: Path, cves: list[str], window: float, api_key: str | None) -> dict:
    reset_http_state()  # a fresh limiter: this mode's limit, this run's window
    base = http_registry._REGISTRY["nvd"].model_dump()
    register_dependency("nvd", http_registry.DependencySettings.model_validate({**base, "window_seconds": window}))
    if api_key:
        os.environ["SECFLOW_NVD_API_KEY"] = api_key
    else:
        os.environ.pop("SECFLOW_NVD_API_KEY", None)
    nvd = SynthesisingNvd(window_s=window, api_key=api_key)
    epss, kev = EpssStandin(), KevStandin()
    os.environ.update({"SECFLOW_NVD_URL": nvd.url, "SECFLOW_EPSS_URL": epss.url, "SECFLOW_KEV_URL": kev.feed_url})
    workflow_id = f"bench-enrich-{uuid.uuid4().hex[:8]}"
    findings = [
        Finding.new(tool="sca", rule_id=f"OSV-{cve}", title=f"vulnerable dependency ({cve})", severity=Severity.HIGH,
                    target=str(root), location=f"requirements.txt:{i + 1}", cve=[cve], assessment_id=workflow_id)
        for i, cve in enumerate(cves)
    ]
    open_store().upsert_findings(workflow_id, "seed", findings)
    spec = validate_spec_data({
        "name": "bench-enrich", "scope": {"allow": [str(root)]}, "targets": [{"path": str(root)}],
        "stages": [{"id": "enrich", "kind": "enrich", "tool": "cve-enrich", "timeout": "3h"}],
    })
    try:
        started = time.monotonic()
        handle = await client.start_workflow(
            "AssessmentWorkflow", AssessmentInput(spec=spec, requested_by="bench"), id=workflow_id, task_queue=queue,
            result_type=AssessmentStatus,
        )
        status = await handle.result()
        elapsed = time.monotonic() - started
        times = [r.time for r in nvd.requests]
        return {
            "outcome": status.outcome,
            "enriched": status.stages["enrich"].outputs.get("enriched", "?"),
            "stage": elapsed,
            "nvd_requests": len(nvd.requests),
            "nvd_span": (max(times) - min(times)) if times else 0.0,
            "throttled": len(nvd.throttled),
        }
    finally:
        for server in (nvd, epss, kev):
            server.close()


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_ratelimit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cves", type=int, default=500, help="CVE ids to enrich (default 500)")
    parser.add_argument("--window-scale", type=float, default=1.0, help="scale of NVD's 30 s window (default 1 = 30 s)")
    parser.add_argument("--modes", default="public,key", help="public (5 per window), key (50 per window), or both")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.cves < 1 or not 0 < args.window_scale <= 10 or not modes or set(modes) - {"public", "key"}:
        parser.error("--cves must be >= 1, --window-scale in (0, 10], --modes from: public, key")
    window = NVD_WINDOW_S * args.window_scale
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))  # keep the table readable

    from secflow.settings import load_settings
    from secflow.temporal_client import connect
    from worker import build_worker

    work = Path(tempfile.mkdtemp(prefix="secflow-bench-enrich-"))
    root = work / "app"
    root.mkdir()
    server = DevServer(None, work / "temporal.log")
    server.start()
    os.environ["TEMPORAL_ADDRESS"] = server.address
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; NVD window {window:g} s "
          f"(x{args.window_scale:g} of 30 s); {args.cves} CVEs\n")
    rows = []
    try:
        settings = load_settings({**os.environ, "SECFLOW_TASK_QUEUE": queue})
        client = await connect(settings)
        async with build_worker(client, settings):
            for n, mode in enumerate(modes):
                limit = NVD_LIMIT_PUBLIC if mode == "public" else NVD_LIMIT_WITH_KEY
                api_key = str(uuid.uuid4()) if mode == "key" else None
                cves = [f"CVE-2099-{100000 * (n + 1) + i}" for i in range(args.cves)]
                minimum = theoretical_minimum(args.cves, limit, window)
                ok, refused, took = await baseline(cves, window, api_key)
                rows.append([f"{mode} ({limit}/{window:g} s)", "baseline: plain httpx, as fast as it can",
                             f"{took:.1f} s", "-", f"{ok} answered, {refused} refused (403)", f"{minimum:.0f} s", "-"])
                result = await secflow_run(client, queue, root, cves, window, api_key)
                rows.append([
                    f"{mode} ({limit}/{window:g} s)", f"SecFlow cve-enrich stage ({result['outcome']}, {result['enriched']} enriched)",
                    f"{result['stage']:.1f} s", f"{result['nvd_span']:.1f} s",
                    f"{result['nvd_requests']} answered, {result['throttled']} refused (403)", f"{minimum:.0f} s",
                    f"{result['nvd_span'] / minimum:.3f}" if minimum else "-",
                ])
                print(table(["NVD limit", "client", "time", "NVD span (first->last request)", "NVD requests",
                             "theoretical minimum", "span / minimum"], rows[-2:]), flush=True)
                print()
    finally:
        server.stop()
    print("all modes:")
    print(table(["NVD limit", "client", "time", "NVD span (first->last request)", "NVD requests", "theoretical minimum",
                 "span / minimum"], rows))


if __name__ == "__main__":
    asyncio.run(main())
