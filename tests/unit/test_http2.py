"""HTTP/2 parser: real byte streams from h2's client and server connection objects talking in memory.

The two endpoints record what they saw (requests at the server, responses at the client); the
observer (Http2Connection) must reconstruct exactly that from the bytes between them, however the
bytes are split, and must never report a header that was not sent (mid-connection attach, gaps).
"""

from __future__ import annotations

import functools
import gzip
import random
import zlib

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2 import events as ev
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer.protocols.base import ConnInfo, Direction
from tracer.protocols.http2 import (PREFACE, Http2Connection, looks_like_h2, looks_like_h2_frames)

W, R = Direction.WRITE, Direction.READ
CONN = ConnInfo(pid=1, tid=1, comm="t", conn_id="1:0x1:1")


# --------------------------------------------------------------------------- a conversation in memory

def _frames(data: bytes):
    """Split complete frames (h2 always emits whole frames) with hyperframe."""
    out, i = [], 0
    while i < len(data):
        f, length = Frame.parse_frame_header(memoryview(data[i:i + 9]))
        f.parse_body(memoryview(data[i + 9:i + 9 + length]))
        out.append(f)
        i += 9 + length
    return out


def reframe_headers(data: bytes, rng: random.Random) -> bytes:
    """Same header blocks, different framing: padded HEADERS and blocks split into CONTINUATIONs."""
    out = bytearray()
    if data.startswith(PREFACE):
        out += PREFACE
        data = data[len(PREFACE):]
    for f in _frames(data):
        if isinstance(f, HeadersFrame) and "END_HEADERS" in f.flags and len(f.data) > 2:
            block = f.data
            cuts = sorted(rng.sample(range(1, len(block)), min(len(block) - 1, rng.randint(0, 3))))
            parts = [block[a:b] for a, b in zip([0] + cuts, cuts + [len(block)])]
            h = HeadersFrame(f.stream_id, data=parts[0])
            h.flags = set(f.flags) - {"END_HEADERS", "PRIORITY"}
            if rng.random() < 0.7:
                h.flags.add("PADDED")
                h.pad_length = rng.randint(0, 40)
            if len(parts) == 1:
                h.flags.add("END_HEADERS")
            out += h.serialize()
            for j, p in enumerate(parts[1:], 1):
                c = ContinuationFrame(f.stream_id, data=p)
                if j == len(parts) - 1:
                    c.flags.add("END_HEADERS")
                out += c.serialize()
        else:
            out += f.serialize()
    return bytes(out)


class Conversation:
    """An h2 client and server wired together; ``wire`` is every byte each one sent, in order."""

    def __init__(self, rng: random.Random | None = None, reframe: bool = False):
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.rng = rng or random.Random(0)
        self.reframe = reframe
        self.wire: list[tuple[Direction, bytes]] = []
        self.req: dict[int, dict] = {}    # what the server saw, per stream
        self.resp: dict[int, dict] = {}   # what the client saw, per stream
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.pump()

    def _rec(self, table, sid):
        return table.setdefault(sid, {"headers": None, "body": b"", "trailers": [], "reset": None,
                                      "ended": False, "interim": []})

    def pump(self) -> None:
        while True:
            moved = False
            c = self.client.data_to_send()
            if c:
                moved = True
                self.wire.append((W, reframe_headers(c, self.rng) if self.reframe else c))
                for e in self.server.receive_data(c):
                    self._server_event(e)
            s = self.server.data_to_send()
            if s:
                moved = True
                self.wire.append((R, s))
                for e in self.client.receive_data(s):
                    self._client_event(e)
            if not moved:
                return

    def _server_event(self, e) -> None:
        if isinstance(e, ev.RequestReceived):
            self._rec(self.req, e.stream_id)["headers"] = list(e.headers)
        elif isinstance(e, ev.DataReceived):
            self._rec(self.req, e.stream_id)["body"] += e.data
            self.server.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, ev.TrailersReceived):
            self._rec(self.req, e.stream_id)["trailers"] = list(e.headers)
        elif isinstance(e, ev.StreamEnded):
            self._rec(self.req, e.stream_id)["ended"] = True
        elif isinstance(e, ev.StreamReset):
            self._rec(self.req, e.stream_id)["reset"] = e.error_code

    def _client_event(self, e) -> None:
        if isinstance(e, ev.ResponseReceived):
            self._rec(self.resp, e.stream_id)["headers"] = list(e.headers)
        elif isinstance(e, ev.InformationalResponseReceived):
            self._rec(self.resp, e.stream_id)["interim"].append(list(e.headers))
        elif isinstance(e, ev.DataReceived):
            self._rec(self.resp, e.stream_id)["body"] += e.data
            self.client.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, ev.TrailersReceived):
            self._rec(self.resp, e.stream_id)["trailers"] = list(e.headers)
        elif isinstance(e, ev.StreamEnded):
            self._rec(self.resp, e.stream_id)["ended"] = True
        elif isinstance(e, ev.StreamReset):
            self._rec(self.resp, e.stream_id)["reset"] = e.error_code
        elif isinstance(e, ev.PushedStreamReceived):
            self._rec(self.req, e.pushed_stream_id)["headers"] = list(e.headers)
            self._rec(self.req, e.pushed_stream_id)["ended"] = True

    def send_body(self, conn: H2Connection, sid: int, data: bytes, end: bool, pad: int | None = None):
        """Send within flow-control limits, pumping so the peer's WINDOW_UPDATEs arrive."""
        while True:
            room = min(conn.local_flow_control_window(sid),
                       conn.max_outbound_frame_size - ((pad or 0) + 1 if pad is not None else 0))
            piece = data[:max(room, 0)]
            last = len(piece) == len(data)
            if piece or last:
                conn.send_data(sid, piece, end_stream=end and last, pad_length=pad)
            data = data[len(piece):]
            self.pump()
            if last:
                return

    def request(self, headers, body: bytes = b"", pad=None, trailers=None) -> int:
        sid = self.client.get_next_available_stream_id()
        end = not body and not trailers
        self.client.send_headers(sid, headers, end_stream=end)
        self.pump()
        if body:
            self.send_body(self.client, sid, body, end=not trailers, pad=pad)
        if trailers:
            self.client.send_headers(sid, trailers, end_stream=True)
            self.pump()
        return sid

    def respond(self, sid, headers, chunks=(), trailers=None, pad=None, end=True) -> None:
        self.server.send_headers(sid, headers, end_stream=end and not chunks and not trailers)
        self.pump()
        for i, c in enumerate(chunks):
            self.send_body(self.server, sid, c, end=end and not trailers and i == len(chunks) - 1, pad=pad)
        if trailers:
            self.server.send_headers(sid, trailers, end_stream=True)
            self.pump()


