"""File batches for path scanners: list the tree once, scan it batch by batch, checkpoint after each.

A scanner run over a whole tree in one process loses all of its work when the worker dies.
Here the tree is listed once (sorted, so every attempt makes the same list), cut into
batches of at most `max_files` files and `max_bytes` bytes, and the tool runs once per
batch. After each batch its findings are stored and the checkpoint (index of the next
batch, a digest of the file list and batch settings, findings so far) is heartbeated
(`ToolContext.checkpoint`: findings first, then the checkpoint), so the next attempt starts
at the first unfinished batch: a crash costs at most the batch in flight. A changed tree or
changed batch settings give another digest, and the scan starts over (findings are upserted
by fingerprint, so nothing is duplicated either way).

The listing is a superset of what the tool scans: each tool keeps its own rules and
excludes (applied to the files it is given), the walk only prunes the directories the
tool always skips and the symlinks that leave the tree or the scope (never followed, never
listed). Locations stay relative to the same root as a whole-tree run, so fingerprints do
not depend on the batch.

Shared by bandit, semgrep and detect-secrets; nmap chunks ports, not files.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import threading
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity

from activities.runner import ToolContext
from secflow.findings import Finding
from secflow.scope import WalkStopped

CHECKPOINT_KEY = "pathscan"
ARGV_CHARS = 256_000  # of file paths per run; Linux allows 2 MB of arguments and environment


@dataclass(frozen=True)
class FileBatches:
    """A tree cut into batches: paths relative to `root`, with `/` separators."""

    root: str
    batches: list[list[str]]
    digest: str

    @property
    def files(self) -> int:
        return sum(len(b) for b in self.batches)


@dataclass
class BatchResult:
    """What one batch produced: its findings, and counters summed over all batches."""

    findings: list[Finding]
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class ScanResult:
    findings: list[Finding]  # every finding of the scan, earlier attempts' included
    counts: dict[str, int]
    batches: int
    batches_run: int  # by this attempt
    resumed_at: int  # first batch this attempt ran (0: from the start)

    def outputs(self) -> dict[str, str]:
        """Stage outputs: the batch count, and where a resumed attempt started."""
        return {"batches": str(self.batches), **({"resumed_at_batch": str(self.resumed_at)} if self.resumed_at else {})}


def list_files(
    root: str,
    *,
    prune_dirs: Collection[str] = (),
    skip: Collection[str] = (),
    keep: Callable[[str], bool] | None = None,
    links: bool = True,
    stop: threading.Event | None = None,
) -> list[tuple[str, int]]:
    """(relative path, size) of the files under `root`, sorted by path.

    Symlinked directories are not entered (as the tools' own walks); symlinked files are
    listed when `links` is true, unless their absolute path is in `skip` (links leaving the
    tree or the scope). Directories named in `prune_dirs` are not entered; `keep(rel)`
    filters files by their relative path (a tool's own excludes, where they are cheap to
    apply the tool's way, so excluded files do not fill batches).
    Blocking: run it with `off_loop`, which sets `stop` when the activity is cancelled.
    """
    skipped = set(skip)
    out: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if stop is not None and stop.is_set():
            raise WalkStopped(root)
        dirnames[:] = [d for d in dirnames if d not in prune_dirs and os.path.join(dirpath, d) not in skipped]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if path in skipped:
                continue
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if keep is not None and not keep(rel):
                continue
            try:
                if not links and os.path.islink(path):
                    continue
                st = os.stat(path)  # follows a link: its target's size and kind
            except OSError:
                continue  # a dangling link or a file gone meanwhile: nothing to scan
            if not stat.S_ISREG(st.st_mode):
                continue
            out.append((rel, st.st_size))
    out.sort()
    return out


def plan_batches(root: str, files: Sequence[tuple[str, int]], *, max_files: int, max_bytes: int) -> FileBatches:
    """Consecutive batches of at most `max_files` files and `max_bytes` bytes (a file larger
    than `max_bytes` is a batch of its own), and at most ARGV_CHARS of paths on the tool's
    command line (long paths must not reach the kernel's argument limit). Deterministic
    for a given listing."""
    batches: list[list[str]] = []
    current: list[str] = []
    size = chars = 0
    for rel, nbytes in files:
        width = len(root) + len(rel) + 16  # as an absolute path or an --include=/... option
        if current and (len(current) >= max_files or size + nbytes > max_bytes or chars + width > ARGV_CHARS):
            batches.append(current)
            current, size, chars = [], 0, 0
        current.append(rel)
        size += nbytes
        chars += width
    if current:
        batches.append(current)
    h = hashlib.sha256(f"{max_files}/{max_bytes}\n".encode())
    for rel, nbytes in files:
        h.update(f"{rel}\0{nbytes}\n".encode())
    return FileBatches(root=root, batches=batches, digest=h.hexdigest())


async def scan_in_batches(
    ctx: ToolContext,
    *,
    tool: str,
    plan: FileBatches,
    scan: Callable[[list[str]], Awaitable[BatchResult]],
) -> ScanResult:
    """Run `scan` on each batch from the resume point; store and checkpoint after each."""
    total = len(plan.batches)
    start, findings, counts = await _resume(ctx, tool, plan)
    by_fingerprint: dict[str, Finding] = {f.fingerprint: f for f in findings}
    if start:
        ctx.log.info(f"resuming {tool} scan", next_batch=start, of=total, findings_so_far=len(by_fingerprint))
    for index in range(start, total):
        result = await scan(plan.batches[index])
        new = [f for f in result.findings if f.fingerprint not in by_fingerprint]
        for f in result.findings:
            by_fingerprint[f.fingerprint] = f
        for key, value in result.counts.items():
            counts[key] = counts.get(key, 0) + value
        payload: dict[str, Any] = {
            CHECKPOINT_KEY: {
                "tool": tool,
                "digest": plan.digest,
                "next_batch": index + 1,
                "batches": total,
                "findings": len(by_fingerprint),
                "counts": dict(counts),
            },
            "progress": {"done": index + 1, "total": total},
        }
        await _checkpoint(ctx, payload, new)
        ctx.log.info(
            f"{tool} batch scanned", batch=index, of=total, files=len(plan.batches[index]), findings=len(result.findings)
        )
    return ScanResult(list(by_fingerprint.values()), counts, batches=total, batches_run=total - start, resumed_at=start)


async def _checkpoint(ctx: ToolContext, payload: dict[str, Any], findings: list[Finding]) -> None:
    if activity.in_activity():
        await ctx.checkpoint(payload, findings)
    else:  # called directly (tests, benches): store the findings, keep the payload
        await ctx.save_findings(findings)
        ctx.heartbeat_payload = payload


async def _resume(ctx: ToolContext, tool: str, plan: FileBatches) -> tuple[int, list[Finding], dict[str, int]]:
    """Where the previous attempt stopped, and its findings (read back from the store)."""
    raw = (ctx.resume or {}).get(CHECKPOINT_KEY)
    if not isinstance(raw, dict):
        return 0, [], {}
    if raw.get("tool") != tool:  # another tool's checkpoint (a fallback taking over): not ours to resume
        return 0, [], {}
    if raw.get("digest") != plan.digest:
        ctx.log.info(f"the tree or the batch settings changed since the last attempt; {tool} scans it all again")
        return 0, [], {}
    try:
        start = int(raw.get("next_batch") or 0)
        expected = int(raw.get("findings") or 0)
        counts = {str(k): int(v) for k, v in dict(raw.get("counts") or {}).items()}
    except (TypeError, ValueError):
        ctx.log.warning("ignoring an unreadable checkpoint", tool=tool)
        return 0, [], {}
    if not 0 < start <= len(plan.batches):
        return 0, [], {}
    target = ctx.input.target
    stored = await asyncio.to_thread(ctx.store.list_findings, ctx.input.assessment_id)
    findings = [f for f in stored if f.tool == tool and f.target == target]
    if len(findings) < expected:
        # Stored first, checkpointed after: fewer in the store means the store lost some.
        ctx.log.warning(f"checkpointed {tool} findings missing from the store; scanning every batch again")
        return 0, [], {}
    return start, findings, counts
