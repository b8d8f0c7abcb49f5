"""Property-based tests over the HTTP/1.1, chunked, SSE and content-decoding paths (issue 6).

Valid traffic, split and interleaved arbitrarily, gives the same records as fed whole; arbitrary or
damaged input (random bytes, truncation, bogus lengths, invalid UTF-8, decompression bombs) never raises
out of the parser or the record builder, never hangs, and always leaves a record or counter that says
what was wrong.

Example counts come from a hypothesis profile picked by TRACER_FUZZ_PROFILE: "ci" (default, a few
hundred per property, part of `make test`) or "fuzz" (100,000 per property, `make fuzz`).
"""

from __future__ import annotations

import gzip
import os
import re
import time
import zlib

import brotli
import orjson
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tracer.protocols.base import Direction as D
from tracer.protocols.encoding import StreamDecoder
from tracer.protocols.http1 import Http1Connection
from tracer.protocols.sse import SSEParser, parse_events, reconstruct
from tracer.sinks.record import Clock, build_record
from tracer.testing.helpers import CONN, chunked

_COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=False,
               print_blob=True)
settings.register_profile("ci", max_examples=int(os.environ.get("TRACER_FUZZ_EXAMPLES", "150")), **_COMMON)
settings.register_profile("fuzz", max_examples=int(os.environ.get("TRACER_FUZZ_EXAMPLES", "100000")),
                          **_COMMON)
PROFILE = settings.get_profile(os.environ.get("TRACER_FUZZ_PROFILE", "ci"))
HANG_S = 5.0          # one example taking longer than this counts as a hang

CLOCK = Clock()

# --------------------------------------------------------------------------------------------- traffic
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


def sse_body(deltas: list[str]) -> bytes:
    ev = [b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","content":[]}}\n\n']
    for d in deltas:
        data = orjson.dumps({"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": d}})
        ev.append(b"event: content_block_delta\ndata: " + data + b"\n\n")
    ev.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    return b"".join(ev)


ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


@st.composite
def exchanges(draw):
    """(request bytes, response bytes, expected decoded response body) of one valid exchange."""
    kind = draw(st.sampled_from(["json", "sse", "encoded", "get", "chunked-json"]))
    prompt = draw(texts)
    req_body = orjson.dumps({"model": "m", "stream": kind == "sse", "messages": [{"content": prompt}]})
    method, target = ("GET", "/v1/models") if kind == "get" else ("POST", "/v1/messages?beta=true")
    head = b"%s %s HTTP/1.1\r\nHost: api.anthropic.com\r\nx-api-key: sk-ant-api03-secretsecret\r\n" % (
        method.encode(), target.encode())
    req = head + (b"\r\n" if method == "GET" else
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(req_body), req_body))
    sizes = draw(st.lists(st.integers(1, 64), min_size=1, max_size=4))
    if kind == "sse":
        body = sse_body(draw(st.lists(texts, max_size=6)))
        resp = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunked(body, sizes))
    elif kind == "encoded":
        enc = draw(st.sampled_from(sorted(ENCODERS)))
        body = orjson.dumps({"text": prompt})
        wire = ENCODERS[enc](body)
        if draw(st.booleans()):
            framing = b"Transfer-Encoding: chunked\r\n\r\n" + chunked(wire, sizes)
        else:
            framing = b"Content-Length: %d\r\n\r\n%s" % (len(wire), wire)
        resp = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: %s\r\n"
                % enc.encode()) + framing
    elif kind == "chunked-json":
        body = orjson.dumps({"text": prompt, "n": len(prompt)})
        resp = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunked(body, sizes))
    else:
        status = draw(st.sampled_from([200, 400, 429, 529]))
        body = orjson.dumps({"ok": status == 200, "t": prompt})
        resp = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            status, len(body), body)
    return req, resp, body


def summary(exs):
    return [(e.request.method, e.request.target, e.request.body.getvalue(), e.request.complete,
             e.response and e.response.status, e.response and e.response.body.getvalue(),
             e.response and e.response.complete, tuple(e.notes), tuple(e.gaps)) for e in exs]


def sequential_script(convo):
    script, ts = [], 0
    for req, resp, _ in convo:
        ts += 1
        script.append((D.WRITE, req, ts))
        ts += 1
        script.append((D.READ, resp, ts))
    return script


