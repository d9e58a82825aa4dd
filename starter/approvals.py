"""python -m starter keygen|sign|audit: signed decisions and their audit trail.

    keygen NAME [--out FILE]          a new Ed25519 key pair: FILE (default ./NAME.key, PKCS#8
                                      PEM, mode 0600) and, on stdout, the public key line
                                      for the spec's `approvals.approvers`
    sign ACTION ID [STAGE] --by NAME  a signed decision as one JSON object, for
                                      `temporal workflow signal --name ACTION --input` and tctl
                                      (key: --key FILE or SECFLOW_SIGNING_KEY)
    audit [ID] [--json]               the decisions audit trail (every decision, accepted or not)

The intervention commands (approve, reject, retry, skip, abort, pause, resume) sign with
the key named by SECFLOW_SIGNING_KEY when it is set (`signed_decision`), and write an
audit row for a refusal they see (`record_refusal`): a refused update never reaches the
workflow's history. docs/approvals.md has the whole story.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secflow.approvals import (
    ACTIONS,
    SIGNING_KEY_ENV,
    DecisionRecord,
    SigningError,
    fingerprint,
    load_signing_key,
    public_key_bytes,
    public_key_text,
    sign_fields,
    write_key_pair,
)
from secflow.models import Decision
from secflow.redaction import redact
from secflow.settings import Settings
from secflow.store import open_store
from starter.cli import _ID, EXIT_BAD_INPUT, EXIT_OK, CliError

# The starter's command names for two actions (`retry`, `skip`) -> the signal/update name.
_ALIASES = {"retry": "retry_stage", "skip": "skip_stage"}
_NEEDS_STAGE = {"approve", "reject", "retry_stage", "skip_stage"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def add_parser(sub: Any) -> None:
    if "keygen" in sub.choices:  # one module, three commands: COMMAND_MODULES names it thrice
        return
    p = sub.add_parser("keygen", help="make an Ed25519 key pair for signed decisions")
    p.add_argument("name", help="the approver's name, as the spec will list it")
    p.add_argument("--out", metavar="FILE", help="private key file to create (default: ./NAME.key; never overwritten)")

    p = sub.add_parser("sign", help="print a signed decision (JSON) for the temporal CLI or tctl")
    p.add_argument("action", choices=[*ACTIONS, *_ALIASES], help="the signal name (approve, reject, retry_stage, ...)")
    p.add_argument("id", help="assessment (workflow) id")
    p.add_argument("stage", nargs="?", default=None, help="stage id (approve, reject, retry_stage, skip_stage)")
    p.add_argument("--by", required=True, help="the approver's name, as the spec lists it")
    p.add_argument("--reason", default="", help="why, for the record (covered by the signature)")
    p.add_argument("--key", metavar="FILE", help=f"private key file (default: ${SIGNING_KEY_ENV})")

    p = sub.add_parser("audit", help="the decisions audit trail: every decision, accepted or not")
    p.add_argument("id", nargs="?", default=None, help="only this assessment")
    p.add_argument("--json", action="store_true")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "keygen":
        return cmd_keygen(args)
    if args.command == "sign":
        return cmd_sign(args)
    return await cmd_audit(args)


# --- keygen and sign -------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    if not _NAME.match(args.name):
        raise CliError(f"NAME {args.name!r}: letters, digits, '.', '_', '@', '-'; at most 64", EXIT_BAD_INPUT)
    path = Path(args.out or f"{args.name}.key")
    if not path.parent.is_dir():
        raise CliError(f"--out {path}: {path.parent} is not a directory", EXIT_BAD_INPUT)
    try:
        public = write_key_pair(path)
    except SigningError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    print(public)
    print(
        f"private key written to {path} (mode 0600); sign with: export {SIGNING_KEY_ENV}={path.resolve()}\n"
        f'spec: approvals: {{approvers: [{{name: {args.name}, public_key: "{public}"}}]}}',
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_sign(args: argparse.Namespace) -> int:
    action = _ALIASES.get(args.action, args.action)
    if not _ID.match(args.id):
        raise CliError(f"ID {args.id!r} is not a valid assessment id", EXIT_BAD_INPUT)
    if action in _NEEDS_STAGE and not args.stage:
        raise CliError(f"{action} needs a STAGE", EXIT_BAD_INPUT)
    if action not in _NEEDS_STAGE and args.stage:
        raise CliError(f"{action} takes no STAGE (got {args.stage!r})", EXIT_BAD_INPUT)
    path = args.key or os.environ.get(SIGNING_KEY_ENV)
    if not path:
        raise CliError(f"no key: pass --key FILE or set {SIGNING_KEY_ENV}", EXIT_BAD_INPUT)
    key = _load_key(path, "--key" if args.key else SIGNING_KEY_ENV)
    payload = sign_fields(key, workflow_id=args.id, action=action, stage=args.stage, by=args.by, reason=args.reason)
    print(json.dumps(payload, separators=(",", ":")))
    return EXIT_OK


def _load_key(path: str, source: str) -> Ed25519PrivateKey:
    try:
        return load_signing_key(path, source=source)
    except SigningError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None


def check_signing_key() -> None:
    """Refuse an unusable $SECFLOW_SIGNING_KEY (exit 2) before anything is sent."""
    path = os.environ.get(SIGNING_KEY_ENV)
    if path:
        _load_key(path, SIGNING_KEY_ENV)


def signed_decision(workflow_id: str, action: str, stage: str | None, by: str, reason: str) -> Decision:
    """The intervention commands' payload: signed with $SECFLOW_SIGNING_KEY when it is set
    (a bad key file is exit 2, nothing sent); unsigned otherwise."""
    path = os.environ.get(SIGNING_KEY_ENV)
    if not path:
        return Decision(stage=stage, by=by, reason=reason)
    key = _load_key(path, SIGNING_KEY_ENV)
    return Decision.model_validate(sign_fields(key, workflow_id=workflow_id, action=action, stage=stage, by=by, reason=reason))


async def record_refusal(workflow_id: str, action: str, decision: Decision, refusal: str) -> None:
    """A refused update never reaches the workflow's history: the starter writes its row."""
    key_print = ""
    path = os.environ.get(SIGNING_KEY_ENV)
    if decision.signature and path:
        key_print = fingerprint(public_key_bytes(public_key_text(_load_key(path, SIGNING_KEY_ENV).public_key())))
    entry = DecisionRecord(
        workflow_id=workflow_id,
        entry_id=f"c-{decision.nonce or uuid.uuid4().hex}",
        recorded_by="starter",
        via="update",
        action=action,
        stage=decision.stage or "",
        decided_by=decision.by,
        reason=redact(decision.reason),
        issued_at=decision.issued_at or "",
        nonce=decision.nonce or "",
        key_fingerprint=key_print,
        signed=bool(decision.signature),
        accepted=False,
        outcome=redact(refusal),
        decided_at=datetime.now(UTC),
    )
    try:
        await asyncio.to_thread(open_store().audit.record, entry)
    except Exception as exc:  # the refusal stands; say the trail misses it
        print(f"warning: the refusal could not be written to the audit trail: {exc}", file=sys.stderr)


# --- audit -----------------------------------------------------------------------------------


async def cmd_audit(args: argparse.Namespace) -> int:
    if args.id is not None and not _ID.match(args.id):
        raise CliError(f"ID {args.id!r} is not a valid assessment id", EXIT_BAD_INPUT)
    rows = await asyncio.to_thread(open_store().audit.list_records, args.id)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return EXIT_OK
    if not rows:
        print("no decisions recorded" + (f" for {args.id}" if args.id else ""))
        return EXIT_OK
    for r in rows:
        verdict = "accepted" if r.accepted else "REFUSED"
        key = r.key_fingerprint or ("signed" if r.signed else "unsigned")
        stage = f" {r.stage}" if r.stage else ""
        print(
            f"{r.decided_at.isoformat(timespec='seconds')} {r.workflow_id} {r.action}{stage} by {r.decided_by or '?'} "
            f"({r.via}, {key}) {verdict}: {r.outcome}"
        )
    return EXIT_OK
