"""Signed decisions against a real dev server and worker: who may answer, four-eyes, the
tctl/temporal CLI form, and the audit trail (`starter audit --json`)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.worker import Replayer

from secflow.approvals import load_signing_key, public_key_text, sign_fields
from tests.devserver import DevServer, temporal_binary
from tests.helpers import final_status, make_spec, start, status_of, wait_for
from tests.servers import GOOD_HEADERS, Reply, ScriptedServer
from worker import WORKFLOWS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def starter(*args: str, key: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The starter CLI in a thread (the in-process worker shares this event loop)."""
    env = dict(os.environ)
    env.pop("SECFLOW_SIGNING_KEY", None)
    if key is not None:
        env["SECFLOW_SIGNING_KEY"] = str(key)
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "starter", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def signal(server: DevServer, workflow_id: str, name: str, payload: dict) -> None:
    server.cli("workflow", "signal", "--workflow-id", workflow_id, "--name", name, "--input", json.dumps(payload))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """alice, bob and carol, each with a key made by `starter keygen` (carol is never listed)."""
    folder = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("alice", "bob", "carol"):
        path = folder / f"{name}.key"
        done = subprocess.run(
            [sys.executable, "-m", "starter", "keygen", name, "--out", str(path)], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        out[name] = path
    return out


def public(path: Path) -> str:
    return public_key_text(load_signing_key(path).public_key())


def approvals(keys: dict[str, Path], required: int = 1) -> dict:
    return {
        "approvers": [{"name": n, "public_key": public(keys[n])} for n in ("alice", "bob")],
        "required": required,
    }


def two_gates(url: str, **extra: object):
    return make_spec(
        [{"url": url}],
        [
            {"id": "first", "kind": "dast", "tool": "http_headers", "requires_approval": True},
            {"id": "second", "kind": "dast", "tool": "http_headers", "requires_approval": True, "depends_on": ["first"]},
        ],
        **extra,
    )


def one_gate(url: str, **extra: object):
    return make_spec([{"url": url}], [{"id": "headers", "kind": "dast", "tool": "http_headers", "requires_approval": True}], **extra)


async def assert_replays(client: Client, workflow_id: str) -> int:
    """Every run of the assessment replays on today's code (the audit path is deterministic)."""
    replayer = Replayer(workflows=WORKFLOWS, data_converter=client.data_converter)
    replayed = 0
    async for run in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        history = await client.get_workflow_handle(workflow_id, run_id=run.run_id).fetch_history()
        result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
        assert result.replay_failure is None
        replayed += 1
    return replayed


async def audit_rows(workflow_id: str) -> list[dict]:
    out = await starter("audit", workflow_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def test_keygen_writes_a_0600_pkcs8_pem_and_prints_the_spec_line(tmp_path: Path) -> None:
    path = tmp_path / "dora.key"
    made = await starter("keygen", "dora", "--out", str(path))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    key = serialization.load_pem_private_key(pem, password=None)
    assert made.stdout.strip() == public_key_text(key.public_key())  # type: ignore[arg-type]
    assert made.stdout.startswith("ed25519:")

    again = await starter("keygen", "dora", "--out", str(path))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert path.read_bytes() == pem, "an existing key is never overwritten"

    path.chmod(0o644)
    loose = await starter("sign", "approve", "x-1", "s", "--by", "dora", "--key", str(path))
    assert loose.returncode == 2 and "chmod 600" in loose.stderr


async def test_only_signed_decisions_by_listed_approvers_are_taken_and_all_are_audited(
    client: Client, worker: str, server: DevServer, keys: dict[str, Path]
) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, two_gates(target.url, approvals=approvals(keys)), worker)
        wid = handle.id
        await wait_for(handle, lambda s: s.awaiting == ["first"])

        # Unsigned, through the starter (an update): the validator refuses; the starter audits.
        unsigned = await starter("approve", wid, "first", "--by", "alice")
        assert unsigned.returncode == 1 and "unsigned" in unsigned.stderr
        # Alice's name with Bob's key, through the starter: forged.
        forged_update = await starter("approve", wid, "first", "--by", "alice", key=keys["bob"])
        assert forged_update.returncode == 1 and "forged" in forged_update.stderr

        # Signals: unsigned, forged, unlisted, expired: recorded as not accepted.
        signal(server, wid, "approve", {"stage": "first", "by": "alice"})
        bob_key = load_signing_key(keys["bob"])
        signal(server, wid, "approve", sign_fields(bob_key, workflow_id=wid, action="approve", stage="first", by="alice"))
        carol_key = load_signing_key(keys["carol"])
        signal(server, wid, "approve", sign_fields(carol_key, workflow_id=wid, action="approve", stage="first", by="carol"))
        alice_key = load_signing_key(keys["alice"])
        old = datetime.now(UTC) - timedelta(minutes=20)
        signal(server, wid, "approve", sign_fields(alice_key, workflow_id=wid, action="approve", stage="first", by="alice", now=old))
        # Signed by alice for another assessment: forged here.
        signal(server, wid, "approve", sign_fields(alice_key, workflow_id="other-1", action="approve", stage="first", by="alice"))
        # The same refusals by the update validators, from a client other than the starter
        # (nothing reaches the history; only the starter writes refusal rows).
        for payload, word in [
            (sign_fields(carol_key, workflow_id=wid, action="approve", stage="first", by="carol"), "unlisted"),
            (sign_fields(alice_key, workflow_id=wid, action="approve", stage="first", by="alice", now=old), "expired"),
            (sign_fields(alice_key, workflow_id=wid, action="reject", stage="first", by="alice"), "forged"),
        ]:
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await handle.execute_update("approve", payload, result_type=str)
            assert str(getattr(err.value.cause, "message", "")).startswith(word)
        refused = await wait_for(handle, lambda s: len(s.interventions) == 5)
        notes = [i.note.split(":")[0] for i in refused.interventions]
        assert notes == ["unsigned", "forged", "unlisted", "expired", "forged"]
        assert not any(i.accepted for i in refused.interventions)
        assert refused.stages["first"].state == "awaiting_approval" and target.requests == []

        # The temporal CLI form, exactly as documented: the signed JSON from `starter sign`
        # (kept with tee, to be replayed below).
        sent = Path(os.environ["SECFLOW_DATA_DIR"]).parent / f"{wid}-approve.json"
        sign = f"{shlex.quote(sys.executable)} -m starter sign approve {wid} first --by alice --reason 'change 42'"
        shell = (
            f"{shlex.quote(temporal_binary())} workflow signal --address {server.address} --workflow-id {wid} "
            f'--name approve --input "$({sign} | tee {shlex.quote(str(sent))})"'
        )
        env = {**os.environ, "SECFLOW_SIGNING_KEY": str(keys["alice"])}
        done = await asyncio.to_thread(subprocess.run, ["bash", "-c", shell], cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        await wait_for(handle, lambda s: s.awaiting == ["second"])
        accepted = (await status_of(handle)).interventions[-1]
        assert accepted.accepted and accepted.by == "alice" and accepted.reason == "change 42"

        # The same signed approval again (captured on the wire, say): replayed.
        again = json.loads(sent.read_text())
        signal(server, wid, "approve", again)
        status = await wait_for(handle, lambda s: len(s.interventions) == 7)
        assert status.interventions[-1].note.startswith("replayed")
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update("approve", {**again, "stage": "first"}, result_type=str)
        assert str(getattr(err.value.cause, "message", "")).startswith("replayed")

        # Bob signs through the starter's own command (SECFLOW_SIGNING_KEY): accepted.
        ok = await starter("approve", wid, "second", "--by", "bob", key=keys["bob"])
        assert ok.returncode == 0, ok.stderr
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "completed"
    assert len(target.requests) == 2

    rows = await audit_rows(wid)
    by_outcome = [(r["recorded_by"], r["via"], r["accepted"], r["outcome"].split(":")[0]) for r in rows]
    assert sorted(by_outcome) == sorted(
        [
            ("starter", "update", False, "unsigned"),
            ("starter", "update", False, "forged"),
            ("workflow", "signal", False, "unsigned"),
            ("workflow", "signal", False, "forged"),
            ("workflow", "signal", False, "unlisted"),
            ("workflow", "signal", False, "expired"),
            ("workflow", "signal", False, "forged"),
            ("workflow", "signal", True, "stage first"),
            ("workflow", "signal", False, "replayed"),
            ("workflow", "update", True, "stage second"),
        ]
    )
    accepted_rows = [r for r in rows if r["accepted"]]
    assert [r["decided_by"] for r in accepted_rows] == ["alice", "bob"]
    assert all(r["signed"] and r["key_fingerprint"].startswith("sha256:") for r in accepted_rows)
    assert accepted_rows[0]["entry_id"] == accepted_rows[0]["nonce"]
    # Alice's accepted row and the forged-in-her-name rows name the same listed key.
    forged = [r for r in rows if r["outcome"].startswith("forged") and r["recorded_by"] == "workflow"]
    assert {r["key_fingerprint"] for r in forged} == {accepted_rows[0]["key_fingerprint"]}
    # The starter's own refusal names the key it signed with (bob's), not alice's.
    starter_forged = next(r for r in rows if r["recorded_by"] == "starter" and r["outcome"].startswith("forged"))
    assert starter_forged["key_fingerprint"] == accepted_rows[1]["key_fingerprint"]

    # The audit trail is the store's: it does not need Temporal (nor the workflow) to answer.
    text = await starter("audit", wid)
    assert text.returncode == 0 and text.stdout.count("REFUSED") == 8 and text.stdout.count("accepted") == 2
    assert await assert_replays(client, wid) == 1


async def test_four_eyes_gate_opens_after_two_distinct_approvers(
    client: Client, worker: str, keys: dict[str, Path]
) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, one_gate(target.url, approvals=approvals(keys, required=2)), worker)
        await wait_for(handle, lambda s: s.awaiting == ["headers"])

        first = await starter("approve", handle.id, "headers", "--by", "alice", key=keys["alice"])
        assert first.returncode == 0, first.stderr
        assert "1 of 2 approvals (alice)" in first.stdout
        shown = await starter("status", handle.id)
        assert "1 of 2 approvals (alice)" in shown.stdout
        meta = await handle.query("__temporal_workflow_metadata")
        details = meta.current_details if hasattr(meta, "current_details") else meta["currentDetails"]
        assert "(1 of 2 approvals)" in details and "signed by a listed approver (alice, bob)" in details
        assert f"sign approve {handle.id} headers --by YOUR_NAME" in details
        status = await status_of(handle)
        assert status.stages["headers"].state == "awaiting_approval" and target.requests == []

        twice = await starter("approve", handle.id, "headers", "--by", "alice", key=keys["alice"])
        assert twice.returncode == 1 and "already approved" in twice.stderr

        second = await starter("approve", handle.id, "headers", "--by", "bob", key=keys["bob"])
        assert second.returncode == 0, second.stderr
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "completed"
    assert status.stages["headers"].approvals == ["alice", "bob"]
    assert len(target.requests) == 1
    rows = await audit_rows(handle.id)
    assert [(r["decided_by"], r["accepted"]) for r in rows] == [("alice", True), ("alice", False), ("bob", True)]
    assert await assert_replays(client, handle.id) == 1


async def test_without_approvals_decisions_stay_unsigned_and_are_still_audited(
    client: Client, worker: str, server: DevServer
) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, one_gate(target.url), worker)
        await wait_for(handle, lambda s: s.awaiting == ["headers"])
        signal(server, handle.id, "approve", {"stage": "headers", "by": "erin", "reason": "as today"})
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "completed"
    assert [(i.by, i.accepted) for i in status.interventions] == [("erin", True)]
    rows = await audit_rows(handle.id)
    assert [(r["decided_by"], r["accepted"], r["signed"], r["key_fingerprint"]) for r in rows] == [("erin", True, False, "")]

    everything = await starter("audit", "--json")
    assert handle.id in {r["workflow_id"] for r in json.loads(everything.stdout)}


