"""Encrypted history (secflow/codec.py) against a real dev server and real assessments.

A random marker is planted in the spec's description, in target URLs, in what the scan
returns and in failure messages; the stored history, read raw (no codec) down to every
event's bytes, must not contain it, and the same history read through the codec must.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from secflow.codec import (
    ENCODING,
    KEY_ID_META,
    EncryptionCodec,
    KeyRing,
    KeyRingError,
    build_data_converter,
    create_keyring,
    load_keyring,
    rotate_keyring,
)
from secflow.settings import load_settings
from secflow.temporal_client import connect
from tests.devserver import DevServer
from tests.helpers import final_status, make_spec, start, status_of, wait_for
from tests.servers import Reply, ScriptedServer, closed_port
from worker import build_worker

ROOT = Path(__file__).resolve().parent.parent


def _payloads(message: object) -> list[Payload]:
    """Every Payload inside a protobuf message (memo, failures and headers included)."""
    found: list[Payload] = []

    def walk(m: object) -> None:
        if isinstance(m, Payload):
            found.append(m)
            return
        for field, value in m.ListFields():  # type: ignore[attr-defined]
            if field.message_type is None:
                continue
            if field.is_repeated and field.message_type.GetOptions().map_entry:
                if field.message_type.fields_by_name["value"].message_type is not None:
                    for v in value.values():
                        walk(v)
            elif field.is_repeated:
                for v in value:
                    walk(v)
            else:
                walk(value)

    walk(message)
    return found


async def tree_events(client: Client, root_id: str, at_least: int = 1) -> dict[str, list[HistoryEvent]]:
    """Raw events (nothing decoded) of every run under `root_id`, the assessment's shards included."""
    deadline = time.monotonic() + 20
    while True:
        runs = [wf async for wf in client.list_workflows(f"RootWorkflowId = '{root_id}'")]
        if len(runs) >= at_least or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    out = {}
    for wf in runs:
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        out[f"{wf.id}/{wf.run_id}"] = list(history.events)
    return out


def plaintext_hits(events: dict[str, list[HistoryEvent]], marker: str) -> list[str]:
    needle = marker.encode()
    return [
        f"{run} event {e.event_id} {EventType.Name(e.event_type)}"
        for run, evs in events.items()
        for e in evs
        if needle in e.SerializeToString()
    ]


@pytest.fixture
def marker() -> str:
    return f"mk{uuid.uuid4().hex[:12]}"


async def test_history_holds_no_plaintext_and_decodes_with_the_codec(
    client: Client, worker: str, marker: str, server: DevServer
) -> None:
    # No security headers: findings naming the URL; a 503 on the other path: a failure
    # whose message names the URL.
    target = ScriptedServer(lambda n, path: Reply(503, {}) if path.endswith("-down") else Reply(200, {}))
    try:
        spec = make_spec(
            [{"url": f"{target.url}{marker}/"}, {"url": f"{target.url}{marker}-down"}],
            [{"id": "headers", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 1}}],
            description=f"assessment of {marker}",
        )
        handle = await start(client, spec, worker, workflow_id=f"enc-{uuid.uuid4().hex[:8]}")
        status = await final_status(handle)
    finally:
        target.close()
    headers = status.stages["headers"]
    assert headers.counts == {"succeeded": 1, "failed": 1}, headers
    assert any(marker in f.target for f in headers.recent_failures), headers

    events = await tree_events(client, handle.id)  # every run; shards too when there are any
    # The failed required stage opened an incident (a workflow of its own, with a memo).
    assert status.incidents
    for incident_id in status.incidents:
        events.update(await tree_events(client, incident_id))
    assert any(e.workflow_execution_started_event_attributes.memo.fields for evs in events.values() for e in evs[:1])
    assert plaintext_hits(events, marker) == []
    every = [p for evs in events.values() for e in evs for p in _payloads(e)]
    encrypted = [p for p in every if p.metadata.get("encoding") == ENCODING]
    # Everything SecFlow wrote is encrypted; only Temporal's own markers may be plain.
    assert len(encrypted) >= 10
    assert {p.metadata[KEY_ID_META] for p in encrypted} == {load_keyring(load_settings().codec_keys_path).current.encode()}
    failures = [
        e.activity_task_failed_event_attributes.failure
        for evs in events.values()
        for e in evs
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]
    assert failures and all(f.message == "Encoded failure" and f.stack_trace == "" for f in failures)

    # Through the codec the same history reads in full: spec, targets, results, failures.
    codec = client.data_converter.payload_codec
    assert isinstance(codec, EncryptionCodec)
    decoded = b"".join(p.data for p in await codec.decode(encrypted))
    assert marker.encode() in decoded
    dc = client.data_converter
    messages = [str(await dc.decode_failure(f)) for f in failures]
    assert any(marker in m for m in messages), messages

    # Search attributes stay plaintext: they hold only states and stage names.
    desc = await handle.describe()
    sa = desc.typed_search_attributes
    assert sa.get(SearchAttributeKey.for_keyword("SecflowStatus")) in {"completed", "completed_with_errors", "failed"}
    assert marker not in json.dumps([str(p.value) for p in sa], default=str)


