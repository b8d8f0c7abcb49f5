"""tracer/capture/pipeline.py without a kernel: ring records built with the event header's own struct
(tracer.testing.helpers.record) fed to Capture.feed - connections, gaps, key reuse, parser choice,
close events, copy-fail and truncated chunks."""

from __future__ import annotations

import pytest

from tracer.capture import event as ev
from tracer.capture.pipeline import Capture
from tracer.protocols.http1 import Http1Connection
from tracer.protocols.http2 import Http2Connection
from tracer.testing.helpers import record

REQ = (b"POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\nContent-Type: application/json\r\n"
       b"Content-Length: 9\r\n\r\n{\"a\":\"b\"}")
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"          # an empty SETTINGS frame


class Run:
    """A Capture (feed processes at once) with what it produced."""

    def __init__(self):
        self.exchanges = []
        self.cap = Capture(self.exchanges.append)

    def data(self, direction: int, payload: bytes, off: int, **kw):
        self.cap.feed(record(payload, dir=direction, stream_off=off, **kw))

    def write(self, payload: bytes, off: int = 0, **kw):
        self.data(ev.DIR_WRITE, payload, off, **kw)

    def read(self, payload: bytes, off: int = 0, **kw):
        self.data(ev.DIR_READ, payload, off, **kw)

    @property
    def stats(self):
        return self.cap.stats


def test_a_request_and_its_response_make_one_exchange():
    r = Run()
    r.write(REQ, ts_ns=1)
    r.read(RESP, ts_ns=2)
    assert len(r.exchanges) == 1
    ex = r.exchanges[0]
    assert (ex.request.method, ex.request.target, ex.response.status) == ("POST", "/v1/messages", 200)
    assert ex.response.body.getvalue() == b'{"ok":true}' and not ex.incomplete
    assert ex.conn.pid == 100 and ex.conn.comm == "client" and ex.conn.ssl_ptr == 0x1000
    s = r.stats
    assert (s.ring_records, s.data_events, s.connections, s.bytes_captured) == (2, 2, 1, len(REQ) + len(RESP))
    assert s.gap_events == s.gap_bytes == 0


def test_records_split_anywhere_give_the_same_exchange():
    r = Run()
    for i in range(0, len(REQ), 5):
        r.write(REQ[i:i + 5], off=i)
    for i in range(0, len(RESP), 3):
        r.read(RESP[i:i + 3], off=i)
    assert len(r.exchanges) == 1 and not r.exchanges[0].incomplete


def test_missing_records_are_a_gap_with_their_byte_count():
    """The kernel's stream offset jumps over records the ring dropped: the pipeline counts the lost
    bytes and the pair says so."""
    r = Run()
    r.write(REQ)
    r.read(RESP[:20])
    r.read(RESP[30:], off=30)                     # 10 bytes never arrived
    r.cap.close_all("test end")
    assert r.stats.gap_events == 1 and r.stats.gap_bytes == 10
    assert len(r.exchanges) == 1
    ex = r.exchanges[0]
    assert ex.incomplete and ex.gaps == [("read", 10)]
    assert "capture lost 10 bytes (read)" in ex.notes[0]


def test_offsets_restarting_mean_a_reused_connection_key():
    """Same (pid, SSL*) but the stream offset goes back: SSL_free was missed and the pointer was
    reused by a new connection - the old one is closed, a new one starts."""
    r = Run()
    r.write(REQ)
    r.read(RESP)
    r.write(REQ)                                   # offset 0 again, this direction was seen
    r.read(RESP)
    s = r.stats
    assert s.key_reuse == 1 and s.connections == 2
    assert len(r.exchanges) == 2
    assert r.exchanges[0].conn.conn_id != r.exchanges[1].conn.conn_id


def test_same_pointer_in_two_processes_is_two_connections():
    r = Run()
    r.write(REQ, pid=1)
    r.write(REQ, pid=2)
    r.read(RESP, pid=1)
    r.read(RESP, pid=2)
    assert r.stats.connections == 2 and r.stats.key_reuse == 0
    assert sorted(ex.conn.pid for ex in r.exchanges) == [1, 2]


