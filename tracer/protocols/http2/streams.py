"""The streams of one HTTP/2 connection: which side is the client, each stream's request and response
built from the frames the framing layer (connection.py) hands over, and when a stream is written out.

A stream is finished when both sides have ended it: END_STREAM each way, RST_STREAM, a GOAWAY that
says the peer never processed it, or the connection's end. Only then is its pair written out, so a
request body sent after the response (servers that answer before reading the body) is in the record.
A stream of which no request frame was captured (attached after the client had sent it) is finished
by the response's END_STREAM alone.

Which side is the client: known from the connection preface (the side that sends it) or from a
readable pseudo-header (``:method`` comes from the client, ``:status`` from the server); guessed from a
non-ACK SETTINGS as a side's very first frame (the server preface), from which side ended a stream
first, or by default (the traced process, WRITE, is the client). Streams created on a guess (DATA seen
before any readable header block, after attaching) are re-assigned when certainty arrives, and are not
written out on one END_STREAM alone while roles are only guessed.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from hyperframe.frame import DataFrame, GoAwayFrame, RstStreamFrame

from tracer.protocols.base import Body, ChunkTimes, ConnInfo, Direction, Exchange, Message, ParserStats, Progress
from tracer.protocols.encoding import decode_body


@dataclass
class HeaderBlock:
    """A header block being assembled from HEADERS/PUSH_PROMISE + CONTINUATION frames."""

    stream_id: int
    kind: int                 # frame type that opened it (1 HEADERS, 5 PUSH_PROMISE)
    ts_ns: int
    end_stream: bool
    promised: int = 0
    frags: list[bytes] = field(default_factory=list)
    wire: int = 0
    damaged: int = 0          # bytes lost inside it


class Stream:
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
        self.times: dict[Direction, list[tuple[int, int]]] = {Direction.READ: ChunkTimes(),
                                                              Direction.WRITE: ChunkTimes()}
        self.guessed = False      # req_dir is the default guess (roles unknown when it was created)
        self.first_end: Direction | None = None   # direction of the first END_STREAM seen
        self.seen = {Direction.READ: False, Direction.WRITE: False}   # a frame captured from that side
        self.orphan = False       # its request began before the capture

    def over(self) -> bool:
        """Both sides have ended the stream (a request of which nothing was captured counts as ended)."""
        return self.resp_done and (self.req_done or not self.seen[self.req_dir])


def dir_name(d: Direction) -> str:
    return "write" if d == Direction.WRITE else "read"


def other(d: Direction) -> Direction:
    return Direction.READ if d == Direction.WRITE else Direction.WRITE


def error_name(code: int) -> str:
    try:
        from h2.errors import ErrorCodes
        return ErrorCodes(code).name
    except (ValueError, ImportError):
        return f"0x{code:x}"


class Streams:
    """Stream state of one connection; finished pairs collect in ``out``."""

    def __init__(self, conn: ConnInfo, stats: ParserStats, *, max_decoded_body: int, spill_at: int,
                 stale_after_ns: int, max_chunk_times: int, client_dir: Direction | None):
        self.conn = conn
        self.stats = stats
        self.progress: Progress | None = None     # live observer (see base.Progress)
        self.max_decoded_body = max_decoded_body
        self.spill_at = spill_at
        self.stale_after_ns = stale_after_ns
        self.max_chunk_times = max_chunk_times
        self.client_dir = client_dir
        # sure: from the client preface, a :method/:status, or the caller; otherwise a guess (a
        # SETTINGS frame first, the order of END_STREAMs, or the default: the traced process is the client)
        self.roles_sure = client_dir is not None
        self.open: dict[int, Stream] = {}
        self._closed: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.out: list[Exchange] = []
        self._goaway: dict[Direction, tuple[int, int]] = {}
        self.gap_streams = False   # some open stream had a framing-loss gap

    # ------------------------------------------------------------------ roles

    def _req_dir_for(self, sender: Direction, pseudo: set[str]) -> Direction:
        if ":method" in pseudo:
            return sender
        if ":status" in pseudo:
            return other(sender)
        if self.client_dir is not None:
            return self.client_dir
        return Direction.WRITE

    def _learn_roles(self, sid: int, sender: Direction, pseudo: set[str]) -> None:
        if self.roles_sure or sid % 2 == 0:
            return
        if ":method" in pseudo:
            self.set_client_dir(sender, sure=True)
        elif ":status" in pseudo:
            self.set_client_dir(other(sender), sure=True)

    def set_client_dir(self, d: Direction, sure: bool) -> None:
        self.client_dir = d
        self.roles_sure = sure
        # Streams created on a guess (DATA before any readable header block) now get the right roles.
        for s in list(self.open.values()):
            if not s.guessed:
                continue
            s.guessed = not sure
            if s.req_dir != d and s.sid % 2 == 1:
                self._swap_roles(s)
            if s.over():
                self._finish(s, s.last_ts)

    def _ended(self, s: Stream, direction: Direction, end_stream: bool, ts1: int) -> None:
        """After a frame of ``s``: write the pair out once both sides have ended the stream."""
        s.seen[direction] = True
        if end_stream and s.first_end is None:
            s.first_end = direction
        if not s.resp_done or s.sid not in self.open:
            return
        if s.guessed and not self.roles_sure:
            # Roles unknown: this END_STREAM may have been the request's. Wait for the other side;
            # when both ended, the request is the one that ended first.
            if not s.req_done:
                return
            if s.sid % 2 == 1 and s.first_end is not None:
                self.set_client_dir(s.first_end, sure=False)
                return
        elif not s.over():
            return    # the client is still sending: a server that answered before reading it all
        self._finish(s, ts1)

    @staticmethod
    def _swap_roles(s: Stream) -> None:
        old_req, old_resp = s.request, s.response
        s.request = old_resp if old_resp is not None else Message(http_version="2", body=Body(s.spill_at))
        s.response = old_req if (old_req.body.size or old_req.wire_bytes or s.req_head) else None
        s.req_dir = other(s.req_dir)
        s.req_head, s.resp_head = s.resp_head, s.req_head
        s.req_done, s.resp_done = s.resp_done, s.req_done

    def _stream(self, sid: int, req_dir: Direction, ts: int, orphan: bool,
                created: list[int] | None = None) -> Stream | None:
        s = self.open.get(sid)
        if s is not None:
            return s
        if sid in self._closed:
            return None
        s = Stream(sid, req_dir, self.spill_at)
        s.last_ts = ts
        s.orphan = orphan
        if orphan:
            s.notes.append("stream began before the capture (request head not seen)")
        self.open[sid] = s
        if created is not None:
            created.append(sid)
        return s

    # ------------------------------------------------------------------ frames

    def headers(self, sender: Direction, blk: HeaderBlock, fields: list[tuple[bytes, bytes]],
                unknown: int, ts1: int, created: list[int] | None = None) -> None:
        """A complete header block (``unknown`` < 0: it could not be decoded at all)."""
        if blk.kind == 0x5:
            # PUSH_PROMISE: the server's request for a pushed stream (decoded with the server's table).
            if blk.stream_id in self.open:
                self.open[blk.stream_id].last_ts = ts1
            if not blk.promised:
                return
            s = self._stream(blk.promised, other(sender), blk.ts_ns, orphan=False)
            if s is None:
                return
            s.notes.append(f"server push promised on stream {blk.stream_id}")
            self._set_head(s, s.request, fields, unknown, blk, ts1, request=True)
            s.req_head = s.req_done = True
            s.request.complete = unknown >= 0
            return
        pseudo = {n.decode("latin-1") for n, _ in fields if n.startswith(b":")}
        self._learn_roles(blk.stream_id, sender, pseudo)
        s = self.open.get(blk.stream_id)
        if s is None:
            req_dir = self._req_dir_for(sender, pseudo)
            s = self._stream(blk.stream_id, req_dir, blk.ts_ns, orphan=(sender != req_dir), created=created)
            if s is None:
                return
            s.guessed = not pseudo and not self.roles_sure
        s.last_ts = ts1
        if blk.damaged:
            s.gaps.append((dir_name(sender), blk.damaged))
        # A block without the head's pseudo-header, fully decoded (or ending a stream that already
        # carried data), on a stream whose head we never saw, is the trailer section.
        trailers_like = (unknown == 0 and not pseudo) or (
            unknown != 0 and not pseudo and blk.end_stream and
            ((s.request.body.size if sender == s.req_dir else
              (s.response.body.size if s.response is not None else 0)) > 0))
        request = sender == s.req_dir
        if request:
            msg = s.request
        else:
            if s.response is None:
                s.response = Message(http_version="2", ts_ns=blk.ts_ns, body=Body(s.spill_at))
            msg = s.response
            status = next((v for n, v in fields if n == b":status"), None)
            if status is not None and status[:1] == b"1" and status != b"101" and not s.resp_head:
                msg.wire_bytes += blk.wire
                s.notes.append(f"interim response {status.decode('latin-1')}")
                return
        if not (s.req_head if request else s.resp_head) and not trailers_like:
            self._set_head(s, msg, fields, unknown, blk, ts1, request=request)
            if request:
                s.req_head = True
            else:
                s.resp_head = True
                if self.progress is not None:
                    self.progress.response_head(self.conn, s.sid, s.request if s.req_head else None, msg)
        else:
            self._set_trailers(msg, fields, unknown, blk)
        msg.end_ts_ns = ts1
        if blk.end_stream:
            msg.complete = (s.req_head or not request) and not any(g[0] == dir_name(sender) for g in s.gaps)
            if request:
                s.req_done = True
                if self.progress is not None and msg.complete:
                    self.progress.request_done(self.conn, s.sid, msg)
            else:
                s.resp_done = True
        self._ended(s, sender, blk.end_stream, ts1)

    def _set_head(self, s: Stream, msg: Message, fields, unknown: int, blk: HeaderBlock, ts1: int,
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

    @staticmethod
    def _set_trailers(msg: Message, fields, unknown: int, blk: HeaderBlock) -> None:
        msg.wire_bytes += blk.wire
        msg.trailers.extend((n.decode("latin-1"), v.decode("utf-8", "replace"))
                            for n, v in fields if not n.startswith(b":"))
        if unknown > 0:
            msg.unknown_headers += unknown

    @staticmethod
    def _note_unknown(s: Stream, msg: Message, unknown: int, what: str) -> None:
        if unknown < 0:
            msg.unknown_headers += 1
            s.notes.append(f"{what} header block could not be decoded (bytes lost in capture)")
        else:
            msg.unknown_headers += unknown
            s.notes.append(f"{unknown} {what} header field(s) unknown: HPACK state from before the "
                           "capture started (or a gap)")

    def data(self, sender: Direction, frame: DataFrame, raw: bytes, ts0: int, ts1: int,
             holes: list[tuple[int, int]], wire: int, created: list[int] | None = None) -> None:
        sid = frame.stream_id
        s = self.open.get(sid)
        if s is None:
            if sid in self._closed:
                # Sent after the stream was written out (e.g. in flight when the peer reset it).
                self.stats.skipped_bytes += len(frame.data)
                return
            req_dir = self.client_dir if self.client_dir is not None else Direction.WRITE
            s = self._stream(sid, req_dir, ts0, orphan=True, created=created)
            if s is None:
                return
            s.guessed = not self.roles_sure
        s.last_ts = ts1
        data = frame.data
        if sender == s.req_dir:
            msg = s.request
        else:
            if s.response is None:
                s.response = Message(http_version="2", ts_ns=ts0, body=Body(s.spill_at))
            msg = s.response
        body_before = msg.body.size
        if holes:
            data = self._cut_holes(s, msg, sender, frame, raw, holes)
        if data:
            bt = s.times[sender]
            if len(bt) < self.max_chunk_times and (not bt or bt[-1][1] != ts1):
                bt.append((body_before, ts1))
        if not msg.ts_ns:
            msg.ts_ns = ts0
        msg.wire_bytes += wire
        msg.end_ts_ns = ts1
        if data:
            if not msg.first_body_ts_ns:
                msg.first_body_ts_ns = ts1
            msg.body.append(data)
            if self.progress is not None and sender != s.req_dir:
                self.progress.response_data(self.conn, s.sid, s.request if s.req_head else None, data, ts1)
        if "END_STREAM" in frame.flags:
            head = s.req_head if sender == s.req_dir else s.resp_head
            msg.complete = head and not any(g[0] == dir_name(sender) for g in s.gaps)
            if sender == s.req_dir:
                s.req_done = True
                if self.progress is not None and msg.complete:
                    self.progress.request_done(self.conn, s.sid, msg)
            else:
                s.resp_done = True
        self._ended(s, sender, "END_STREAM" in frame.flags, ts1)

    def _cut_holes(self, s: Stream, msg: Message, sender: Direction, frame: DataFrame, raw: bytes,
                   holes: list[tuple[int, int]]) -> bytes:
        """The frame's data without the placeholder bytes of capture gaps inside it; the body gets a
        hole where each was."""
        what = "request" if sender == s.req_dir else "response"
        data = frame.data
        lost = sum(n for _, n in holes)
        s.gaps.append((dir_name(sender), lost))
        s.notes.append(f"capture lost {lost} bytes inside a DATA frame of the {what} body; "
                       f"the body has a hole")
        if "PADDED" in frame.flags and min(off for off, _ in holes) == 0:
            # The pad length byte itself was lost: where the data ends is unknown. Drop the frame.
            self.stats.skipped_bytes += len(raw) - 9 - lost
            msg.hole(lost, len(raw) - 9 - lost)
            return b""
        # Payload offsets -> data offsets (the pad length byte comes first).
        shift = 1 if "PADDED" in frame.flags else 0
        keep = bytearray()
        cur = 0
        for off, n in sorted(holes):
            a = max(0, min(len(data), off - shift))
            b = max(0, min(len(data), off + n - shift))
            keep += data[cur:a] if a > cur else b""
            msg.holes.append([msg.body.size + len(keep), n, 0])
            cur = max(cur, b)
        keep += data[cur:]
        return bytes(keep)

    def rst(self, sender: Direction, frame: RstStreamFrame, ts1: int) -> None:
        s = self.open.get(frame.stream_id)
        if s is None:
            return
        who = "client" if sender == s.req_dir else "server"
        # A message whose body reached its content-length is whole even without END_STREAM (clients
        # often reset a stream once they have every byte, before the empty END_STREAM frame lands).
        for msg, head, d in ((s.request, s.req_head, s.req_dir), (s.response, s.resp_head, other(s.req_dir))):
            if msg is None or msg.complete or not head or any(g[0] == dir_name(d) for g in s.gaps):
                continue
            length = msg.header("content-length").strip()
            if length.isdigit() and int(length) == msg.body.size:
                msg.complete = True
        self._finish(s, ts1, f"stream reset by the {who} ({error_name(frame.error_code)})")

    def goaway(self, sender: Direction, frame: GoAwayFrame, ts1: int) -> None:
        last = frame.last_stream_id
        code = frame.error_code
        self._goaway[sender] = (last, code)
        why = f"GOAWAY from the {'client' if sender == self.client_dir else 'server'} " \
              f"({error_name(code)}, last stream {last})"
        # Streams initiated by the GOAWAY's receiver above last_stream_id were never processed.
        receiver_is_client = (self.client_dir is None and sender == Direction.READ) or \
            (self.client_dir is not None and other(sender) == self.client_dir)
        parity = 1 if receiver_is_client else 0
        for s in sorted(self.open.values(), key=lambda s: s.sid):
            if s.sid > last and s.sid % 2 == parity:
                self._finish(s, ts1, f"not processed by the peer: {why}")
            elif code:
                s.notes.append(why)

    # ------------------------------------------------------------------ losses and the end

    def framing_lost(self, d: Direction, nbytes: int, ts_ns: int) -> None:
        """The framing of direction ``d`` was lost (``nbytes`` lost in capture, 0: unparseable bytes):
        every stream still sending in that direction may be missing frames."""
        for s in self.open.values():
            active = (not s.req_done) if s.req_dir == d else (not s.resp_done)
            if active:
                msg = s.request if s.req_dir == d else s.response
                if msg is not None and msg.body.size:
                    msg.hole(nbytes)
                s.gaps.append((dir_name(d), nbytes))
                why = "capture gap" if nbytes else "unparseable bytes"
                s.notes.append(f"{why} in the {dir_name(d)} direction; HTTP/2 framing "
                               "resynchronised, frames of this stream may be missing")
                s.gap_ts = ts_ns
                self.gap_streams = True

    def drop_phantoms(self, sids: list[int]) -> None:
        """Forget streams that only misread frames created (no header block decoded for them)."""
        for sid in sids:
            s = self.open.get(sid)
            if s is not None and not s.req_head and not s.resp_head:
                del self.open[sid]
                for m in (s.request, s.response):
                    if m is not None:
                        self.stats.skipped_bytes += m.body.size
                        m.body.close()

    def expire_stale(self, ts_ns: int) -> None:
        stale = [s for s in self.open.values()
                 if s.gap_ts and ts_ns - max(s.gap_ts, s.last_ts) > self.stale_after_ns]
        for s in stale:
            self._finish(s, ts_ns, "no frames for this stream since a capture gap; its end was "
                         "probably lost")
        self.gap_streams = any(s.gap_ts for s in self.open.values())

    def close(self, reason: str, ts_ns: int) -> None:
        why = f"connection closed ({reason})" if reason else "connection closed"
        for s in sorted(self.open.values(), key=lambda s: s.sid):
            if s.resp_done and not s.req_done:
                note = (f"{why} while the client was still sending the request body (the response "
                        "was already complete)")
            elif s.req_done and not s.resp_done:
                note = f"{why} before the response was complete"
            else:
                note = f"{why} before either side ended the stream"
            self._finish(s, ts_ns, note)

    def _finish(self, s: Stream, ts_ns: int, note: str | None = None) -> None:
        self.open.pop(s.sid, None)
        self._closed[s.sid] = None
        if len(self._closed) > 4096:
            self._closed.popitem(last=False)
        if note:
            s.notes.append(note)
        if not s.req_head and not s.orphan and s.sid % 2:
            s.notes.append("request head not seen (sent before the capture, or lost in a gap)")
        if not s.notes and (not s.request.complete or s.response is None or not s.response.complete):
            s.notes.append("response head not seen (lost in a capture gap)" if s.response is not None
                           and not s.resp_head else "pair incomplete")
        req = s.request
        if not req.ts_ns:
            req.ts_ns = s.response.ts_ns if s.response is not None else ts_ns
        for msg in (req, s.response):
            if msg is not None:
                self._decode(msg)
        ex = Exchange(conn=self.conn, request=req, response=s.response, notes=s.notes, gaps=s.gaps,
                      stream_id=s.sid, protocol="h2")
        # (offset in the response body before decoding, capture ts) per DATA frame
        ex.body_times = s.times[other(s.req_dir)]
        self.stats.exchanges += 1
        self.out.append(ex)

    def _decode(self, msg: Message) -> None:
        enc = msg.header("content-encoding").strip().lower()
        if not enc or enc == "identity" or not msg.body.size:
            return
        msg.content_encoding = enc
        if msg.holes:
            # A compressed stream with bytes missing cannot be decoded past them; keep it as sent.
            msg.decode_error = "not decoded: the capture lost bytes of the encoded body"
            self.stats.decode_errors += 1
            return
        try:
            body, err, cut = decode_body(enc, msg.body, self.max_decoded_body)
        except Exception as e:   # never let a decoder bug lose the record
            body, err, cut = msg.body, f"{type(e).__name__}: {e}", 0
        if err:
            self.stats.decode_errors += 1
        if body is not msg.body:
            msg.body.close()
        msg.body, msg.decode_error, msg.decoded_truncated_at = body, err, cut
