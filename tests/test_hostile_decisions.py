"""Hostile intervention payloads are refused by field, recorded, and harm nothing.

Before, a signal whose payload did not decode into a `Decision` (a number for `stage`, a
string for the whole payload, a `by` of megabytes) was dropped by the SDK without a
trace, and an update failed with a converter error. Now each is refused with the field path: a signal as a not-accepted intervention, an
update by its validator.
"""

from __future__ import annotations

import json

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import RawValue

from tests.devserver import DevServer
from tests.helpers import final_status, start, wait_for
from tests.servers import GOOD_HEADERS, Reply, ScriptedServer
from tests.test_interventions import gated_spec


def cli_signal(server: DevServer, workflow_id: str, name: str, raw_json: str) -> None:
    server.cli("workflow", "signal", "--workflow-id", workflow_id, "--name", name, "--input", raw_json)


def raw_json(text: str) -> RawValue:
    """A payload exactly as a JSON client puts it on the wire (no Python encoding first)."""
    return RawValue(Payload(metadata={"encoding": b"json/plain"}, data=text.encode("utf-8")))


SIGNALS = [
    ('{"stage": 12, "by": "mallory"}', "stage: Input should be a valid string"),
    ('"approve it"', "payload: expected a JSON object"),
    (json.dumps({"stage": "headers", "by": "m" * 5000}), "by: String should have at most 200 characters"),
    ('{"stage": "headers", "by": "mallory\\u0000", "reason": "ok"}', "by: contains a lone surrogate or NUL"),
]


async def test_bad_signal_payloads_are_recorded_with_the_field(client: Client, worker: str, server: DevServer) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, gated_spec(target.url), worker)
        await wait_for(handle, lambda s: s.awaiting == ["headers"])
        for text, _ in SIGNALS:
            cli_signal(server, handle.id, "approve", text)
        status = await wait_for(handle, lambda s: len(s.interventions) == len(SIGNALS))
        for (text, expected), record in zip(SIGNALS, status.interventions, strict=True):
            assert not record.accepted, (text, record)
            assert expected in record.note, (text, record.note)
        assert status.stages["headers"].state == "awaiting_approval", "nothing was approved"
        # The assessment is unharmed: its state still serialises and it answers a good signal.
        cli_signal(server, handle.id, "abort", '{"by": "carol", "reason": "test over"}')
        final = await final_status(handle)
    finally:
        target.close()
    assert final.outcome == "cancelled"


@pytest.mark.parametrize(
    "payload, expected",
    [
        ('{"stage": ["headers"], "by": "mallory"}', "stage: Input should be a valid string"),
        ('{"stage": "headers", "by": "mallory", "reason": "\\u0000"}', "reason: contains a lone surrogate or NUL"),
        ("17", "payload: expected a JSON object"),
        (json.dumps({"stage": "h" * 100, "by": "mallory"}), "stage: String should have at most 64 characters"),
    ],
)
async def test_bad_update_payloads_are_refused_with_the_field(
    client: Client, worker: str, payload: str, expected: str
) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, gated_spec(target.url), worker)
        await wait_for(handle, lambda s: s.awaiting == ["headers"])
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await handle.execute_update("approve", raw_json(payload), result_type=str)
        message = getattr(info.value.cause, "message", str(info.value.cause))
        assert expected in message, message
        status = await wait_for(handle, lambda s: s.awaiting == ["headers"])
        assert status.interventions == [], "a refused update leaves no trace"
        await handle.signal("abort", raw_json('{"by": "carol"}'))
        await final_status(handle)
    finally:
        target.close()


async def test_starter_refuses_an_over_long_reason_before_sending(server: DevServer) -> None:
    from tests.test_interventions import starter

    out = await starter("approve", "no-such-assessment", "headers", "--by", "hank", "--reason", "r" * 3000)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "approve: reason: String should have at most 2000 characters" in out.stderr
