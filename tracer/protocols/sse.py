"""Server-Sent Events, sans-IO, and the Anthropic Messages response rebuilt from its event stream.

    p = SSEParser()
    for ev in p.feed(chunk): ...          # bytes in any split; events carry byte offsets in the stream
    p.close()                             # an event without its terminating blank line is dropped (spec)

    b = MessageBuilder()
    for ev in events: b.apply(ev)
    b.message   # {"id", "type": "message", "role", "model", "content": [...], "stop_reason", "usage", ...}

``reconstruct(body)`` does both for a whole body (``str`` or ``bytes``) and also reports where the first
content delta and the last event ended, as byte offsets into the UTF-8 body, so callers can turn them into
times with the capture's ``response_chunks`` table.

Parsing follows the WHATWG event-stream rules: lines end in CRLF, LF or CR; ``field: value`` with one
leading space stripped from the value; ``data`` lines are joined with newlines; lines starting with ``:``
are comments; a blank line dispatches the event unless its data is empty; a leading UTF-8 BOM is ignored.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

_BOM = b"\xef\xbb\xbf"


@dataclass
class SSEEvent:
    event: str            # "message" when no event field was given
    data: str
    id: str | None = None
    retry: int | None = None
    start: int = 0        # byte offset of the event's first line in the stream
    end: int = 0          # byte offset just past the CR or LF that ended the dispatching blank line


class SSEParser:
    """Incremental event-stream parser. Feed bytes split anywhere; get complete events back."""

    __slots__ = ("_buf", "_buf_off", "_pos", "_event", "_data", "_id", "_retry", "_start",
                 "_skip_lf", "_bom_checked", "last_event_id")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._buf_off = 0          # stream offset of _buf[0]
        self._pos = 0              # stream offset of the next unconsumed line
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self._start: int | None = None
        self._skip_lf = False      # last line ended in CR: a following LF belongs to it
        self._bom_checked = False
        self.last_event_id = ""

    @property
    def offset(self) -> int:
        """Bytes consumed so far (stream offset of the first byte not yet part of a complete line)."""
        return self._pos

    def feed(self, data: bytes | bytearray | memoryview | str) -> list[SSEEvent]:
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not data:
            return []
        self._buf += data
        if not self._bom_checked:
            if len(self._buf) < 3 and _BOM.startswith(bytes(self._buf)):
                return []       # could still be a BOM
            self._bom_checked = True
            if self._buf.startswith(_BOM):
                del self._buf[:3]
                self._buf_off += 3
                self._pos += 3
        out: list[SSEEvent] = []
        buf = self._buf
        i = 0
        n = len(buf)
        while i < n:
            if self._skip_lf:
                self._skip_lf = False
                if buf[i] == 0x0A:
                    i += 1
                    continue
            lf = buf.find(b"\n", i)
            cr = buf.find(b"\r", i, lf if lf >= 0 else n)
            if cr >= 0:
                j, eol = cr, 1
                if cr + 1 < n:
                    if buf[cr + 1] == 0x0A:
                        eol = 2
                else:
                    self._skip_lf = True   # CR at the end of what we have: LF may follow
            elif lf >= 0:
                j, eol = lf, 1
            else:
                break
            line = bytes(buf[i:j])
            line_start = self._buf_off + i
            i = j + eol
            # `end` is just past the first byte of the line terminator: with CRLF the event is known
            # complete at the CR, so offsets do not depend on where the stream was split.
            ev = self._line(line, line_start, self._buf_off + j + 1)
            if ev is not None:
                out.append(ev)
        del buf[:i]
        self._buf_off += i
        self._pos = self._buf_off
        return out

    def _line(self, line: bytes, start: int, end: int) -> SSEEvent | None:
        if not line:
            return self._dispatch(end)
        if self._start is None:
            self._start = start
        if line[0] == 0x3A:  # ":" comment
            return None
        text = line.decode("utf-8", "replace")
        name, sep, value = text.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\x00" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit() and value.isascii():
                self._retry = int(value)
        return None

    def _dispatch(self, end: int) -> SSEEvent | None:
        start = self._start if self._start is not None else end
        ev = None
        if self._id is not None:
            self.last_event_id = self._id
        if self._data:
            ev = SSEEvent(self._event or "message", "\n".join(self._data), self._id, self._retry,
                          start, end)
        self._event = ""
        self._data = []
        self._id = None
        self._retry = None
        self._start = None
        return ev

    def close(self) -> list[SSEEvent]:
        """End of stream. Per the spec an unterminated final event is discarded; nothing is returned."""
        self._buf.clear()
        self._event, self._data, self._id, self._retry, self._start = "", [], None, None, None
        return []

    @property
    def pending(self) -> bool:
        """True when an event has started but its terminating blank line has not arrived."""
        return bool(self._data) or self._start is not None or bool(self._buf)


def parse_events(body: bytes | str) -> list[SSEEvent]:
    p = SSEParser()
    evs = p.feed(body)
    p.close()
    return evs


# --------------------------------------------------------------------------- Anthropic Messages

_DELTA_FIELDS = {"text_delta": ("text", "text"), "thinking_delta": ("thinking", "thinking"),
                 "signature_delta": ("signature", "signature")}


class MessageBuilder:
    """Applies Anthropic Messages streaming events to rebuild the final ``Message`` object.

    Handles message_start, content_block_start/delta/stop (text_delta, thinking_delta, signature_delta,
    input_json_delta, citations_delta), message_delta (stop_reason, stop_sequence, usage), message_stop,
    ping and error. Tolerates missing starts and truncated streams; what was odd goes to ``errors``.
    """

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.errors: list[str] = []
        self.error: Any = None           # payload of an `error` event
        self.stopped = False             # message_stop seen
        self.events = 0
        self.event_counts: dict[str, int] = {}
        self.first_delta_end: int | None = None   # stream offset just past the first content delta
        self.first_event_end: int | None = None
        self.last_event_end: int | None = None
        self._json: dict[int, list[str]] = {}     # block index -> partial_json pieces
        self._open: set[int] = set()

    def _msg(self) -> dict[str, Any]:
        if self.message is None:
            self.errors.append("events before message_start")
            self.message = {"type": "message", "role": "assistant", "content": []}
        return self.message

    def _block(self, index: Any) -> dict[str, Any] | None:
        content = self._msg().setdefault("content", [])
        if not isinstance(index, int) or index < 0:
            self.errors.append(f"bad content block index {index!r}")
            return None
        while len(content) <= index:
            content.append(None)
        if content[index] is None:
            self.errors.append(f"delta for block {index} without content_block_start")
            content[index] = {"type": "text", "text": ""}
        return content[index]

    def apply(self, ev: SSEEvent) -> None:
        self.events += 1
        if self.first_event_end is None:
            self.first_event_end = ev.end
        self.last_event_end = ev.end
        try:
            payload = json.loads(ev.data)
        except ValueError:
            self.errors.append(f"{ev.event}: data is not JSON")
            self.event_counts[ev.event] = self.event_counts.get(ev.event, 0) + 1
            return
        kind = payload.get("type", ev.event) if isinstance(payload, dict) else ev.event
        self.event_counts[kind] = self.event_counts.get(kind, 0) + 1
        if not isinstance(payload, dict):
            self.errors.append(f"{kind}: payload is not an object")
            return
        handler = getattr(self, "_on_" + kind, None)
        if handler is None:
            if kind != "ping":
                self.errors.append(f"unknown event {kind!r}")
            return
        handler(payload, ev)

    def _on_message_start(self, p: dict, ev: SSEEvent) -> None:
        m = p.get("message")
        if not isinstance(m, dict):
            self.errors.append("message_start without message")
            m = {}
        if self.message is not None:
            self.errors.append("second message_start")
        self.message = copy.deepcopy(m)
        self.message.setdefault("type", "message")
        self.message.setdefault("role", "assistant")
        if not isinstance(self.message.get("content"), list):
            self.message["content"] = []

    def _on_content_block_start(self, p: dict, ev: SSEEvent) -> None:
        index = p.get("index")
        block = p.get("content_block")
        if not isinstance(block, dict) or not isinstance(index, int) or index < 0:
            self.errors.append("malformed content_block_start")
            return
        content = self._msg().setdefault("content", [])
        while len(content) <= index:
            content.append(None)
        content[index] = copy.deepcopy(block)
        self._open.add(index)
        if block.get("type") in ("tool_use", "server_tool_use", "mcp_tool_use"):
            self._json[index] = []

    def _on_content_block_delta(self, p: dict, ev: SSEEvent) -> None:
        if self.first_delta_end is None:
            self.first_delta_end = ev.end
        block = self._block(p.get("index"))
        delta = p.get("delta")
        if block is None or not isinstance(delta, dict):
            if not isinstance(delta, dict):
                self.errors.append("content_block_delta without delta")
            return
        dt = delta.get("type")
        if dt in _DELTA_FIELDS:
            src, dst = _DELTA_FIELDS[dt]
            piece = delta.get(src)
            if isinstance(piece, str):
                block[dst] = (block.get(dst) or "") + piece
        elif dt == "input_json_delta":
            piece = delta.get("partial_json")
            if isinstance(piece, str):
                self._json.setdefault(p["index"], []).append(piece)
        elif dt == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))
        else:
            self.errors.append(f"unknown delta type {dt!r}")

    def _on_content_block_stop(self, p: dict, ev: SSEEvent) -> None:
        index = p.get("index")
        self._open.discard(index)
        self._finish_json(index)

    def _finish_json(self, index: Any) -> None:
        pieces = self._json.pop(index, None)
        if pieces is None:
            return
        content = self._msg().get("content") or []
        if not isinstance(index, int) or index >= len(content) or content[index] is None:
            return
        raw = "".join(pieces)
        if not raw:
            if not isinstance(content[index].get("input"), dict):
                content[index]["input"] = {}
            return
        try:
            content[index]["input"] = json.loads(raw)
        except ValueError:
            content[index]["input"] = raw
            self.errors.append(f"block {index}: tool input is not valid JSON (kept as text)")

    def _on_message_delta(self, p: dict, ev: SSEEvent) -> None:
        m = self._msg()
        delta = p.get("delta")
        if isinstance(delta, dict):
            for k, v in delta.items():
                m[k] = v
        usage = p.get("usage")
        if isinstance(usage, dict):
            u = m.get("usage")
            if not isinstance(u, dict):
                u = m["usage"] = {}
            for k, v in usage.items():
                if v is not None:
                    u[k] = v

    def _on_message_stop(self, p: dict, ev: SSEEvent) -> None:
        self._msg()
        self.stopped = True

    def _on_error(self, p: dict, ev: SSEEvent) -> None:
        self.error = p.get("error", p)

    def finish(self) -> dict[str, Any] | None:
        """Close what is still open (truncated streams) and return the message."""
        for index in list(self._json):
            self._finish_json(index)
        if self.message is not None:
            self.message["content"] = [b for b in self.message.get("content", []) if b is not None]
            if self._open:
                self.errors.append(f"stream ended with {len(self._open)} open content block(s)")
                self._open.clear()
            if not self.stopped:
                self.errors.append("no message_stop")
        return self.message


@dataclass
class Reconstruction:
    message: dict[str, Any] | None
    errors: list[str] = field(default_factory=list)
    error: Any = None
    events: int = 0
    event_counts: dict[str, int] = field(default_factory=dict)
    complete: bool = False                 # message_stop seen
    first_event_end: int | None = None     # byte offsets into the UTF-8 body
    first_delta_end: int | None = None
    last_event_end: int | None = None
    body_bytes: int = 0


def reconstruct(body: bytes | str | Iterable[bytes]) -> Reconstruction:
    """Parse a whole SSE body (or an iterable of byte chunks) into the Messages API response."""
    p = SSEParser()
    b = MessageBuilder()
    size = 0
    chunks = [body] if isinstance(body, (bytes, bytearray, str)) else body
    for chunk in chunks:
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8")
        size += len(chunk)
        for ev in p.feed(chunk):
            b.apply(ev)
    if p.pending:
        b.errors.append("stream ended inside an event")
    p.close()
    msg = b.finish()
    return Reconstruction(msg, b.errors, b.error, b.events, b.event_counts, b.stopped,
                          b.first_event_end, b.first_delta_end, b.last_event_end, size)
