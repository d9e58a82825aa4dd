"""Harvested failure cases: how they are stored, rebuilt and split.

A case is one failure that really happened on this machine (tests/corpus/harvest.py):
either an exception (its type, args, the attributes the classifier reads, its cause
chain, the HTTP response it carried) or a message with the context a caller passes to
`classify` (`tool`, `exit_code`, `http_status`). `expected` is the category the
scenario's written rule gives it, decided before the classifier was asked.

`rebuild()` turns the stored form back into an equivalent exception (same class, args,
errno, response, cause chain), so the corpus can be evaluated without re-running the
scenarios; the harvest checks that the rebuilt exception classifies like the original.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secflow.errors import Category, Classification, classify

HERE = Path(__file__).resolve().parent
HOLDOUT_FILE = HERE / "holdout.json"
TUNE_FILE = HERE / "tune.json"

# Attributes the classifier (or str()) reads beyond `args`; copied when present.
_ATTRS = (
    "errno",
    "strerror",
    "filename",
    "returncode",
    "cmd",
    "output",
    "stderr",
    "timeout",
    "reason",
    "library",
    "verify_message",
    "verify_code",
    "exit_code",
    "stdout_tail",
    "stderr_tail",
    "retry_after",
    "category",
)
_MAX_TEXT = 4000


@dataclass
class HarvestedCase:
    case_id: str  # scenario id plus variant: stable across harvests (the split key)
    scenario: str
    rule: str  # why `expected`: a property of the scenario, written before classifying
    expected: Category
    context: dict[str, Any]  # kwargs for classify(): tool, exit_code, http_status
    message: str | None = None  # a message case
    exception: dict[str, Any] | None = None  # an exception case (see dump_exception)
    extra: dict[str, Any] = field(default_factory=dict)

    def error(self) -> BaseException | str:
        if self.exception is not None:
            return rebuild(self.exception)
        return self.message or ""

    def classify(self) -> Classification:
        return classify(self.error(), **self.context)

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "case_id": self.case_id,
            "scenario": self.scenario,
            "expected": self.expected.value,
            "rule": self.rule,
            "context": self.context,
        }
        if self.exception is not None:
            data["exception"] = self.exception
        else:
            data["message"] = self.message
        if self.extra:
            data["extra"] = self.extra
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HarvestedCase:
        return cls(
            case_id=data["case_id"],
            scenario=data["scenario"],
            rule=data["rule"],
            expected=Category(data["expected"]),
            context=dict(data.get("context") or {}),
            message=data.get("message"),
            exception=data.get("exception"),
            extra=dict(data.get("extra") or {}),
        )


def in_holdout(case_id: str) -> bool:
    """One case in three, by the SHA-256 of its id: fixed before any rule changed."""
    return int(hashlib.sha256(case_id.encode("utf-8")).hexdigest()[:8], 16) % 3 == 0


def load(path: Path) -> list[HarvestedCase]:
    return [HarvestedCase.from_json(d) for d in json.loads(path.read_text())["cases"]]


def save(path: Path, cases: list[HarvestedCase], header: dict[str, Any]) -> None:
    doc = {**header, "cases": [c.as_json() for c in sorted(cases, key=lambda c: c.case_id)]}
    path.write_text(json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")


# --------------------------------------------------------------------------------------
# exceptions <-> JSON
# --------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        return {"__bytes__": value.decode("utf-8", "replace")[-_MAX_TEXT:]}
    if isinstance(value, str):
        return value[-_MAX_TEXT:] if len(value) > _MAX_TEXT else value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "name") and hasattr(value, "value"):  # an enum
        return {"__enum__": f"{type(value).__module__}:{type(value).__qualname__}", "name": value.name}
    return str(value)[-_MAX_TEXT:]


def _unplain(value: Any) -> Any:
    if isinstance(value, dict) and "__bytes__" in value:
        return value["__bytes__"].encode("utf-8")
    if isinstance(value, dict) and "__enum__" in value:
        return getattr(_import(value["__enum__"]), value["name"])
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


def _import(dotted: str) -> Any:
    module, _, qualname = dotted.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:
        # A native extension's exception (Temporal's bridge): a class of the same name.
        return type(qualname.rsplit(".", 1)[-1], (Exception,), {"__module__": module})
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def dump_exception(exc: BaseException, depth: int = 0) -> dict[str, Any]:
    cls = type(exc)
    data: dict[str, Any] = {
        "type": f"{cls.__module__}:{cls.__qualname__}",
        "str": _plain(_safe_str(exc)),
        "args": [_plain(a) for a in exc.args if not isinstance(a, BaseException)],
    }
    attrs = {}
    for name in _ATTRS:
        if name in ("args",):
            continue
        try:
            value = getattr(exc, name)
        except Exception:
            continue
        if callable(value) or isinstance(value, BaseException) or (name == "reason" and not isinstance(value, str | None)):
            continue
        if value is not None:
            attrs[name] = _plain(value)
    if attrs:
        data["attrs"] = attrs
    # Plain private state (Temporal's exceptions keep their type, retry state, activity
    # type there): restored as is, so a rebuilt exception answers like the live one.
    state = {
        k: _plain(v)
        for k, v in vars(exc).items()
        if k.startswith("_") and not k.startswith("__") and (v is None or isinstance(v, str | int | float | bool) or hasattr(v, "name"))
        and not isinstance(v, BaseException)
    }
    if state:
        data["state"] = state
    response = getattr(exc, "response", None)
    if response is not None and hasattr(response, "status_code") and hasattr(response, "headers"):
        try:
            body = response.text[:_MAX_TEXT]
        except Exception:
            body = ""
        data["http"] = {
            "status": response.status_code,
            "headers": dict(response.headers),
            "body": body,
            "url": str(exc.request.url) if getattr(exc, "_request", None) is not None else "http://127.0.0.1/",
        }
    texc = importlib.import_module("temporalio.exceptions")
    if isinstance(exc, texc.ApplicationError):
        data["application"] = {"message": exc.message, "type": exc.type, "non_retryable": exc.non_retryable}
    tservice = importlib.import_module("temporalio.service")
    if isinstance(exc, tservice.RPCError):
        data["rpc"] = {"message": exc.message, "status": exc.status.name}
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None and depth < 8:
        data["cause"] = dump_exception(cause, depth + 1)
    wrapped = [a for a in exc.args if isinstance(a, BaseException)]
    if wrapped and depth < 8:
        data["wrapped"] = [dump_exception(a, depth + 1) for a in wrapped]
    return data


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__


def rebuild(data: dict[str, Any]) -> BaseException:
    cls = _import(data["type"])
    args = [_unplain(a) for a in data.get("args", [])]
    wrapped = [rebuild(w) for w in data.get("wrapped", [])]
    exc: BaseException
    if "http" in data:
        import httpx

        http = data["http"]
        request = httpx.Request("GET", http["url"])
        response = httpx.Response(http["status"], headers=http["headers"], text=http["body"], request=request)
        exc = cls(args[0] if args else data["str"], request=request, response=response)
    elif "application" in data:
        app = data["application"]
        exc = cls(app["message"], type=app["type"], non_retryable=app["non_retryable"])
    elif "rpc" in data:
        from temporalio.service import RPCStatusCode

        exc = cls(data["rpc"]["message"], RPCStatusCode[data["rpc"]["status"]], b"")
    else:
        try:
            exc = cls(*args, *wrapped)
        except Exception:
            exc = cls.__new__(cls, *args)
            exc.args = tuple(args)
    for name, value in (data.get("state") or {}).items():
        with contextlib.suppress(Exception):
            exc.__dict__[name] = _unplain(value)
    for name, value in (data.get("attrs") or {}).items():
        if name in ("errno", "strerror", "filename") and getattr(exc, name, None) == _unplain(value):
            continue
        if name == "category" and isinstance(value, str):
            value = Category(value)  # a str enum is stored as its value
        try:
            setattr(exc, name, _unplain(value))
        except Exception:
            pass
    if "cause" in data:
        exc.__cause__ = rebuild(data["cause"])
    return exc