def req_headers(i: int, extra=()):
    return [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"api.anthropic.com"),
            (b":path", b"/v1/messages?beta=true"), (b"content-type", b"application/json"),
            (b"x-api-key", b"sk-ant-api03-secretsecret"), (b"anthropic-version", b"2023-06-01"),
            (b"x-request-n", str(i).encode()), *extra]


def resp_headers(i: int, extra=()):
    return [(b":status", b"200"), (b"content-type", b"text/event-stream"),
            (b"request-id", f"req_{i:06d}".encode()), *extra]


def sse(i: int, n: int) -> list[bytes]:
    return [f"event: content_block_delta\ndata: {{\"i\":{i},\"k\":{k}}}\n\n".encode() for k in range(n)]


def feed_all(p: Http2Connection, wire, rng: random.Random | None = None, swap=False):
    """Feed every send, optionally cut into random pieces; timestamps = send index * 1000 + piece."""
    out = []
    for idx, (d, data) in enumerate(wire):
        d = (R if d == W else W) if swap else d
        if rng is None:
            out += p.feed(d, data, idx * 1000)
            continue
        i = 0
        k = 0
        while i < len(data):
            n = rng.choice([1, 2, 3, 5, 9, 10, 17, 64, 1000, 20000])
            out += p.feed(d, data[i:i + n], idx * 1000 + k)
            i += n
            k += 1
    return out


def s(x) -> str:
    return x.decode() if isinstance(x, bytes) else x


def split_pseudo(headers):
    pseudo = {s(n): s(v) for n, v in headers if s(n).startswith(":")}
    regular = [(s(n), s(v)) for n, v in headers if not s(n).startswith(":")]
    return pseudo, regular


def check_exact(conv: Conversation, exchanges, decoded_bodies=None, only=None):
    """Every stream the endpoints saw came out as one exchange equal to what they saw."""
    decoded_bodies = decoded_bodies or {}
    by_sid = {e.stream_id: e for e in exchanges}
    assert len(by_sid) == len(exchanges), "one exchange per stream"
    sids = set(conv.req) | set(conv.resp)
    if only is not None:
        sids &= set(only)
    assert set(by_sid) == sids
    for sid in sids:
        e = by_sid[sid]
        assert e.protocol == "h2"
        rq, rs = conv.req.get(sid), conv.resp.get(sid)
        pseudo, regular = split_pseudo(rq["headers"])
        assert e.request.method == pseudo[":method"]
        assert e.request.target == pseudo[":path"]
        assert e.request.authority == pseudo[":authority"]
        assert e.request.scheme == pseudo[":scheme"]
        assert e.request.headers == regular
        assert e.request.body.getvalue() == rq["body"]
        assert e.request.trailers == [(s(n), s(v)) for n, v in rq["trailers"]]
        assert e.request.unknown_headers == 0
        assert e.request.http_version == "2"
        reset = (rq or {}).get("reset") is not None or (rs or {}).get("reset") is not None
        if reset:
            assert any("reset" in n for n in e.notes), e.notes
        if rs is None or rs["headers"] is None:
            assert e.response is None or e.response.status == 0
            continue
        rpseudo, rregular = split_pseudo(rs["headers"])
        assert e.response.status == int(rpseudo[":status"])
        assert e.response.headers == rregular
        want = decoded_bodies.get(sid, rs["body"])
        assert e.response.body.getvalue() == want
        assert e.response.trailers == [(s(n), s(v)) for n, v in rs["trailers"]]
        assert e.response.complete == (rs["ended"] and not reset)
        assert e.request.complete == rq["ended"]
        assert not e.gaps
        assert e.response.unknown_headers == 0


@functools.lru_cache(maxsize=64)
def big_conversation(seed: int = 1, reframe: bool = True, n: int = 12) -> Conversation:
    rng = random.Random(seed)
    c = Conversation(rng, reframe=reframe)
    sids = []
    for i in range(n):
        body = (b'{"model":"claude","messages":[{"role":"user","content":"' +
                b"x" * rng.choice([0, 10, 3000, 70000]) + b'"}]}')
        pad = rng.choice([None, 0, 7, 200])
        extra = [(b"x-big", b"v" * 20000)] if i == 3 else []       # forces CONTINUATION from h2 itself
        trailers = [(b"x-req-trailer", b"t%d" % i)] if i == 5 else None
        sids.append(c.request(req_headers(i, extra), body, pad=pad, trailers=trailers))
    # Responses interleaved round-robin, some with trailers, one reset, one 103 interim.
    streams = {sid: sse(i, rng.randint(1, 6)) for i, sid in enumerate(sids)}
    for i, sid in enumerate(sids):
        if i == 7:
            c.server.send_headers(sid, [(b":status", b"103"), (b"link", b"</x>; rel=preload")])
            c.pump()
        c.server.send_headers(sid, resp_headers(i, [(b"x-resp-n", str(i).encode())]))
        c.pump()
    while streams:
        for i, sid in enumerate(list(streams)):
            chunks = streams[sid]
            if len(sids) > 4 and sid == sids[4] and len(chunks) < 2:
                c.server.reset_stream(sid, ErrorCodes.CANCEL)
                c.pump()
                del streams[sid]
                continue
            chunk = chunks.pop(0)
            last = not chunks
            if last and len(sids) > 2 and sid == sids[2]:
                c.send_body(c.server, sid, chunk, end=False, pad=rng.choice([None, 5]))
                c.server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
                c.pump()
            else:
                c.send_body(c.server, sid, chunk, end=last, pad=rng.choice([None, 0, 3]))
            if last:
                del streams[sid]
    return c


# --------------------------------------------------------------------------- detection

