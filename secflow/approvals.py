"""Signed decisions: who may answer an assessment, and how an answer proves who sent it.

A spec's `approvals:` section names the approvers and their Ed25519 public keys. Then
every decision (approve, reject, retry_stage, skip_stage, abort, pause, resume) carries
`issued_at`, `nonce` and `signature`: an Ed25519 signature, by the key of the approver
named in `by`, over `canonical_message()` (workflow id, action, stage, by, reason,
issue time, nonce). `decision_problem()` is the one check, a pure function: the workflow
calls it in its signal handlers and update validators (Ed25519 verification is
deterministic, so it is safe in workflow code), the tests call it directly.

Key files: `write_key_pair()` makes a PKCS#8 PEM private key (mode 0600), `load_signing_key()`
reads one back and refuses a file others may read. docs/approvals.md has the whole story.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The decisions a signature may name: the workflow's signal and update names.
ACTIONS = ("approve", "reject", "retry_stage", "skip_stage", "abort", "pause", "resume")
# A signed decision older than this is refused as expired ...
MAX_AGE = timedelta(minutes=10)
# ... and one issued further than this in the future (the signer's clock runs ahead).
CLOCK_SKEW = timedelta(minutes=1)
# Nonces remembered by a workflow at once. A nonce is forgotten once its decision is
# older than MAX_AGE (a replay of it is refused as expired then), so this bounds only a
# burst of decisions within ten minutes.
MAX_NONCES = 2_000

PUBLIC_KEY_PREFIX = "ed25519:"
SIGNING_KEY_ENV = "SECFLOW_SIGNING_KEY"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
# Domain separation: a signature over a SecFlow decision is never valid for anything else.
_CONTEXT = b"secflow-decision-v1\n"


def _raise_invalid_signature_once() -> None:
    """cryptography's Rust core imports its InvalidSignature type the first time it raises
    it. Inside Temporal's workflow sandbox that import fails and the process aborts (a Rust
    panic), so the first forged decision would kill the worker. Raise it once here, at
    import (outside the sandbox: workflows import this module passed through)."""
    try:
        Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key().verify(bytes(64), _CONTEXT)
    except InvalidSignature:
        return


_raise_invalid_signature_once()


class SigningError(Exception):
    """A key file or a signing request that cannot be used; the message names the cause."""


# --- the spec's `approvals:` section ----------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Approver(_Strict):
    name: str = Field(pattern=_NAME)
    public_key: str

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, value: str) -> str:
        public_key_bytes(value)  # raises ValueError with the reason
        return value

    @property
    def fingerprint(self) -> str:
        return fingerprint(public_key_bytes(self.public_key))


class ApprovalPolicy(_Strict):
    """Who may answer, and how many distinct approvers open a gate (2 = four-eyes)."""

    approvers: list[Approver] = Field(min_length=1)
    required: int = Field(1, ge=1, le=10)

    @model_validator(mode="after")
    def _consistent(self) -> ApprovalPolicy:
        names = [a.name for a in self.approvers]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"approver name(s) listed twice: {', '.join(twice)}")
        keys = [a.public_key for a in self.approvers]
        if len(set(keys)) != len(keys):
            raise ValueError("two approvers share one public key; each approver needs a key of their own")
        if self.required > len(self.approvers):
            raise ValueError(f"required is {self.required} but only {len(self.approvers)} approver(s) are listed")
        return self

    def approver(self, name: str) -> Approver | None:
        return next((a for a in self.approvers if a.name == name), None)


# --- keys ----------------------------------------------------------------------------------


def public_key_bytes(text: str) -> bytes:
    """`ed25519:<base64 of the raw 32-byte key>` -> the 32 bytes; ValueError says what is wrong."""
    if not isinstance(text, str) or not text.startswith(PUBLIC_KEY_PREFIX):
        raise ValueError(
            f"a public key is written '{PUBLIC_KEY_PREFIX}<base64 of the raw 32-byte key>' (python -m starter keygen NAME prints it)"
        )
    try:
        raw = base64.b64decode(text[len(PUBLIC_KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the public key is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return raw


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def fingerprint(raw_public_key: bytes) -> str:
    """A short, stable name for a key in the audit trail: sha256 of the raw key, 32 hex digits."""
    return "sha256:" + hashlib.sha256(raw_public_key).hexdigest()[:32]


def write_key_pair(path: Path) -> str:
    """Create a new private key at `path` (PKCS#8 PEM, mode 0600, never overwriting); return
    the `ed25519:...` public key line for the spec."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise SigningError(f"{path} already exists; refusing to overwrite a key (choose another --out)") from None
    except OSError as exc:
        raise SigningError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask said
        os.write(fd, pem)
    finally:
        os.close(fd)
    return public_key_text(key.public_key())


def load_signing_key(path: str | Path, *, source: str = SIGNING_KEY_ENV) -> Ed25519PrivateKey:
    """Read a private key file; refuse one that is missing, readable by others, or not Ed25519."""
    p = Path(path)
    try:
        info = p.stat()
        data = p.read_bytes()
    except OSError as exc:
        raise SigningError(f"{source}={path}: cannot read the key file: {exc.strerror or exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningError(
            f"{source}={path}: the key file is mode {stat.S_IMODE(info.st_mode):04o}; others may read it (chmod 600 {path})"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{source}={path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{source}={path}: not an Ed25519 key (python -m starter keygen NAME makes one)")
    return key


# --- the signed message --------------------------------------------------------------------


def canonical_message(
    *, workflow_id: str, action: str, stage: str | None, by: str, reason: str, issued_at: str, nonce: str
) -> bytes:
    """The bytes a decision's signature covers: sorted-key compact JSON after a context line."""
    body = {
        "action": action,
        "by": by,
        "issued_at": issued_at,
        "nonce": nonce,
        "reason": reason,
        "stage": stage or "",
        "workflow_id": workflow_id,
    }
    return _CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_fields(
    key: Ed25519PrivateKey,
    *,
    workflow_id: str,
    action: str,
    stage: str | None,
    by: str,
    reason: str = "",
    now: datetime | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    """The decision payload, signed: `{"stage", "by", "reason", "issued_at", "nonce", "signature"}`."""
    if action not in ACTIONS:
        raise SigningError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    issued = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    nonce = nonce or secrets.token_hex(16)
    message = canonical_message(
        workflow_id=workflow_id, action=action, stage=stage, by=by, reason=reason, issued_at=issued, nonce=nonce
    )
    payload: dict[str, Any] = {"stage": stage, "by": by, "reason": reason} if stage else {"by": by, "reason": reason}
    payload.update(issued_at=issued, nonce=nonce, signature=base64.b64encode(key.sign(message)).decode("ascii"))
    return payload


# --- checking a decision -------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What `decision_problem` found: the problem (None = accepted) and the key involved."""

    problem: str | None
    fingerprint: str = ""  # of the listed key the signature was checked against
    signed: bool = False


def parse_issued_at(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if value.tzinfo is None:
        return None
    return value.astimezone(UTC)


def decision_problem(
    policy: ApprovalPolicy,
    *,
    workflow_id: str,
    action: str,
    stage: str | None,
    by: str,
    reason: str,
    issued_at: str | None,
    nonce: str | None,
    signature: str | None,
    now: datetime,
    used_nonces: Mapping[str, Any],
) -> Verdict:
    """Why a decision is not a valid signed decision by a listed approver, or Verdict(None).

    Pure and deterministic (`now` is the workflow's time): unsigned, unlisted, forged,
    expired, from the future, replayed, in that order."""
    names = ", ".join(a.name for a in policy.approvers)
    if not (issued_at and nonce and signature):
        missing = [f for f, v in (("issued_at", issued_at), ("nonce", nonce), ("signature", signature)) if not v]
        return Verdict(
            f"unsigned: this assessment takes only decisions signed by a listed approver ({names}); missing "
            f"{', '.join(missing)} (set {SIGNING_KEY_ENV}, or use `python -m starter sign`)"
        )
    approver = policy.approver(by)
    if approver is None:
        return Verdict(f"unlisted: {by!r} is not a listed approver (approvers: {names})", signed=True)
    key = public_key_bytes(approver.public_key)
    print_ = fingerprint(key)
    if not _NONCE.match(nonce):
        return Verdict("malformed: nonce must be 16 to 64 letters, digits, '-' or '_'", print_, True)
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return Verdict("malformed: signature is not base64", print_, True)
    message = canonical_message(
        workflow_id=workflow_id, action=action, stage=stage, by=by, reason=reason, issued_at=issued_at, nonce=nonce
    )
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(raw_signature, message)
    except InvalidSignature:
        return Verdict(
            f"forged: the signature does not verify with {by}'s public key ({print_}); it was made with another key, "
            "or for another assessment, action, stage or reason",
            print_,
            True,
        )
    issued = parse_issued_at(issued_at)
    if issued is None:
        return Verdict("malformed: issued_at is not an ISO-8601 time with a zone", print_, True)
    if issued < now - MAX_AGE:
        return Verdict(f"expired: issued at {issued_at}, more than {_minutes(MAX_AGE)} ago; sign it again", print_, True)
    if issued > now + CLOCK_SKEW:
        return Verdict(
            f"from the future: issued at {issued_at}, more than {_minutes(CLOCK_SKEW)} ahead of the workflow's clock",
            print_,
            True,
        )
    if nonce in used_nonces:
        return Verdict(f"replayed: nonce {nonce} was already used for this assessment", print_, True)
    if len(used_nonces) >= MAX_NONCES:
        return Verdict(f"refused: more than {MAX_NONCES} signed decisions within {_minutes(MAX_AGE)}", print_, True)
    return Verdict(None, print_, True)


def prune_nonces(used: dict[str, datetime], now: datetime) -> None:
    """Forget nonces whose decisions are past MAX_AGE (a replay of them is expired anyway)."""
    for nonce, issued in list(used.items()):
        if issued < now - MAX_AGE - CLOCK_SKEW:
            del used[nonce]


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


# --- the audit trail -------------------------------------------------------------------------


class DecisionRecord(BaseModel):
    """One row of the `decisions_audit` table: a decision, accepted or not, and who sent it.

    Keyed by (workflow_id, entry_id): the entry id is the decision's nonce when the
    workflow accepted it, and otherwise an id its recorder made (`w-...` by the workflow,
    `c-...` by the starter), so writing the same record twice is one row."""

    workflow_id: str
    entry_id: str
    run_id: str = ""
    recorded_by: str  # "workflow" | "starter"
    via: str  # "signal" | "update"
    action: str
    stage: str = ""
    decided_by: str = ""
    reason: str = ""  # the decision's own reason text
    issued_at: str = ""  # as signed
    nonce: str = ""
    key_fingerprint: str = ""
    signed: bool = False
    accepted: bool
    outcome: str = ""  # why it was refused, or what it did
    decided_at: datetime  # the workflow's time (or the starter's, for its own records)


class DecisionRecorded(BaseModel):
    """The audit activity's answer: False when the row was already there (a retry)."""

    created: bool
