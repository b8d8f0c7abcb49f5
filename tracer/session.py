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

from tracer.access import PinnedProcess, may_trace
from tracer.capture.pipeline import Capture
from tracer.capture.ring import DropCounters, Ring
from tracer.errors import TracerError
from tracer.invoker import InvokingUser, invoking_user
from tracer.probes.attach import TRACEFS, Probes
from tracer.probes.kcreds import CredGuard
from tracer.probes.load import load_program
from tracer.probes.locate import LocateError, open_regular
from tracer.probes.targets import Locator, mapped_objects
from tracer.probes.verify import check_before_attach
from tracer.protocols.base import Exchange
from tracer.sinks.jsonl import JsonlWriter
from tracer.sinks.record import Clock, Filter, build_record
from tracer.threads import ThreadFailures, start_thread
from tracer.userfiles import UserDir


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
    user: InvokingUser | None = None       # who tracer works for (default: tracer.invoker.invoking_user())
    allow_other_users: bool = False        # targets need not pass the ptrace rule for `user`


@dataclass
class Target:
    pid: int
    attached: set = field(default_factory=set)     # (dev, inode) of files with probes
    files: list = field(default_factory=list)      # (path, library, methods)
    alive: bool = True
    pin: PinnedProcess | None = None


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


def ssl_library_candidates() -> list[str]:
    """System libssl files a process may load later (dlopen): probes are put on them up front."""
    out: list[str] = []
    try:
        res = _system_tool("ldconfig", "-p")
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