def test_looks_like_h2_preface():
    assert looks_like_h2(PREFACE + b"\x00\x00\x12\x04")
    assert looks_like_h2(PREFACE[:10])
    assert not looks_like_h2(b"POST /v1/messages HTTP/1.1\r\n")
    assert not looks_like_h2(b"PRI")                       # too short to tell
    assert not looks_like_h2(b"HTTP/1.1 200 OK\r\n")


def test_looks_like_h2_frames_on_real_streams():
    c = big_conversation(seed=3, reframe=False, n=3)
    client = b"".join(d for dr, d in c.wire if dr == W)[len(PREFACE):]
    server = b"".join(d for dr, d in c.wire if dr == R)
    assert looks_like_h2_frames(client)
    assert looks_like_h2_frames(server)
    for d, data in c.wire[1:]:   # each send (frame-aligned) after the preface
        assert looks_like_h2_frames(data)
    for bad in (b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n",
                b'{"type":"message"}', b"event: ping\ndata: {}\n\n", PREFACE, b"\x00" * 4):
        assert not looks_like_h2_frames(bad), bad
    rng = random.Random(7)
    hits = sum(looks_like_h2_frames(rng.randbytes(200)) for _ in range(2000))
    assert hits == 0


# --------------------------------------------------------------------------- exact reconstruction

def test_many_interleaved_streams_exact():
    c = big_conversation(seed=1)
    p = Http2Connection(CONN)
    out = feed_all(p, c.wire)
    out += p.close("eof", 10**9)
    check_exact(c, out)
    assert p.stats.exchanges == len(out) == 12
    assert p.stats.parse_errors == 0 and p.stats.unknown_header_blocks == 0
    assert p.stats.skipped_bytes == 0
    by = {e.stream_id: e for e in out}
    assert any("interim response 103" in n for n in by[15].notes)
    assert by[5].response.trailers == [("grpc-status", "0")]
    assert by[11].request.trailers == [("x-req-trailer", "t5")]
    assert ("x-big", "v" * 20000) in by[7].request.headers
    # every pair except the reset and the trailing-closed ones is written as the response ends
    assert all(not any("connection closed" in n for n in e.notes) for e in out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), cuts=st.integers(0, 2**32 - 1).map(random.Random))
def test_arbitrary_splits_give_the_same_exchanges(seed, cuts):
    c = big_conversation(seed=seed % 50, n=6)
    p = Http2Connection(CONN)
    out = feed_all(p, c.wire, rng=cuts)
    out += p.close("eof", 10**9)
    check_exact(c, out)
    assert p.stats.parse_errors == 0 and p.stats.skipped_bytes == 0


def test_traced_server_direction_from_preface():
    c = big_conversation(seed=2, n=4)
    p = Http2Connection(CONN)
    out = feed_all(p, c.wire, swap=True)   # the traced process is the server: requests are READ
    check_exact(c, out + p.close("eof", 1))


def test_server_preface_first_means_connection_start():
    # Traced server that writes its SETTINGS before reading the client's preface.
    c = big_conversation(seed=4, n=2)
    wire = list(c.wire)
    first_r = next(i for i, (d, _) in enumerate(wire) if d == R)
    wire.insert(0, wire.pop(first_r))
    p = Http2Connection(CONN)
    out = feed_all(p, wire)
    check_exact(c, out + p.close("eof", 1))
    assert p.stats.unknown_header_blocks == 0


def test_timestamps_and_wire_bytes():
    c = Conversation()
    sid = c.request(req_headers(0), b'{"a":1}')
    c.respond(sid, resp_headers(0), sse(0, 3))
    p = Http2Connection(CONN)
    out = feed_all(p, c.wire)
    (e,) = out
    sends = [(i * 1000, d, data) for i, (d, data) in enumerate(c.wire)]
    # request head: the first client send after the preface/SETTINGS that carried a HEADERS frame
    hdr_ts = next(ts for ts, d, data in sends if d == W and b"\x01" in data[3:4] + bytes(
        f.type == 1 for f in _frames(data[len(PREFACE):] if data.startswith(PREFACE) else data)))
    assert e.request.ts_ns == hdr_ts
    assert e.request.ts_ns <= e.request.end_ts_ns <= e.response.ts_ns
    assert e.response.ts_ns <= e.response.first_body_ts_ns <= e.response.end_ts_ns
    assert e.response.end_ts_ns == sends[-1][0] or e.response.end_ts_ns <= sends[-1][0]
    # wire bytes: every HEADERS/CONTINUATION/DATA frame of the stream, header included
    want_req = sum(9 + len(f.serialize_body()) for dr, data in c.wire if dr == W
                   for f in _frames(data[len(PREFACE):] if data.startswith(PREFACE) else data)
                   if f.type in (0, 1, 9) and f.stream_id == sid)
    want_resp = sum(9 + len(f.serialize_body()) for dr, data in c.wire if dr == R
                    for f in _frames(data) if f.type in (0, 1, 9) and f.stream_id == sid)
    assert e.request.wire_bytes == want_req
    assert e.response.wire_bytes == want_resp
    chunks = e.body_times
    assert [o for o, _ in chunks] == [0, len(sse(0, 3)[0]), 2 * len(sse(0, 3)[0])]


