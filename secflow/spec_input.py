"""Reading a spec file safely: size, encoding, nesting, duplicate keys and string limits.

`secflow/spec.py` validates what a spec *means*; this module makes sure the text can be
turned into data at all without a traceback, and that the data is small enough to travel
(the spec is stored once, its stages go into the workflow's input, its targets are
loaded in batches). Every refusal is a `(field path, reason)` pair; the limits are
documented in docs/spec-limits.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

# The limits (docs/spec-limits.md). Generous for any real assessment, far below what
# breaks a parser, a payload (Temporal refuses a 2 MB payload and a 4 MB gRPC message)
# or a worker's memory.
MAX_SPEC_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 32
MAX_VALUES = 1_000_000  # every scalar and container, aliases expanded
MAX_STRING = 8 * 1024  # one string value (descriptions, targets, option values)
MAX_KEY = 256  # one mapping key
MAX_TARGETS = 100_000
MAX_STAGES = 500
MAX_STAGES_BYTES = 512 * 1024  # the stages, as JSON: they travel in the workflow's input


class InputProblem(Exception):
    """One problem that stops reading; `path` is "" for the whole file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def decode_spec_bytes(raw: bytes, *, name: str, size: int = 0) -> str:
    """UTF-8 text of a spec file, or InputProblem naming the size or the bad byte's line.
    `size` is the file's size when known (`raw` may have been cut at the limit)."""
    size = max(size, len(raw))
    if size > MAX_SPEC_BYTES:
        raise InputProblem("", f"{name} is {size:,} bytes; a spec may have at most {MAX_SPEC_BYTES:,} (see docs/spec-limits.md)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start : exc.start + 1].hex()
        raise InputProblem("", f"not UTF-8: byte 0x{byte} at line {line} (save the file as UTF-8)") from None


# --- parsing ---------------------------------------------------------------------------


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting while composing (before Python's recursion
    limit is near) and remembers duplicated mapping keys instead of letting the last win."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self.duplicates: list[str] = []

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:  # +1: the document's root is not a nesting level
                mark = self.peek_event().start_mark
                raise InputProblem("", f"nested more than {MAX_DEPTH} levels deep at line {mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable: the constructor below says so
            line = key_node.start_mark.line + 1
            if first is not None:
                self.duplicates.append(f"duplicate key {key!r} at line {line} (first at line {first})")
            else:
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    loader = _SpecLoader(text)
    try:
        try:
            data = loader.get_single_data()
        except RecursionError:  # a bound above should make this unreachable; never a traceback
            raise InputProblem("", f"nested more than {MAX_DEPTH} levels deep") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise InputProblem("", f"invalid YAML{where}: {problem}") from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise InputProblem("", "; ".join(loader.duplicates[:10]) + " (a key may appear once per mapping)")
    return data


def parse_json(text: str) -> Any:
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except RecursionError:
        raise InputProblem("", f"nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise InputProblem("", f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if duplicates:
        raise InputProblem(
            "", "; ".join(_json_duplicate(text, k) for k in duplicates[:10]) + " (a key may appear once per object)"
        )
    return data


def _json_duplicate(text: str, key: str) -> str:
    """JSON's decoder gives no positions to the pairs hook: find the key's second
    occurrence in the text for the line (good enough to point a person at it)."""
    pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
    hits = [m.start() for m in pattern.finditer(text)]
    if len(hits) >= 2:
        return f"duplicate key {key!r} at line {text.count(chr(10), 0, hits[1]) + 1}"
    return f"duplicate key {key!r}"


# --- the parsed data -------------------------------------------------------------------


def _walk(data: Any) -> Iterator[tuple[str, Any, int]]:
    """(field path, value, depth) of every value, iteratively (no recursion to exhaust)."""
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        path, value, depth = stack.pop()
        yield path, value, depth
        if isinstance(value, dict):
            for key, child in reversed(list(value.items())):
                name = _printable(key)
                stack.append((f"{path}.{name}" if path else name, child, depth + 1))
        elif isinstance(value, list):
            for i in range(len(value) - 1, -1, -1):
                stack.append((f"{path}[{i}]", value[i], depth + 1))


def _printable(key: Any) -> str:
    """A key as it can appear in a field path: shortened, surrogates escaped."""
    text = str(key)
    if len(text) > 64:
        text = text[:60] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _string_problem(text: str, *, limit: int) -> str | None:
    if len(text) > limit:
        return f"{len(text):,} characters; at most {limit:,}"
    for ch in text:
        if "\ud800" <= ch <= "\udfff":
            return f"contains a lone surrogate (U+{ord(ch):04X}), which is not text; remove it"
    if "\x00" in text:
        return "contains a NUL character"
    return None


def data_problems(data: Any) -> list[tuple[str, str]]:
    """Limits on the parsed data, each as (field path, reason). Runs before the schema;
    data too deep or too large for the schema to look at raises InputProblem instead."""
    problems: list[tuple[str, str]] = []
    count = 0
    for path, value, depth in _walk(data):
        count += 1
        if count > MAX_VALUES:
            raise InputProblem("", f"more than {MAX_VALUES:,} values (aliases expanding?)")
        if depth > MAX_DEPTH:
            raise InputProblem(path, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, str):
            reason = _string_problem(value, limit=MAX_STRING)
            if reason and len(problems) < 50:
                problems.append((path, reason))
        elif isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    if len(problems) < 50:
                        problems.append((path, f"key {key!r} is not a string"))
                    continue
                reason = _string_problem(key, limit=MAX_KEY)
                if reason and len(problems) < 50:
                    problems.append((f"{path}.{_printable(key)}" if path else _printable(key), f"key: {reason}"))
    if not isinstance(data, dict):
        return problems[:50]
    targets, stages = data.get("targets"), data.get("stages")
    if isinstance(targets, list) and len(targets) > MAX_TARGETS:
        problems.append(("targets", f"{len(targets):,} targets; at most {MAX_TARGETS:,} per assessment (split the scope)"))
    if isinstance(stages, list):
        if len(stages) > MAX_STAGES:
            problems.append(("stages", f"{len(stages):,} stages; at most {MAX_STAGES}"))
        size = len(json.dumps(stages, default=str))
        if size > MAX_STAGES_BYTES:
            problems.append(
                (
                    "stages",
                    f"{size:,} bytes of stages (as JSON); at most {MAX_STAGES_BYTES:,}: they travel in the workflow's input",
                )
            )
    return problems[:50]
