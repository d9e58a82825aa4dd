"""sca: pinned Python dependencies of a source tree checked against OSV (osv.dev).

What it reads, in the `path:` target (a directory, or one manifest file):
- `requirements*.txt` (and `requirements/*.txt`): pinned ``name==version`` lines. Comments,
  options and environment markers are ignored; ``-r other.txt`` includes are followed
  only when they stay inside the target directory; unpinned lines are skipped with a note
  in the log (without an exact version there is nothing exact to ask OSV about);
- `poetry.lock` and `Pipfile.lock`: every locked package.

How it asks: ``POST {base}/v1/querybatch`` in batches of at most 1000 queries (following
each query's ``next_page_token``), then ``GET {base}/v1/vulns/{id}`` for every advisory
found. The base URL comes from ``SECFLOW_OSV_URL`` (default ``https://api.osv.dev``),
read at call time so a test or an operator can point it at a mirror.

Findings: one per (package, version, advisory), located at the first line that pins it.
After each batch, the batch's findings are stored and a checkpoint is heartbeated, so a
retried attempt starts at the first unfinished batch.

Through the resilience layer (`secflow.http`), every request, querybatch included (it only
reads, so it is safe to repeat), gets up to 8 jittered tries, so a service failing a third
of its requests at random costs time, not the attempt; while OSV's breaker is open the
request waits for the half-open trial inside the attempt (as long as the attempt has time
left), instead of failing it.

Failures: any non-2xx answer left after those tries leaves as ``httpx.HTTPStatusError``
and the classifier decides (408/425/429/5xx transient, honouring ``Retry-After``; other
4xx never retried, since a retry sends the same request); a body that is not the OSV wire
format is an `ExternalToolError` (the service misbehaved: limited retry).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import math
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from temporalio import activity

from activities.runner import ToolContext, ToolOutput, run_tool
from secflow.errors import ExternalToolError, PermanentError
from secflow.findings import Confidence, Finding, Severity
from secflow.http import client_for
from secflow.models import StageTaskInput, StageTaskResult
from secflow.tools import ScaOptions

TOOL = "sca"
OSV_URL_ENV = "SECFLOW_OSV_URL"
DEFAULT_OSV_URL = "https://api.osv.dev"
ECOSYSTEM = "PyPI"
MAX_BATCH = 1000  # OSV's documented limit per querybatch request
MAX_PAGES = 100  # per batch; a server that never stops paginating is broken

# Directories that hold installed or vendored code, not the project's own manifests.
_SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "env", "node_modules", "site-packages", "__pycache__", ".tox", ".nox"}
_REQUIREMENTS_GLOB = "requirements*.txt"
_LOCKFILES = ("poetry.lock", "Pipfile.lock")


def osv_base_url() -> str:
    return os.environ.get(OSV_URL_ENV, "").strip().rstrip("/") or DEFAULT_OSV_URL


def normalise_name(name: str) -> str:
    """PEP 503 normalised project name: what OSV's PyPI ecosystem is keyed by."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ======================================================================================
