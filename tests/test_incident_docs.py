"""Every search-attribute value the documentation shows is one the code sets (issue 11:
docs/cluster.md showed `SecflowIncidentSeverity = "critical"` where the values are P1-P4)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

from secflow.incidents import IncidentState, Severity
from secflow.models import AssessmentOutcome

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `SecflowX = "v"`, `SecflowX != 'v'` and `SecflowX IN ('a', 'b')`, in queries and prose
COMPARE = re.compile(r"""\b(Secflow\w+)\s*(?:!?=)\s*["']([^"']*)["']""")
IN_LIST = re.compile(r"""\b(Secflow\w+)\s+IN\s*\(([^)]*)\)""", re.IGNORECASE)


def derived_statuses() -> set[str]:
    """The statuses the assessment publishes: its outcomes and what `_derive_status` returns."""
    tree = ast.parse((ROOT / "workflows" / "assessment" / "workflow.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_derive_status")
    literals = {r.value.value for r in ast.walk(fn) if isinstance(r, ast.Return) and isinstance(r.value, ast.Constant)}
    return literals | set(get_args(AssessmentOutcome))


def stage_ids_in_examples() -> set[str]:
    return set(re.findall(r"^\s*- id: (\S+)", (ROOT / "examples" / "demo.yaml").read_text(), re.MULTILINE))


def allowed() -> dict[str, set[str]]:
    return {
        "SecflowStatus": derived_statuses(),
        "SecflowAwaiting": stage_ids_in_examples(),
        "SecflowIncidentSeverity": {s.value for s in Severity},
        "SecflowIncidentState": {s.value for s in IncidentState},
    }


def documented_values() -> list[tuple[str, str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for name, value in COMPARE.findall(text):
            found.append((doc.name, name, value))
        for name, values in IN_LIST.findall(text):
            found += [(doc.name, name, v.strip().strip("'\"")) for v in values.split(",")]
    return found


def test_documented_search_attribute_values_are_the_codes() -> None:
    table = allowed()
    assert table["SecflowStatus"] >= {"running", "awaiting_intervention", "completed_with_errors", "compensating"}
    found = documented_values()
    assert any(name == "SecflowIncidentSeverity" for _, name, _ in found), "the docs show a severity filter"
    wrong = [(doc, name, value) for doc, name, value in found if name not in table or value not in table[name]]
    assert wrong == [], f"values the code never sets: {wrong}"


def test_the_cluster_doc_tables_every_value() -> None:
    text = (ROOT / "docs" / "cluster.md").read_text()
    for name, values in allowed().items():
        if name == "SecflowAwaiting":
            continue
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}`"))
        assert set(re.findall(r"`([a-z_0-9A-Z]+)`", row)) - {name} == values, row