@pytest.mark.parametrize("first,direction,parser,h2", [
    (REQ, ev.DIR_WRITE, Http1Connection, 0),                  # a client's request
    (RESP, ev.DIR_READ, Http1Connection, 0),                  # attached after the request
    (H2_PREFACE + H2_SETTINGS, ev.DIR_WRITE, Http2Connection, 1),
    (H2_SETTINGS + H2_SETTINGS, ev.DIR_READ, Http2Connection, 1),  # a live h2 connection, no preface
    (b"\x16\x03\x01 not http at all", ev.DIR_WRITE, Http1Connection, 0),  # unknown: HTTP/1 resyncs
])
def test_parser_is_chosen_from_the_first_bytes(first, direction, parser, h2):
    r = Run()
    r.data(direction, first, 0)
    (st,) = r.cap.conns.values()
    assert isinstance(st.parser, parser)
    assert r.stats.h2_connections == h2


def test_close_event_ends_the_connection():
    """SSL_free: the connection's unfinished pair is flushed and the key is free for a new one."""
    r = Run()
    r.write(REQ)
    r.read(RESP[:25])
    r.cap.feed(record(type=ev.EV_CLOSE, ts_ns=5))
    assert r.stats.close_events == 1 and r.cap.conns == {}
    assert len(r.exchanges) == 1 and r.exchanges[0].incomplete
    assert "SSL_free" in r.exchanges[0].notes[0]
    r.write(REQ)                                    # offset 0 after SSL_free: a new connection, no reuse
    assert r.stats.key_reuse == 0 and r.stats.connections == 2


def test_copy_fail_chunk_is_counted_as_lost_and_not_parsed():
    r = Run()
    r.write(REQ)
    r.read(RESP, length=len(RESP), flags=ev.F_COPY_FAIL)     # the kernel could not read the buffer
    r.cap.close_all("test end")
    s = r.stats
    assert s.copy_fail_bytes == len(RESP) and s.gap_bytes == len(RESP) and s.bytes_captured == len(REQ)
    (ex,) = r.exchanges
    assert ex.response is None and ex.gaps == [("read", len(RESP))]


def test_truncated_call_leaves_a_gap_for_the_rest():
    """A call bigger than the per-call copy limit: the chunk says how much the call moved; the rest
    is a gap, and the next call's offset follows the whole call (no second gap)."""
    r = Run()
    r.write(REQ)
    head = RESP[:40]
    r.read(head, total_len=len(RESP), flags=ev.F_TRUNCATED)
    r.read(RESP, off=len(RESP))                     # the next call, right after the whole first one
    s = r.stats
    assert s.truncated_bytes == len(RESP) - 40
    assert s.gap_events == 1 and s.gap_bytes == len(RESP) - 40
    assert r.cap.conns[(100, 0x1000)].expect[ev.DIR_READ] == 2 * len(RESP)


def test_a_broken_record_is_counted_not_fatal():
    r = Run()
    r.cap.feed(b"\x01\x02")                          # shorter than the header
    r.write(REQ)
    r.read(RESP)
    assert r.stats.worker_errors == 1 and "unpack_from" in r.cap.last_error
    assert len(r.exchanges) == 1


def test_close_pid_finishes_only_that_process():
    r = Run()
    r.write(REQ, pid=1)
    r.write(REQ, pid=2)
    r.cap.close_pid(1, "target exited")
    assert [k[0] for k in r.cap.conns] == [2]
    assert len(r.exchanges) == 1 and r.exchanges[0].conn.pid == 1


def test_close_with_the_time_it_was_asked_for():
    """Deferred parsing applies a close later than it was asked for: the connection ends at the
    time given (the exchange's response end), not at the time the parser got to it."""
    r = Run()
    r.write(REQ, ts_ns=1_000)
    r.read(RESP[:40], ts_ns=2_000)
    r.cap.close_all("tracer stopped", ts_ns=5_000)
    assert len(r.exchanges) == 1
    assert r.exchanges[0].response.end_ts_ns == 5_000 and r.exchanges[0].incomplete
