"""A tracing session, the whole path in one place: load the BPF program (tracer/probes/load.py),
open the log (tracer/sinks/jsonl.py), start the stage that parses (tracer/stage.py: the spool and
the parsing process, or the pipeline in this process), drain the ring buffer into it on the ring
thread (tracer/capture/ring.py), attach uprobes to each target's TLS libraries
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

from tracer.capture.ring import DropCounters, Ring, drain_reader
from tracer.probes.attach import TRACEFS, Probes
from tracer.probes.load import load_program
from tracer.probes.targets import Locator, mapped_objects
from tracer.sinks.jsonl import make_log_dir, open_log
from tracer.sinks.record import Clock
from tracer.stage import InlineStage, SpoolStage
from tracer.worker import name_thread


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
    deferred: bool = True          # parse in the worker process behind the spool (tracer/stage.py)
    spool_max_mb: int = 1024       # most bytes captured but not parsed yet (deferred parsing)
    html: bool = True
    status: bool = True
    summary_json: Path | None = None
    watch_interval: float = 0.25


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


def boost_threads(nice: int) -> int:
    """Give this process' threads (and those it starts from now on) nice value `nice`; returns the
    nice value it had before (which processes it starts for others must get back).

    The ring thread must run when it is due - the ring buffer holds a fraction of a second at
    loopback speed, and on a busy machine a normal thread can wait longer than that for a CPU - and
    it needs the GIL, which any of this process' threads may hold when it is preempted: so all of
    them are raised. They do little (the ring thread a few microseconds a record, the others a look
    at the targets' mappings four times a second and the parsing process' reports); the parsing, the
    heavy part, runs in its own process at SCHED_IDLE. Best effort: without the privilege nothing
    changes. (Nice values order threads within a session's share of the CPU only - autogroups; the
    ring thread can be made real-time instead: ring_thread_policy.)"""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [threading.get_native_id()]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass
    return before


def ring_thread_policy() -> str:
    """The ring thread's scheduling under deferred parsing: the nice value of the other threads
    (boost_threads) by default; TRACER_RING_SCHED=fifo makes it SCHED_FIFO at the lowest real-time
    priority, which drains the ring on time whatever other sessions run (nice values do not reach
    across sessions), at a measured cost: wrk at saturation on a quiet machine reached 0.81 of the
    empty-probe floor with it against 0.86 without (BENCHMARKS.md, "Deferred parsing"). It only
    moves bytes and never spins (Session._poll). Returns the policy it has."""
    if os.environ.get("TRACER_RING_SCHED") == "fifo":
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            return "fifo"
        except OSError:
            pass
    return f"nice {os.getpriority(os.PRIO_PROCESS, threading.get_native_id())}"


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
        self.clock = Clock()
        self.locator = Locator()
        self.targets: dict[int, Target] = {}
        self.failures: list[str] = []            # tracer's own threads/processes that failed
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._max_gap = 0.0                      # longest time between two drains of the ring
        self.tracefs = ensure_tracefs()
        t = time.monotonic()
        self.prog = load_program(ring_buffer_mb=opts.ring_buffer_mb, copy_limit=opts.copy_limit,
                                 stderr=self.stderr)
        self.load_seconds = time.monotonic() - t
        try:
            self.probes = Probes(self.prog, stderr=self.stderr)
            self.drops = DropCounters(self.prog.map_fd("drops"), self.prog.map_info("drops"))
            self.log_path = new_log_path(opts)
            log_fd = open_log(self.log_path)
            try:
                self.stage = self._start_stage(opts, log_fd)
            finally:
                if opts.deferred:
                    os.close(log_fd)             # the parsing process has its own copy
            events = self.prog.map_info("events")
            if self.stage.callback is None:      # deferred: batches to the spool
                self.ring = drain_reader(self.prog.map_fd("events"), events.max_entries)
            else:                                # parsed here, record by record
                self.ring = Ring(self.prog.map_fd("events"), self.stage.callback, events.max_entries)
        except BaseException:
            self.prog.close()
            raise
        self.original_nice = os.getpriority(os.PRIO_PROCESS, 0)
        self.ring_policy = "normal"
        if opts.deferred:      # parsing elsewhere: this process' threads do little, and must be on time
            boost_threads(int(os.environ.get("TRACER_NICE", self.NICE)))
        self._poller = threading.Thread(target=self._poll, name="tracer-ring", daemon=True)
        self._poller.start()

    def _start_stage(self, opts: Options, log_fd: int):
        cfg = {"log_path": str(self.log_path), "batch_size": opts.batch_size, "flush_ms": opts.flush_ms,
               "durable": opts.durable, "include_all": opts.include_all, "redact": opts.redact,
               "api_hosts": [], "clock_offset_ns": self.clock.offset_ns,
               "priority": os.environ.get("TRACER_PARSER_PRIORITY", "idle")}
        if not opts.deferred:
            return InlineStage(cfg, log_fd, stderr=self.stderr)
        return SpoolStage(cfg, log_fd, max_backlog=opts.spool_max_mb << 20, stderr=self.stderr)

    # -- pipeline ends -------------------------------------------------------------------------
    POLL_MS = 50   # records are submitted without wake-ups (see bpf/tracer.bpf.c): drain on this timer
    NICE = -10     # this process' threads (see boost_threads); the parsing process stays at SCHED_IDLE

    def _poll(self):
        """The ring thread: wake on the timer (or the kernel's forced wake-up), hand what the ring
        holds to the stage. With the spool stage that is a few microseconds per record."""
        name_thread("tracer-ring")
        if self.stage.kind == "spool":
            self.ring_policy = ring_thread_policy()
        errors = 0
        last = time.monotonic()
        while not self._stop.is_set():
            self.ring.wait(self.POLL_MS)
            now = time.monotonic()
            if now - last > self._max_gap:
                self._max_gap = now - last
            last = now
            try:
                why = self.stage.drain(self.ring)
            except Exception as e:     # a bug: loud, counted, and the ring keeps being drained
                errors += 1
                if errors == 1:
                    self._failed(f"the ring thread failed to drain the ring ({type(e).__name__}: {e})")
                why = "failed"
            # records left in the ring keep it readable: wait for the spool (or the CPU writing the
            # next record) instead of spinning
            if why in ("refused", "failed"):
                time.sleep(self.POLL_MS / 1000)
            elif why == "busy":
                time.sleep(0.001)
        self.stage.drain(self.ring)

    def _failed(self, why: str) -> None:
        self.failures.append(why)
        print(f"tracer: INTERNAL ERROR: {why}", file=self.stderr, flush=True)

    # -- targets -------------------------------------------------------------------------------
    def add_target(self, pid: int, extra_files: list[str] = (), env: dict | None = None) -> Target:
        tgt = self.targets.setdefault(pid, Target(pid))
        env = env if env is not None else read_environ(pid)
        if env.get("ANTHROPIC_BASE_URL"):
            self.stage.api_url(env["ANTHROPIC_BASE_URL"])     # before any of its records
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
        # its last records are in the ring already: they go first, then its connections are closed
        self.stage.close_pid(self.ring, pid, reason)
        self.probes.detach_pid(pid)

    def live_targets(self) -> list[int]:
        return [p for p, t in self.targets.items() if t.alive]

    # -- status and the end --------------------------------------------------------------------
    def status_line(self) -> str:
        drops = self.drops.read()
        p = self.stage.progress()
        return (f"tracer: {p.get('pairs_logged', 0)} logged / {p.get('pairs_seen', 0)} pairs, "
                f"{p.get('bytes_captured', 0) / 1e6:.1f} MB, {p.get('connections', 0)} conns, "
                f"drops {drops.get('events', 0)}"
                + (", parsing deferred while records come fast" if getattr(self.stage, "busy", False) else ""))

    def finish(self) -> dict:
        self._stop.set()
        if self._poller:
            self._poller.join(timeout=5)
        for pid in self.live_targets():
            self.targets[pid].alive = False
        self._stage_stats = self.stage.finish()       # everything parsed and written
        summary = self.summary()
        self.probes.close()
        self.ring.close()
        self.drops.close()
        self.prog.close()
        return summary

    def summary(self) -> dict:
        drops = self.drops.read()
        st = getattr(self, "_stage_stats", None) or {}
        failures = self.failures + self.stage.failures
        out = {
            "log": str(self.log_path),
            "duration_s": round(time.monotonic() - self.started, 3),
            "targets": {str(pid): [f[0] for f in t.files] for pid, t in self.targets.items()},
            "pairs_seen": 0, "pairs_logged": 0, "pairs_filtered_out": 0, "pairs_incomplete": 0,
            "connections": 0, "bytes_captured": 0, "ring_records": 0,
        }
        out.update(st)
        out.update({
            "ring_drops_events": drops.get("events", 0),
            "ring_drops_bytes": drops.get("bytes", 0),
            "truncated_bytes": drops.get("truncated", 0),
            "copy_fail_bytes": drops.get("copy_fail", 0),
            "spool_lost_records": self.ring.lost_records,
            "ring_peak_fill": round(self.ring.peak_fill / max(self.ring.size, 1), 3),
            "ring_max_drain_interval_ms": round(self._max_gap * 1000, 1),
            "ring_thread_policy": self.ring_policy,
            "records_lost": st.get("records_lost", 0),
            "internal_failures": failures,
        })
        out.update(self.stage.info())
        return out