def test_content_encoding_gzip_and_deflate_and_zstd():
    import zstandard
    c = Conversation()
    text = b"".join(sse(9, 50))
    bodies = {}
    for enc, blob in (("gzip", gzip.compress(text)), ("deflate", zlib.compress(text)),
                      ("zstd", zstandard.ZstdCompressor().compress(text))):
        sid = c.request(req_headers(1, [(b"accept-encoding", b"gzip, deflate, br, zstd")]))
        c.respond(sid, resp_headers(1, [(b"content-encoding", enc.encode())]),
                  [blob[:len(blob) // 2], blob[len(blob) // 2:]])
        bodies[sid] = text
    sid = c.request(req_headers(2))
    c.respond(sid, resp_headers(2, [(b"content-encoding", b"gzip")]), [b"not gzip at all"])
    p = Http2Connection(CONN)
    out = feed_all(p, c.wire)
    by = {e.stream_id: e for e in out}
    check_exact(c, [e for e in out if e.stream_id != sid], bodies, only=bodies)
    assert by[1].response.content_encoding == "gzip"
    bad = by[sid].response
    assert bad.decode_error and bad.body.getvalue() == b"not gzip at all"
    assert p.stats.decode_errors == 1


def test_decoded_body_cap():
    c = Conversation()
    text = b"a" * 200_000
    sid = c.request(req_headers(0))
    c.respond(sid, resp_headers(0, [(b"content-encoding", b"gzip")]), [gzip.compress(text)])
    p = Http2Connection(CONN, max_decoded_body=50_000)
    (e,) = feed_all(p, c.wire)
    assert e.response.decoded_truncated_at == 50_000
    assert e.response.body.getvalue() == text[:50_000]


def test_rst_stream_by_client_writes_pair_with_note():
    c = Conversation()
    sid = c.request(req_headers(0), b"{}")
    c.server.send_headers(sid, resp_headers(0))
    c.send_body(c.server, sid, b"event: ping\ndata: {}\n\n", end=False)
    c.client.reset_stream(sid, ErrorCodes.CANCEL)
    c.pump()
    p = Http2Connection(CONN)
    (e,) = feed_all(p, c.wire)
    assert e.response.status == 200 and not e.response.complete
    assert e.response.body.getvalue() == b"event: ping\ndata: {}\n\n"
    assert any("reset by the client (CANCEL)" in n for n in e.notes)
    assert e.incomplete


def test_goaway_finishes_unprocessed_streams():
    c = Conversation()
    a = c.request(req_headers(0))
    b = c.request(req_headers(1))
    c.respond(a, resp_headers(0), [b"ok"])
    c.server.close_connection(ErrorCodes.NO_ERROR, last_stream_id=a)
    c.pump()
    p = Http2Connection(CONN)
    out = feed_all(p, c.wire)
    by = {e.stream_id: e for e in out}
    assert set(by) == {a, b}
    assert by[a].response.complete
    assert by[b].response is None and any("GOAWAY" in n for n in by[b].notes)


def test_close_flushes_open_streams_and_sse_stays_raw():
    c = Conversation()
    sid = c.request(req_headers(0), b"{}")
    c.respond(sid, resp_headers(0), sse(0, 2), end=False)
    p = Http2Connection(CONN)
    assert feed_all(p, c.wire) == []
    (e,) = p.close("process exited", 123)
    assert e.response.body.getvalue() == b"".join(sse(0, 2))
    assert not e.response.complete and e.request.complete
    assert any("process exited" in n for n in e.notes)


def test_server_push():
    c = Conversation()
    sid = c.request([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                     (b":path", b"/")])
    pushed = 2
    c.server.push_stream(sid, pushed, [(b":method", b"GET"), (b":scheme", b"https"),
                                       (b":authority", b"x"), (b":path", b"/style.css")])
    c.respond(sid, [(b":status", b"200")], [b"<html>"])
    c.respond(pushed, [(b":status", b"200"), (b"content-type", b"text/css")], [b"p{}"])
    p = Http2Connection(CONN)
    out = feed_all(p, c.wire)
    by = {e.stream_id: e for e in out}
    assert by[pushed].request.target == "/style.css"
    assert by[pushed].response.body.getvalue() == b"p{}"
    assert any("push" in n for n in by[pushed].notes)
    assert by[sid].response.body.getvalue() == b"<html>"


def test_unknown_extension_frames_and_ping_ignored():
    c = Conversation()
    sid = c.request(req_headers(0))
    c.client.ping(b"12345678")
    c.pump()
    c.respond(sid, resp_headers(0), [b"x"])
    wire = list(c.wire)
    ext = (5).to_bytes(3, "big") + bytes([0xFA, 0]) + (0).to_bytes(4, "big") + b"hello"
    wire.insert(3, (W, ext))
    p = Http2Connection(CONN)
    out = feed_all(p, wire)
    check_exact(c, out)
    assert p.stats.parse_errors == 0


# --------------------------------------------------------------------------- unknown HPACK state

def truth_of(conv):
    t = {}
    for sid, rq in conv.req.items():
        t[sid] = {"req": rq, "resp": conv.resp.get(sid)}
    return t


def minus_one_range(body: bytes, truth: bytes) -> bool:
    """``body`` is ``truth`` with at most one contiguous range removed."""
    lo, hi = 0, min(len(body), len(truth))
    while lo < hi:      # longest common prefix, by bisection on slices
        mid = (lo + hi + 1) // 2
        if body[:mid] == truth[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return truth.endswith(body[lo:])


def check_no_garbage(conv, exchanges, exact_sids=(), roles_known=True):
    """Whatever the parser reports must be true; streams in ``exact_sids`` must be exact.

    ``roles_known=False``: the parser could not tell which side is the client, so a field only has
    to be one the stream really carried (in either direction); bodies are not compared."""
    truth = truth_of(conv)
    for e in exchanges:
        t = truth[e.stream_id]
        assert not e.incomplete or e.notes, "an incomplete pair must say why"
        if not roles_known:
            every = {(s(n), s(v)) for part in (t["req"], t["resp"] or {}) for key in ("headers", "trailers")
                     for n, v in (part.get(key) or [])}
            msgs = [m for m in (e.request, e.response) if m is not None]
            for m in msgs:
                for h in m.headers + m.trailers:
                    assert h in every, h
                for name, field in (("method", ":method"), ("target", ":path"),
                                    ("authority", ":authority")):
                    assert getattr(m, name) in ("", *(v for n, v in every if n == field))
                assert m.status in (0, *(int(v) for n, v in every if n == ":status"))
            continue
        pseudo, regular = split_pseudo(t["req"]["headers"])
        rq = e.request
        for name, field in (("method", ":method"), ("target", ":path"),
                            ("authority", ":authority")):
            got = getattr(rq, name)
            assert got in ("", pseudo[field]), (name, got)
        for h in rq.headers:
            assert h in regular, h
        assert minus_one_range(rq.body.getvalue(), t["req"]["body"]), \
            "request body must be the true body minus lost ranges"
        if e.response is not None and t["resp"] is not None and t["resp"]["headers"]:
            rpseudo, rregular = split_pseudo(t["resp"]["headers"])
            assert e.response.status in (0, int(rpseudo[":status"]))
            for h in e.response.headers:
                assert h in rregular, h
            for h in e.response.trailers:
                assert h in [(s(n), s(v)) for n, v in t["resp"]["trailers"]], h
            assert minus_one_range(e.response.body.getvalue(), t["resp"]["body"])
        for h in rq.trailers:
            assert h in [(s(n), s(v)) for n, v in t["req"]["trailers"]], h
    by = {e.stream_id: e for e in exchanges}
    for sid in exact_sids:
        e = by[sid]
        t = truth[sid]
        pseudo, regular = split_pseudo(t["req"]["headers"])
        assert e.request.headers == regular and e.request.target == pseudo[":path"]
        assert e.request.body.getvalue() == t["req"]["body"]
        assert e.response.body.getvalue() == t["resp"]["body"]
        assert e.response.headers == split_pseudo(t["resp"]["headers"])[1]


def warm_then_more(n_warm=3, n_after=3, seed=0):
    """Requests that fill the HPACK tables, then a marker, then requests that reuse them."""
    c = Conversation(random.Random(seed))
    for i in range(n_warm):
        sid = c.request(req_headers(i), b'{"warm":true}')
        c.respond(sid, resp_headers(i), sse(i, 2))
    mark = len(c.wire)
    sids = []
    for i in range(n_after):
        sid = c.request(req_headers(100 + i, [(b"x-new-%d" % i, b"fresh")]), b'{"n":%d}' % i)
        c.respond(sid, resp_headers(100 + i), sse(100 + i, 3))
        sids.append(sid)
    return c, mark, sids


def test_mid_connection_attach_marks_unknown_headers_and_keeps_bodies():
    c, mark, sids = warm_then_more()
    p = Http2Connection(CONN)
    out = feed_all(p, c.wire[mark:])
    out += p.close("eof", 1)
    assert sorted(e.stream_id for e in out) == sids
    check_no_garbage(c, out)
    assert p.stats.unknown_header_blocks > 0
    for e in out:
        t = c.req[e.stream_id]
        # :method POST and :scheme https are static-table entries: always decodable
        assert e.request.method == "POST"
        # The header literal inserted after the attach is known; the reused ones are not.
        assert e.request.unknown_headers > 0
        assert e.request.body.getvalue() == t["body"]
        assert e.response.body.getvalue() == c.resp[e.stream_id]["body"]
        assert e.response.status == 200
        assert any("unknown" in n for n in e.notes)
        # every field is either decoded (pseudo-headers into their slots; :scheme https is a static
        # entry) or counted as unknown
        known_pseudo = 1 + sum(1 for n in ("method", "target", "authority") if getattr(e.request, n))
        assert len(e.request.headers) + known_pseudo + e.request.unknown_headers == len(t["headers"])
        # x-new-i was sent as a literal with its own name: decoded exactly
        i = sids.index(e.stream_id)
        assert (f"x-new-{i}", "fresh") in e.request.headers
        # x-request-n changed value each time: literal value with an indexed (dynamic) name
    # The attach point is frame-aligned: nothing skipped.
    assert p.stats.skipped_bytes == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 30), start=st.floats(0, 1), cut=st.floats(0, 1),
       pieces=st.integers(0, 2**32 - 1).map(random.Random), server=st.booleans())
def test_attach_anywhere_never_reports_wrong_headers(seed, start, cut, pieces, server):
    """``server``: the traced process is the h2 server (requests are READ)."""
    c = big_conversation(seed=seed, n=6)
    k = int(start * (len(c.wire) - 1))
    d0, first = c.wire[k]
    wire = [(d0, first[int(cut * len(first)):])] + c.wire[k + 1:]
    p = Http2Connection(CONN)
    out = feed_all(p, wire, rng=pieces, swap=server)
    out += p.close("eof", 10**9)
    # Which side is the client is only a guess (the traced process: the client) until a readable
    # :method or :status, or both END_STREAMs of a stream, tell; headers are never wrong regardless.
    truth = R if server else W
    guess = p.streams.client_dir if p.streams.client_dir is not None else W
    check_no_garbage(c, out, roles_known=p.streams.roles_sure or guess == truth)
    assert len({e.stream_id for e in out}) == len(out)
    if p.streams.roles_sure:
        assert p.streams.client_dir == truth


def test_roles_from_end_stream_order_when_no_header_is_readable():
    # Attached after every header block: only DATA. Both ends of stream 1 seen: the request ended first.
    c = Conversation()
    sid = c.client.get_next_available_stream_id()
    c.client.send_headers(sid, req_headers(0))
    c.pump()
    c.server.send_headers(sid, resp_headers(0))
    c.pump()
    mark = len(c.wire)
    c.send_body(c.client, sid, b'{"q":1}', end=True)
    c.send_body(c.server, sid, b"answer", end=True)
    for server in (False, True):
        p = Http2Connection(CONN)
        (e,) = feed_all(p, c.wire[mark:], swap=server) + p.close("eof", 1)
        assert e.request.body.getvalue() == b'{"q":1}' and e.response.body.getvalue() == b"answer"
        assert p.streams.client_dir == (R if server else W)


def feed_with_loss(p: Http2Connection, wire, direction, a: int, b: int, rng=None) -> list:
    """Feed a conversation with bytes [a, b) of ``direction``'s byte stream reported as lost (one gap
    per send they fall in); what follows a loss is fed in random pieces when ``rng`` is given."""
    out = []
    pos = 0
    for idx, (dr, data) in enumerate(wire):
        if dr != direction:
            out += p.feed(dr, data, idx)
            continue
        lo, hi = pos, pos + len(data)
        pos = hi
        keep_before = data[:max(0, min(len(data), a - lo))]
        keep_after = data[max(0, min(len(data), b - lo)):]
        if keep_before:
            out += p.feed(dr, keep_before, idx)
        if lo < b and hi > a:
            out += p.gap(dr, min(hi, b) - max(lo, a), idx)
        if keep_after and (lo < b and hi > a or not keep_before):
            i = 0
            while i < len(keep_after):
                n = rng.choice([3, 100, 5000, 100000]) if rng is not None else len(keep_after)
                out += p.feed(dr, keep_after[i:i + n], idx)
                i += n
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 30), where=st.floats(0, 1), size=st.integers(1, 5000),
       direction=st.sampled_from([W, R]), pieces=st.integers(0, 2**32 - 1).map(random.Random))
