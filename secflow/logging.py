"""Structured logging: JSON lines, Temporal context on every event, secrets redacted last.

One pipeline for everything a worker prints. structlog events and stdlib records
(temporalio's own loggers, httpx, ...) go through the same chain of small processors and
come out as one JSON object per line:

    merge contextvars -> logger name -> level -> UTC timestamp -> Temporal context
    -> stack/exception rendering -> redact (last, rule 7 of docs/architecture.md) -> JSON

Stdlib records of third-party libraries (httpx logs full request URLs at INFO) are also
redacted at the source by `RedactingFilter`, on their loggers and on our handler, so a
handler that is not ours never sees a token either.

Workflow code logs through `workflow_logger()`, which drops events while the workflow is
replaying history, so a replay (after a worker restart or a cache eviction) does not log
the same lines twice. Workflow modules import this module inside
``workflow.unsafe.imports_passed_through()``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from secflow.redaction import redact, redact_event

__all__ = [
    "THIRD_PARTY_LOGGERS",
    "RedactingFilter",
    "ReplaySafeLogger",
    "configure_logging",
    "drop_replayed_workflow_events",
    "get_logger",
    "install_redacting_filter",
    "reset_logging",
    "temporal_context",
    "workflow_logger",
]

LOGGER_NAME = "secflow"
_ENV_LEVEL = "SECFLOW_LOG_LEVEL"
_HANDLER_MARK = "_secflow_json_handler"


# --------------------------------------------------------------------------------------
# processors (each small, each testable on its own)
# --------------------------------------------------------------------------------------
def _in_workflow() -> bool:
    try:
        from temporalio import workflow
    except ImportError:  # pragma: no cover - temporalio is a dependency
        return False
    in_workflow = getattr(workflow, "in_workflow", None)
    if in_workflow is not None:
        return bool(in_workflow())
    try:  # older SDKs: info() raises outside a workflow
        workflow.info()
    except Exception:
        return False
    return True


def _replaying() -> bool:
    if not _in_workflow():
        return False
    from temporalio import workflow

    try:
        return bool(workflow.unsafe.is_replaying())
    except Exception:  # pragma: no cover - defensive: never break logging
        return False


def drop_replayed_workflow_events(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Drop any event logged by workflow code while it replays history (logged already)."""
    if _replaying():
        raise structlog.DropEvent
    return event_dict


