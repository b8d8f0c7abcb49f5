"""Where the session's records are parsed: the stage behind the ring buffer.

The session's ring thread calls `stage.drain(ring)` after every wake-up; the stage decides what
happens to the records. Two stages, one interface:

  * `SpoolStage` (default): the ring thread only *moves bytes* - committed records are cut to
    their content and appended to the spool (capture/spool.py) in one write per batch, then released
    to the kernel: a few microseconds per record, no parsing, no Python call per record, so the ring
    keeps up with a single stream at loopback speed and costs the target little CPU at saturation.
    Parsing, record building and log writing run in a separate process (tracer/worker.py) at
    SCHED_IDLE: it has its own interpreter (no GIL shared with the ring thread) and runs on CPU
    time the traced program does not want - and while records arrive fast it is not told about
    them at all (`SpoolStage._gate`), catching up when the rate drops. Its backlog is bounded
    (`--spool-max-mb`): past a quarter of it the worker is raised to normal priority until the
    backlog halves; at the limit the spool refuses records, they wait in the ring, and what no
    longer fits there is dropped by the kernel and counted. At the end the worker is raised to
    normal priority and the summary waits until it has parsed everything.
  * `InlineStage` (--no-deferred-parsing): the pipeline runs in this process, on the ring thread,
    one callback per record - the simplest path, for debugging and comparisons.

Control that must take effect at a point of the record stream (a process exited: close its
connections; a new API host for the filter; a process' command line for the records it makes) goes
through `close_pid` / `api_url` / `process_changed`, after the records already in the ring.

A failure of the parsing process, or of a thread in it, is a failure of the run like the death of
one of the tracer's own threads (tracer/threads.py): said at once on stderr, a FAILED line in the
summary, exit status 70.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tracer.capture.spool import SpoolWriter, open_spool_file
from tracer.threads import PARSER, ThreadFailures

BUSY_RETRY_S = 0.02          # how long close_pid waits for a record a CPU is still writing
STALL_S = 120.0              # at the end: a worker making no progress for this long is stopped
MEMFD_MAX_BACKLOG = 256 << 20   # the spool's bound when it has to live in memory (no private directory)
# the capture is "busy" (the parser waits: SpoolStage._gate) above these rates, over GATE_WINDOW_S
GATE_WINDOW_S = 0.25
BUSY_ONSET_S = 0.05
BUSY_RECORDS_S = int(os.environ.get("TRACER_BUSY_RECORDS_S", 2000))
BUSY_BYTES_S = 16 << 20
MAX_HOLD_S = 30.0


class StageFailed(Exception):
    pass


class InlineStage:
    """Parse in this process, on the ring thread (--no-deferred-parsing)."""

    kind = "inline"

    def __init__(self, cfg: dict, log_fd: int, stderr=None, failures: ThreadFailures | None = None,
                 procs=None, on_process=None, listen=None):
        from tracer.capture.pipeline import Capture
        from tracer.recorder import Recorder
        from tracer.sinks.jsonl import JsonlWriter
        from tracer.sinks.record import Clock, Filter
        self.failures = failures if failures is not None else ThreadFailures(stderr)
        # its own descriptor of the log: the writer closes it at the end, the session keeps the log's
        self.writer = JsonlWriter(cfg["log_path"], batch_size=cfg["batch_size"], flush_ms=cfg["flush_ms"],
                                  durable=cfg["durable"], stderr=stderr, fd=os.dup(log_fd),
                                  failures=self.failures)
        self.filter = Filter(include_all=cfg["include_all"])
        self.recorder = Recorder(self.writer, self.filter, Clock(offset_ns=cfg["clock_offset_ns"]),
                                 redact=cfg["redact"], procs=procs)
        self.capture = Capture(self.recorder.on_exchange, on_process=on_process)
        self.callback = self.capture.feed          # the ring's per-record callback
        from tracer.worker import start_feed
        self.feed = start_feed(cfg, self.capture, self.filter, listen, self.failures)

    def drain(self, ring) -> str:
        ring.consume()
        return ""

    def close_pid(self, ring, pid: int, reason: str) -> None:
        ring.consume()
        self.capture.close_pid(pid, reason)

    def api_url(self, url: str) -> None:
        self.filter.add_base_url(url)

    def process_changed(self, proc) -> None:
        """The recorder reads the session's process table itself."""

    def after_parsed(self, msg: dict, then) -> None:
        """Everything is parsed as it arrives: `then(msg["pid"])` at once."""
        then(msg["pid"])

    def progress(self) -> dict:
        from tracer.recorder import progress
        return progress(self.capture, self.recorder)

    def finish(self) -> dict:
        from tracer.recorder import stage_summary
        self.capture.close_all("tracer stopped")
        self.capture.stop()
        self.writer.flush()
        self.writer.close()
        self.feed.close()              # after the log is complete: its views read it to the end
        return {**stage_summary(self.capture, self.recorder), "live_feed_clients": self.feed.clients_served,
                "live_feed_errors": self.feed.errors}

    def info(self) -> dict:
        return {"stage": self.kind}