# Reading the manifests
# ======================================================================================
@dataclass(frozen=True, order=True)
class Dependency:
    name: str  # normalised
    version: str
    file: str  # relative to the target directory, POSIX separators
    line: int

    @property
    def key(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Manifests:
    dependencies: list[Dependency]
    files: list[str]
    skipped: list[str]  # human-readable notes: unpinned lines, refused includes, bad files


def collect_dependencies(target: Path) -> Manifests:
    """Every pinned dependency in the target tree, deduplicated, in a stable order."""
    target = Path(os.path.abspath(target))
    if target.is_file():
        base = target.parent
        candidates = [target]
    elif target.is_dir():
        base = target
        candidates = list(_walk_manifests(target))
    else:
        raise PermanentError(f"{target} is neither a file nor a directory")
    base_real = base.resolve()
    found = Manifests([], [], [])
    seen: set[Path] = set()
    for path in candidates:
        real = path.resolve()
        if not _within(real, base_real):
            found.skipped.append(f"{_rel(path, base)}: links outside the target; not read")
            continue
        if path.name == "poetry.lock":
            found.dependencies.extend(_parse_poetry_lock(path, base, found))
        elif path.name == "Pipfile.lock":
            found.dependencies.extend(_parse_pipfile_lock(path, base, found))
        else:
            found.dependencies.extend(_parse_requirements(path, base, base_real, found, seen))
    found.dependencies = sorted(set(found.dependencies))
    return found


def _walk_manifests(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        in_requirements_dir = Path(dirpath).name == "requirements"
        for name in sorted(filenames):
            if fnmatch.fnmatch(name, _REQUIREMENTS_GLOB) or name in _LOCKFILES or (in_requirements_dir and name.endswith(".txt")):
                yield Path(dirpath) / name


def _within(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """Lines with backslash continuations joined, numbered by the line they start on."""
    start, parts = 0, list[str]()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not parts:
            start = number
        if raw.endswith("\\"):
            parts.append(raw[:-1])
            continue
        parts.append(raw)
        yield start, " ".join(parts)
        parts = []
    if parts:
        yield start, " ".join(parts)


_COMMENT = re.compile(r"(^|\s)#.*$")
_INCLUDE = re.compile(r"^(?:-r|--requirement)(?:\s*=\s*|\s+|(?=\S))(\S+)")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*(.*)$")
_PIN = re.compile(r"^===?\s*([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")


def _parse_requirements(path: Path, base: Path, base_real: Path, found: Manifests, seen: set[Path]) -> list[Dependency]:
    real = path.resolve()
    if real in seen:
        return []
    seen.add(real)
    rel = _rel(path, base)
    found.files.append(rel)
    deps: list[Dependency] = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, raw in _logical_lines(text):
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        include = _INCLUDE.match(line)
        if include:
            deps.extend(_follow_include(path, include.group(1), number, base, base_real, found, seen))
            continue
        if line.startswith("-"):
            continue  # -c constraints, -e editables, --index-url ...: not pins of this project
        requirement = line.split(";", 1)[0]
        requirement = re.split(r"\s+--?\w", requirement, maxsplit=1)[0].strip()  # per-line options (--hash=...)
        m = _REQUIREMENT.match(requirement)
        pin = _PIN.match(m.group(2).strip()) if m else None
        if m is None or pin is None or "*" in pin.group(1):
            found.skipped.append(f"{rel}:{number}: not pinned to one version ({requirement[:80]!r}); not checked")
            continue
        deps.append(Dependency(normalise_name(m.group(1)), pin.group(1), rel, number))
    return deps


def _follow_include(
    path: Path, name: str, number: int, base: Path, base_real: Path, found: Manifests, seen: set[Path]
) -> list[Dependency]:
    rel = _rel(path, base)
    if "://" in name:
        found.skipped.append(f"{rel}:{number}: remote include {name!r} not followed")
        return []
    included = (path.parent / name).resolve()
    if not _within(included, base_real):
        # The target directory is what the spec put in scope: an include must not pull
        # the scan into files outside it, however the path is spelled.
        found.skipped.append(f"{rel}:{number}: include {name!r} is outside the target; not followed")
        return []
    if not included.is_file():
        found.skipped.append(f"{rel}:{number}: include {name!r} does not exist")
        return []
    return _parse_requirements(included, base, base_real, found, seen)


def _line_of(lines: list[str], pattern: re.Pattern[str], start: int = 0) -> int:
    for i in range(start, len(lines)):
        if pattern.search(lines[i]):
            return i + 1
    return 1


def _parse_poetry_lock(path: Path, base: Path, found: Manifests) -> list[Dependency]:
    rel = _rel(path, base)
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found.skipped.append(f"{rel}: not valid TOML ({exc}); not checked")
        return []
    found.files.append(rel)
    lines = text.splitlines()
    deps = []
    cursor = 0
    for package in data.get("package", []) or []:
        name, version = package.get("name"), package.get("version")
        if not isinstance(name, str) or not isinstance(version, str):
            continue
        line = _line_of(lines, re.compile(rf'^\s*name\s*=\s*"{re.escape(name)}"\s*$'), cursor)
        cursor = line  # packages are listed in order; keeps duplicate names on their own lines
        deps.append(Dependency(normalise_name(name), version, rel, line))
    return deps


def _parse_pipfile_lock(path: Path, base: Path, found: Manifests) -> list[Dependency]:
    rel = _rel(path, base)
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        found.skipped.append(f"{rel}: not valid JSON ({exc.msg} at line {exc.lineno}); not checked")
        return []
    if not isinstance(data, dict):
        found.skipped.append(f"{rel}: not a Pipfile.lock; not checked")
        return []
    found.files.append(rel)
    lines = text.splitlines()
    deps = []
    for section in ("default", "develop"):
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            continue
        section_line = _line_of(lines, re.compile(rf'^\s*"{section}"\s*:'))
        for name, entry in entries.items():
            version = entry.get("version") if isinstance(entry, dict) else None
            pin = _PIN.match(version.strip()) if isinstance(version, str) else None
            line = _line_of(lines, re.compile(rf'^\s*"{re.escape(name)}"\s*:'), section_line - 1)
            if pin is None:
                found.skipped.append(f"{rel}:{line}: {name} has no pinned version (VCS or path dependency); not checked")
                continue
            deps.append(Dependency(normalise_name(name), pin.group(1), rel, line))
    return deps


# ======================================================================================
# Talking to OSV
# ======================================================================================
class OsvClient:
    """The two OSV endpoints SecFlow uses, with the failure rules of this module's docstring."""

    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    async def querybatch(self, queries: list[dict[str, Any]]) -> list[list[str]]:
        """Advisory ids per query (same order), every page of every query."""
        ids: list[list[str]] = [[] for _ in queries]
        pending = list(range(len(queries)))
        tokens: dict[int, str] = {}
        for _page in range(MAX_PAGES):
            body = [dict(queries[i], page_token=tokens[i]) if i in tokens else queries[i] for i in pending]
            doc = await self._json("POST", "/v1/querybatch", {"queries": body})
            results = doc.get("results") if isinstance(doc, dict) else None
            if not isinstance(results, list) or len(results) != len(pending):
                raise ExternalToolError(
                    f"OSV querybatch answered {len(results) if isinstance(results, list) else 'no'} results "
                    f"for {len(pending)} queries"
                )
            tokens = {}
            for i, result in zip(pending, results, strict=True):
                if not isinstance(result, dict):
                    raise ExternalToolError("OSV querybatch result is not an object")
                for vuln in result.get("vulns") or []:
                    vid = vuln.get("id") if isinstance(vuln, dict) else None
                    if not isinstance(vid, str) or not vid:
                        raise ExternalToolError("OSV querybatch returned a vulnerability without an id")
                    if vid not in ids[i]:
                        ids[i].append(vid)
                token = result.get("next_page_token")
                if token:
                    tokens[i] = str(token)
            pending = sorted(tokens)
            if not pending:
                return ids
        raise ExternalToolError(f"OSV querybatch still paginating after {MAX_PAGES} pages")

    async def vuln(self, vuln_id: str) -> dict[str, Any]:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]*", vuln_id):
            raise ExternalToolError(f"OSV returned an unusable advisory id {vuln_id[:60]!r}")
        doc = await self._json("GET", f"/v1/vulns/{vuln_id}")
        if not isinstance(doc, dict) or doc.get("id") != vuln_id:
            raise ExternalToolError(f"OSV record for {vuln_id} is not an OSV vulnerability")
        return doc

    async def _json(self, method: str, path: str, payload: Any = None) -> Any:
        response = await self.http.request(method, self.base_url + path, json=payload)
        if not response.is_success:
            # HTTPStatusError: the one classifier decides (408/425/429/5xx transient with
            # Retry-After; a bad key, a gone endpoint or a bad query is not retried).
            response.raise_for_status()
        try:
            return json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ExternalToolError(
                f"OSV answered {method} {path} with a malformed body ({len(response.content)} bytes): {exc}",
                stdout_tail=response.text[-500:],
            ) from None


# ======================================================================================
# From OSV records to findings
# ======================================================================================
def severity_for(score: float | None) -> Severity:
    if score is None:
        return Severity.MEDIUM
    if score >= 9.0:
        return Severity.CRITICAL
    if score >= 7.0:
        return Severity.HIGH
    if score >= 4.0:
        return Severity.MEDIUM
    return Severity.LOW


# GHSA's qualitative label, used only when no CVSS score can be computed (e.g. CVSS v4 only).
_LABELS = {"CRITICAL": 9.0, "HIGH": 7.0, "MODERATE": 5.0, "MEDIUM": 5.0, "LOW": 2.0}


def score_of(record: dict[str, Any]) -> float | None:
    """Best CVSS base score of an OSV record: v3 first, then v2, then a numeric score."""
    by_type: dict[str, list[str]] = {}
    for entry in record.get("severity") or []:
        if isinstance(entry, dict) and isinstance(entry.get("score"), str):
            by_type.setdefault(str(entry.get("type", "")), []).append(entry["score"])
    for kind, compute in (("CVSS_V3", cvss3_base_score), ("CVSS_V2", cvss2_base_score)):
        scores = [s for s in (compute(v) for v in by_type.get(kind, [])) if s is not None]
        if scores:
            return max(scores)
    for values in by_type.values():
        for value in values:
            try:
                number = float(value)
            except ValueError:
                continue
            if 0.0 <= number <= 10.0:
                return number
    label = (record.get("database_specific") or {}).get("severity")
    return _LABELS.get(str(label).upper()) if label else None


_V3 = {
    "AV": {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2},
    "AC": {"L": 0.77, "H": 0.44},
    "UI": {"N": 0.85, "R": 0.62},
    "C": {"H": 0.56, "L": 0.22, "N": 0.0},
    "I": {"H": 0.56, "L": 0.22, "N": 0.0},
    "A": {"H": 0.56, "L": 0.22, "N": 0.0},
}


def _roundup(value: float) -> float:
    """CVSS v3.1's Roundup: the smallest one-decimal number >= value, float-safe."""
    whole = round(value * 100000)
    if whole % 10000 == 0:
        return whole / 100000.0
    return (math.floor(whole / 10000) + 1) / 10.0


def cvss3_base_score(vector: str) -> float | None:
    """Base score of a CVSS v3.0/3.1 vector (FIRST specification); None if malformed."""
    parts = vector.strip().split("/")
    if not parts or not parts[0].startswith("CVSS:3"):
        return None
    metrics = dict(p.split(":", 1) for p in parts[1:] if ":" in p)
    try:
        scope_changed = metrics["S"] == "C"
        pr = {"N": 0.85, "L": 0.68 if scope_changed else 0.62, "H": 0.5 if scope_changed else 0.27}[metrics["PR"]]
        av, ac, ui = (_V3[k][metrics[k]] for k in ("AV", "AC", "UI"))
        c, i, a = (_V3[k][metrics[k]] for k in ("C", "I", "A"))
    except KeyError:
        return None
    iss = 1 - (1 - c) * (1 - i) * (1 - a)
    impact = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15 if scope_changed else 6.42 * iss
    exploitability = 8.22 * av * ac * pr * ui
    if impact <= 0:
        return 0.0
    if scope_changed:
        return _roundup(min(1.08 * (impact + exploitability), 10.0))
    return _roundup(min(impact + exploitability, 10.0))


def cvss2_base_score(vector: str) -> float | None:
    metrics = dict(p.split(":", 1) for p in vector.strip().removeprefix("(").removesuffix(")").split("/") if ":" in p)
    table = {
        "AV": {"L": 0.395, "A": 0.646, "N": 1.0},
        "AC": {"H": 0.35, "M": 0.61, "L": 0.71},
        "Au": {"M": 0.45, "S": 0.56, "N": 0.704},
        "C": {"N": 0.0, "P": 0.275, "C": 0.660},
        "I": {"N": 0.0, "P": 0.275, "C": 0.660},
        "A": {"N": 0.0, "P": 0.275, "C": 0.660},
    }
    try:
        v = {k: table[k][metrics[k]] for k in table}
    except KeyError:
        return None
    impact = 10.41 * (1 - (1 - v["C"]) * (1 - v["I"]) * (1 - v["A"]))
    exploitability = 20 * v["AV"] * v["AC"] * v["Au"]
    f = 0.0 if impact == 0 else 1.176
    return round(((0.6 * impact) + (0.4 * exploitability) - 1.5) * f, 1)


def _version_key(version: str) -> Any:
    try:
        from packaging.version import Version  # present in nearly every environment; optional

        return (0, Version(version))
    except Exception:  # not installed, or not a PEP 440 version: a plain numeric reading
        numbers = tuple(int(n) for n in re.findall(r"\d+", version))
        return (1, numbers)


def _less(a: str, b: str) -> bool:
    ka, kb = _version_key(a), _version_key(b)
    if ka[0] != kb[0]:
        ka, kb = (1, tuple(int(n) for n in re.findall(r"\d+", a))), (1, tuple(int(n) for n in re.findall(r"\d+", b)))
    return ka < kb


def fixed_version(record: dict[str, Any], name: str, version: str) -> str | None:
    """The version that fixes `name` at `version`, from the record's ECOSYSTEM ranges."""
    candidates: list[str] = []
    for affected in record.get("affected") or []:
        package = affected.get("package") or {} if isinstance(affected, dict) else {}
        if package.get("ecosystem") != ECOSYSTEM or normalise_name(str(package.get("name", ""))) != name:
            continue
        for rng in affected.get("ranges") or []:
            if not isinstance(rng, dict) or rng.get("type") != "ECOSYSTEM":
                continue
            introduced = None
            for event in rng.get("events") or []:
                if not isinstance(event, dict):
                    continue
                if "introduced" in event:
                    introduced = str(event["introduced"])
                elif "fixed" in event and introduced is not None:
                    fixed = str(event["fixed"])
                    inside = (introduced == "0" or not _less(version, introduced)) and _less(version, fixed)
                    if inside:
                        return fixed
                    if _less(version, fixed):
                        candidates.append(fixed)
                    introduced = None
    # The version was matched some other way (an explicit `versions` list): the nearest fix above it.
    best = None
    for c in candidates:
        if best is None or _less(c, best):
            best = c
    return best


def finding_for(dep: Dependency, record: dict[str, Any], target: str) -> Finding:
    vid = str(record["id"])
    summary = str(record.get("summary") or "").strip()
    if not summary:
        details = str(record.get("details") or "").strip()
        summary = details.splitlines()[0][:160] if details else vid
    aliases = [a for a in record.get("aliases") or [] if isinstance(a, str)]
    cves = sorted({a for a in [vid, *aliases] if a.startswith("CVE-")})
    cwes = [c for c in ((record.get("database_specific") or {}).get("cwe_ids") or []) if isinstance(c, str)]
    score = score_of(record)
    fixed = fixed_version(record, dep.name, dep.version)
    evidence = f"{dep.name}=={dep.version}; " + (f"fixed in {fixed}" if fixed else "no fixed version published")
    if score is not None:
        evidence += f"; score {score:.1f}"
    return Finding.new(
        tool=TOOL,
        rule_id=vid,
        title=f"{dep.name} {dep.version}: {summary}",
        severity=severity_for(score),
        confidence=Confidence.HIGH,  # an exact pinned version inside an affected range
        target=target,
        location=dep.location,
        cwe=cwes,
        cve=cves,
        evidence=evidence,
    )


# ======================================================================================
# The tool
# ======================================================================================
async def sca_tool(ctx: ToolContext) -> ToolOutput:
    target = ctx.input.target
    ctx.require_in_scope(path=target)
    opts = ScaOptions.model_validate(ctx.options)
    manifests = await asyncio.to_thread(collect_dependencies, Path(target))
    for note in manifests.skipped:
        ctx.log.info("dependency not checked", note=note)

    # One query per distinct (name, version); its finding goes to the first line pinning it.
    first: dict[str, Dependency] = {}
    for dep in manifests.dependencies:
        first.setdefault(dep.key, dep)
    keys = sorted(first)
    batches = [keys[i : i + opts.batch_size] for i in range(0, len(keys), opts.batch_size)]
    digest = hashlib.sha256("\n".join(first[k].key + "@" + first[k].location for k in keys).encode()).hexdigest()
    outputs = {
        "manifests": ", ".join(manifests.files),
        "dependencies": str(len(keys)),
        "not_checked": str(len(manifests.skipped)),
    }
    if not keys:
        ctx.log.info("no pinned dependencies found", files=manifests.files)
        return ToolOutput(findings=[], items_done=0, items_total=0, outputs=outputs)

    done, findings = await _resume(ctx, digest, opts.batch_size, len(batches))
    base_url = osv_base_url()
    timeout = opts.request_timeout.total_seconds()
    records: dict[str, dict[str, Any]] = {}
    limit = asyncio.Semaphore(opts.concurrency)

    # The shared resilience layer: OSV's rate limit and circuit breaker, no proxy from the
    # environment (trust_env=False), no redirects followed.
    async with client_for(
        "osv",
        base_url=base_url,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        headers={"User-Agent": "secflow-sca"},
        chaos=ctx.chaos,
    ) as http:
        osv = OsvClient(http, base_url)

        async def record(vid: str) -> dict[str, Any]:
            if vid not in records:
                async with limit:
                    if vid not in records:
                        records[vid] = await osv.vuln(vid)
            return records[vid]

        for index in range(done, len(batches)):
            batch = batches[index]
            queries = [{"package": {"name": first[k].name, "ecosystem": ECOSYSTEM}, "version": first[k].version} for k in batch]
            ids = await osv.querybatch(queries)
            wanted = sorted({vid for per_query in ids for vid in per_query})
            await asyncio.gather(*(record(vid) for vid in wanted))
            new = [
                finding_for(first[k], records[vid], target) for k, per_query in zip(batch, ids, strict=True) for vid in per_query
            ]
            findings.extend(new)
            await ctx.checkpoint(
                {
                    "sca": {
                        "digest": digest,
                        "batch_size": opts.batch_size,
                        "batches_done": index + 1,
                        "fingerprints": [f.fingerprint for f in findings],
                    },
                    "progress": {"done": index + 1, "total": len(batches)},
                },
                new,
            )
            ctx.log.info("osv batch done", batch=index + 1, of=len(batches), queries=len(batch), findings=len(new))

    return ToolOutput(findings=findings, items_done=len(keys), items_total=len(keys), outputs=outputs)


async def _resume(ctx: ToolContext, digest: str, batch_size: int, total: int) -> tuple[int, list[Finding]]:
    """Batches already done by an earlier attempt, and their findings (from the store)."""
    raw = (ctx.resume or {}).get("sca")
    if not isinstance(raw, dict):
        return 0, []
    if raw.get("digest") != digest or raw.get("batch_size") != batch_size:
        ctx.log.info("manifests changed since the last attempt; checking every batch again")
        return 0, []
    done = int(raw.get("batches_done") or 0)
    wanted = set(raw.get("fingerprints") or [])
    if not 0 < done <= total:
        return 0, []
    stored = await asyncio.to_thread(ctx.store.list_findings, ctx.input.assessment_id)
    findings = [f for f in stored if f.fingerprint in wanted]
    if len({f.fingerprint for f in findings}) != len(wanted):
        ctx.log.warning("checkpointed findings missing from the store; checking every batch again")
        return 0, []
    ctx.log.info("resuming sca", batches_done=done, of=total, findings_so_far=len(findings))
    return done, findings


@activity.defn(name="sca")
async def sca(inp: StageTaskInput) -> StageTaskResult:
    return await run_tool(sca_tool, inp)