def run(script, *, gaps=(), close=True, parser=None):
    """Feed a script; also build (and serialise) every record, as the worker would."""
    p = parser or Http1Connection(CONN)
    out = []
    t0 = time.monotonic()
    for item in script:
        if item[0] == "gap":
            out += p.gap(item[1], item[2], item[3])
        else:
            d, data, ts = item
            out += p.feed(d, data, ts)
    if close:
        out += p.close("test end", 10**12)
    for ex in out:
        rec = build_record(ex, CLOCK, redact=True)
        orjson.dumps(rec, default=str)
    assert time.monotonic() - t0 < HANG_S, "parser took too long (hang?)"
    return out, p


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for c in cuts + [len(data)]:
        if c > last:
            out.append(data[last:c])
            last = c
    return out


# ------------------------------------------------------------------- valid traffic: splits/interleaving
@PROFILE
@given(st.lists(exchanges(), min_size=1, max_size=4), st.data())
def test_splits_and_interleavings_give_identical_records(convo, data):
    """Cut every message anywhere and interleave the two directions in any order a client can produce
    (a request is fully sent before its response starts; the next request may go out while the
    previous response is still arriving): the records equal those of whole-message feeding."""
    expected, _ = run(sequential_script(convo))
    exp = summary(expected)
    assert len(exp) == len(convo) and all(not e.incomplete for e in expected)
    for (_, _, body), e in zip(convo, expected):
        assert e.response.body.getvalue() == body
    # per-direction queues of pieces; response i may start only once request i is fully written
    wq = [(i, p) for i, (rq, _, _) in enumerate(convo)
          for p in pieces(rq, data.draw(st.lists(st.integers(0, 10_000), max_size=5)))]
    rq_ = [(i, p) for i, (_, rs, _) in enumerate(convo)
           for p in pieces(rs, data.draw(st.lists(st.integers(0, 10_000), max_size=5)))]
    written_done = -1
    last_of = {}
    for i, _ in wq:
        last_of[i] = last_of.get(i, 0) + 1
    sent = {}
    script, ts = [], 0
    while wq or rq_:
        can_read = bool(rq_) and rq_[0][0] <= written_done
        choose_write = bool(wq) and (not can_read or data.draw(st.booleans()))
        ts += 1
        if choose_write:
            i, p = wq.pop(0)
            script.append((D.WRITE, p, ts))
            sent[i] = sent.get(i, 0) + 1
            if sent[i] == last_of[i]:
                written_done = i
        else:
            assert can_read
            _, p = rq_.pop(0)
            script.append((D.READ, p, ts))
    got, _ = run(script)
    assert summary(got) == exp


# --------------------------------------------------------------------------------- damaged traffic
def _accounted(exs, p) -> bool:
    """Something says what went wrong: an incomplete pair, a note, or a parser counter."""
    s = p.stats
    return (any(e.incomplete or e.notes or (e.response and e.response.decode_error) for e in exs)
            or s.skipped_bytes > 0 or s.parse_errors > 0 or s.decode_errors > 0 or s.gap_bytes > 0)


@PROFILE
@given(st.lists(st.tuples(st.sampled_from([D.READ, D.WRITE]), st.binary(max_size=400)), max_size=25))
def test_arbitrary_bytes_never_raise_and_are_counted(chunks):
    script = [(d, b, i + 1) for i, (d, b) in enumerate(chunks)]
    out, p = run(script)
    if any(b for _, b in chunks) and not out:
        return   # nothing parsed as a message; what was skipped is counted below when it ever began one
    for e in out:
        assert e.request is not None


@PROFILE
@given(st.lists(exchanges(), min_size=1, max_size=3), st.integers(0, 10**6), st.data())
def test_truncated_stream(convo, cut_at, data):
    """The capture ends (close) anywhere: complete pairs before the cut are exact, the cut one is
    incomplete with a note, and nothing raises."""
    stream = sequential_script(convo)
    total = sum(len(x[1]) for x in stream)
    cut = cut_at % (total + 1)
    script, n = [], 0
    for d, b, ts in stream:
        if n >= cut:
            break
        take = b[:cut - n]
        n += len(take)
        for piece in pieces(take, data.draw(st.lists(st.integers(0, 5000), max_size=3))):
            script.append((d, piece, ts))
    out, p = run(script)
    whole, _ = run(sequential_script(convo))
    ok = [e for e in out if not e.incomplete]
    assert summary(ok) == summary(whole[:len(ok)])
    if cut < total:
        # the pair cut short (if its request was seen at all) says so
        cut_pairs = [e for e in out if e.incomplete]
        assert len(ok) < len(convo)
        for e in cut_pairs:
            assert e.notes, summary([e])
        assert cut_pairs or p.stats.skipped_bytes or len(ok) == sum(1 for _ in out)


