"""Encrypted history: an AES-256-GCM payload codec with a key ring (docs/codec.md).

Every payload a SecFlow client or worker writes to Temporal (workflow and activity inputs
and results, signals, updates, queries, heartbeat details, memo, and failure messages and
stacks, which the failure converter moves into an encoded attribute) is encrypted before it
leaves the process. Temporal's history, the Web UI and the CLI then see only ciphertext
unless they are pointed at the codec server (`python -m starter codec-server`).

The key ring is a JSON file::

    {"format": "secflow-codec-keys/1", "current": "<key id>",
     "keys": {"<key id>": "<base64 of 32 random bytes>", ...}}

The current key encrypts; every key in the ring decrypts (each encrypted payload names its
key id in its metadata), so a key is rotated by adding a new current key and keeping the old
ones until no history that needs them is retained: `python -m secflow.codec new-key`.

Decoding passes a payload that is not encrypted through unchanged: a plain JSON signal sent
with `temporal workflow signal --input '{...}'` or tctl, and histories recorded before
encryption, keep working.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import secrets
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

from secflow.settings import Settings, ensure_private_dir

FORMAT = "secflow-codec-keys/1"
# Payload metadata of an encrypted payload. The names follow Temporal's encryption sample,
# so its tools and people who know it recognise them.
ENCODING = b"binary/encrypted"
KEY_ID_META = "encryption-key-id"
CIPHER_META = "encryption-cipher"
CIPHER = b"AES-256-GCM"
_NONCE_BYTES = 12
_KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyRingError(ValueError):
    """The key ring cannot be used; the message names the file and the reason."""


class CodecError(ValueError):
    """A payload cannot be decrypted (unknown key id, wrong key, tampered data)."""


@dataclass(frozen=True)
class KeyRing:
    current: str
    keys: Mapping[str, bytes] = field(repr=False)  # never in a log line or a traceback
    source: Path | None = None

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise KeyRingError(f"{self._where()}: current key {self.current!r} is not among its keys")

    def _where(self) -> str:
        return str(self.source) if self.source else "key ring"

    def key(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise CodecError(
                f"payload was encrypted with key {key_id!r}, which {self._where()} does not hold "
                "(was a key removed, or does this process read another key ring?)"
            ) from None

    @staticmethod
    def generate(key_id: str | None = None) -> KeyRing:
        """A new ring with one fresh key (in memory; `create_keyring` writes one)."""
        kid = key_id or new_key_id()
        return KeyRing(current=kid, keys={kid: AESGCM.generate_key(bit_length=256)})

    def with_new_key(self, key_id: str | None = None) -> KeyRing:
        """This ring plus a fresh key that becomes current; the old keys still decrypt."""
        kid = key_id or new_key_id()
        if kid in self.keys:
            raise KeyRingError(f"{self._where()}: key id {kid!r} already exists")
        return KeyRing(current=kid, keys={**self.keys, kid: AESGCM.generate_key(bit_length=256)}, source=self.source)

    def to_json(self) -> str:
        keys = {kid: base64.b64encode(key).decode() for kid, key in self.keys.items()}
        return json.dumps({"format": FORMAT, "current": self.current, "keys": keys}, indent=1) + "\n"

    @staticmethod
    def from_json(text: str, source: Path | None = None) -> KeyRing:
        where = str(source) if source else "key ring"
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise KeyRingError(f"{where}: not a SecFlow key ring (invalid JSON: {exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise KeyRingError(f'{where}: not a SecFlow key ring (expected "format": "{FORMAT}")')
        raw_keys, current = data.get("keys"), data.get("current")
        if not isinstance(raw_keys, dict) or not raw_keys:
            raise KeyRingError(f'{where}: "keys" must map key ids to base64 keys and hold at least one')
        if not isinstance(current, str):
            raise KeyRingError(f'{where}: "current" must name the key id that encrypts')
        keys: dict[str, bytes] = {}
        for kid, value in raw_keys.items():
            if not _KEY_ID.match(kid):
                raise KeyRingError(f"{where}: key id {kid!r} is not valid (letters, digits, '.', '_', '-'; at most 64)")
            try:
                key = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
            except ValueError:
                key = b""
            if len(key) != _KEY_BYTES:
                raise KeyRingError(f"{where}: key {kid!r} must be the base64 of {_KEY_BYTES} bytes (AES-256)")
            keys[kid] = key
        return KeyRing(current=current, keys=keys, source=source)


def new_key_id() -> str:
    return f"k{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"


def load_keyring(path: Path) -> KeyRing:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyRingError(f"{path}: key ring file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyRingError(f"{path}: cannot read the key ring: {exc}") from None
    return KeyRing.from_json(text, source=path)


def _write_new(path: Path, ring: KeyRing) -> Path:
    """Write `ring` to a fresh 0600 file beside `path`; return the temporary name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(ring.to_json())
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def create_keyring(path: Path) -> KeyRing:
    """The ring at `path`, created (mode 0600) with one fresh key if there is none.

    Two processes starting at once end with one ring: each writes a complete file under a
    temporary name and hard-links it to `path`, which fails for all but the first; the
    others read the winner's.
    """
    ensure_private_dir(path.parent)
    if not path.exists():
        tmp = _write_new(path, KeyRing.generate())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: its ring is the ring
        finally:
            tmp.unlink(missing_ok=True)
    return load_keyring(path)


