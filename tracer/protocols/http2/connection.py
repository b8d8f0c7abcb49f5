"""The framing of one HTTP/2 connection, both directions, as a passive observer.

We are not an endpoint, so no h2 state machine: hyperframe does the framing
(``Frame.parse_frame_header`` / ``parse_body``), one tolerant HPACK decoder per direction
(hpack_observer.py, each fed only the header blocks that direction sent, in wire order) rebuilds the
header lists, and streams.py turns the frames of each stream into one
:class:`~tracer.protocols.base.Exchange`.

Per direction: START (is the first thing the connection preface, a server preface, or the middle of a
running connection?) -> FRAMES (synchronised: parse whole frames) or SYNC (looking for a trusted frame
boundary, frames.py). A boundary found by guessing is on probation for a few frames: a frame header that
breaks the rules within them shows it was wrong, and the streams its frames invented are dropped.

Gaps: bytes lost strictly inside one frame's payload keep the framing (we know how many were lost): a
DATA frame loses just those body bytes (the stream gets a gap entry and a hole), a header block becomes
unknown. A gap that crosses a frame boundary loses the framing: that direction resynchronises on the
next plausible frame-header chain, its HPACK table restarts, and every stream still open in that
direction gets a gap entry and a note. Such streams stay open (their later frames still carry their
stream id, so the rest of the body lands in the same record); one that sees no frame for
``stale_after_s`` seconds of capture time afterwards is written out as incomplete.
"""

from __future__ import annotations

import struct

from hpack.exceptions import HPACKError
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import Frame, SettingsFrame

from tracer.protocols.base import ConnInfo, Direction, Exchange, ParserStats, Progress
from tracer.protocols.encoding import DEFAULT_CAP
from tracer.protocols.http2.frames import (FRAME_RULES, HDR, MAX_FRAME, PREFACE, SYNC_MAX_FRAME,
                                           chain, find_boundary, frame_len)
from tracer.protocols.http2.hpack_observer import ObserverDecoder
from tracer.protocols.http2.streams import HeaderBlock, Streams, other

DEFAULT_MAX_DECODED_BODY = DEFAULT_CAP

_START, _FRAMES, _SYNC = 0, 1, 2
_PROBATION = 16


class _Side:
    """Per-direction state: unparsed bytes, framing mode and the HPACK decoder for what it sends."""

    def __init__(self, direction: Direction):
        self.direction = direction
        self.buf = bytearray()
        self.buf_ts = 0           # capture time of buf[0]
        self.state = _START
        self.decoder = ObserverDecoder(complete=False)
        self.block: HeaderBlock | None = None
        self.holes: list[tuple[int, int]] = []   # (offset in frame, bytes) lost inside the current frame
        self.max_frame = MAX_FRAME    # largest frame this side may send (peer's SETTINGS_MAX_FRAME_SIZE)
        self.starts: list[int] = []   # while unsynchronised: offsets in buf where captured chunks began
        # Right after a guessed frame boundary: frames parsed since, and streams those frames created
        # (dropped again if the boundary proves wrong within _PROBATION frames).
        self.probation: int | None = None
        self.created: list[int] = []

    def reset_hpack(self) -> None:
        self.decoder = ObserverDecoder(complete=False)

    @property
    def creating(self) -> list[int] | None:
        """Where streams created by this side's frames are listed (only while on probation)."""
        return self.created if self.probation is not None else None


