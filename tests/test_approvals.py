"""Signed decisions without a server: the one check (`decision_problem`), the spec's
`approvals:` section, key files, the audit table on both store backends, and the nonce
ledger that continue-as-new carries."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secflow.approvals import (
    MAX_AGE,
    ApprovalPolicy,
    DecisionRecord,
    SigningError,
    canonical_message,
    decision_problem,
    load_signing_key,
    prune_nonces,
    public_key_text,
    sign_fields,
    write_key_pair,
)
from secflow.models import AssessmentCarry, AssessmentStatus, Decision, SpecSummary
from secflow.spec import LockPolicy, SpecError, validate_spec_data
from secflow.store import FindingsStore
from tests.pg import pg_server  # noqa: F401  (pytest fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ALICE = Ed25519PrivateKey.generate()
BOB = Ed25519PrivateKey.generate()
POLICY = ApprovalPolicy.model_validate(
    {
        "approvers": [
            {"name": "alice", "public_key": public_key_text(ALICE.public_key())},
            {"name": "bob", "public_key": public_key_text(BOB.public_key())},
        ]
    }
)


def check(payload: dict, *, action: str = "approve", wid: str = "wf-1", now: datetime = NOW, used: dict | None = None) -> str | None:
    d = Decision.model_validate(payload)
    return decision_problem(
        POLICY,
        workflow_id=wid,
        action=action,
        stage=d.stage,
        by=d.by,
        reason=d.reason,
        issued_at=d.issued_at,
        nonce=d.nonce,
        signature=d.signature,
        now=now,
        used_nonces=used or {},
    ).problem


def signed(key: Ed25519PrivateKey = ALICE, **kw: object) -> dict:
    args: dict = {"workflow_id": "wf-1", "action": "approve", "stage": "gate", "by": "alice", "reason": "ok", "now": NOW}
    args.update(kw)
    return sign_fields(key, **args)


def test_a_signed_decision_by_a_listed_approver_passes() -> None:
    assert check(signed()) is None
    assert check(signed(BOB, by="bob")) is None
    assert check(signed(action="abort", stage=None), action="abort") is None


@pytest.mark.parametrize(
    ("payload", "kw", "word"),
    [
        ({"stage": "gate", "by": "alice"}, {}, "unsigned"),
        (signed(BOB), {}, "forged"),  # alice's name, bob's key
        (signed(by="mallory"), {}, "unlisted"),
        (signed(), {"wid": "wf-2"}, "forged"),  # another assessment
        (signed(), {"action": "skip_stage"}, "forged"),  # another action
        ({**signed(), "stage": "other"}, {}, "forged"),  # the stage altered
        ({**signed(), "reason": "altered"}, {}, "forged"),  # the reason altered
        (signed(now=NOW - MAX_AGE - timedelta(seconds=1)), {}, "expired"),
        (signed(now=NOW + timedelta(minutes=5)), {}, "from the future"),
        ({**signed(), "signature": "***"}, {}, "malformed"),
        ({**signed(), "nonce": "short"}, {}, "malformed"),
    ],
)
def test_refusals_say_why(payload: dict, kw: dict, word: str) -> None:
    problem = check(payload, **kw)
    assert problem is not None and problem.startswith(word), problem


def test_a_used_nonce_is_replayed_until_it_expires_and_is_pruned() -> None:
    d = signed()
    used = {d["nonce"]: NOW}
    assert (check(d, used=used) or "").startswith("replayed")
    later = NOW + MAX_AGE + timedelta(minutes=2)
    prune_nonces(used, later)
    assert used == {}, "forgotten once older than MAX_AGE: a replay is refused as expired then"
    assert (check(d, now=later, used=used) or "").startswith("expired")


def test_small_skew_is_tolerated() -> None:
    assert check(signed(now=NOW + timedelta(seconds=30))) is None
    assert check(signed(now=NOW - MAX_AGE + timedelta(seconds=5))) is None


def test_canonical_message_is_stable_bytes() -> None:
    message = canonical_message(
        workflow_id="wf-1", action="approve", stage="gate", by="alice", reason="é", issued_at="2026-12-01T12:00:00Z", nonce="n" * 32
    )
    assert message == (
        b"secflow-decision-v1\n"
        b'{"action":"approve","by":"alice","issued_at":"2026-12-01T12:00:00Z","nonce":"'
        + b"n" * 32
        + b'","reason":"\\u00e9","stage":"gate","workflow_id":"wf-1"}'
    )


def test_spec_approvals_are_validated_with_field_paths() -> None:
    base = {
        "name": "t",
        "scope": {"allow": ["127.0.0.1"]},
        "targets": [{"host": "127.0.0.1"}],
        "stages": [{"id": "a", "kind": "discovery"}],
    }
    good = public_key_text(ALICE.public_key())
    spec = validate_spec_data({**base, "approvals": {"approvers": [{"name": "alice", "public_key": good}]}})
    assert spec.approvals is not None and spec.approvals.required == 1
    assert validate_spec_data(base).approvals is None
    cases = [
        ({"approvers": [{"name": "alice", "public_key": "rsa:AAAA"}]}, "approvals.approvers[0].public_key"),
        ({"approvers": [{"name": "alice", "public_key": "ed25519:" + base64.b64encode(b"x" * 31).decode()}]}, "32 bytes"),
        ({"approvers": [{"name": "alice", "public_key": good}], "required": 2}, "only 1 approver"),
        ({"approvers": [{"name": "alice", "public_key": good}, {"name": "alice", "public_key": good}]}, "listed twice"),
        ({"approvers": [{"name": "alice", "public_key": good}], "who": 1}, "approvals.who: unknown field"),
    ]
    for approvals, expected in cases:
        with pytest.raises(SpecError) as err:
            validate_spec_data({**base, "approvals": approvals})
        assert expected in str(err.value), str(err.value)


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    public = write_key_pair(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert public_key_text(load_signing_key(path).public_key()) == public
    with pytest.raises(SigningError, match="already exists"):
        write_key_pair(path)
    path.chmod(0o640)
    with pytest.raises(SigningError, match="chmod 600"):
        load_signing_key(path)
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    junk.chmod(0o600)
    with pytest.raises(SigningError, match="not an unencrypted PEM"):
        load_signing_key(junk)
    with pytest.raises(SigningError, match="cannot read"):
        load_signing_key(tmp_path / "missing.key")


def test_sign_command_refuses_bad_input_with_exit_2(tmp_path: Path) -> None:
    def run(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "SECFLOW_SIGNING_KEY"}
        if key:
            env["SECFLOW_SIGNING_KEY"] = key
        return subprocess.run([sys.executable, "-m", "starter", *args], cwd=ROOT, env=env, capture_output=True, text=True)

    nokey = run("sign", "approve", "wf-1", "gate", "--by", "alice")
    assert nokey.returncode == 2 and "SECFLOW_SIGNING_KEY" in nokey.stderr
    key = tmp_path / "a.key"
    write_key_pair(key)
    nostage = run("sign", "approve", "wf-1", "--by", "alice", key=str(key))
    assert nostage.returncode == 2 and "needs a STAGE" in nostage.stderr
    ok = run("sign", "retry", "wf-1", "gate", "--by", "alice", key=str(key))
    assert ok.returncode == 0, ok.stderr
    payload = json.loads(ok.stdout)
    assert set(payload) == {"stage", "by", "reason", "issued_at", "nonce", "signature"}
    # The alias signs the signal's name: valid as retry_stage.
    policy = ApprovalPolicy.model_validate(
        {"approvers": [{"name": "alice", "public_key": public_key_text(load_signing_key(key).public_key())}]}
    )
    d = Decision.model_validate(payload)
    assert (
        decision_problem(
            policy,
            workflow_id="wf-1",
            action="retry_stage",
            stage=d.stage,
            by=d.by,
            reason=d.reason,
            issued_at=d.issued_at,
            nonce=d.nonce,
            signature=d.signature,
            now=datetime.now(UTC),
            used_nonces={},
        ).problem
        is None
    )
    missing = run("approve", "wf-1", "gate", key=str(tmp_path / "missing.key"))
    assert missing.returncode == 2 and "SECFLOW_SIGNING_KEY" in missing.stderr, "refused before connecting"
    for command in (run("keygen", "bad name"), run("audit", "bad/id")):
        assert command.returncode == 2 and "Traceback" not in command.stderr


def test_old_decision_payloads_and_carries_still_decode() -> None:
    assert Decision.model_validate({"stage": "s", "by": "x"}).signature is None
    summary = SpecSummary(name="n", stages=[], locks=LockPolicy())
    carry = AssessmentCarry.model_validate(
        {"status": AssessmentStatus(workflow_id="w", name="n", status="running").model_dump(), "summary": summary.model_dump()}
    )
    assert carry.nonces == {} and carry.summary.approvals is None


@pytest.fixture(params=["sqlite", "postgresql"])
def own_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FindingsStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        url = request.getfixturevalue("pg_server").create_database()
    store = FindingsStore(url)
    yield store
    store.close()


def test_audit_rows_are_written_once_and_listed_oldest_first(own_store: FindingsStore) -> None:
    assert 11 in own_store.applied_migrations
    row = DecisionRecord(
        workflow_id="wf-1",
        entry_id="n" * 32,
        recorded_by="workflow",
        via="signal",
        action="approve",
        stage="gate",
        decided_by="alice",
        nonce="n" * 32,
        key_fingerprint="sha256:00",
        signed=True,
        accepted=True,
        outcome="stage gate: approve",
        decided_at=NOW,
    )
    assert own_store.audit.record(row) is True
    assert own_store.audit.record(row) is False, "a retried write is one row"
    refused = row.model_copy(update={"entry_id": "w-1", "accepted": False, "outcome": "replayed", "decided_at": NOW + timedelta(seconds=1)})
    other = row.model_copy(update={"workflow_id": "wf-2", "decided_at": NOW - timedelta(seconds=1)})
    own_store.audit.record(refused)
    own_store.audit.record(other)
    assert own_store.audit.list_records("wf-1") == [row, refused]
    assert [r.workflow_id for r in own_store.audit.list_records()] == ["wf-2", "wf-1", "wf-1"]
