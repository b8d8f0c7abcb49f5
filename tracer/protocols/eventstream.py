"""AWS event stream (``application/vnd.amazon.eventstream``), sans-IO; and Bedrock's Anthropic answers in it.

    d = EventStreamDecoder()
    for msg in d.feed(chunk): ...        # bytes in any split; messages carry their byte offsets
    d.close()                            # what is left (a truncated message) is counted in d.errors

A message: a 12-byte prelude (total length, headers length, CRC32 of those 8 bytes; big-endian), the
headers (name length u8, name, value type u8, value), the payload, and a CRC32 of everything before it.
A message whose prelude or message CRC does not check, or whose lengths are impossible, is counted and
skipped: the decoder resynchronises at the next offset where a prelude checks (its own CRC makes a false
start unlikely), so one damaged message costs that message, not the rest of the stream.

Bedrock (``InvokeModelWithResponseStream``) sends each Anthropic streaming event as an ``event`` message
of type ``chunk`` whose JSON payload is ``{"bytes": base64(event JSON)}``; failures come as ``exception``
messages (``:exception-type``) with a JSON ``{"message": ...}``. ``reconstruct_eventstream`` feeds those
events to the same ``MessageBuilder`` as SSE, so the viewer shows both alike.
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from tracer.protocols.sse import MessageBuilder, Reconstruction

PRELUDE = 12
MAX_MESSAGE = 16 << 20        # the format's limit on one message
MAX_HEADERS = 128 << 10       # and on its headers
CONTENT_TYPE = "application/vnd.amazon.eventstream"


@dataclass
class EventMessage:
    headers: dict[str, Any]
    payload: bytes
    start: int = 0            # stream offset of the prelude
    end: int = 0              # stream offset just past the message CRC


class HeaderError(ValueError):
    pass


def _headers(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i, n = 0, len(data)

    def take(k: int) -> bytes:
        nonlocal i
        if i + k > n:
            raise HeaderError("header runs past the headers section")
        b = data[i:i + k]
        i += k
        return b

    while i < n:
        name = take(take(1)[0]).decode("utf-8", "replace")
        t = take(1)[0]
        if t == 0:
            v: Any = True
        elif t == 1:
            v = False
        elif t == 2:
            v = struct.unpack(">b", take(1))[0]
        elif t == 3:
            v = struct.unpack(">h", take(2))[0]
        elif t == 4:
            v = struct.unpack(">i", take(4))[0]
        elif t == 5 or t == 8:                       # long, timestamp (ms since the epoch)
            v = struct.unpack(">q", take(8))[0]
        elif t == 6:
            v = take(struct.unpack(">H", take(2))[0])
        elif t == 7:
            v = take(struct.unpack(">H", take(2))[0]).decode("utf-8", "replace")
        elif t == 9:
            v = str(uuid.UUID(bytes=take(16)))
        else:
            raise HeaderError(f"unknown header value type {t}")
        if name in out:
            raise HeaderError(f"duplicate header {name!r}")
        out[name] = v
    return out


class EventStreamDecoder:
    """Incremental decoder. Feed bytes split anywhere; get whole, checked messages back."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._off = 0                     # stream offset of _buf[0]
        self.errors: list[str] = []
        self.skipped_bytes = 0            # bytes dropped while resynchronising
        self.messages = 0

    def _err(self, msg: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(msg)

    def _prelude_ok(self, i: int) -> tuple[int, int] | None:
        b = self._buf
        total, hlen, crc = struct.unpack_from(">III", b, i)
        if zlib.crc32(b[i:i + 8]) != crc:
            return None
        if total < PRELUDE + 4 + hlen or total > MAX_MESSAGE or hlen > MAX_HEADERS:
            return None
        return total, hlen

    def _resync(self, why: str) -> None:
        """Drop bytes up to the next offset where a prelude checks (or keep the last 11: may start one)."""
        self._err(f"offset {self._off}: {why}; resynchronising")
        b = self._buf
        i = 1
        while i + PRELUDE <= len(b):
            if self._prelude_ok(i) is not None:
                break
            i += 1
        else:
            i = max(1, len(b) - PRELUDE + 1)
        del b[:i]
        self._off += i
        self.skipped_bytes += i

    def feed(self, data: bytes | bytearray | memoryview) -> list[EventMessage]:
        self._buf += data
        out: list[EventMessage] = []
        b = self._buf
        pos = 0
        while len(b) - pos >= PRELUDE:
            if pos:
                del b[:pos]
                self._off += pos
                pos = 0
            p = self._prelude_ok(0)
            if p is None:
                self._resync("bad prelude (CRC or lengths)")
                continue
            total, hlen = p
            if len(b) < total:
                break
            (crc,) = struct.unpack_from(">I", b, total - 4)
            if zlib.crc32(memoryview(b)[:total - 4]) != crc:
                self._resync("message CRC mismatch")
                continue
            try:
                headers = _headers(bytes(b[PRELUDE:PRELUDE + hlen]))
            except HeaderError as e:
                self._err(f"offset {self._off}: {e}")
                headers = {}
            payload = bytes(b[PRELUDE + hlen:total - 4])
            out.append(EventMessage(headers, payload, self._off, self._off + total))
            self.messages += 1
            pos = total
        if pos:
            del b[:pos]
            self._off += pos
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)

    def close(self) -> list[EventMessage]:
        if self._buf:
            self._err(f"stream ended inside a message ({len(self._buf)} bytes)")
            self.skipped_bytes += len(self._buf)
            self._buf.clear()
        return []


