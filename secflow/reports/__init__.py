"""Standard reports of an assessment, one pure renderer per format.

Each renderer is `(status, findings, errors) -> str`: no I/O, so the `report` stage, the
starter's `report` command and the tests all produce byte-identical output from the same
inputs. Free text (titles, evidence, messages, reasons) goes through `redact` first.

| format | module | for |
|---|---|---|
| sarif | `sarif.py` | code-scanning tools (SARIF 2.1.0, GitHub code scanning) |
| md | `markdown.py` | people, in a terminal or a pull request |
| html | `html.py` | people, in a browser (one self-contained page) |
| json | `json_report.py` | machines (stable keys) |

A status without an outcome renders as a snapshot and says so; the workflow renders the
report stage's files again from its final status when it ends (`final.py`). Issues found
by several tools are grouped in `_common.group_issues`; remediation comes from
`remediation.py` (`rules/remediation.yaml`), SARIF drivers from `tool_info.py`, and every
file is written by `files.py` (0600, 0700, never through a link). See docs/reports.md.
"""

from __future__ import annotations

from collections.abc import Callable

from secflow.findings import Finding
from secflow.models import AssessmentStatus
from secflow.reports.html import render_html
from secflow.reports.json_report import render_json
from secflow.reports.markdown import render_markdown
from secflow.reports.sarif import render_sarif
from secflow.store import ErrorEvent

Renderer = Callable[[AssessmentStatus, list[Finding], list[ErrorEvent]], str]

#: format name -> (renderer, file name the report stage writes)
RENDERERS: dict[str, tuple[Renderer, str]] = {
    "sarif": (render_sarif, "report.sarif"),
    "md": (render_markdown, "report.md"),
    "html": (render_html, "report.html"),
    "json": (render_json, "report.json"),
}

FORMATS: tuple[str, ...] = tuple(RENDERERS)

__all__ = ["FORMATS", "RENDERERS", "Renderer", "render_html", "render_json", "render_markdown", "render_sarif"]
