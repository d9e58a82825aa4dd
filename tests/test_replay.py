"""Determinism: recorded production-like histories still replay against today's workflow code.

If this fails after a change to workflows/, the change alters running histories: put it
behind `workflow.patched("<change-id>")` (old branch for old runs) rather than
re-recording these files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from secflow.codec import KeyRing, build_data_converter
from worker import WORKFLOWS

# The workers' data converter, codec on: the recorded (plaintext) histories pass through it,
# as histories written before encryption do in production. Record new histories with
# SECFLOW_CODEC=off (tests/histories/record*.py): an encrypted recording could only be
# replayed with its key ring, which the repository does not (and must not) hold.
CONVERTER = build_data_converter(KeyRing.generate())

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
# Every run of one sharded assessment's tree (tests/histories/record_sharded.py): the
# assessment before and after its continue-as-new at a gate, and its StageTargets shards.
SHARDED = sorted((Path(__file__).parent / "histories" / "sharded").glob("*.json"))


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    """Histories of the legacy AssessmentWorkflow (and incidents) replay on the code kept for them."""
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=WORKFLOWS, data_converter=CONVERTER)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


@pytest.mark.parametrize("path", SHARDED, ids=[p.stem for p in SHARDED])
async def test_sharded_history_replays(path: Path) -> None:
    recorded = json.loads(path.read_text())
    history = WorkflowHistory.from_json(recorded["workflow_id"], recorded["history"])
    replayer = Replayer(workflows=WORKFLOWS, data_converter=CONVERTER)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


def test_there_are_histories_to_replay() -> None:
    assert len(HISTORIES) >= 2
    kinds = {p.stem.rsplit("-", 1)[-1] for p in SHARDED}
    assert kinds == {"Assessment", "StageTargets"}
    assert sum(1 for p in SHARDED if p.stem.endswith("Assessment")) >= 2, "a continue-as-new of the assessment"
