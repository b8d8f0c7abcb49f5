"""HTTP/1.x connection parser: sans-IO, fed captured bytes in any split."""

from __future__ import annotations

import gzip
import random
import zlib

import brotli
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer.protocols.base import Direction as D
from tracer.protocols.http1 import Http1Connection
from tracer.testing.helpers import CONN, chunked


def req(method="POST", path="/v1/messages", body=b'{"a":1}', extra=b""):
    head = b"%s %s HTTP/1.1\r\nHost: api.anthropic.com\r\n%s" % (method.encode(), path.encode(), extra)
    if body or method == "POST":
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


SSE = (b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
       b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"h\xc3\xa9\"}}\n\n"
       b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")


def resp_sse(body=SSE):
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(body))


def resp_json(body=b'{"ok":true}', status=200, extra=b""):
    return b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        status, extra, len(body), body)


def feed_all(parser, script):
    """script: [(direction, bytes, ts)] -> exchanges (incl. those flushed by close)."""
    out = []
    for d, data, ts in script:
        out += parser.feed(d, data, ts)
    out += parser.close("test end", 10**9)
    return out


def summary(exs):
    return [(e.request.method, e.request.target, e.request.body.getvalue(), e.request.complete,
             e.response and e.response.status, e.response and e.response.body.getvalue(),
             e.response and e.response.complete, tuple(e.notes)) for e in exs]


CONVERSATION = [
    (D.WRITE, req(body=b'{"stream":true}'), 1),
    (D.READ, resp_sse(), 2),
    (D.WRITE, req(body=b'{"stream":false}'), 3),
    (D.READ, resp_json(), 4),
    (D.WRITE, req("HEAD", "/", b""), 5),
    (D.READ, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", 6),
    (D.WRITE, req("GET", "/v1/models", b""), 7),
    (D.READ, b"HTTP/1.1 100 Continue\r\n\r\n" + resp_json(b"[]"), 8),
]


def test_conversation_whole():
    exs = feed_all(Http1Connection(CONN), CONVERSATION)
    s = summary(exs)
    assert [x[:2] for x in s] == [("POST", "/v1/messages"), ("POST", "/v1/messages"), ("HEAD", "/"),
                                  ("GET", "/v1/models")]
    assert s[0][5] == SSE and s[0][6] is True
    assert s[1][5] == b'{"ok":true}'
    assert s[2][4] == 200 and s[2][5] == b"" and s[2][6] is True  # HEAD: no body despite the length
    assert s[3][5] == b"[]" and "interim response 100" in s[3][7][0]
    assert all(not e.incomplete for e in exs)
    assert exs[0].request.header("host") == "api.anthropic.com"
    assert exs[0].body_times and exs[0].body_times[0][0] == 0


def _split(data: bytes, cuts: list[int]):
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for c in cuts + [len(data)]:
        if c > last:
            pieces.append(data[last:c])
            last = c
    return pieces


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.lists(st.integers(0, 10_000), max_size=6), min_size=len(CONVERSATION),
                max_size=len(CONVERSATION)))
def test_any_split_gives_same_records(cut_lists):
    expected = summary(feed_all(Http1Connection(CONN), CONVERSATION))
    script = []
    for (d, data, ts), cuts in zip(CONVERSATION, cut_lists):
        for i, piece in enumerate(_split(data, cuts)):
            script.append((d, piece, ts))
    assert summary(feed_all(Http1Connection(CONN), script)) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([D.READ, D.WRITE]), st.binary(max_size=300)), max_size=20))
def test_random_bytes_never_raise(chunks):
    p = Http1Connection(CONN)
    for i, (d, data) in enumerate(chunks):
        for ex in p.feed(d, data, i):
            assert ex.request is not None
    p.gap(D.READ, 10, 99)
    p.close("end", 100)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 400), st.sampled_from([D.READ, D.WRITE]))
