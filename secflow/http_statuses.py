"""Which HTTP statuses are worth another try: one table for the error classifier
(`secflow.errors`) and the transport's quick retries (`secflow.http.retry`).

Two questions, one row per status that is not answered by its class:

* ``transient``: may a later attempt (the activity's Temporal retry) get another answer?
  The classifier's verdict: transient, or permanent (or validation, for 400/413/422).
* ``resend``: does the transport send the same request again at once, within its deadline?

By class: a 4xx is neither (the same request gets the same answer), a 5xx is both; a
status of 600 or more is resent but not classified (no such status is standard).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STATUS_RULES", "StatusRule", "is_resent_status", "is_transient_status", "status_rule"]


@dataclass(frozen=True)
class StatusRule:
    transient: bool  # a later attempt may succeed (classifier: TRANSIENT)
    resend: bool  # the transport retries the request at once


STATUS_RULES: dict[int, StatusRule] = {
    408: StatusRule(transient=True, resend=True),  # Request Timeout
    # Conflict ("resource is being modified"): worth the activity's later retry, not an
    # immediate resend of the same request.
    409: StatusRule(transient=True, resend=False),
    425: StatusRule(transient=True, resend=True),  # Too Early
    429: StatusRule(transient=True, resend=True),  # Too Many Requests
    # Not Implemented / HTTP Version Not Supported will answer the same way next time.
    501: StatusRule(transient=False, resend=False),
    505: StatusRule(transient=False, resend=False),
    # Network Authentication Required: a captive proxy wants credentials, which no retry
    # of the activity brings; the transport still resends it like any other 5xx.
    511: StatusRule(transient=False, resend=True),
}

_CLIENT_ERROR = StatusRule(transient=False, resend=False)
_SERVER_ERROR = StatusRule(transient=True, resend=True)
_BEYOND = StatusRule(transient=False, resend=True)


def status_rule(status: int) -> StatusRule:
    """The row for `status`, or the rule of its class."""
    rule = STATUS_RULES.get(status)
    if rule is not None:
        return rule
    if status >= 600:
        return _BEYOND
    if status >= 500:
        return _SERVER_ERROR
    return _CLIENT_ERROR  # 4xx, and anything below (never an error to retry)


def is_transient_status(status: int) -> bool:
    """Whether a later attempt may get another answer (the classifier's TRANSIENT)."""
    return status_rule(status).transient


def is_resent_status(status: int) -> bool:
    """Whether the transport sends the request again at once."""
    return status_rule(status).resend
