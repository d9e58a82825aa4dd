"""The assessment spec: what a security engineer writes, validated before anything starts.

`load_spec(path)` returns a `Spec` or raises `SpecError` listing EVERY problem found
(field path + reason), not just the first: a user fixing a spec should not have to
run the validator once per mistake.
"""

from __future__ import annotations

import difflib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from secflow.approvals import ApprovalPolicy
from secflow.durations import Duration
from secflow.engagement import RATE_OPTION, EngagementLimits, apply_limits, ports_outside, stage_limits
from secflow.ladder import ladder_of, ladder_problems
from secflow.redaction import REDACTED
from secflow.retries import KIND_RETRY_CLASS, RetryPlan, plan_for
from secflow.scope import Scope
from secflow.secrets import (
    REF_FORMS,
    TargetAuth,
    inline_url_credentials,
    is_ref,
    mask_url_credentials,
    names_a_credential,
)
from secflow.spec_input import MAX_SPEC_BYTES, InputProblem, data_problems, decode_spec_bytes, parse_json, parse_yaml
from secflow.tools import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_TOOL_FOR_KIND,
    MAX_BATCH_SIZE,
    MAX_CONCURRENCY,
    STAGE_OPTIONS,
    TOOLS,
    RetryClass,
    canonical_spec_tools,
    suggest_tool,
)

StageKind = Literal["discovery", "sast", "dast", "sca", "secrets", "enrich", "report", "ticket", "notify", "cleanup"]

_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"

# A stage with no `timeout:` gets this much per attempt.
DEFAULT_STAGE_TIMEOUT = timedelta(minutes=30)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ScopeSpec(_Strict):
    allow: list[str] = Field(min_length=1)
    # Same entry forms as `allow`; a target or address matching a deny entry is out of
    # scope whatever `allow` says (secflow/scope.py).
    deny: list[str] = Field(default_factory=list)


