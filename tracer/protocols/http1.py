"""HTTP/1.x over one captured connection, as a sans-IO state machine on top of llhttp (httptools).

Both directions are fed as they were captured. Requests come from the client's side (WRITE for a traced
client; a traced server is recognised by its first bytes and handled with the roles swapped). Each
response is bound to the oldest request still waiting whose first byte came before the response's first
byte, so a response can never be paired with a request it did not answer.

A pair is written out once both its messages have ended: a server may answer (401, 413, ...) before it
has read the request body, and the body the client sends afterwards still belongs to the pair.

Capture gaps (ring-buffer overrun, the per-call copy limit) inside a body keep the message when its
framing allows, and the body gets a *hole* (``Message.holes``: where, how many bytes lost, how many
skipped to find the framing again):
- Content-Length body: the lost bytes are stepped over (llhttp is fed stand-ins that never reach the
  body), the framing is intact;
- chunked body: the rest of the current chunk is skipped up to the next chunk-size line that chains
  (``HEX\r\n`` + that many bytes + ``\r\n`` + another size line), then llhttp continues from there;
  the loss is the gap plus at most the chunk it ended in;
- a response body delimited by the connection's end: nothing to find, the body just has a hole.
A content-encoded body cannot be decoded past a hole: it keeps what was decoded up to it (decode_error
says so) and the rest of its bytes are skipped.

Other losses (a gap in a message head, a gap that may span the message's end, a side that starts
mid-message after attaching) drop that side into *desync*: bytes are skipped (and counted) until a
line that starts a message (`METHOD target HTTP/1.x` / `HTTP/1.x NNN`). Exchanges cut that way are
emitted as incomplete with the gap recorded; none is ever stitched together across a gap.
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

# Chunk-size line (RFC 9112 7.1: hex size, optional extensions, CRLF); the same cut short by a read.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]{0,1024})?\r\n")
_CHUNK_LINE_PART = re.compile(rb"[0-9A-Fa-f]{1,16}[ \t]*(?:;[^\r\n]{0,1024})?\r?")
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_TRAILERS = re.compile(rb"(?:%s+:[^\r\n]*\r\n){0,64}\r\n" % _TOKEN)           # after the last chunk
_TRAILERS_PART = re.compile(rb"(?:%s+:[^\r\n]*\r\n){0,64}(?:%s*(?::[^\r\n]*)?\r?)?" % (_TOKEN, _TOKEN))
RESYNC_MAX_CHUNK = 1 << 20   # after a gap, a chunk-size line claiming more is not trusted as a boundary
_START_PREFIXES = {True: tuple(m + b" " for m in METHODS), False: (b"HTTP/1.",)}
_SPLICE_HEAD = {True: b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                False: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"}


def looks_like_http1_request(data: bytes) -> bool:
    return REQ_START.match(data) is not None or (
        len(data) < 16 and any(m.startswith(data[:len(m)]) or data.startswith(m) for m in METHODS))


def looks_like_http1_response(data: bytes) -> bool:
    return RESP_START.match(data) is not None or (len(data) < 12 and b"HTTP/1."[:len(data)] == data[:7])


_BROKEN, _PENDING, _RESOLVED = 0, 1, 2
_WALK_CHUNKS = 3        # whole chunks that must chain before a boundary found after a gap is trusted


def _chunk_walk(buf, c: int) -> tuple[int, list[int]]:
    """Follow chunk-size lines from ``buf[c]``: (verdict, chunk starts reached). RESOLVED: _WALK_CHUNKS
    whole chunks chain (size line, that many bytes, CRLF), or the last chunk and its trailer section
    are reached; BROKEN: something on the way is not chunk framing; PENDING: plausible so far, more
    bytes needed."""
    starts = [c]
    while True:
        m = _CHUNK_LINE.match(buf, c)
        if m is None:
            partial = c == len(buf) or _CHUNK_LINE_PART.fullmatch(buf, c)
            return (_PENDING if partial else _BROKEN), starts
        size = int(m.group(1), 16)
        end = m.end() + size
        if size == 0:     # the last chunk: trailer fields (rare) and an empty line
            if _TRAILERS.match(buf, end):
                return _RESOLVED, starts
            partial = len(buf) - end < 8192 and _TRAILERS_PART.fullmatch(buf, end)
            return (_PENDING if partial else _BROKEN), starts
        if size > RESYNC_MAX_CHUNK:
            return _BROKEN, starts
        if len(buf) < end + 2:
            return (_PENDING if buf[end:] in (b"", b"\r") else _BROKEN), starts
        if buf[end:end + 2] != b"\r\n":
            return _BROKEN, starts
        c = end + 2
        starts.append(c)
        if len(starts) > _WALK_CHUNKS:
            return _RESOLVED, starts


def _find_chunk_boundary(buf, cands) -> tuple[str, int]:
    """Where llhttp can resume after a gap inside a chunked body: ("chunk", offset), ("wait", offset of
    the first candidate still undecided), or ("none", 0).

    The first candidate whose walk resolves wins -- the true framing never breaks, a reading that
    starts inside chunk data almost always does within a few chunks. In data made of CRLFs and hex
    digits a wrong reading may chain as well and join the true one later: when another candidate
    inside the winner's chunks resolves and meets its walk, resume where the two meet, so that no byte
    of framing ever lands in the body."""
    wait = None
    for n, c in enumerate(cands):
        if n > 4096:
            break
        verdict, starts = _chunk_walk(buf, c)
        if verdict == _PENDING and wait is None:
            wait = c
        if verdict != _RESOLVED:
            continue
        ahead = set(starts[1:])
        resume = c
        k = buf.find(b"\r\n", c)
        while 0 <= k and k + 2 < starts[-1]:
            c2 = k + 2
            if c2 not in ahead:
                v2, s2 = _chunk_walk(buf, c2)
                meet = next((x for x in s2[1:] if x in ahead), None)
                if v2 != _BROKEN and meet is not None and meet > resume:
                    resume = meet
            k = buf.find(b"\r\n", k + 1)
        return "chunk", resume
    return ("wait", wait) if wait is not None else ("none", 0)


def _chunk_candidates(buf, at_start: bool):
    if at_start:
        yield 0
        if buf[:1] == b"\n":
            yield 1
    k = buf.find(b"\r\n")
    while k >= 0:
        yield k + 2
        k = buf.find(b"\r\n", k + 1)


class _Abort(Exception):
    """Raised from a callback to stop llhttp (e.g. a pipelined response to HEAD)."""


class _Side:
    """One direction: an llhttp parser plus the resync scanner."""

    def __init__(self, owner: "Http1Connection", is_request: bool):
        self.owner = owner
        self.is_request = is_request
        self.pattern = REQ_START if is_request else RESP_START
        self.state = "start"          # start | sync | desync | chunks (after a gap in a chunked body) | dead
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
        self.in_body = False              # the current message's head is complete, its body is not
        self.skip_rest = False            # body bytes after a hole in an encoded body: counted, dropped
        self.hole: list[int] | None = None   # the body's latest hole (skipped bytes are added to it)
        self.splicing = False             # feeding llhttp a stand-in head to resume inside a chunked body
        self.chunk_at_start = False       # state "chunks": a chunk may begin at scan[0]

    # -- llhttp callbacks -------------------------------------------------------------------
    def on_message_begin(self):
        if self.splicing:
            return
        self.msg = Message(ts_ns=self.ts)
        self.head_bytes = 0
        self.body_wire = 0
        self.body_offset = 0
        self.chunked = False
        self.has_length = False
        self.in_body = False
        self.skip_rest = False
        self.hole = None
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
        if not self.splicing:
            self.msg.target += url.decode("latin-1")

    def on_status(self, status: bytes):
        if not self.splicing:
            self.msg.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes):
        if self.splicing:
            return
        n = name.decode("latin-1")
        v = value.decode("latin-1")
        self.msg.headers.append((n, v))
        self.head_bytes += len(name) + len(value) + 4

    def on_headers_complete(self):
        if self.splicing:
            return
        p = self.parser
        m = self.msg
        self.in_body = True
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
            if self.decoder.error:      # an unknown coding: the body is kept as received
                m.decode_error = self.decoder.error
                self.decoder = None
        progress = self.owner.progress
        if progress is not None and not self.is_request:
            progress.response_head(self.owner.conn, None, self.ex.request if self.ex else None, m)

    def on_body(self, body: bytes):
        m = self.msg
        if self.filling:
            self.body_wire += len(body)       # stand-in bytes for a capture gap: keep framing, drop data
            return
        if self.skip_rest:
            self.body_wire += len(body)
            self.owner.stats.skipped_bytes += len(body)
            self.hole[2] += len(body)
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
        self.in_body = False
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
        """Bytes lost inside a Content-Length body: step llhttp over them with stand-in bytes that never
        reach the body, so the message boundary and the pairing survive."""
        m = self.msg
        if m is None or self.parser is None or self.chunked or not self.has_length or self.head_only:
            return False
        try:
            remaining = int(m.header("content-length")) - self.body_wire
        except ValueError:
            return False
        if not 0 < nbytes <= remaining:
            return False
        self.mark_hole(nbytes)
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

    def mark_hole(self, nbytes: int) -> None:
        """The body loses ``nbytes`` here. An encoded body cannot be decoded past it: what was decoded
        stays, the rest of its bytes are skipped (and counted)."""
        m = self.msg
        self.hole = m.hole(nbytes)
        if self.decoder is not None:
            self.decoder = None
            self.skip_rest = True
            m.decode_error = (f"capture lost bytes of the {m.content_encoding}-encoded body: decoded up "
                              f"to byte {m.body.size}, the rest could not be decoded")

    def start_chunk_resync(self, nbytes: int) -> None:
        """A gap inside a chunked body: look for the next chunk boundary (see ``_scan_chunks``)."""
        self.mark_hole(nbytes)
        self.parser = None
        self.scan.clear()
        self.chunk_at_start = True     # the gap may have ended exactly where a chunk begins
        self.state = "chunks"

    def drop_scan(self) -> None:
        """Bytes held while resynchronising are given up: skipped, counted (in the hole too)."""
        n = len(self.scan)
        if n:
            self.owner.stats.skipped_bytes += n
            if self.state == "chunks" and self.hole is not None:
                self.hole[2] += n
            else:
                self.resynced_skip += n
            self.scan.clear()

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
        if self.state == "chunks":
            data = self._scan_chunks(data)
            if data is None:
                return
        if self.state == "desync":
            data = self._scan(data)
            if data is None:
                return
        self._feed_sync(data)

    def _scan_chunks(self, data: bytes) -> bytes | None:
        """After a gap inside a chunked body: skip to the next chunk boundary (``_find_chunk_boundary``)
        and resume llhttp there on a parser primed with a stand-in head -- or, if a message start line
        comes first, the message ended inside the gap. Candidates: where the gap ended (and one byte on
        if that is the LF of a CRLF whose CR was lost), then after every CRLF. None: need more bytes."""
        buf = self.scan
        buf += data
        cands = list(_chunk_candidates(buf, self.chunk_at_start))
        # a message start line before the first boundary candidate that could be one
        for c in cands:
            if _chunk_walk(buf, c)[0] != _BROKEN:
                break
            start = self._message_start(buf, c)
            if start is None:
                self._skip_scan(c)
                self.chunk_at_start = True
                return None
            if start:
                self._skip_scan(c)
                rest = bytes(buf)
                buf.clear()
                self.state = "sync"
                self.abandon(f"the end of this {'request' if self.is_request else 'response'} "
                             "was lost in a capture gap")
                return rest
        how, at = _find_chunk_boundary(buf, cands)
        if how == "wait" and len(buf) - at > 4 * RESYNC_MAX_CHUNK:
            how, at = _find_chunk_boundary(buf, [c for c in cands if c > at])
        if how == "none":
            self._skip_scan(max(len(buf) - 1, 0))   # keep a trailing CR: its LF may come next
            self.chunk_at_start = False
            return None
        self._skip_scan(at)
        self.chunk_at_start = True
        if how == "wait":
            return None
        rest = bytes(buf)
        buf.clear()
        self.state = "sync"
        self._new_parser()
        self.splicing = True
        try:
            self.parser.feed_data(_SPLICE_HEAD[self.is_request])
        finally:
            self.splicing = False
        return rest

    def _message_start(self, buf, c: int) -> bool | None:
        """Does a message start line (of this side's kind) begin at ``buf[c]``? None: maybe, the
        line is not complete yet."""
        if self.pattern.match(buf, c):
            return True
        if buf.find(b"\n", c, c + 8192) >= 0 or len(buf) - c >= 8192:
            return False
        tail = bytes(buf[c:c + 16])
        return None if any(tail.startswith(p) or p.startswith(tail)
                           for p in _START_PREFIXES[self.is_request]) else False

    def _skip_scan(self, n: int) -> None:
        if n:
            del self.scan[:n]
            self.owner.stats.skipped_bytes += n
            self.hole[2] += n

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
        """Bytes lost in capture. Inside a body whose framing survives, the pair keeps its body with a
        hole (see the module docstring). Otherwise whole messages may be among them, so nothing
        waiting can be paired safely any more: every open exchange is emitted, incomplete."""
        self.stats.gap_bytes += nbytes
        dname = "write" if direction == Direction.WRITE else "read"
        side = self._req if direction == self.req_dir else self._resp
        side.ts = ts_ns
        ex = side.ex
        how = self._hole_kind(side, nbytes) if ex is not None else None
        if how is not None:
            what = "request" if side.is_request else "response"
            ex.gaps.append((dname, nbytes))
            ex.notes.append(f"capture lost {nbytes} bytes of this {what} body; body has a hole{how}")
            return self._drain()
        note = f"capture lost {nbytes} bytes ({dname}); pair incomplete"
        for side in (self._req, self._resp):
            side.ts = ts_ns
            if side.ex is not None and (dname, nbytes) not in side.ex.gaps:
                side.ex.gaps.append((dname, nbytes))
            side.drop_scan()     # held while resynchronising: dropped, counted
            side.abandon(note)
            side.state = "desync"
        for ex in self._pending:
            if (dname, nbytes) not in ex.gaps:
                ex.gaps.append((dname, nbytes))
            if note not in ex.notes:
                ex.notes.append(note)
        self._flush_pending("")
        return self._drain()

    def _hole_kind(self, side: _Side, nbytes: int) -> str | None:
        """If ``nbytes`` lost now fall inside ``side``'s current body and its framing survives, mark
        the hole and return how the body goes on (text for the note); else None."""
        if side.state == "chunks":          # another gap while looking for a chunk boundary
            side.drop_scan()
            side.hole = side.msg.hole(nbytes)
            side.chunk_at_start = True
            return "; resynchronised at the next chunk"
        if side.state != "sync" or side.msg is None or not side.in_body:
            return None
        if side.fill_gap(nbytes):
            return ""
        if side.chunked and side.parser is not None and self._gap_stays_in(side):
            side.start_chunk_resync(nbytes)
            return "; resynchronised at the next chunk"
        m = side.msg
        if (not side.is_request and not side.chunked and not side.has_length and m.status >= 200
                and m.status not in (204, 304)):
            side.mark_hole(nbytes)          # the body runs to the connection's end anyway
            return ""
        return None

    def _gap_stays_in(self, side: _Side) -> bool:
        """Can the bytes after a gap in ``side``'s chunked body only belong to that same message? A
        client sends its next request only after the response; a server answers only what was asked."""
        ex = side.ex
        if side.is_request:
            return ex.response is None or not ex.response.complete
        return bool(self._pending) and self._pending[-1] is ex

    def close(self, reason: str, ts_ns: int) -> list[Exchange]:
        for side in (self._req, self._resp):
            side.ts = ts_ns
            side.drop_scan()   # bytes held while resynchronising: never a message start, so skipped
            if side.msg is not None:
                m = side.msg
                if (not side.is_request and not side.chunked and not side.has_length
                        and m.status >= 200 and m.status not in (204, 304)):
                    side._finish(complete=True)   # body delimited by the connection's end
                else:
                    what = "request" if side.is_request else "response"
                    side.abandon(f"connection ended ({reason}) before the {what} was complete")
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
        resp = self._resp
        if resp.state == "chunks":
            # A new request means the client had the whole previous response: its end was in the gap.
            resp.drop_scan()
            resp.abandon("the end of the response was lost in a capture gap")
            resp.state = "desync"
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
        if self.progress is not None and msg.complete:
            self.progress.request_done(self.conn, None, msg)
        # Normally the pair waits for its response. A response that was complete before the request
        # ended (the server answered before reading the whole body): the pair is finished now.
        if ex is not None and ex.response is not None and ex.response.complete and ex in self._pending:
            self._emit_through(ex)

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
        if self._req.ex is ex:
            return   # the request is still being sent: written out when it ends (_request_done)
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
