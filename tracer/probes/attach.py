"""Attach a loaded `Program` (tracer/probes/program.py): uprobes on the located TLS functions of a
file for one pid at a time, and tracepoints.

  * uprobes: perf_event_open on the kernel's `uprobe` PMU (config1 = path, config2 = file offset of
    the function, the retprobe bit from the PMU's format) with the target's pid, so that other
    processes never hit the probe; then PERF_EVENT_IOC_SET_BPF + PERF_EVENT_IOC_ENABLE. Closing the
    perf fd detaches. No tracefs involved.
  * tracepoints: perf_event_open(PERF_TYPE_TRACEPOINT, id from tracefs events/<category>/<name>/id)
    on CPU 0 with no pid; a BPF program attached this way runs for every task on every CPU.

libbpf cannot do these for a bare program fd (its attach functions need a libbpf bpf_object, i.e.
an ELF object file, which BCC does not produce), so the two perf_event_open calls are made here.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import re
import struct
import sys
import threading
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile

from tracer.errors import TracerError
from tracer.probes import elfview
from tracer.probes.located import Located
from tracer.probes.program import ENTRY_ONLY, TRACEFS, UPROBES, Program, ProgType, spec

# perf_event_open has no libc wrapper
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "ppc64le": 319, "s390x": 331}

PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400               # _IO('$', 0)
PERF_EVENT_IOC_SET_BPF = 0x40042408          # _IOW('$', 8, __u32)
PERF_ATTR_SIZE_VER5 = 112
PERF_UPROBE_REF_CTR_OFFSET_SHIFT = 32

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]


def perf_event_open(attr: ctypes.Array, pid: int, cpu: int, group_fd: int = -1,
                    flags: int = PERF_FLAG_FD_CLOEXEC) -> int:
    nr = _NR_PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"no perf_event_open syscall number known for {platform.machine()}")
    r = _libc.syscall(ctypes.c_long(nr), attr, ctypes.c_long(pid), ctypes.c_long(cpu),
                      ctypes.c_long(group_fd), ctypes.c_long(flags))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _ioctl(fd: int, req: int, arg: int) -> None:
    if _libc.ioctl(fd, req, arg) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _attach_bpf(perf_fd: int, prog_fd: int) -> int:
    """Run `prog_fd` on the perf event's hits, and enable it; the perf fd is closed on failure."""
    try:
        _ioctl(perf_fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        _ioctl(perf_fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        os.close(perf_fd)
        raise
    return perf_fd


# -- uprobes ------------------------------------------------------------------------------------

_PMU = "/sys/bus/event_source/devices/uprobe"


@functools.lru_cache(maxsize=1)
def uprobe_pmu() -> tuple[int, int]:
    """(PMU type, retprobe bit) of the kernel's uprobe perf PMU."""
    try:
        with open(f"{_PMU}/type") as f:
            ptype = int(f.read().strip())
        with open(f"{_PMU}/format/retprobe") as f:
            fmt = f.read().strip()                # "config:0"
    except (OSError, ValueError) as e:
        raise OSError(errno.ENOENT, f"no uprobe PMU in {_PMU} ({e})") from None
    if not fmt.startswith("config:"):
        raise OSError(errno.EINVAL, f"unexpected retprobe format {fmt!r}")
    return ptype, int(fmt.split(":", 1)[1].split("-")[0])


_offset_cache: dict[tuple, dict[int, int]] = {}


def file_offset(path: str, vaddr: int) -> int:
    """ELF virtual address -> file offset through the PT_LOAD program headers (executable segments
    first, as BCC does); objects that are neither ET_EXEC nor ET_DYN take the address as is. The
    program headers are read with every size checked against the file (tracer/probes/elfview.py)."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    known = _offset_cache.setdefault(key, {})
    if vaddr in known:
        return known[vaddr]
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if elf.header.e_type not in ("ET_EXEC", "ET_DYN"):
            known[vaddr] = vaddr
            return vaddr
        loads = elfview.loads(elf)
    for want_exec in (True, False):
        for h in loads:
            if want_exec and not h.flags & elfview.PF_X:
                continue
            if h.vaddr <= vaddr < h.vaddr + h.memsz:
                off = vaddr - h.vaddr + h.offset
                known[vaddr] = off
                return off
    raise OSError(errno.EINVAL, f"address {vaddr:#x} is in no PT_LOAD segment of {path}")


def _uprobe_attr(path_buf: ctypes.Array, offset: int, retprobe: bool, ref_ctr_offset: int = 0):
    ptype, retbit = uprobe_pmu()
    a = ctypes.create_string_buffer(PERF_ATTR_SIZE_VER5)
    config = ((1 << retbit) if retprobe else 0) | (ref_ctr_offset << PERF_UPROBE_REF_CTR_OFFSET_SHIFT)
    struct.pack_into("<IIQ", a, 0, ptype, PERF_ATTR_SIZE_VER5, config)
    struct.pack_into("<QQ", a, 56, ctypes.addressof(path_buf), offset)     # config1, config2
    return a


def open_uprobe(prog_fd: int, path: str, offset: int, pid: int, retprobe: bool,
                ref_ctr_offset: int = 0) -> int:
    """A perf event for a uprobe/uretprobe at file `offset` of `path`, for `pid` (-1: all), with
    the BPF program attached and enabled. Close the fd to detach."""
    p = ctypes.create_string_buffer(path.encode())
    a = _uprobe_attr(p, offset, retprobe, ref_ctr_offset)
    return _attach_bpf(perf_event_open(a, pid, -1 if pid >= 0 else 0), prog_fd)


_REF_CTR_MISMATCH = re.compile(rb"ref_ctr_offset mismatch\. inode: 0x([0-9a-f]+) offset: 0x([0-9a-f]+) "
                               rb"ref_ctr_offset\(old\): 0x([0-9a-f]+)")


def held_ref_ctr_offset(path: str, offset: int, retprobe: bool) -> int | None:
    """The reference-counter offset of an existing uprobe at (path, offset), or None.

    The kernel keeps one uprobe per (inode, offset) and refuses (EINVAL) a consumer whose
    ref_ctr_offset differs from the registered one, saying so only in the kernel log. BCC 0.26's
    Python attach_uprobe leaves that argument uninitialised (stack garbage, 6 on Debian 12), so
    next to a BCC tool (bpfcc-tools' sslsniff) our zero offset is refused. Repeat the refused
    registration with the kernel log open and read the old value."""
    try:
        kfd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        os.lseek(kfd, 0, os.SEEK_END)
        pbuf = ctypes.create_string_buffer(path.encode())
        try:       # our own pid, no program: only to have the kernel log the mismatch again
            os.close(perf_event_open(_uprobe_attr(pbuf, offset, retprobe), os.getpid(), -1))
        except OSError:
            pass
        ino = os.stat(path).st_ino
        found = None
        for _ in range(10000):
            try:
                rec = os.read(kfd, 8192)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:      # overwritten records: keep reading
                    continue
                break
            m = _REF_CTR_MISMATCH.search(rec)
            if m and int(m.group(1), 16) == ino and int(m.group(2), 16) == offset:
                found = int(m.group(3), 16)
        return found
    finally:
        os.close(kfd)


# -- tracepoints --------------------------------------------------------------------------------

def tracepoint_id(tracepoint: str) -> int:
    """The perf event id of "category/name" (tracefs events/category/name/id)."""
    for root in TRACEFS:
        try:
            with open(f"{root}/events/{tracepoint}/id") as f:
                return int(f.read().strip())
        except FileNotFoundError:
            continue
    raise OSError(errno.ENOENT, f"no tracepoint {tracepoint} in {' or '.join(TRACEFS)} "
                                "(is tracefs mounted?)")


def open_tracepoint(prog_fd: int, tracepoint: str) -> int:
    """A perf event on `tracepoint` running `prog_fd` for every task. Close the fd to detach."""
    a = ctypes.create_string_buffer(PERF_ATTR_SIZE_VER5)
    struct.pack_into("<IIQ", a, 0, PERF_TYPE_TRACEPOINT, PERF_ATTR_SIZE_VER5, tracepoint_id(tracepoint))
    return _attach_bpf(perf_event_open(a, -1, 0), prog_fd)


# -- attachments --------------------------------------------------------------------------------

@dataclass
class Attachment:
    pid: int
    path: str
    located: Located
    probes: list[tuple[str, int, str]] = field(default_factory=list)  # (kind, addr, program)
    fds: list[int] = field(default_factory=list)


def _close_quietly(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def probe_list(located: Located) -> list[tuple[str, int, str]]:
    """(kind, address, program) of the TLS probes for a located object."""
    todo: list[tuple[str, int, str]] = []
    for func, (entry, ret) in UPROBES.items():
        loc = located.functions.get(func)
        if loc is not None:
            todo += [("uprobe", loc.address, entry), ("uretprobe", loc.address, ret)]
    for func, prog in ENTRY_ONLY.items():
        loc = located.functions.get(func)
        if loc is not None:
            todo.append(("uprobe", loc.address, prog))
    return todo


class Probes:
    """Everything attached from one `Program`: uprobes per (pid, file) and tracepoints."""

    def __init__(self, program: Program, *, stderr=None):
        self.program = program
        self.stderr = stderr if stderr is not None else sys.stderr
        self.attachments: list[Attachment] = []
        self.tracepoints: dict[str, int] = {}          # program name -> perf fd
        self.notes: list[str] = []
        self._lock = threading.Lock()

    def attach(self, pid: int, path: str, located: Located) -> Attachment:
        """uprobes (+uretprobes) on the located functions of `path`, for `pid` only."""
        return self.attach_probes(pid, path, located, probe_list(located))

    def attach_probes(self, pid: int, path: str, located: Located,
                      todo: list[tuple[str, int, str]]) -> Attachment:
        """(kind, address, program) probes on `path`, for `pid` only."""
        att = Attachment(pid, path, located)
        try:
            for kind, addr, prog in todo:
                off = file_offset(path, addr)
                att.fds.append(self._open_uprobe(self.program.prog_fd(prog), path, off, pid,
                                                 kind == "uretprobe"))
                att.probes.append((kind, addr, prog))
        except Exception as e:
            self._detach(att)
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            if isinstance(e, OSError) and e.errno == errno.ESRCH:
                msg = f"no such process ({msg})"
            elif isinstance(e, OSError) and e.errno == errno.EINVAL:
                msg += (" - the kernel refused the uprobe. If another tool has a uprobe on the same "
                        "function, it may use a different reference-counter offset (BCC 0.26's "
                        "Python attach_uprobe passes an uninitialised one; dmesg then shows "
                        "'ref_ctr_offset mismatch'): stop that tool")
            raise TracerError(f"attaching uprobes to {path} (pid {pid}) failed: {msg}") from None
        with self._lock:
            self.attachments.append(att)
        return att

    def _open_uprobe(self, prog_fd: int, path: str, off: int, pid: int, ret: bool) -> int:
        try:
            return open_uprobe(prog_fd, path, off, pid, ret)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            first = e
        # another tool's uprobe on this function with a non-zero reference-counter offset
        ref = held_ref_ctr_offset(path, off, ret)
        if not ref:
            raise first
        fd = open_uprobe(prog_fd, path, off, pid, ret, ref_ctr_offset=ref)
        note = (f"{path}: another tool has uprobes on these functions with reference-counter "
                f"offset {ref:#x} (BCC's attach_uprobe); attached with the same offset so both work")
        if note not in self.notes:
            self.notes.append(note)
            print(f"tracer: {note}", file=self.stderr)
        return fd

    def attach_tracepoint(self, program: str) -> None:
        """Attach a TRACEPOINT program to the tracepoint its spec names (once)."""
        s = spec(program)
        if s.type != ProgType.TRACEPOINT or not s.tracepoint:
            raise ValueError(f"{program} is not a tracepoint program")
        with self._lock:
            if program in self.tracepoints:
                return
        try:
            fd = open_tracepoint(self.program.prog_fd(program), s.tracepoint)
        except OSError as e:
            raise TracerError(f"attaching {program} to tracepoint {s.tracepoint} failed: "
                              f"{e.strerror or e}") from None
        with self._lock:
            self.tracepoints[program] = fd

    def detach_tracepoints(self) -> None:
        with self._lock:
            tps, self.tracepoints = list(self.tracepoints.values()), {}
        _close_quietly(tps)

    @staticmethod
    def _detach(att: Attachment) -> None:
        _close_quietly(att.fds)
        att.fds.clear()
        att.probes.clear()

    def take_pid(self, pid: int) -> list[Attachment]:
        """The pid's attachments, no longer tracked here; close them with detach_attachments()
        (closing a uprobe waits for an RCU grace period: callers in a hurry do it elsewhere)."""
        with self._lock:
            mine = [a for a in self.attachments if a.pid == pid]
            self.attachments = [a for a in self.attachments if a.pid != pid]
        return mine

    def detach_attachments(self, atts: list[Attachment]) -> None:
        for a in atts:
            self._detach(a)

    def detach_pid(self, pid: int) -> None:
        self.detach_attachments(self.take_pid(pid))

    def close(self) -> None:
        with self._lock:
            atts, self.attachments = self.attachments, []
            tps, self.tracepoints = list(self.tracepoints.values()), {}
        for a in atts:
            self._detach(a)
        _close_quietly(tps)
