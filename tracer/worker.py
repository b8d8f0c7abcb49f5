"""The parsing process: spool -> capture pipeline -> records -> log, behind the ring, at low priority.

Started by the session (tracer/stage.py `SpoolStage`) as root, isolated (`python -I -S`, working
directory /, the session's own import path - already checked by tracer/trust.py), with descriptors
only: the spool (read), the spool's notification pipe (read), a report pipe (write), the log (write;
created by the session as the invoking user), the live feed's listening socket (bound by the session as
that user, when offered) and a socket pair on which the session hands over the sockets of the views it
starts (--follow). It opens no path of its own except anonymous temporary files for bodies over 8 MB
(protocols/base.py `Body`). What the log's records need from the session's process table
(`tracer.process`) arrives as spool instructions ("proc"), in order with the records.

It runs in its own process group (terminal signals meant for the tracer do not reach it; it ignores
SIGINT and SIGHUP anyway) and ends when the spool does: when the session closes it - or dies, even
by SIGKILL - it parses and writes everything already spooled, then exits.

It lowers itself to SCHED_IDLE once its imports are done: it runs on CPU time nobody else wants (and
while records arrive fast the session does not even tell it about them: tracer/stage.py), so at
saturation the traced program keeps the CPUs and the spool absorbs the difference; the session
raises it to normal priority when the backlog grows past its high-water mark and at the end of the
run, when everything left is parsed before the summary.

Reports (JSON lines on the report pipe): {"t": "progress", ...} a few times a second while it works,
{"t": "final", "stats": {...}} once at the end (recorder.stage_summary), {"t": "error", ...} if it
fails - the session makes that loud; {"t": "viewers", "on": ...} when the live feed starts or stops
observing the parsers, {"t": "view"} once a view handed over by the session is connected to it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback

PROGRESS_EVERY = 0.25       # seconds between progress reports while there is work


class Reporter:
    def __init__(self, fd: int):
        self.fd = fd
        self.last = 0.0
        self.gone = False
        self._lock = threading.Lock()      # the live feed's thread reports too

    def send(self, msg: dict) -> None:
        """One report; when the session is gone (killed) the reports go nowhere, and the work goes
        on: everything it spooled still reaches the log."""
        if self.gone:
            return
        data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        with self._lock:
            try:
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
            except BrokenPipeError:
                self.gone = True


def name_thread(name: str) -> None:
    """The calling thread's name as `top -H`, `ps -L` and /proc/PID/task/TID/comm show it."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)      # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def set_priority(policy: str, pid: int = 0) -> None:
    """idle: SCHED_IDLE; low: nice 19; normal: nice 0 (SCHED_OTHER). Best effort."""
    try:
        if policy == "idle":
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, pid, 19 if policy == "low" else 0)
    except OSError:
        pass


def run(args) -> int:
    from tracer.capture.pipeline import Capture
    from tracer.capture.spool import KIND_RECORDS, SpoolReader
    from tracer.processes.table import ProcessTable
    from tracer.recorder import Recorder, progress, stage_summary
    from tracer.sinks.jsonl import JsonlWriter
    from tracer.sinks.record import Clock, Filter
    from tracer.threads import ThreadFailures

    name_thread("tracer-parse")
    # Ctrl-C and a hang-up are the tracer's to handle (this process has its own process group anyway,
    # see tracer/stage.py): this process stops when the spool ends, after the last record
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    cfg = json.loads(args.config)
    rep = Reporter(args.reply_fd)
    # a thread of this process that dies (the log writer) is reported on stderr at once and to the
    # session with the final report: the run FAILS (tracer/threads.py)
    failures = ThreadFailures()
    # records wait for the writer thread here, not in a queue that grows while parsing catches up
    writer = JsonlWriter(cfg["log_path"], batch_size=cfg["batch_size"], flush_ms=cfg["flush_ms"],
                         durable=cfg["durable"], fd=args.log_fd, max_queue=max(1000, 2 * cfg["batch_size"]),
                         failures=failures)
    flt = Filter(include_all=cfg["include_all"])
    flt.api_hosts.update(cfg["api_hosts"])
    procs = ProcessTable()          # what the session's table told us (control "proc")
    rec = Recorder(writer, flt, Clock(offset_ns=cfg["clock_offset_ns"]), redact=cfg["redact"], procs=procs)
    capture = Capture(rec.on_exchange)
    installed = capture.set_progress

    def set_progress(progress) -> None:
        """The feed installs itself when its first view connects and leaves after the last one: the
        session then runs this process at normal priority, without holding it (tracer/stage.py)."""
        installed(progress)
        rep.send({"t": "viewers", "on": progress is not None})
    capture.set_progress = set_progress
    feed = _live_feed(cfg, capture, flt, failures, rep)
    reader = SpoolReader(args.spool_fd, args.notify_fd)
    set_priority(cfg["priority"])
    rep.send({"t": "ready", "pid": os.getpid()})

    def control(msg: dict) -> None:
        op = msg.get("op")
        if op == "close_pid":
            capture.close_pid(msg["pid"], msg["reason"], msg.get("ts"))
        elif op == "close_all":
            capture.close_all(msg["reason"], msg.get("ts"))
        elif op == "api_url":
            flt.add_base_url(msg["url"])
        elif op == "proc":
            procs.learn(msg)
        elif op == "echo":              # the session waits until everything before it is parsed
            rep.send({"t": "echo", "pid": msg.get("pid")})
        else:
            raise ValueError(f"unknown spool instruction {msg!r}")

    dirty = False
    while True:
        if not reader.wait(PROGRESS_EVERY if dirty else None):
            if reader.eof and reader.pos >= reader.committed:
                break
            if dirty:
                rep.send({"t": "progress", "consumed": reader.pos, **progress(capture, rec)})
                dirty = False
            continue
        for kind, payload in reader.segments():
            if kind == KIND_RECORDS:
                for r in payload:
                    capture.feed(r)
            else:
                control(payload)
            now = time.monotonic()
            if now - rep.last >= PROGRESS_EVERY:
                rep.last = now
                rep.send({"t": "progress", "consumed": reader.pos, **progress(capture, rec)})
        dirty = True
    capture.close_all("tracer stopped")
    capture.stop()
    writer.flush()
    writer.close()
    feed.close()                    # after the log is complete: its views read it to the end
    rep.send({"t": "final", "consumed": reader.pos,
              "stats": {**stage_summary(capture, rec), "live_feed_clients": feed.clients_served,
                        "live_feed_errors": feed.errors, "thread_failures": failures.as_list()}})
    return 0


