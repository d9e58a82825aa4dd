"""nmap in port chunks with checkpoints, for real: real nmap (through a recording shim
that notes each run's port list, then runs the real binary) against loopback listeners.

- through temporalio's ActivityEnvironment (the real `run_tool`, store and heartbeats):
  one run per chunk, a checkpoint after each, and a resumed attempt that starts after the
  last finished chunk and keeps the earlier chunks' findings from the store;
- through real worker processes and a real dev server: a worker SIGKILLed mid-scan and
  the dev server restarted mid-scan; every finding exactly once, finished chunks not
  scanned again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

import activities.scanners.nmap as nmap_scanner
from activities.scanners.nmap import LocalCheckpoint, NmapCheckpoint, nmap, port_argument, port_chunks, ports_digest
from bench.nmap_crash import (
    NmapRun,
    WorkerProcess,
    checkpointed_ports,
    install_recording_nmap,
    nmap_stage,
    read_runs,
    redone_seconds,
    rescanned_ranges,
    wait_until,
)
from secflow.models import StageTaskInput, StageTaskResult
from secflow.retries import plan_for
from secflow.settings import load_settings
from secflow.spec import Spec
from secflow.store import open_store
from secflow.temporal_client import connect
from secflow.tools import TOOLS, NmapOptions
from tests.devserver import DevServer
from tests.helpers import final_status, make_spec, start
from tests.servers import listeners_in_window

HOST = "127.0.0.1"
REAL_NMAP = shutil.which("nmap")


@pytest.fixture
def shim_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The recording nmap, first on PATH (for in-process activities and worker processes)."""
    assert REAL_NMAP, "nmap is not installed: run `sh scripts/system-deps.sh`"
    directory = tmp_path / "bin"
    install_recording_nmap(directory, REAL_NMAP)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")
    return directory


def stage_input(ports: str, **options: Any) -> StageTaskInput:
    return StageTaskInput(
        assessment_id=f"t-{uuid.uuid4().hex[:10]}",
        stage_id="ports",
        kind="discovery",
        tool="nmap",
        target=HOST,
        target_kind="host",
        options={"ports": ports, "timing": 4, "host_timeout": "60s", **options},
        scope=[HOST],
        retry=plan_for(TOOLS["nmap"].retry_class),
    )


async def run(
    inp: StageTaskInput, *, resume: dict[str, Any] | None = None, local: dict[str, Any] | None = None
) -> tuple[StageTaskResult, list[dict[str, Any]]]:
    """Run the nmap activity (as a retry when given the heartbeat `resume` and/or a `local`
    checkpoint on this host); returns its result and every heartbeat payload it sent."""
    env = ActivityEnvironment()
    if resume is not None or local is not None:
        env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[resume] if resume else [])
    if local is not None:
        LocalCheckpoint(inp, env.info).write(local)
    beats: list[dict[str, Any]] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    result = await env.run(nmap, inp)
    return result, beats


