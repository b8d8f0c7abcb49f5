"""HTTP/1.x over one captured connection, as a sans-IO state machine on top of llhttp (httptools).

Both directions are fed as they were captured. Requests come from the client's side (WRITE for a traced
client; a traced server is recognised by its first bytes and handled with the roles swapped). Each
response is bound to the oldest request still waiting whose first byte came before the response's first
byte, so a response can never be paired with a request it did not answer.

Resynchronisation: a side that starts mid-message (attach to a live connection) or loses bytes (ring
buffer overrun) drops into *desync*: bytes are skipped (and counted) until a line that starts a message
(`METHOD target HTTP/1.x` / `HTTP/1.x NNN`). Exchanges cut by a gap are emitted as incomplete with the
gap recorded; none is ever stitched together across a gap.
"""

from __future__ import annotations

import re
from collections import deque

import httptools

from tracer.protocols.base import (Body, ConnInfo, Direction, Exchange, Message, ParserStats, Progress)
from tracer.protocols.encoding import DEFAULT_CAP, StreamDecoder

METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE")
REQ_START = re.compile(rb"(?:GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE) [!-~]+ HTTP/1\.[01]\r?\n")
RESP_START = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9][^\r\n]*\r?\n")
_SCAN_KEEP = 64  # bytes kept across feeds while scanning, so a start line split over two reads is found


def looks_like_http1_request(data: bytes) -> bool:
    return REQ_START.match(data) is not None or (
        len(data) < 16 and any(m.startswith(data[:len(m)]) or data.startswith(m) for m in METHODS))


def looks_like_http1_response(data: bytes) -> bool:
    return RESP_START.match(data) is not None or (len(data) < 12 and b"HTTP/1."[:len(data)] == data[:7])


class _Abort(Exception):
    """Raised from a callback to stop llhttp (e.g. a pipelined response to HEAD)."""


