"""Human durations in specs: `500ms`, `10s`, `5m`, `1h30m`, `2d`, or a bare number of seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
# The longest duration anything in SecFlow waits for (a stage, a gate, a lock): a year.
# Far beyond it lies timedelta's own limit, which fails with an OverflowError.
MAX_DURATION = timedelta(days=365)


def parse_duration(value: Any) -> timedelta:
    """Parse a spec duration; raise ValueError saying what is accepted."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m or 1h30m, got a boolean")
    elif isinstance(value, (int, float)):
        seconds = float(value) if abs(value) < 10**300 or isinstance(value, float) else math.inf
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(f"unparsable duration {value!r}: use e.g. 500ms, 30s, 10m, 1h30m, 2d")
    else:
        raise ValueError(f"expected a duration such as 30s or 10m, got {type(value).__name__}")
    if math.isnan(seconds):
        raise ValueError(f"duration {value!r} is not a number")
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative")
    if seconds > MAX_DURATION.total_seconds():  # infinity included
        raise ValueError(f"duration {value!r} is too long: at most {MAX_DURATION.days}d")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