def test_gap_anywhere_never_reports_wrong_headers(seed, where, size, direction, pieces):
    c = big_conversation(seed=seed, n=6)
    # Cut ``size`` bytes out of one direction's byte stream at ``where`` and report them as a gap.
    stream = b"".join(d for dr, d in c.wire if dr == direction)
    a = int(where * len(stream))
    b = min(len(stream), a + size)
    p = Http2Connection(CONN)
    out = feed_with_loss(p, c.wire, direction, a, b, rng=pieces)
    out += p.close("eof", 10**9)
    check_no_garbage(c, out)
    assert p.stats.gap_bytes == b - a
    assert len({e.stream_id for e in out}) == len(out)


def test_gap_inside_data_frame_keeps_framing_and_hpack():
    c = Conversation()
    sid1 = c.request(req_headers(0))
    c.respond(sid1, resp_headers(0), [b"A" * 5000, b"B" * 5000])
    sid2 = c.request(req_headers(1))
    c.respond(sid2, resp_headers(1), [b"C" * 100])
    # Find the first response DATA frame of sid1 and drop 1000 bytes from its middle.
    wire = []
    done = False
    for d, data in c.wire:
        if not done and d == R and b"A" * 100 in data:
            i = data.index(b"A" * 1000) + 2000
            wire.append((d, data[:i]))
            wire.append(("gap", 1000))
            wire.append((d, data[i + 1000:]))
            done = True
        else:
            wire.append((d, data))
    p = Http2Connection(CONN)
    out = []
    for d, data in wire:
        out += p.gap(R, data, 0) if d == "gap" else p.feed(d, data, 0)
    by = {e.stream_id: e for e in out}
    e1 = by[sid1]
    assert e1.response.body.getvalue() == b"A" * 4000 + b"B" * 5000
    assert e1.gaps == [("read", 1000)] and e1.incomplete
    assert e1.response.holes == [[2000, 1000, 0]] and not e1.request.holes
    assert any("hole" in n for n in e1.notes)
    # Nothing else suffered: the next stream is exact, HPACK intact.
    check_exact(c, [by[sid2]], only=[sid2])
    e2 = by[sid2]
    assert e2.response.headers == split_pseudo(c.resp[sid2]["headers"])[1]
    assert e2.request.headers == split_pseudo(c.req[sid2]["headers"])[1]
    assert not e2.gaps and e2.request.unknown_headers == 0
    assert p.stats.unknown_header_blocks == 0 and p.stats.skipped_bytes == 0