class _Side:
    """One direction: an llhttp parser plus the resync scanner."""

    def __init__(self, owner: "Http1Connection", is_request: bool):
        self.owner = owner
        self.is_request = is_request
        self.pattern = REQ_START if is_request else RESP_START
        self.state = "start"          # start | sync | desync | dead
        self.scan = bytearray()
        self.parser = None
        self.msg: Message | None = None
        self.ex: Exchange | None = None   # exchange the current message belongs to (None: orphan)
        self.decoder: StreamDecoder | None = None
        self.ts = 0
        self.head_bytes = 0
        self.body_wire = 0
        self.body_offset = 0
        self.chunked = False
        self.has_length = False
        self.head_only = bytearray()      # manual head parse (response to HEAD)
        self.reset_parser = False
        self.filling = False
        self.in_head_only = False
        self.resynced_skip = 0            # bytes skipped before the message now starting
        self._cur_name = b""

    # -- llhttp callbacks -------------------------------------------------------------------
    def on_message_begin(self):
        self.msg = Message(ts_ns=self.ts)
        self.head_bytes = 0
        self.body_wire = 0
        self.body_offset = 0
        self.chunked = False
        self.has_length = False
        self.decoder = None
        if self.is_request:
            self.ex = self.owner._new_exchange(self.msg)
            if self.resynced_skip:
                self.ex.notes.append(f"first message after skipping {self.resynced_skip} bytes "
                                     "(attached mid-stream or after a capture gap)")
                self.resynced_skip = 0
        else:
            self.ex = self.owner._bind_response(self.msg)
            if self.ex is not None and self.ex.request.method == "HEAD" and not self.in_head_only:
                # a response to HEAD has no body but may announce a length, and llhttp cannot be told.
                # At a message boundary _feed_sync parses it by hand; reaching here means it was
                # pipelined behind another response inside one read: give up on this stretch.
                raise _Abort("response to HEAD pipelined behind another response; skipped")

    def on_url(self, url: bytes):
        self.msg.target += url.decode("latin-1")

    def on_status(self, status: bytes):
        self.msg.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes):
        n = name.decode("latin-1")
        v = value.decode("latin-1")
        self.msg.headers.append((n, v))
        self.head_bytes += len(name) + len(value) + 4

    def on_headers_complete(self):
        p = self.parser
        m = self.msg
        m.http_version = p.get_http_version()
        if self.is_request:
            m.method = p.get_method().decode("latin-1")
            m.authority = m.header("host")
            self.head_bytes += len(m.method) + len(m.target) + 12
        else:
            m.status = p.get_status_code()
            self.head_bytes += 13 + len(m.reason) + 2
        self.head_bytes += 2
        te = m.header("transfer-encoding").lower()
        self.chunked = "chunked" in te
        self.has_length = bool(m.header("content-length"))
        m.content_encoding = m.header("content-encoding")
        if m.content_encoding:
            self.decoder = StreamDecoder(m.content_encoding, self.owner.max_decoded_body)
            if self.decoder.error:
                m.decode_error = self.decoder.error
        progress = self.owner.progress
        if progress is not None and not self.is_request:
            progress.response_head(self.owner.conn, None, self.ex.request if self.ex else None, m)

    def on_body(self, body: bytes):
        m = self.msg
        if self.filling:
            self.body_offset += len(body)     # stand-in bytes for a capture gap: keep framing, drop data
            self.body_wire += len(body)
            return
        if not m.first_body_ts_ns:
            m.first_body_ts_ns = self.ts
        if not self.is_request and self.ex is not None:
            bt = self.ex.body_times
            if len(bt) < self.owner.max_chunk_times and (not bt or bt[-1][1] != self.ts):
                bt.append((self.body_offset, self.ts))
            progress = self.owner.progress
            if progress is not None:
                progress.response_data(self.owner.conn, None, self.ex.request, body, self.ts)
        self.body_offset += len(body)
        self.body_wire += len(body)
        if self.decoder is not None:
            out = self.decoder.feed(body)
            if self.decoder.error and not m.decode_error:
                m.decode_error = self.decoder.error
                self.owner.stats.decode_errors += 1
            m.body.append(out)
        else:
            m.body.append(body)

    def on_message_complete(self):
        self._finish(complete=True)
        if not self.is_request:
            self.reset_parser = True   # next response starts on a fresh parser (see _feed_sync)

    # -- helpers ----------------------------------------------------------------------------
    def _finish(self, complete: bool, note: str = ""):
        m = self.msg
        if m is None:
            return
        if self.decoder is not None and complete:
            m.body.append(self.decoder.flush())
            if self.decoder.error and not m.decode_error:
                m.decode_error = self.decoder.error
                self.owner.stats.decode_errors += 1
            m.decoded_truncated_at = self.decoder.truncated_at
        m.complete = complete
        m.end_ts_ns = self.ts
        m.wire_bytes = self.head_bytes + self.body_wire
        ex, self.ex, self.msg, self.decoder = self.ex, None, None, None
        if note and ex is not None:
            ex.notes.append(note)
        if self.is_request:
            self.owner._request_done(ex, m)
        else:
            self.owner._response_done(ex, m)

    def fill_gap(self, nbytes: int) -> bool:
        """Bytes lost inside a Content-Length body (not content-encoded): step llhttp over them with
        stand-in bytes that never reach the body, so the message boundary and the pairing survive."""
        m = self.msg
        if (m is None or self.parser is None or self.chunked or not self.has_length
                or self.decoder is not None or self.head_only):
            return False
        try:
            remaining = int(m.header("content-length")) - self.body_wire
        except ValueError:
            return False
        if not 0 < nbytes <= remaining:
            return False
        self.filling = True
        try:
            left = nbytes
            while left:
                n = min(left, 1 << 16)
                self.parser.feed_data(bytes(n))
                left -= n
        except httptools.HttpParserError:
            return False
        finally:
            self.filling = False
        return True

    def abandon(self, note: str):
        """The message in progress cannot be finished (gap, parse error): hand it over as incomplete."""
        if self.msg is not None:
            self._finish(complete=False, note=note)
        self.parser = None
        self.head_only.clear()

    def _new_parser(self):
        self.parser = (httptools.HttpRequestParser(self) if self.is_request
                       else httptools.HttpResponseParser(self))

    # -- feeding ----------------------------------------------------------------------------
    def feed(self, data: bytes, ts: int):
        self.ts = ts
        if self.state == "dead":
            self.owner.stats.skipped_bytes += len(data)
            return
        if self.state == "start":
            probe = looks_like_http1_request if self.is_request else looks_like_http1_response
            self.state = "sync" if probe(data[:64]) else "desync"
        if self.state == "desync":
            data = self._scan(data)
            if data is None:
                return
        self._feed_sync(data)

    def _scan(self, data: bytes) -> bytes | None:
        """Skip to the next message start: at a line start, or where a captured write/read began
        (a message after a Content-Length body need not follow a newline)."""
        buf = self.scan
        boundary = len(buf)
        buf += data
        pos = 0
        while True:
            m = self.pattern.search(buf, pos)
            if m is None:
                break
            i = m.start()
            if i == 0 or i == boundary or buf[i - 1] == 0x0A:
                self.owner.stats.skipped_bytes += i
                self.resynced_skip += i
                rest = bytes(buf[i:])
                buf.clear()
                self.state = "sync"
                return rest
            pos = i + 1
        keep = min(len(buf), _SCAN_KEEP)
        self.owner.stats.skipped_bytes += len(buf) - keep
        self.resynced_skip += len(buf) - keep
        del buf[:len(buf) - keep]
        return None

    def _feed_sync(self, data: bytes):
        while data:
            if not self.is_request and self.msg is None:
                if self.head_only or self.owner._next_is_head():
                    data = self._feed_head_only(data)
                    continue
            if self.parser is None:
                self._new_parser()
            try:
                self.parser.feed_data(data)
                data = b""
            except httptools.HttpParserUpgrade:
                self.abandon("connection upgraded; not HTTP/1.x any more")
                self.state = "dead"
                self.owner.stats.not_http += 1
                return
            except httptools.HttpParserError as e:
                cause = e.__context__
                why = str(cause) if isinstance(cause, _Abort) else f"HTTP/1.x parse error: {e}"
                self.owner.stats.parse_errors += 1
                self.abandon(why)
                self.state = "desync"
                # resume at the next plausible message start after this chunk's first byte
                data = self._scan(data[1:]) or b""
            if self.reset_parser:
                self.reset_parser = False
                if self.msg is None:
                    self.parser = None

    def _feed_head_only(self, data: bytes) -> bytes:
        """Response to HEAD: parse the head with llhttp, skip any announced body."""
        self.head_only += data
        end = self.head_only.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head_only) > (1 << 20):
                self.owner.stats.parse_errors += 1
                self.head_only.clear()
                self.state = "desync"
            return b""
        head = bytes(self.head_only[:end + 4])
        rest = bytes(self.head_only[end + 4:])
        self.head_only.clear()
        self._new_parser()
        self.in_head_only = True
        try:
            self.parser.feed_data(head)
        except httptools.HttpParserError:
            self.owner.stats.parse_errors += 1
        finally:
            self.in_head_only = False
        if self.msg is not None:
            self._finish(complete=True)
        self.parser = None
        return rest


