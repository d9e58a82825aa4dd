"""File batches of the path scanners (bandit, semgrep, detect-secrets): the listing, the plan,
fingerprints that do not depend on the batches, and a resumed attempt that runs only the
batches an earlier attempt did not finish.

The worker-SIGKILL tests, with real worker processes and a real dev server, are in
tests/test_pathscan_checkpoint_crash.py.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import sys
import textwrap
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from activities.runner import ToolContext, ToolOutput
from activities.scanners.bandit import BINARY_ENV as BANDIT_ENV
from activities.scanners.bandit import bandit_tool
from activities.scanners.batches import CHECKPOINT_KEY, list_files, plan_batches
from activities.scanners.detect_secrets import detect_secrets_tool
from activities.scanners.semgrep import semgrep_tool
from secflow.errors import ExternalToolError
from secflow.models import StageTaskInput
from secflow.retries import RETRY_TABLE
from secflow.store import open_store
from secflow.tools import RetryClass

ToolFn = Callable[[ToolContext], Awaitable[ToolOutput]]
TOOLS: dict[str, tuple[ToolFn, str]] = {
    "bandit": (bandit_tool, "bandit"),
    "semgrep": (semgrep_tool, "semgrep"),
    "detect-secrets": (detect_secrets_tool, "detect-secrets"),
}


def _pick(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def make_tree(root: Path, files: int) -> Path:
    """Python files each with issues all three tools find (shell=True, pickle, a hard-coded
    password, an AWS-style key generated here), spread over subdirectories, plus what the
    tools must skip: a .git directory, a symlink out of the tree."""
    root.mkdir(parents=True)
    for i in range(files):
        d = root / f"pkg{i % 4}" / ("sub" if i % 3 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        key = "AKIA" + _pick(string.ascii_uppercase + "234567", 16)
        password = _pick(string.ascii_letters + string.digits, 14)
        (d / f"mod_{i:03d}.py").write_text(
            textwrap.dedent(f'''\
                import pickle
                import subprocess

                AWS_ACCESS_KEY_ID = "{key}"
                password = "{password}"


                def run_{i}(cmd):
                    return subprocess.call("ls " + cmd, shell=True)


                def load_{i}(blob):
                    return pickle.loads(blob)
            ''')
        )
    (root / ".git").mkdir()
    (root / ".git" / "hooks.py").write_text('import pickle\npickle.loads(b"")\npassword = "in-git-not-scanned-1"\n')
    outside = root.parent / f"{root.name}-outside.py"
    outside.write_text('import pickle\npickle.loads(b"")\n')
    (root / "linked_out.py").symlink_to(outside)
    return root


def stage_input(tool: str, target: Path, **options: Any) -> StageTaskInput:
    return StageTaskInput(
        assessment_id=f"t-{uuid.uuid4().hex[:10]}", stage_id="scan", kind="sast", tool=tool, target=str(target),
        target_kind="path", scope=[str(target)], options=dict(options), retry=RETRY_TABLE[RetryClass.SCANNER],
    )  # fmt: skip


async def run_direct(tool: str, target: Path, resume: dict[str, Any] | None = None, **options: Any) -> tuple[ToolContext, ToolOutput]:
    fn, _ = TOOLS[tool]
    ctx = ToolContext(stage_input(tool, target, **options), open_store(), resume)
    return ctx, await fn(ctx)


# --- the listing and the plan ------------------------------------------------------------
def test_listing_is_sorted_prunes_and_skips_and_batches_are_capped(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", 10)
    (root / "big.py").write_text("x = 1\n" * 5000)  # 30,000 bytes
    links = [str(root / "linked_out.py")]
    files = list_files(str(root), prune_dirs={".git"}, skip=links, keep=lambda n: n.endswith(".py"))
    names = [rel for rel, _ in files]
    assert names == sorted(names) and len(names) == 11
    assert not any(n.startswith(".git/") or n == "linked_out.py" for n in names)
    plan = plan_batches(str(root), files, max_files=3, max_bytes=10_000)
    assert [rel for batch in plan.batches for rel in batch] == names, "every file once, in order"
    assert all(len(b) <= 3 for b in plan.batches)
    assert ["big.py"] in plan.batches, "a file over the byte cap is a batch of its own"
    sizes = dict(files)
    assert all(sum(sizes[r] for r in b) <= 10_000 for b in plan.batches if b != ["big.py"])
    # the same tree gives the same plan; a changed tree or batch size another digest
    assert plan_batches(str(root), files, max_files=3, max_bytes=10_000) == plan
    assert plan_batches(str(root), files, max_files=4, max_bytes=10_000).digest != plan.digest
    (root / "pkg1" / "new.py").write_text("y = 2\n")
    again = list_files(str(root), prune_dirs={".git"}, skip=links, keep=lambda n: n.endswith(".py"))
    assert plan_batches(str(root), again, max_files=3, max_bytes=10_000).digest != plan.digest


# --- real tools: the batches change nothing but the number of runs ------------------------
@pytest.mark.parametrize("tool", sorted(TOOLS))
async def test_fingerprints_do_not_depend_on_the_batches(tool: str, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", 9)
    _, whole = await run_direct(tool, root, batch_files=1000)
    _, batched = await run_direct(tool, root, batch_files=4)
    assert whole.outputs["batches"] == "1"
    assert int(batched.outputs["batches"]) >= 3
    fingerprints = {f.fingerprint for f in whole.findings}
    assert len(fingerprints) >= 9, sorted(f.location for f in whole.findings)
    assert {f.fingerprint for f in batched.findings} == fingerprints
    assert len(batched.findings) == len(fingerprints), "no finding twice"
    locations = {f.location.rsplit(":", 1)[0] for f in batched.findings}
    assert not any(loc.startswith((".git/", "/")) or loc == "linked_out.py" for loc in locations), locations


# --- resume: only the unfinished batches run again ----------------------------------------
FAKE_BANDIT = """
import json, os, sys
args = sys.argv[1:]
files = args[args.index("--") + 1:]
with open(LOG, "a") as fh:
    fh.write(json.dumps(files) + "\\n")
