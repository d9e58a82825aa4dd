"""Hostile source trees cannot hold a worker: scanner walks and parsing stay off the loop.

The tree is a symlink farm: chains of links, each resolved link by link by the scope
walk that keeps detect-secrets from following links out of scope. Cheap to create,
seconds to walk. Before the walk ran in a thread, it blocked the worker's event loop for
those seconds and every other activity on the worker (here a loop watcher with a 2 s
heartbeat timeout, standing for another assessment's portscan) failed "no heartbeat".
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from activities.registry import ALL_ACTIVITIES
from tests import support_hostile_workflow as watch
from tests.helpers import final_status, make_spec, start
from worker import WORKFLOWS

CHAINS, CHAIN_LENGTH = 60, 150


def symlink_farm(root: Path) -> None:
    (root / "app.py").write_text("print('hello')\n")
    farm = root / "farm"
    farm.mkdir()
    (farm / "end.txt").write_text("")
    for c in range(CHAINS):
        chain = farm / f"c{c}"
        chain.mkdir()
        previous = "../end.txt"
        for k in range(CHAIN_LENGTH):
            os.symlink(previous, chain / f"l{k}")
            previous = f"l{k}"


def test_the_farm_is_slow_to_walk(tmp_path: Path) -> None:
    """The premise, checked without a clock: the walk resolves every link of every chain."""
    from secflow.scope import Scope

    symlink_farm(tmp_path)
    assert Scope.parse([str(tmp_path)]).escaping_links(str(tmp_path)) == []
    assert sum(1 for _ in (tmp_path / "farm").rglob("l*")) == CHAINS * CHAIN_LENGTH


async def test_secrets_walk_does_not_starve_other_activities(client: Client, tmp_path: Path) -> None:
    symlink_farm(tmp_path)
    queue = f"test-{uuid.uuid4().hex[:10]}"
    # The real worker's workflows and activities, plus the watcher, on one worker.
    worker = Worker(
        client,
        task_queue=queue,
        workflows=[*WORKFLOWS, watch.LoopWatchWorkflow],
        activities=[*ALL_ACTIVITIES, watch.watch_loop],
    )
    watch.STOP.clear()
    async with worker:
        watcher = await client.start_workflow(
            watch.LoopWatchWorkflow.run, 120.0, id=f"watch-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
        spec = make_spec(
            [{"path": str(tmp_path)}],
            [
                {
                    "id": "secrets",
                    "kind": "secrets",
                    "tool": "detect_secrets",
                    "retry": {"max_attempts": 1},
                    # detect-secrets itself skips the farm; the scope walk cannot.
                    "options": {"exclude_files": ["^farm/"]},
                }
            ],
            scope={"allow": [str(tmp_path)]},
        )
        handle = await start(client, spec, queue)
        status = await final_status(handle, timeout=180)
        watch.STOP.set()
        verdict = await watcher.result()
    print(f"loop watcher during the walk: {verdict}")
    assert status.stages["secrets"].state == "succeeded", status.stages["secrets"]
    assert verdict.startswith("ok"), verdict