async def test_used_nonces_survive_continue_as_new(client: Client, worker: str, server: DevServer, keys: dict[str, Path]) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    alice = load_signing_key(keys["alice"])

    async def runs(wid: str) -> int:
        return len([w async for w in client.list_workflows(f"WorkflowId = '{wid}'")])

    try:
        # A budget the first run passes only once its first gate was answered and its stage
        # ran: ~20 events reach the first gate, ~55 the second (measured: 24..50 all work).
        handle = await start(client, two_gates(target.url, approvals=approvals(keys)), worker, event_budget=36)
        wid = handle.id
        await wait_for(handle, lambda s: s.awaiting == ["first"])
        assert await runs(wid) == 1
        first = sign_fields(alice, workflow_id=wid, action="approve", stage="first", by="alice")
        signal(server, wid, "approve", first)
        await wait_for(handle, lambda s: s.awaiting == ["second"])
        for _ in range(100):
            if await runs(wid) >= 2:
                break
            await asyncio.sleep(0.2)
        assert await runs(wid) == 2, "the run waiting at the second gate is a new one"

        signal(server, wid, "approve", first)  # the first approval, replayed to the new run
        status = await wait_for(handle, lambda s: len(s.interventions) == 2)
        assert status.interventions[-1].note.startswith("replayed"), status.interventions[-1].note
        await starter("approve", wid, "second", "--by", "alice", key=keys["alice"])
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "completed"
    rows = await audit_rows(wid)
    assert [(r["accepted"], r["outcome"].split(":")[0]) for r in rows] == [
        (True, "stage first"),
        (False, "replayed"),
        (True, "stage second"),
    ]
    assert await assert_replays(client, wid) == 2