def rotate_keyring(path: Path, key_id: str | None = None) -> KeyRing:
    """Add a fresh current key to the ring at `path` (atomically replaced, mode 0600)."""
    ring = load_keyring(path).with_new_key(key_id)
    tmp = _write_new(path, ring)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ring


def keyring_for(settings: Settings) -> KeyRing | None:
    """The key ring this process encrypts with, or None when SECFLOW_CODEC=off.

    SECFLOW_CODEC_KEYS_FILE must name an existing ring (a missing file is an error: making
    up a key there would encrypt with a key no other process has); without it the ring in
    the data directory is created on first use.
    """
    if not settings.codec_enabled:
        return None
    if settings.codec_keys_file is None:
        return create_keyring(settings.codec_keys_path)
    ring = load_keyring(settings.codec_keys_file)
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(settings.codec_keys_file.stat().st_mode)
        if mode & 0o077:
            # Imported here: structlog (and the rich it pulls in) would cost every short
            # starter command ~60 ms, and only this rare warning needs it.
            from secflow.logging import get_logger

            get_logger(component="codec").warning(
                "codec key ring is readable by other users: chmod 600 it",
                file=str(settings.codec_keys_file),
                mode=f"{mode:04o}",
            )
    return ring


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over the serialized payload; the key id travels in the metadata."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self._current = AESGCM(ring.key(ring.current))
        self._ciphers: dict[str, AESGCM] = {ring.current: self._current}

    def _cipher(self, key_id: str) -> AESGCM:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            cipher = self._ciphers[key_id] = AESGCM(self.ring.key(key_id))
        return cipher

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        kid = self.ring.current.encode()
        out = []
        for p in payloads:
            nonce = os.urandom(_NONCE_BYTES)
            # The key id is authenticated too: a payload cannot be relabelled to another key.
            sealed = self._current.encrypt(nonce, p.SerializeToString(), kid)
            out.append(Payload(metadata={"encoding": ENCODING, KEY_ID_META: kid, CIPHER_META: CIPHER}, data=nonce + sealed))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decode_one(p) for p in payloads]

    def decode_one(self, p: Payload) -> Payload:
        if p.metadata.get("encoding") != ENCODING:
            return p  # not ours: plain JSON from the CLI or tctl, or a history from before encryption
        kid_bytes = p.metadata.get(KEY_ID_META, b"")
        kid = kid_bytes.decode("utf-8", "replace")
        cipher = p.metadata.get(CIPHER_META, CIPHER)
        if cipher != CIPHER:
            raise CodecError(f"payload is encrypted with {cipher.decode('utf-8', 'replace')!r}; SecFlow knows only AES-256-GCM")
        try:
            plain = self._cipher(kid).decrypt(p.data[:_NONCE_BYTES], p.data[_NONCE_BYTES:], kid_bytes)
        except InvalidTag:
            raise CodecError(f"payload encrypted with key {kid!r} does not decrypt: wrong key or altered data") from None
        decoded = Payload()
        decoded.ParseFromString(plain)
        return decoded


def build_data_converter(ring: KeyRing | None) -> DataConverter:
    """SecFlow's data converter: pydantic JSON payloads, encrypted with `ring` (None: plain).

    Failure messages and stack traces move into the failure's encoded attributes, so the
    codec encrypts them too (a failure message can name a target).
    """
    if ring is None:
        return DataConverter(payload_converter_class=PydanticPayloadConverter)
    return DataConverter(
        payload_converter_class=PydanticPayloadConverter,
        payload_codec=EncryptionCodec(ring),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def data_converter_for(settings: Settings) -> DataConverter:
    return build_data_converter(keyring_for(settings))


def main(argv: list[str] | None = None) -> int:
    """`python -m secflow.codec new-key|show`: rotate or inspect the key ring."""
    from secflow.settings import SettingsError, load_settings

    parser = argparse.ArgumentParser(prog="python -m secflow.codec", description="Manage SecFlow's payload key ring.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("new-key", help="add a fresh key that encrypts from now on (old keys still decrypt)")
    p.add_argument("--id", help="key id (default: k<date>-<random>)")
    sub.add_parser("show", help="print the ring's file, current key id and key ids (never the keys)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        path = settings.codec_keys_path
        if args.command == "new-key":
            if args.id is not None and not _KEY_ID.match(args.id):
                raise KeyRingError(f"--id: {args.id!r} is not valid (letters, digits, '.', '_', '-'; at most 64)")
            if settings.codec_keys_file is None:
                create_keyring(path)
            ring = rotate_keyring(path, args.id)
            print(f"{path}: current key is now {ring.current} ({len(ring.keys)} keys)")
        else:
            ring = load_keyring(path)
            mode = stat.S_IMODE(path.stat().st_mode)
            print(f"file: {path} (mode {mode:04o})\ncurrent: {ring.current}\nkeys: {', '.join(sorted(ring.keys))}")
    except (KeyRingError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
