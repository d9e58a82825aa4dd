"""detect-secrets: hard-coded secrets in a `path:` target, as a SecFlow tool.

What runs: ``detect-secrets scan --all-files --no-verify --exclude-files <regex>
[--disable-plugin <name>...] .`` with the target directory as its working directory, so
every reported filename is relative to the target. ``--all-files``: every file, not only
what git tracks (an assessment scans a tree, tracked or not). ``--no-verify``: by default
detect-secrets *verifies* candidates with network calls (AWS STS, Slack, Stripe, ...);
an assessment must never send a found credential anywhere, and tests never leave loopback.

In batches (activities/scanners/batches.py): the tree's files are listed once, sorted
(the default-excluded directories and symlinks leaving the scope left out), and
detect-secrets runs on ``batch_files`` of them at a time, given as paths relative to the
target (its working directory), so the reported filenames are those of a whole-tree run;
it applies its ``--exclude-files`` regex to them as to a walk. Each batch's findings are
stored and checkpointed; an attempt after a crash starts at the first unfinished batch.
``timeout`` bounds each batch's run.

Before anything runs: the path must be in `scope.allow` (given and symlink-resolved form;
outside is a `ScopeViolation`, category security) and must exist. Symlinks inside the tree
that resolve outside the scope are excluded from the scan: detect-secrets would otherwise
follow them and read, say, ``~/.aws/credentials``.

Findings: one per (secret type, file, line). ``rule_id`` is the type ("AWS Access Key"),
``location`` ``relative/file:LINE``, severity high for keys, tokens, private keys and
passwords, medium for high-entropy strings (a heuristic), low for public IPs. The
evidence is ONLY the type, the location and the SHA-1 ``hashed_secret`` detect-secrets
reports: the secret's value is never read by SecFlow, so it cannot reach the store,
logs, Temporal history, reports or alerts (detect-secrets' JSON does not contain it).

Failures: detect-secrets missing -> permanent; a crash, garbage or truncated JSON ->
external_tool (output tails kept, redacted); past its timeout -> transient.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

from temporalio import activity

from activities.process import locate_binary, run_process, tail, time_budget
from activities.runner import ToolContext, ToolOutput, run_tool
from activities.scanners.batches import BatchResult, list_files, plan_batches, scan_in_batches
from activities.scanners.offload import off_loop
from secflow.errors import ExternalToolError
from secflow.findings import Confidence, Finding, Severity
from secflow.models import StageTaskInput, StageTaskResult
from secflow.redaction import redact
from secflow.tools import DetectSecretsOptions

TOOL = "detect-secrets"  # its canonical name (secflow/tools.py); fingerprints keep the first spelling
BINARY = "detect-secrets"
BINARY_ENV = "SECFLOW_DETECT_SECRETS"  # a name (looked up on PATH) or a path; overrides the search below
# Relative paths never scanned: VCS internals, caches and installed third-party code
# (full of test keys that are nobody's secret).
PRUNED_DIRS = (".git", ".hg", ".svn", "__pycache__", ".tox", ".nox", ".venv", "venv", "node_modules", "site-packages",
               ".mypy_cache", ".pytest_cache")  # fmt: skip
DEFAULT_EXCLUDE = r"(^|/)(" + "|".join(map(re.escape, PRUNED_DIRS)) + r")(/|$)"
_HEURISTIC = {"Base64 High Entropy String", "Hex High Entropy String"}
_INFORMATIONAL = {"Public IP (ipv4)"}
_KEYWORDISH = {"Secret Keyword", "Basic Auth Credentials"}
_HASH = re.compile(r"^[0-9a-f]{40}$")


def detect_secrets_binary() -> str:
    return locate_binary(BINARY, BINARY_ENV)


def build_argv(scan: str | Sequence[str], opts: DetectSecretsOptions, extra_excludes: list[str]) -> list[str]:
    """detect-secrets' command line for one path (a tree or a file) or one batch of files."""
    argv = [detect_secrets_binary(), "scan", "--all-files", "--no-verify"]
    excludes = [DEFAULT_EXCLUDE, *opts.exclude_files, *extra_excludes]
    argv += ["--exclude-files", "|".join(f"(?:{e})" for e in excludes)]
    for plugin in opts.disable_plugins:
        argv += ["--disable-plugin", plugin]
    argv += ["--", *([scan] if isinstance(scan, str) else scan)]
    return argv