def test_gap_across_frames_resyncs_and_later_streams_decode_what_they_can():
    c = Conversation()
    sid1 = c.request(req_headers(0), b"{}")
    c.respond(sid1, resp_headers(0), sse(0, 3), end=False)
    mark = len(c.wire)
    sid2 = c.request(req_headers(1, [(b"x-after", b"gap")]), b'{"after":1}')
    c.respond(sid2, resp_headers(1), [b"after-body"])
    c.send_body(c.server, sid1, b"tail", end=True)
    p = Http2Connection(CONN)
    out = feed_all(p, c.wire[:mark])
    out += p.gap(W, 12345, 0)       # lost client bytes covering frame boundaries
    out += feed_all(p, c.wire[mark:])
    out += p.close("eof", 1)
    by = {e.stream_id: e for e in out}
    assert set(by) == {sid1, sid2}
    check_no_garbage(c, out)
    # stream 1 was open: it gets the gap noted (the request side had already ended though)
    assert by[sid1].response.body.getvalue() == b"".join(sse(0, 3)) + b"tail"
    assert ("x-after", "gap") in by[sid2].request.headers
    assert by[sid2].request.body.getvalue() == b'{"after":1}'
    assert by[sid2].response.body.getvalue() == b"after-body"
    assert p.stats.gap_bytes == 12345


def test_stale_stream_after_gap_is_written_out():
    c = Conversation()
    sid1 = c.request(req_headers(0), b"{}")
    c.respond(sid1, resp_headers(0), sse(0, 1), end=False)
    mark = len(c.wire)
    sid2 = c.request(req_headers(1), b"{}")
    c.respond(sid2, resp_headers(1), [b"x"])
    p = Http2Connection(CONN, stale_after_s=5)
    out = feed_all(p, c.wire[:mark])
    out += p.gap(R, 50, 1_000_000_000)
    out += p.feed(*c.wire[mark], 2_000_000_000)
    assert not out
    for d, data in c.wire[mark + 1:]:
        out += p.feed(d, data, 10_000_000_000)
    ids = [e.stream_id for e in out]
    assert sid1 in ids and sid2 in ids
    e1 = next(e for e in out if e.stream_id == sid1)
    assert e1.incomplete and any("gap" in n for n in e1.notes)


def test_huffman_and_never_indexed_and_table_size_update():
    c = Conversation()
    c.client.encoder.header_table_size = 256          # emits a dynamic table size update
    sids = []
    for i in range(4):
        h = req_headers(i, [(b"authorization", b"Bearer abc%d" % i), (b"cookie", b"a=%d" % i)])
        sids.append(c.request(h))
        c.respond(sids[-1], resp_headers(i), [b"ok"])
    p = Http2Connection(CONN)
    out = feed_all(p, c.wire)
    check_exact(c, out)


def test_utf8_and_binary_header_values_never_raise():
    c = Conversation()
    c.client.config.validate_outbound_headers = False
    sid = c.request(req_headers(0, [(b"x-utf8", "héllo".encode()), (b"x-bin", b"\xff\xfe")]))
    c.respond(sid, resp_headers(0), [b"ok"])
    p = Http2Connection(CONN)
    (e,) = feed_all(p, c.wire)
    assert ("x-utf8", "héllo") in e.request.headers
    assert e.request.header("x-bin") == "\ufffd\ufffd"


def test_non_h2_garbage_does_not_crash():
    p = Http2Connection(CONN)
    rng = random.Random(1)
    out = []
    for _ in range(50):
        out += p.feed(rng.choice([W, R]), rng.randbytes(rng.randint(1, 3000)), 0)
    out += p.close("eof", 0)
    assert p.stats.skipped_bytes > 0
    assert p.stats.not_http == 1 and p.stats.exchanges == 0   # random bytes never pass as frames
    for e in out:
        assert e.request.headers == [] or all(isinstance(k, str) for k, _ in e.request.headers)


