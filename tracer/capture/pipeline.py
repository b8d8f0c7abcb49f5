"""Ring-buffer records -> per-connection byte streams -> protocol parsers -> exchanges.

`feed(record)` takes one record (struct tracer_event + payload, tracer/capture/event.py), decodes
it, keeps one stream per connection (pid, SSL*), detects capture gaps from the kernel's per-stream
offsets, feeds the connection's parser and hands finished exchanges to `on_exchange` - all at once,
on the caller's thread. Normally that caller is the parsing process (tracer/worker.py) reading the
spool the ring thread fills (tracer/stage.py); with --no-deferred-parsing it is the ring thread
itself; tests drive it directly without a kernel.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from tracer.capture import event as ev
from tracer.protocols import http2
from tracer.protocols.base import ConnInfo, Direction, Exchange, ParserStats, Progress
from tracer.protocols.http1 import Http1Connection, looks_like_http1_request, looks_like_http1_response


_DIRECTIONS = {int(d): d for d in Direction}


@dataclass
class ConnState:
    info: ConnInfo
    parser: object | None = None
    kind: str = ""                      # "http/1.1", "h2", "other"
    expect: list[int] = field(default_factory=lambda: [0, 0])
    seen: list[bool] = field(default_factory=lambda: [False, False])


@dataclass
class CaptureStats:
    ring_records: int = 0
    data_events: int = 0
    close_events: int = 0
    bytes_captured: int = 0
    connections: int = 0
    gap_events: int = 0
    gap_bytes: int = 0
    truncated_bytes: int = 0
    copy_fail_bytes: int = 0
    key_reuse: int = 0
    h2_connections: int = 0
    worker_errors: int = 0


class Capture:
    def __init__(self, on_exchange: Callable[[Exchange], None], *, max_decoded_body: int = 512 << 20,
                 on_process: Callable[[bytes], None] | None = None):
        self.on_exchange = on_exchange
        # process records (fork/exec/exit) for the process follower, on the caller's thread - used
        # where the ring thread feeds this pipeline itself (--no-deferred-parsing); with the spool
        # the ring thread hands them over (capture/ring.py on_process) and they reach this pipeline
        # in the parsing process only to close connections
        self.on_process = on_process
        self.max_decoded_body = max_decoded_body
        self.stats = CaptureStats()
        self.parser_stats = ParserStats()
        self.conns: dict[tuple[int, int], ConnState] = {}
        self._seq = 0
        self._lock = threading.Lock()      # guards connection state (records vs. control calls)
        self.last_error = ""
        self.progress: Progress | None = None   # live observer of pairs in flight (set_progress)
        dump = os.environ.get("TRACER_DUMP_EVENTS")   # debugging: raw ring records, length-prefixed
        self.dump = open(dump, "ab") if dump else None

    # -- records in ---------------------------------------------------------------------------
    def feed(self, record: bytes | memoryview) -> None:
        """One ring-buffer record, processed now."""
        if self.dump is not None:
            self.dump.write(len(record).to_bytes(4, "little") + record)
        if self.on_process is not None and ev.record_type(record) in ev.PROC_TYPES:
            self.on_process(bytes(record))       # a held process waits on it
            if ev.record_type(record) not in (ev.EV_EXEC, ev.EV_EXIT):
                return
            # exec and exit also end the process' connections, in order with its data records
        with self._lock:
            self._handle(record)

    def stop(self):
        if self.dump is not None:
            self.dump.close()
            self.dump = None

    # -- per record ---------------------------------------------------------------------------
    def _handle(self, raw: bytes | memoryview):
        self.stats.ring_records += 1
        try:
            e = ev.decode(raw)
            if e.type == ev.EV_DATA:
                self._data(e)
            elif e.type == ev.EV_CLOSE:
                self.stats.close_events += 1
                self._close_conn((e.pid, e.conn), "SSL_free", e.ts_ns)
            elif e.type in (ev.EV_EXEC, ev.EV_EXIT):
                why = "process exec'd" if e.type == ev.EV_EXEC else "process exited"
                for key in [k for k in self.conns if k[0] == e.pid]:
                    self._close_conn(key, why, e.ts_ns)
        except Exception as exc:  # a bug must not stop the capture; it is counted and shown
            self.stats.worker_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _new_conn(self, e: ev.Event) -> ConnState:
        self._seq += 1
        self.stats.connections += 1
        info = ConnInfo(pid=e.pid, tid=e.tid, comm=e.comm,
                        conn_id=f"{e.pid}:{e.conn:#x}:{self._seq}", ssl_ptr=e.conn)
        st = ConnState(info)
        self.conns[(e.pid, e.conn)] = st
        return st

    def _pick_parser(self, st: ConnState, d: Direction, data: bytes):
        head = data[:64]
        if http2.looks_like_h2(head):
            st.kind = "h2"
        elif (looks_like_http1_request(head) or looks_like_http1_response(head)):
            st.kind = "http/1.1"
        elif http2.looks_like_h2_frames(data) or http2.h2_frames_offset(data) is not None:
            st.kind = "h2"    # attached to a live h2 connection (the chunk may start mid-frame)
        else:
            st.kind = "http/1.1"   # unknown start: the HTTP/1 parser resynchronises or skips
        if st.kind == "h2":
            self.stats.h2_connections += 1
            parser = http2.Http2Connection(st.info, max_decoded_body=self.max_decoded_body)
        else:
            parser = Http1Connection(st.info, max_decoded_body=self.max_decoded_body)
        parser.progress = self.progress
        return parser

    def _data(self, e: ev.Event):
        self.stats.data_events += 1
        key = (e.pid, e.conn)
        st = self.conns.get(key)
        d = _DIRECTIONS[e.dir]
        if st is not None and e.stream_off < st.expect[d] and st.seen[d]:
            # offsets restart only for a new connection on a reused SSL* whose SSL_free we missed
            self.stats.key_reuse += 1
            self._close_conn(key, "connection key reused", e.ts_ns)
            st = None
        if st is None:
            st = self._new_conn(e)
        gap = e.stream_off - st.expect[d]
        if gap > 0:   # records of this stream were dropped (ring full) before this one
            self._gap(st, d, gap, e.ts_ns)
        st.seen[d] = True
        st.expect[d] = e.stream_off + e.len
        if e.flags & ev.F_COPY_FAIL:
            self.stats.copy_fail_bytes += e.len
            self._gap(st, d, e.len, e.ts_ns)
        elif e.data:
            self.stats.bytes_captured += len(e.data)
            if st.parser is None and st.kind == "":
                st.parser = self._pick_parser(st, d, e.data)
            if st.parser is not None:
                self._emit(st.parser.feed(d, e.data, e.ts_ns))
        if e.flags & ev.F_TRUNCATED:
            rest = e.total_len - (e.offset + e.len)
            self.stats.truncated_bytes += rest
            st.expect[d] += rest
            self._gap(st, d, rest, e.ts_ns)

    def _gap(self, st: ConnState, d: Direction, n: int, ts: int):
        self.stats.gap_events += 1
        self.stats.gap_bytes += n
        if st.parser is not None:
            self._emit(st.parser.gap(d, n, ts))

    def _emit(self, exchanges):
        for ex in exchanges:
            if self.progress is not None:
                try:
                    self.progress.exchange_done(ex)
                except Exception as exc:
                    self.stats.worker_errors += 1
                    self.last_error = f"progress: {type(exc).__name__}: {exc}"
            try:
                self.on_exchange(ex)
            except Exception as exc:
                self.stats.worker_errors += 1
                self.last_error = f"sink: {type(exc).__name__}: {exc}"

    def _close_conn(self, key, reason: str, ts: int):
        st = self.conns.pop(key, None)
        if st is None:
            return
        if st.parser is not None:
            self._emit(st.parser.close(reason, ts))
            self.parser_stats.add(st.parser.stats)

    # -- control (between records; from another thread too) ------------------------------------
    def set_progress(self, progress: Progress | None) -> None:
        """Start (or with None, stop) showing pairs in flight to ``progress`` (see base.Progress):
        every open connection's parser and every later one. From any thread; the live feed calls it
        when its first client connects and after its last one leaves."""
        with self._lock:
            self.progress = progress
            for st in self.conns.values():
                if st.parser is not None:
                    st.parser.progress = progress

    def close_pid(self, pid: int, reason: str, ts_ns: int | None = None):
        """The process is gone: finish all its connections (its records have all been fed)."""
        with self._lock:
            now = ts_ns or time.monotonic_ns()
            for key in [k for k in self.conns if k[0] == pid]:
                self._close_conn(key, reason, now)

    def close_all(self, reason: str, ts_ns: int | None = None):
        with self._lock:
            now = ts_ns or time.monotonic_ns()
            for key in list(self.conns):
                self._close_conn(key, reason, now)

    def live_parser_stats(self) -> ParserStats:
        total = ParserStats()
        total.add(self.parser_stats)
        with self._lock:
            for st in self.conns.values():
                if st.parser is not None:
                    total.add(st.parser.stats)
        return total