class Http1Connection:
    """ConnectionParser for HTTP/1.0 and HTTP/1.1 (see tracer.protocols.base)."""

    protocol = "http/1.1"
    progress: Progress | None = None     # live observer (see base.Progress); set by the pipeline

    def __init__(self, conn: ConnInfo, *, max_decoded_body: int = DEFAULT_CAP,
                 max_chunk_times: int = 100_000):
        self.conn = conn
        self.stats = ParserStats()
        self.max_decoded_body = max_decoded_body
        self.max_chunk_times = max_chunk_times
        self.req_dir = Direction.WRITE
        self.resp_dir = Direction.READ
        self._roles_known = False
        self._req = _Side(self, True)
        self._resp = _Side(self, False)
        self._pending: deque[Exchange] = deque()   # in request order, waiting for their response
        self._out: list[Exchange] = []

    # -- ConnectionParser -------------------------------------------------------------------
    def feed(self, direction: Direction, data: bytes, ts_ns: int) -> list[Exchange]:
        if not data:
            return []
        if not self._roles_known:
            self._decide_roles(direction, data)
        side = self._req if direction == self.req_dir else self._resp
        side.feed(data, ts_ns)
        return self._drain()

    def gap(self, direction: Direction, nbytes: int, ts_ns: int) -> list[Exchange]:
        """Bytes lost in capture. Whole messages may be among them, so nothing waiting can be
        paired safely any more: every open exchange is emitted, incomplete, with the gap."""
        self.stats.gap_bytes += nbytes
        dname = "write" if direction == Direction.WRITE else "read"
        note = f"capture lost {nbytes} bytes ({dname}); pair incomplete"
        side = self._req if direction == self.req_dir else self._resp
        ex = side.ex
        if ex is not None and side.state == "sync" and side.fill_gap(nbytes):
            # the hole lies inside one Content-Length body: this pair keeps its partner, with the gap
            ex.gaps.append((dname, nbytes))
            ex.notes.append(f"capture lost {nbytes} bytes of this "
                            f"{'request' if side.is_request else 'response'} body; body has a hole")
            return self._drain()
        for side in (self._req, self._resp):
            side.ts = ts_ns
            if side.ex is not None and (dname, nbytes) not in side.ex.gaps:
                side.ex.gaps.append((dname, nbytes))
            side.abandon(note)
            side.state = "desync"
            self.stats.skipped_bytes += len(side.scan)   # held while resynchronising: dropped, counted
            side.scan.clear()
        for ex in self._pending:
            if (dname, nbytes) not in ex.gaps:
                ex.gaps.append((dname, nbytes))
            if note not in ex.notes:
                ex.notes.append(note)
        self._flush_pending("")
        return self._drain()

    def close(self, reason: str, ts_ns: int) -> list[Exchange]:
        for side in (self._req, self._resp):
            side.ts = ts_ns
            if side.msg is not None:
                m = side.msg
                if (not side.is_request and not side.chunked and not side.has_length
                        and m.status >= 200 and m.status not in (204, 304)):
                    side._finish(complete=True)   # body delimited by the connection's end
                else:
                    side.abandon(f"connection ended ({reason}) before the message was complete")
            if side.scan:   # bytes held while looking for a message start: never one, so skipped
                self.stats.skipped_bytes += len(side.scan)
                side.resynced_skip += len(side.scan)
                side.scan.clear()
        self._flush_pending(f"no response: connection ended ({reason})")
        return self._drain()

    # -- callbacks from the sides -----------------------------------------------------------
    def _decide_roles(self, direction: Direction, data: bytes):
        head = data[:64]
        if looks_like_http1_response(head) and not looks_like_http1_request(head):
            # the first thing this side says is a response: it is the server, roles swap
            self.req_dir = Direction.READ if direction == Direction.WRITE else Direction.WRITE
            self.resp_dir = direction
        else:
            self.req_dir = direction if looks_like_http1_request(head) else Direction.WRITE
            self.resp_dir = Direction.READ if self.req_dir == Direction.WRITE else Direction.WRITE
        self._roles_known = True

    def _new_exchange(self, msg: Message) -> Exchange:
        ex = Exchange(conn=self.conn, request=msg, protocol=self.protocol)
        self._pending.append(ex)
        return ex

    def _next_is_head(self) -> bool:
        for ex in self._pending:
            if ex.response is None:
                return ex.request.method == "HEAD"
        return False

    def _bind_response(self, msg: Message) -> Exchange | None:
        for ex in self._pending:
            if ex.response is None:
                if ex.request.ts_ns <= msg.ts_ns:
                    ex.response = msg
                    return ex
                break
        return None

    def _request_done(self, ex: Exchange | None, msg: Message):
        # stays pending until its response completes
        if self.progress is not None and msg.complete:
            self.progress.request_done(self.conn, None, msg)

    def _response_done(self, ex: Exchange | None, msg: Message):
        if ex is None:
            # a response to a request we never saw (attach mid-stream, or after a gap)
            self.stats.skipped_bytes += msg.wire_bytes
            msg.body.close()
            return
        if 100 <= msg.status < 200 and msg.complete:
            ex.notes.append(f"interim response {msg.status} {msg.reason}".strip())
            ex.response = None
            msg.body.close()
            return
        self._emit_through(ex)

    def _emit_through(self, ex: Exchange):
        # responses complete in order: everything before ex lost its response
        while self._pending:
            head = self._pending.popleft()
            if head is ex:
                self._out.append(ex)
                return
            head.notes.append("no response seen for this request")
            self._out.append(head)

    def _flush_pending(self, note: str):
        while self._pending:
            ex = self._pending.popleft()
            if note and ex.response is None:
                ex.notes.append(note)
            self._out.append(ex)

    def _drain(self) -> list[Exchange]:
        out, self._out = self._out, []
        self.stats.exchanges += len(out)
        return out
