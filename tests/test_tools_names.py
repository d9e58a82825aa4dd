"""One naming convention for tools: canonical names use hyphens (like PyPI names), every
other spelling and the PyPI names are aliases in specs, unknown names get "did you
mean", and specs stored before the rename still run (issue 11 papercut)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import Client

from secflow.spec import Spec, SpecError, validate_spec_data
from secflow.tools import DEFAULT_TOOL_FOR_KIND, TOOLS, activity_names, canonical_tool
from tests.helpers import activity_order, final_status, make_spec, start
from tests.servers import GOOD_HEADERS, Reply, ScriptedServer


def test_one_convention_and_every_spelling_resolves() -> None:
    assert all(name == name.lower() and "_" not in name for name in TOOLS), sorted(TOOLS)
    for spelling in ("detect_secrets", "detect-secrets", "Detect-Secrets", "DETECT_SECRETS"):
        assert canonical_tool(spelling) == "detect-secrets"
        assert spelling in TOOLS and TOOLS[spelling] is TOOLS["detect-secrets"]
    assert canonical_tool("http_headers") == "http-headers" and canonical_tool("cve_enrich") == "cve-enrich"
    assert canonical_tool("nuclei") is None and "nuclei" not in TOOLS and TOOLS.get("nuclei") is None
    # the defaults of stored stages without a tool still name a tool
    assert all(tool in TOOLS for tool in DEFAULT_TOOL_FOR_KIND.values())
    # the activity keeps its first name (running histories schedule it) and gains the canonical one
    assert activity_names("detect_secrets") == ["detect_secrets", "detect-secrets"]
    assert activity_names("bandit") == ["bandit"]


def test_specs_may_use_any_spelling_and_are_stored_canonically(tmp_path: Path) -> None:
    spec = make_spec(
        [{"url": "http://127.0.0.1:1/"}, {"path": str(tmp_path)}],
        [
            {"id": "headers", "kind": "dast", "tool": "http_headers"},
            {"id": "secrets", "kind": "secrets", "tool": "Detect_Secrets"},
            {"id": "sast", "kind": "sast"},  # no tool: its kind's default, named explicitly
            {"id": "more", "kind": "dast", "tool": "HTTP-Headers", "on_failure": "fallback", "fallback_tool": "http_headers"},
        ],
        scope={"allow": ["127.0.0.1", str(tmp_path)]},
    )
    assert [(s.tool, s.fallback_tool) for s in spec.stages] == [
        ("http-headers", None), ("detect-secrets", None), ("bandit", None), ("http-headers", "http-headers"),
    ]


@pytest.mark.parametrize(
    ("field", "value", "suggestion"),
    [("tool", "detect-secret", "detect-secrets"), ("tool", "http_header", "http-headers"), ("tool", "bandt", "bandit"),
     ("fallback_tool", "portscn", "portscan")],
)
def test_an_unknown_tool_gets_did_you_mean(field: str, value: str, suggestion: str) -> None:
    stage = {"id": "s", "kind": "discovery" if field == "fallback_tool" else "sast", "tool": "nmap" if field == "fallback_tool" else value}
    if field == "fallback_tool":
        stage.update({"on_failure": "fallback", "fallback_tool": value})
    data = {"name": "x", "scope": {"allow": ["127.0.0.1"]}, "targets": [{"host": "127.0.0.1"}], "stages": [stage]}
    with pytest.raises(SpecError) as caught:
        validate_spec_data(json.loads(json.dumps(data)))
    text = str(caught.value)
    assert f"stages[0].{field}: unknown tool {value!r} (did you mean {suggestion!r}?)" in text, text


def test_nothing_close_gets_no_suggestion() -> None:
    data = {"name": "x", "scope": {"allow": ["127.0.0.1"]}, "targets": [{"host": "127.0.0.1"}],
            "stages": [{"id": "s", "kind": "discovery", "tool": "zzzzzz"}]}
    with pytest.raises(SpecError) as caught:
        validate_spec_data(data)
    assert "unknown tool 'zzzzzz'; known tools:" in str(caught.value)


async def test_an_alias_runs_under_the_canonical_name_and_a_spec_stored_before_the_rename_still_runs(
    client: Client, worker: str
) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        stages = [{"id": "headers", "kind": "dast", "tool": "http_headers"}]
        new = make_spec([{"url": target.url}], stages)  # validated: stored as http-headers
        data = {"name": "old", "scope": {"allow": ["127.0.0.1"]}, "targets": [{"url": target.url}], "stages": stages}
        old = Spec.model_validate(data)  # as a spec stored before the rename: http_headers
        assert (new.stages[0].tool, old.stages[0].tool) == ("http-headers", "http_headers")
        handles = [await start(client, spec, worker) for spec in (new, old)]
        finals = [await final_status(h) for h in handles]
    finally:
        target.close()
    assert [f.outcome for f in finals] == ["completed", "completed"], [f.reason for f in finals]
    assert [f.stages["headers"].tool for f in finals] == ["http-headers", "http_headers"]
    assert "http-headers" in await activity_order(handles[0])
    assert "http_headers" in await activity_order(handles[1]), "the old activity name is still registered"
