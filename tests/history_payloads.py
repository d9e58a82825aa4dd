"""Payloads of a Temporal history, raw and as this client's codec decodes them.

Tests that prove something never reaches history (a secret, a marker) search both: the
raw protobuf (what the server stores) and the decoded payloads (what anyone with the key
ring, or the codec server, sees).
"""

from __future__ import annotations

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from secflow.codec import CodecError


def payloads_in(message: Message) -> list[Payload]:
    """Every Payload inside a proto message (history events nest them at many depths)."""
    found: list[Payload] = []
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = list(value.values())
        elif field.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            if not isinstance(item, Message):
                continue
            found.extend([item] if isinstance(item, Payload) else payloads_in(item))
    return found


async def decoded_bytes(client: Client, events: list) -> bytes:  # noqa: ANN001
    """The payloads of `events` as the client's codec decodes them (when there is one).

    A payload written under another key ring (another test's data directory sharing the
    dev server) cannot be decoded here; it is left out, and its raw bytes are still
    searched by the caller."""
    codec = client.data_converter.payload_codec
    if codec is None:
        return b""
    out = []
    for payload in (p for e in events for p in payloads_in(e)):
        try:
            (plain,) = await codec.decode([payload])
        except CodecError:
            continue
        out.append(plain.data + b"".join(plain.metadata.values()))
    return b"\n".join(out)
