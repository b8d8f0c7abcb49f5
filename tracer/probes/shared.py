"""Per-process uprobes that are cheap to remove: one tracefs uprobe per probed instruction, shared
by every traced process.

Following a process tree means probing many processes, most of them short-lived. A uprobe made
through the uprobe PMU (tracer/probes/attach.py open_uprobe) is a kernel uprobe of its own, and
closing it waits for an RCU grace period under a global mutex: ~0.1-0.2 s each on the machines
measured, one after the other - minutes for a tree of a few hundred processes (BENCHMARKS.md,
process tree). Here instead:

  * each (file, offset, entry|return) becomes one tracefs uprobe event (uprobe_events, group
    tracer_<tracer's pid>), created on first use;
  * the BPF program is attached once per event, through a "holder" perf event bound to a process
    that never runs the probed code (tracer's watchdog, blocked in read());
  * each traced process gets a plain perf event on the tracepoint, bound to it (pid-filtered:
    the breakpoint goes into its memory only). Closing one only takes its breakpoints out of that
    process (no grace period); the kernel uprobe goes when the holder is closed, at the end.

A BPF program runs once per hit however many events share the uprobe (it hangs off the tracepoint,
and the uprobe's filter admits the processes that have an event). Events left behind by a tracer
that was killed are removed by the next one (`remove_stale`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import struct
import threading

from tracer.errors import TracerError
from tracer.probes.attach import (PERF_ATTR_SIZE_VER5, PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF,
                                  PERF_TYPE_TRACEPOINT, Attachment, _close_quietly, _ioctl, file_offset,
                                  perf_event_open, probe_list)
from tracer.probes.program import TRACEFS

GROUP_PREFIX = "tracer_"


def tracefs_root() -> str | None:
    for root in TRACEFS:
        if os.path.exists(f"{root}/uprobe_events"):
            return root
    return None


def _write(root: str, line: str) -> None:
    fd = os.open(f"{root}/uprobe_events", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def remove_stale(root: str | None = None) -> int:
    """Delete uprobe events of tracers that are gone (their group names their pid)."""
    root = root or tracefs_root()
    if root is None:
        return 0
    try:
        with open(f"{root}/uprobe_events") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    n = 0
    for line in lines:
        m = re.match(r"^[pr]:(%s(\d+))/(\S+)" % GROUP_PREFIX, line)
        if not m or os.path.exists(f"/proc/{m.group(2)}"):
            continue
        try:
            _write(root, f"-:{m.group(1)}/{m.group(3)}")
            n += 1
        except OSError:
            pass
    return n


def _tp_attr(event_id: int) -> ctypes.Array:
    a = ctypes.create_string_buffer(PERF_ATTR_SIZE_VER5)
    struct.pack_into("<IIQ", a, 0, PERF_TYPE_TRACEPOINT, PERF_ATTR_SIZE_VER5, event_id)
    return a


class _Event:
    __slots__ = ("name", "id", "holder")

    def __init__(self, name: str, event_id: int, holder: int):
        self.name, self.id, self.holder = name, event_id, holder


class SharedUprobes:
    """The PidAttachments interface (attach, attach_probes, take_pid, detach_attachments,
    detach_pid) over shared tracefs uprobes. `prog_fd(name)` gives a program's fd; `holder_pid`
    is the process the holder events are bound to."""

    def __init__(self, prog_fd, holder_pid: int):
        self.root = tracefs_root()
        if self.root is None:
            raise OSError(errno.ENOENT, "no tracefs with uprobe_events")
        remove_stale(self.root)
        self.prog_fd = prog_fd
        self.holder_pid = holder_pid
        self.group = f"{GROUP_PREFIX}{os.getpid()}"
        self.events: dict[tuple, _Event] = {}
        self.attachments: list[Attachment] = []
        self._lock = threading.Lock()
        self._n = 0

    def _event(self, path: str, off: int, ret: bool, prog: str) -> _Event:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, off, ret, prog)
        with self._lock:
            ev = self.events.get(key)
            if ev is not None:
                return ev
            self._n += 1
            name = f"{'r' if ret else 'p'}{self._n}"
            if any(c.isspace() for c in path):
                raise OSError(errno.EINVAL, f"{path!r}: white space in a path tracefs cannot take")
            _write(self.root, f"{'r' if ret else 'p'}:{self.group}/{name} {path}:{off:#x}")
            try:
                with open(f"{self.root}/events/{self.group}/{name}/id") as f:
                    eid = int(f.read())
                holder = perf_event_open(_tp_attr(eid), self.holder_pid, -1)
                try:
                    _ioctl(holder, PERF_EVENT_IOC_SET_BPF, self.prog_fd(prog))
                    _ioctl(holder, PERF_EVENT_IOC_ENABLE, 0)
                except OSError:
                    os.close(holder)
                    raise
            except OSError:
                try:
                    _write(self.root, f"-:{self.group}/{name}")
                except OSError:
                    pass
                raise
            ev = self.events[key] = _Event(name, eid, holder)
            return ev

    def attach(self, pid: int, path: str, located) -> Attachment:
        return self.attach_probes(pid, path, located, probe_list(located))

    def attach_probes(self, pid: int, path: str, located, todo) -> Attachment:
        att = Attachment(pid, path, located)
        att.fds = []
        try:
            for kind, addr, prog in todo:
                ev = self._event(path, file_offset(path, addr), kind == "uretprobe", prog)
                fd = perf_event_open(_tp_attr(ev.id), pid, -1)
                att.fds.append(fd)
                _ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
                att.probes.append((kind, addr, prog))
        except OSError as e:
            self._detach(att)
            msg = "no such process" if e.errno == errno.ESRCH else (e.strerror or str(e))
            raise TracerError(f"attaching uprobes to {path} (pid {pid}) failed: {msg}") from None
        with self._lock:
            self.attachments.append(att)
        return att

    @staticmethod
    def _detach(att) -> None:
        _close_quietly(att.fds)
        att.fds.clear()
        att.probes.clear()

    def take_pid(self, pid: int) -> list:
        with self._lock:
            mine = [a for a in self.attachments if a.pid == pid]
            self.attachments = [a for a in self.attachments if a.pid != pid]
        return mine

    def detach_attachments(self, atts) -> None:
        for a in atts:
            self._detach(a)

    def detach_pid(self, pid: int) -> None:
        self.detach_attachments(self.take_pid(pid))

    def close(self, background: bool = True) -> None:
        """Everything goes: the per-process events, the holders (each removes its kernel uprobe,
        waiting for a grace period: ~0.1-0.2 s apiece), the tracefs events. With `background` a
        forked child does the slow part after tracer has gone on (it holds the last references to
        the holders, so the parent's own closes cost nothing)."""
        with self._lock:
            atts, self.attachments = self.attachments, []
            events, self.events = list(self.events.values()), {}
        self.detach_attachments(atts)
        if not events:
            return
        child = -1                      # -1: not forked (this process does it all)
        if background:
            try:
                child = os.fork()
            except OSError:
                child = -1
            if child > 0:               # the parent: drop its references, leave the rest
                _close_quietly(ev.holder for ev in events)
                return
        try:
            if child == 0:
                os.setsid()
                keep = {ev.holder for ev in events}
                for name in os.listdir("/proc/self/fd"):
                    fd = int(name)
                    if fd > 2 and fd not in keep:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
            _close_quietly(ev.holder for ev in events)
            for ev in events:
                try:
                    _write(self.root, f"-:{self.group}/{ev.name}")
                except OSError:
                    pass
        finally:
            if child == 0:
                os._exit(0)