def test_gap_never_stitches(at, d):
    """Lose bytes anywhere: the pairs after the gap are exact; the cut ones are marked incomplete."""
    script = [(D.WRITE, req(body=b'{"n":1}'), 1), (D.READ, resp_sse(), 2),
              (D.WRITE, req(body=b'{"n":2}'), 3), (D.READ, resp_json(b'{"r":2}'), 4)]
    stream = b"".join(x[1] for x in script if x[0] == d)
    at = at % len(stream)
    p = Http1Connection(CONN)
    out = []
    pos = 0
    for dd, data, ts in script:
        if dd != d:
            out += p.feed(dd, data, ts)
            continue
        lo, hi = pos, pos + len(data)
        pos = hi
        if lo <= at < hi:
            out += p.feed(dd, data[: at - lo], ts)
            out += p.gap(dd, 5, ts)
            out += p.feed(dd, data[at - lo + 5:], ts)
        else:
            out += p.feed(dd, data, ts)
    out += p.close("end", 10)
    good = {b'{"n":1}': SSE, b'{"n":2}': b'{"r":2}'}
    for ex in out:
        if not ex.incomplete:
            assert ex.response.body.getvalue() == good[ex.request.body.getvalue()]
        else:
            assert ex.notes
    assert any(ex.gaps for ex in out) or p.stats.gap_bytes == 5


def test_midstream_start_resyncs_and_counts():
    full = resp_sse()
    p = Http1Connection(CONN)
    out = p.feed(D.READ, full[40:], 1)           # tail of a response to a request we never saw
    out += p.feed(D.WRITE, b'": 1}', 2)          # tail of its request body
    out += p.feed(D.WRITE, req(body=b"{}"), 3)
    out += p.feed(D.READ, resp_json(), 4)
    out += p.close("end", 5)
    assert len(out) == 1
    assert out[0].response.body.getvalue() == b'{"ok":true}' and not out[0].incomplete
    assert p.stats.skipped_bytes >= len(full) - 40
    assert "skipping" in out[0].notes[0]


def test_pipelined_requests_pair_in_order():
    p = Http1Connection(CONN)
    out = p.feed(D.WRITE, req("GET", "/a", b"") + req("GET", "/b", b""), 1)
    out += p.feed(D.READ, resp_json(b'"A"') + resp_json(b'"B"'), 2)
    assert [(e.request.target, e.response.body.getvalue()) for e in out] == [("/a", b'"A"'), ("/b", b'"B"')]


def test_response_before_request_is_never_paired():
    p = Http1Connection(CONN)
    out = p.feed(D.READ, resp_json(b'"early"'), 5)
    out += p.feed(D.WRITE, req(body=b"{}"), 6)
    out += p.feed(D.READ, resp_json(b'"mine"'), 7)
    assert [e.response.body.getvalue() for e in out] == [b'"mine"']