class Target(_Strict):
    host: str | None = None
    url: str | None = None
    path: str | None = None
    # How a URL target authenticates; references only, resolved by the activity
    # (secflow/secrets.py, docs/secrets.md).
    auth: TargetAuth | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        given = [k for k in ("host", "url", "path") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("a target has exactly one of host, url or path")
        if self.auth is not None and not self.url:
            raise ValueError("auth is only for url targets")
        return self

    @property
    def kind(self) -> str:
        return "host" if self.host else "url" if self.url else "path"

    @property
    def value(self) -> str:
        return self.host or self.url or self.path or ""


class RetryOverride(_Strict):
    max_attempts: int | None = Field(None, ge=1, le=100)
    initial_interval: Duration | None = None
    backoff: float | None = Field(None, ge=1.0, le=10.0)
    max_interval: Duration | None = None
    # Opt-in: attempts and backoff follow the recovery record of the stage's tool, within
    # the retry class's bounds, once `min_samples` results are known (docs/adaptive.md).
    adaptive: bool = False
    min_samples: int | None = Field(None, ge=1, le=100_000)

    @model_validator(mode="after")
    def _samples_need_adaptive(self) -> RetryOverride:
        if self.min_samples is not None and not self.adaptive:
            raise ValueError("min_samples is only for adaptive: true")
        return self


class Stage(_Strict):
    id: str = Field(pattern=_ID_PATTERN)
    kind: StageKind
    tool: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    criticality: Literal["required", "optional"] = "required"
    # One of fail | skip | await_approval | fallback, or the recovery ladder as a list of
    # rungs (secflow/ladder.py: `[fallback, await_approval, dead_letter]`).
    on_failure: str | list[Any] = "fail"
    fallback_tool: str | None = None
    requires_approval: bool = False
    wait_timeout: Duration | None = None
    on_wait_timeout: Literal["approve", "reject", "skip", "fail"] = "fail"
    retry: RetryOverride | None = None
    timeout: Duration | None = None
    always: bool = False
    limits: EngagementLimits | None = None

    @property
    def tool_name(self) -> str:
        return self.tool or DEFAULT_TOOL_FOR_KIND.get(self.kind, "")

    @property
    def ladder(self) -> tuple[str, ...]:
        """The rungs walked after retries, ending in a terminal rung (secflow/ladder.py)."""
        return ladder_of(self.on_failure)

    @property
    def tolerated_failure_percent(self) -> float:
        return float(self.options.get("tolerated_failure_percent", 0))

    @property
    def concurrency(self) -> int:
        """Targets of this stage in flight at once (`options.targets_in_flight`)."""
        return int(self.options.get("targets_in_flight", DEFAULT_CONCURRENCY))

    @property
    def batch_size(self) -> int:
        """Targets loaded from the stored spec per batch (`options.targets_per_batch`)."""
        return int(self.options.get("targets_per_batch", DEFAULT_BATCH_SIZE))

    def tool_options(self, tool: str | None = None) -> dict[str, Any]:
        """Options for `tool` (default: the stage's own). A fallback tool gets only the
        options its model knows, so nmap's `timing` does not break portscan's run."""
        options = {k: v for k, v in self.options.items() if k not in STAGE_OPTIONS}
        if tool is None or tool == self.tool_name or tool not in TOOLS:
            return apply_limits(tool or self.tool_name, options, self.engagement_limits)
        known = TOOLS[tool].options.model_fields
        return apply_limits(tool, {k: v for k, v in options.items() if k in known}, self.engagement_limits)

    @property
    def engagement_limits(self) -> EngagementLimits | None:
        """`limits`, tightened by the stage tool's own rate option (a fallback inherits it)."""
        return stage_limits(self.limits, self.tool_name, self.options)

    def retry_class(self, tool: str | None = None) -> RetryClass:
        """The kind's row of the retry table, or the sandbox row for a sandbox tool."""
        info = TOOLS.get(tool or self.tool_name)
        if info is not None and info.retry_class is RetryClass.SANDBOX:
            return RetryClass.SANDBOX
        return KIND_RETRY_CLASS[self.kind]

    def retry_plan(self, tool: str | None = None) -> RetryPlan:
        """The kind's row of the retry table with this stage's overrides (sandbox tools stay at 1)."""
        override = self.retry or RetryOverride()
        return plan_for(
            self.retry_class(tool),
            max_attempts=override.max_attempts,
            initial_interval=override.initial_interval,
            backoff=override.backoff,
            max_interval=override.max_interval,
        )

    @property
    def effective_timeout(self) -> timedelta:
        return self.timeout or DEFAULT_STAGE_TIMEOUT


class LockPolicy(_Strict):
    on_conflict: Literal["wait", "refuse"] = "wait"
    wait_timeout: Duration = Field(default="30m", validate_default=True)


class Spec(_Strict):
    name: str = Field(pattern=_ID_PATTERN)
    description: str = ""
    scope: ScopeSpec
    targets: list[Target] = Field(min_length=1)
    stages: list[Stage] = Field(min_length=1)
    locks: LockPolicy = Field(default_factory=LockPolicy)
    # Who may answer: named approvers and their Ed25519 keys (docs/approvals.md). Without
    # it, decisions need no signature.
    approvals: ApprovalPolicy | None = None
    # HTTP fault injection per dependency, same format as SECFLOW_CHAOS_CONFIG; ignored
    # unless the worker runs with SECFLOW_CHAOS=1.
    chaos: dict[str, Any] = Field(default_factory=dict)

    def stage(self, stage_id: str) -> Stage:
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        raise KeyError(stage_id)

    def targets_for(self, tool: str) -> list[Target]:
        info = TOOLS[tool]
        return [t for t in self.targets if t.kind in info.target_kinds]


class Problem(BaseModel):
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path or '<spec>'}: {self.reason}"