@PROFILE
@given(exchanges(), st.integers(-50, 50).filter(lambda x: x != 0), st.booleans())
def test_bogus_content_length(ex, delta, more_after):
    """A Content-Length that lies (too long: the connection ends first; too short: the rest is garbage
    before the next message) never raises; the damage shows as an incomplete pair, a note or a counter."""
    req, resp, body = ex
    assume(b"Content-Length: " in resp)
    head, _, rest = resp.partition(b"\r\n\r\n")
    lines = [l for l in head.split(b"\r\n") if not l.startswith(b"Content-Length")]
    wire = rest
    bad = max(0, len(wire) + delta)
    resp2 = b"\r\n".join(lines) + b"\r\nContent-Length: %d\r\n\r\n" % bad + wire
    script = [(D.WRITE, req, 1), (D.READ, resp2, 2)]
    if more_after:
        script += [(D.WRITE, req, 3), (D.READ, resp, 4)]
    out, p = run(script)
    assert out, "the request must be logged"
    first = out[0]
    if delta > 0:
        # more promised than sent: the pair is incomplete (or the next message's bytes were taken as
        # body, and then the connection still ends short) and says so
        assert _accounted(out, p)
    else:
        # fewer promised: the first response is "complete" but shorter, the leftover is skipped/counted
        assert first.response is not None and first.response.body.size <= len(body) or \
            first.response.decode_error
        assert _accounted(out, p) or (first.response.content_encoding and first.response.decode_error)


@PROFILE
@given(st.binary(min_size=1, max_size=300), st.lists(st.integers(0, 400), max_size=4))
def test_invalid_utf8_sse_body(junk, cuts):
    """SSE bodies with invalid UTF-8 are kept (record built and serialised), never raise."""
    body = b"event: content_block_delta\ndata: " + junk + b"\n\n" + b"\xff\xfe\xc3(\n\n"
    req = b"POST /v1/messages HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"
    resp = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body))
    script = [(D.WRITE, req, 1)] + [(D.READ, p, 2) for p in pieces(resp, cuts)]
    out, _ = run(script)
    assert len(out) == 1 and out[0].response.complete
    assert out[0].response.body.getvalue() == body
    rec = build_record(out[0], CLOCK)
    raw = rec["response"].get("body_raw")
    assert raw is not None
    orjson.dumps(rec, default=str)
    reconstruct(body)                       # deferred SSE reconstruction copes too


@PROFILE
@given(st.sampled_from(sorted(ENCODERS)), st.integers(1, 64), st.integers(0, 3))
def test_decompression_bomb_capped(enc, ratio_kb, extra_layers):
    """A small compressed body that expands far beyond the cap: decoding stops at the cap, says so, and
    takes bounded time."""
    cap = 64 << 10
    plain = b"\0" * (cap * 4 + ratio_kb * 1024)
    wire = ENCODERS[enc](plain)
    d = StreamDecoder(enc, cap=cap)
    out = bytearray()
    t0 = time.monotonic()
    for i in range(0, len(wire), 997):
        out += d.feed(wire[i:i + 997])
    out += d.flush()
    assert time.monotonic() - t0 < HANG_S
    assert len(out) == cap and d.truncated_at == cap and not d.error
    req = b"POST /v1/messages HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"
    resp = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (enc.encode(), len(wire), wire))
    p = Http1Connection(CONN, max_decoded_body=cap)
    out2, _ = run([(D.WRITE, req, 1), (D.READ, resp, 2)], parser=p)
    assert len(out2) == 1
    r = out2[0].response
    assert r.body.size <= cap and r.decoded_truncated_at == cap


@PROFILE
@given(st.sampled_from(sorted(ENCODERS)), st.binary(max_size=2000), st.lists(st.integers(0, 4000), max_size=6),
       st.integers(0, 3000), st.binary(max_size=8))