def test_connection_close_delimited_body():
    p = Http1Connection(CONN)
    out = p.feed(D.WRITE, req("GET", "/x", b""), 1)
    out += p.feed(D.READ, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of ", 2)
    out += p.feed(D.READ, b"it", 3)
    assert out == []
    out = p.close("SSL_free", 4)
    assert out[0].response.body.getvalue() == b"all of it" and out[0].response.complete


def test_request_without_response_flushed_with_note():
    p = Http1Connection(CONN)
    assert p.feed(D.WRITE, req(), 1) == []
    out = p.close("target exited", 2)
    assert out[0].response is None and "target exited" in out[0].notes[0]


def test_partial_response_on_close_is_incomplete():
    p = Http1Connection(CONN)
    p.feed(D.WRITE, req(), 1)
    p.feed(D.READ, resp_sse()[:120], 2)
    out = p.close("target exited", 3)
    assert out[0].response is not None and not out[0].response.complete and out[0].incomplete


def test_content_encodings_decoded():
    data = b'{"hello":"world"}' * 50
    for name, comp in (("gzip", gzip.compress(data)), ("deflate", zlib.compress(data)),
                       ("br", brotli.compress(data)),
                       ("zstd", zstandard.ZstdCompressor().compress(data))):
        p = Http1Connection(CONN)
        p.feed(D.WRITE, req("GET", "/", b""), 1)
        raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % name.encode()
        out = p.feed(D.READ, raw + chunked(comp, 33), 2)
        assert out[0].response.body.getvalue() == data, name
        assert out[0].response.content_encoding == name


def test_bad_encoding_reported_not_raised():
    p = Http1Connection(CONN)
    p.feed(D.WRITE, req("GET", "/", b""), 1)
    out = p.feed(D.READ, resp_json(b"not gzip at all", extra=b"Content-Encoding: gzip\r\n"), 2)
    assert out[0].response.decode_error and p.stats.decode_errors == 1


def test_gzip_bomb_capped():
    bomb = gzip.compress(b"\0" * (50 << 20))
    p = Http1Connection(CONN, max_decoded_body=1 << 20)
    p.feed(D.WRITE, req("GET", "/", b""), 1)
    out = p.feed(D.READ, resp_json(bomb, extra=b"Content-Encoding: gzip\r\n"), 2)
    assert out[0].response.body.size == 1 << 20
    assert out[0].response.decoded_truncated_at == 1 << 20


def test_traced_server_roles_swap():
    p = Http1Connection(CONN)
    out = p.feed(D.READ, req(body=b"{}"), 1)       # a server reads requests
    out += p.feed(D.WRITE, resp_json(), 2)
    assert out[0].request.method == "POST" and out[0].response.status == 200


def test_upgrade_stops_parsing():
    p = Http1Connection(CONN)
    p.feed(D.WRITE, req("GET", "/ws", b"", b"Connection: Upgrade\r\nUpgrade: websocket\r\n"), 1)
    out = p.feed(D.READ, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello", 2)
    out += p.feed(D.WRITE, b"\x81\x85garbage", 3)
    out += p.close("end", 4)
    assert p.stats.not_http >= 1
    assert all(e.request.target == "/ws" for e in out)


def test_gap_inside_content_length_body_keeps_pairing():
    """A hole inside a Content-Length request body (copy limit, ring drop) costs only those bytes:
    the response still pairs and the next exchange on the connection is whole."""
    body = b'{"content":"' + b"x" * 5000 + b'"}'
    full = req(body=body)
    head_len = len(full) - len(body)
    p = Http1Connection(CONN)
    out = p.feed(D.WRITE, full[:head_len + 1000], 1)
    out += p.gap(D.WRITE, 3000, 1)
    out += p.feed(D.WRITE, full[head_len + 4000:], 1)
    out += p.feed(D.READ, resp_json(b'{"r":1}'), 2)
    out += p.feed(D.WRITE, req(body=b'{"n":2}'), 3)
    out += p.feed(D.READ, resp_json(b'{"r":2}'), 4)
    assert [e.response.body.getvalue() for e in out] == [b'{"r":1}', b'{"r":2}']
    first, second = out
    assert first.incomplete and first.gaps == [("write", 3000)] and "hole" in first.notes[0]
    assert first.request.body.size == len(body) - 3000
    assert not second.incomplete


# ----------------------------------------------------------------- a response before the request ends

def test_early_response_waits_for_the_request_body():
    """A server that answers (401) before reading the body while the client still sends it: the pair is
    written once the request has ended, with the whole body."""
    body = b'{"messages":"' + b"m" * 3000 + b'"}'
    full = req(body=body)
    p = Http1Connection(CONN)
    assert p.feed(D.WRITE, full[:200], 1) == []
    assert p.feed(D.READ, resp_json(b'{"error":"unauthorized"}', status=401), 2) == []
    assert p.feed(D.WRITE, full[200:2000], 3) == []
    (e,) = p.feed(D.WRITE, full[2000:], 4)
    assert e.request.body.getvalue() == body and e.request.complete
    assert e.response.status == 401 and e.response.complete and not e.incomplete
    # the connection goes on: the next exchange is whole
    out = p.feed(D.WRITE, req(body=b"{}"), 5) + p.feed(D.READ, resp_json(), 6)
    assert [x.response.body.getvalue() for x in out] == [b'{"ok":true}']


def test_early_response_then_the_client_gives_up():
    """413 before the body; the client stops sending and the connection ends: the pair says why."""
    full = req(body=b"x" * 5000)
    p = Http1Connection(CONN)
    p.feed(D.WRITE, full[:300], 1)
    assert p.feed(D.READ, resp_json(b'{"error":"too large"}', status=413,
                                   extra=b"Connection: close\r\n"), 2) == []
    (e,) = p.close("SSL_free", 3)
    assert e.response.status == 413 and e.response.complete
    assert not e.request.complete and e.incomplete
    assert any("before the request was complete" in n for n in e.notes), e.notes


def test_body_after_100_continue():
    head = (b"POST /v1/messages HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n")
    p = Http1Connection(CONN)
    out = p.feed(D.WRITE, head, 1)
    out += p.feed(D.READ, b"HTTP/1.1 100 Continue\r\n\r\n", 2)
    out += p.feed(D.WRITE, b'{"a":"b"}', 3)
    out += p.feed(D.READ, resp_json(), 4)
    (e,) = out
    assert e.request.body.getvalue() == b'{"a":"b"}' and e.response.status == 200 and not e.incomplete


def test_final_response_to_expect_then_body_anyway():
    """A final response instead of 100 Continue; the client sends the body anyway (as RFC 9110 allows)."""
    head = (b"POST /v1/messages HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n")
    p = Http1Connection(CONN)
    out = p.feed(D.WRITE, head, 1)
    out += p.feed(D.READ, resp_json(b'{"e":1}', status=417), 2)
    assert out == []
    (e,) = p.feed(D.WRITE, b'{"a":"b"}', 3)
    assert e.request.body.getvalue() == b'{"a":"b"}' and e.response.status == 417 and not e.incomplete


def test_unknown_content_coding_keeps_the_body():
    p = Http1Connection(CONN)
    p.feed(D.WRITE, req("GET", "/", b""), 1)
    (e,) = p.feed(D.READ, resp_json(b"payload", extra=b"Content-Encoding: x-custom\r\n"), 2)
    assert e.response.body.getvalue() == b"payload" and "x-custom" in e.response.decode_error


# ------------------------------------------------------------------------------------ holes in bodies

def test_gap_inside_a_chunked_body_resyncs_at_the_next_chunk():
    events = [b"event: content_block_delta\ndata: {\"i\":%d}\n\n" % i for i in range(10)]
    wire = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n")
    e3 = wire.index(events[3])
    a, b = e3 + 10, e3 + 30           # the gap: inside event 3's chunk
    nxt = wire.index(b"%x\r\n" % len(events[4]) + events[4])
    p = Http1Connection(CONN)
    out = p.feed(D.WRITE, req(body=b"{}"), 1)
    out += p.feed(D.READ, wire[:a], 2)
    out += p.gap(D.READ, b - a, 3)
    out += p.feed(D.READ, wire[b:], 4)
    (e,) = out
    body = e.response.body.getvalue()
    assert body == b"".join(events[:3]) + events[3][:10] + b"".join(events[4:])
    assert e.response.complete and e.incomplete and e.gaps == [("read", 20)]
    hole_at = len(b"".join(events[:3])) + 10
    assert e.response.holes == [[hole_at, 20, nxt - b]]
    assert p.stats.skipped_bytes == nxt - b
    assert any("resynchronised at the next chunk" in n for n in e.notes)
    # the next exchange on the connection is whole
    out = p.feed(D.WRITE, req(body=b"{}"), 5) + p.feed(D.READ, resp_json(), 6)
    assert not out[0].incomplete


def test_gap_in_an_encoded_chunked_body_keeps_what_was_decoded():
    data = b'{"text":"' + random.Random(1).randbytes(3000).hex().encode() + b'"}'
    comp = gzip.compress(data)
    wire = (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(comp, 100))
    cut = wire.index(b"\r\n\r\n") + 4 + 700
    p = Http1Connection(CONN)
    p.feed(D.WRITE, req("GET", "/", b""), 1)
    out = p.feed(D.READ, wire[:cut], 2) + p.gap(D.READ, 30, 3) + p.feed(D.READ, wire[cut + 30:], 4)
    (e,) = out
    got = e.response.body.getvalue()
    assert got and data.startswith(got)
    assert "could not be decoded" in e.response.decode_error
    (off, gap, skipped), = e.response.holes
    assert off == len(got) and gap == 30
    assert p.stats.skipped_bytes == skipped > 0
    assert e.response.complete and e.incomplete


def test_gap_in_a_close_delimited_body():
    p = Http1Connection(CONN)
    p.feed(D.WRITE, req("GET", "/", b""), 1)
    p.feed(D.READ, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part ", 2)
    p.gap(D.READ, 100, 3)
    p.feed(D.READ, b"second part", 4)
    (e,) = p.close("SSL_free", 5)
    assert e.response.body.getvalue() == b"first part second part"
    assert e.response.holes == [[11, 100, 0]] and e.incomplete and e.notes


def test_gap_spanning_the_end_of_a_chunked_response_gives_way_to_the_next_request():
    p = Http1Connection(CONN)
    wire = resp_sse()
    out = p.feed(D.WRITE, req(body=b"{}"), 1)
    out += p.feed(D.READ, wire[:-12], 2)
    out += p.gap(D.READ, 12, 3)                   # the last chunk and the terminator are lost
    out += p.feed(D.WRITE, req(body=b'{"n":2}'), 4)
    out += p.feed(D.READ, resp_json(b'{"r":2}'), 5)
    first, second = out
    assert first.incomplete and first.notes and not first.response.complete
    assert second.request.body.getvalue() == b'{"n":2}' and not second.incomplete
    assert second.response.body.getvalue() == b'{"r":2}'