async def test_codec_off_leaves_plaintext_a_control_for_the_check_above(
    server: DevServer, task_queue: str, marker: str, tmp_path: Path
) -> None:
    """SECFLOW_CODEC=off (unsafe): the same raw check finds the marker, so it can fail."""
    settings = load_settings({**os.environ, "SECFLOW_CODEC": "off", "SECFLOW_TASK_QUEUE": task_queue})
    plain = await connect(settings)
    assert plain.data_converter.payload_codec is None
    spec = make_spec([{"url": f"http://127.0.0.1:9/{marker}"}], [{"id": "headers", "kind": "dast", "tool": "http_headers"}])
    handle = await start(plain, spec, task_queue)  # no worker: the start event is enough
    try:
        history = await handle.fetch_history()
        assert plaintext_hits({"run": list(history.events)}, marker)
    finally:
        await handle.terminate("test over")


async def test_plain_json_signal_from_the_cli_is_accepted(client: Client, worker: str, server: DevServer) -> None:
    """`temporal workflow signal --input '{...}'` (and tctl) send plain JSON: it passes the codec."""
    target = ScriptedServer([Reply(200, {})])
    try:
        spec = make_spec(
            [{"url": target.url}], [{"id": "headers", "kind": "dast", "tool": "http_headers", "requires_approval": True}]
        )
        handle = await start(client, spec, worker)
        await wait_for(handle, lambda s: "headers" in s.awaiting)
        server.cli(
            "workflow", "signal", "--workflow-id", handle.id, "--name", "approve",
            "--input", json.dumps({"stage": "headers", "by": "alice", "reason": "cli"}),
        )  # fmt: skip
        status = await final_status(handle)
    finally:
        target.close()
    assert status.stages["headers"].state == "succeeded"
    approvals = [i for i in status.interventions if i.action == "approve"]
    assert approvals and approvals[0].by == "alice" and approvals[0].accepted
    signalled = [
        e async for e in handle.fetch_history_events() if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]
    [payload] = signalled[0].workflow_execution_signaled_event_attributes.input.payloads
    assert payload.metadata["encoding"] == b"json/plain"  # it came in plain and was read as such


async def test_rotation_old_key_still_decrypts_a_running_assessment(
    server: DevServer, task_queue: str, tmp_path: Path
) -> None:
    """Started under key A; the ring gains key B (current); a worker with A+B finishes it."""
    keys = tmp_path / "keys.json"
    create_keyring(keys)
    env = {**os.environ, "SECFLOW_CODEC_KEYS_FILE": str(keys), "SECFLOW_TASK_QUEUE": task_queue}
    settings = load_settings(env)
    key_a = load_keyring(keys).current
    target = ScriptedServer([Reply(200, {})])
    try:
        spec = make_spec(
            [{"url": target.url}], [{"id": "headers", "kind": "dast", "tool": "http_headers", "requires_approval": True}]
        )
        client_a = await connect(settings)
        async with build_worker(client_a, settings):
            handle = await start(client_a, spec, task_queue)
            await wait_for(handle, lambda s: "headers" in s.awaiting)

        ring = rotate_keyring(keys)
        key_b = ring.current
        assert key_b != key_a and set(ring.keys) == {key_a, key_b}
        assert stat.S_IMODE(keys.stat().st_mode) == 0o600
        client_b = await connect(load_settings(env))
        async with build_worker(client_b, settings):
            handle_b = client_b.get_workflow_handle(handle.id)
            # The starter's path: an update (its argument and answer encrypted with key B).
            await handle_b.execute_update("approve", {"stage": "headers", "by": "bob"}, result_type=str)
            status = await final_status(handle_b)
    finally:
        target.close()
    assert status.outcome == "completed" and status.stages["headers"].state == "succeeded"
    history = await handle_b.fetch_history()
    key_ids = {
        p.metadata[KEY_ID_META].decode()
        for e in history.events
        for p in _payloads(e)
        if p.metadata.get("encoding") == ENCODING
    }
    assert key_ids == {key_a, key_b}
    [accepted] = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED]
    update_args = _payloads(accepted.workflow_execution_update_accepted_event_attributes.accepted_request.input)
    assert update_args and all(p.metadata[KEY_ID_META].decode() == key_b for p in update_args)
    # A ring without the old key cannot read the old part: the error names the key id.
    only_b = build_data_converter(KeyRing(current=key_b, keys={key_b: ring.keys[key_b]}))
    first = history.events[0].workflow_execution_started_event_attributes.input.payloads
    with pytest.raises(ValueError, match=key_a):
        await only_b.decode(first)


