"""The kernel side of following processes (bpf/tracer.bpf.c, "process tree"), seen from Python:
the `procs` map (the followed processes and their state), the `follow` settings (the consumer's
sign of life, cgroup mode) and the tracepoints that keep them current."""

from __future__ import annotations

import os
import struct
import time

from tracer.capture import event as ev
from tracer import libbpf
from tracer.probes.program import PROCESS_TRACEPOINTS

C = ev.CONST
NEW, READY, STOPPED, SHARED, EXECED = (C["TRACER_PROC_NEW"], C["TRACER_PROC_READY"],
                                       C["TRACER_PROC_STOPPED"], C["TRACER_PROC_SHARED"],
                                       C["TRACER_PROC_EXECED"])
PF_CHILDREN, PF_NO_STOP, PF_NO_STOP_KIDS, PF_CGROUP = (C["TRACER_PF_CHILDREN"], C["TRACER_PF_NO_STOP"],
                                                       C["TRACER_PF_NO_STOP_KIDS"], C["TRACER_PF_CGROUP"])
STATE_NAMES = {NEW: "new", READY: "ready", STOPPED: "stopped", SHARED: "shared", EXECED: "exec'd"}

GRACE_NS = 2_000_000_000     # stop processes only while the consumer was alive this recently


def _key(pid: int) -> bytes:
    return struct.pack("<I", pid)


class KernelSide:
    """Maps and tracepoints of the process-tree section of a loaded program (either backend);
    `probes` (tracer/probes/attach.py) attaches the tracepoints."""

    def __init__(self, prog, probes):
        self.prog = prog
        self.probes = probes
        self.procs_fd = prog.map_fd("procs")
        self.follow_fd = prog.map_fd("follow")
        self.cgroups_fd = prog.map_fd("cgroups")
        self.cgroup_mode = 0
        self.attached = False

    # -- the followed set ---------------------------------------------------------------------
    def set(self, pid: int, *, ppid: int = 0, state: int = READY, flags: int = PF_CHILDREN,
            stops: int = 0) -> None:
        libbpf.map_update(self.procs_fd, _key(pid), ev.PROC_STRUCT.pack(ppid, state, flags, stops))

    def get(self, pid: int) -> tuple[int, int, int, int] | None:
        """(ppid, state, flags, stops) or None."""
        raw = libbpf.map_lookup(self.procs_fd, _key(pid), ev.PROC_STRUCT.size)
        return ev.PROC_STRUCT.unpack(raw) if raw is not None else None

    def update(self, pid: int, *, state: int | None = None, set_flags: int = 0,
               clear_flags: int = 0) -> bool:
        """Change a followed process' state/flags in place (False when it is not followed)."""
        cur = self.get(pid)
        if cur is None:
            return False
        ppid, st, flags, stops = cur
        self.set(pid, ppid=ppid, state=st if state is None else state,
                 flags=(flags | set_flags) & ~clear_flags, stops=stops)
        return True

    def forget(self, pid: int) -> None:
        libbpf.map_delete(self.procs_fd, _key(pid))

    def entries(self) -> dict[int, tuple[int, int, int, int]]:
        out = {}
        for k in libbpf.map_keys(self.procs_fd, 4):
            pid = struct.unpack("<I", k)[0]
            v = self.get(pid)
            if v is not None:
                out[pid] = v
        return out

    # -- the consumer's sign of life ------------------------------------------------------------
    def heartbeat(self, alive: bool = True) -> None:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) if alive else 0
        libbpf.map_update(self.follow_fd, _key(0),
                          ev.FOLLOW_STRUCT.pack(now, GRACE_NS, self.cgroup_mode, 0))

    def follow_cgroup(self, cgroup_dir_fd: int) -> None:
        """Also follow every process inside this cgroup (and the cgroups below it)."""
        libbpf.map_update(self.cgroups_fd, _key(0), struct.pack("<I", cgroup_dir_fd))
        self.cgroup_mode = 1
        self.heartbeat()

    # -- tracepoints ----------------------------------------------------------------------------
    def attach(self) -> None:
        self.heartbeat()
        for name in sorted(PROCESS_TRACEPOINTS):
            self.probes.attach_tracepoint(name)
        self.attached = True

    def detach(self) -> None:
        """No more following: nothing is stopped from now on, the tracepoints are gone."""
        try:
            self.heartbeat(alive=False)
        except OSError:
            pass
        self.probes.detach_tracepoints()
        self.attached = False


def resume(pidfd: int | None, pid: int) -> bool:
    """SIGCONT through the pidfd (no pid-reuse race) or, without one, the pid."""
    import signal
    try:
        if pidfd is not None and pidfd >= 0:
            signal.pidfd_send_signal(pidfd, signal.SIGCONT)
        else:
            os.kill(pid, signal.SIGCONT)
        return True
    except (ProcessLookupError, OSError):
        return False