def bedrock_event(msg: EventMessage) -> tuple[str, Any]:
    """("event", Anthropic event object) for a chunk; ("exception", {"type", "message"}); or ("other", headers)."""
    mtype = msg.headers.get(":message-type")
    if mtype == "event" and msg.headers.get(":event-type") == "chunk":
        try:
            outer = orjson.loads(msg.payload)
            inner = base64.b64decode(outer["bytes"], validate=True)
            return "event", orjson.loads(inner)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as e:
            return "bad", f"chunk not decodable: {e}"
    if mtype in ("exception", "error"):
        etype = msg.headers.get(":exception-type") or msg.headers.get(":error-code") or "error"
        try:
            detail = orjson.loads(msg.payload) if msg.payload else {}
        except orjson.JSONDecodeError:
            detail = {"message": msg.payload.decode("utf-8", "replace")}
        text = detail.get("message") if isinstance(detail, dict) else None
        return "exception", {"type": str(etype), "message": str(text or msg.headers.get(":error-message") or etype)}
    return "other", msg.headers


@dataclass
class EventStreamReconstruction(Reconstruction):
    frames: int = 0
    skipped_bytes: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)   # amazon-bedrock-invocationMetrics


def reconstruct_eventstream(body: bytes | Iterable[bytes], *, max_field_chars: int | None = None,
                            on_text=None) -> EventStreamReconstruction:
    """A Bedrock event-stream body (or its chunks) rebuilt into the Messages API response."""
    d = EventStreamDecoder()
    b = MessageBuilder(max_field_chars=max_field_chars, on_text=on_text)
    size = 0
    metrics: dict[str, Any] = {}
    chunks = [body] if isinstance(body, (bytes, bytearray, memoryview)) else body
    for chunk in chunks:
        size += len(chunk)
        for msg in d.feed(chunk):
            kind, v = bedrock_event(msg)
            if kind == "event":
                if isinstance(v, dict) and isinstance(v.get("amazon-bedrock-invocationMetrics"), dict):
                    metrics = v["amazon-bedrock-invocationMetrics"]
                b.apply_payload(v, msg.end)
            elif kind == "exception":
                b.error = v
                b._count(msg.end)
            elif kind == "bad":
                b._err(v)
    d.close()
    msg = b.finish()
    errors = d.errors + b.errors
    return EventStreamReconstruction(msg, errors, b.error, b.events, b.event_counts, b.stopped,
                                     b.first_event_end, b.first_delta_end, b.last_event_end, size, b.truncated,
                                     frames=d.messages, skipped_bytes=d.skipped_bytes, metrics=metrics)


def encode_message(headers: dict[str, Any], payload: bytes) -> bytes:
    """One event-stream message (string, bytes, bool and int32 header values): for tests and the mock."""
    hb = bytearray()
    for name, v in headers.items():
        nb = name.encode()
        hb += bytes([len(nb)]) + nb
        if v is True or v is False:
            hb += bytes([0 if v else 1])
        elif isinstance(v, int):
            hb += b"\x04" + struct.pack(">i", v)
        elif isinstance(v, bytes):
            hb += b"\x06" + struct.pack(">H", len(v)) + v
        else:
            vb = str(v).encode()
            hb += b"\x07" + struct.pack(">H", len(vb)) + vb
    total = PRELUDE + len(hb) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    msg = prelude + bytes(hb) + payload
    return msg + struct.pack(">I", zlib.crc32(msg))


def bedrock_chunk(event: dict) -> bytes:
    """A Bedrock ``chunk`` message carrying one Anthropic streaming event."""
    payload = orjson.dumps({"bytes": base64.b64encode(orjson.dumps(event)).decode(), "p": "abcdefgh"})
    return encode_message({":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
                          payload)