def test_decoder_splits_and_damage(enc, plain, cuts, damage_at, junk):
    """Any split decodes to the same bytes; damaged input sets .error (or decodes) and never raises."""
    wire = ENCODERS[enc](plain)
    d = StreamDecoder(enc)
    out = b"".join(d.feed(p) for p in pieces(wire, cuts)) + d.flush()
    assert out == plain and not d.error
    if junk:
        at = damage_at % (len(wire) + 1)
        bad = wire[:at] + junk + wire[at + len(junk):]
        d2 = StreamDecoder(enc)
        out2 = b"".join(d2.feed(p) for p in pieces(bad, cuts)) + d2.flush()
        assert d2.error or isinstance(out2, bytes)
        if bad != wire and not d2.error:
            pass   # some damage decodes (e.g. in stored blocks); it is then what the bytes say


# ------------------------------------------------------------------------------------------------ SSE
@PROFILE
@given(st.lists(texts, max_size=8), st.lists(st.integers(0, 5000), max_size=8),
       st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_sse_any_split_same_events(deltas, cuts, eol):
    body = sse_body(deltas).replace(b"\n", eol)
    whole = [(e.event, e.data, e.start, e.end) for e in parse_events(body)]
    p = SSEParser()
    got = []
    for piece in pieces(body, cuts):
        got += p.feed(piece)
    got += p.close()
    assert [(e.event, e.data, e.start, e.end) for e in got] == whole
    assert [e.data for e in got if e.event == "content_block_delta"] == [
        orjson.dumps({"type": "content_block_delta", "index": 0,
                      "delta": {"type": "text_delta", "text": d}}).decode() for d in deltas]
    r = reconstruct(body)
    assert r is not None


@PROFILE
@given(st.binary(max_size=600), st.lists(st.integers(0, 700), max_size=6))
def test_sse_arbitrary_bytes_never_raise(data, cuts):
    p = SSEParser()
    t0 = time.monotonic()
    for piece in pieces(data, cuts):
        p.feed(piece)
    p.close()
    reconstruct(data)
    assert time.monotonic() - t0 < HANG_S


@PROFILE
@given(st.lists(st.tuples(st.sampled_from([D.READ, D.WRITE]),
                          st.binary(max_size=300).map(lambda b: b"\x00" + b.replace(b"\n", b"").replace(b"\r", b""))),
                min_size=1, max_size=20),
       st.lists(st.integers(0, 5), max_size=3))
def test_junk_is_counted_byte_for_byte(chunks, gap_after):
    """Bytes that never contain a message start (no line starts; every captured piece begins with NUL)
    produce no pair and are counted as skipped, byte for byte, whether the stream ends by close or gaps
    cut it."""
    script = []
    for i, (d, b) in enumerate(chunks):
        script.append((d, b, i + 1))
        if i in gap_after:
            script.append(("gap", d, 7, i + 1))
    out, p = run(script)
    assert out == []
    assert p.stats.skipped_bytes == sum(len(b) for _, b in chunks)


# ------------------------------------------------------------------- resynchronisation after a gap
def chunk_layout(body: bytes, sizes: list[int], base: int) -> list[tuple[int, int, int, int]]:
    """(size-line start, data start, data end, body offset) of each chunk of ``chunked(body, sizes)``
    placed at wire offset ``base``; the last entry is the terminating zero-size chunk."""
    out, i, k, pos = [], 0, 0, base
    while i < len(body):
        n = len(body[i:i + max(1, sizes[k % len(sizes)])])
        line = len(b"%x\r\n" % n)
        out.append((pos, pos + line, pos + line + n, i))
        pos += line + n + 2
        i += n
        k += 1
    out.append((pos, pos + 3, pos + 3, len(body)))
    return out


@PROFILE
@given(st.lists(texts, min_size=1, max_size=10), st.lists(st.integers(1, 200), min_size=1, max_size=5),
       st.floats(0, 1), st.integers(1, 600), st.sampled_from(["response", "request"]), st.data())
def test_gap_in_a_chunked_body_loses_at_most_the_gap_and_its_chunk(deltas, sizes, where, size, side,
                                                                    data):
    """A gap anywhere in a chunked body (request or response): the body keeps every byte before the
    gap and every chunk whose size line begins after it; the hole says where, how much was lost and
    exactly how much was skipped; the message still ends at its own end, and the next exchange on the
    connection is exact."""
    body = sse_body(deltas)
    frame = chunked(body, sizes)
    if side == "response":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        first = (D.WRITE, b"POST /v1/messages HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
        d = D.READ
    else:
        head = b"POST /v1/messages HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        first = None
        d = D.WRITE
    wire = head + frame
    lay = chunk_layout(body, sizes, len(head))
    ga = len(head) + int(where * (len(frame) - 1))
    gb = min(len(wire), ga + size)
    script = [(*first, 1)] if first else []
    script += [(d, p, 2) for p in pieces(wire[:ga], data.draw(st.lists(st.integers(0, 10**5), max_size=3)))]
    script.append(("gap", d, gb - ga, 3))
    script += [(d, p, 4) for p in pieces(wire[gb:], data.draw(st.lists(st.integers(0, 10**5), max_size=3)))]
    if side == "request":
        script.append((D.READ, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 5))
    script += [(D.WRITE, b"POST /next HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n{1}", 6),
               (D.READ, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext", 7)]
    out, p = run(script)
    assert len(out) == 2, summary(out)
    ex, nxt = out
    msg = ex.response if side == "response" else ex.request
    kept = sum(max(0, min(de, ga) - ds) for _, ds, de, _ in lay)     # body bytes before the gap
    after = [(ls, off) for ls, _, _, off in lay if ls >= gb] or [(len(wire), len(body))]
    got = msg.body.getvalue()
    assert got.startswith(body[:kept])
    # No byte of framing or from before the gap after the hole: the body resumes at a chunk start.
    resume, at = next((ls, off) for ls, off in after if body[off:] == got[kept:])
    assert got == body[:kept] + body[at:]
    assert msg.holes == [[kept, gb - ga, resume - gb]]
    assert p.stats.skipped_bytes == resume - gb
    assert msg.complete == (resume < len(wire))
    # Data in which a chunk's data could pass for a size line (all hex digits, short) is the only
    # reason to skip more than the chunk the gap ended in.
    ambiguous = any(re.fullmatch(rb"[0-9A-Fa-f]{1,16}[ \t]*(?:;.*)?", body[off:off + de - ds], re.S)
                    for _, ds, de, off in lay)
    if not ambiguous:
        assert (resume, at) == after[0]
    assert ex.incomplete and ex.gaps == [("read" if d == D.READ else "write", gb - ga)] and ex.notes
    assert nxt.request.target == "/next" and nxt.response.body.getvalue() == b"next" and not nxt.incomplete


def sse_events_with_offsets(body: bytes) -> list[tuple[str, str, int, int]]:
    return [(e.event, e.data, e.start, e.end) for e in parse_events(body)]


@PROFILE
@given(st.lists(texts, min_size=1, max_size=10), st.floats(0, 1), st.integers(1, 400),
       st.sampled_from([b"\n", b"\r\n", b"\r"]), st.lists(st.integers(0, 5000), max_size=4))
def test_gap_in_an_sse_body_loses_at_most_the_events_it_touches(deltas, where, size, eol, cuts):
    """Bytes missing anywhere in an event stream: every event that ended before the hole and every
    event that begins at or after its end come out exactly (offsets in the body without the hole);
    at most one event in between, built only from bytes after the hole."""
    body = sse_body(deltas).replace(b"\n", eol)
    ga = int(where * (len(body) - 1))
    gb = min(len(body), ga + size)
    truth = parse_events(body)
    logged = body[:ga] + body[gb:]
    p = SSEParser()
    got = []
    for piece in pieces(body[:ga], cuts):
        got += p.feed(piece)
    p.gap()
    for piece in pieces(body[gb:], cuts):
        got += p.feed(piece)
    got += p.close()
    shift = gb - ga
    before = [(e.event, e.data, e.start, e.end) for e in truth if e.end <= ga]
    after = [(e.event, e.data, e.start - shift, e.end - shift) for e in truth if e.start >= gb]
    out = [(e.event, e.data, e.start, e.end) for e in got]
    assert out[:len(before)] == before
    rest = out[len(before):]
    assert rest[len(rest) - len(after):] == after if after else True
    extra = rest[:len(rest) - len(after)]
    assert len(extra) <= 1, extra
    for _, _, start, end in extra:
        assert start >= ga and logged[start:end]   # made of bytes after the hole only
    # the reader of a logged record does the same from the body and its holes
    r = reconstruct(logged, [[ga, shift, 0]])
    assert any("capture gap" in e for e in r.errors)
    assert r.events == len(out)
