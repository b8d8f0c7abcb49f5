"""HTTP/2 connection parser: a passive observer of both directions of one connection.

We are not an endpoint, so no h2 state machine: hyperframe does the framing
(``Frame.parse_frame_header`` / ``parse_body``) and one HPACK decoder per direction (a subclass of
``hpack.Decoder``, each fed only the header blocks that direction sent, in wire order) rebuilds the
header lists. Every stream becomes one :class:`~tracer.protocols.base.Exchange`.

    p = Http2Connection(conn)
    for ex in p.feed(Direction.WRITE, data, ts_ns): ...
    for ex in p.gap(Direction.READ, nbytes, ts_ns): ...
    for ex in p.close("exit", ts_ns): ...

Which side is the client: known from the connection preface (the side that sends it) or from a
readable pseudo-header (``:method`` comes from the client, ``:status`` from the server); guessed from a
non-ACK SETTINGS as a side's very first frame (the server preface), from which side ended a stream
first, or by default (the traced process, WRITE, is the client). Streams created on a guess (DATA seen
before any readable header block, after attaching) are re-assigned when certainty arrives, and are not
written out on one END_STREAM alone while roles are only guessed.

Frame boundaries in bytes that did not start at one (attached mid-connection, or after a gap): a chain
of plausible frame headers (known type and flags, stream-id and length rules, odd stream ids below
2**20, no empty DATA without END_STREAM, ...), 2 frames long where a captured chunk began (SSL_write
output is frame-aligned), else 4 long or 2 ending exactly where the captured bytes end.
``looks_like_h2_frames`` (chunk starts with frames) and ``h2_frames_offset`` (frames start somewhere
inside) expose the same test to a dispatcher.

Unknown HPACK state (attached to a live connection, or bytes lost in a capture gap). HPACK inserts new
entries at the *front* of the dynamic table and evicts from the back, so if a decoder starts with an
empty table at some point and then sees every header block the sender emits after that point, its
table is always a front slice of the sender's real table: every index it has maps to the right entry,
and an index beyond its end refers to an entry inserted before we started looking. Such fields (and
literals whose *name* is such an index) are counted in ``Message.unknown_headers`` and left out of the
record; everything else in the block is decoded exactly. A block with any unknown field counts in
``ParserStats.unknown_header_blocks``. Eviction bookkeeping may drift when the names of unknown
entries are unknown, but drift only ever keeps extra entries at the back (never referenced by the
sender) or drops entries (then reported unknown) -- it never produces a wrong header. A gap that
loses header-block bytes restarts that direction's table empty, with the same guarantee.

Gaps: bytes lost strictly inside one frame's payload keep the framing (we know how many were lost):
a DATA frame loses just those body bytes (the stream gets a gap entry), a header block becomes
unknown. A gap that crosses a frame boundary loses the framing: that direction resynchronises on the
next plausible frame-header chain, its HPACK table restarts, and every
stream still open in that direction gets a gap entry and a note. Such streams stay open (their later
frames still carry their stream id, so the rest of the body lands in the same record); one that sees
no frame for ``stale_after_s`` seconds of capture time afterwards is written out as incomplete.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass, field

from hpack import Decoder as _HpackDecoder
from hpack import HPACKDecodingError, InvalidTableIndex
from hpack.exceptions import HPACKError
from hpack.hpack import decode_integer
from hpack.huffman_table import decode_huffman
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, RstStreamFrame, SettingsFrame

from tracer.protocols.base import Body, ConnInfo, Direction, Exchange, Message, ParserStats, Progress
from tracer.protocols.encoding import DEFAULT_CAP, decode_body

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DEFAULT_MAX_DECODED_BODY = DEFAULT_CAP

# type -> (allowed flag bits, stream id rule: 1 must be non-zero, 0 must be zero, None either,
#          length rule: exact int, ("min", n), ("mul", n) or None)
_FRAME_RULES: dict[int, tuple[int, int | None, object]] = {
    0x0: (0x01 | 0x08, 1, None),                   # DATA: END_STREAM, PADDED
    0x1: (0x01 | 0x04 | 0x08 | 0x20, 1, None),     # HEADERS: END_STREAM, END_HEADERS, PADDED, PRIORITY
    0x2: (0x00, 1, 5),                             # PRIORITY
    0x3: (0x00, 1, 4),                             # RST_STREAM
    0x4: (0x01, 0, ("mul", 6)),                    # SETTINGS
    0x5: (0x04 | 0x08, 1, ("min", 4)),             # PUSH_PROMISE
    0x6: (0x01, 0, 8),                             # PING
    0x7: (0x00, 0, ("min", 8)),                    # GOAWAY
    0x8: (0x00, None, 4),                          # WINDOW_UPDATE
    0x9: (0x04, 1, None),                          # CONTINUATION
    0xA: (0x00, None, ("min", 2)),                 # ALTSVC (RFC 7838)
    0xC: (0x00, 0, None),                          # ORIGIN (RFC 8336)
    0x10: (0x00, 0, ("min", 4)),                   # PRIORITY_UPDATE (RFC 9218)
}
_SYNC_MAX_FRAME = 16384        # the default SETTINGS_MAX_FRAME_SIZE; used when guessing boundaries
_MAX_FRAME = (1 << 24) - 1
_HDR = struct.Struct(">HBBBL")

_START, _FRAMES, _SYNC = 0, 1, 2
_PROBATION = 16


def looks_like_h2(data: bytes) -> bool:
    """True when ``data`` starts with the HTTP/2 client connection preface (or a prefix of it, >= 4 bytes)."""
    data = bytes(data[:len(PREFACE)])
    if len(data) >= len(PREFACE):
        return data == PREFACE
    return len(data) >= 4 and PREFACE.startswith(data)


def _frame_len(data, off: int, max_len: int, strict: bool = False) -> int | None:
    """Total size (header + payload) of the frame whose header starts at ``off``, or None if implausible.

    ``strict`` (used to find frame boundaries in unsynchronised bytes) also rejects frames that are
    legal but that real peers (practically) do not send: empty DATA without END_STREAM, empty header
    fragments, a zero WINDOW_UPDATE increment, padding longer than the frame, stream frames on even
    (server-push) stream ids or on ids beyond 2**20."""
    hi, lo, typ, flags, sid = _HDR.unpack_from(data, off)
    length = (hi << 8) | lo
    if length > max_len or strict and sid & 0x80000000:   # the reserved bit is ignored when synced
        return None
    sid &= 0x7FFFFFFF
    rule = _FRAME_RULES.get(typ)
    if rule is None:
        return None
    allowed, sid_rule, len_rule = rule
    if strict and flags & ~allowed:     # receivers must ignore unknown flags; only guessing rejects them
        return None
    if sid_rule == 1 and sid == 0 or sid_rule == 0 and sid != 0:
        return None
    if isinstance(len_rule, int):
        if length != len_rule:
            return None
    elif len_rule is not None:
        kind, n = len_rule
        if kind == "min" and length < n or kind == "mul" and length % n:
            return None
    if typ == 0x4 and flags & 0x1 and length:   # SETTINGS ACK carries nothing
        return None
    if strict:
        if length == 0 and (typ in (0x1, 0x9) or typ == 0x0 and not flags & 0x1):
            return None
        if typ == 0x8 and off + 13 <= len(data) and not int.from_bytes(data[off + 9:off + 13], "big"):
            return None
        if typ in (0x0, 0x1, 0x3, 0x9) and (not sid & 1 or sid >= 1 << 20):
            return None
        if typ in (0x0, 0x1) and flags & 0x8 and (
                not length or off + 9 < len(data) and data[off + 9] >= length):
            return None
    return 9 + length


def _chain(data, off: int, max_len: int = _SYNC_MAX_FRAME) -> tuple[bool, int, bool]:
    """Walk frame headers from ``off``: (all plausible, complete frames, ends exactly at the end)."""
    n = 0
    end = len(data)
    while off + 9 <= end:
        size = _frame_len(data, off, max_len, strict=True)
        if size is None:
            return False, n, False
        off += size
        if off > end:
            return True, n, False
        n += 1
    return True, n, off == end


def looks_like_h2_frames(data: bytes) -> bool:
    """Heuristic for a connection already running when we attached: ``data`` starts with a plausible
    sequence of HTTP/2 frame headers (known type, valid flags, stream-id and length rules, lengths
    within the default maximum frame size), chained by their lengths up to the end of ``data``."""
    if len(data) < 9:
        return False
    ok, n, _ = _chain(memoryview(data), 0)
    return ok and (n >= 1 or _frame_len(data, 0, _SYNC_MAX_FRAME, strict=True) is not None)


def h2_frames_offset(data: bytes) -> int | None:
    """Where a confident chain of HTTP/2 frames starts inside ``data`` (a chunk that may begin in the
    middle of a frame, e.g. the first SSL_read after attaching), or None. Confident: 4 plausible
    frames chained by their lengths, or 2 that end exactly at the end of ``data``."""
    mv = memoryview(data)
    try:
        off = 0
        while off + 9 <= len(data):
            ok, n, exact = _chain(mv, off)
            if ok and (n >= 4 or exact and n >= 2):
                return off
            nxt = data.find(b"\x00", off + 1)
            off = nxt if nxt >= 0 else len(data)
        return None
    finally:
        mv.release()


class _Unknown(bytes):
    """Name of a dynamic-table entry whose name we never saw (it referenced an older entry)."""


_UNKNOWN_NAME = _Unknown(b"")


class _ObserverDecoder(_HpackDecoder):
    """hpack's decoder plus a field-by-field fallback that tolerates references we cannot resolve.

    ``complete`` says whether the table was followed from the connection's start; when it was, an
    unresolvable index is a protocol error (counted by the caller), otherwise it is expected.
    """

    def __init__(self, complete: bool):
        super().__init__(max_header_list_size=1 << 26)
        self.max_allowed_table_size = 1 << 32   # observers do not police SETTINGS_HEADER_TABLE_SIZE
        self.complete = complete
        if not complete:
            # Keep more than the usual 4 KiB: the sender's table may be bigger than we know, and
            # entries kept past its real end are harmless (never referenced).
            self.header_table_size = 1 << 16

    def decode_block(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
        """Header fields (raw bytes) in order and the number of fields that could not be decoded."""
        table = self.header_table
        if any(type(e[0]) is _Unknown for e in table.dynamic_entries):
            return self._decode_tolerant(block)
        saved = (collections.deque(table.dynamic_entries), table._current_size, table._maxsize)
        try:
            return [(n, v) for n, v in self.decode(block, raw=True)], 0
        except HPACKError:
            pass
        # Roll back whatever the library applied before it failed and redo the block tolerantly.
        table.dynamic_entries, table._current_size, table._maxsize = saved
        return self._decode_tolerant(block)

    def _lookup(self, index: int) -> tuple[bytes, bytes] | None:
        try:
            entry = self.header_table.get_by_index(index)
        except InvalidTableIndex:
            return None
        if type(entry[0]) is _Unknown:
            return None
        return entry

    def _string(self, data: memoryview) -> tuple[bytes, int]:
        length, used = decode_integer(data, 7)
        raw = data[used:used + length].tobytes()
        if len(raw) != length:
            raise HPACKDecodingError("Truncated header block")
        if data[0] & 0x80:
            raw = decode_huffman(raw)
        return raw, used + length

    def _decode_tolerant(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
        mv = memoryview(block)
        out: list[tuple[bytes, bytes]] = []
        unknown = 0
        i = 0
        while i < len(mv):
            b = mv[i]
            if b & 0x80:                                     # indexed field
                index, used = decode_integer(mv[i:], 7)
                i += used
                entry = self._lookup(index)
                if entry is None:
                    unknown += 1
                else:
                    out.append((bytes(entry[0]), bytes(entry[1])))
                continue
            if b & 0x40:
                prefix, indexing = 6, True                   # literal, incremental indexing
            elif b & 0x20:                                   # dynamic table size update
                size, used = decode_integer(mv[i:], 5)
                i += used
                self.header_table_size = size
                continue
            else:
                prefix, indexing = 4, False                  # literal without / never indexed
            name_index = b & ((1 << prefix) - 1)
            if name_index:
                index, used = decode_integer(mv[i:], prefix)
                i += used
                entry = self._lookup(index)
                name = entry[0] if entry is not None else _UNKNOWN_NAME
            else:
                name, used = self._string(mv[i + 1:])
                i += 1 + used
            value, used = self._string(mv[i:])
            i += used
            if indexing:
                # Insert even when the name is unknown so later indices stay aligned.
                self.header_table.add(name, value)
            if type(name) is _Unknown:
                unknown += 1
            else:
                out.append((bytes(name), value))
        return out, unknown


@dataclass
class _Block:
    """A header block being assembled from HEADERS/PUSH_PROMISE + CONTINUATION frames."""

    stream_id: int
    kind: int                 # frame type that opened it (1 HEADERS, 5 PUSH_PROMISE)
    ts_ns: int
    end_stream: bool
    promised: int = 0
    frags: list[bytes] = field(default_factory=list)
    wire: int = 0
    damaged: int = 0          # bytes lost inside it


class _Side:
    """Per-direction state: unparsed bytes, framing mode and the HPACK decoder for what it sends."""

    def __init__(self, direction: Direction):
        self.direction = direction
        self.buf = bytearray()
        self.buf_ts = 0           # capture time of buf[0]
        self.state = _START
        self.decoder = _ObserverDecoder(complete=False)
        self.block: _Block | None = None
        self.holes: list[tuple[int, int]] = []   # (offset in frame, bytes) lost inside the current frame
        self.max_frame = _MAX_FRAME   # largest frame this side may send (peer's SETTINGS_MAX_FRAME_SIZE)
        self.starts: list[int] = []   # while unsynchronised: offsets in buf where captured chunks began
        # Right after a guessed frame boundary: frames parsed since, and streams those frames created
        # (dropped again if the boundary proves wrong within _PROBATION frames).
        self.probation: int | None = None
        self.created: list[int] = []

    def reset_hpack(self) -> None:
        self.decoder = _ObserverDecoder(complete=False)


class _Stream:
    def __init__(self, sid: int, req_dir: Direction, spill_at: int):
        self.sid = sid
        self.req_dir = req_dir
        self.spill_at = spill_at
        self.request = Message(http_version="2", body=Body(spill_at))
        self.response: Message | None = None
        self.req_head = False
        self.resp_head = False
        self.req_done = False
        self.resp_done = False
        self.notes: list[str] = []
        self.gaps: list[tuple[str, int]] = []
        self.last_ts = 0
        self.gap_ts = 0           # capture time of a framing-loss gap that may have eaten its end
        self.times: dict[Direction, list[tuple[int, int]]] = {Direction.READ: [], Direction.WRITE: []}
        self.guessed = False      # req_dir is the default guess (roles unknown when it was created)
        self.first_end: Direction | None = None   # direction of the first END_STREAM seen


def _dir_name(d: Direction) -> str:
    return "write" if d == Direction.WRITE else "read"


def _other(d: Direction) -> Direction:
    return Direction.READ if d == Direction.WRITE else Direction.WRITE


def _error_name(code: int) -> str:
    try:
        from h2.errors import ErrorCodes
        return ErrorCodes(code).name
    except (ValueError, ImportError):
        return f"0x{code:x}"


class Http2Connection:
    """Reassembles the request/response pairs of one HTTP/2 connection (see module docstring)."""

    protocol = "h2"
    progress: Progress | None = None     # live observer (see base.Progress); set by the pipeline

    def __init__(self, conn: ConnInfo, *, max_decoded_body: int = DEFAULT_MAX_DECODED_BODY,
                 spill_at: int = 8 << 20, from_start: bool | None = None,
                 client_dir: Direction | None = None, stale_after_s: float = 60.0,
                 max_chunk_times: int = 100_000):
        """``from_start=False``: the caller knows the capture began mid-connection (a SETTINGS frame
        first is then not taken for the server preface); None infers it from the prefaces.
        ``client_dir``: which direction carries requests, when the caller knows (otherwise inferred
        from prefaces and pseudo-headers; the default guess is WRITE, a traced client)."""
        self.conn = conn
        self.stats = ParserStats()
        self.max_decoded_body = max_decoded_body
        self.spill_at = spill_at
        self.stale_after_ns = int(stale_after_s * 1e9)
        self.max_chunk_times = max_chunk_times
        self._from_start = from_start
        self._client_dir = client_dir
        # sure: from the client preface, a :method/:status, or the caller; otherwise a guess (a
        # SETTINGS frame first, the order of END_STREAMs, or the default: the traced process is the client)
        self._roles_sure = client_dir is not None
        self._sides = {d: _Side(d) for d in Direction}
        self._streams: dict[int, _Stream] = {}
        self._closed: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._out: list[Exchange] = []
        self._goaway: dict[Direction, tuple[int, int]] = {}
        self._gap_streams = False   # some open stream had a framing-loss gap
        self._frames_seen = 0

    # ------------------------------------------------------------------ contract

    def feed(self, direction: Direction, data: bytes, ts_ns: int) -> list[Exchange]:
        if data:
            side = self._sides[Direction(direction)]
            if not side.buf:
                side.buf_ts = ts_ns
            if side.state != _FRAMES:
                side.starts.append(len(side.buf))
            side.buf += data
            self._drain(side, ts_ns)
        if self._gap_streams:
            self._expire_stale(ts_ns)
        return self._take()

    def gap(self, direction: Direction, nbytes: int, ts_ns: int) -> list[Exchange]:
        direction = Direction(direction)
        side = self._sides[direction]
        self.stats.gap_bytes += nbytes
        if nbytes <= 0:
            return self._take()
        if side.state == _FRAMES and len(side.buf) >= 9:
            total = _frame_len(side.buf, 0, _MAX_FRAME) or 0
            remaining = total - len(side.buf)
            if total and nbytes <= remaining:
                # Lost inside one frame's payload: the framing survives. Placeholder bytes keep the
                # offsets; the frame handler cuts them out again.
                side.holes.append((len(side.buf) - 9, nbytes))
                side.buf += bytes(nbytes)
                self._drain(side, ts_ns)
                return self._take()
        self._lose_framing(side, nbytes, ts_ns)
        return self._take()

    def close(self, reason: str, ts_ns: int) -> list[Exchange]:
        # Bytes still waiting for a confident resync: last chance for the final frames (the side
        # whose bytes were captured first goes first, so END_STREAM order is kept).
        for side in sorted(self._sides.values(), key=lambda sd: sd.buf_ts):
            if side.state == _SYNC and side.buf and self._resync(side, lenient=True):
                self._frames(side, side.buf_ts)
        for side in self._sides.values():
            if side.buf and side.state != _START:
                self.stats.skipped_bytes += len(side.buf)
            side.buf.clear()
        if not self._frames_seen and self.stats.skipped_bytes:
            self.stats.not_http = 1     # never found an HTTP/2 frame: not HTTP/2 after all
        for s in sorted(self._streams.values(), key=lambda s: s.sid):
            note = f"connection closed ({reason}) before the stream finished" if reason else \
                "connection closed before the stream finished"
            self._finish(s, ts_ns, note)
        return self._take()

    # ------------------------------------------------------------------ framing

    def _take(self) -> list[Exchange]:
        out, self._out = self._out, []
        return out

    def _drain(self, side: _Side, ts_ns: int) -> None:
        while True:
            if side.state == _START and not self._start(side):
                return
            if side.state == _SYNC and not self._resync(side):
                return
            if side.state != _FRAMES:
                continue
            if not self._frames(side, ts_ns):
                return

    def _start(self, side: _Side) -> bool:
        """Decide how this direction's first bytes look. False: need more bytes."""
        buf = side.buf
        n = min(len(buf), len(PREFACE))
        if bytes(buf[:n]) == PREFACE[:n]:
            if n < len(PREFACE):
                return False
            del buf[:len(PREFACE)]
            self._from_start = True
            if not self._roles_sure:
                self._set_client_dir(side.direction, sure=True)
            self._begin(side, complete=True)
            return True
        if len(buf) < 9:
            return False        # could still become a frame header
        hi, lo, typ, flags, sid = _HDR.unpack_from(buf, 0)
        settings_first = (typ == 0x4 and not flags & 1 and sid == 0 and self._from_start is not False
                          and self._client_dir != side.direction
                          and _frame_len(buf, 0, _SYNC_MAX_FRAME, strict=True))
        if settings_first:
            ok, n, _ = _chain(buf, 0)
            if ok and n == 0:
                return False    # wait for the whole SETTINGS frame
            settings_first = ok
        if settings_first:
            # A non-ACK SETTINGS first: the server preface of a connection seen from its start.
            # (The client side counts as seen from its start only with its own preface: the capture
            # may have begun between the client's preface and the server's.)
            self._from_start = True
            if self._client_dir is None:
                self._set_client_dir(_other(side.direction), sure=False)
            self._begin(side, complete=True)
            return True
        side.state = _SYNC     # attached to a running connection (or its start was not captured)
        side.decoder = _ObserverDecoder(complete=False)
        return True

    def _begin(self, side: _Side, complete: bool) -> None:
        side.state = _FRAMES
        side.decoder = _ObserverDecoder(complete=complete)
        side.max_frame = _SYNC_MAX_FRAME

    def _resync(self, side: _Side, lenient: bool = False) -> bool:
        """Find a frame boundary in an unsynchronised buffer. False: need more bytes.

        First where captured chunks began (SSL_write calls are usually frame-aligned): a chain of 2
        plausible frames (``lenient``, at close: or 1 ending exactly at the end). Then anywhere: a
        chain of 4, or of 2 ending exactly at the end."""
        buf = side.buf
        mv = memoryview(buf)
        found = wait = None
        try:
            for c in side.starts:
                if c + 9 > len(buf):
                    break
                ok, n, exact = _chain(mv, c)
                if ok and (n >= 2 or lenient and exact and n == 1):
                    found = c
                    break
                if ok and wait is None:
                    wait = c
            off = 0
            while found is None and off + 9 <= len(buf) and (wait is None or off < wait):
                ok, n, exact = _chain(mv, off)
                if ok and (n >= 4 or exact and n >= 2):
                    found = off
                    break
                if ok:          # plausible so far but too short to tell: wait for more
                    wait = off
                    break
                # next candidate: a frame header's first byte is 0 below 64 KiB payloads
                nxt = buf.find(b"\x00", off + 1)
                off = nxt if nxt >= 0 else len(buf)
        finally:
            mv.release()
        if found is None:
            drop = wait if wait is not None else max(len(buf) - 8, 0)
            if drop:
                self.stats.skipped_bytes += drop
                del buf[:drop]
                side.starts = [c - drop for c in side.starts if c >= drop]
            return False
        off = found
        side.starts = []
        if off:
            self.stats.skipped_bytes += off
            del buf[:off]
        side.state = _FRAMES
        side.holes.clear()
        side.probation, side.created = 0, []
        return True

    def _frames(self, side: _Side, ts_ns: int) -> bool:
        """Parse complete frames. Returns False when more bytes are needed (or True after the
        framing was lost, so the caller resynchronises)."""
        buf = side.buf
        pos = 0
        consumed_any = False
        try:
            while len(buf) - pos >= 9:
                total = _frame_len(buf, pos, side.max_frame)
                if total is None:
                    length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                    if buf[pos + 3] in _FRAME_RULES or length > side.max_frame:
                        # A frame header breaking the rules: we are not where we think we are.
                        self.stats.parse_errors += 1
                        self._drop_phantoms(side)
                        del buf[:pos + 1]
                        pos = 0
                        self.stats.skipped_bytes += 1
                        self._lose_framing(side, 0, ts_ns, keep_buf=True)
                        return True
                    total = 9 + length  # an extension frame type we do not know: skip it
                if len(buf) - pos < total:
                    break
                first_ts = side.buf_ts if not consumed_any else ts_ns
                holes, side.holes = side.holes, []
                self._frames_seen += 1
                if side.probation is not None:
                    side.probation += 1
                    if side.probation > _PROBATION:
                        side.probation, side.created = None, []
                self._frame(side, bytes(buf[pos:pos + total]), first_ts, ts_ns, holes)
                pos += total
                consumed_any = True
                if side.state != _FRAMES:
                    break
        finally:
            if pos:
                del buf[:pos]
                if buf:
                    side.buf_ts = ts_ns
        return side.state != _FRAMES

    def _drop_phantoms(self, side: _Side) -> None:
        """The last guessed frame boundary was wrong: forget streams that only its frames created
        (no header block decoded for them) -- their bodies were made of misread bytes."""
        if side.probation is None:
            return
        for sid in side.created:
            s = self._streams.get(sid)
            if s is not None and not s.req_head and not s.resp_head:
                del self._streams[sid]
                for m in (s.request, s.response):
                    if m is not None:
                        self.stats.skipped_bytes += m.body.size
                        m.body.close()
        side.probation, side.created = None, []

    def _lose_framing(self, side: _Side, nbytes: int, ts_ns: int, keep_buf: bool = False) -> None:
        if not keep_buf:
            if side.buf and side.state != _START:
                self.stats.skipped_bytes += len(side.buf)
            side.buf.clear()
        side.holes.clear()
        side.starts = []
        side.state = _SYNC
        side.reset_hpack()
        if side.block is not None:
            self._block_lost(side, side.block)
            side.block = None
        d = side.direction
        for s in self._streams.values():
            active = (not s.req_done) if s.req_dir == d else (not s.resp_done)
            if active:
                s.gaps.append((_dir_name(d), nbytes))
                why = "capture gap" if nbytes else "unparseable bytes"
                s.notes.append(f"{why} in the {_dir_name(d)} direction; HTTP/2 framing "
                               "resynchronised, frames of this stream may be missing")
                s.gap_ts = ts_ns
                self._gap_streams = True

    def _expire_stale(self, ts_ns: int) -> None:
        stale = [s for s in self._streams.values()
                 if s.gap_ts and ts_ns - max(s.gap_ts, s.last_ts) > self.stale_after_ns]
        for s in stale:
            self._finish(s, ts_ns, "no frames for this stream since a capture gap; its end was "
                         "probably lost")
        self._gap_streams = any(s.gap_ts for s in self._streams.values())

    # ------------------------------------------------------------------ frames

    def _frame(self, side: _Side, raw: bytes, ts0: int, ts1: int, holes: list[tuple[int, int]]) -> None:
        try:
            frame, length = Frame.parse_frame_header(memoryview(raw)[:9])
            frame.parse_body(memoryview(raw)[9:])
        except (HyperframeError, ValueError, IndexError, struct.error):
            self.stats.parse_errors += 1
            if raw[3] in (0x1, 0x5, 0x9):       # a header block we cannot read
                blk = side.block or _Block(int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF, raw[3], ts0,
                                           bool(raw[4] & 1))
                side.block = None
                self._block_lost(side, blk)
            return
        wire = len(raw)
        typ = raw[3]
        if side.block is not None and typ != 0x9:
            # CONTINUATION must follow without interleaving; the block is lost.
            self.stats.parse_errors += 1
            blk, side.block = side.block, None
            self._block_lost(side, blk)
        if typ == 0x0:
            self._on_data(side, frame, raw, ts0, ts1, holes, wire)
        elif typ in (0x1, 0x5):
            blk = _Block(frame.stream_id, typ, ts0, "END_STREAM" in frame.flags, wire=wire,
                         promised=getattr(frame, "promised_stream_id", 0) or 0,
                         damaged=sum(n for _, n in holes))
            blk.frags.append(frame.data)
            self._continue_block(side, blk, "END_HEADERS" in frame.flags, ts1)
        elif typ == 0x9:
            blk = side.block
            side.block = None
            if blk is None or blk.stream_id != frame.stream_id:
                # An orphan CONTINUATION (e.g. right after resynchronising): its block is lost.
                if side.decoder.complete:
                    self.stats.parse_errors += 1
                side.reset_hpack()   # the block's table insertions are lost
                return
            blk.frags.append(frame.data)
            blk.wire += wire
            blk.damaged += sum(n for _, n in holes)
            self._continue_block(side, blk, "END_HEADERS" in frame.flags, ts1)
        elif typ == 0x3:
            self._on_rst(side, frame, ts1)
        elif typ == 0x7:
            self._on_goaway(side, frame, ts1)
        elif typ == 0x4 and "ACK" not in frame.flags:
            size = frame.settings.get(SettingsFrame.MAX_FRAME_SIZE)
            if size:
                self._sides[_other(side.direction)].max_frame = min(max(size, _SYNC_MAX_FRAME), _MAX_FRAME)
        # SETTINGS, PING, WINDOW_UPDATE, PRIORITY, ALTSVC, ORIGIN, extensions: nothing to record.

    def _continue_block(self, side: _Side, blk: _Block, end_headers: bool, ts1: int) -> None:
        if not end_headers:
            side.block = blk
            return
        if blk.damaged:
            self._block_lost(side, blk, ts1)
            return
        try:
            fields, unknown = side.decoder.decode_block(b"".join(blk.frags))
        except (HPACKError, ValueError, IndexError):
            self.stats.parse_errors += 1
            self._block_lost(side, blk, ts1)
            return
        if unknown:
            self.stats.unknown_header_blocks += 1
            if side.decoder.complete:
                self.stats.parse_errors += 1
        self._on_headers(side, blk, fields, unknown, ts1)

    def _block_lost(self, side: _Side, blk: _Block, ts1: int | None = None) -> None:
        """A header block we could not read at all: its insertions are lost, so restart the table."""
        side.reset_hpack()
        self.stats.unknown_header_blocks += 1
        if blk.stream_id and ts1 is not None:
            self._on_headers(side, blk, [], -1, ts1)

    # ------------------------------------------------------------------ streams

    def _req_dir_for(self, sid: int, sender: Direction, pseudo: set[str]) -> Direction:
        if ":method" in pseudo:
            return sender
        if ":status" in pseudo:
            return _other(sender)
        if self._client_dir is not None:
            return self._client_dir
        return Direction.WRITE

    def _learn_roles(self, sid: int, sender: Direction, pseudo: set[str]) -> None:
        if self._roles_sure or sid % 2 == 0:
            return
        if ":method" in pseudo:
            self._set_client_dir(sender, sure=True)
        elif ":status" in pseudo:
            self._set_client_dir(_other(sender), sure=True)

    def _set_client_dir(self, d: Direction, sure: bool) -> None:
        self._client_dir = d
        self._roles_sure = sure
        # Streams created on a guess (DATA before any readable header block) now get the right roles.
        for s in list(self._streams.values()):
            if not s.guessed:
                continue
            s.guessed = not sure
            if s.req_dir != d and s.sid % 2 == 1:
                self._swap_roles(s)
            if s.resp_done:
                self._finish(s, s.last_ts)

    def _ended(self, s: _Stream, direction: Direction, end_stream: bool, ts1: int) -> None:
        """After a frame of ``s``: write the pair out once the response has ended."""
        if end_stream and s.first_end is None:
            s.first_end = direction
        if not s.resp_done or s.sid not in self._streams:
            return
        if s.guessed and not self._roles_sure:
            # Roles unknown: this END_STREAM may have been the request's. Wait for the other side;
            # when both ended, the request is the one that ended first.
            if not s.req_done:
                return
            if s.sid % 2 == 1 and s.first_end is not None:
                self._set_client_dir(s.first_end, sure=False)
                return
        self._finish(s, ts1)

    @staticmethod
    def _swap_roles(s: _Stream) -> None:
        old_req, old_resp = s.request, s.response
        s.request = old_resp if old_resp is not None else Message(http_version="2", body=Body(s.spill_at))
        s.response = old_req if (old_req.body.size or old_req.wire_bytes or s.req_head) else None
        s.req_dir = _other(s.req_dir)
        s.req_head, s.resp_head = s.resp_head, s.req_head
        s.req_done, s.resp_done = s.resp_done, s.req_done

    def _stream(self, sid: int, req_dir: Direction, ts: int, orphan: bool,
                side: _Side | None = None) -> _Stream | None:
        s = self._streams.get(sid)
        if s is not None:
            return s
        if sid in self._closed:
            return None
        s = _Stream(sid, req_dir, self.spill_at)
        s.last_ts = ts
        if orphan:
            s.notes.append("stream began before the capture (request head not seen)")
        self._streams[sid] = s
        if side is not None and side.probation is not None:
            side.created.append(sid)
        return s

    def _on_headers(self, side: _Side, blk: _Block, fields: list[tuple[bytes, bytes]],
                    unknown: int, ts1: int) -> None:
        sender = side.direction
        if blk.kind == 0x5:
            # PUSH_PROMISE: the server's request for a pushed stream (decoded with the server's table).
            if blk.stream_id in self._streams:
                self._streams[blk.stream_id].last_ts = ts1
            if not blk.promised:
                return
            s = self._stream(blk.promised, _other(sender), blk.ts_ns, orphan=False)
            if s is None:
                return
            s.notes.append(f"server push promised on stream {blk.stream_id}")
            self._set_head(s, s.request, fields, unknown, blk, ts1, request=True)
            s.req_head = s.req_done = True
            s.request.complete = unknown >= 0
            return
        pseudo = {n.decode("latin-1") for n, _ in fields if n.startswith(b":")}
        self._learn_roles(blk.stream_id, sender, pseudo)
        s = self._streams.get(blk.stream_id)
        if s is None:
            req_dir = self._req_dir_for(blk.stream_id, sender, pseudo)
            s = self._stream(blk.stream_id, req_dir, blk.ts_ns, orphan=(sender != req_dir), side=side)
            if s is None:
                return
            s.guessed = not pseudo and not self._roles_sure
        s.last_ts = ts1
        if blk.damaged:
            s.gaps.append((_dir_name(sender), blk.damaged))
        # A block without the head's pseudo-header, fully decoded (or ending a stream that already
        # carried data), on a stream whose head we never saw, is the trailer section.
        trailers_like = (unknown == 0 and not pseudo) or (
            unknown != 0 and not pseudo and blk.end_stream and
            ((s.request.body.size if sender == s.req_dir else
              (s.response.body.size if s.response is not None else 0)) > 0))
        if sender == s.req_dir:
            msg = s.request
            if not s.req_head and not trailers_like:
                self._set_head(s, msg, fields, unknown, blk, ts1, request=True)
                s.req_head = True
            else:
                self._set_trailers(msg, fields, unknown, blk)
            msg.end_ts_ns = ts1
            if blk.end_stream:
                s.req_done = True
                msg.complete = s.req_head and not any(g[0] == _dir_name(sender) for g in s.gaps)
                if self.progress is not None and msg.complete:
                    self.progress.request_done(self.conn, s.sid, msg)
        else:
            if s.response is None:
                s.response = Message(http_version="2", ts_ns=blk.ts_ns, body=Body(s.spill_at))
            msg = s.response
            status = next((v for n, v in fields if n == b":status"), None)
            if status is not None and status[:1] == b"1" and status != b"101" and not s.resp_head:
                msg.wire_bytes += blk.wire
                s.notes.append(f"interim response {status.decode('latin-1')}")
                return
            if not s.resp_head and not trailers_like:
                self._set_head(s, msg, fields, unknown, blk, ts1, request=False)
                s.resp_head = True
                if self.progress is not None:
                    self.progress.response_head(self.conn, s.sid, s.request if s.req_head else None, msg)
            else:
                self._set_trailers(msg, fields, unknown, blk)
            msg.end_ts_ns = ts1
            if blk.end_stream:
                s.resp_done = True
                msg.complete = not any(g[0] == _dir_name(sender) for g in s.gaps)
        self._ended(s, sender, blk.end_stream, ts1)

    def _set_head(self, s: _Stream, msg: Message, fields, unknown: int, blk: _Block, ts1: int,
                  request: bool) -> None:
        if not msg.ts_ns:
            msg.ts_ns = blk.ts_ns
        msg.end_ts_ns = ts1
        msg.wire_bytes += blk.wire
        headers = []
        for n, v in fields:
            name = n.decode("latin-1")
            val = v.decode("utf-8", "replace")
            if name.startswith(":"):
                if name == ":method":
                    msg.method = val
                elif name == ":path":
                    msg.target = val
                elif name == ":authority":
                    msg.authority = val
                elif name == ":scheme":
                    msg.scheme = val
                elif name == ":status":
                    try:
                        msg.status = int(val)
                    except ValueError:
                        pass
                continue
            headers.append((name, val))
        msg.headers = headers
        if request and not msg.authority:
            msg.authority = msg.header("host")
        if unknown:
            self._note_unknown(s, msg, unknown, "request" if request else "response")

    def _set_trailers(self, msg: Message, fields, unknown: int, blk: _Block) -> None:
        msg.wire_bytes += blk.wire
        msg.trailers.extend((n.decode("latin-1"), v.decode("utf-8", "replace"))
                            for n, v in fields if not n.startswith(b":"))
        if unknown > 0:
            msg.unknown_headers += unknown

    def _note_unknown(self, s: _Stream, msg: Message, unknown: int, what: str) -> None:
        if unknown < 0:
            msg.unknown_headers += 1
            s.notes.append(f"{what} header block could not be decoded (bytes lost in capture)")
        else:
            msg.unknown_headers += unknown
            s.notes.append(f"{unknown} {what} header field(s) unknown: HPACK state from before the "
                           "capture started (or a gap)")

    def _on_data(self, side: _Side, frame: DataFrame, raw: bytes, ts0: int, ts1: int,
                 holes: list[tuple[int, int]], wire: int) -> None:
        sid = frame.stream_id
        s = self._streams.get(sid)
        if s is None:
            if sid in self._closed:
                return
            req_dir = self._client_dir if self._client_dir is not None else Direction.WRITE
            s = self._stream(sid, req_dir, ts0, orphan=True, side=side)
            if s is None:
                return
            s.guessed = not self._roles_sure
        s.last_ts = ts1
        data = frame.data
        body_before = (s.request if side.direction == s.req_dir else s.response)
        body_before = body_before.body.size if body_before is not None else 0
        lost = 0
        if holes and "PADDED" in frame.flags and min(off for off, _ in holes) == 0:
            # The pad length byte itself was lost: where the data ends is unknown. Drop the frame.
            s.gaps.append((_dir_name(side.direction), len(raw) - 9))
            data, holes = b"", []
        if holes:
            # Cut the placeholder bytes back out. Payload offsets -> data offsets (pad length byte).
            shift = 1 if "PADDED" in frame.flags else 0
            keep = bytearray()
            cur = 0
            for off, n in sorted(holes):
                a = max(0, min(len(data), off - shift))
                b = max(0, min(len(data), off + n - shift))
                keep += data[cur:a] if a > cur else b""
                lost += n
                cur = max(cur, b)
            keep += data[cur:]
            data = bytes(keep)
            s.gaps.append((_dir_name(side.direction), lost))
        if data:
            bt = s.times[side.direction]
            if len(bt) < self.max_chunk_times and (not bt or bt[-1][1] != ts1):
                bt.append((body_before, ts1))
        if side.direction == s.req_dir:
            msg = s.request
            if not msg.ts_ns:
                msg.ts_ns = ts0
            msg.wire_bytes += wire
            msg.end_ts_ns = ts1
            if data and not msg.first_body_ts_ns:
                msg.first_body_ts_ns = ts1
            msg.body.append(data)
            if "END_STREAM" in frame.flags:
                s.req_done = True
                msg.complete = s.req_head and not any(g[0] == _dir_name(side.direction) for g in s.gaps)
                if self.progress is not None and msg.complete:
                    self.progress.request_done(self.conn, s.sid, msg)
        else:
            if s.response is None:
                s.response = Message(http_version="2", ts_ns=ts0, body=Body(s.spill_at))
            msg = s.response
            msg.wire_bytes += wire
            msg.end_ts_ns = ts1
            if data:
                if not msg.first_body_ts_ns:
                    msg.first_body_ts_ns = ts1
                msg.body.append(data)
                if self.progress is not None:
                    self.progress.response_data(self.conn, s.sid, s.request if s.req_head else None,
                                                data, ts1)
            if "END_STREAM" in frame.flags:
                s.resp_done = True
                msg.complete = s.resp_head and not any(g[0] == _dir_name(side.direction) for g in s.gaps)
        self._ended(s, side.direction, "END_STREAM" in frame.flags, ts1)

    def _on_rst(self, side: _Side, frame: RstStreamFrame, ts1: int) -> None:
        s = self._streams.get(frame.stream_id)
        if s is None:
            return
        who = "client" if side.direction == s.req_dir else "server"
        # A message whose body reached its content-length is whole even without END_STREAM (clients
        # often reset a stream once they have every byte, before the empty END_STREAM frame lands).
        for msg, head, d in ((s.request, s.req_head, s.req_dir), (s.response, s.resp_head, _other(s.req_dir))):
            if msg is None or msg.complete or not head or any(g[0] == _dir_name(d) for g in s.gaps):
                continue
            length = msg.header("content-length").strip()
            if length.isdigit() and int(length) == msg.body.size:
                msg.complete = True
        self._finish(s, ts1, f"stream reset by the {who} ({_error_name(frame.error_code)})")

    def _on_goaway(self, side: _Side, frame: GoAwayFrame, ts1: int) -> None:
        last = frame.last_stream_id
        code = frame.error_code
        self._goaway[side.direction] = (last, code)
        why = f"GOAWAY from the {'client' if side.direction == self._client_dir else 'server'} " \
              f"({_error_name(code)}, last stream {last})"
        # Streams initiated by the GOAWAY's receiver above last_stream_id were never processed.
        receiver_is_client = (self._client_dir is None and side.direction == Direction.READ) or \
            (self._client_dir is not None and _other(side.direction) == self._client_dir)
        parity = 1 if receiver_is_client else 0
        for s in sorted(self._streams.values(), key=lambda s: s.sid):
            if s.sid > last and s.sid % 2 == parity:
                self._finish(s, ts1, f"not processed by the peer: {why}")
            elif code:
                s.notes.append(why)

    def _finish(self, s: _Stream, ts_ns: int, note: str | None = None) -> None:
        self._streams.pop(s.sid, None)
        self._closed[s.sid] = None
        if len(self._closed) > 4096:
            self._closed.popitem(last=False)
        if note:
            s.notes.append(note)
        req = s.request
        if not req.ts_ns:
            req.ts_ns = s.response.ts_ns if s.response is not None else ts_ns
        for msg in (req, s.response):
            if msg is not None:
                self._decode(msg)
        ex = Exchange(conn=self.conn, request=req, response=s.response, notes=s.notes, gaps=s.gaps,
                      stream_id=s.sid, protocol="h2")
        # (offset in the response body before decoding, capture ts) per DATA frame
        ex.body_times = s.times[_other(s.req_dir)]
        self.stats.exchanges += 1
        self._out.append(ex)

    def _decode(self, msg: Message) -> None:
        enc = msg.header("content-encoding").strip().lower()
        if not enc or enc == "identity" or not msg.body.size:
            return
        msg.content_encoding = enc
        try:
            body, err, cut = decode_body(enc, msg.body, self.max_decoded_body)
        except Exception as e:   # never let a decoder bug lose the record
            body, err, cut = msg.body, f"{type(e).__name__}: {e}", 0
        if err:
            self.stats.decode_errors += 1
        if body is not msg.body:
            msg.body.close()
        msg.body, msg.decode_error, msg.decoded_truncated_at = body, err, cut
