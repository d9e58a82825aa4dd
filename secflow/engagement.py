"""Rules of engagement of a stage: how fast and which ports its discovery tools may probe.

A stage writes them once, whatever tool runs:

    stages:
      - id: ports
        kind: discovery
        tool: nmap
        on_failure: fallback
        fallback_tool: portscan
        limits: {max_rate: 50, ports: "1-1024"}

and every discovery tool gets them folded into its own options (`apply_limits`): nmap's
``--max-rate`` and portscan's ``rate`` are capped at ``max_rate``; the ports a tool scans
are its own ``ports`` option cut down to ``limits.ports`` (or ``limits.ports`` when the
option is not given). A discovery tool's own rate option (nmap ``max_rate``, portscan
``rate``) written in the stage's options is a limit of the stage too, so a fallback tool
never probes faster than the tool it replaces was allowed to (`stage_limits`).

The workflow passes the folded options in the activity input (`Stage.tool_options`), and
the activity folds them again from the stored spec (`activities/runner.py`): folding is
idempotent, and an input built by an older workflow still gets the stage's limits.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from secflow.tools import parse_port_spec

# Discovery tools and the option that paces their probes (probes started per second).
RATE_OPTION: dict[str, str] = {"portscan": "rate", "nmap": "max_rate"}


class EngagementLimits(BaseModel):
    """`stages[].limits`: rules of engagement every discovery tool in the stage honours."""

    model_config = ConfigDict(extra="forbid")

    max_rate: float | None = Field(None, gt=0, le=100000, description="probes started per second, at most")
    ports: str | None = Field(None, description="the only ports a tool may probe, e.g. 1-1024,8080")

    @field_validator("ports")
    @classmethod
    def _ports_parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_port_spec(value)
        return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return float(value)


def stage_limits(limits: EngagementLimits | None, own_tool: str, options: dict[str, Any]) -> EngagementLimits | None:
    """The stage's limits, tightened by its own discovery tool's rate option."""
    rates = [r for r in (limits.max_rate if limits else None, _number(options.get(RATE_OPTION.get(own_tool, "")))) if r]
    ports = limits.ports if limits else None
    if not rates and ports is None:
        return None
    return EngagementLimits(max_rate=min(rates) if rates else None, ports=ports)


def apply_limits(tool: str, options: dict[str, Any], limits: EngagementLimits | None) -> dict[str, Any]:
    """`options` of `tool` with the stage's limits folded in (unchanged for non-discovery tools).

    Ports outside `limits.ports` are dropped; if none is left the ports option becomes
    empty, which the tool's option model refuses (the spec validator says so first).
    """
    if limits is None or tool not in RATE_OPTION:
        return options
    out = dict(options)
    if limits.max_rate is not None:
        key = RATE_OPTION[tool]
        current = _number(out.get(key))
        out[key] = min(current, limits.max_rate) if current is not None else limits.max_rate
    if limits.ports is not None:
        allowed = set(parse_port_spec(limits.ports))
        if "ports" in out:
            try:
                wanted = parse_port_spec(str(out["ports"]))
            except ValueError:
                return out  # the tool's option model reports the bad list
            out["ports"] = format_ports([p for p in wanted if p in allowed])
        else:
            out["ports"] = format_ports(sorted(allowed))
    return out


def ports_outside(limits: EngagementLimits | None, ports: Any) -> list[int]:
    """Ports of a tool's `ports` option that `limits.ports` does not allow (for the validator)."""
    if limits is None or limits.ports is None or ports is None:
        return []
    try:
        wanted = parse_port_spec(str(ports))
    except ValueError:
        return []
    allowed = set(parse_port_spec(limits.ports))
    return [p for p in wanted if p not in allowed]


def format_ports(ports: list[int]) -> str:
    """Sorted ports -> the shortest port spec: [22, 80, 81, 82] -> "22,80-82" ("" when none)."""
    ranges: list[str] = []
    for port in sorted(set(ports)):
        if ranges and "-" in ranges[-1] and int(ranges[-1].split("-")[1]) == port - 1:
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{port}"
        elif ranges and "-" not in ranges[-1] and int(ranges[-1]) == port - 1:
            ranges[-1] = f"{ranges[-1]}-{port}"
        else:
            ranges.append(str(port))
    return ",".join(ranges)