def temporal_context(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Add the ids of the activity or workflow the event was logged in.

    Explicitly bound values win (``setdefault``), so a caller can still override.
    """
    try:
        from temporalio import activity, workflow
    except ImportError:  # pragma: no cover
        return event_dict
    try:
        if activity.in_activity():
            info = activity.info()
            event_dict.setdefault("workflow_id", info.workflow_id)
            event_dict.setdefault("run_id", info.workflow_run_id)
            event_dict.setdefault("workflow_type", info.workflow_type)
            event_dict.setdefault("activity_type", info.activity_type)
            event_dict.setdefault("activity_id", info.activity_id)
            event_dict.setdefault("attempt", info.attempt)
            event_dict.setdefault("task_queue", info.task_queue)
        elif _in_workflow():
            winfo = workflow.info()
            event_dict.setdefault("workflow_id", winfo.workflow_id)
            event_dict.setdefault("run_id", winfo.run_id)
            event_dict.setdefault("workflow_type", winfo.workflow_type)
            event_dict.setdefault("task_queue", winfo.task_queue)
    except Exception:  # context lookups must never break a log call
        pass
    return event_dict


# --------------------------------------------------------------------------------------
# stdlib filter: third-party records redacted at the source, whatever handler gets them
# --------------------------------------------------------------------------------------
# Loggers of libraries that put URLs or headers into their messages: httpx logs every
# request's full URL at INFO (a webhook URL is its token), httpcore its connections at
# DEBUG. A filter on a logger only sees records logged through that very logger, so the
# children are named one by one.
THIRD_PARTY_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "urllib3",
    "urllib3.connectionpool",
    "temporalio",
    "temporalio.activity",
    "temporalio.workflow",
    "temporalio.worker",
    "temporalio.client",
    "asyncio",
)


class RedactingFilter(logging.Filter):
    """Replaces a stdlib record's message (and exception text) with its redacted form.

    Rule 7 of docs/architecture.md: our JSON handler redacts last anyway; this filter makes
    the record itself clean, so any other handler (a library's, pytest's capture, a
    handler someone adds to the root logger) never formats a secret either. Records from
    structlog carry an event dict and are redacted by `redact_event`.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict) and hasattr(record, "_logger"):
            return True  # from structlog (wrap_for_formatter): `redact_event` cleans it
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg} {record.args}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install_redacting_filter(names: tuple[str, ...] = THIRD_PARTY_LOGGERS) -> None:
    """Attach the redacting filter to these loggers (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def _shared_processors() -> list[Processor]:
    """The chain both structlog events and stdlib records run through before rendering."""
    return [
        drop_replayed_workflow_events,
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        temporal_context,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------
def _resolve_level(level: str | int | None) -> int:
    raw = level if level is not None else os.environ.get(_ENV_LEVEL) or "INFO"
    if isinstance(raw, int):
        return raw
    name = str(raw).strip().upper()
    if name == "WARN":
        name = "WARNING"
    value = logging.getLevelName(name)
    if not isinstance(value, int):
        raise ValueError(f"{_ENV_LEVEL}/level: unknown log level {raw!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def configure_logging(level: str | None = None, *, stream: TextIO | None = None) -> None:
    """Send structlog and stdlib logging to `stream` (default stderr) as redacted JSON lines.

    `level` defaults to ``$SECFLOW_LOG_LEVEL`` or INFO. Idempotent: calling it again
    replaces the handler it installed before (e.g. to change level or stream).
    """
    levelno = _resolve_level(level)
    shared = _shared_processors()

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_event,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_FILTER)
    setattr(handler, _HANDLER_MARK, True)
    install_redacting_filter()

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        # Not cached: reconfiguring (tests, `--log-level`) must reach loggers created before.
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    """Undo `configure_logging` (remove our handler, restore structlog defaults). For tests."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    structlog.reset_defaults()


# --------------------------------------------------------------------------------------
# loggers
# --------------------------------------------------------------------------------------
def get_logger(**bound: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``secflow`` with `bound` fields on every event.

    (Before `configure_logging` runs it is structlog's default logger, which has the same
    methods; the annotation describes the configured case.)
    """
    return structlog.get_logger(LOGGER_NAME).bind(**bound)


_LOG_METHODS = ("debug", "info", "warning", "warn", "error", "critical", "exception", "fatal", "msg")


class ReplaySafeLogger:
    """Wraps a bound logger; every log call is a no-op while the workflow replays.

    Binding returns another ReplaySafeLogger, so ``log.bind(stage=...)`` stays safe.
    The guard is here *and* in the processor chain: this one works even before
    `configure_logging` ran, the processor covers loggers created any other way.
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def bind(self, **values: Any) -> ReplaySafeLogger:
        return ReplaySafeLogger(self._inner.bind(**values))

    def unbind(self, *keys: str) -> ReplaySafeLogger:
        return ReplaySafeLogger(self._inner.unbind(*keys))

    def try_unbind(self, *keys: str) -> ReplaySafeLogger:
        return ReplaySafeLogger(self._inner.try_unbind(*keys))

    def new(self, **values: Any) -> ReplaySafeLogger:
        return ReplaySafeLogger(self._inner.new(**values))

    def log(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _replaying():
            return None
        return self._inner.log(level, event, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in _LOG_METHODS:
            return attr

        def guarded(*args: Any, **kw: Any) -> Any:
            if _replaying():
                return None
            return attr(*args, **kw)

        return guarded


def workflow_logger(**bound: Any) -> ReplaySafeLogger:
    """A logger for workflow code: drops events during replay; binds e.g. stage/target.

    Temporal context (workflow_id, run_id, workflow_type) is added by the processor
    chain; pass only what the workflow knows and the ids do not say.
    """
    fields: Mapping[str, Any] = {k: v for k, v in bound.items() if v is not None}
    return ReplaySafeLogger(structlog.get_logger(f"{LOGGER_NAME}.workflow").bind(**fields))
