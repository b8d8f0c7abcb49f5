"""Finished exchanges -> the log: the one place where the capture pipeline delivers what it parsed.

`Recorder.on_exchange` applies the default filter (sinks/record.py `Filter`), builds the
claude-trace record (`build_record`, redaction included; `tracer.process` from the process table,
tracer/processes/table.py) and queues it for the batched JSONL writer
(sinks/jsonl.py); then every observer registered with `observe` gets the exchange and its record (a
live view, another exporter). It runs wherever the pipeline runs: in the parsing process
(tracer/worker.py) normally, in the tracer process with --no-deferred-parsing.
"""

from __future__ import annotations

from typing import Callable

from tracer.capture.pipeline import Capture
from tracer.processes.table import ProcessTable
from tracer.protocols.base import Exchange
from tracer.sinks.jsonl import JsonlWriter
from tracer.sinks.record import Clock, Filter, build_record

Observer = Callable[[Exchange, dict], None]


class Recorder:
    def __init__(self, writer: JsonlWriter, filter: Filter, clock: Clock, *, redact: bool = True,
                 procs: ProcessTable | None = None):
        self.writer = writer
        self.procs = procs
        self.pairs_by_pid: dict[int, int] = {}
        self.filter = filter
        self.clock = clock
        self.redact = redact
        self.observers: list[Observer] = []
        self.pairs_seen = 0
        self.pairs_logged = 0
        self.pairs_filtered = 0
        self.pairs_incomplete = 0

    def observe(self, fn: Observer) -> None:
        self.observers.append(fn)

    def on_exchange(self, ex: Exchange) -> None:
        self.pairs_seen += 1
        if not self.filter.wants(ex):
            self.pairs_filtered += 1
            ex.request.body.close()
            if ex.response is not None:
                ex.response.body.close()
            return
        if ex.incomplete:
            self.pairs_incomplete += 1
        record = build_record(ex, self.clock, redact=self.redact, api_call=self.filter.is_api_call(ex))
        if self.procs is not None:
            info = self.procs.record_info(ex.conn.pid, ex.request.ts_ns)
            if info is not None:
                record["tracer"]["process"] = info
                pid = ex.conn.pid
                self.pairs_by_pid[pid] = self.pairs_by_pid.get(pid, 0) + 1
                proc = self.procs.procs.get(pid)
                if proc is not None:
                    proc.pairs += 1
        self.writer.submit(record)
        self.pairs_logged += 1
        for fn in self.observers:
            fn(ex, record)


def progress(capture: Capture, rec: Recorder) -> dict:
    """The few figures of the live status line."""
    return {"pairs_logged": rec.pairs_logged, "pairs_seen": rec.pairs_seen,
            "connections": capture.stats.connections, "bytes_captured": capture.stats.bytes_captured}


def stage_summary(capture: Capture, rec: Recorder) -> dict:
    """The parsing stage's part of the run summary (tracer/session.py adds the kernel's and the
    ring's): call once the pipeline is closed and the writer flushed."""
    c = capture.stats
    p = capture.live_parser_stats()
    w = rec.writer.stats
    return {
        "pairs_seen": rec.pairs_seen,
        "pairs_logged": rec.pairs_logged,
        "pairs_filtered_out": rec.pairs_filtered,
        "pairs_incomplete": rec.pairs_incomplete,
        "connections": c.connections,
        "bytes_captured": c.bytes_captured,
        "ring_records": c.ring_records,
        "gap_bytes": c.gap_bytes,
        "skipped_bytes": p.skipped_bytes,
        "parse_errors": p.parse_errors,
        "decode_errors": p.decode_errors,
        "non_http_connections": p.not_http,
        "h2_connections": c.h2_connections,
        "unknown_header_blocks": p.unknown_header_blocks,
        "worker_errors": c.worker_errors,
        "last_worker_error": capture.last_error,
        "records_written": w.records,
        "records_lost": w.lost_records,
        "records_raw_body": w.raw_body_records,
        "records_stub": w.stub_records,
        "last_serialization_error": w.last_serialization_error,
        "write_errors": w.write_errors,
        "pairs_by_pid": {str(k): v for k, v in rec.pairs_by_pid.items()},
    }
