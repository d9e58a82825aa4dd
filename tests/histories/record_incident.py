"""Record the reference history of an assessment that opens incidents (incidents-v1).

    .venv/bin/python -m tests.histories.record_incident

Writes only `incident_wait_retry.json`, `incident_security_dlq.json` and
`incident_p1_ack_resolve.json`. As with record.py: run it to ADD this history,
never to re-record it after a workflow change (that change goes behind
`workflow.patched(...)`).

The runs: (1) a failure wait (`on_failure: await_approval`) opens an incident, a retry
that fails again adds an occurrence, a retry that succeeds resolves it; (2) a security
violation parks a dead letter and opens a P1 before the assessment stops and compensates;
(3) that P1 incident itself: paged to a stand-in Slack, a bad ack, an ack, a
recurrence, a resolve.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).parent


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="secflow-record-"))
    os.environ["SECFLOW_DATA_DIR"] = str(tmp / "data")
    from tests.alert_standins import SlackStandin

    slack = SlackStandin()
    routing = tmp / "alerts.yaml"
    routing.write_text(
        f"channels:\n  team-slack:\n    type: slack\n    url: {slack.webhook_url}\n"
        "routing:\n  P1:\n    tiers: [[team-slack]]\n"
    )
    os.environ["SECFLOW_ALERTS_CONFIG"] = str(routing)
    from secflow.incidents import IncidentAnswer, Recurrence
    from secflow.models import Decision
    from secflow.settings import load_settings
    from secflow.temporal_client import connect
    from worker import build_worker
    from tests.devserver import DevServer
    from tests.helpers import final_status, make_spec, start, wait_for
    from tests.histories.record import save
    from tests.servers import GOOD_HEADERS, Reply, ScriptedServer

    server = DevServer(None, tmp / "server.log")
    server.start()
    os.environ["TEMPORAL_ADDRESS"] = server.address
    queue = f"record-{uuid.uuid4().hex[:6]}"
    settings = load_settings({**os.environ, "SECFLOW_TASK_QUEUE": queue})
    client = await connect(settings)
    state = {"healthy": False}
    flaky = ScriptedServer(lambda n, path: Reply(200, GOOD_HEADERS) if state["healthy"] else Reply(500))
    outside = ScriptedServer([Reply(200, GOOD_HEADERS)])
    redirector = ScriptedServer([Reply(302, {"Location": f"http://localhost:{outside.port}/"})])
    try:
        async with build_worker(client, settings):
            # 1: a failure wait opens an incident; a retry that fails again adds an
            # occurrence; the operator fixes the target, a retry succeeds and resolves it.
            spec = make_spec(
                [{"url": flaky.url}],
                [{"id": "flaky", "kind": "dast", "tool": "http_headers", "on_failure": "await_approval",
                  "retry": {"max_attempts": 1}},
                 {"id": "report", "kind": "report", "always": True}],
            )
            handle = await start(client, spec, queue, workflow_id="history-incident-wait-retry")
            await wait_for(handle, lambda s: s.awaiting == ["flaky"])
            await handle.execute_update("retry_stage", Decision(stage="flaky", by="recorder"), result_type=str)
            await wait_for(handle, lambda s: s.awaiting == ["flaky"] and s.stages["flaky"].attempts == 2)
            state["healthy"] = True
            await handle.execute_update("retry_stage", Decision(stage="flaky", by="recorder"), result_type=str)
            status = await final_status(handle)
            assert status.outcome == "completed" and len(status.incidents) == 1, status
            await save(handle, "incident_wait_retry.json")

            # 2: a security violation: dead letter, P1 incident, stop, compensate.
            spec2 = make_spec(
                [{"url": redirector.url}],
                [{"id": "headers", "kind": "dast", "tool": "http_headers"},
                 {"id": "report", "kind": "report", "always": True}],
                scope={"allow": [redirector.url]},
            )
            handle2 = await start(client, spec2, queue, workflow_id="history-incident-security")
            status2 = await final_status(handle2)
            assert status2.outcome == "failed" and len(status2.incidents) == 1, status2
            await save(handle2, "incident_security_dlq.json")

            # 3: the incident workflow itself, with a channel: trigger, a bad ack signal
            # (recorded, not accepted), ack by update, a recurrence, resolve by signal.
            incident = client.get_workflow_handle(status2.incidents[0])
            await wait_for_incident(incident, lambda s: s.notifications != [])
            await incident.signal("ack", {"who": "recorder"})
            await incident.execute_update("ack", IncidentAnswer(by="recorder", note="looking"), result_type=str)
            await incident.signal("recur", Recurrence(message="again", run_id="r-2", occurrence_id="r-2/1"))
            await incident.signal("resolve", IncidentAnswer(by="recorder", note="scope fixed"))
            await incident.result()
            await save(incident, "incident_p1_ack_resolve.json")
    finally:
        flaky.close()
        outside.close()
        redirector.close()
        slack.close()
        server.stop()

async def wait_for_incident(handle, predicate, timeout: float = 30.0):
    from secflow.incidents import IncidentStatus

    for _ in range(int(timeout / 0.2)):
        status = await handle.query("incident", result_type=IncidentStatus)
        if predicate(status):
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"incident condition not reached: {status}")


if __name__ == "__main__":
    asyncio.run(main())
