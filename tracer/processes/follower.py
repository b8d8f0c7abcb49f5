"""Follow a process tree: the kernel side's fork/exec/exit records become probes, then the
process is let go.

The kernel side (bpf/tracer.bpf.c, "process tree") adds a followed process' new processes to the
`procs` map and stops a process at exec - and a forked child before it runs - with SIGSTOP. For
each record, on one thread, in ring order:

  FORK  a new process: admitted like any target (Session.admit: the ptrace rule, then the
        guard's approval; nothing of it is copied before); its memory is a copy of its parent's, so
        the same TLS code is probed for it (plus the fork() return probe, for its own children); a
        vfork/CLONE_VM child shares its parent's memory and probes until it execs.
  STOP  the forked child reached its first instruction before its probes were in place and was
        held there: resume it once they are.
  EXEC  the kernel side has withdrawn the process' approval in the credential guard (nothing of the
        new program is copied yet); check that the invoking user may still trace it (a setuid exec
        must not be: its probes go, it is no longer followed), approve it anew, then probe the new
        program - its executable, the TLS libraries it maps or may load (found in its own mount
        namespace) - and resume it.
  EXIT  the process ended: its probes go.

Stopping is visible to a parent that waits with WUNTRACED. Job-control shells do, and would show
a stopped job; children of an interactive shell are therefore not stopped (they are probed as soon
as tracer sees them, and the summary says so). Every process tracer stopped is resumed: here, at
the end of the run, or by the watchdog (tracer/processes/watchdog.py) if tracer dies.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time

from tracer.access import PinnedProcess, may_trace
from tracer.capture import event as ev
from tracer.processes import cgroup as cg, kernel as k, procinfo, resolve
from tracer.processes.table import Proc

REFRESH_S = 0.25        # re-read mappings of live processes (libraries loaded later)
SWEEP_S = 0.5           # compare the kernel's map with what we know (lost records)


class Follower:
    def __init__(self, session, kernel: k.KernelSide, *, stderr=None, verbose: bool = False):
        self.session = session
        self.kernel = kernel
        self.table = session.procs
        self.prober = session.prober
        self.stderr = stderr or sys.stderr
        self.verbose = verbose or bool(os.environ.get("TRACER_DEBUG_FOLLOW"))
        self.q: queue.Queue = queue.Queue()
        self.pins: dict[int, PinnedProcess] = {}     # followed processes, held by a pidfd
        self.resume_ms: list[float] = []
        self.resumed = 0
        self.errors = 0
        self.last_error = ""
        self.cgroup_dir: str | None = None
        self.cgroup_fd = -1
        self._stopped_seen: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.RLock()           # one actor on processes at a time
        self._watchdog: subprocess.Popen | None = None
        self.shared = None                        # tracer/probes/shared.py, when available
        self._watchdog_w = -1
        self._thread = threading.Thread(target=self._run, name="tracer-follow", daemon=True)
        # closing a uprobe waits for an RCU grace period (tens of ms each): probes of processes
        # that exited or exec'd are closed on their own thread, not while others wait
        self._closing: queue.Queue = queue.Queue()
        self._closer = threading.Thread(target=self._close_loop, name="tracer-detach", daemon=True)

    # -- start / end ----------------------------------------------------------------------------
    def start(self) -> None:
        self._start_watchdog()
        if self._watchdog is not None:
            from tracer.probes.shared import SharedUprobes
            try:
                self.shared = SharedUprobes(self.session.prog.prog_fd, self._watchdog.pid)
            except OSError as e:
                print(f"tracer: tracefs uprobe events unavailable ({e.strerror or e}): probes are made "
                      "one by one (removing them is slow)", file=self.stderr)
            else:
                self.prober.attacher = self.shared
        self.kernel.attach()
        self._closer.start()
        self._thread.start()

    def _close_loop(self) -> None:
        while True:
            item = self._closing.get()
            if item is None:
                return
            owner, atts = item
            owner.detach_attachments(atts)

    def _detach_later(self, pid: int) -> None:
        for owner in {id(x): x for x in (self.prober.attacher, self.session.probes)}.values():
            atts = owner.take_pid(pid)
            if atts:
                self._closing.put((owner, atts))

    def _start_watchdog(self) -> None:
        r, w = os.pipe()
        fd = self.kernel.procs_fd
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-I", "-m", "tracer.processes.watchdog", str(fd), str(r)],
                pass_fds=(fd, r), stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            print(f"tracer: could not start the watchdog ({e}); if tracer is killed, processes it "
                  "holds stopped stay stopped", file=self.stderr)
            os.close(w)
        else:
            self._watchdog_w = w
        finally:
            os.close(r)

    def close(self) -> None:
        """Stop following: nothing is stopped any more, everything stopped is resumed."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._closer.is_alive():
            self._closing.put(None)
            self._closer.join(timeout=60)
        with self._lock:
            for pid, pin in list(self.pins.items()):
                if not pin.alive() and self.table.get(pid) is not None:
                    self.table.get(pid).alive = False
            self.kernel.detach()
            try:
                entries = self.kernel.entries()
            except OSError:
                entries = {}
            for pid, (_ppid, state, _f, _s) in entries.items():
                if state == k.STOPPED:
                    k.resume(self._pidfd(pid), pid)
            for pin in self.pins.values():
                pin.close()
            self.pins.clear()
            if self.cgroup_fd >= 0:
                os.close(self.cgroup_fd)
                self.cgroup_fd = -1
        if self._watchdog_w >= 0:
            os.close(self._watchdog_w)          # EOF: the watchdog sweeps once and exits
            self._watchdog_w = -1
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()

    # -- roots --------------------------------------------------------------------------------
    def add_root(self, pid: int, origin: str, *, children: bool = True, probe: bool = True,
                 env: dict | None = None, command: tuple[str, list[str]] | None = None) -> Proc:
        """Follow `pid` (and, with `children`, what it starts from now on). For a process that
        runs already, its probes are attached here (`probe=False`: tracer's own launcher, probed
        when it execs `command`)."""
        with self._lock:
            flags = k.PF_CHILDREN if children else 0
            proc = self.table.add(pid, origin=origin)
            if not self._admit(proc):
                return proc
            self.session.note_target(pid, command)
            if children and procinfo.is_job_control_shell(pid):
                flags |= k.PF_NO_STOP_KIDS
                proc.notes.append("job-control shell: its children are not stopped at exec "
                                  "(it would show them as stopped jobs)")
            self.kernel.set(pid, ppid=proc.ppid, state=k.READY, flags=flags)
            if probe:
                self._probe(proc, env=env)
            return proc

    def add_tree(self, pid: int, origin: str = "attached") -> Proc:
        """`pid` and every process below it, now and later. Each process joins the kernel's map
        before its children are listed, so a fork in between is seen one way or the other."""
        root = self.add_root(pid, origin)
        todo = [pid]
        seen = {pid}
        while todo:
            parent = todo.pop(0)
            for child in procinfo.children(parent):
                if child in seen:
                    continue
                seen.add(child)
                with self._lock:
                    if self.kernel.get(child) is None or self.table.get(child) is None:
                        self._adopt(child, parent, "descendant")
                todo.append(child)
        return root

    def follow_cgroup(self, directory: str) -> list[Proc]:
        """Every process in the cgroup (and below it), present and future."""
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.cgroup_dir, self.cgroup_fd = directory, fd
        self.kernel.follow_cgroup(fd)
        return self._scan_cgroup()

    def _scan_cgroup(self) -> list[Proc]:
        out = []
        for pid in sorted(cg.processes(self.cgroup_dir)):
            with self._lock:
                if self.kernel.get(pid) is None and (self.table.get(pid) is None or
                                                     self.table.get(pid).traced):
                    st = procinfo.read_stat(pid)
                    p = self._adopt(pid, st.ppid if st else 0, "cgroup", flags=k.PF_CHILDREN | k.PF_CGROUP)
                    if p is not None:
                        out.append(p)
        return out

    def _adopt(self, pid: int, ppid: int, origin: str, flags: int = k.PF_CHILDREN) -> Proc | None:
        try:
            self.kernel.set(pid, ppid=ppid, state=k.READY, flags=flags)
        except OSError:
            return None
        proc = self.table.add(pid, ppid=ppid, origin=origin)
        if self._admit(proc):
            if procinfo.is_job_control_shell(pid):
                self.kernel.update(pid, set_flags=k.PF_NO_STOP_KIDS)
            self._probe(proc)
        return proc

    # -- checks --------------------------------------------------------------------------------
    def _admit(self, proc: Proc) -> bool:
        """Pin the process and admit it (Session.admit: the ptrace rule for the invoking user, then
        the credential guard's approval - also anew after an exec); otherwise forget it."""
        pid = proc.pid
        pin = self.pins.get(pid)
        if pin is None or not pin.same():
            if pin is not None:
                pin.close()
            try:
                pin = self.pins[pid] = PinnedProcess(pid)
            except OSError:
                self.pins.pop(pid, None)
                self._drop(proc, "it exited before tracer could look at it", alive=False)
                return False
        proc.pin = pin
        ok, why = self.session.admit(pid)
        if not ok:
            if not pin.alive():
                # it ended between the pin and the checks ("no such process"): not a refusal. Whether
                # it could have run TLS code unprobed is for the caller to say (a forked child may)
                self._drop(proc, "it exited before tracer could look at it", alive=False)
            else:
                self._drop(proc, why)
            return False
        proc.traced = True
        return True

    def _pidfd(self, pid: int) -> int | None:
        pin = self.pins.get(pid)
        return pin.fd if pin is not None and pin.fd >= 0 else None

    def _drop(self, proc: Proc, why: str, *, alive: bool = True) -> None:
        self._debug(f"drop {proc.pid}: {why}")
        proc.traced = False
        proc.why_not = why
        proc.alive = alive and procinfo.alive(proc.pid)
        for owner in {id(x): x for x in (self.prober.attacher, self.session.probes)}.values():
            try:
                owner.detach_pid(proc.pid)
            except Exception:
                pass
        proc.files.clear()
        try:
            self.kernel.forget(proc.pid)
        except OSError:
            pass
        self.session.release(proc.pid)

    def _probe(self, proc: Proc, *, env: dict | None = None, candidates: bool | None = None) -> None:
        """Probe the process' TLS code; `candidates`: also the TLS libraries it may load later
        (default: when its program could load one, resolve.may_load_tls)."""
        t0 = time.monotonic()
        env = env if env is not None else procinfo.read_environ(proc.pid)
        try:
            if candidates is None:
                candidates = resolve.may_load_tls(proc.pid, f"/proc/{proc.pid}/exe", env)
            self.prober.probe(proc, candidates=candidates, env=env)
            t1 = time.monotonic()
            self.prober.fork_return(proc)
        except OSError:
            return                     # gone: its EXIT record follows
        self._debug(f"probed {proc.pid} in {(t1 - t0) * 1e3:.1f} ms, fork() probe "
                    f"{(time.monotonic() - t1) * 1e3:.1f} ms: {[f.path for f in proc.files.values()]}")

    # -- records (ring poll thread) -----------------------------------------------------------
    def on_record(self, raw: bytes) -> None:
        self.q.put(ev.decode_proc(raw))

    # -- the worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        next_refresh = next_sweep = time.monotonic()
        while not self._stop.is_set():
            try:
                e = self.q.get(timeout=0.05)
            except queue.Empty:
                e = None
            try:
                if e is not None:
                    with self._lock:
                        self._handle(e)
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + SWEEP_S
                    with self._lock:
                        self._sweep()
                if now >= next_refresh and self.q.empty():
                    next_refresh = now + REFRESH_S
                    self._refresh()
            except Exception as exc:          # a bug here must not leave processes stopped
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if e is not None and (e.type == ev.EV_STOP or e.type == ev.EV_EXEC and e.stop == 1):
                    self._release(e.pid, force=True, stopped=True)

    def _debug(self, msg: str) -> None:
        if self.verbose:
            print(f"tracer[follow {time.monotonic():.3f}]: {msg}", file=self.stderr, flush=True)

    def _handle(self, e: ev.ProcEvent) -> None:
        self._debug(f"{ {3: 'FORK', 4: 'EXEC', 5: 'EXIT', 6: 'STOP'}.get(e.type)} pid {e.pid} ppid {e.ppid} "
                    f"stop {e.stop} state {e.state} flags {e.flags:#x} {e.filename!r} "
                    f"(+{(time.monotonic_ns() - e.ts_ns) / 1e6:.1f} ms)")
        if e.type == ev.EV_FORK:
            self._on_fork(e)
        elif e.type == ev.EV_STOP:
            self._on_stop(e)
        elif e.type == ev.EV_EXEC:
            self._on_exec(e)
        elif e.type == ev.EV_EXIT:
            self._on_exit(e.pid)

    def _on_fork(self, e: ev.ProcEvent) -> None:
        proc = self.table.add(e.pid, ppid=e.ppid,
                              origin="cgroup" if e.flags & k.PF_CGROUP else "child")
        parent = self.table.get(e.ppid)
        if not self._admit(proc):
            if not proc.alive and e.state != k.SHARED and parent is not None and parent.files:
                proc.unprobed = "a forked child of a process with TLS probes, gone before tracer saw it"
            return
        if e.state == k.SHARED:
            proc.shares_memory = True
            return
        if parent is not None and not parent.files and not parent.problems:
            return      # a copy of a parent without TLS code (a shell before exec): nothing to probe
        # the child's memory is a copy of its parent's: the same files, and the same libraries
        # still to come if the parent had some
        self._probe(proc, candidates=parent is None or any(not f.mapped for f in parent.files.values()))
        self._release(e.pid)          # a STOP record follows if the child got held meanwhile

    def _on_stop(self, e: ev.ProcEvent) -> None:
        proc = self.table.get(e.pid)
        if proc is None or not proc.traced:
            self._release(e.pid, force=True, stopped=True)
            return
        proc.stops += 1
        self._release(e.pid, ts_ns=e.ts_ns, stopped=True)

    def _on_exec(self, e: ev.ProcEvent) -> None:
        proc = self.table.get(e.pid)
        if proc is None:
            proc = self.table.add(e.pid, ppid=e.ppid, origin="cgroup" if e.flags & k.PF_CGROUP else "")
        else:
            self.table.exec_(proc, e.ts_ns)
        proc.execs += 1
        proc.shares_memory = False
        if e.stop == 1:
            proc.stops += 1
        for f in proc.files.values():
            f.mapped = False
        if e.tid and e.tid != e.pid:
            # exec'd by a thread other than the main one: the probes were bound to the old main
            # thread, which is gone; the new program is probed from scratch
            self._detach_later(e.pid)
            proc.files.clear()
            proc.looked_at.clear()
            proc.fork_keys.clear()
        # (otherwise the probes stay: they follow the process, and the files it still maps - a
        # libssl, libc's fork() - need no second set; a process that may no longer be traced
        # loses them below, before it runs again)
        if e.stop != 1:
            if e.flags & k.PF_NO_STOP:
                proc.late.append("not held at exec (its parent is a job-control shell)")
            elif e.stop < 0:
                proc.late.append(f"not held at exec (bpf_send_signal: error {-e.stop})")
            else:
                proc.late.append("not held at exec (tracer was not responsive)")
        if not self._admit(proc):
            if not proc.alive:
                proc.unprobed = f"exec'd {e.filename or proc.exe} and ended before tracer could probe it"
            else:
                proc.why_not = f"exec'd {e.filename or proc.exe}: {proc.why_not}"
                self.session.notes.append(f"pid {proc.pid}: tracing stopped: {proc.why_not}")
            self._release(e.pid, force=True, stopped=e.stop == 1)
            return
        env = procinfo.read_environ(e.pid)
        if self.session.filter is not None and env.get("ANTHROPIC_BASE_URL"):
            self.session.filter.add_base_url(env["ANTHROPIC_BASE_URL"])
        self._probe(proc, env=env)
        if procinfo.is_job_control_shell(e.pid, None):
            self.kernel.update(e.pid, set_flags=k.PF_NO_STOP_KIDS)
        self._release(e.pid, ts_ns=e.ts_ns, stopped=e.stop == 1)

    def _on_exit(self, pid: int) -> None:
        proc = self.table.get(pid)
        if proc is not None and proc.alive:
            fd = self._pidfd(pid)
            # the record is made on the way out, a moment before the pidfd says so; a main thread
            # that ended while others run on (kernels without group_dead) is no process exit
            if fd is not None and not _exited(fd, 0.05):
                return                              # the sweep looks again
            proc.alive = False
            proc.exit_ns = time.monotonic_ns()
        self._detach_later(pid)
        self.session.release(pid)
        self.session.process_exited(pid)
        pin = self.pins.pop(pid, None)
        if pin is not None:
            pin.close()

    def _release(self, pid: int, *, ts_ns: int = 0, stopped: bool = False, force: bool = False) -> None:
        """The process' probes are in place (or it is not traced: `force`): mark it ready, and
        resume it when a record said the kernel side stopped it (`stopped`). The map's state
        alone does not decide: it may already reflect a later stop whose record is still queued
        (a fork record handled while the child has exec'd and waits at its exec)."""
        cur = self.kernel.get(pid)
        if cur is not None and not force and (stopped or cur[1] in (k.NEW, k.SHARED, k.EXECED)):
            self.kernel.update(pid, state=k.READY)
        self._stopped_seen.pop(pid, None)
        self._debug(f"release {pid} stopped={stopped} map={cur}")
        if stopped and k.resume(self._pidfd(pid), pid):
            self.resumed += 1
            if ts_ns:
                self.resume_ms.append((time.monotonic_ns() - ts_ns) / 1e6)

    def _sweep(self) -> None:
        """Records can be lost (ring buffer full): what the kernel's map knows and we do not - a
        process it holds above all - is handled from the map. A process held for two sweeps in
        a row with no record waiting is treated as if its exec record had arrived."""
        try:
            entries = self.kernel.entries()
        except OSError:
            return
        seen_now: dict[int, int] = {}
        for pid, (ppid, state, flags, _stops) in entries.items():
            proc = self.table.get(pid)
            unknown = proc is None or (proc.traced and not proc.alive)
            # held, or exec'd and never handled: either way the guard withholds its data until then
            if not unknown and state not in (k.STOPPED, k.EXECED):
                continue
            n = seen_now[pid] = self._stopped_seen.get(pid, 0) + 1
            if n < 2 or not self.q.empty():
                continue                       # its record may still be on its way
            if not procinfo.alive(pid):
                self.kernel.forget(pid)
                continue
            if unknown:
                proc = self.table.add(pid, ppid=ppid, origin="cgroup" if flags & k.PF_CGROUP else "child")
            proc.notes.append("a fork/exec record of it was lost (ring buffer full): handled from "
                              "the kernel's map")
            self._on_exec(ev.ProcEvent(0, 0, 0, pid, pid, ppid, 1 if state == k.STOPPED else 0, 0,
                                       ev.EV_EXEC, state, flags, "", ""))
            seen_now.pop(pid, None)
        self._stopped_seen = seen_now
        for pid, proc in list(self.table.procs.items()):
            if proc.alive and pid in self.pins and not self.pins[pid].alive():
                self._on_exit(pid)
        if self.cgroup_dir is not None:
            self._scan_cgroup()

    def _refresh(self) -> None:
        """New mappings of live processes (libraries loaded later), and the ptrace rule again: a
        process whose credentials changed without an exec stops being traced (the guard already
        refuses its data when the kernel's BTF is there; this is the check when it is not)."""
        for proc in list(self.table.procs.values()):
            if not (proc.alive and proc.traced) or self._stop.is_set():
                continue
            with self._lock:
                ok, why = may_trace(proc.pid, self.session.user,
                                    allow_other_users=self.session.opts.allow_other_users)
                if not ok:
                    if procinfo.alive(proc.pid) and proc.traced:
                        self.session.notes.append(f"pid {proc.pid}: tracing stopped: {why}")
                        self._drop(proc, why)
                    continue
                try:
                    self.prober.probe(proc)
                    self.prober.fork_return(proc)
                except OSError:
                    pass

    # -- views -----------------------------------------------------------------------------------
    def live(self) -> list[int]:
        return [p.pid for p in self.table.procs.values() if p.alive and p.traced]

    def stats(self) -> dict:
        ms = sorted(self.resume_ms)
        return {
            "held": len(ms),
            "held_ms_median": round(ms[len(ms) // 2], 2) if ms else None,
            "held_ms_max": round(ms[-1], 2) if ms else None,
            "errors": self.errors,
            "last_error": self.last_error,
        }


def _exited(pidfd: int, wait: float = 0.0) -> bool:
    import select
    try:
        r, _, _ = select.select([pidfd], [], [], wait)
    except (OSError, ValueError):
        return True
    return bool(r)
