"""bandit: static analysis of Python code in a `path:` target, as a SecFlow tool.

What runs: ``bandit -r -f json -q --exit-zero --ini /dev/null -x <excludes> -- <path>``
from the assessment's workspace. ``--exit-zero`` keeps "issues found" (normally exit 1)
apart from bandit failing, so any non-zero exit is a real failure. ``--ini /dev/null``:
the code under assessment does not get to configure its own scanner (a planted
``.bandit`` file could otherwise skip tests or exclude the vulnerable files). The
default excludes are written with slashes (``/.git/``) because bandit matches excludes
as substrings of the whole path: a bare ``.git`` would also drop ``/srv/.github-x/repo``.

In batches (activities/scanners/batches.py): the tree's ``*.py``/``*.pyw`` files are listed
once, sorted, and bandit runs on ``batch_files`` of them at a time (absolute paths after
``--``; bandit applies its excludes to them as to the files it finds itself). Each batch's
findings are stored and checkpointed, so an attempt after a crash starts at the first
unfinished batch. ``timeout`` bounds each batch's run.

Before anything runs: the path must be in `scope.allow` (by its given and its real,
symlink-resolved form; outside is a `ScopeViolation`, category security) and must exist.
Symlinks inside the tree that lead outside it or outside the scope are excluded (bandit
follows symlinked files and would quote their code in findings).

Findings: one per issue; ``rule_id`` is bandit's test id (B602), ``title`` its issue text,
severity and confidence from bandit's, CWE from ``issue_cwe.id``, location
``relative/path.py:LINE`` relative to the target directory, and evidence the code snippet
bandit quotes. Title and evidence go through `redact`: bandit quotes hardcoded passwords
verbatim (B105 "Possible hardcoded password: 'hunter2'").

Failures: bandit missing -> permanent; crash, garbage or truncated JSON -> external_tool
(output tails kept); past ``timeout`` -> transient. Files bandit could not parse are not a
failure of the run: they are logged and counted in the stage outputs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from temporalio import activity

from activities.process import locate_binary, run_process, tail
from activities.runner import ToolContext, ToolOutput, run_tool
from activities.scanners.batches import BatchResult, list_files, plan_batches, scan_in_batches
from activities.scanners.offload import off_loop
from secflow.errors import ExternalToolError
from secflow.findings import Confidence, Finding, Severity
from secflow.models import StageTaskInput, StageTaskResult
from secflow.redaction import redact
from secflow.tools import BanditOptions

TOOL = "bandit"
BINARY_ENV = "SECFLOW_BANDIT"  # a name (looked up on PATH) or a path; overrides the search below
DEFAULT_EXCLUDES = (
    "/.svn/", "/CVS/", "/.bzr/", "/.hg/", "/.git/", "/__pycache__/", "/.tox/", "/.nox/", "/.eggs/",
    "/.venv/", "/venv/", "/node_modules/", "/site-packages/",
)  # fmt: skip
# Directories the default excludes always drop: the listing does not enter them.
PRUNED_DIRS = frozenset(e.strip("/") for e in DEFAULT_EXCLUDES)
INCLUDED_SUFFIXES = (".py", ".pyw")  # bandit's own file globs (*.py, *.pyw)
_EVIDENCE_MAX = 2000
_LEVELS = {"low": 1, "medium": 2, "high": 3}
_SEVERITY = {"HIGH": Severity.HIGH, "MEDIUM": Severity.MEDIUM, "LOW": Severity.LOW}
_CONFIDENCE = {"HIGH": Confidence.HIGH, "MEDIUM": Confidence.MEDIUM, "LOW": Confidence.LOW}


def bandit_binary() -> str:
    return locate_binary("bandit", BINARY_ENV)


def build_argv(paths: str | Sequence[str], opts: BanditOptions, skipped_links: Sequence[str] = ()) -> list[str]:
    """bandit's command line for one path (a tree or a file) or one batch of files."""
    argv = [bandit_binary(), "-r", "-f", "json", "-q", "--exit-zero", "--ini", os.devnull]
    argv += ["--exclude", ",".join([*DEFAULT_EXCLUDES, *opts.exclude, *map(_exclude_link, skipped_links)])]
    if opts.skip:
        argv += ["--skip", ",".join(opts.skip)]
    argv += ["--", *([paths] if isinstance(paths, str) else paths)]
    return argv


def _exclude_link(path: str) -> str:
    """An exclude for one absolute link path. bandit drops a file when an exclude is a
    substring of its path or matches it as a glob; a comma (its list separator) becomes
    the glob's one-character wildcard."""
    return path.replace(",", "?")


