"""A tracing session, the whole path in one place: load the BPF program (tracer/probes/load.py),
open the log (as the invoking user: tracer/userfiles.py), start the stage that parses
(tracer/stage.py: the spool and the parsing process, or the pipeline in this process), drain the ring
buffer into it on the ring thread (tracer/capture/ring.py), attach uprobes to each target's TLS libraries
(tracer/probes/attach.py, found by tracer/probes/targets.py), and at the end the summary."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from tracer.access import PinnedProcess, may_trace
from tracer.capture.ring import DropCounters, Ring, drain_reader
from tracer.errors import TracerError
from tracer.invoker import InvokingUser, invoking_user
from tracer.probes.attach import TRACEFS, Probes
from tracer.probes.kcreds import CredGuard
from tracer.probes.load import load_program
from tracer.probes.targets import Locator
from tracer.processes.procinfo import read_environ
from tracer.processes.prober import Prober
from tracer.processes.table import Proc, ProcessTable
from tracer.sinks.otlp.config import OtlpOptions
from tracer.sinks.record import Clock
from tracer.stage import InlineStage, SpoolStage
from tracer.threads import ThreadFailures, start_thread
from tracer.userfiles import UserDir
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
    user: InvokingUser | None = None       # who tracer works for (default: tracer.invoker.invoking_user())
    allow_other_users: bool = False        # targets need not pass the ptrace rule for `user`
    otlp: OtlpOptions | None = None        # live OpenTelemetry export (tracer.sinks.otlp)
    live_feed: bool = True                 # offer the live feed beside the log (tracer/live/feed.py)


# Programs tracer itself runs as root come from the system's directories only, never from the PATH of
# whoever invoked it, and get a minimal environment.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"     # not /usr/local: group staff may write there


def _system_tool(*argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
    exe = shutil.which(argv[0], path=SYSTEM_PATH)
    if exe is None:
        raise FileNotFoundError(argv[0])
    return subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": SYSTEM_PATH, "LC_ALL": "C"}, stdin=subprocess.DEVNULL, cwd="/")


def ensure_tracefs() -> str:
    """Tracepoints are found through tracefs (and BCC detaches through it); mount it where a minimal
    system has not."""
    for p in TRACEFS:
        if os.path.exists(os.path.join(p, "uprobe_events")):
            return p
    try:
        _system_tool("mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing").check_returncode()
        return "/sys/kernel/tracing (mounted by tracer)"
    except (OSError, subprocess.SubprocessError):
        return ""


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


class _StageUrls:
    """`session.filter` for those that add API hosts (tracer/processes/follower.py): the filter runs
    where records are built (tracer/stage.py), a new host reaches it in order with the records."""

    def __init__(self, session: "Session"):
        self.session = session

    def add_base_url(self, url: str) -> None:
        self.session.stage.api_url(url)


class Session:
    def __init__(self, opts: Options, *, stderr=None):
        self.opts = opts
        self.stderr = stderr or sys.stderr
        self.filter = _StageUrls(self)
        self.clock = Clock()
        self.locator = Locator()
        self.procs = ProcessTable()
        self.follower = None                      # tracer/processes/follower.py, when following
        self.notes: list[str] = []             # shown in the summary (e.g. a target that lost access)
        self.user = opts.user or invoking_user()
        self.started = time.monotonic()
        self.stopped: float | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._cycles = 0
        self._cycle_cv = threading.Condition()
        self._max_gap = 0.0                      # longest time between two drains of the ring
        self._stage_stats: dict = {}
        self.failures = ThreadFailures(self.stderr)   # tracer's own threads that died (exit status)
        # the output directory is created/checked first (as the invoking user): a refusal costs nothing
        out_dir = UserDir(opts.output_dir, self.user)
        self.otlp = None
        self.otlp_summary: dict = {}
        self.live_listener = None
        try:
            self.tracefs = ensure_tracefs()
            t = time.monotonic()
            self.prog = load_program(ring_buffer_mb=opts.ring_buffer_mb, copy_limit=opts.copy_limit,
                                     stderr=self.stderr)
            self.load_seconds = time.monotonic() - t
            try:
                self.probes = Probes(self.prog, stderr=self.stderr)
                self.drops = DropCounters(self.prog.map_fd("drops"), self.prog.map_info("drops"))
                self.guard = CredGuard(self.prog.map_fd("cred_layout"), self.prog.map_fd("target_ids"))
                self.log_fd = self._open_log(opts, out_dir)
                self.otlp = self._start_otlp(opts.otlp, self.log_fd)
                self.live_listener = self._open_listener(opts, out_dir)
                self.stage = self._start_stage(opts, self.log_fd)
                self.prober = Prober(self.probes, self.locator, stderr=self.stderr)
                events = self.prog.map_info("events")
                if self.stage.callback is None:      # deferred: batches to the spool
                    self.ring = drain_reader(self.prog.map_fd("events"), events.max_entries)
                else:                                # parsed here, record by record
                    self.ring = Ring(self.prog.map_fd("events"), self.stage.callback, events.max_entries)
            except BaseException:
                if self.otlp:
                    self.otlp.abort()
                if self.live_listener is not None:
                    self.live_listener.close()
                if getattr(self, "log_fd", None) is not None:
                    os.close(self.log_fd)
                self.prog.close()
                raise
        finally:
            out_dir.close()
        self.procs.on_change = self.stage.process_changed    # records name their process (table.py)
        self.original_nice = os.getpriority(os.PRIO_PROCESS, 0)
        self.ring_policy = "normal"
        if opts.deferred:      # parsing elsewhere: this process' threads do little, and must be on time
            boost_threads(int(os.environ.get("TRACER_NICE", self.NICE)))
        self.feed = self.stage.feed         # the live feed, beside the pipeline it observes (tracer/stage.py)
        self._poller = start_thread("tracer-ring", self._poll, self.failures,
                                    "the ring buffer is no longer drained: the kernel drops (and "
                                    "counts) what the targets send")

    def _open_log(self, opts: Options, out_dir: UserDir) -> int:
        """The log, created as the invoking user (tracer/userfiles.py) in the output directory, on
        this thread, before any writer exists: the writer (in the parsing process, or the stage's
        in this one) only ever writes to this descriptor."""
        name = opts.log_name or f"log-{datetime.now().strftime('%Y-%m-%d-%H-%M-%S')}.jsonl"
        candidate, n = name, 1
        while True:
            try:      # O_EXCL | O_NOFOLLOW: a planted file or (dangling) symlink counts as taken
                fd = out_dir.create(candidate, 0o600, os.O_WRONLY | os.O_APPEND)
                break
            except FileExistsError:
                candidate = f"{Path(name).stem}-{n}.jsonl"
                n += 1
        self.log_path = Path(opts.output_dir) / candidate
        return fd

    def _start_stage(self, opts: Options, log_fd: int):
        cfg = {"log_path": str(self.log_path), "batch_size": opts.batch_size, "flush_ms": opts.flush_ms,
               "durable": opts.durable, "include_all": opts.include_all, "redact": opts.redact,
               "api_hosts": [], "clock_offset_ns": self.clock.offset_ns,
               "priority": os.environ.get("TRACER_PARSER_PRIORITY", "idle")}
        # the live feed (tracer/live/feed.py) runs where the parsers run; its listening socket was
        # made here, as the user
        cfg["live"] = {"log_name": self.log_path.name, "allowed_uids": sorted({0, os.geteuid(), self.user.uid})}
        listen = self.live_listener.sock if self.live_listener is not None else None
        if not opts.deferred:
            return InlineStage(cfg, log_fd, stderr=self.stderr, failures=self.failures, procs=self.procs,
                               on_process=self._on_process, listen=listen)
        return SpoolStage(cfg, log_fd, max_backlog=opts.spool_max_mb << 20, stderr=self.stderr,
                          failures=self.failures, listen=listen)

    def _start_otlp(self, o: OtlpOptions | None, log_fd: int):
        """The OTLP exporter process follows the log - as written by the parsing process when parsing
        is deferred; the capture path does nothing for it."""
        if o is None:
            return None
        from tracer.sinks.otlp.sink import OtlpSink
        try:
            # the exporter reads the very file the writer writes (a descriptor reopened from the
            # writer's, no path lookup in the user's directory), as the user (OtlpOptions.run_as)
            # a process' last records reach the log up to a write batch after its exit is known
            o = replace(o, exit_grace_s=o.exit_grace_s + self.opts.flush_ms / 1000.0)
            return OtlpSink(o, self.log_path, stderr=self.stderr, source_fd=log_fd)
        except OSError as e:
            print(f"tracer: cannot start the OTLP exporter ({e}); tracing without it", file=self.stderr)
            return None

    def _open_listener(self, opts: Options, out_dir: UserDir):
        """The live feed's socket beside the log (tracer/live/feed.py ``Listener``), bound as the
        invoking user in the output directory opened for the log. Failing to offer it costs only the
        socket."""
        if not opts.live_feed:
            return None
        from tracer.live.feed import Listener
        try:
            return Listener(self.log_path, self.user, directory=out_dir)
        except Exception as e:      # the trace goes on without it
            why = e.strerror if isinstance(e, OSError) and e.strerror else e
            print(f"tracer: no live feed for `tracer tail` ({why})", file=self.stderr)
            return None

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
                    self.failures.record("tracer-ring", e, "a drain of the ring buffer failed; the "
                                         "records it held may be missing from the log")
                why = "failed"
            if self.follower is not None:
                self.follower.kernel.heartbeat()    # the kernel side holds processes only while we live
            with self._cycle_cv:
                self._cycles += 1
                self._cycle_cv.notify_all()
            # records left in the ring keep it readable: wait for the spool (or the CPU writing the
            # next record) instead of spinning
            if why in ("refused", "failed"):
                time.sleep(self.POLL_MS / 1000)
            elif why == "busy":
                time.sleep(0.001)
        self.stage.drain(self.ring)

    def wait_ring_drained(self, timeout: float = 5.0) -> None:
        """Return once the poll thread has drained the ring at least once after this call: everything
        the kernel had queued by now has reached the stage."""
        with self._cycle_cv:
            target = self._cycles + 2
            self._cycle_cv.wait_for(lambda: self._cycles >= target or self._stop.is_set()
                                    or not self._poller.is_alive(), timeout)

    def _on_process(self, raw: bytes):
        if self.follower is not None:
            self.follower.on_record(raw)

    # -- targets -------------------------------------------------------------------------------
    def follow(self):
        """Follow processes from now on (tracer/processes/follower.py): the kernel side adds the
        children of followed processes and holds new programs until their probes are in place; each
        process is admitted through `admit()` like a target of `add_target()`."""
        from tracer.processes.follower import Follower
        from tracer.processes.kernel import KernelSide
        self.follower = Follower(self, KernelSide(self.prog, self.probes), stderr=self.stderr)
        self.ring.on_process = self._on_process     # process records: to the follower, from the ring thread
        self.follower.start()
        return self.follower

    def admit(self, pid: int) -> tuple[bool, str]:
        """May tracer copy ``pid``'s data for the invoking user? The ptrace rule (tracer/access.py)
        now, then the kernel-side half of it: the credential guard approves the process
        (bpf/tracer.bpf.c may_copy), with its ids checked at every copy when tracer works for
        another user. Every process tracer traces - an attached pid, the command of `run`, a child,
        an exec'd program, a cgroup member - passes here; nothing of a process is copied before."""
        ok, why = may_trace(pid, self.user, allow_other_users=self.opts.allow_other_users)
        if not ok:
            return False, why
        check = self.user.acting_for_other and not self.opts.allow_other_users
        try:
            enforced = self.guard.approve(pid, self.user.uid, self.user.gid, check)
        except TracerError as e:
            return False, str(e)
        if check and not enforced:
            note = ("no kernel BTF: a traced process that exec's a setuid program is noticed by polling "
                    f"only (up to {self.opts.watch_interval:g} s of its traffic may be logged)")
            if note not in self.notes:
                self.notes.append(note)
                print(f"tracer: {note}", file=self.stderr)
        return True, ""

    def release(self, pid: int) -> None:
        """The guard forgets ``pid`` (gone, or no longer traced); what it refused is noted."""
        denied = self.guard.denied(pid)
        if denied and not any(n.startswith(f"pid {pid}: ") for n in self.notes):
            self.notes.append(f"pid {pid}: {denied} TLS call(s) not logged: the process ran with other "
                              "credentials than the ones it was traced with (it exec'd a setuid/setgid "
                              "program, or changed its ids), or ran a new program tracer had not checked "
                              "yet")
        self.guard.forget(pid)

    def add_target(self, pid: int, extra_files: list[str] = (), env: dict | None = None,
                   origin: str = "attached", command: tuple[str, list[str]] | None = None) -> Proc:
        """Start tracing ``pid`` (not its children): pinned by a pidfd, admitted (the ptrace rule
        for the invoking user, the guard's approval), probes attached on the TLS code it maps and
        on ``extra_files`` it may load later, and the pin checked again afterwards (the pid was not
        reused in between). ``command``: (executable, argv) of a process that has not exec'd it yet
        (tracer run's launcher), for the OTLP resource."""
        try:
            pin = PinnedProcess(pid)
        except OSError:
            raise TracerError(f"no such process: {pid}") from None
        ok, why = self.admit(pid)
        if not ok:
            pin.close()
            raise TracerError(why)
        proc = self.procs.add(pid, origin=origin)
        proc.pin = pin
        self.note_target(pid, command)
        env = env if env is not None else read_environ(pid)
        if env.get("ANTHROPIC_BASE_URL"):
            self.stage.api_url(env["ANTHROPIC_BASE_URL"])     # before any of its records
        try:
            self.prober.probe(proc, extra=list(extra_files))
        except OSError:
            pass
        if not pin.same():
            self.stop_target(pid, "it exited while probes were being attached")
            raise TracerError(f"pid {pid} exited while tracer was attaching to it")
        return proc

    def recheck_target(self, pid: int) -> str:
        """The ptrace rule again for a live target (it may have exec'd a setuid program, or changed
        credentials); when it fails, the target stops being traced and the reason is returned."""
        proc = self.procs.get(pid)
        if proc is None or not proc.alive or not proc.traced:
            return ""
        ok, why = may_trace(pid, self.user, allow_other_users=self.opts.allow_other_users)
        if ok and (proc.pin is None or proc.pin.same()):
            return ""
        if ok:
            why = "its pid now names another process"
        self.stop_target(pid, why)
        return why

    def stop_target(self, pid: int, why: str) -> None:
        """Detach from a target that may no longer be traced; the summary says why."""
        proc = self.procs.get(pid)
        if proc is None or not proc.alive:
            return
        self.notes.append(f"pid {pid}: tracing stopped: {why}")
        proc.traced = False
        proc.why_not = why
        self.target_exited(pid, f"tracing stopped: {why}")

    def refresh_target(self, proc: Proc) -> int:
        """Attach to TLS objects newly mapped by the target (dlopen, late loading)."""
        from tracer.processes.procinfo import read_exe
        if proc.exe and read_exe(proc.pid) not in ("", proc.exe):
            self.procs.reread(proc)           # it exec'd (tracer run's launcher: the command)
        try:
            return self.prober.probe(proc)
        except OSError:
            return 0

    def target_exited(self, pid: int, reason: str = "target exited"):
        proc = self.procs.get(pid)
        if proc is None or not proc.alive:
            return
        proc.alive = False
        # its last records are in the ring already: they go first, then its connections are closed
        self.stage.close_pid(self.ring, pid, reason)
        self.probes.detach_pid(pid)
        self.release(pid)
        if proc.pin is not None:
            proc.pin.close()
        self.process_exited(pid)

    def note_target(self, pid: int, command: tuple[str, list[str]] | None = None) -> None:
        """A process tracer was pointed at (attach's pids, run's command): the OTLP exporter learns
        its executable and (redacted) command line for its resource. Processes found by following
        are known to it from their records' tracer.process."""
        if self.otlp:
            self.otlp.add_target(pid, command)

    def process_exited(self, pid: int) -> None:
        """A traced process is gone (a target, or a followed process): the OTLP exporter can end
        the sessions it alone was part of."""
        if self.otlp:
            # with deferred parsing the exporter is told once the parsing process has parsed what
            # the process sent before its exit (its records are written a batch later: the grace)
            self.stage.after_parsed({"op": "exited", "pid": pid}, self._parsed_exit)

    def _parsed_exit(self, pid: int) -> None:
        if self.otlp:
            self.otlp.target_exited(pid)

    def live_targets(self) -> list[int]:
        return [p.pid for p in self.procs.procs.values() if p.alive and p.traced]

    # -- status and the end --------------------------------------------------------------------
    def status_line(self) -> str:
        drops = self.drops.read()
        p = self.stage.progress()
        return (f"tracer: {p.get('pairs_logged', 0)} logged / {p.get('pairs_seen', 0)} pairs, "
                f"{p.get('bytes_captured', 0) / 1e6:.1f} MB, {p.get('connections', 0)} conns, "
                f"drops {drops.get('events', 0)}"
                + (", parsing deferred while records come fast" if getattr(self.stage, "busy", False) else "")
                + (f", {self.otlp.status()}" if self.otlp else ""))

    def finish(self) -> dict:
        if self.follower is not None:
            self.follower.close()          # nothing held any more, before the ring stops
        self._stop.set()
        if self._poller:
            self._poller.join(timeout=5)
        self._stage_stats = self.stage.finish()       # everything parsed and written, the feed closed
        os.close(self.log_fd)
        for pid, n in (self._stage_stats.get("pairs_by_pid") or {}).items():
            proc = self.procs.get(int(pid))
            if proc is not None and self.stage.kind == "spool":
                proc.pairs += n
        self.stopped = time.monotonic()
        # the feed was closed after the log was complete (its views read it to the end): the name goes
        if self.live_listener is not None:
            self.live_listener.close()
        if self.follower is not None and self.follower.shared is not None:
            self.follower.shared.close()
        self.probes.close()
        self.ring.close()
        if self.otlp:       # the exporter reads the rest of the closed log: no probes wait for it
            self.otlp_summary = self.otlp.finish(self._stage_stats.get("records_written", 0))
        summary = self.summary()
        self.drops.close()
        self.prog.close()
        return summary

    def summary(self) -> dict:
        drops = self.drops.read()
        st = {k: v for k, v in self._stage_stats.items() if k not in ("pairs_by_pid", "thread_failures")}
        out = {
            "log": str(self.log_path),
            "duration_s": round((self.stopped or time.monotonic()) - self.started, 3),
            "targets": {str(p.pid): [f.path for f in p.files.values()] for p in self.procs.all()},
            "processes": self.procs.summary(),
            "process_tree": self.procs.tree_lines(),
            "following": self.follower.stats() if self.follower is not None else None,
            "pairs_seen": 0, "pairs_logged": 0, "pairs_filtered_out": 0, "pairs_incomplete": 0,
            "connections": 0, "bytes_captured": 0, "ring_records": 0,
            "records_written": 0, "records_lost": 0,     # (a parsing process that died reported none)
        }
        out.update(st)
        if self.follower is not None:
            out["worker_errors"] = out.get("worker_errors", 0) + self.follower.errors
            out["last_worker_error"] = out.get("last_worker_error") or self.follower.last_error
        out.update({
            "ring_drops_events": drops.get("events", 0),
            "ring_drops_bytes": drops.get("bytes", 0),
            "truncated_bytes": drops.get("truncated", 0),
            "copy_fail_bytes": drops.get("copy_fail", 0),
            "denied_bytes": drops.get("denied", 0),
            "spool_lost_records": self.ring.lost_records,
            "ring_peak_fill": round(self.ring.peak_fill / max(self.ring.size, 1), 3),
            "ring_max_drain_interval_ms": round(self._max_gap * 1000, 1),
            "ring_thread_policy": self.ring_policy,
            "live_feed_clients": self._stage_stats.get("live_feed_clients", 0),
            "live_feed_errors": self._stage_stats.get("live_feed_errors", 0),
            "thread_failures": self.failures.as_list() + list(self._stage_stats.get("thread_failures") or ()),
            "notes": list(self.notes),
            **self.otlp_summary,
        })
        out.update(self.stage.info())
        return out
