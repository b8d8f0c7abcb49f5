"""Log lines -> records, with bounded memory.

``LineReader`` splits a growing JSONL file (read through a file descriptor, so it works on the log while
tracer still writes it) into whole lines. A line whose response part grows past ``RESPONSE_SPLIT`` bytes
(a big answer) keeps its whole request and only the first and last ``EDGE`` bytes of the response; any
line longer than ``max_line`` bytes keeps its first and last ``EDGE`` bytes. Either becomes a *partial
record* (``partial_record``):

- from the head, the request's and the response's small members, parsed with the standard JSON decoder
  member by member (timestamp, method, url, headers, the request body when it fits, status code) and, when
  the response body is an SSE stream, its first events (message id, model, input usage);
- from the tail, the record's last members (``logged_at``, ``note``, ``tracer``: timings, completeness,
  gaps) and the SSE stream's last events (stop reason, output usage).

Such a record carries ``"tracer.partial": True``; the span says ``tracer.partial_record``. Everything that
goes wrong reading is counted, never raised.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import orjson

from tracer.protocols.sse import MessageBuilder, SSEParser
from tracer.viewer.logs import loads

MAX_LINE = 8 << 20      # bytes; longer lines become partial records: a whole line is held and parsed (about
                        # twice its size in memory), so this bounds the exporter's peak; a Claude Code request
                        # with a full 1M-token context is about 4 MB
EDGE = 256 << 10        # head and tail kept of a longer line
READ_SIZE = 1 << 20
RESPONSE_SPLIT = 1 << 20  # an answer longer than this (after a whole request) is kept by its ends only
RESPONSE_KEY = b',"response":{"timestamp":'
REQUEST_KEY = b'{"request":'


@dataclass
class ReaderStats:
    lines: int = 0
    bytes: int = 0
    bad_lines: int = 0
    partial_records: int = 0


class LineReader:
    """Whole lines from a file descriptor, as they appear. ``read()`` returns what is complete now."""

    def __init__(self, fd: int, max_line: int = MAX_LINE, edge: int = EDGE):
        self.fd = fd
        self.max_line = max_line
        self.edge = edge
        self.stats = ReaderStats()
        self._buf = bytearray()
        self._long = False          # inside a line longer than max_line
        self._head = b""
        self._tail = bytearray()
        self._scan = 0              # where to look for the request's end next
        self._split: int | None = None   # where the (whole) request ends, once found
        self.at_eof = False         # the last read() reached the current end of the file

    def read(self, limit: int = 64 << 20) -> list[tuple[bytes, bytes | None]]:
        """[(line, None) for whole lines, or (head, tail) for an over-long line]; reads at most ``limit``
        bytes per call so a caller can interleave other work."""
        out: list[tuple[bytes, bytes | None]] = []
        got = 0
        self.at_eof = False
        while got < limit:
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except InterruptedError:
                continue
            if not chunk:
                self.at_eof = True
                break
            got += len(chunk)
            self.stats.bytes += len(chunk)
            self._feed(chunk, out)
        return out

    def _feed(self, chunk: bytes, out: list) -> None:
        start = 0
        while start < len(chunk):
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if self._long:
                self._tail += piece
                if len(self._tail) > self.edge:
                    del self._tail[:len(self._tail) - self.edge]
            else:
                self._buf += piece
                if len(self._buf) > RESPONSE_SPLIT and self._split_at_response():
                    pass
                elif len(self._buf) > self.max_line:
                    self._long = True
                    self._head = bytes(self._buf[:self.edge])
                    self._tail = bytearray(self._buf[-self.edge:])
                    self._buf = bytearray()
            if nl < 0:
                return
            self._end_line(out)
            start = nl + 1

    def _split_at_response(self) -> bool:
        """A long line whose request object is complete: keep the request and the response's head; the
        rest of the line only feeds the tail. The request's end is where ``,"response":{"timestamp":``
        follows a whole JSON object (the same text inside the request body would not close it)."""
        buf = self._buf
        while self._split is None:
            pos = buf.find(RESPONSE_KEY, self._scan)
            if pos < 0:
                self._scan = max(self._scan, len(buf) - len(RESPONSE_KEY))
                return False
            self._scan = pos + 1
            if not buf.startswith(REQUEST_KEY):
                return False
            try:
                orjson.loads(memoryview(buf)[len(REQUEST_KEY):pos])
            except orjson.JSONDecodeError:
                continue
            self._split = pos
        if len(buf) - self._split <= max(self.edge, RESPONSE_SPLIT):
            return False            # not a long answer (yet)
        self._long = True
        self._head = bytes(buf[:self._split + self.edge])
        self._tail = bytearray(buf[-self.edge:])
        self._buf = bytearray()
        return True

    def _end_line(self, out: list) -> None:
        self.stats.lines += 1
        self._scan, self._split = 0, None
        if self._long:
            out.append((self._head, bytes(self._tail)))
            self._long, self._head, self._tail = False, b"", bytearray()
        else:
            line, self._buf = self._buf, bytearray()     # handed over, not copied (orjson reads bytearrays)
            if line and not line.isspace():
                out.append((line, None))

    def flush_last(self) -> list[tuple[bytes, bytes | None]]:
        """End an unfinished last line (a file that does not end with a newline)."""
        out: list = []
        if self.pending():
            self._end_line(out)
        return out

    def pending(self) -> int:
        """Bytes of an unfinished last line."""
        return len(self._buf) + len(self._head) + len(self._tail)


def parse_line(item: tuple[bytes | bytearray, bytes | None], stats: ReaderStats) -> dict | None:
    line, tail = item
    if tail is not None:
        rec = partial_record(line, tail)
        if rec is None:
            stats.bad_lines += 1
        else:
            stats.partial_records += 1
        return rec
    try:
        rec = loads(line)
    except ValueError:
        stats.bad_lines += 1
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("request"), dict):
        stats.bad_lines += 1
        return None
    return rec


# ------------------------------------------------------------------------------------ partial records

_DEC = json.JSONDecoder()


def _members(text: str, pos: int) -> tuple[dict, int, str | None]:
    """Parse ``"key": value`` members of an object from ``pos`` (just after ``{``) while they are whole.
    Returns (members, position after the last whole member, key of the first member that was cut)."""
    out: dict = {}
    n = len(text)
    while pos < n:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "}":
            return out, pos + 1, None
        try:
            key, p = _DEC.raw_decode(text, pos)
        except ValueError:
            return out, pos, None
        while p < n and text[p] in " \t\r\n:":
            p += 1
        try:
            value, p2 = _DEC.raw_decode(text, p)
        except ValueError:
            return out, p, key if isinstance(key, str) else None
        out[key] = value
        pos = p2
    return out, pos, None


def _string_prefix(text: str, pos: int) -> str:
    """The decoded beginning of a JSON string value cut off before its closing quote (``pos`` at the quote)."""
    raw = text[pos + 1:]
    for cut in range(0, 8):          # drop a possibly cut escape sequence at the end
        try:
            return json.loads('"' + raw[:len(raw) - cut] + '"')
        except ValueError:
            continue
    return ""


def _sse_events(text: str, builder: MessageBuilder) -> None:
    p = SSEParser()
    for ev in p.feed(text.encode("utf-8", "replace")):
        builder.apply(ev)


def _tail_response(t: str, at: int):
    """The response object from the tail, when it lies whole between ``,"response":`` and the record's
    ``,"logged_at"`` (a request too big for the head, a response small enough for the tail)."""
    key = ',"response":'
    pos = t.rfind(key, 0, at)
    while pos >= 0:
        try:
            value = json.loads(t[pos + len(key):at])
        except ValueError:
            pos = t.rfind(key, 0, pos)
            continue
        if value is None or (isinstance(value, dict) and "status_code" in value):
            return True, value
        pos = t.rfind(key, 0, pos)
    return False, None


def _sse_tail(t: str, at: int) -> str:
    """The decoded end of an SSE ``body_raw`` that ends just before ``"},"logged_at"``, from an event
    boundary on."""
    body_end = t[:at]
    if not body_end.endswith('"}'):
        return ""
    esc = body_end[:-2]
    k = esc.find("\\n\\n")
    if k < 0:
        return ""
    try:
        return json.loads('"' + esc[k + 4:] + '"')
    except ValueError:
        return ""


def partial_record(head: bytes, tail: bytes) -> dict | None:
    """A record from the first and last bytes of a log line too long to parse whole."""
    h = head.decode("utf-8", "replace")
    if not h.startswith('{"request":{'):
        return None
    rec: dict = {"tracer.partial": True}
    req, pos, cut_key = _members(h, len('{"request":{'))
    rec["request"] = req
    t = tail.decode("utf-8", "replace")
    at = t.rfind(',"logged_at":')
    sse_head, body_cut = "", False
    if cut_key is None and h.startswith(',"response":', pos):
        if h.startswith(',"response":null', pos):
            rec["response"] = None
        elif h.startswith(',"response":{', pos):
            res, rpos, rcut = _members(h, pos + len(',"response":{'))
            rec["response"] = res
            body_cut = rcut in ("body_raw", "body")
            if rcut == "body_raw":
                sse_head = _string_prefix(h, rpos)
    elif at >= 0:
        found, res = _tail_response(t, at)
        if found:
            rec["response"] = res
    if at >= 0:
        try:
            end = json.loads("{" + t[at + 1:])
            if isinstance(end, dict):
                rec.update({k: v for k, v in end.items() if k in ("logged_at", "note", "tracer")})
        except ValueError:
            pass
        sse_tail = _sse_tail(t, at) if body_cut else ""
        if isinstance(rec.get("response"), dict) and (sse_head or sse_tail):
            b = MessageBuilder()
            _sse_events(sse_head, b)
            first_delta = b.first_delta_end
            _sse_events(sse_tail, b)
            msg = b.finish()
            if isinstance(msg, dict):
                # text of a huge answer is not rebuilt (its middle was skipped); tool calls and usage are
                msg["content"] = [c for c in msg.get("content", []) if isinstance(c, dict) and c.get("type") == "tool_use"]
                rec["response"]["body"] = msg
                rec["response"].pop("body_raw", None)
                rec["tracer.first_delta_end"] = first_delta
    if not isinstance(rec.get("tracer"), dict):
        rec["tracer"] = {"complete": False, "notes": ["record too large to read whole; its end was unreadable"]}
    return rec
