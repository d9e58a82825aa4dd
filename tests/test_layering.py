"""The layers of docs/architecture.md, checked on the source (ast, nothing imported).

* `secflow/` is the ground: no module under it imports `workflows`, `activities`,
  `starter` or `worker` (at module level, in a function, or under TYPE_CHECKING).
* The store is used through its public API and repositories: outside `secflow/store/`,
  no code reaches for the store's private helpers or its connection (`store._write()`,
  `store._connection()`, `store._x(...)`, `store._dialect`, ...), nor imports a private
  name from `secflow.store` or its modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UPPER_LAYERS = frozenset({"workflows", "activities", "starter", "worker"})
# FindingsStore's private members: connections, transactions, SQL execution, backend.
STORE_PRIVATES = frozenset(
    {"_write", "_connection", "_x", "_many", "_dialect", "_backend", "_borrow", "_give_back", "_read_errors", "_migrate"}
)
# Code outside the store that may be checked: the ground and every layer above it.
CHECKED = ("secflow", "activities", "starter", "workflows", "worker.py")


def _modules(*roots: str) -> Iterator[Path]:
    for root in roots:
        path = ROOT / root
        if path.is_file():
            yield path
        else:
            yield from sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _in_store(path: Path) -> bool:
    return _rel(path).startswith("secflow/store/") or _rel(path) == "secflow/store.py"


def upward_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of every import of an upper layer."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] in UPPER_LAYERS]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in UPPER_LAYERS:
                found.append((node.lineno, node.module))
    return found


def store_private_uses(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, what) of every use of a store private: an attribute of the store's private
    names on anything but `self`/`cls`, or a `_`-name imported from secflow.store(.*)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in STORE_PRIVATES:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "secflow.store" or node.module.startswith("secflow.store."):
                found += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names if a.name.startswith("_")]
    return found


def test_the_ground_imports_no_upper_layer() -> None:
    offences = [
        f"{_rel(path)}:{line}: imports {module}" for path in _modules("secflow") for line, module in upward_imports(_parse(path))
    ]
    assert not offences, "secflow/ must not import workflows/, activities/, starter/ or worker.py:\n" + "\n".join(offences)


def test_no_module_outside_the_store_uses_its_privates() -> None:
    offences = [
        f"{_rel(path)}:{line}: {what}"
        for path in _modules(*CHECKED)
        if not _in_store(path)
        for line, what in store_private_uses(_parse(path))
    ]
    assert not offences, "use the store's public API or a repository (secflow/store/):\n" + "\n".join(offences)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from workflows.assessment import x", ["workflows.assessment"]),
        ("def f():\n    import activities.runner", ["activities.runner"]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from starter.cli import main", ["starter.cli"]),
        ("import worker", ["worker"]),
        ("from secflow.store import open_store\nimport workflowsish", []),
    ],
)
def test_upward_imports_are_seen(source: str, expected: list[str]) -> None:
    assert [module for _, module in upward_imports(ast.parse(source))] == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("with store._write() as conn:\n    store._x(conn, 'SELECT 1')", ["._write", "._x"]),
        ("g = get_store()._dialect.greatest", ["._dialect"]),
        ("with s._connection() as c: pass", ["._connection"]),
        ("from secflow.store import _ts, open_store", ["from secflow.store import _ts"]),
        ("from secflow.store.core import _parse_ts", ["from secflow.store.core import _parse_ts"]),
        ("class P:\n    def f(self):\n        self._write([])", []),  # a class's own member of that name
        ("from secflow.store import FindingsStore\nstore.dead_letters.park(inp)", []),
    ],
)
def test_store_private_uses_are_seen(source: str, expected: list[str]) -> None:
    assert [what for _, what in store_private_uses(ast.parse(source))] == expected
