"""semgrep: rule-based static analysis of a `path:` target, fully offline, as a SecFlow tool.

What runs: ``semgrep scan --config <rules/semgrep/python-security.yml> [--config <extra>]
--json --metrics=off --disable-version-check --no-git-ignore --quiet --oss-only
--no-rewrite-rule-ids --x-ignore-semgrepignore-files [--exclude <glob>...] -- <path>``.

Offline by construction: the only configs are local rule files (SecFlow's own, shipped in
the repository, plus any extra local files the spec names; registry ids such as
``p/python``, ``auto`` and URLs are refused by the options model), metrics and the version
check are off by flag AND by environment (``SEMGREP_SEND_METRICS=off``,
``SEMGREP_ENABLE_VERSION_CHECK=0``), and ``SEMGREP_APP_TOKEN`` / ``SEMGREP_RULES`` are
removed from its environment so no login or ambient rule source is ever used.
``--x-ignore-semgrepignore-files``: the code under assessment does not get to hide files
from its scanner with a planted ``.semgrepignore``. ``--no-rewrite-rule-ids``: rule ids
stay as written, not prefixed with the rules file's directory.

In batches (activities/scanners/batches.py): the tree's files are listed once, sorted
(directories in the default excludes and symlinks leaving the scope left out), and semgrep
runs on ``batch_files`` of them at a time: the same target, narrowed with one anchored
``--include=/<relative path>`` per file, so semgrep's own selection (languages, excludes)
and the reported paths are those of a whole-tree run. Each batch's findings are stored and
checkpointed; an attempt after a crash starts at the first unfinished batch. ``timeout``
bounds each batch's run.

Before anything runs: the path must be in `scope.allow` (given and symlink-resolved form;
outside is a `ScopeViolation`, category security) and must exist.

Findings: one per result; ``rule_id`` = ``check_id``, ``title`` = ``extra.message``,
severity from ``extra.severity`` (ERROR -> high, WARNING -> medium, INFO -> low), CWE ids
from ``extra.metadata.cwe``, location ``relative/path.py:LINE``, evidence the matched
lines, redacted. Semgrep OSS without a login reports ``extra.lines`` as "requires login",
so the lines are then read from the scanned file itself.

Failures: semgrep missing -> permanent; garbage or truncated JSON, a crash (signal) or an
unexplained failure exit -> external_tool (output tails kept); a rejected rules config
(exit 4/5/6/7/8) or API-key error (13) -> permanent; out of memory (10) -> resource; past
its timeout -> transient. Entries of semgrep's ``errors`` array on a successful run
(a file it could only partly parse, a per-file rule timeout) do not fail the run: they
are logged (redacted: semgrep quotes the offending source) and counted in the outputs.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from temporalio import activity

from activities.process import ToolProcessError, locate_binary, run_process, tail, time_budget
from activities.runner import ToolContext, ToolOutput, run_tool
from activities.scanners.batches import BatchResult, FileBatches, list_files, plan_batches, scan_in_batches
from activities.scanners.offload import off_loop
from secflow.errors import Category, ExternalToolError, PermanentError, classify
from secflow.findings import Confidence, Finding, Severity
from secflow.models import StageTaskInput, StageTaskResult
from secflow.redaction import REDACTED, redact
from secflow.tools import SemgrepOptions

TOOL = "semgrep"
BINARY_ENV = "SECFLOW_SEMGREP"  # a name (looked up on PATH) or a path; overrides the search below
RULES_FILE = Path(__file__).resolve().parents[2] / "rules" / "semgrep" / "python-security.yml"
DEFAULT_EXCLUDES = (".git", ".hg", ".svn", "__pycache__", ".tox", ".nox", ".venv", "venv", "node_modules", "site-packages")
# Environment semgrep must not see: a login token or an ambient rules source.
_DROPPED_ENV = ("SEMGREP_APP_TOKEN", "SEMGREP_RULES", "SEMGREP_REPO_URL", "SEMGREP_APP_URL")
_EVIDENCE_MAX = 2000
_EVIDENCE_LINES = 5
_SEVERITY = {"ERROR": Severity.HIGH, "WARNING": Severity.MEDIUM, "INFO": Severity.LOW,
             "CRITICAL": Severity.CRITICAL, "HIGH": Severity.HIGH, "MEDIUM": Severity.MEDIUM, "LOW": Severity.LOW}  # fmt: skip
_CONFIDENCE = {"HIGH": Confidence.HIGH, "MEDIUM": Confidence.MEDIUM, "LOW": Confidence.LOW}
_CWE = re.compile(r"CWE-(\d+)", re.IGNORECASE)
# semgrep's documented exit codes that mean "its configuration is wrong": retrying the same
# rules cannot help. 10 is its memory limit. Other non-zero codes are the tool failing.
_CONFIG_EXITS = {4: "invalid pattern", 5: "unparseable rules YAML", 6: "rule needs arbitrary code execution",
                 7: "missing or invalid config", 8: "invalid language", 13: "invalid API key"}  # fmt: skip
_RESOURCE_EXITS = {10: "reached its memory limit"}
_NO_LINES = {"", "requires login"}
_CREDENTIAL_CWES = {"CWE-798", "CWE-259", "CWE-321", "CWE-522"}
# A Python/JS/... string literal, prefix kept: "x", 'x', """x""", '''x''', f"x", b'x'.
_STRING_LITERAL = re.compile(r"""((?:[rRbBuUfF]{1,2})?(?:\"\"\"|'''|"|'))(?:\\.|(?!\1).)*?\1""", re.DOTALL)


def semgrep_binary() -> str:
    return locate_binary("semgrep", BINARY_ENV)


def semgrep_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update({"SEMGREP_SEND_METRICS": "off", "SEMGREP_ENABLE_VERSION_CHECK": "0", "NO_COLOR": "1"})
    # the interpreter's bin dir, so the `semgrep` wrapper finds its own `semgrep-core`/`pysemgrep`
    env["PATH"] = os.pathsep.join(p for p in (env.get("PATH", ""), os.path.dirname(sys.executable)) if p)
    return env


def build_argv(path: str, opts: SemgrepOptions, skipped_links: Sequence[str] = (), includes: Sequence[str] = ()) -> list[str]:
    """semgrep's command line for `path`; `includes` (paths relative to it) narrow the scan to one batch."""
    argv = [semgrep_binary(), "scan", "--config", str(RULES_FILE)]
    for extra in opts.rules:
        argv += ["--config", extra]
    argv += [
        "--json", "--metrics=off", "--disable-version-check", "--no-git-ignore", "--quiet", "--oss-only",
        "--no-rewrite-rule-ids", "--x-ignore-semgrepignore-files",
    ]  # fmt: skip
    for pattern in (*DEFAULT_EXCLUDES, *opts.exclude, *(_exclude_link(link, path) for link in skipped_links)):
        argv.append(f"--exclude={pattern}")
    for rel in includes:
        argv.append(f"--include={_anchored(rel)}")
    argv += ["--", path]
    return argv


def _exclude_link(link: str, root: str) -> str:
    """An exclude anchored at the scan root for one absolute link path; a glob special
    character in its name becomes the one-character wildcard (gitignore syntax)."""
    return _anchored(os.path.relpath(link, root).replace(os.sep, "/"))


def _anchored(rel: str) -> str:
    """A gitignore-style pattern for exactly one path relative to the scan root; a glob
    special character becomes the one-character wildcard (it may match a sibling too,
    which costs a rescan of that file, never a miss: findings upsert by fingerprint)."""
    return "/" + re.sub(r"[*?\[\]\\!#]", "?", rel)


def parse_semgrep_json(stdout: bytes, *, root: str, target: str, stderr: bytes = b"") -> tuple[list[Finding], list[str]]:
    """(findings, semgrep's error messages) from ``--json`` output.

    `root` is the directory locations are made relative to. Output that is not semgrep's
    JSON (garbage, truncated, wrong shape) raises ExternalToolError with the tails.
    """

    def broken(why: str) -> ExternalToolError:
        return ExternalToolError(f"semgrep output unusable: {why}", stdout_tail=tail(stdout), stderr_tail=tail(stderr))

    doc = _load(stdout, broken)
    if not isinstance(doc.get("results"), list):
        raise broken("no 'results' list in the report")
    findings: dict[str, Finding] = {}
    for item in doc["results"]:
        try:
            finding = _finding(item, root=root, target=target)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise broken(f"unreadable result entry ({type(exc).__name__}: {exc})") from None
        findings.setdefault(finding.fingerprint, finding)
    return list(findings.values()), _error_messages(doc, root)


def _load(stdout: bytes, broken: Any) -> dict[str, Any]:
    try:
        doc = json.loads(stdout)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise broken(f"not JSON or truncated ({exc})") from None
    if not isinstance(doc, dict):
        raise broken("the report is not a JSON object")
    return doc


def _error_messages(doc: dict[str, Any], root: str) -> list[str]:
    out = []
    for entry in doc.get("errors") or []:
        if not isinstance(entry, dict):
            continue
        where = entry.get("path")
        level = entry.get("level", "error")
        message = str(entry.get("message") or entry.get("type") or "?")
        if root:
            message = message.replace(root + os.sep, "")
        prefix = f"{_relative(str(where), root)}: " if where else ""
        out.append(redact(f"[{level}] {prefix}{message}"))
    return out


def _finding(item: dict[str, Any], *, root: str, target: str) -> Finding:
    extra = item.get("extra") or {}
    metadata = extra.get("metadata") or {}
    line = int(item["start"]["line"])
    end = int((item.get("end") or {}).get("line", line))
    filename = str(item["path"])
    lines = str(extra.get("lines") or "")
    if lines.strip() in _NO_LINES:
        lines = _read_lines(filename, root, line, end)
    cwe_field = metadata.get("cwe") or []
    cwe_items = cwe_field if isinstance(cwe_field, list) else [cwe_field]
    cwe = sorted({f"CWE-{int(m)}" for c in cwe_items for m in _CWE.findall(str(c))}, key=lambda c: int(c[4:]))
    evidence = redact(lines.rstrip("\n"))
    if _CREDENTIAL_CWES & set(cwe):
        # The match IS a credential: mask every string literal, whatever shape the line has
        # (redact() keys on well-formed `key = value`; a half-parsed line can slip past it).
        evidence = _STRING_LITERAL.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(1).lstrip('rRbBuUfF')}", evidence)
    if len(evidence) > _EVIDENCE_MAX:
        evidence = evidence[:_EVIDENCE_MAX] + " ..."
    return Finding.new(
        tool=TOOL,
        rule_id=str(item["check_id"]),
        title=redact(str(extra.get("message") or item["check_id"]).strip()),
        severity=_SEVERITY.get(str(extra.get("severity", "")).upper(), Severity.INFO),
        confidence=_CONFIDENCE.get(str(metadata.get("confidence", "")).upper(), Confidence.MEDIUM),
        target=target,
        location=f"{_relative(filename, root)}:{line}",
        cwe=cwe,
        evidence=evidence,
    )


def _read_lines(filename: str, root: str, start: int, end: int) -> str:
    """The matched lines from the scanned file itself (never a file outside `root`)."""
    path = os.path.realpath(os.path.join(root, filename))
    if os.path.commonpath([path, root]) != root:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            picked = [text for number, text in enumerate(fh, 1) if start <= number <= min(end, start + _EVIDENCE_LINES - 1)]
    except OSError:
        return ""
    return "".join(picked)


def _relative(filename: str, root: str) -> str:
    absolute = os.path.normpath(os.path.join(root, filename))
    rel = os.path.relpath(absolute, root)
    if rel == "." or rel == ".." or rel.startswith(".." + os.sep):
        return os.path.basename(absolute)
    return rel.replace(os.sep, "/")


def failure(returncode: int, stdout: bytes, stderr: bytes) -> Exception:
    """What a non-zero semgrep exit means, with semgrep's own error messages when it left any."""
    try:
        doc = json.loads(stdout)
        messages = _error_messages(doc, "") if isinstance(doc, dict) else []
    except (json.JSONDecodeError, UnicodeDecodeError):
        messages = []
    said = "; ".join(messages)[:1000] or tail(stderr)[-1000:].strip() or "(no error message)"
    if returncode in _CONFIG_EXITS:
        return PermanentError(f"semgrep rejected its configuration (exit {returncode}: {_CONFIG_EXITS[returncode]}): {said}")
    if returncode in _RESOURCE_EXITS:
        category = Category.RESOURCE
    else:
        category = classify(f"semgrep exited with status {returncode}: {said}", exit_code=returncode, tool=TOOL).category
    return ToolProcessError(
        f"semgrep exited with status {returncode}: {said}",
        category=category,
        exit_code=returncode,
        stdout_tail=tail(stdout),
        stderr_tail=tail(stderr),
    )


async def semgrep_tool(ctx: ToolContext) -> ToolOutput:
    target = ctx.input.target
    opts = SemgrepOptions.model_validate(ctx.options)
    real, root = ctx.source_tree()
    # semgrep skips symlinks today; links that leave the tree or the scope are excluded
    # anyway, so no future semgrep reads a file outside the scope.
    skipped = await off_loop(lambda stop: ctx.scope.escaping_links(real, stop)) if os.path.isdir(real) else []
    if skipped:
        ctx.log.warning("not following symlinks that leave the scope", count=len(skipped), paths=skipped[:20])
    for rules in (str(RULES_FILE), *opts.rules):
        if not os.path.isfile(rules):
            raise PermanentError(f"semgrep rules file {rules} does not exist")
    if os.path.isdir(real):
        # semgrep does not follow symlinks: they are not listed either
        files = await off_loop(lambda stop: list_files(real, prune_dirs=DEFAULT_EXCLUDES, skip=skipped, links=False, stop=stop))
    else:
        files = [(os.path.basename(real), os.path.getsize(real))]
    plan = plan_batches(root, files, max_files=opts.batch_files, max_bytes=opts.batch_max_bytes)
    if not plan.batches:  # nothing listed: one plain run still, so semgrep checks its rules
        plan = FileBatches(root, [[]], plan.digest)
    whole = len(plan.batches) == 1  # one batch: the plain whole-target run, no --include

    async def scan(batch: list[str]) -> BatchResult:
        # The same target as a whole-tree run, narrowed with --include: semgrep keeps its
        # own file selection (languages, excludes) and reports the same paths.
        includes = () if whole or not os.path.isdir(real) else batch
        result = await run_process(
            build_argv(real, opts, skipped, includes),
            tool=TOOL,
            cwd=ctx.working_dir(root),
            env=semgrep_env(),
            timeout=time_budget(opts.timeout.total_seconds()),
            # 0: done; 1: findings with --error (not passed, accepted anyway). Other codes are
            # read below, with semgrep's JSON error list; signals stay run_process's to classify.
            ok_codes=tuple(range(126)),
        )
        if result.returncode not in (0, 1):
            raise failure(result.returncode, result.stdout, result.stderr)
        # Parsed off the event loop: it reads source lines of every finding from disk.
        findings, errors = await off_loop(
            lambda _: parse_semgrep_json(result.stdout, root=root, target=target, stderr=result.stderr)
        )
        for error in errors[:20]:
            ctx.log.info("semgrep reported a problem", error=error)
        return BatchResult(findings, {"errors": len(errors)})

    scanned = await scan_in_batches(ctx, tool=TOOL, plan=plan, scan=scan)
    findings = scanned.findings
    errors = scanned.counts.get("errors", 0)
    ctx.log.info(
        "semgrep finished", findings=len(findings), errors=errors, batches=len(plan.batches), resumed_at=scanned.resumed_at
    )
    return ToolOutput(
        findings=findings,
        items_done=plan.files,
        items_total=plan.files,
        outputs={"issues": str(len(findings)), "errors": str(errors), **scanned.outputs()},
    )


@activity.defn(name="semgrep")
async def semgrep(inp: StageTaskInput) -> StageTaskResult:
    return await run_tool(semgrep_tool, inp)
