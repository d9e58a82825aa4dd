"""Reading a failed activity back into the taxonomy, on the workflow side.

Activities already raise `ApplicationError(type=<category>)` through `secflow.errors`;
this only unwraps what Temporal adds around it (timeouts, cancellation) so the workflow
records one category per failure and never a bare exception text.
"""

from __future__ import annotations

from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    RetryState,
    TimeoutError,
    TimeoutType,
)

from secflow.errors import Category
from secflow.models import ErrorInfo
from secflow.retries import RetryPlan

_CATEGORIES = {c.value for c in Category}


def error_from_activity(err: ActivityError, plan: RetryPlan) -> ErrorInfo:
    """The failure as one category and message, with the attempts it took under `plan`."""
    cause = err.cause
    attempts = plan.max_attempts if err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED else 0
    if isinstance(cause, ApplicationError):
        category = cause.type if cause.type in _CATEGORIES else Category.INTERNAL.value
        if cause.details and isinstance(cause.details[0], dict):
            attempts = int(cause.details[0].get("attempt", attempts) or attempts)
        return ErrorInfo(category=category, message=cause.message, attempts=attempts or 1)
    if isinstance(cause, TimeoutError):
        kinds: dict[TimeoutType | None, str] = {
            TimeoutType.HEARTBEAT: "no heartbeat (worker lost or hung)",
            TimeoutType.START_TO_CLOSE: "attempt exceeded the stage timeout",
            TimeoutType.SCHEDULE_TO_START: "no worker picked the task up",
            TimeoutType.SCHEDULE_TO_CLOSE: "stage deadline exceeded",
        }
        kind = kinds.get(cause.type, "timed out")
        last = cause.cause
        detail = f"; last error: {last.message}" if isinstance(last, ApplicationError) else ""
        return ErrorInfo(category=Category.TRANSIENT.value, message=f"{kind}{detail}", attempts=attempts or 1)
    if isinstance(cause, CancelledError):
        return ErrorInfo(category=Category.USER_ABORT.value, message="cancelled", attempts=attempts or 1)
    message = cause.message if cause is not None and hasattr(cause, "message") else str(err)
    return ErrorInfo(category=Category.INTERNAL.value, message=message, attempts=attempts or 1)
