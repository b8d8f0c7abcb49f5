"""Server-Sent Events, sans-IO, and the Anthropic Messages response rebuilt from its event stream.

    p = SSEParser()
    for ev in p.feed(chunk): ...          # bytes in any split; events carry byte offsets in the stream
    p.gap()                               # bytes missing here (a capture hole): resync at the next event
    p.close()                             # an event without its terminating blank line is dropped (spec)

    b = MessageBuilder()
    for ev in events: b.apply(ev)
    b.message   # {"id", "type": "message", "role", "model", "content": [...], "stop_reason", "usage", ...}

``reconstruct(body, holes)`` does both for a whole body (``str`` or ``bytes``; ``holes``: the offsets of
the record's ``tracer.response_holes``) and also reports where the first content delta and the last
event ended, as byte offsets into the UTF-8 body, so callers can turn them into times with the
capture's ``response_chunks`` table.

Parsing follows the WHATWG event-stream rules: lines end in CRLF, LF or CR; ``field: value`` with one
leading space stripped from the value; ``data`` lines are joined with newlines; lines starting with ``:``
are comments; a blank line dispatches the event unless its data is empty; a leading UTF-8 BOM is ignored.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

_BOM = b"\xef\xbb\xbf"
_FIELDS = (b"event:", b"data:", b"id:", b"retry:")
_SYNCED, _AT_HOLE, _SKIPPING = 0, 1, 2


@dataclass
class SSEEvent:
    event: str            # "message" when no event field was given
    data: str
    id: str | None = None
    retry: int | None = None
    start: int = 0        # byte offset of the event's first line in the stream
    end: int = 0          # byte offset just past the CR or LF that ended the dispatching blank line


class SSEParser:
    """Incremental event-stream parser. Feed bytes split anywhere; get complete events back.

    ``gap()`` says the bytes fed next do not follow those fed so far (a hole in a captured body). The
    event in progress is dropped, and parsing resumes at the next event: at once if the bytes after
    the hole begin with a field name and a colon (``event:``, ``data:``, ``id:``, ``retry:``: the hole
    ended where a line begins), else after the partial line, at the first blank line or ``event:``
    line. So a hole costs the events it touches and nothing after them; no event is made of bytes from
    both sides of a hole.
    """

    __slots__ = ("_buf", "_buf_off", "_pos", "_event", "_data", "_id", "_retry", "_start",
                 "_skip_lf", "_bom_checked", "last_event_id", "_clean", "_resync", "_partial", "holes")

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
        self._clean = 0
        self._resync = _SYNCED
        self._partial = False      # skipping: the line in hand began inside the hole
        self.holes = 0             # gap() calls so far

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
        if self._resync == _AT_HOLE and not self._after_hole():
            return []
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
        clean = self._clean     # bytes at the start of buf already searched for a line end (a long line
        while i < n:            # arriving in pieces is searched once, not once per piece: linear)
            if self._skip_lf:
                self._skip_lf = False
                if buf[i] == 0x0A:
                    i += 1
                    continue
            s0 = i if i >= clean else clean
            lf = buf.find(b"\n", s0)
            cr = buf.find(b"\r", s0, lf if lf >= 0 else n)
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
            if self._resync and not self._resume(line):
                continue
            # `end` is just past the first byte of the line terminator: with CRLF the event is known
            # complete at the CR, so offsets do not depend on where the stream was split.
            ev = self._line(line, line_start, self._buf_off + j + 1)
            if ev is not None:
                out.append(ev)
        self._clean = n - i if i < n and not self._skip_lf else 0
        del buf[:i]
        self._buf_off += i
        self._pos = self._buf_off
        return out

    def gap(self) -> None:
        """Bytes are missing between what was fed and what comes next (see the class docstring)."""
        self.holes += 1
        self._buf_off += len(self._buf)
        self._pos = self._buf_off
        self._buf.clear()
        self._clean = 0
        self._event, self._data, self._id, self._retry, self._start = "", [], None, None, None
        self._skip_lf = False
        self._bom_checked = True
        self._resync = _AT_HOLE

    def _after_hole(self) -> bool:
        """Where do the first bytes after a hole stand? False: too few bytes to tell yet."""
        head = bytes(self._buf[:6])
        if head.startswith(_FIELDS):
            self._resync = _SYNCED
            return True
        if len(head) < 6 and any(f.startswith(head) for f in _FIELDS):
            return False
        self._resync, self._partial = _SKIPPING, True
        return True

    def _resume(self, line: bytes) -> bool:
        """While skipping after a hole: does parsing resume with ``line``? (A blank line ends the
        damaged event and is itself skipped.)"""
        if self._partial:
            self._partial = False
            return False
        if not line:
            self._resync = _SYNCED
            return False
        if line.startswith(b"event:"):
            self._resync = _SYNCED
            return True
        return False

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
        self._clean = 0
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
_TOOL_BLOCKS = ("tool_use", "server_tool_use", "mcp_tool_use")
MAX_BLOCKS = 10_000        # content blocks kept per message; a stream naming more is counted as odd


class _Acc:
    """One growing text field: pieces kept in a list and joined once (linear in the text's size).

    With ``cap`` only the first ``cap`` characters are kept; ``total`` still counts every character, so
    a caller can say how much was left out. ``sink(piece)``, when given, sees every piece (hashing,
    search indexing) whether or not it is kept.
    """

    __slots__ = ("pieces", "kept", "total", "cap", "sink")

    def __init__(self, initial: str, cap: int | None, sink) -> None:
        self.pieces: list[str] = []
        self.kept = 0
        self.total = 0
        self.cap = cap
        self.sink = sink
        if initial:
            self.add(initial)

    def add(self, piece: str) -> None:
        n = len(piece)
        self.total += n
        if self.sink is not None:
            self.sink(piece)
        if self.cap is None:
            self.pieces.append(piece)
            self.kept += n
        elif self.kept < self.cap:
            if self.kept + n > self.cap:
                piece = piece[:self.cap - self.kept]
            self.pieces.append(piece)
            self.kept += len(piece)

    def value(self) -> str:
        if len(self.pieces) > 1:
            self.pieces = ["".join(self.pieces)]
        return self.pieces[0] if self.pieces else ""

    @property
    def truncated(self) -> bool:
        return self.total > self.kept


class MessageBuilder:
    """Applies Anthropic Messages streaming events to rebuild the final ``Message`` object.

    Handles message_start, content_block_start/delta/stop (text_delta, thinking_delta, signature_delta,
    input_json_delta, citations_delta), message_delta (stop_reason, stop_sequence, usage), message_stop,
    ping and error. Tolerates missing starts and truncated streams; what was odd goes to ``errors``.

    Linear in the stream's size: every text (and tool-input JSON) is accumulated as a list of pieces and
    joined once, in ``finish()``. ``max_field_chars`` keeps only the first N characters of each text
    field (and of each tool input's JSON); what was cut is listed in ``truncated`` as
    ``{"index", "field", "kept", "chars"}``. ``on_text(index, field, piece)`` sees every piece.

    ``apply(ev)`` takes an SSE event; ``apply_payload(obj, end)`` takes an already decoded event object
    (Bedrock's event stream carries the same events without SSE framing).
    """

    def __init__(self, *, max_field_chars: int | None = None, on_text=None) -> None:
        self.message: dict[str, Any] | None = None
        self.errors: list[str] = []
        self.error: Any = None           # payload of an `error` event
        self.stopped = False             # message_stop seen
        self.events = 0
        self.event_counts: dict[str, int] = {}
        self.first_delta_end: int | None = None   # stream offset just past the first content delta
        self.first_event_end: int | None = None
        self.last_event_end: int | None = None
        self.truncated: list[dict[str, Any]] = []
        self._cap = max_field_chars
        self._on_text = on_text
        self._blocks: dict[int, dict[str, Any]] = {}            # index -> block (no text fields yet)
        self._text: dict[tuple[int, str], _Acc] = {}            # (index, field) -> accumulated text
        self._json: dict[int, _Acc] = {}                        # index -> tool input JSON pieces
        self._open: set[int] = set()
        self._odd: dict[str, int] = {}                          # repeated complaints, counted once

    def _err(self, msg: str) -> None:
        """Record a problem; the same problem repeated (a long broken stream) is listed once, counted."""
        n = self._odd.get(msg, 0)
        self._odd[msg] = n + 1
        if n == 0:
            self.errors.append(msg)

    def _msg(self) -> dict[str, Any]:
        if self.message is None:
            self._err("events before message_start")
            self.message = {"type": "message", "role": "assistant", "content": []}
        return self.message

    def _index(self, index: Any) -> int | None:
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            self._err(f"bad content block index {index!r}")
            return None
        if index not in self._blocks and len(self._blocks) >= MAX_BLOCKS:
            self._err(f"more than {MAX_BLOCKS} content blocks: the rest ignored")
            return None
        return index

    def _block(self, index: Any) -> dict[str, Any] | None:
        self._msg()
        i = self._index(index)
        if i is None:
            return None
        if i not in self._blocks:
            self._err(f"delta for block {i} without content_block_start")
            self._blocks[i] = {"type": "text", "text": ""}
        return self._blocks[i]

    def apply(self, ev: SSEEvent) -> None:
        try:
            payload = _loads(ev.data)
        except ValueError:
            self._count(ev.end)
            self._err(f"{ev.event}: data is not JSON")
            self.event_counts[ev.event] = self.event_counts.get(ev.event, 0) + 1
            return
        self.apply_payload(payload, ev.end, ev.event)

    def _count(self, end: int) -> None:
        self.events += 1
        if self.first_event_end is None:
            self.first_event_end = end
        self.last_event_end = end

    def apply_payload(self, payload: Any, end: int = 0, name: str = "message") -> None:
        """One decoded event object; ``end`` is the stream offset just past it."""
        self._count(end)
        kind = payload.get("type", name) if isinstance(payload, dict) else name
        if not isinstance(kind, str):
            kind = name
        self.event_counts[kind] = self.event_counts.get(kind, 0) + 1
        if not isinstance(payload, dict):
            self._err(f"{kind}: payload is not an object")
            return
        handler = self._HANDLERS.get(kind)
        if handler is None:
            if kind != "ping":
                self._err(f"unknown event {kind!r}")
            return
        handler(self, payload, end)

    def _on_message_start(self, p: dict, end: int) -> None:
        m = p.get("message")
        if not isinstance(m, dict):
            self._err("message_start without message")
            m = {}
        if self.message is not None:
            self._err("second message_start")
        self.message = copy.deepcopy(m)
        self.message.setdefault("type", "message")
        self.message.setdefault("role", "assistant")
        content = self.message.get("content")
        self.message["content"] = []
        if isinstance(content, list):  # a prefilled start (not sent by the API today): keep its blocks
            for i, b in enumerate(content[:MAX_BLOCKS]):
                if isinstance(b, dict):
                    self._start_block(i, b)

    def _start_block(self, index: int, block: dict) -> None:
        block = copy.deepcopy(block)
        for _src, dst in _DELTA_FIELDS.values():
            v = block.get(dst)
            if isinstance(v, str):   # the text goes to an accumulator; the key keeps its place
                self._text[(index, dst)] = _Acc(v, self._cap, self._sink(index, dst))
                block[dst] = ""
        self._blocks[index] = block
        if block.get("type") in _TOOL_BLOCKS:
            self._json[index] = _Acc("", self._cap, None)

    def _sink(self, index: int, dst: str):
        if self._on_text is None:
            return None
        cb = self._on_text
        return lambda piece: cb(index, dst, piece)

    def _on_content_block_start(self, p: dict, end: int) -> None:
        block = p.get("content_block")
        if not isinstance(block, dict) or not isinstance(p.get("index"), int):
            self._err("malformed content_block_start")
            return
        self._msg()
        index = self._index(p.get("index"))
        if index is None:
            return
        for dst in [k for k in self._text if k[0] == index]:   # a restarted block starts afresh
            del self._text[dst]
        self._start_block(index, block)
        self._open.add(index)

    def _on_content_block_delta(self, p: dict, end: int) -> None:
        if self.first_delta_end is None:
            self.first_delta_end = end
        delta = p.get("delta")
        if not isinstance(delta, dict):
            self._msg()
            self._err("content_block_delta without delta")
            return
        block = self._block(p.get("index"))
        if block is None:
            return
        index = p["index"]
        dt = delta.get("type")
        if dt in _DELTA_FIELDS:
            src, dst = _DELTA_FIELDS[dt]
            piece = delta.get(src)
            if isinstance(piece, str):
                acc = self._text.get((index, dst))
                if acc is None:
                    acc = self._text[(index, dst)] = _Acc("", self._cap, self._sink(index, dst))
                acc.add(piece)
        elif dt == "input_json_delta":
            piece = delta.get("partial_json")
            if isinstance(piece, str):
                acc = self._json.get(index)
                if acc is None:
                    acc = self._json[index] = _Acc("", self._cap, None)
                acc.add(piece)
        elif dt == "citations_delta":
            cites = block.setdefault("citations", [])
            if isinstance(cites, list):
                cites.append(delta.get("citation"))
        else:
            self._err(f"unknown delta type {dt!r}")

    def _on_content_block_stop(self, p: dict, end: int) -> None:
        index = p.get("index")
        self._open.discard(index)
        if isinstance(index, int):
            self._finish_json(index)

    def _finish_json(self, index: int) -> None:
        acc = self._json.pop(index, None)
        block = self._blocks.get(index)
        if acc is None or block is None:
            return
        raw = acc.value()
        if acc.truncated:
            block["input"] = raw
            self.truncated.append({"index": index, "field": "input", "kept": acc.kept, "chars": acc.total})
            self._err(f"block {index}: tool input of {acc.total} characters cut to {acc.kept} (kept as text)")
            return
        if not raw:
            if not isinstance(block.get("input"), dict):
                block["input"] = {}
            return
        try:
            block["input"] = _loads(raw)
        except (ValueError, RecursionError):
            block["input"] = raw
            self._err(f"block {index}: tool input is not valid JSON (kept as text)")

    def _on_message_delta(self, p: dict, end: int) -> None:
        m = self._msg()
        delta = p.get("delta")
        if isinstance(delta, dict):
            for k, v in delta.items():
                if k != "content":
                    m[k] = v
        usage = p.get("usage")
        if isinstance(usage, dict):
            u = m.get("usage")
            if not isinstance(u, dict):
                u = m["usage"] = {}
            for k, v in usage.items():
                if v is not None:
                    u[k] = v

    def _on_message_stop(self, p: dict, end: int) -> None:
        self._msg()
        self.stopped = True

    def _on_error(self, p: dict, end: int) -> None:
        self.error = p.get("error", p)

    _HANDLERS = {
        "message_start": _on_message_start, "content_block_start": _on_content_block_start,
        "content_block_delta": _on_content_block_delta, "content_block_stop": _on_content_block_stop,
        "message_delta": _on_message_delta, "message_stop": _on_message_stop, "error": _on_error,
    }

    def finish(self) -> dict[str, Any] | None:
        """Close what is still open (truncated streams) and return the message. Call once."""
        for index in list(self._json):
            self._finish_json(index)
        for (index, dst), acc in self._text.items():
            block = self._blocks.get(index)
            if block is None:
                continue
            block[dst] = acc.value()
            if acc.truncated:
                self.truncated.append({"index": index, "field": dst, "kept": acc.kept, "chars": acc.total})
        self._text = {}
        if self.message is not None:
            self.message["content"] = [self._blocks[i] for i in sorted(self._blocks)]
            if self._open:
                self._err(f"stream ended with {len(self._open)} open content block(s)")
                self._open.clear()
            if not self.stopped:
                self._err("no message_stop")
        for msg, n in self._odd.items():
            if n > 1:
                k = self.errors.index(msg)
                self.errors[k] = f"{msg} (x{n})"
        self._odd = {}
        return self.message


def _loads(data: str | bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)    # what orjson refuses (lone surrogates, huge integers), the stdlib reads


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
    truncated: list[dict[str, Any]] = field(default_factory=list)   # fields cut by max_field_chars


def reconstruct(body: bytes | str | Iterable[bytes | str], holes: Iterable = (), *,
                max_field_chars: int | None = None, on_text=None) -> Reconstruction:
    """Parse a whole SSE body (or an iterable of byte chunks) into the Messages API response.
    ``holes``: byte offsets in the body where the capture lost bytes (or the ``[offset, ...]`` entries
    of a record's ``tracer.response_holes``); the parser resynchronises after each.

    Linear in the body's size; with ``max_field_chars`` its memory is bounded too (see MessageBuilder).
    """
    p = SSEParser()
    b = MessageBuilder(max_field_chars=max_field_chars, on_text=on_text)
    size = 0
    holes = holes if isinstance(holes, (list, tuple)) else ()
    at = sorted({off for off in (h[0] if isinstance(h, (list, tuple)) and h else h for h in holes)
                 if type(off) is int and off >= 0})
    chunks = [body] if isinstance(body, (bytes, bytearray, str)) else body
    for chunk in chunks:
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", "surrogatepass")
        while at and at[0] <= size + len(chunk):
            cut = at.pop(0) - size
            for ev in p.feed(chunk[:cut]):
                b.apply(ev)
            p.gap()
            b.errors.append(f"bytes missing from the stream at offset {size + cut} (capture gap)")
            size += cut
            chunk = chunk[cut:]
        size += len(chunk)
        for ev in p.feed(chunk):
            b.apply(ev)
    if p.pending:
        b.errors.append("stream ended inside an event")
    p.close()
    msg = b.finish()
    return Reconstruction(msg, b.errors, b.error, b.events, b.event_counts, b.stopped,
                          b.first_event_end, b.first_delta_end, b.last_event_end, size, b.truncated)