class Http2Connection:
    """Reassembles the request/response pairs of one HTTP/2 connection (see the module docstring).

        p = Http2Connection(conn)
        for ex in p.feed(Direction.WRITE, data, ts_ns): ...
        for ex in p.gap(Direction.READ, nbytes, ts_ns): ...
        for ex in p.close("exit", ts_ns): ...
    """

    protocol = "h2"

    @property
    def progress(self) -> Progress | None:
        """Live observer of the pairs in flight (see base.Progress); set by the pipeline. The streams
        layer reports to it."""
        return self.streams.progress

    @progress.setter
    def progress(self, value: Progress | None) -> None:
        self.streams.progress = value

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
        self.streams = Streams(conn, self.stats, max_decoded_body=max_decoded_body, spill_at=spill_at,
                               stale_after_ns=int(stale_after_s * 1e9), max_chunk_times=max_chunk_times,
                               client_dir=client_dir)
        self._from_start = from_start
        self._sides = {d: _Side(d) for d in Direction}
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
        if self.streams.gap_streams:
            self.streams.expire_stale(ts_ns)
        return self._take()

    def gap(self, direction: Direction, nbytes: int, ts_ns: int) -> list[Exchange]:
        direction = Direction(direction)
        side = self._sides[direction]
        self.stats.gap_bytes += nbytes
        if nbytes <= 0:
            return self._take()
        if side.state == _FRAMES and len(side.buf) >= 9:
            total = frame_len(side.buf, 0, MAX_FRAME) or 0
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
        self.streams.close(reason, ts_ns)
        return self._take()

    # ------------------------------------------------------------------ framing

    def _take(self) -> list[Exchange]:
        out, self.streams.out = self.streams.out, []
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
        streams = self.streams
        n = min(len(buf), len(PREFACE))
        if bytes(buf[:n]) == PREFACE[:n]:
            if n < len(PREFACE):
                return False
            del buf[:len(PREFACE)]
            self._from_start = True
            if not streams.roles_sure:
                streams.set_client_dir(side.direction, sure=True)
            self._begin(side, complete=True)
            return True
        if len(buf) < 9:
            return False        # could still become a frame header
        hi, lo, typ, flags, sid = HDR.unpack_from(buf, 0)
        settings_first = (typ == 0x4 and not flags & 1 and sid == 0 and self._from_start is not False
                          and streams.client_dir != side.direction
                          and frame_len(buf, 0, SYNC_MAX_FRAME, strict=True))
        if settings_first:
            ok, n, _ = chain(buf, 0)
            if ok and n == 0:
                return False    # wait for the whole SETTINGS frame
            settings_first = ok
        if settings_first:
            # A non-ACK SETTINGS first: the server preface of a connection seen from its start.
            # (The client side counts as seen from its start only with its own preface: the capture
            # may have begun between the client's preface and the server's.)
            self._from_start = True
            if streams.client_dir is None:
                streams.set_client_dir(other(side.direction), sure=False)
            self._begin(side, complete=True)
            return True
        side.state = _SYNC     # attached to a running connection (or its start was not captured)
        side.decoder = ObserverDecoder(complete=False)
        return True

    @staticmethod
    def _begin(side: _Side, complete: bool) -> None:
        side.state = _FRAMES
        side.decoder = ObserverDecoder(complete=complete)
        side.max_frame = SYNC_MAX_FRAME

    def _resync(self, side: _Side, lenient: bool = False) -> bool:
        """Find a frame boundary in an unsynchronised buffer (frames.find_boundary). False: need more
        bytes."""
        buf = side.buf
        found, wait = find_boundary(buf, side.starts, lenient)
        if found is None:
            drop = wait if wait is not None else max(len(buf) - 8, 0)
            if drop:
                self.stats.skipped_bytes += drop
                del buf[:drop]
                side.starts = [c - drop for c in side.starts if c >= drop]
            return False
        side.starts = []
        if found:
            self.stats.skipped_bytes += found
            del buf[:found]
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
                total = frame_len(buf, pos, side.max_frame)
                if total is None:
                    length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                    if buf[pos + 3] in FRAME_RULES or length > side.max_frame:
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
        self.streams.drop_phantoms(side.created)
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
        self.streams.framing_lost(side.direction, nbytes, ts_ns)

    # ------------------------------------------------------------------ frames

    def _frame(self, side: _Side, raw: bytes, ts0: int, ts1: int, holes: list[tuple[int, int]]) -> None:
        try:
            frame, length = Frame.parse_frame_header(memoryview(raw)[:9])
            frame.parse_body(memoryview(raw)[9:])
        except (HyperframeError, ValueError, IndexError, struct.error):
            self.stats.parse_errors += 1
            if raw[3] in (0x1, 0x5, 0x9):       # a header block we cannot read
                blk = side.block or HeaderBlock(int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF, raw[3],
                                                ts0, bool(raw[4] & 1))
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
            self.streams.data(side.direction, frame, raw, ts0, ts1, holes, wire, side.creating)
        elif typ in (0x1, 0x5):
            blk = HeaderBlock(frame.stream_id, typ, ts0, "END_STREAM" in frame.flags, wire=wire,
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
            self.streams.rst(side.direction, frame, ts1)
        elif typ == 0x7:
            self.streams.goaway(side.direction, frame, ts1)
        elif typ == 0x4 and "ACK" not in frame.flags:
            size = frame.settings.get(SettingsFrame.MAX_FRAME_SIZE)
            if size:
                self._sides[other(side.direction)].max_frame = min(max(size, SYNC_MAX_FRAME), MAX_FRAME)
        # SETTINGS, PING, WINDOW_UPDATE, PRIORITY, ALTSVC, ORIGIN, extensions: nothing to record.

    def _continue_block(self, side: _Side, blk: HeaderBlock, end_headers: bool, ts1: int) -> None:
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
        self.streams.headers(side.direction, blk, fields, unknown, ts1, side.creating)

    def _block_lost(self, side: _Side, blk: HeaderBlock, ts1: int | None = None) -> None:
        """A header block we could not read at all: its insertions are lost, so restart the table."""
        side.reset_hpack()
        self.stats.unknown_header_blocks += 1
        if blk.stream_id and ts1 is not None:
            self.streams.headers(side.direction, blk, [], -1, ts1, side.creating)