class SpecError(Exception):
    """A spec that must not start. Carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _loc(parts: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _pydantic_problems(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> list[Problem]:
    """Pydantic's errors as Problems; an unknown field of `model` (or of a model nested in
    it) gets the closest known field name as a suggestion."""
    problems = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        path = _loc(loc)
        if prefix:
            path = f"{prefix}.{path}" if path and not path.startswith("[") else f"{prefix}{path}"
        reason = err["msg"]
        if err["type"] == "extra_forbidden":
            reason = "unknown field" + _did_you_mean(model, loc)
        reason = reason.removeprefix("Value error, ")
        problems.append(Problem(path=path, reason=reason))
    return problems


def _did_you_mean(model: type[BaseModel] | None, loc: list[Any]) -> str:
    """`; did you mean 'timeout'?` for a misspelt field at `loc` (its last part), or ""."""
    if model is None or not loc or not isinstance(loc[-1], str):
        return ""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not isinstance(fields, dict) or part not in fields:
            return ""
        current = _model_in(fields[part].annotation)
    fields = getattr(current, "model_fields", None)
    if not isinstance(fields, dict):
        return ""
    names = [a for name, f in fields.items() for a in (name, f.alias) if a]
    close = difflib.get_close_matches(loc[-1], sorted(set(names)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside `Model`, `list[Model]` or `Model | None`, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def parse_spec_text(text: str, *, source: str = "<spec>") -> Any:
    """YAML (a superset of JSON) -> Python data; syntax errors, nesting beyond the limit and
    duplicated keys become a Problem with the line (secflow/spec_input.py)."""
    try:
        return parse_json(text) if source.endswith(".json") else parse_yaml(text)
    except InputProblem as exc:
        raise SpecError([Problem(path=exc.path, reason=exc.reason)]) from None


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file (YAML or JSON)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(MAX_SPEC_BYTES + 1)  # never more than the limit into memory
        text = decode_spec_bytes(raw, name=p.name, size=size)
    except OSError as exc:
        raise SpecError([Problem(path="", reason=f"cannot read {p}: {exc.strerror or exc}")]) from None
    except InputProblem as exc:
        raise SpecError([Problem(path=exc.path, reason=exc.reason)]) from None
    data = parse_spec_text(text, source=p.name)
    return validate_spec_data(resolve_paths(data, p.resolve().parent))


def resolve_paths(data: Any, base: Path) -> Any:
    """Make relative `path:` targets and path-prefix scope entries absolute, relative to
    the spec file. The starter and every worker then agree on what a path means,
    whatever directory each runs in."""
    if not isinstance(data, dict):
        return data

    def absolute(value: Any) -> Any:
        if (isinstance(value, str) and value.startswith(("./", "../"))) or value == ".":
            return str((base / value).resolve())
        return value

    scope = data.get("scope")
    if isinstance(scope, dict) and isinstance(scope.get("allow"), list):
        scope["allow"] = [absolute(e) for e in scope["allow"]]
    for target in data.get("targets") or []:
        if isinstance(target, dict) and isinstance(target.get("path"), str) and not target["path"].startswith("/"):
            target["path"] = str((base / target["path"]).resolve())
    return data


def validate_spec_data(data: Any) -> Spec:
    """Validate parsed data into a Spec, collecting schema AND semantic problems."""
    try:
        problems = [Problem(path=where, reason=reason) for where, reason in data_problems(data)]
    except InputProblem as exc:  # too deep or too large to look further
        raise SpecError([Problem(path=exc.path, reason=exc.reason)]) from None
    if not isinstance(data, dict):
        raise SpecError([Problem(path="", reason="a spec is a mapping with name, scope, targets and stages")])
    data = canonical_spec_tools(data)  # tool aliases (detect_secrets, PyPI names) -> one spelling
    try:
        spec: Spec | None = Spec.model_validate(data)
    except ValidationError as exc:
        spec = None
        problems.extend(_pydantic_problems(exc, model=Spec))

    # Semantic checks need the pieces; validate them one by one so that one bad stage
    # does not hide the problems of the others.
    scope = _valid_piece(ScopeSpec, data.get("scope"))
    targets = _valid_list(Target, data.get("targets"))
    stages = _valid_list(Stage, data.get("stages"))
    problems.extend(_semantic_problems(scope, targets, stages, data.get("stages")))
    problems.extend(_chaos_problems(data.get("chaos")))
    credential_problems, inline_values = _inline_credentials(data)
    problems.extend(credential_problems)

    if problems:
        raise SpecError(_dedupe(_scrubbed(problems, inline_values)))
    assert spec is not None
    return spec


_URL_AUTH_HINT = "auth: {basic: {username: NAME, password: REF}}, auth: {bearer: REF} or auth: {header: {name: NAME, value: REF}}"


def _inline_credentials(data: dict[str, Any]) -> tuple[list[Problem], list[tuple[str, str]]]:
    """Credentials written into the spec (docs/secrets.md), and what to replace in every
    message so none is echoed: userinfo or token-like query parameters in a URL target or
    scope entry, a secret-named stage option that is not a reference."""
    problems: list[Problem] = []
    values: list[tuple[str, str]] = []  # (text, its replacement)
    for i, target in enumerate(data.get("targets") or []):
        url = target.get("url") if isinstance(target, dict) else None
        if not isinstance(url, str):
            continue
        found = inline_url_credentials(url)
        if found:
            values.append((url, mask_url_credentials(url)))
        for what, value in found:
            values.append((value, REDACTED))
            problems.append(
                Problem(
                    path=f"targets[{i}].url",
                    reason=f"credentials in the URL ({what}) are refused; give them by reference with "
                    f"{_URL_AUTH_HINT}, where REF is {REF_FORMS}",
                )
            )
    scope = data.get("scope")
    allow = scope.get("allow") if isinstance(scope, dict) else None
    for i, entry in enumerate(allow if isinstance(allow, list) else []):
        found = inline_url_credentials(entry) if isinstance(entry, str) else []
        values.extend((value, REDACTED) for _, value in found)
        if found:
            values.append((entry, mask_url_credentials(entry)))
            problems.append(
                Problem(path=f"scope.allow[{i}]", reason="credentials in a scope entry are refused; scope names no secrets")
            )
    for i, stage in enumerate(data.get("stages") or []):
        options = stage.get("options") if isinstance(stage, dict) else None
        if isinstance(options, dict):
            _inline_options(options, f"stages[{i}].options", problems, values)
    return problems, values


def _inline_options(options: dict[str, Any], where: str, problems: list[Problem], values: list[tuple[str, str]]) -> None:
    for key, value in options.items():
        path = f"{where}.{key}"
        if names_a_credential(key) and value is not None and not is_ref(value):
            if isinstance(value, str):
                values.append((value, REDACTED))
            problems.append(Problem(path=path, reason=f"an inline secret is refused; give a reference: {REF_FORMS}"))
        elif isinstance(value, dict) and not is_ref(value):
            _inline_options(value, path, problems, values)


# A bare value shorter than this is replaced only inside its URL: blanking every "1" or
# "ab" in every message would garble paths like stages[1].
_SCRUB_MIN = 4


def _scrubbed(problems: list[Problem], values: list[tuple[str, str]]) -> list[Problem]:
    """The problems with every inline secret replaced: an error message must not echo it."""
    pairs = sorted({(v, r) for v, r in values if len(v) >= _SCRUB_MIN or r != REDACTED}, key=lambda p: len(p[0]), reverse=True)
    if not pairs:
        return problems
    out = []
    for p in problems:
        reason = p.reason
        for value, replacement in pairs:
            reason = reason.replace(value, replacement)
        out.append(Problem(path=p.path, reason=reason))
    return out


def _chaos_problems(raw: Any) -> list[Problem]:
    """`chaos:` is checked by the validator of SECFLOW_CHAOS_CONFIG (secflow/http/chaos.py)."""
    if not isinstance(raw, dict):
        return []  # not a mapping: the schema check above already said so
    from secflow.http.chaos import chaos_problems

    return [Problem(path=f"chaos.{where}" if where else "chaos", reason=reason) for where, reason in chaos_problems(raw)]


def _valid_piece(model: type[BaseModel], raw: Any) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None


def _valid_list(model: type[BaseModel], raw: Any) -> list[tuple[int, Any]]:
    if not isinstance(raw, list):
        return []
    out = []
    for i, item in enumerate(raw):
        piece = _valid_piece(model, item)
        if piece is not None:
            out.append((i, piece))
    return out


def _semantic_problems(
    scope: ScopeSpec | None,
    targets: list[tuple[int, Target]],
    stages: list[tuple[int, Stage]],
    raw_stages: Any,
) -> list[Problem]:
    problems: list[Problem] = []

    parsed_scope: Scope | None = None
    if scope is not None:
        for section, entries in (("allow", scope.allow), ("deny", scope.deny)):
            for i, entry in enumerate(entries):
                try:
                    Scope.parse([entry])
                except ValueError as exc:
                    problems.append(Problem(path=f"scope.{section}[{i}]", reason=str(exc)))
        try:
            parsed_scope = Scope.parse(scope.allow, scope.deny)
        except ValueError:
            parsed_scope = None

    if parsed_scope is not None:
        for i, target in targets:
            problems.extend(_target_scope_problems(parsed_scope, i, target))

    target_kinds = {t.kind for _, t in targets}
    for i, stage in stages:
        problems.extend(_stage_problems(i, stage, target_kinds))

    problems.extend(_dag_problems(raw_stages))
    return problems


def _target_scope_problems(scope: Scope, i: int, target: Target) -> list[Problem]:
    path = f"targets[{i}].{target.kind}"
    if target.kind == "url" and not target.value.startswith(("http://", "https://")):
        return [Problem(path=path, reason=f"{target.value!r} is not an http(s) URL")]
    # Hosts and URLs are canonicalised (IDNA, no control characters, normalised paths) and
    # paths resolved through their symlinks before the scope is asked: secflow/scope.py.
    why = scope.refusal(target.kind, target.value)
    if why is None:
        return []
    return [
        Problem(
            path=path, reason=f"{target.value!r} is {why}" if why.startswith(("outside", "not")) else f"{target.value!r} {why}"
        )
    ]


def _stage_problems(i: int, stage: Stage, target_kinds: set[str]) -> list[Problem]:
    where = f"stages[{i}]"
    problems: list[Problem] = []
    tool = stage.tool_name
    info = TOOLS.get(tool)
    if not tool:
        problems.append(
            Problem(path=f"{where}.tool", reason=f"kind {stage.kind!r} has no built-in tool yet; name one of {sorted(TOOLS)}")
        )
    elif info is None:
        problems.append(
            Problem(path=f"{where}.tool", reason=f"unknown tool {tool!r}{suggest_tool(tool)}; known tools: {sorted(TOOLS)}")
        )
    elif stage.kind not in info.kinds:
        problems.append(
            Problem(
                path=f"{where}.tool",
                reason=f"tool {tool!r} does not run in a {stage.kind!r} stage (it is for {sorted(info.kinds)})",
            )
        )
    if info is not None:
        try:
            info.options.model_validate(stage.tool_options())
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, prefix=f"{where}.options", model=info.options))
        if info.target_kinds and not (info.target_kinds & target_kinds):
            problems.append(
                Problem(
                    path=f"{where}.tool",
                    reason=f"tool {tool!r} needs a {'/'.join(sorted(info.target_kinds))} target and the spec has none",
                )
            )
        if info.retry_class is RetryClass.SANDBOX and stage.retry and (stage.retry.max_attempts or 1) > 1:
            problems.append(Problem(path=f"{where}.retry.max_attempts", reason="sandbox launches are never retried"))
        if info.retry_class is RetryClass.SANDBOX and stage.retry and stage.retry.adaptive:
            problems.append(
                Problem(path=f"{where}.retry.adaptive", reason="sandbox launches are never retried, so never adapted")
            )
    problems.extend(_limits_problems(where, stage))
    tfp = stage.options.get("tolerated_failure_percent")
    if tfp is not None and (isinstance(tfp, bool) or not isinstance(tfp, (int, float)) or not 0 <= tfp <= 100):
        problems.append(Problem(path=f"{where}.options.tolerated_failure_percent", reason="must be a number from 0 to 100"))
    for option, most in (("targets_in_flight", MAX_CONCURRENCY), ("targets_per_batch", MAX_BATCH_SIZE)):
        value = stage.options.get(option)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most):
            problems.append(Problem(path=f"{where}.options.{option}", reason=f"must be a whole number from 1 to {most}"))
    ladder_problems_found = ladder_problems(stage.on_failure, has_fallback_tool=bool(stage.fallback_tool))
    for suffix, reason in ladder_problems_found:
        path = f"{where}.fallback_tool" if stage.on_failure == "fallback" else f"{where}.on_failure{suffix}"
        problems.append(Problem(path=path, reason=reason))
    uses_fallback = not ladder_problems_found and "fallback" in stage.ladder
    if uses_fallback:
        if stage.fallback_tool:
            fb = TOOLS.get(stage.fallback_tool)
            if fb is None:
                problems.append(
                    Problem(
                        path=f"{where}.fallback_tool",
                        reason=f"unknown tool {stage.fallback_tool!r}{suggest_tool(stage.fallback_tool)}; known tools: {sorted(TOOLS)}",
                    )
                )
            elif stage.kind not in fb.kinds:
                problems.append(
                    Problem(
                        path=f"{where}.fallback_tool",
                        reason=f"tool {stage.fallback_tool!r} does not run in a {stage.kind!r} stage",
                    )
                )
            else:
                try:
                    fb.options.model_validate(stage.tool_options(stage.fallback_tool))
                except ValidationError as exc:
                    problems.extend(
                        _pydantic_problems(exc, prefix=f"{where}.options (for fallback {stage.fallback_tool})", model=fb.options)
                    )
    elif stage.fallback_tool and not ladder_problems_found:
        problems.append(Problem(path=f"{where}.fallback_tool", reason="only used with on_failure: fallback (or a fallback rung)"))
    if stage.on_wait_timeout == "approve" and not stage.requires_approval:
        problems.append(
            Problem(
                path=f"{where}.on_wait_timeout",
                reason="approve only answers an approval gate (requires_approval: true); a failure wait ends with skip or fail",
            )
        )
    if stage.always and stage.requires_approval:
        problems.append(
            Problem(path=f"{where}.requires_approval", reason="an always stage runs unconditionally and cannot be gated")
        )
    return problems


def _limits_problems(where: str, stage: Stage) -> list[Problem]:
    """`limits` is for stages that probe (a discovery tool, or one as fallback), and a
    discovery tool's own `ports` must lie inside `limits.ports`."""
    if stage.limits is None:
        return []
    tools = [t for t in (stage.tool_name, stage.fallback_tool) if t]
    if not any(t in RATE_OPTION for t in tools):
        return [
            Problem(
                path=f"{where}.limits",
                reason=f"limits apply to discovery tools ({', '.join(sorted(RATE_OPTION))}); {' / '.join(tools)} does not probe",
            )
        ]
    outside = ports_outside(stage.limits, stage.options.get("ports"))
    if outside:
        shown = ", ".join(map(str, outside[:10])) + (", ..." if len(outside) > 10 else "")
        return [Problem(path=f"{where}.options.ports", reason=f"ports {shown} are outside limits.ports ({stage.limits.ports})")]
    return []


