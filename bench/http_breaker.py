"""Circuit breaker figures, each against a no-resilience baseline (a plain httpx.AsyncClient)
measured in the same run:

    .venv/bin/python -m bench.http_breaker [--outage 60] [--callers 10] [--refusals 20000]

a. Refused-call latency with the breaker open (p50/p99 of `await http.get()` raising the
   breaker's BreakerOpenError, a TransientError), vs the baseline's time to fail against a
   dead loopback port (connection refused, nothing listening).
b. Connection attempts reaching a dead dependency during an outage of `--outage` seconds
   (default 60). The dependency is a loopback listener that accepts every connection and
   resets it (counted), then, when the outage ends, answers HTTP 200. `--callers`
   concurrent callers keep calling it, in two styles:
   - "temporal": an activity-like loop; a failure is retried with the HTTP_API retry
     policy's backoff (1 s initial, x2, 60 s cap, full jitter), and a breaker refusal waits
     its `retry_after` (what activities/runner.py turns into next_retry_delay);
   - "poller": a loop calling every 0.5 s regardless of the outcome (no backoff at all).
   All four runs (2 styles x baseline/SecFlow) happen at the same time on their own
   listeners. After the outage each run continues until every caller has succeeded once
   (at most `--tail` seconds) to show what recovery costs.

SecFlow's client uses the default settings of any dependency (`DependencySettings()`:
3 attempts inside the transport, breaker opens when at least 50 % of at least 20 calls
within 60 s failed, 30 s open, doubling per failed trial; refusals are not waited out
here: `wait_for_half_open` is off by default and these callers are not activities).
Metrics go to a real Prometheus-exporting Runtime, as in a worker; breaker states go to a
throwaway store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

# A throwaway store: a benchmark never writes into a real one.
os.environ["SECFLOW_DATA_DIR"] = tempfile.mkdtemp(prefix="secflow-bench-")
os.environ.setdefault("SECFLOW_LOG_LEVEL", "ERROR")
os.environ.pop("SECFLOW_DB_URL", None)

import httpx  # noqa: E402
import structlog  # noqa: E402

from secflow.errors import TransientError, classify  # noqa: E402
from secflow.http import DependencySettings, client_for, flush_breaker_states, register_dependency  # noqa: E402
from secflow.retries import RETRY_TABLE, next_delay  # noqa: E402
from secflow.tools import RetryClass  # noqa: E402

TIMEOUT = httpx.Timeout(connect=2.0, read=5.0, write=5.0, pool=2.0)
# The HTTP_API retry policy, without an attempt limit: the caller keeps trying.
PLAN = RETRY_TABLE[RetryClass.HTTP_API].model_copy(update={"max_attempts": 10_000})


def quiet_logs() -> None:
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


def metrics_runtime() -> None:
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    Runtime.set_default(Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}"))))


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = [head, *rows]
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


# --- a. refused-call latency ------------------------------------------------------------------
async def refused_latency(refusals: int, baseline_calls: int) -> list[list[str]]:
    port = dead_port()
    url = f"http://127.0.0.1:{port}"
    base: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, trust_env=False) as plain:
        for _ in range(baseline_calls):
            t = time.perf_counter()
            try:
                await plain.get("/")
            except httpx.ConnectError:
                pass
            base.append(time.perf_counter() - t)

    register_dependency(
        "bench-refused",
        DependencySettings(retry_attempts=1, minimum_calls=3, open_timeout=3600.0, max_open_timeout=3600.0),
    )
    refused: list[float] = []
    async with client_for("bench-refused", base_url=url, timeout=TIMEOUT) as http:
        for _ in range(3):
            try:
                await http.get("/")
            except httpx.ConnectError:
                pass
        for _ in range(refusals):
            t = time.perf_counter()
            try:
                await http.get("/")
            except TransientError:
                pass
            else:
                raise RuntimeError("the breaker did not refuse")
            refused.append(time.perf_counter() - t)
    flush_breaker_states()
    return [
        [f"baseline: plain httpx, dead port (refused), n={len(base)}", us(pct(base, 50)), us(pct(base, 99)), us(max(base))],
        [f"SecFlow client, breaker open, n={len(refused)}", us(pct(refused, 50)), us(pct(refused, 99)), us(max(refused))],
    ]


# --- b. a dead dependency during an outage ----------------------------------------------------
class DeadThenAlive:
    """Accepts and resets every connection until the outage ends; then answers HTTP 200."""

    def __init__(self, outage: float) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.outage = outage
        self.started: float | None = None
        self.during = 0
        self.after = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def start(self) -> None:
        self.started = time.monotonic()

    @property
    def over(self) -> bool:
        return self.started is not None and time.monotonic() >= self.started + self.outage

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            if not self.over:
                self.during += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                conn.close()
                continue
            self.after += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@dataclass
class Run:
    name: str
    style: str
    resilient: bool
    listener: DeadThenAlive
    recovered_after: list[float] = field(default_factory=list)  # per caller: first success - outage end
    refused: int = 0


async def caller(run: Run, http: httpx.AsyncClient, deadline: float, rng: random.Random) -> None:
    attempt = 1
    while time.monotonic() < deadline:
        try:
            response = await http.get("/")
            ok = response.status_code == 200
        except Exception as exc:  # every failure: classified, like the activity wrapper does
            ok = False
            verdict = classify(exc)
            if isinstance(exc, TransientError):
                run.refused += 1
        if ok and run.listener.over:
            run.recovered_after.append(time.monotonic() - (run.listener.started + run.listener.outage))
            return
        if run.style == "poller":
            await asyncio.sleep(0.5)
            continue
        delay = next_delay(PLAN, attempt, retry_after=verdict.retry_after if not ok else None, rng=rng)
        attempt += 1
        await asyncio.sleep(min(delay.total_seconds(), max(0.0, deadline - time.monotonic())))


async def outage_run(run: Run, callers: int, tail: float) -> None:
    url = f"http://127.0.0.1:{run.listener.port}"
    if run.resilient:
        dep = f"bench-dead-{run.style}"
        register_dependency(dep, DependencySettings())
        http = client_for(dep, base_url=url, timeout=TIMEOUT)
    else:
        http = httpx.AsyncClient(base_url=url, timeout=TIMEOUT, trust_env=False)
    deadline = run.listener.started + run.listener.outage + tail
    rng = random.Random(hash(run.name) & 0xFFFF)
    async with http:
        await asyncio.gather(*(caller(run, http, deadline, rng) for _ in range(callers)))


async def outage(outage_s: float, callers: int, tail: float) -> list[list[str]]:
    runs = [
        Run("baseline: plain httpx, Temporal-style retries", "temporal", False, DeadThenAlive(outage_s)),
        Run("SecFlow client, Temporal-style retries", "temporal", True, DeadThenAlive(outage_s)),
        Run("baseline: plain httpx, poll every 0.5 s", "poller", False, DeadThenAlive(outage_s)),
        Run("SecFlow client, poll every 0.5 s", "poller", True, DeadThenAlive(outage_s)),
    ]
    for run in runs:
        run.listener.start()
    await asyncio.gather(*(outage_run(run, callers, tail) for run in runs))
    flush_breaker_states()
    rows = []
    for run in runs:
        run.listener.close()
        rec = run.recovered_after
        recovered = (
            f"{len(rec)}/{callers}; p50 {statistics.median(rec):.1f} s, max {max(rec):.1f} s" if rec else f"0/{callers}"
        )
        rows.append([run.name, str(run.listener.during), str(run.refused) if run.resilient else "-", recovered])
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_breaker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the dependency is dead (default 60)")
    parser.add_argument("--callers", type=int, default=10, help="concurrent callers per run (default 10)")
    parser.add_argument("--refusals", type=int, default=20000, help="refused calls timed (default 20000)")
    parser.add_argument("--baseline-calls", type=int, default=2000, help="baseline calls to a dead port timed (default 2000)")
    parser.add_argument("--tail", type=float, default=120.0, help="max seconds after the outage to wait for recovery")
    parser.add_argument("--skip-outage", action="store_true", help="only the latency part")
    args = parser.parse_args()
    if args.outage <= 0 or args.callers < 1 or args.refusals < 1 or args.baseline_calls < 1 or args.tail < 0:
        parser.error("--outage, --callers, --refusals and --baseline-calls must be positive, --tail >= 0")
    quiet_logs()
    metrics_runtime()

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores\n")
    print("a. refused-call latency (breaker open) vs a plain client failing against a dead loopback port")
    print(table(["client", "p50", "p99", "max"], await refused_latency(args.refusals, args.baseline_calls)))
    if args.skip_outage:
        return
    print(f"\nb. connection attempts reaching a dead dependency during a {args.outage:g} s outage, "
          f"{args.callers} concurrent callers per run (all runs at once)")
    rows = await outage(args.outage, args.callers, args.tail)
    print(table(["run", f"connections during the {args.outage:g} s outage", "refused by the breaker",
                 "callers recovered after the outage (time after it ended)"], rows))


if __name__ == "__main__":
    asyncio.run(main())