def start_feed(cfg: dict, capture, flt, listen, failures):
    """The live feed (tracer/live/feed.py) observing `capture`, filtered like the log, serving views
    that connect to `listen` (a listening socket, or None) and those handed to it."""
    from tracer.live.feed import LiveFeed
    from tracer.sinks.record import Clock
    live = cfg.get("live", {})
    feed = LiveFeed(clock=Clock(offset_ns=cfg["clock_offset_ns"]), wants=flt.wants,
                    log_name=live.get("log_name", ""), listen=listen,
                    allowed_uids=set(live["allowed_uids"]) if "allowed_uids" in live else None)
    feed.attach(capture)
    feed.start(failures)
    return feed


def _live_feed(cfg: dict, capture, flt, failures, rep):
    """The live feed (tracer/live/feed.py) here, beside the pipeline: on the listening socket the
    session made as the user (inherited), and on the views the session starts (run/attach --follow),
    which arrive as descriptors on the views socket."""
    import socket
    import threading

    live = cfg.get("live", {})
    listen = socket.socket(fileno=live["listen_fd"]) if live.get("listen_fd", -1) >= 0 else None
    feed = start_feed(cfg, capture, flt, listen, failures)
    if live.get("views_fd", -1) >= 0:
        views = socket.socket(fileno=live["views_fd"])

        def take_views():
            while True:
                try:
                    _msg, fds, _flags, _addr = socket.recv_fds(views, 16, 4)
                except OSError:
                    return
                if not _msg and not fds:
                    return                  # the session closed its end
                for fd in fds:
                    feed.add_client(socket.socket(fileno=fd))
                    rep.send({"t": "view"})     # the session waits for this before the traffic starts

        threading.Thread(target=take_views, name="tracer-views", daemon=True).start()
    return feed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tracer-worker")
    for name in ("--spool-fd", "--notify-fd", "--reply-fd", "--log-fd"):
        ap.add_argument(name, type=int, required=True)
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except BaseException as e:       # the session reports it (and the exit status) loudly
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        msg = {"t": "error", "error": f"{type(e).__name__}: {e}",
               "where": f"{where.filename}:{where.lineno}" if where else ""}
        try:
            Reporter(args.reply_fd).send(msg)
        except OSError:
            pass
        traceback.print_exc(file=sys.stderr)
        return 70


# The process' whole program: the session's import path, tracer's package from the directory the
# session loaded it from (it may come from an editable install's import hook, which -S leaves out),
# then main(). As the BPF compile child does (tracer/probes/compile.py).
BOOT = """\
import importlib.util, json, sys
sys.path[:] = json.loads(sys.argv[1])
init = sys.argv[2]
spec = importlib.util.spec_from_file_location("tracer", init, submodule_search_locations=[init.rpartition("/")[0]])
mod = importlib.util.module_from_spec(spec)
sys.modules["tracer"] = mod
spec.loader.exec_module(mod)
from tracer.worker import main
sys.exit(main(sys.argv[3:]))
"""


def command() -> list[str]:
    """The start of the parsing process' command line (its arguments follow): isolated (-I -S), with
    this process' import path and tracer package."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    return [os.path.realpath(sys.executable), "-I", "-S", "-c", BOOT, json.dumps(paths),
            os.path.join(here, "__init__.py")]


if __name__ == "__main__":
    sys.exit(main())