def _dag_problems(raw_stages: Any) -> list[Problem]:
    """Duplicate ids, dangling depends_on and cycles, read from the raw stages so that a
    stage with an unrelated mistake (a bad timeout, say) still has its edges checked."""
    if not isinstance(raw_stages, list):
        return []
    problems: list[Problem] = []
    graph: dict[str, list[str]] = {}
    index: dict[str, int] = {}
    for i, raw in enumerate(raw_stages):
        sid = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(sid, str):
            continue
        if sid in graph:
            problems.append(Problem(path=f"stages[{i}].id", reason=f"duplicate stage id {sid!r}"))
            continue
        deps = raw.get("depends_on") or []
        graph[sid] = [d for d in deps if isinstance(d, str)] if isinstance(deps, list) else []
        index[sid] = i
    for sid, deps in graph.items():
        for j, dep in enumerate(deps):
            if dep == sid:
                problems.append(Problem(path=f"stages[{index[sid]}].depends_on[{j}]", reason="a stage cannot depend on itself"))
            elif dep not in graph:
                problems.append(Problem(path=f"stages[{index[sid]}].depends_on[{j}]", reason=f"no stage has id {dep!r}"))

    # Depth-first, with an explicit stack: a chain of thousands of stages must not reach
    # Python's recursion limit (a 3,000-stage cycle once did).
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in graph:
        if root in state:
            continue
        state[root] = 1
        path: list[str] = [root]
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, next_edge = stack[-1]
            deps = graph[node]
            if next_edge >= len(deps):
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            stack[-1] = (node, next_edge + 1)
            dep = deps[next_edge]
            if dep not in graph or dep == node:
                continue
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                problems.append(Problem(path=f"stages[{index[dep]}].depends_on", reason="dependency cycle: " + _chain(cycle)))
            elif dep not in state:
                state[dep] = 1
                path.append(dep)
                stack.append((dep, 0))
    return problems


def _chain(ids: list[str], most: int = 12) -> str:
    """`a -> b -> c`, with the middle of a very long cycle elided."""
    if len(ids) <= most:
        return " -> ".join(ids)
    half = most // 2
    return " -> ".join(ids[:half]) + f" -> ... ({len(ids) - most} more) -> " + " -> ".join(ids[-half:])


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        key = (p.path, p.reason)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
