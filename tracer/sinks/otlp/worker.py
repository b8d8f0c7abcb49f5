"""The exporter process of `tracer run/attach --otlp-endpoint`: follows the JSONL log as tracer writes it,
turns records into spans and exports them. The capture process does no export work at all; this
process runs at a lower CPU priority, as the invoking user (never as root under sudo), and can be
stopped at any moment without touching the log.

    python -I -m tracer.sinks.otlp.worker LOG_FD

Control (stdin, JSON lines from tracer): ``{"config": {...}}`` first, then ``{"target": {...}}``,
``{"exited": PID}``, ``{"finish": {"timeout_s": S}}``. End of input without ``finish`` (tracer died)
is treated as ``finish``. Reports (stdout, JSON lines): ``{"stats": {...}}`` about once a second while
something changes, ``{"final": {...}}`` at the end. Messages for the user go to stderr (the first
export failure of a failing period and the recovery; never the headers).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import sys
import time

POLL_S = 0.2
REPORT_S = 1.0
MAX_QUEUED = 256            # calls waiting for a grouping run before one is forced
READ_BYTES = 4 << 20        # log bytes read between two looks at the queue
ANALYSIS_SHARE = 0.25       # at most this share of wall time in grouping runs while records stream in


class Worker:
    def __init__(self, log_fd: int, config: dict, out=sys.stdout, err=sys.stderr):
        from tracer.sinks.otlp.config import DEFAULT_EXIT_GRACE_S
        from tracer.sinks.otlp.engine import SpanEngine
        from tracer.sinks.otlp.export import Exporter, Resources
        from tracer.sinks.otlp.reader import LineReader

        self.cfg = config
        self.out = out
        self.err = err
        self.endpoint_label = config.get("display_endpoint") or "the OTLP endpoint"
        self.reader = LineReader(log_fd)
        self.engine = SpanEngine(content=bool(config.get("content")), idle_s=float(config.get("idle_s", 300)),
                                 exit_grace_s=float(config.get("exit_grace_s", DEFAULT_EXIT_GRACE_S)))
        self.resources = Resources(os.environ, host=config.get("host"), command_line=bool(config.get("content")))
        self.exporter = Exporter(config["endpoint"], os.environ, resources=self.resources, on_change=self._changed)
        self.records = 0
        self._last_run = 0.0
        self._last_cost = 0.0
        self._last_report = 0.0
        self._reported: dict = {}

    # -- messages ------------------------------------------------------------------------------
    def _changed(self, failing: bool, msg: str) -> None:
        if failing:
            print(f"tracer: OTLP export to {self.endpoint_label} failing ({msg or 'no answer'}); spans are "
                  "counted as undelivered, the log is not affected", file=self.err, flush=True)
        else:
            print(f"tracer: OTLP export to {self.endpoint_label} works again", file=self.err, flush=True)

    def control(self, msg: dict) -> bool:
        """Handle one control message; False when it is the end."""
        from tracer.sinks.otlp.export import ProcessInfo
        if "target" in msg:
            t = msg["target"]
            self.resources.note_process(ProcessInfo(int(t["pid"]), exe=t.get("exe", ""),
                                                    argv=tuple(t.get("argv") or ()), owner=t.get("owner", ""),
                                                    comm=t.get("comm", "")))
        elif "exited" in msg:
            self.pump(force=True)
            self.exporter.submit(self.engine.target_exited(int(msg["exited"])))
        elif "finish" in msg:
            return False
        return True

    # -- the log ---------------------------------------------------------------------------------
    def pump(self, force: bool = False) -> None:
        """Read what the log has gained, a few MB at a time (lines are parsed and dropped as they come)."""
        from tracer.sinks.otlp.reader import parse_line
        while True:
            for item in self.reader.read(READ_BYTES):
                rec = parse_line(item, self.reader.stats)
                if rec is None:
                    continue
                tr = rec.get("tracer") if isinstance(rec.get("tracer"), dict) else {}
                self.resources.note_record(tr.get("pid") if isinstance(tr.get("pid"), int) else None, rec)
                self.engine.add(self.records, rec)
                self.records += 1
                if len(self.engine._queued) >= MAX_QUEUED:
                    self._group()
            if self.reader.at_eof:
                break
        queued = len(self.engine._queued)
        due = time.monotonic() - self._last_run >= max(POLL_S, self._last_cost / ANALYSIS_SHARE)
        if queued and (force or due):
            self._group()
        self.exporter.submit(self.engine.tick())

    def _group(self) -> None:
        t = time.perf_counter()
        self.exporter.submit(self.engine.flush())
        self._last_cost = time.perf_counter() - t
        self._last_run = time.monotonic()

    def stats(self) -> dict:
        d = self.exporter.stats
        e = self.engine.stats
        r = self.reader.stats
        return {"records": self.records, "spans": d.submitted, "exported": d.exported,
                "undelivered": d.undelivered, "failed_batches": d.failed_batches, "last_error": d.last_error,
                "chat_spans": e.calls, "tool_spans": e.tool_spans, "session_spans": e.session_spans,
                "skipped_records": e.skipped, "orphan_calls": e.orphan_calls, "bad_lines": r.bad_lines,
                "partial_records": r.partial_records, "pending_bytes": self.reader.pending(),
                "analysis_runs": e.analysis_runs, "analysis_s": round(e.analysis_s, 3), "uid": os.getuid()}

    def report(self, key: str = "stats", force: bool = False) -> None:
        now = time.monotonic()
        s = self.stats()
        if force or (now - self._last_report >= REPORT_S and s != self._reported):
            self._last_report = now
            self._reported = s
            try:
                self.out.write(json.dumps({key: s}) + "\n")
                self.out.flush()
            except OSError:
                pass

    def finish(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        self.pump(force=True)
        self.exporter.submit(self.engine.finish())
        self.report(force=True)
        self.exporter.close(max(0.1, deadline - time.monotonic()))
        self.report("final", force=True)
        return self.stats()


def _read_config(fd: int) -> tuple[dict, bytes]:
    """The first control line (unbuffered: what follows it stays for the main loop)."""
    buf = b""
    while b"\n" not in buf:
        data = os.read(fd, 65536)
        if not data:
            break
        buf += data
    line, _, rest = buf.partition(b"\n")
    msg = json.loads(line) if line.strip() else {}
    if not isinstance(msg, dict) or "config" not in msg:
        raise SystemExit("tracer otlp worker: no configuration on stdin")
    return msg["config"], rest


def main(argv: list[str]) -> int:
    # tracer forwards Ctrl-C and SIGTERM as a "finish" message: stay alive to deliver what is queued
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.nice(10)
    except OSError:
        pass
    log_fd = int(argv[0])
    stdin = sys.stdin.fileno()
    config, buf = _read_config(stdin)
    w = Worker(log_fd, config)
    sel = selectors.DefaultSelector()
    os.set_blocking(stdin, False)
    sel.register(stdin, selectors.EVENT_READ)
    timeout = float(config.get("shutdown_timeout_s", 5.0))
    running, eof = True, False
    while running:
        if b"\n" not in buf and sel.select(POLL_S):
            try:
                data = os.read(stdin, 65536)
            except BlockingIOError:
                data = None
            if data == b"":
                eof = True          # tracer is gone: finish as if told to
            elif data:
                buf += data
        while b"\n" in buf and running:
            line, buf = buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict):
                if "finish" in msg:
                    timeout = float((msg.get("finish") or {}).get("timeout_s", timeout))
                running = w.control(msg)
        if eof:
            running = False
        w.pump()
        w.report()
    w.finish(timeout)
    sys.stdout.flush()
    os._exit(0)     # a stalled export request may still hold a thread: do not wait for it


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
