"""The starter's last line of defence: an unexpected exception becomes one line, not a traceback.

Bad input has its own messages and exit status 2 (nothing started); what reaches here is a
SecFlow bug or an environment nobody anticipated. The user gets one line naming the
exception and where its traceback was written; the traceback goes to
`$SECFLOW_DATA_DIR/starter-errors.log` (or `~/.cache/secflow/` when the data directory is
itself the problem), created 0600 and never through a symlink.
"""

from __future__ import annotations

import os
import traceback
from datetime import UTC, datetime
from pathlib import Path

from secflow.redaction import redact

LOG_NAME = "starter-errors.log"


def _candidates() -> list[Path]:
    data = Path(os.environ.get("SECFLOW_DATA_DIR", ".secflow"))
    return [data / LOG_NAME, Path.home() / ".cache" / "secflow" / LOG_NAME]


def record_crash(exc: BaseException, argv: list[str]) -> str:
    """Append the traceback (redacted) to the first writable log; return its path or a reason."""
    text = "".join(traceback.format_exception(exc))
    entry = f"--- {datetime.now(UTC).isoformat()} starter {' '.join(argv)}\n{redact(text)}\n"
    last_error = ""
    for path in _candidates():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(entry)
            return str(path)
        except OSError as err:
            last_error = f"{path}: {err.strerror or err}"
    return f"not saved ({last_error})"


def one_line(exc: BaseException, where: str) -> str:
    message = redact(str(exc)).splitlines()[0] if str(exc) else ""
    return f"unexpected {type(exc).__name__}{': ' + message[:300] if message else ''} (a SecFlow bug or an unusual environment; traceback: {where})"
