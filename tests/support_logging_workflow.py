"""A tiny workflow + activity for tests/test_logging.py (workflows must live in a module).

The activity fails its first attempt through `to_application_error` (with a credential
in the URL it was probing) and succeeds on the second, so one run exercises: activity
context on log lines, attempt numbers, redaction of log values and of the failure
message that lands in Temporal history, and replay-safe workflow logging.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import httpx

    from secflow.errors import TransientError, to_application_error
    from secflow.logging import get_logger, workflow_logger

# Never in workflow input or output: only the activities know them, as real ones would.
PROBE_PASSWORD = "hunter2-probe-secret"
PROBE_API_KEY = "k_live_probe_0123456789"


@activity.defn
async def probe_target(target: str) -> str:
    url = f"https://scanner:{PROBE_PASSWORD}@{target}:9/health"
    log = get_logger(component="probe")
    log.info("probe.attempt", url=url)
    if activity.info().attempt == 1:
        raise to_application_error(
            TransientError(f"connection reset by peer while fetching {url}"),
            next_retry_delay=timedelta(milliseconds=50),
        )
    return "reachable"


@activity.defn
async def call_api_with_bad_key(target: str) -> None:
    """Fails for good: a 401 whose message (httpx's) contains the key in the URL."""
    url = f"http://{target}:9/api/v1/cves?api_key={PROBE_API_KEY}"
    response = httpx.Response(401, request=httpx.Request("GET", url))
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as err:
        # Raised inside `except` on purpose: the implicit __context__ (the raw httpx
        # error) must not reach history either.
        raise to_application_error(err)


@workflow.defn
class LoggingWorkflow:
    @workflow.run
    async def run(self, target: str) -> str:
        log = workflow_logger(stage="discovery", target=target)
        log.info("stage.started")
        result = await workflow.execute_activity(
            probe_target,
            target,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=3),
        )
        log.info("stage.finished", result=result)
        try:
            await workflow.execute_activity(
                call_api_with_bad_key,
                target,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError as err:
            cause = err.cause
            category = cause.type if isinstance(cause, ApplicationError) else "unknown"
            log.warning("enrich.failed", category=category)
            return f"{result}; api={category}"
        return result