@pytest.mark.parametrize("swap", [False, True])
def test_single_byte_feeding(swap):
    c = big_conversation(seed=9, n=3)
    p = Http2Connection(CONN)
    out = []
    for i, (d, data) in enumerate(c.wire):
        d = (R if d == W else W) if swap else d
        for j in range(len(data)):
            out += p.feed(d, data[j:j + 1], i)
    check_exact(c, out + p.close("eof", 1))


def test_reset_after_full_content_length_body_is_complete():
    # curl resets a stream once it has content-length bytes, before the empty END_STREAM DATA frame
    c = Conversation()
    sid = c.request(req_headers(0), b"{}")
    c.server.send_headers(sid, resp_headers(0, [(b"content-length", b"5")]))
    c.send_body(c.server, sid, b"hello", end=False)
    c.client.reset_stream(sid, ErrorCodes.STREAM_CLOSED)
    c.pump()
    sid2 = c.request(req_headers(1), b"{}")
    c.server.send_headers(sid2, resp_headers(1, [(b"content-length", b"10")]))
    c.send_body(c.server, sid2, b"hello", end=False)
    c.client.reset_stream(sid2, ErrorCodes.CANCEL)
    c.pump()
    p = Http2Connection(CONN)
    a, b = feed_all(p, c.wire)
    assert a.response.complete and not a.incomplete
    assert any("reset by the client (STREAM_CLOSED)" in n for n in a.notes)
    assert not b.response.complete and b.incomplete


def test_h2_frames_offset_finds_a_boundary_inside_a_chunk():
    from tracer.protocols.http2 import h2_frames_offset
    c = big_conversation(seed=5, reframe=False, n=8)
    server = b"".join(d for dr, d in c.wire if dr == W)[len(PREFACE):]   # the client's frames
    # frame boundaries of the server's stream
    bounds, i = [], 0
    while i < len(server):
        bounds.append(i)
        i += 9 + int.from_bytes(server[i:i + 3], "big")
    rng = random.Random(3)
    found = 0
    for _ in range(200):
        a = rng.randrange(0, len(server) - 100)
        off = h2_frames_offset(server[a:a + 40000])
        if off is not None:
            assert a + off in bounds      # never a false boundary
            found += 1
    assert found > 150
    assert h2_frames_offset(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n\r\n" * 50) is None
    assert h2_frames_offset(random.Random(1).randbytes(50000)) is None


def test_priority_information_is_ignored():
    c = Conversation()
    sid = c.client.get_next_available_stream_id()
    c.client.send_headers(sid, req_headers(0), end_stream=True, priority_weight=200,
                          priority_depends_on=0, priority_exclusive=True)   # HEADERS with PRIORITY
    c.client.prioritize(sid, weight=16)                                     # a PRIORITY frame
    c.pump()
    c.respond(sid, resp_headers(0), [b"prioritised"])
    p = Http2Connection(CONN)
    out = feed_all(p, c.wire)
    check_exact(c, out)
    assert p.stats.parse_errors == 0


def test_wrong_guessed_boundary_drops_the_streams_it_invented():
    # Mid-connection bytes that happen to look like two DATA frames on stream 1, then a header that
    # breaks the rules: the guess was wrong, and stream 1 (no header block ever decoded) is dropped.
    fake = b"\x00\x00\x02\x00\x00\x00\x00\x00\x01ab" * 2
    bad = b"\x00\x00\x06\x04\x00\x00\x00\x00\x01" + b"\x00" * 6      # SETTINGS on stream 1
    c = Conversation()
    sid = c.request(req_headers(0))
    c.respond(sid, resp_headers(0), [b"real"])
    mark = next(i for i, (d, data) in enumerate(c.wire) if d == W and b"\x01" == data[3:4])
    p = Http2Connection(CONN)
    out = p.feed(W, fake, 1) + p.feed(W, bad, 2)
    out += feed_all(p, c.wire[mark:]) + p.close("eof", 9)
    assert [e.stream_id for e in out] == [sid]
    assert out[0].response.body.getvalue() == b"real" and out[0].request.body.getvalue() == b""
    assert p.stats.parse_errors >= 1 and p.stats.skipped_bytes >= 4   # the invented body counts as skipped


# --------------------------------------------------------------------------- when a stream is finished

def early_response(body: bytes = b'{"late": "body"}') -> tuple[Conversation, int]:
    """nginx's shape: the client sends HEADERS, the server answers in full (END_STREAM) before it
    reads the body, and only then does the client send the request body's DATA (END_STREAM)."""
    c = Conversation()
    sid = c.client.get_next_available_stream_id()
    c.client.send_headers(sid, req_headers(0, [(b"content-length", str(len(body)).encode())]))
    c.pump()
    c.respond(sid, resp_headers(0), [b'{"ok":true}'])
    c.send_body(c.client, sid, body, end=True)
    return c, sid


def test_request_body_sent_after_the_response_is_in_the_pair():
    body = b'{"late": "body"}' * 3000          # several DATA frames, flow control in between
    c, sid = early_response(body)
    last_req_data = max(i for i, (d, data) in enumerate(c.wire) if d == W and body[:100] in data)
    p = Http2Connection(CONN)
    out = []
    for idx, (d, data) in enumerate(c.wire):
        got = p.feed(d, data, idx)
        if idx < last_req_data:
            assert got == [], "written out before the client ended its side of the stream"
        out += got
    (e,) = out
    check_exact(c, out)
    assert e.request.body.getvalue() == body and e.request.complete and not e.incomplete
    assert e.response.body.getvalue() == b'{"ok":true}'


def test_stream_the_client_never_ends_is_written_at_close_with_why():
    c = Conversation()
    sid = c.client.get_next_available_stream_id()
    c.client.send_headers(sid, req_headers(0))
    c.pump()
    c.send_body(c.client, sid, b'{"partial":', end=False)
    c.respond(sid, resp_headers(0), [b"denied"])
    p = Http2Connection(CONN)
    assert feed_all(p, c.wire) == []
    (e,) = p.close("process exited", 5)
    assert e.response.complete and not e.request.complete and e.incomplete
    assert e.request.body.getvalue() == b'{"partial":'
    assert any("still sending the request body" in n and "process exited" in n for n in e.notes), e.notes


def test_server_reset_after_early_response_finishes_the_pair_and_counts_late_data():
    c = Conversation()
    sid = c.client.get_next_available_stream_id()
    c.client.send_headers(sid, req_headers(0))
    c.pump()
    c.respond(sid, resp_headers(0), [b"too big"])
    c.server.reset_stream(sid, ErrorCodes.NO_ERROR)
    c.pump()
    # A DATA frame the client had in flight when the reset arrived.
    late = (11).to_bytes(3, "big") + bytes([0, 1]) + sid.to_bytes(4, "big") + b"late body!!"
    p = Http2Connection(CONN)
    (e,) = feed_all(p, c.wire + [(W, late)])
    assert e.response.complete and not e.request.complete
    assert any("reset by the server (NO_ERROR)" in n for n in e.notes)
    assert p.stats.skipped_bytes == 11


@functools.lru_cache(maxsize=32)
def mixed_endings(seed: int) -> Conversation:
    """Streams that end every way: request first, response first (body after it), a client that stops
    sending, resets by either side; interleaved on one connection."""
    rng = random.Random(seed)
    c = Conversation(rng)
    for i in range(6):
        shape = rng.choice(["normal", "early", "stops", "client-reset", "server-reset"])
        sid = c.client.get_next_available_stream_id()
        c.client.send_headers(sid, req_headers(i))
        c.pump()
        if shape == "normal":
            c.send_body(c.client, sid, b'{"n":%d}' % i, end=True)
        c.respond(sid, resp_headers(i), sse(i, rng.randint(1, 3)), end=shape != "client-reset")
        if shape == "early":
            c.send_body(c.client, sid, b'{"late":%d}' % i, end=True)
        elif shape == "stops":
            c.send_body(c.client, sid, b'{"part', end=False)
        elif shape == "client-reset":
            c.client.reset_stream(sid, ErrorCodes.CANCEL)
            c.pump()
        elif shape == "server-reset":
            c.server.reset_stream(sid, ErrorCodes.NO_ERROR)
            c.pump()
    return c


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 30), cut=st.floats(0, 1), reason=st.sampled_from(["", "SSL_free"]))
def test_every_incomplete_pair_says_why(seed, cut, reason):
    """The capture ends anywhere in a conversation whose streams end every which way: each pair
    written is complete or carries a note; pairs whose both sides ended are exact."""
    c = mixed_endings(seed)
    k = int(cut * len(c.wire))
    p = Http2Connection(CONN)
    out = feed_all(p, c.wire[:k]) + p.close(reason, 10**9)
    for e in out:
        assert not e.incomplete or e.notes, (e.stream_id, e.request.complete, e.response)
    if k == len(c.wire):
        done = [sid for sid in c.req if c.req[sid]["ended"] and c.resp.get(sid, {}).get("ended")]
        check_exact(c, [e for e in out if e.stream_id in done], only=done)


