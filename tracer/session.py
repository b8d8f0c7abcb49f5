"""A tracing session, the whole path in one place: load the BPF program (tracer/probes/load.py),
open the log (tracer/sinks/jsonl.py) and the capture pipeline (tracer/capture/pipeline.py), read the
ring buffer into it (tracer/capture/ring.py), attach uprobes to each target's TLS libraries
(tracer/probes/attach.py, found by tracer/probes/targets.py), and at the end the summary."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tracer.capture.pipeline import Capture
from tracer.capture.ring import DropCounters, Ring
from tracer.probes.attach import TRACEFS, Probes
from tracer.probes.load import load_program
from tracer.probes.targets import Locator, mapped_objects
from tracer.protocols.base import Exchange
from tracer.sinks.jsonl import JsonlWriter, make_log_dir
from tracer.sinks.record import Clock, Filter, build_record


@dataclass
class Options:
    output_dir: Path = Path(".claude-trace")
    log_name: str | None = None
    include_all: bool = False
    redact: bool = True
    batch_size: int = 100
    flush_ms: int = 100
    durable: bool = False
    ring_buffer_mb: int = 8
    copy_limit: int = 1 << 20
    deferred: bool = True
    html: bool = True
    status: bool = True
    summary_json: Path | None = None
    watch_interval: float = 0.25
    live_feed: bool = True          # offer the live feed beside the log (tracer/live/feed.py)


@dataclass
class Target:
    pid: int
    attached: set = field(default_factory=set)     # (dev, inode) of files with probes
    files: list = field(default_factory=list)      # (path, library, methods)
    alive: bool = True


def ensure_tracefs() -> str:
    """Tracepoints are found through tracefs (and BCC detaches through it); mount it where a minimal
    system has not."""
    for p in TRACEFS:
        if os.path.exists(os.path.join(p, "uprobe_events")):
            return p
    try:
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True,
                       capture_output=True, timeout=10)
        return "/sys/kernel/tracing (mounted by tracer)"
    except (OSError, subprocess.SubprocessError):
        return ""


def ssl_library_candidates() -> list[str]:
    """System libssl files a process may load later (dlopen): probes are put on them up front."""
    out: list[str] = []
    try:
        res = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10)
        for line in res.stdout.splitlines():
            if "libssl.so" in line and "=>" in line:
                out.append(line.split("=>", 1)[1].strip())
    except (OSError, subprocess.SubprocessError):
        pass
    seen, uniq = set(), []
    for p in out:
        rp = os.path.realpath(p)
        if rp not in seen and os.path.exists(rp):
            seen.add(rp)
            uniq.append(rp)
    return uniq


def command_files(argv0: str, env: dict) -> list[str]:
    """The executable a command will run, and its script interpreter (shebang), resolved."""
    files: list[str] = []
    exe = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if not exe:
        return files
    exe = os.path.realpath(exe)
    files.append(exe)
    try:
        with open(exe, "rb") as f:
            first = f.readline(256)
    except OSError:
        return files
    if first.startswith(b"#!"):
        parts = first[2:].decode("utf-8", "replace").split()
        if parts:
            interp = parts[0]
            if os.path.basename(interp) == "env" and len(parts) > 1:
                args = [a for a in parts[1:] if not a.startswith("-")]
                interp = shutil.which(args[0], path=env.get("PATH", os.defpath)) if args else None
            if interp:
                files.append(os.path.realpath(interp))
    return files


def read_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    return env


def new_log_path(opts: Options) -> Path:
    """A fresh log file name in the (created or checked) output directory."""
    out_dir = make_log_dir(opts.output_dir)
    name = opts.log_name or f"log-{datetime.now().strftime('%Y-%m-%d-%H-%M-%S')}.jsonl"
    path = out_dir / name
    n = 1
    while os.path.lexists(path):   # a dangling symlink counts as taken (never opened through)
        path = out_dir / f"{Path(name).stem}-{n}.jsonl"
        n += 1
    return path


class Session:
    def __init__(self, opts: Options, *, stderr=None):
        self.opts = opts
        self.stderr = stderr or sys.stderr
        self.filter = Filter(include_all=opts.include_all)
        self.clock = Clock()
        self.locator = Locator()
        self.targets: dict[int, Target] = {}
        self.pairs_seen = 0
        self.pairs_logged = 0
        self.pairs_filtered = 0
        self.pairs_incomplete = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._cycles = 0
        self._cycle_cv = threading.Condition()
        self.tracefs = ensure_tracefs()
        t = time.monotonic()
        self.prog = load_program(ring_buffer_mb=opts.ring_buffer_mb, copy_limit=opts.copy_limit,
                                 stderr=self.stderr)
        self.load_seconds = time.monotonic() - t
        try:
            self.probes = Probes(self.prog, stderr=self.stderr)
            self.drops = DropCounters(self.prog.map_fd("drops"), self.prog.map_info("drops"))
            self.log_path = new_log_path(opts)
            self.writer = JsonlWriter(self.log_path, batch_size=opts.batch_size, flush_ms=opts.flush_ms,
                                      durable=opts.durable, stderr=self.stderr)
            self.capture = Capture(self._on_exchange, deferred=opts.deferred)
            self.ring = Ring(self.prog.map_fd("events"), self.capture.feed)
        except BaseException:
            self.prog.close()
            raise
        self.feed = self._start_feed(opts)
        self.capture.start()
        self._poller = threading.Thread(target=self._poll, name="tracer-ring", daemon=True)
        self._poller.start()

    def _start_feed(self, opts: Options):
        """The live feed (tracer/live/feed.py): always there for `--follow`'s view; its socket beside the
        log unless --no-live-feed. Failing to offer the socket costs only the socket."""
        from tracer.live.feed import Listener, LiveFeed
        listener = self.live_listener = None
        if opts.live_feed:
            try:
                listener = self.live_listener = Listener(self.log_path)
            except Exception as e:      # the trace goes on without it
                why = e.strerror if isinstance(e, OSError) and e.strerror else e
                print(f"tracer: no live feed for `tracer tail` ({why})", file=self.stderr)
        feed = LiveFeed(clock=self.clock, wants=self.filter.wants, log_name=self.log_path.name,
                        listen=listener.sock if listener is not None else None)
        feed.attach(self.capture)
        feed.start()
        return feed

    # -- pipeline ends -------------------------------------------------------------------------
    POLL_MS = 50   # records are submitted without wake-ups (see bpf/tracer.bpf.c): drain on this timer

    def _poll(self):
        while not self._stop.is_set():
            self.ring.poll(self.POLL_MS)
            self.ring.consume()
            with self._cycle_cv:
                self._cycles += 1
                self._cycle_cv.notify_all()
        self.ring.consume()

    def wait_ring_drained(self, timeout: float = 5.0) -> None:
        """Return once the poll thread has drained the ring at least once after this call: everything
        the kernel had queued by now has reached the capture pipeline."""
        with self._cycle_cv:
            target = self._cycles + 2
            self._cycle_cv.wait_for(lambda: self._cycles >= target or self._stop.is_set(), timeout)

    def _on_exchange(self, ex: Exchange):
        self.pairs_seen += 1
        if not self.filter.wants(ex):
            self.pairs_filtered += 1
            ex.request.body.close()
            if ex.response is not None:
                ex.response.body.close()
            return
        if ex.incomplete:
            self.pairs_incomplete += 1
        self.writer.submit(build_record(ex, self.clock, redact=self.opts.redact))
        self.pairs_logged += 1

    # -- targets -------------------------------------------------------------------------------
    def add_target(self, pid: int, extra_files: list[str] = (), env: dict | None = None) -> Target:
        tgt = self.targets.setdefault(pid, Target(pid))
        env = env if env is not None else read_environ(pid)
        if env.get("ANTHROPIC_BASE_URL"):
            self.filter.add_base_url(env["ANTHROPIC_BASE_URL"])
        for path in extra_files:
            self._attach_file(tgt, path)
        self.refresh_target(tgt)
        return tgt

    def _attach_file(self, tgt: Target, path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        key = (st.st_dev, st.st_ino)
        if key in tgt.attached:
            return False
        loc = self.locator.locate_file(path)
        tgt.attached.add(key)   # located or not, do not look at this file again
        if loc is None:
            return False
        self.probes.attach(tgt.pid, path, loc)
        tgt.files.append((path, loc.library, {n: f.method for n, f in loc.functions.items()}))
        return True

    def refresh_target(self, tgt: Target) -> int:
        """Attach to TLS objects newly mapped by the target (dlopen, late loading)."""
        n = 0
        try:
            objs = mapped_objects(tgt.pid)
        except OSError:
            return 0
        for mo in objs:
            if (mo.dev, mo.inode) in tgt.attached:
                continue
            if self._attach_file(tgt, mo.host_path):
                n += 1
        return n

    def target_exited(self, pid: int, reason: str = "target exited"):
        tgt = self.targets.get(pid)
        if tgt is None or not tgt.alive:
            return
        tgt.alive = False
        self.wait_ring_drained()   # its last records are in the ring already: let them through first
        self.capture.close_pid(pid, reason)
        self.probes.detach_pid(pid)

    def live_targets(self) -> list[int]:
        return [p for p, t in self.targets.items() if t.alive]

    # -- status and the end --------------------------------------------------------------------
    def status_line(self) -> str:
        drops = self.drops.read()
        s = self.capture.stats
        return (f"tracer: {self.pairs_logged} logged / {self.pairs_seen} pairs, "
                f"{s.bytes_captured / 1e6:.1f} MB, {s.connections} conns, "
                f"drops {drops.get('events', 0)}")

    def finish(self) -> dict:
        self._stop.set()
        if self._poller:
            self._poller.join(timeout=5)
        for pid in self.live_targets():
            self.targets[pid].alive = False
        self.capture.close_all("tracer stopped")
        self.capture.stop()
        self.writer.flush()
        self.writer.close()
        self.feed.close()        # after the log is complete: its views read it to the end
        if self.live_listener is not None:
            self.live_listener.close()
        summary = self.summary()
        self.probes.close()
        self.ring.close()
        self.drops.close()
        self.prog.close()
        return summary

    def summary(self) -> dict:
        drops = self.drops.read()
        c = self.capture.stats
        p = self.capture.live_parser_stats()
        w = self.writer.stats
        return {
            "log": str(self.log_path),
            "duration_s": round(time.monotonic() - self.started, 3),
            "targets": {str(pid): [f[0] for f in t.files] for pid, t in self.targets.items()},
            "pairs_seen": self.pairs_seen,
            "pairs_logged": self.pairs_logged,
            "pairs_filtered_out": self.pairs_filtered,
            "pairs_incomplete": self.pairs_incomplete,
            "connections": c.connections,
            "bytes_captured": c.bytes_captured,
            "ring_records": c.ring_records,
            "ring_drops_events": drops.get("events", 0),
            "ring_drops_bytes": drops.get("bytes", 0),
            "truncated_bytes": drops.get("truncated", 0),
            "copy_fail_bytes": drops.get("copy_fail", 0),
            "gap_bytes": c.gap_bytes,
            "skipped_bytes": p.skipped_bytes,
            "parse_errors": p.parse_errors,
            "decode_errors": p.decode_errors,
            "non_http_connections": p.not_http,
            "h2_connections": c.h2_connections,
            "unknown_header_blocks": p.unknown_header_blocks,
            "worker_errors": c.worker_errors,
            "last_worker_error": self.capture.last_error,
            "records_written": w.records,
            "records_lost": w.lost_records,
            "write_errors": w.write_errors,
            "queue_peak": c.queue_peak,
            "live_feed_clients": self.feed.clients_served,
            "live_feed_errors": self.feed.errors,
        }