class SpoolStage:
    """Move records to the spool on the ring thread; parse them in the worker process."""

    kind = "spool"
    callback = None

    def __init__(self, cfg: dict, log_fd: int, *, max_backlog: int, stderr=None,
                 spool_dir: Path | None = None, failures: ThreadFailures | None = None, listen=None):
        self.stderr = stderr or sys.stderr
        self.high_water = max_backlog // 4
        self.low_water = max_backlog // 8
        self.failures = failures if failures is not None else ThreadFailures(self.stderr)
        self._failed = False
        self._after: dict = {}         # pid -> what to call once the parser has reached an instruction
        # a live view is connected to the feed (in the parsing process): it wants the answers as they
        # stream, so the parser runs at normal priority and is told about new records at once
        self.viewers = False
        self._final: dict | None = None
        self._progress: dict = {}
        self._done = threading.Event()
        self._raised = False           # worker at normal priority (backlog or end of run)
        self.dead = False              # the worker ended without finishing: records are counted, not kept
        self.unparsed_bytes = 0
        self._discard = _Discard(self)
        self.busy = False              # records arriving fast: the parser is not told (see _gate)
        self.held_s = 0.0              # time the parser was kept waiting that way
        self._held_since: float | None = None
        self._win_start, self._win_records, self._win_bytes = time.monotonic(), 0, 0
        self._ending = False
        self.raised_count = 0
        self.finish_seconds = 0.0
        fd, self.where = open_spool_file(spool_dir)
        if "memfd" in self.where:      # memory, not page cache that can be written back: bounded tighter
            max_backlog = min(max_backlog, MEMFD_MAX_BACKLOG)
            self.high_water, self.low_water = max_backlog // 4, max_backlog // 8
        notify_r, notify_w = os.pipe2(os.O_CLOEXEC)
        reply_r, reply_w = os.pipe2(os.O_CLOEXEC)
        # the live feed runs in the parsing process: it inherits the feed's listening socket, and gets
        # the sockets of views started here (run/attach --follow) on this socket pair (SCM_RIGHTS)
        views_here, views_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.feed = _RemoteFeed(views_here)
        self.spool = SpoolWriter(fd, notify_w, max_backlog=max_backlog, where=self.where, stderr=self.stderr)
        from tracer.worker import command
        live_fds = (views_there.fileno(),) + ((listen.fileno(),) if listen is not None else ())
        cfg = {**cfg, "live": {**cfg.get("live", {}), "views_fd": views_there.fileno(),
                               "listen_fd": listen.fileno() if listen is not None else -1}}
        cmd = [*command(), "--spool-fd", str(fd), "--notify-fd", str(notify_r), "--reply-fd", str(reply_w),
               "--log-fd", str(log_fd), "--config", json.dumps(cfg)]
        try:
            # its own process group - a Ctrl-C at the terminal is the tracer's to handle - in the
            # tracer's session: CPU time is shared between sessions (autogroups) before priorities
            # apply inside them, and SCHED_IDLE means idle next to the traced program only there
            self.proc = subprocess.Popen(cmd, pass_fds=(fd, notify_r, reply_w, log_fd, *live_fds), cwd="/",
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         process_group=0)
        except OSError:
            for x in (fd, notify_r, notify_w, reply_r, reply_w):
                os.close(x)
            views_here.close()
            raise
        finally:
            views_there.close()
        for x in (notify_r, reply_w):      # the worker's ends
            os.close(x)
        self._reply = os.fdopen(reply_r, "rb", buffering=0)
        self._reader = threading.Thread(target=self._read_reports, name="tracer-reports", daemon=True)
        self._reader.start()

    # -- the ring thread's side ------------------------------------------------------------------
    def drain(self, ring) -> str:
        """Returns why the drain stopped early ("busy", "refused") or ""."""
        if self.dead:                  # nobody will parse them: taken out of the ring and counted
            return ring.drain(self._discard)[2]
        n, nbytes, why = ring.drain(self.spool)
        self._gate(n, nbytes)
        self.spool.punch()
        self._adjust_priority()
        return why

    def _gate(self, records: int, nbytes: int) -> None:
        """Let the parsing process see what was spooled - or not yet, while the capture is busy.

        SCHED_IDLE keeps the parser off CPU time others want, but CPU time nobody wants is not free:
        on a virtual machine the other vCPU is often a hyperthread or a time slice of the same core,
        and a parser busy there slowed a saturating target by ~20 % (wrk -> nginx: 0.67 of the
        empty-probe floor parsing, 0.86 with the parser stopped; BENCHMARKS.md). So while records
        arrive faster than BUSY_RECORDS_S a second (or BUSY_BYTES_S) the parser is not told about
        them and sleeps; it catches up once the rate drops, when the backlog passes the high-water
        mark, at the end, and at least every MAX_HOLD_S so that the log of a target busy for long
        still moves. A Claude-Code-like load (a few hundred records a second in bursts) is parsed
        as it comes."""
        now = time.monotonic()
        self._win_records += records
        self._win_bytes += nbytes
        dt = now - self._win_start
        # a burst is recognised within BUSY_ONSET_S (the parser stops competing at once); its end only
        # over a whole window (the parser does not start and stop with every pause of the target)
        if dt >= GATE_WINDOW_S or (not self.busy and dt >= BUSY_ONSET_S):
            fast = self._win_records / dt > BUSY_RECORDS_S or self._win_bytes / dt > BUSY_BYTES_S
            if dt >= GATE_WINDOW_S or fast:
                self.busy = fast
                self._win_records = self._win_bytes = 0
                self._win_start = now
        if self.spool.written == self.spool.notified:
            return
        if self.busy and not self._ending and not self.viewers and self.spool.backlog <= self.high_water:
            if self._held_since is None:
                self._held_since = now
                return
            if now - self._held_since < MAX_HOLD_S:
                return
        if self._held_since is not None:
            self.held_s += now - self._held_since
            self._held_since = now if self.busy else None
        self.spool.notify()

    def close_pid(self, ring, pid: int, reason: str) -> None:
        """After every record `pid` left in the ring (a CPU may still be writing one of another
        process': wait a moment for it), tell the worker to close the process' connections."""
        ts = time.monotonic_ns()
        deadline = time.monotonic() + BUSY_RETRY_S
        while ring.drain(self.spool)[2] == "busy" and time.monotonic() < deadline:
            time.sleep(0.001)
        self.spool.control({"op": "close_pid", "pid": pid, "reason": reason, "ts": ts})
        self.spool.notify()

    def api_url(self, url: str) -> None:
        self.spool.control({"op": "api_url", "url": url})
        self.spool.notify()

    def process_changed(self, proc) -> None:
        """A process' identity for the records it makes (`tracer.process`: tracer/processes/table.py),
        sent when the table learns it - before the process runs the program (it is held, or not yet
        probed) - so that it precedes the records of that program in the spool."""
        self.spool.control(process_message(proc))

    def after_parsed(self, msg: dict, then) -> None:
        """`then(msg["pid"])` once the parsing process has parsed everything spooled before now (it
        echoes the instruction back); at once if it is gone."""
        if self.dead or self._ending:
            then(msg["pid"])
            return
        self._after[msg["pid"]] = then
        self.spool.control({**msg, "op": "echo"})
        self.spool.notify()

    def _adjust_priority(self) -> None:
        backlog = self.spool.backlog
        if not self._raised and (backlog > self.high_water or self.viewers):
            self._set_priority("normal")
            self.raised_count += not self.viewers
        elif self._raised and not self._ending and not self.viewers and backlog < self.low_water:
            self._set_priority("idle")

    def _set_priority(self, policy: str) -> None:
        from tracer.worker import set_priority
        self._raised = policy != "idle"
        try:
            tids = os.listdir(f"/proc/{self.proc.pid}/task")
        except OSError:
            return
        for tid in tids:
            set_priority(policy, int(tid))

    # -- reports from the worker ----------------------------------------------------------------
    def _read_reports(self) -> None:
        from tracer.worker import name_thread
        name_thread("tracer-reports")
        try:
            for line in self._reply:
                msg = json.loads(line)
                t = msg.get("t")
                if "consumed" in msg:
                    self.spool.consumed = msg["consumed"]
                if t == "progress":
                    self._progress = msg
                elif t == "viewers":
                    self.viewers = bool(msg.get("on"))
                    self._adjust_priority()
                elif t == "view":
                    self.feed.taken()
                elif t == "echo":
                    then = self._after.pop(msg.get("pid"), None)
                    if then is not None:
                        try:
                            then(msg["pid"])
                        except Exception as e:      # noqa: BLE001 -- the reports must go on
                            print(f"tracer: after the parsing process reached pid {msg['pid']}'s exit: "
                                  f"{type(e).__name__}: {e}", file=self.stderr)
                elif t == "final":
                    self._final = msg["stats"]
                    self.feed.clients_served = self._final.get("live_feed_clients", 0)
                    self.feed.errors = self._final.get("live_feed_errors", 0)
                elif t == "error":
                    self._fail(msg.get("error", "?"), msg.get("where", ""))
        except (OSError, ValueError) as e:
            self._fail(f"reading its reports failed: {type(e).__name__}: {e}")
        finally:
            self.feed.gone()
            if self._final is None:
                self.dead = True
                self.unparsed_bytes += self.spool.written - self.spool.consumed
                if not self._failed:
                    code = self.proc.wait()
                    self._fail(f"it exited ({_status(code)}) before finishing")
            self._done.set()

    def _fail(self, error: str, where: str = "") -> None:
        """The parsing process failed: loud at once, a FAILED line in the summary, exit status 70."""
        if self._failed:
            return
        self._failed = True
        self.failures.report(PARSER, error,
                             "records it had not parsed are not in the log (counted as unparsed bytes)",
                             where)

    def progress(self) -> dict:
        return self._progress

    # -- the end ----------------------------------------------------------------------------------
    def finish(self) -> dict:
        """Everything in the spool parsed and written (the worker raised to normal priority for it);
        returns the worker's part of the summary."""
        t0 = time.monotonic()
        self._ending = True
        if self._held_since is not None:
            self.held_s += t0 - self._held_since
            self._held_since = None
        self.spool.control({"op": "close_all", "reason": "tracer stopped", "ts": time.monotonic_ns()})
        self.spool.close()
        self._set_priority("normal")
        last, last_t = -1, time.monotonic()
        while not self._done.wait(0.5):
            pos = self.spool.consumed
            if pos != last:
                last, last_t = pos, time.monotonic()
            elif time.monotonic() - last_t > STALL_S:
                self._fail(f"it made no progress for {STALL_S:.0f} s; stopped")
                self.proc.kill()
                break
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if code != 0 and self._final is not None:
            self._fail(f"it exited with {_status(code)}")
        self._reply.close()
        self.feed.close()
        os.close(self.spool.fd)
        self.finish_seconds = time.monotonic() - t0
        return self._final or {}

    def info(self) -> dict:
        return {"stage": self.kind, "spool": self.where, "spool_bytes": self.spool.written,
                "spool_peak_backlog_bytes": self.spool.peak_backlog,
                "spool_refused_batches": self.spool.refused, "spool_write_errors": self.spool.write_errors,
                "parser_raised": self.raised_count, "parse_after_capture_s": round(self.finish_seconds, 3),
                "parser_pid": self.proc.pid, "unparsed_bytes": self.unparsed_bytes,
                "parse_held_s": round(self.held_s, 3)}


