"""The wire protocol of ``/api/chat``: Moshi's binary framing plus typed JSON events.

Every WebSocket binary message starts with a kind byte (Moshi's protocol, so existing Moshi clients
work): 0x00 handshake (server -> client, once the session is ready), 0x01 Ogg Opus audio (both ways),
0x02 text (a piece of the assistant's inner monologue, UTF-8). KAME's additions, sent only to clients
that ask for them with ``?events=1``: 0x04 metadata, a JSON object with a ``type`` (the wire events
declared in ``kame.events``: ``kame.events.wire_types()``), and 0x05 error, a UTF-8 message
(``kame.events.SessionError``) sent before the server closes the connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kame.events import LiveEvent, SessionError, WireEvent

KIND_HANDSHAKE = 0x00
KIND_AUDIO = 0x01
KIND_TEXT = 0x02
KIND_CONTROL = 0x03
KIND_METADATA = 0x04
KIND_ERROR = 0x05
KIND_PING = 0x06

HANDSHAKE = bytes([KIND_HANDSHAKE])  # what moshi's own server sends


class ProtocolError(ValueError):
    """A client message that breaks the protocol; the session is ended with this message."""


@dataclass(frozen=True)
class ClientMessage:
    kind: int
    payload: bytes


def parse_client_message(data: bytes, max_bytes: int) -> ClientMessage:
    """Validate one binary message from a client."""
    if not data:
        raise ProtocolError("empty message: every message starts with a kind byte")
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes is over the {max_bytes}-byte limit")
    kind = data[0]
    if kind not in (KIND_AUDIO, KIND_CONTROL, KIND_METADATA, KIND_PING):
        raise ProtocolError(f"unknown message kind 0x{kind:02x}: clients send 0x01 audio (Ogg Opus)")
    return ClientMessage(kind, bytes(data[1:]))


def audio_message(ogg: bytes) -> bytes:
    return bytes([KIND_AUDIO]) + ogg


def text_message(piece: str) -> bytes:
    return bytes([KIND_TEXT]) + piece.encode("utf-8")


def metadata_message(event: WireEvent | LiveEvent) -> bytes:
    return bytes([KIND_METADATA]) + json.dumps(event.to_json(), ensure_ascii=False).encode("utf-8")


def error_message(error: SessionError) -> bytes:
    return bytes([KIND_ERROR]) + error.message.encode("utf-8")


def decode_server_message(data: bytes) -> tuple[int, Any]:
    """For clients and tests: (kind, payload decoded: bytes for audio, str for text, dict for metadata)."""
    if not data:
        raise ProtocolError("empty message")
    kind, payload = data[0], bytes(data[1:])
    if kind in (KIND_TEXT, KIND_ERROR):
        return kind, payload.decode("utf-8")
    if kind == KIND_METADATA:
        return kind, json.loads(payload)
    return kind, payload