def test_attached_during_a_response_the_pair_is_written_at_its_end():
    """Attached after the client had sent its request: no request frame will ever come, so the pair
    does not wait for one (it would otherwise wait for the connection's end)."""
    c = Conversation()
    sid = c.request(req_headers(0), b'{"q":1}')
    mark = len(c.wire)
    c.server.send_headers(sid, resp_headers(0))
    c.pump()
    c.send_body(c.server, sid, b"event: ping\ndata: {}\n\n", end=True)
    p = Http2Connection(CONN)
    (e,) = feed_all(p, c.wire[mark:])
    assert e.response.status == 200 and e.response.complete
    assert e.response.body.getvalue() == b"event: ping\ndata: {}\n\n" and e.incomplete and e.notes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(100, 40_000), frame_pick=st.floats(0, 1), where=st.floats(0, 1),
       lost=st.integers(1, 5000), pad=st.sampled_from([None, 0, 9]))
def test_gap_inside_a_data_frame_loses_exactly_those_bytes(size, frame_pick, where, lost, pad):
    """Bytes lost strictly inside one DATA frame's payload: the body is the true body without exactly
    those bytes (or, if the pad-length byte was hit, without that frame's data), the hole says where,
    and the stream, the framing and the next stream survive."""
    body = bytes(random.Random(size).randbytes(size))
    c = Conversation()
    sid = c.request(req_headers(0), b"{}")
    c.respond(sid, resp_headers(0), [body], pad=pad)
    sid2 = c.request(req_headers(1), b"{}")
    c.respond(sid2, resp_headers(1), [b"next"])
    # the READ byte stream and where each response DATA frame's payload lies in it
    stream = b"".join(d for dr, d in c.wire if dr == R)
    frames, i = [], 0
    while i < len(stream):
        f, n = Frame.parse_frame_header(memoryview(stream[i:i + 9]))
        if f.type == 0x0 and f.stream_id == sid and n > 2:
            frames.append((i + 9, n))
        i += 9 + n
    start, n = frames[int(frame_pick * (len(frames) - 1))]
    a = start + int(where * (n - 1))
    b = min(start + n, a + lost)          # strictly inside that payload
    p = Http2Connection(CONN)
    out = feed_with_loss(p, c.wire, R, a, b)
    by = {e.stream_id: e for e in out}
    e = by[sid]
    got = e.response.body.getvalue()
    (off, gap, skipped), = e.response.holes
    assert gap == b - a and e.gaps == [("read", b - a)] and e.incomplete and e.notes
    k = int(frame_pick * (len(frames) - 1))
    overhead = 0 if pad is None else 1 + pad              # pad-length byte + padding per frame
    before = sum(m - overhead for _, m in frames[:k])       # body bytes in the stream's earlier frames
    if pad is not None and a == start:                      # the pad-length byte was lost: frame dropped
        assert off == before and skipped == n - (b - a)
        assert got == body[:before] + body[before + n - overhead:]
    else:
        data_len = n - overhead
        da = min(max(a - start - (pad is not None), 0), data_len)
        db = min(max(b - start - (pad is not None), 0), data_len)
        assert off == before + da and skipped == 0
        assert got == body[:before + da] + body[before + db:]
    assert by[sid2].response.body.getvalue() == b"next" and not by[sid2].incomplete