def parse_bandit_json(
    stdout: bytes, *, root: str, target: str, opts: BanditOptions, stderr: bytes = b""
) -> tuple[list[Finding], list[str]]:
    """(findings, files bandit could not scan) from ``-f json`` output.

    `root` is the directory locations are made relative to. Output that is not bandit's
    JSON (garbage, truncated, wrong shape) raises ExternalToolError with the tails.
    """

    def broken(why: str) -> ExternalToolError:
        return ExternalToolError(f"bandit output unusable: {why}", stdout_tail=tail(stdout), stderr_tail=tail(stderr))

    try:
        doc = json.loads(stdout)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise broken(f"not JSON or truncated ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise broken("no 'results' list in the report")
    errors = [
        f"{_relative(str(e.get('filename', '?')), root)}: {e.get('reason', '?')}"
        for e in doc.get("errors") or []
        if isinstance(e, dict)
    ]
    findings: dict[str, Finding] = {}
    for item in doc["results"]:
        try:
            finding = _finding(item, root=root, target=target)
        except (KeyError, TypeError, ValueError) as exc:
            raise broken(f"unreadable result entry ({type(exc).__name__}: {exc})") from None
        severity = str(item.get("issue_severity", "")).lower()
        confidence = str(item.get("issue_confidence", "")).lower()
        # UNDEFINED (or a level this version does not know) counts as low: kept by default.
        if _LEVELS.get(severity, 1) < _LEVELS[opts.min_severity] or _LEVELS.get(confidence, 1) < _LEVELS[opts.min_confidence]:
            continue
        # Same test on the same line twice (two calls on one line) is one problem to fix.
        findings.setdefault(finding.fingerprint, finding)
    return list(findings.values()), errors


def _finding(item: dict[str, Any], *, root: str, target: str) -> Finding:
    test_id = str(item["test_id"])
    line = int(item["line_number"])
    cwe_id = (item.get("issue_cwe") or {}).get("id")
    evidence = redact(str(item.get("code") or "").rstrip("\n"))
    if len(evidence) > _EVIDENCE_MAX:
        evidence = evidence[:_EVIDENCE_MAX] + " ..."
    return Finding.new(
        tool=TOOL,
        rule_id=test_id,
        title=redact(str(item["issue_text"])),
        severity=_SEVERITY.get(str(item.get("issue_severity", "")).upper(), Severity.INFO),
        confidence=_CONFIDENCE.get(str(item.get("issue_confidence", "")).upper(), Confidence.LOW),
        target=target,
        location=f"{_relative(str(item['filename']), root)}:{line}",
        cwe=[f"CWE-{int(cwe_id)}"] if cwe_id else [],
        evidence=evidence,
    )


def _relative(filename: str, root: str) -> str:
    absolute = os.path.normpath(os.path.join(root, filename))
    rel = os.path.relpath(absolute, root)
    if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
        return os.path.basename(absolute)
    return rel.replace(os.sep, "/")


async def bandit_tool(ctx: ToolContext) -> ToolOutput:
    target = ctx.input.target
    opts = BanditOptions.model_validate(ctx.options)
    real, root = ctx.source_tree()
    # bandit opens symlinked files while it walks: links that leave the tree or the scope
    # are excluded, so no file outside the scope is read or quoted in a finding.
    skipped = await off_loop(lambda stop: ctx.scope.escaping_links(real, stop)) if os.path.isdir(real) else []
    if skipped:
        ctx.log.warning("not following symlinks that leave the scope", count=len(skipped), paths=skipped[:20])
    if os.path.isdir(real):
        # What bandit's own walk would pick (*.py, *.pyw; symlinked directories not
        # entered); its excludes still apply to the files it is given.
        files = await off_loop(lambda stop: list_files(root, prune_dirs=PRUNED_DIRS, skip=skipped, keep=_is_python, stop=stop))
    else:
        files = [(os.path.basename(real), os.path.getsize(real))]
    plan = plan_batches(root, files, max_files=opts.batch_files, max_bytes=opts.batch_max_bytes)

    async def scan(batch: list[str]) -> BatchResult:
        # Absolute paths, as in a whole-tree run: bandit reports them, made relative to `root`.
        result = await run_process(
            build_argv([os.path.join(root, rel) for rel in batch], opts, skipped),
            tool=TOOL,
            cwd=ctx.working_dir(root),
            timeout=opts.timeout.total_seconds(),
        )
        # Parsed off the event loop: a large report must not stall the worker's other activities.
        findings, errors = await off_loop(
            lambda _: parse_bandit_json(result.stdout, root=root, target=target, opts=opts, stderr=result.stderr)
        )
        for error in errors[:20]:
            ctx.log.info("bandit could not scan a file", error=redact(error))
        return BatchResult(findings, {"files_not_scanned": len(errors)})

    scanned = await scan_in_batches(ctx, tool=TOOL, plan=plan, scan=scan)
    unscanned = scanned.counts.get("files_not_scanned", 0)
    ctx.log.info(
        "bandit finished", findings=len(scanned.findings), unscanned=unscanned, batches=len(plan.batches),
        resumed_at=scanned.resumed_at,
    )  # fmt: skip
    return ToolOutput(
        findings=scanned.findings,
        items_done=plan.files,
        items_total=plan.files,
        outputs={
            "issues": str(len(scanned.findings)),
            "files_not_scanned": str(unscanned),
            "symlinks_skipped": str(len(skipped)),
            **scanned.outputs(),
        },
    )


def _is_python(rel: str) -> bool:
    return rel.endswith(INCLUDED_SUFFIXES)


@activity.defn(name="bandit")
async def bandit(inp: StageTaskInput) -> StageTaskResult:
    return await run_tool(bandit_tool, inp)