def parse_detect_secrets_json(stdout: bytes, *, target: str, prefix: str = "", stderr: bytes = b"") -> list[Finding]:
    """Findings from ``detect-secrets scan`` JSON. `prefix` is prepended to its (relative)
    filenames. Output that is not its JSON raises ExternalToolError with redacted tails."""

    def broken(why: str) -> ExternalToolError:
        return ExternalToolError(f"detect-secrets output unusable: {why}", stdout_tail=tail(stdout), stderr_tail=tail(stderr))

    try:
        doc = json.loads(stdout)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise broken(f"not JSON or truncated ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        raise broken("no 'results' object in the report")
    findings: dict[str, Finding] = {}
    for filename, entries in doc["results"].items():
        if not isinstance(entries, list):
            raise broken(f"results for a file are not a list ({type(entries).__name__})")
        for item in entries:
            try:
                finding = _finding(item, filename=str(filename), prefix=prefix, target=target)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise broken(f"unreadable result entry ({type(exc).__name__})") from None
            findings.setdefault(finding.fingerprint, finding)
    return list(findings.values())


def _finding(item: dict[str, Any], *, filename: str, prefix: str, target: str) -> Finding:
    kind = str(item["type"]).strip()
    line = int(item["line_number"])
    hashed = str(item.get("hashed_secret") or "")
    if hashed and not _HASH.match(hashed):
        # Not detect-secrets' SHA-1: refuse to store something that could be the value itself.
        raise ValueError("hashed_secret is not a SHA-1 hex digest")
    rel = os.path.normpath(os.path.join(prefix, str(item.get("filename") or filename))).replace(os.sep, "/")
    if rel.startswith("../") or rel == "..":
        raise ValueError("file outside the scanned tree")
    location = f"{rel}:{line}"
    if kind in _HEURISTIC:
        severity, confidence = Severity.MEDIUM, Confidence.LOW
    elif kind in _INFORMATIONAL:
        severity, confidence = Severity.LOW, Confidence.LOW
    elif kind in _KEYWORDISH:
        severity, confidence = Severity.HIGH, Confidence.MEDIUM
    else:  # a detector for one credential format: AWS, GitHub, private key, Slack, Stripe, ...
        severity, confidence = Severity.HIGH, Confidence.HIGH
    cwe = ["CWE-321"] if kind == "Private Key" else [] if kind in _INFORMATIONAL else ["CWE-798"]
    evidence = f"{kind} at {location}; sha1 {hashed or '(none)'}"
    return Finding.new(
        tool=TOOL,
        rule_id=kind,
        title=redact(f"Hard-coded secret: {kind}" if kind not in _INFORMATIONAL else kind),
        severity=severity,
        confidence=confidence,
        target=target,
        location=redact(location),
        cwe=cwe,
        evidence=redact(evidence),
    )


async def detect_secrets_tool(ctx: ToolContext) -> ToolOutput:
    target = ctx.input.target
    opts = DetectSecretsOptions.model_validate(ctx.options)
    real, root = ctx.source_tree()
    if os.path.isdir(real):
        root, prefix = real, ""
        links = await off_loop(lambda stop: ctx.scope.escaping_links(root, stop))
        skipped = [os.path.relpath(p, root).replace(os.sep, "/") for p in links]
        # detect-secrets' own test (a regex search on the relative path), applied while
        # listing: excluded files would only fill batches with nothing to scan.
        excluded = re.compile("|".join(f"(?:{e})" for e in (DEFAULT_EXCLUDE, *opts.exclude_files)))
        files = await off_loop(
            lambda stop: list_files(
                root, prune_dirs=PRUNED_DIRS, skip=links, keep=lambda rel: not excluded.search(rel), stop=stop
            )
        )
    else:
        root, prefix = os.path.dirname(real), ""
        skipped = []
        files = [(os.path.basename(real), os.path.getsize(real))]
    if skipped:
        ctx.log.warning("not following symlinks that leave the scope", count=len(skipped), paths=skipped[:20])
    plan = plan_batches(root, files, max_files=opts.batch_files, max_bytes=opts.batch_max_bytes)
    excludes = [f"^{re.escape(p)}(/|$)" for p in skipped]

    async def scan(batch: list[str]) -> BatchResult:
        # Paths relative to `root` (its working directory), as a whole-tree run reports
        # them; detect-secrets applies its excludes to the files it is given.
        result = await run_process(
            build_argv(batch, opts, excludes),
            tool=TOOL,
            cwd=root,
            timeout=time_budget(opts.timeout.total_seconds()),
        )
        findings = await off_loop(
            lambda _: parse_detect_secrets_json(result.stdout, target=target, prefix=prefix, stderr=result.stderr)
        )
        return BatchResult(findings)

    scanned = await scan_in_batches(ctx, tool=TOOL, plan=plan, scan=scan)
    ctx.log.info(
        "detect-secrets finished", findings=len(scanned.findings), batches=len(plan.batches), resumed_at=scanned.resumed_at
    )
    return ToolOutput(
        findings=scanned.findings,
        items_done=plan.files,
        items_total=plan.files,
        outputs={
            "secrets": str(len(scanned.findings)),
            "symlinks_skipped": str(len(skipped)),
            **scanned.outputs(),
        },
    )


@activity.defn(name="detect_secrets")
async def detect_secrets(inp: StageTaskInput) -> StageTaskResult:
    return await run_tool(detect_secrets_tool, inp)