def test_keyring_is_created_once_0600_when_processes_race(tmp_path: Path) -> None:
    path = tmp_path / "data" / "codec-keys.json"
    code = "import sys; from pathlib import Path; from secflow.codec import create_keyring; print(create_keyring(Path(sys.argv[1])).current)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(6)
    ]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(ids) == 1 and ids == {load_keyring(path).current}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["codec-keys.json"]  # no temporary files left


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "key ring file not found"),
        ("{not json", "invalid JSON"),
        (json.dumps({"format": "secflow-codec-keys/1", "current": "a", "keys": {"a": "c2hvcnQ="}}), "32 bytes"),
        (json.dumps({"format": "secflow-codec-keys/1", "current": "b", "keys": {"a": "A" * 43 + "="}}), "current key 'b'"),
    ],
    ids=["missing", "corrupt", "short-key", "unknown-current"],
)
def test_bad_key_file_is_a_clear_error_naming_the_file(tmp_path: Path, content: str | None, reason: str) -> None:
    keys = tmp_path / "ring.json"
    if content is not None:
        keys.write_text(content)
    with pytest.raises(KeyRingError, match=reason) as err:
        load_keyring(keys)
    assert str(keys) in str(err.value)
    env = {**os.environ, "SECFLOW_CODEC_KEYS_FILE": str(keys), "TEMPORAL_ADDRESS": f"127.0.0.1:{closed_port()}"}
    for argv in ([sys.executable, "-m", "starter", "status", "some-id"], [sys.executable, "worker.py"]):
        out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (argv, out.stderr)
        assert str(keys) in out.stderr and reason in out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not keys.exists() or content is not None  # a named ring is never made up


def test_new_key_and_show_commands(tmp_path: Path) -> None:
    env = {**os.environ, "SECFLOW_DATA_DIR": str(tmp_path / "data")}
    env.pop("SECFLOW_CODEC_KEYS_FILE", None)
    first = subprocess.run([sys.executable, "-m", "secflow.codec", "new-key", "--id", "k-next"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "current key is now k-next (2 keys)" in first.stdout, first.stderr
    ring = load_keyring(tmp_path / "data" / "codec-keys.json")
    show = subprocess.run([sys.executable, "-m", "secflow.codec", "show"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert show.returncode == 0 and "mode 0600" in show.stdout and "current: k-next" in show.stdout
    assert all(kid in show.stdout for kid in ring.keys)
    assert not any(base64.b64encode(key).decode() in show.stdout for key in ring.keys.values())  # never the keys
    again = subprocess.run([sys.executable, "-m", "secflow.codec", "new-key", "--id", "k-next"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_codec_setting_is_checked() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "starter", "status", "x"], cwd=ROOT, env={**os.environ, "SECFLOW_CODEC": "maybe"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "SECFLOW_CODEC" in out.stderr and "Traceback" not in out.stderr


async def test_status_query_reads_through_the_codec(client: Client, worker: str) -> None:
    """The starter's status path (a query answered by the worker) round-trips encrypted."""
    target = ScriptedServer([Reply(200, {})])
    try:
        spec = make_spec([{"url": target.url}], [{"id": "headers", "kind": "dast", "tool": "http_headers", "requires_approval": True}])
        handle = await start(client, spec, worker)
        status = await wait_for(handle, lambda s: "headers" in s.awaiting)
        assert (await status_of(handle)).workflow_id == status.workflow_id == handle.id
        await handle.signal("abort", {"by": "tests"})
        await final_status(handle)
    finally:
        target.close()