class Session:
    def __init__(self, opts: Options, *, stderr=None):
        self.opts = opts
        self.stderr = stderr or sys.stderr
        self.filter = Filter(include_all=opts.include_all)
        self.clock = Clock()
        self.locator = Locator()
        self.targets: dict[int, Target] = {}
        self.notes: list[str] = []             # shown in the summary (e.g. a target that lost access)
        self.user = opts.user or invoking_user()
        self.pairs_seen = 0
        self.pairs_logged = 0
        self.pairs_filtered = 0
        self.pairs_incomplete = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._cycles = 0
        self._cycle_cv = threading.Condition()
        self.failures = ThreadFailures(self.stderr)   # tracer's own threads that died (exit status)
        # the output directory is created/checked first (as the invoking user): a refusal costs nothing
        out_dir = UserDir(opts.output_dir, self.user)
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
                self._open_log(opts, out_dir)
                self.capture = Capture(self._on_exchange, deferred=opts.deferred, failures=self.failures)
                self.ring = Ring(self.prog.map_fd("events"), self.capture.feed)
            except BaseException:
                self.prog.close()
                raise
        finally:
            out_dir.close()
        self.capture.start()
        self._poller = start_thread("tracer-ring", self._poll, self.failures,
                                    "the ring buffer is no longer drained: the kernel drops (and "
                                    "counts) what the targets send")

    def _open_log(self, opts: Options, out_dir: UserDir) -> None:
        """The log, created as the invoking user (tracer/userfiles.py) in the output directory, on
        this thread, before the writer thread exists (it only ever writes to the descriptor)."""
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
        self.writer = JsonlWriter(self.log_path, batch_size=opts.batch_size, flush_ms=opts.flush_ms,
                                  durable=opts.durable, stderr=self.stderr, failures=self.failures,
                                  fd=fd)

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
            self._cycle_cv.wait_for(lambda: self._cycles >= target or self._stop.is_set()
                                    or not self._poller.is_alive(), timeout)

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
        self.writer.submit(build_record(ex, self.clock, redact=self.opts.redact,
                                        api_call=self.filter.is_api_call(ex)))
        self.pairs_logged += 1

    # -- targets -------------------------------------------------------------------------------
    def add_target(self, pid: int, extra_files: list[str] = (), env: dict | None = None) -> Target:
        """Start tracing ``pid``: pinned by a pidfd, checked against the ptrace rule for the invoking
        user (tracer/access.py), probes attached, and the pin checked again afterwards (the pid was
        not reused in between)."""
        try:
            pin = PinnedProcess(pid)
        except OSError:
            raise TracerError(f"no such process: {pid}") from None
        ok, why = may_trace(pid, self.user, allow_other_users=self.opts.allow_other_users)
        if not ok:
            pin.close()
            raise TracerError(why)
        tgt = self.targets.setdefault(pid, Target(pid))
        tgt.pin = pin
        # the kernel-side half of the rule (bpf/tracer.bpf.c may_copy): only while its ids stay these
        check = self.user.acting_for_other and not self.opts.allow_other_users
        if not self.guard.approve(pid, self.user.uid, self.user.gid, check) and check:
            note = ("no kernel BTF: a traced process that exec's a setuid program is noticed by polling "
                    f"only (up to {self.opts.watch_interval:g} s of its traffic may be logged)")
            if note not in self.notes:
                self.notes.append(note)
                print(f"tracer: {note}", file=self.stderr)
        env = env if env is not None else read_environ(pid)
        if env.get("ANTHROPIC_BASE_URL"):
            self.filter.add_base_url(env["ANTHROPIC_BASE_URL"])
        for path in extra_files:
            self._attach_file(tgt, path)
        self.refresh_target(tgt)
        if not pin.same():
            self.stop_target(pid, "it exited while probes were being attached")
            raise TracerError(f"pid {pid} exited while tracer was attaching to it")
        return tgt

    def recheck_target(self, pid: int) -> str:
        """The ptrace rule again for a live target (it may have exec'd a setuid program, or changed
        credentials); when it fails, the target stops being traced and the reason is returned."""
        tgt = self.targets.get(pid)
        if tgt is None or not tgt.alive:
            return ""
        ok, why = may_trace(pid, self.user, allow_other_users=self.opts.allow_other_users)
        if ok and (tgt.pin is None or tgt.pin.same()):
            return ""
        if ok:
            why = "its pid now names another process"
        self.stop_target(pid, why)
        return why

    def stop_target(self, pid: int, why: str) -> None:
        """Detach from a target that may no longer be traced; the summary says why."""
        tgt = self.targets.get(pid)
        if tgt is None or not tgt.alive:
            return
        self.notes.append(f"pid {pid}: tracing stopped: {why}")
        self.target_exited(pid, f"tracing stopped: {why}")

    def _attach_file(self, tgt: Target, path: str) -> bool:
        """Locate, verify and attach to one file, all through one descriptor of it: the file the
        kernel puts the probes on is the file that was located and checked (tracer/probes/verify.py),
        whatever happens to ``path`` meanwhile."""
        try:
            fd = open_regular(path)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if key in tgt.attached:
                return False
            fd_path = f"/proc/self/fd/{fd}"
            loc = self.locator.locate_file(fd_path, display=path)
            tgt.attached.add(key)   # located or not, do not look at this file again
            if loc is None:
                return False
            try:
                check_before_attach(fd, loc, display=path)
            except LocateError as e:
                self.locator.errors[path] = str(e)
                return False
            try:
                self.probes.attach(tgt.pid, fd_path, loc)
            except TracerError as e:
                raise TracerError(str(e).replace(fd_path, path)) from None
        finally:
            os.close(fd)
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
        denied = self.guard.denied(pid)
        if denied and not any(n.startswith(f"pid {pid}: ") for n in self.notes):
            self.notes.append(f"pid {pid}: {denied} TLS call(s) not logged: the process ran with other "
                              "credentials than the ones it was traced with (it exec'd a setuid/setgid "
                              "program, or changed its ids)")
        self.guard.forget(pid)
        if tgt.pin is not None:
            tgt.pin.close()

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
            "denied_bytes": drops.get("denied", 0),
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
            "records_raw_body": w.raw_body_records,
            "records_stub": w.stub_records,
            "last_serialization_error": w.last_serialization_error,
            "write_errors": w.write_errors,
            "unprocessed_records": c.unprocessed_records,
            "queue_peak": c.queue_peak,
            "thread_failures": self.failures.as_list(),
            "notes": list(self.notes),
        }