class _RemoteFeed:
    """The session's handle of the live feed in the parsing process: views started by the session
    (tracer/live/launch.py) are handed over as descriptors. The feed itself ends with the parsing
    process, after the log is complete."""

    ACK_WAIT_S = 10.0

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.clients_served = 0
        self.errors = 0
        self._sent = 0
        self._taken = 0
        self._gone = False
        self._cond = threading.Condition()

    def add_client(self, view: socket.socket) -> None:
        """Hand the view over and wait until the feed has it: a pair parsed after this returns is
        shown to the view from its start (run/attach --follow start the view before the traffic)."""
        try:
            socket.send_fds(self.sock, [b"v"], [view.fileno()])
        except OSError as e:
            print(f"tracer: cannot hand the live view to the parsing process: {e.strerror or e}",
                  file=sys.stderr)
            return
        finally:
            view.close()
        with self._cond:
            self._sent += 1
            if not self._cond.wait_for(lambda: self._taken >= self._sent or self._gone, self.ACK_WAIT_S):
                print("tracer: the parsing process has not taken the live view yet; it may miss the "
                      "start of the first answers", file=sys.stderr)

    def taken(self) -> None:
        """The parsing process reports a view connected to its feed."""
        with self._cond:
            self._taken += 1
            self._cond.notify_all()

    def gone(self) -> None:
        with self._cond:
            self._gone = True
            self._cond.notify_all()

    def close(self) -> None:
        self.sock.close()


class _Discard:
    """The ring drain's sink once the parsing process is dead: records are taken out of the ring (so
    that it does not fill and drop what is counted there) and their bytes counted as unparsed."""

    def __init__(self, stage: SpoolStage):
        self.stage = stage

    def store(self, lens, _bufs) -> bool:
        self.stage.unparsed_bytes += sum(lens)
        return True

    def store_ring(self, bufs, _records) -> bool:
        self.stage.unparsed_bytes += sum(len(b) for b in bufs)
        return True


def process_message(proc) -> dict:
    """A process table entry as the parsing process needs it for `tracer.process` (tracer/worker.py)."""
    return {"op": "proc", "pid": proc.pid, "ppid": proc.ppid, "argv": list(proc.argv), "exe": proc.exe,
            "comm": proc.comm,
            "earlier": [[list(im.argv), im.exe, im.comm, im.until_ns] for im in proc.earlier]}


def _status(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"

