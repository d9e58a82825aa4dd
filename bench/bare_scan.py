"""Bare Temporal baseline for bench/scale.py: the same TCP connects as SecFlow's scan stage,
with none of SecFlow's machinery (no spec, store, locks, checkpoints or classification).

One activity per target connects to one port of `127.x.y.z` (the same hosts SecFlow
scans, from `target_host`), with the retry policy, heartbeat timeout and per-attempt
timeout SecFlow uses for a scanner stage, which bench/scale.py passes in the input so
this worker imports nothing of SecFlow (and starts as a bare worker would).

The workflow keeps at most `concurrency` activities in flight (a sliding window) and
continues as new every `per_run` targets, so its histories stay bounded at any target
count; its progress (`progress` query) and result are counts, never a per-target map.

    python -m bench.bare_scan TASK_QUEUE        # a worker, as bench/scale.py spawns it
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

NOT_OPEN_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT})


def target_host(index: int) -> str:
    """The index-th distinct loopback host: 127.0.0.1, 127.0.0.2, ... 127.0.0.254, 127.0.1.1, ...

    Never .0 or .255 in the last octet; 16.5 million hosts before it runs out of 127/8.
    """
    if index < 0 or index >= 254 * 256 * 256:
        raise ValueError(f"no loopback host number {index}")
    upper, low = divmod(index, 254)
    return f"127.{upper // 256}.{upper % 256}.{low + 1}"


@dataclass
class RetrySettings:
    """A RetryPolicy as plain data (the workflow input must serialise)."""

    maximum_attempts: int = 3
    initial_interval_s: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval_s: float = 30.0
    non_retryable_error_types: list[str] = field(default_factory=list)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial_interval=timedelta(seconds=self.initial_interval_s),
            backoff_coefficient=self.backoff_coefficient,
            maximum_interval=timedelta(seconds=self.maximum_interval_s),
            maximum_attempts=self.maximum_attempts,
            non_retryable_error_types=list(self.non_retryable_error_types),
        )


@dataclass
class ConnectInput:
    host: str
    port: int
    connect_timeout_s: float = 1.0


@dataclass
class BareCounts:
    done: int = 0
    closed: int = 0
    open: int = 0
    filtered: int = 0
    failed: int = 0
    runs: int = 1


@dataclass
class BareScanInput:
    total: int
    port: int
    concurrency: int = 200
    per_run: int = 2000
    cursor: int = 0  # index of the first target this run scans
    connect_timeout_s: float = 1.0
    start_to_close_s: float = 1800.0
    heartbeat_timeout_s: float = 4.0
    retry: RetrySettings = field(default_factory=RetrySettings)
    counts: BareCounts = field(default_factory=BareCounts)


@activity.defn(name="bare_connect")
async def bare_connect(inp: ConnectInput) -> str:
    """One TCP connect: "open", "closed" or "filtered". Other errors fail the attempt."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(inp.connect_timeout_s):
            await loop.sock_connect(sock, (inp.host, inp.port))
        return "open"
    except TimeoutError:
        return "filtered"
    except OSError as exc:
        if exc.errno in NOT_OPEN_ERRNOS:
            return "closed"
        raise ApplicationError(f"connect to {inp.host}:{inp.port}: {exc}", type="transient") from None
    finally:
        sock.close()


@workflow.defn(name="BareScanWorkflow")
class BareScanWorkflow:
    def __init__(self) -> None:
        self._counts = BareCounts()

    @workflow.query
    def progress(self) -> BareCounts:
        return self._counts

    @workflow.run
    async def run(self, inp: BareScanInput) -> BareCounts:
        self._counts = inp.counts
        end = min(inp.total, inp.cursor + inp.per_run)
        window = asyncio.Semaphore(inp.concurrency)
        policy = inp.retry.policy()

        async def scan(index: int) -> None:
            async with window:
                try:
                    outcome = await workflow.execute_activity(
                        bare_connect,
                        ConnectInput(host=target_host(index), port=inp.port, connect_timeout_s=inp.connect_timeout_s),
                        start_to_close_timeout=timedelta(seconds=inp.start_to_close_s),
                        heartbeat_timeout=timedelta(seconds=inp.heartbeat_timeout_s),
                        retry_policy=policy,
                    )
                except ActivityError:
                    outcome = "failed"
            setattr(self._counts, outcome, getattr(self._counts, outcome) + 1)
            self._counts.done += 1

        await asyncio.gather(*(scan(i) for i in range(inp.cursor, end)))
        if end < inp.total:
            self._counts.runs += 1
            workflow.continue_as_new(
                BareScanInput(
                    total=inp.total,
                    port=inp.port,
                    concurrency=inp.concurrency,
                    per_run=inp.per_run,
                    cursor=end,
                    connect_timeout_s=inp.connect_timeout_s,
                    start_to_close_s=inp.start_to_close_s,
                    heartbeat_timeout_s=inp.heartbeat_timeout_s,
                    retry=inp.retry,
                    counts=self._counts,
                )
            )
        return self._counts


async def main() -> None:
    from temporalio.client import Client
    from temporalio.worker import Worker

    # Registered from the module, not from __main__: the workflow sandbox needs an importable one.
    from bench.bare_scan import BareScanWorkflow, bare_connect

    client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
    # The same activity slots per worker as SecFlow's worker.py (its default is 50).
    slots = int(os.environ.get("SECFLOW_MAX_CONCURRENT_ACTIVITIES", "50"))
    async with Worker(
        client,
        task_queue=sys.argv[1],
        workflows=[BareScanWorkflow],
        activities=[bare_connect],
        max_concurrent_activities=slots,
    ):
        print("bare worker started", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
