"""An exception the starter did not expect: one line for the person, the traceback on file.

A Python traceback on the terminal tells a user nothing they can act on and may carry
input they typed. So `main` turns any unexpected exception into `error: unexpected
<Type>: <message> (details in <log>)` and appends the traceback, redacted like every log
line (docs/architecture.md), as a JSON line to `starter.log` in the data directory, or
to `~/.cache/secflow/starter.log` when the data directory is itself the problem. The log
is created 0600 and never written through a symlink.
"""

from __future__ import annotations

import json
import os
import traceback
from datetime import UTC, datetime
from pathlib import Path

LOG_NAME = "starter.log"


def log_path() -> Path:
    # The settings may be what failed to load, so read the data dir the way they do.
    return Path(os.environ.get("SECFLOW_DATA_DIR", ".secflow")).resolve() / LOG_NAME


def _candidates() -> list[Path]:
    return [log_path(), Path.home() / ".cache" / "secflow" / LOG_NAME]


def record_unexpected(exc: BaseException, command: str | None) -> str:
    """Log `exc` with its traceback; return the one line to print."""
    from secflow.redaction import redact

    message = redact(" ".join(str(exc).split())) or "(no message)"
    if len(message) > 300:
        message = message[:297] + "..."
    entry = {
        "timestamp": datetime.now(UTC).isoformat(),
        "level": "error",
        "event": "starter_unexpected_exception",
        "command": command,
        "exception_type": type(exc).__name__,
        **_classified(exc),
        "traceback": redact("".join(traceback.format_exception(exc))),
    }
    return f"unexpected {type(exc).__name__}: {message} ({_append(json.dumps(entry) + chr(10))})"


def _append(line: str) -> str:
    """Append to the first log that can be written; say where (or why nowhere)."""
    problems = []
    for path in _candidates():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace") as fh:
                fh.write(line)
            return f"details in {path}"
        except OSError as err:
            problems.append(f"{path}: {err.strerror or err}")
    # Nowhere to keep the traceback: say so rather than print it.
    return "the traceback could not be written: " + "; ".join(problems)


def _classified(exc: BaseException) -> dict[str, str]:
    """The taxonomy's verdict (secflow/errors.py), for the log entry."""
    from secflow.errors import classify

    try:
        verdict = classify(exc)
    except Exception as err:  # the classifier's own bug must not hide the exception being logged
        return {"category": "internal", "reason": f"classification failed: {type(err).__name__}"}
    return {"category": verdict.category.value, "reason": verdict.reason}