def checkpoints(beats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Distinct checkpoints in the order sent (the keep-alive repeats the latest)."""
    seen: list[dict[str, Any]] = []
    for beat in beats:
        if beat.get("nmap") and (not seen or seen[-1] != beat):
            seen.append(beat)
    return seen


def all_found(assessment_id: str) -> list[str]:
    """Locations of the assessment's nmap findings; none may be there twice."""
    found = [f.location for f in open_store().list_findings(assessment_id) if f.tool == "nmap"]
    assert len(found) == len(set(found)), f"duplicate findings: {found}"
    return found


def locations(assessment_id: str, base: int, offsets: list[int]) -> list[str]:
    """The assessment's nmap findings among our listeners (another process may listen
    inside the scanned window: such a port is found, rightly, and ignored here)."""
    ours = {f"{HOST}:{base + o}" for o in offsets}
    return sorted(x for x in all_found(assessment_id) if x in ours)


# ---------------------------------------------------------------------------------------
# chunks and checkpoints, through the real activity wrapper
# ---------------------------------------------------------------------------------------
def test_port_chunks_cover_the_list_once_from_any_start() -> None:
    ports = list(range(1, 11))
    assert port_chunks(ports, 4) == [(0, [1, 2, 3, 4]), (4, [5, 6, 7, 8]), (8, [9, 10])]
    assert port_chunks(ports, 4, start=4) == [(4, [5, 6, 7, 8]), (8, [9, 10])]
    assert port_chunks(ports, 4, start=10) == []
    assert port_argument([9, 10, 1, 2, 3]) == "1-3,9-10"
    assert NmapOptions().chunk_ports == 250
    for bad in (0, -1, 70000):
        with pytest.raises(ValueError):
            NmapOptions.model_validate({"chunk_ports": bad})


def test_redone_seconds_counts_only_scanning_thrown_away() -> None:
    # worker 10 finishes chunk a, is SIGKILLed at t=7.4 in chunk b (its orphaned nmap
    # finishing later counts only up to the kill); worker 20 scans b again, then c.
    runs = [
        NmapRun(1, 10, "a", [], 0.0, 5.6, True),
        NmapRun(2, 10, "b", [], 5.9, 11.2, True),
        NmapRun(3, 20, "b", [], 12.4, 17.5, True),
        NmapRun(4, 20, "c", [], 17.6, 23.0, True),
    ]
    assert redone_seconds(runs, killed_worker=10, killed_at=7.4) == pytest.approx(1.5)
    assert rescanned_ranges(runs) == {"b": 2}
    # the same worker scanning a whole range again (a restart without any checkpoint)
    again = [NmapRun(1, 10, "all", [], 0.0, 4.0, False), NmapRun(2, 10, "all", [], 6.0, 16.0, True)]
    assert redone_seconds(again) == pytest.approx(4.0)


async def test_each_chunk_is_one_run_and_is_checkpointed_after_its_findings(shim_dir: Path) -> None:
    base, listeners = listeners_in_window(200, [3, 120, 199])
    try:
        inp = stage_input(f"{base}-{base + 199}", chunk_ports=50, max_rate=2000)
        result, beats = await run(inp)
    finally:
        listeners.close()
    runs = read_runs(shim_dir)
    assert [r.ports for r in runs] == [f"{base + i}-{base + i + 49}" for i in (0, 50, 100, 150)]
    assert all(r.argv[r.argv.index("--max-rate") + 1] == "2000" for r in runs), "every run honours the rate limit"
    assert locations(inp.assessment_id, base, [3, 120, 199]) == [f"{HOST}:{base + o}" for o in (3, 120, 199)]
    assert result.findings == len(all_found(inp.assessment_id)) and result.items_done == result.items_total == 200
    marks = checkpoints(beats)
    assert [c["nmap"]["next_index"] for c in marks] == [50, 100, 150, 200]
    assert [c["progress"] for c in marks] == [{"done": d, "total": 200} for d in (50, 100, 150, 200)]
    stored = {f.fingerprint: int(f.location.rsplit(":", 1)[1]) for f in open_store().list_findings(inp.assessment_id)}
    for mark in marks:  # each checkpoint names exactly the findings below its watermark
        below = {fp for fp, port in stored.items() if port < base + mark["nmap"]["next_index"]}
        assert set(mark["nmap"]["fingerprints"]) == below


async def test_a_resumed_attempt_starts_after_the_last_chunk_and_keeps_its_findings(shim_dir: Path) -> None:
    base, listeners = listeners_in_window(200, [3, 120, 199])
    try:
        inp = stage_input(f"{base}-{base + 199}", chunk_ports=50, max_rate=2000)
        _, beats = await run(inp)
        after_two = next(c for c in checkpoints(beats) if c["nmap"]["next_index"] == 100)
        # The port of chunk 1 closes: if the resumed attempt scanned chunk 1 again it could
        # not report it; it must come from the checkpoint (and the store).
        listeners.socks[0].close()
        (shim_dir / "nmap-runs.jsonl").unlink()
        result, resumed_beats = await run(inp, resume=after_two)
    finally:
        listeners.close()
    assert [r.ports for r in read_runs(shim_dir)] == [f"{base + 100}-{base + 149}", f"{base + 150}-{base + 199}"]
    assert result.findings == len(all_found(inp.assessment_id)), "the finding of chunk 1 comes back from the store"
    assert locations(inp.assessment_id, base, [3, 120, 199]) == [f"{HOST}:{base + o}" for o in (3, 120, 199)]
    assert checkpoints(resumed_beats)[-1]["nmap"]["chunks_done"] == 4


async def test_the_local_checkpoint_counts_when_it_is_ahead_of_the_heartbeat(shim_dir: Path) -> None:
    # What a server restart leaves: the heartbeat the server kept is after chunk 1, but
    # chunks 2 and 3 finished during the outage (stored, and written to this host's copy).
    base, listeners = listeners_in_window(200, [3, 120, 199])
    try:
        inp = stage_input(f"{base}-{base + 199}", chunk_ports=50, max_rate=2000)
        _, beats = await run(inp)
        by_index = {c["nmap"]["next_index"]: c for c in checkpoints(beats)}
        (shim_dir / "nmap-runs.jsonl").unlink()
        result, _ = await run(inp, resume=by_index[50], local=by_index[150]["nmap"])
        assert [r.ports for r in read_runs(shim_dir)] == [f"{base + 150}-{base + 199}"]
        assert result.findings == len(all_found(inp.assessment_id))
        assert not LocalCheckpoint(inp, ActivityEnvironment().info).path.exists(), "removed once the scan is done"

        # A local copy naming findings the store does not have is not trusted: the
        # heartbeat checkpoint is used instead.
        (shim_dir / "nmap-runs.jsonl").unlink()
        forged = {**by_index[150]["nmap"], "fingerprints": ["f" * 64]}
        result, _ = await run(inp, resume=by_index[50], local=forged)
        assert [r.ports for r in read_runs(shim_dir)] == [f"{base + i}-{base + i + 49}" for i in (50, 100, 150)]
    finally:
        listeners.close()
    assert locations(inp.assessment_id, base, [3, 120, 199]) == [f"{HOST}:{base + o}" for o in (3, 120, 199)]


async def test_a_host_with_more_findings_than_a_heartbeat_lists_resumes_from_the_store(
    shim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tarpit answers on every port: past LISTED_FINDINGS the checkpoint carries only the
    # count, and the retry finds the earlier chunks' findings in the store by port.
    monkeypatch.setattr(nmap_scanner, "LISTED_FINDINGS", 1)
    base, listeners = listeners_in_window(200, [3, 120, 140, 199])
    try:
        inp = stage_input(f"{base}-{base + 199}", chunk_ports=50, max_rate=2000)
        _, beats = await run(inp)
        after_three = next(c for c in checkpoints(beats) if c["nmap"]["next_index"] == 150)
        assert after_three["nmap"]["found"] >= 3 and after_three["nmap"]["fingerprints"] == []
        (shim_dir / "nmap-runs.jsonl").unlink()
        result, _ = await run(inp, resume=after_three)
    finally:
        listeners.close()
    assert [r.ports for r in read_runs(shim_dir)] == [f"{base + 150}-{base + 199}"]
    assert result.findings == len(all_found(inp.assessment_id))
    assert locations(inp.assessment_id, base, [3, 120, 140, 199]) == [f"{HOST}:{base + o}" for o in (3, 120, 140, 199)]


@pytest.mark.parametrize("broken", ["other-ports", "findings-missing", "too-many-unlisted", "garbage"])
async def test_an_unusable_checkpoint_means_scanning_every_port(shim_dir: Path, broken: str) -> None:
    base, listeners = listeners_in_window(100, [10])
    try:
        inp = stage_input(f"{base}-{base + 99}", chunk_ports=50, max_rate=2000)
        ports = list(range(base, base + 100))
        checkpoint: dict[str, Any] = {
            "other-ports": NmapCheckpoint(digest=ports_digest(ports[:-1]), next_index=50, chunks_done=1).model_dump(),
            "findings-missing": NmapCheckpoint(
                digest=ports_digest(ports), next_index=50, chunks_done=1, found=1, fingerprints=["0" * 64]
            ).model_dump(),
            "too-many-unlisted": NmapCheckpoint(digest=ports_digest(ports), next_index=50, chunks_done=1, found=5).model_dump(),
            "garbage": {"next_index": "soon"},
        }[broken]
        result, _ = await run(inp, resume={"nmap": checkpoint, "progress": {"done": 50, "total": 100}})
    finally:
        listeners.close()
    assert [r.ports for r in read_runs(shim_dir)] == [f"{base}-{base + 49}", f"{base + 50}-{base + 99}"]
    assert result.findings == len(all_found(inp.assessment_id))
    assert locations(inp.assessment_id, base, [10]) == [f"{HOST}:{base + 10}"]


# ---------------------------------------------------------------------------------------
# crashes for real: worker processes, a dev server
# ---------------------------------------------------------------------------------------
# 400 ports in chunks of 100 at 25 probes/s: about 4 s a chunk, longer than the SDK's
# heartbeat throttle (0.8 x the 4 s heartbeat timeout), so a checkpoint is on the server
# before the next chunk ends.
WIDTH, CHUNK, RATE = 400, 100, 25.0
OFFSETS = [5, 150, 395]


def crash_spec(base: int) -> Spec:
    return make_spec([{"host": HOST}], [nmap_stage(base, WIDTH, chunk=CHUNK, max_rate=RATE)])


def assert_each_finding_once(workflow_id: str, base: int) -> None:
    assert locations(workflow_id, base, OFFSETS) == [f"{HOST}:{base + o}" for o in OFFSETS], "every open port exactly once"


@pytest.mark.slow
async def test_sigkilled_worker_mid_scan_resumes_after_the_last_chunk(
    client: Client, server: DevServer, task_queue: str, tmp_path: Path, shim_dir: Path
) -> None:
    base, listeners = listeners_in_window(WIDTH, OFFSETS)
    first = WorkerProcess(task_queue, server.address, tmp_path / "worker1.log", shim_dir)
    second: WorkerProcess | None = None
    try:
        handle = await start(client, crash_spec(base), task_queue)

        async def one_chunk_on_server() -> bool:
            return (await checkpointed_ports(client, handle))[1] >= CHUNK

        await wait_until(one_chunk_on_server, 60, "a checkpoint after the first chunk")
        _, done_at_kill = await checkpointed_ports(client, handle)
        first.kill()
        killed_at = time.time()
        second = WorkerProcess(task_queue, server.address, tmp_path / "worker2.log", shim_dir)
        status = await final_status(handle)
    finally:
        listeners.close()
        first.stop()
        if second is not None:
            second.stop()
    assert status.outcome == "completed", status.reason
    assert status.stages["ports"].attempts >= 2
    assert_each_finding_once(handle.id, base)
    runs = read_runs(shim_dir)
    finished_before = {port_argument(list(range(base + i, base + i + CHUNK))) for i in range(0, done_at_kill, CHUNK)}
    assert second is not None
    resumed = [r.ports for r in runs if r.worker == second.pid]
    assert resumed, "the second worker ran the rest of the scan"
    assert not finished_before & set(resumed), f"chunks checkpointed before the kill were scanned again: {resumed}"
    assert "resuming nmap scan" in second.text()
    # the chunk in flight at the kill is the only one scanned twice
    assert len(rescanned_ranges(runs)) <= 1, rescanned_ranges(runs)
    redone = redone_seconds(runs, killed_worker=first.pid, killed_at=killed_at)
    print(f"\nnmap SIGKILL: {redone:.1f}s of scanning redone (chunk of {CHUNK} ports at {RATE:g}/s)")
    errors = open_store().list_errors(handle.id)
    assert errors and all(e.outcome == "recovered" for e in errors)


@pytest.mark.slow
async def test_server_restart_mid_scan_redoes_at_most_one_chunk(task_queue: str, tmp_path: Path, shim_dir: Path) -> None:
    own = DevServer(tmp_path / "restart.db", tmp_path / "restart-server.log")
    own.start()
    base, listeners = listeners_in_window(WIDTH, OFFSETS)
    worker = WorkerProcess(task_queue, own.address, tmp_path / "worker.log", shim_dir)
    try:
        settings = load_settings({**os.environ, "TEMPORAL_ADDRESS": own.address})
        client = await connect(settings)
        handle = await start(client, crash_spec(base), task_queue)

        async def one_chunk_on_server() -> bool:
            return (await checkpointed_ports(client, handle))[1] >= CHUNK

        await wait_until(one_chunk_on_server, 60, "a checkpoint after the first chunk")
        own.stop()
        await asyncio.sleep(2)
        own.start()
        client = await connect(settings)
        status = await final_status(client.get_workflow_handle(handle.id), timeout=180)
    finally:
        listeners.close()
        worker.stop()
        own.stop()
    assert status.outcome == "completed", status.reason
    assert_each_finding_once(handle.id, base)
    runs = read_runs(shim_dir)
    rescanned = rescanned_ranges(runs)
    redone = redone_seconds(runs)
    print(f"\nnmap server restart: attempts={status.stages['ports'].attempts} rescanned={rescanned} redone={redone:.1f}s")
    assert sum(n - 1 for n in rescanned.values()) <= 1, f"more than one chunk scanned again: {rescanned}"