if os.path.exists(FAIL_FLAG) and sum(1 for _ in open(LOG)) >= 3:
    sys.stderr.write("Traceback (most recent call last):\\nRuntimeError: crash in batch 3\\n")
    sys.exit(1)
print(json.dumps({"errors": [], "results": [
    {"code": "1 x", "filename": f, "issue_confidence": "HIGH", "issue_cwe": {"id": 78}, "issue_severity": "HIGH",
     "issue_text": "planted", "line_number": 1, "test_id": "B602"} for f in files]}))
"""


@pytest.fixture
def fake_bandit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A real executable `bandit` first on PATH: one finding per file it is given, every run's
    file list logged; while the flag file exists, its third run crashes."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    log, flag = tmp_path / "runs.log", tmp_path / "fail"
    body = f"LOG = {str(log)!r}\nFAIL_FLAG = {str(flag)!r}\n" + FAKE_BANDIT
    (bindir / "bandit").write_text(f"#!{sys.executable}\n{body}")
    (bindir / "bandit").chmod(0o755)
    monkeypatch.delenv(BANDIT_ENV, raising=False)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    flag.touch()
    return log, flag


def runs(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def test_a_resumed_attempt_runs_only_the_unfinished_batches(tmp_path: Path, fake_bandit: tuple[Path, Path]) -> None:
    log, flag = fake_bandit
    root = make_tree(tmp_path / "tree", 12)
    inp = stage_input("bandit", root, batch_files=2)
    first = ToolContext(inp, open_store(), None)
    with pytest.raises(ExternalToolError):
        await bandit_tool(first)  # the third batch crashes
    checkpoint = first.heartbeat_payload[CHECKPOINT_KEY]
    assert checkpoint["next_batch"] == 2 and checkpoint["findings"] == 4
    assert first.heartbeat_payload["progress"] == {"done": 2, "total": 6}
    stored = open_store().list_findings(inp.assessment_id)
    assert len(stored) == 4, "the finished batches' findings were stored before the checkpoint"
    done_before = runs(log)

    flag.unlink()
    second = ToolContext(inp, open_store(), first.heartbeat_payload)  # the next attempt
    output = await bandit_tool(second)
    rerun = runs(log)[len(done_before) :]
    assert len(rerun) == 4, "batches 2..5 only"
    assert not {f for batch in done_before[:2] for f in batch} & {f for batch in rerun for f in batch}
    assert output.outputs["resumed_at_batch"] == "2" and output.outputs["batches"] == "6"
    findings = open_store().list_findings(inp.assessment_id)
    assert len(findings) == len({f.fingerprint for f in findings}) == 12 == len(output.findings)
    assert {f.location for f in findings} == {f"{rel}:1" for rel, _ in list_files(str(root), prune_dirs={".git"}, skip=[str(root / "linked_out.py")])}


async def test_a_changed_tree_or_batch_size_scans_everything_again(tmp_path: Path, fake_bandit: tuple[Path, Path]) -> None:
    log, flag = fake_bandit
    flag.unlink()
    root = make_tree(tmp_path / "tree", 6)
    inp = stage_input("bandit", root, batch_files=2)
    first = ToolContext(inp, open_store(), None)
    await bandit_tool(first)
    checkpoint = dict(first.heartbeat_payload)
    checkpoint[CHECKPOINT_KEY] = {**checkpoint[CHECKPOINT_KEY], "next_batch": 1}
    (root / "pkg0" / "added.py").write_text("z = 3\n")
    before = len(runs(log))
    output = await bandit_tool(ToolContext(inp, open_store(), checkpoint))
    assert len(runs(log)) - before == 4 and "resumed_at_batch" not in output.outputs
    before = len(runs(log))
    resized = stage_input("bandit", root, batch_files=3)
    resized.assessment_id = inp.assessment_id
    await bandit_tool(ToolContext(resized, open_store(), checkpoint))
    assert len(runs(log)) - before == 3
    findings = open_store().list_findings(inp.assessment_id)
    assert len(findings) == len({f.fingerprint for f in findings}) == 7


def test_long_paths_split_batches_before_the_argument_limit() -> None:
    from activities.scanners.batches import ARGV_CHARS

    files = [(f"{'d' * 200}/f{i:04d}.py", 10) for i in range(5000)]
    plan = plan_batches("/r", files, max_files=5000, max_bytes=10**9)
    assert len(plan.batches) > 1
    assert all(sum(len("/r") + len(rel) + 16 for rel in batch) <= ARGV_CHARS for batch in plan.batches)
    assert [rel for batch in plan.batches for rel in batch] == [rel for rel, _ in files]
