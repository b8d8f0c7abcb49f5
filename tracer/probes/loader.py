"""Load tracer's BPF program from cached bytecode with plain syscalls (no BCC, no LLVM in this process).

BCC compiles bpf/tracer.bpf.c once, in a subprocess (tracer/probes/bpfcache.py), and the result -
each program's final instructions and each map's definition - is cached on disk. This module turns
such an entry back into a running program:

  * maps: bpf(BPF_MAP_CREATE) with the cached type/key/value/max_entries/flags;
  * programs: the cached instructions with every map reference (ld_imm64, src_reg BPF_PSEUDO_MAP_FD /
    BPF_PSEUDO_MAP_VALUE, imm = the compiling process' fd) patched to our new fds, then
    bpf(BPF_PROG_LOAD) as BPF_PROG_TYPE_KPROBE, license "GPL"; on failure the load is retried with a
    verifier log so the error can be read;
  * uprobes: perf_event_open on the `uprobe` PMU (config1 = path, config2 = file offset of the
    function, the retprobe bit from the PMU's format), for the target pid only, then
    PERF_EVENT_IOC_SET_BPF + PERF_EVENT_IOC_ENABLE. Closing the perf fd detaches. No tracefs.
  * the ring buffer: the map is mmapped (consumer page read-write, producer page + data area
    read-only) and records are walked in user space like libbpf's ring_buffer__poll.
  * a uprobe another tool registered with a non-zero reference-counter offset (BCC 0.26's Python
    binding) is matched, see held_ref_ctr_offset().

`LoadedProgram` has BpfProgram's interface (tracer/probes/attach.py); `load_program()` is the factory
that uses the cache, compiles through a subprocess on a miss and falls back to BCC in-process when
anything in this fast path fails.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import functools
import os
import platform
import re
import select
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from tracer.capture.event import decode_drops
from tracer.probes.attach import PROBES, Attachment, PidAttachments, TracerError
from tracer.probes.kheaders import HeaderChoice
from tracer.probes.locate import Located

# -- syscalls -----------------------------------------------------------------------------------

_NR = {  # (bpf, perf_event_open)
    "x86_64": (321, 298),
    "aarch64": (280, 241),
    "riscv64": (280, 241),
    "ppc64le": (361, 319),
    "s390x": (351, 331),
}

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_PROG_LOAD = 5
BPF_OBJ_GET_INFO_BY_FD = 15

BPF_PROG_TYPE_KPROBE = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21
BPF_MAP_TYPE_RINGBUF = 27
PERCPU_MAP_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
                    BPF_MAP_TYPE_LRU_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE}

BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2
BPF_LD_IMM64 = 0x18          # BPF_LD | BPF_IMM | BPF_DW
BPF_OBJ_NAME_LEN = 16

PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400               # _IO('$', 0)
PERF_EVENT_IOC_SET_BPF = 0x40042408          # _IOW('$', 8, __u32)
PERF_ATTR_SIZE_VER5 = 112

RINGBUF_BUSY_BIT = 1 << 31
RINGBUF_DISCARD_BIT = 1 << 30
RINGBUF_HDR_SZ = 8

PROT_READ, PROT_WRITE, MAP_SHARED = 1, 2, 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
MAP_FAILED = ctypes.c_void_p(-1).value


def _nr():
    m = platform.machine()
    if m not in _NR:
        raise OSError(errno.ENOSYS, f"no syscall numbers known for {m}")
    return _NR[m]


def bpf(cmd: int, attr: ctypes.Array, size: int | None = None) -> int:
    """The bpf(2) syscall; raises OSError with errno on failure."""
    r = _libc.syscall(ctypes.c_long(_nr()[0]), ctypes.c_long(cmd), attr,
                      ctypes.c_long(size if size is not None else len(attr)))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _attr(size: int) -> ctypes.Array:
    return ctypes.create_string_buffer(size)


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0,
               name: str = "") -> int:
    a = _attr(72)
    struct.pack_into("<IIIII", a, 0, map_type, key_size, value_size, max_entries, flags)
    nm = _obj_name(name)
    a[28:28 + len(nm)] = nm
    try:
        return bpf(BPF_MAP_CREATE, a)
    except OSError as e:
        if e.errno == errno.EINVAL and nm:      # kernels without map names: try without
            a[28:44] = b"\0" * 16
            return bpf(BPF_MAP_CREATE, a)
        raise


def _obj_name(name: str) -> bytes:
    ok = bytes(c for c in name.encode()[:BPF_OBJ_NAME_LEN - 1] if chr(c).isalnum() or c in b"_.")
    return ok


@dataclass
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def map_info(fd: int) -> MapInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a map fd."""
    info = ctypes.create_string_buffer(88)
    a = _attr(16)
    struct.pack_into("<IIQ", a, 0, fd, len(info), ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, a)
    t, mid, ks, vs, me, fl = struct.unpack_from("<IIIIII", info, 0)
    name = info.raw[24:40].split(b"\0", 1)[0].decode("ascii", "replace")
    return MapInfo(t, mid, ks, vs, me, fl, name)


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    a = _attr(32)
    struct.pack_into("<IIQQ", a, 0, fd, 0, ctypes.addressof(k), ctypes.addressof(v))
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, a)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def kernel_version_code() -> int:
    nums = [int(x) for x in platform.release().split("-")[0].split(".")[:3] if x.isdigit()]
    nums += [0] * (3 - len(nums))
    return (nums[0] << 16) + (nums[1] << 8) + min(nums[2], 255)


class VerifierError(OSError):
    def __init__(self, err: int, name: str, log: str):
        super().__init__(err, f"loading {name}: {os.strerror(err)}")
        self.name = name
        self.log = log


def prog_load(insns: bytes, name: str, license: str = "GPL", prog_type: int = BPF_PROG_TYPE_KPROBE,
              kern_version: int | None = None, log_size: int = 4 << 20) -> int:
    """BPF_PROG_LOAD; on failure retry with a verifier log and raise VerifierError carrying it."""
    if len(insns) % 8 or not insns:
        raise ValueError(f"{name}: instruction bytes not a multiple of 8")
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    kv = kernel_version_code() if kern_version is None else kern_version

    def attempt(log_level: int, log):
        a = _attr(72)
        struct.pack_into("<IIQQIIQII", a, 0, prog_type, len(insns) // 8, ctypes.addressof(code),
                         ctypes.addressof(lic), log_level, len(log) if log is not None else 0,
                         ctypes.addressof(log) if log is not None else 0, kv, 0)
        nm = _obj_name(name)
        a[48:48 + len(nm)] = nm
        return bpf(BPF_PROG_LOAD, a)

    try:
        return attempt(0, None)
    except OSError as first:
        if first.errno == errno.EPERM:
            raise
        log = ctypes.create_string_buffer(log_size)
        try:
            fd = attempt(1, log)
        except OSError as e:
            text = log.value.decode("utf-8", "replace")
            raise VerifierError(e.errno, name, text) from None
        return fd          # loaded with a log (should not happen): use it


def perf_event_open(attr: ctypes.Array, pid: int, cpu: int, group_fd: int = -1,
                    flags: int = PERF_FLAG_FD_CLOEXEC) -> int:
    r = _libc.syscall(ctypes.c_long(_nr()[1]), attr, ctypes.c_long(pid), ctypes.c_long(cpu),
                      ctypes.c_long(group_fd), ctypes.c_long(flags))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _ioctl(fd: int, req: int, arg: int) -> None:
    if _libc.ioctl(fd, req, arg) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """Number of possible CPUs (per-CPU map values have one slot for each), e.g. '0-1,4' -> 5...
    counted as the highest index + 1, which is what the kernel uses for per-CPU value arrays."""
    with open(path) as f:
        text = f.read().strip()
    top = -1
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        hi = part.split("-")[-1]
        top = max(top, int(hi))
    return top + 1


# -- uprobe PMU -------------------------------------------------------------------------------

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
    first, as BCC does); objects that are neither ET_EXEC nor ET_DYN take the address as is."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    known = _offset_cache.setdefault(key, {})
    if vaddr in known:
        return known[vaddr]
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if elf.header.e_type not in ("ET_EXEC", "ET_DYN"):
            known[vaddr] = vaddr
            return vaddr
        loads = [s.header for s in elf.iter_segments() if s.header.p_type == "PT_LOAD"]
    for want_exec in (True, False):
        for h in loads:
            if want_exec and not h.p_flags & 0x1:      # PF_X
                continue
            if h.p_vaddr <= vaddr < h.p_vaddr + h.p_memsz:
                off = vaddr - h.p_vaddr + h.p_offset
                known[vaddr] = off
                return off
    raise OSError(errno.EINVAL, f"address {vaddr:#x} is in no PT_LOAD segment of {path}")


PERF_UPROBE_REF_CTR_OFFSET_SHIFT = 32


def open_uprobe(prog_fd: int, path: str, offset: int, pid: int, retprobe: bool,
                ref_ctr_offset: int = 0) -> int:
    """A perf event for a uprobe/uretprobe at file `offset` of `path`, for `pid` (-1: all), with
    the BPF program attached and enabled. Close the fd to detach."""
    ptype, retbit = uprobe_pmu()
    p = ctypes.create_string_buffer(path.encode())
    a = _attr(PERF_ATTR_SIZE_VER5)
    config = ((1 << retbit) if retprobe else 0) | (ref_ctr_offset << PERF_UPROBE_REF_CTR_OFFSET_SHIFT)
    struct.pack_into("<IIQ", a, 0, ptype, PERF_ATTR_SIZE_VER5, config)
    struct.pack_into("<QQ", a, 56, ctypes.addressof(p), offset)     # config1, config2
    fd = perf_event_open(a, pid, -1 if pid >= 0 else 0)
    try:
        _ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        _ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


_REF_CTR_MISMATCH = re.compile(rb"ref_ctr_offset mismatch\. inode: 0x([0-9a-f]+) offset: 0x([0-9a-f]+) "
                               rb"ref_ctr_offset\(old\): 0x([0-9a-f]+)")


def held_ref_ctr_offset(path: str, offset: int, retprobe: bool) -> int | None:
    """The reference-counter offset of an existing uprobe at (path, offset), or None.

    The kernel keeps one uprobe per (inode, offset) and refuses (EINVAL) a consumer whose
    ref_ctr_offset differs from the registered one, saying so only in the kernel log. BCC 0.26's
    Python attach_uprobe leaves that argument uninitialised (stack garbage, 6 on Debian 12), so
    next to a BCC tool (bpfcc-tools' sslsniff, tracer's own BCC fallback) our zero offset is
    refused. Repeat the refused registration with the kernel log open and read the old value."""
    try:
        kfd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        os.lseek(kfd, 0, os.SEEK_END)
        ptype, retbit = uprobe_pmu()
        pbuf = ctypes.create_string_buffer(path.encode())
        a = _attr(PERF_ATTR_SIZE_VER5)
        struct.pack_into("<IIQ", a, 0, ptype, PERF_ATTR_SIZE_VER5, (1 << retbit) if retprobe else 0)
        struct.pack_into("<QQ", a, 56, ctypes.addressof(pbuf), offset)
        try:       # our own pid, no program: only to have the kernel log the mismatch again
            os.close(perf_event_open(a, os.getpid(), -1))
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


# -- ring buffer --------------------------------------------------------------------------------

class RingBuffer:
    """User-space consumer of a BPF_MAP_TYPE_RINGBUF map (what libbpf's ring_buffer does).

    The data area is mapped once, not twice back to back as libbpf does: the kernel puts every page
    of a ring mapping in at mmap time and they count in our RSS, so the double mapping would show
    2x the ring size (16 MB for the default 8 MB ring) in the tracer's resident set. The few
    records that wrap past the end of the area are joined into a temporary buffer instead.
    Ordering: producer_pos is read, the records up to it are handed out, consumer_pos is stored
    after each; on x86-64 (TSO) plain aligned 8-byte loads/stores give the acquire/release the
    protocol needs. The callback gets (ctx, address, size), as BCC's ring buffer callbacks do; the
    address is only valid during the call."""

    def __init__(self, map_fd: int, size: int, callback):
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        self.fd = map_fd
        self.size = size
        self.mask = size - 1
        self.callback = callback
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.callback_errors = 0
        self.last_callback_error = ""
        self._lock = threading.Lock()
        cons = _libc.mmap(None, self.page, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0)
        if cons in (None, MAP_FAILED):
            e = ctypes.get_errno()
            raise OSError(e, f"mmap of the ring buffer consumer page: {os.strerror(e)}")
        self._prod_len = self.page + size
        prod = _libc.mmap(None, self._prod_len, PROT_READ, MAP_SHARED, map_fd, self.page)
        if prod in (None, MAP_FAILED):
            e = ctypes.get_errno()
            _libc.munmap(cons, self.page)
            raise OSError(e, f"mmap of the ring buffer data: {os.strerror(e)}")
        self._cons_addr, self._prod_addr = cons, prod
        self._consumer = ctypes.c_uint64.from_address(cons)
        self._producer = ctypes.c_uint64.from_address(prod)
        self.data = prod + self.page
        self._view = memoryview((ctypes.c_char * size).from_address(self.data)).cast("B")
        self.wrapped_records = 0
        self._ep = select.epoll()
        self._ep.register(map_fd, select.EPOLLIN)
        self.closed = False

    def consume(self) -> int:
        """Hand out every committed record; returns how many."""
        with self._lock:
            if self.closed:
                return 0
            return self._consume()

    def _consume(self) -> int:
        n = 0
        view, mask, data, cb, size = self._view, self.mask, self.data, self.callback, self.size
        consumer, producer = self._consumer, self._producer
        unpack = struct.unpack_from
        cons = consumer.value
        while True:
            prod = producer.value
            progressed = False
            while cons < prod:
                off = cons & mask
                hdr = unpack("<I", view, off)[0]
                if hdr & RINGBUF_BUSY_BIT:
                    consumer.value = cons
                    return n          # the producer's commit will wake us (consumer is at it)
                length = hdr & ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT)
                cons += (length + RINGBUF_HDR_SZ + 7) & ~7
                if not hdr & RINGBUF_DISCARD_BIT:
                    start = (off + RINGBUF_HDR_SZ) & mask      # headers never straddle the end
                    try:
                        if start + length <= size:
                            rc = cb(None, data + start, length)
                        else:                                  # wraps: join the two pieces
                            self.wrapped_records += 1
                            tmp = ctypes.create_string_buffer(
                                bytes(view[start:]) + bytes(view[:start + length - size]), length)
                            rc = cb(None, ctypes.addressof(tmp), length)
                    except Exception as e:   # a consumer bug must not stop the ring
                        rc = 0
                        self.callback_errors += 1
                        self.last_callback_error = f"{type(e).__name__}: {e}"
                    n += 1
                    if rc is not None and isinstance(rc, int) and rc < 0:
                        consumer.value = cons
                        return n
                consumer.value = cons
                progressed = True
            if not progressed:
                return n

    def poll(self, timeout_ms: int) -> int:
        n = self.consume()
        if n:
            return n
        if self.closed:
            time.sleep(max(0, timeout_ms) / 1000)
            return 0
        try:
            self._ep.poll(timeout_ms / 1000 if timeout_ms >= 0 else -1)
        except (OSError, ValueError):        # closed under us
            return 0
        return self.consume()

    def close(self):
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._view.release()
            _libc.munmap(self._prod_addr, self._prod_len)
            _libc.munmap(self._cons_addr, self.page)
            self._ep.close()


# -- the program --------------------------------------------------------------------------------

@dataclass
class LoadedAttachment(Attachment):
    fds: list[int] = field(default_factory=list)


def _patch_map_fds(insns: bytes, fdmap: dict[int, int]) -> bytes:
    code = bytearray(insns)
    for i in range(0, len(code), 8):
        if code[i] != BPF_LD_IMM64:
            continue
        src = code[i + 1] >> 4
        if src in (BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE):
            old = struct.unpack_from("<i", code, i + 4)[0]
            if old not in fdmap:
                raise ValueError(f"instruction {i // 8} references map fd {old}, not in the cache entry")
            struct.pack_into("<i", code, i + 4, fdmap[old])
    return bytes(code)


def _close_quietly(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class LoadedProgram(PidAttachments):
    """BpfProgram's interface on a program recreated from a cache entry (see bpfcache.py)."""

    backend = "cached bytecode"

    def __init__(self, entry: dict, stderr=None):
        self.stderr = stderr
        if os.geteuid() != 0:
            raise TracerError("tracer needs root (or CAP_BPF + CAP_PERFMON) to load eBPF programs; "
                              "run it with sudo")
        t0 = time.monotonic()
        hc = entry.get("header_choice") or {}
        self.header_choice = HeaderChoice(hc.get("source", "cache"), hc.get("path"),
                                          hc.get("detail", "compiled earlier"))
        self.ring_pages = int(entry["ring_pages"])
        self.attachments: list[LoadedAttachment] = []
        self._lock = threading.Lock()
        self._ring: RingBuffer | None = None
        self._last_drops: dict[str, int] = {}
        self.map_fds: dict[str, int] = {}       # role/name -> our fd
        self.prog_fds: dict[str, int] = {}
        self._maps: dict[int, dict] = {}        # our fd -> definition
        self.closed = False
        self.notes: list[str] = []
        try:
            fdmap: dict[int, int] = {}
            for m in entry["maps"]:
                fd = map_create(int(m["type"]), int(m["key_size"]), int(m["value_size"]),
                                int(m["max_entries"]), int(m.get("flags", 0)), m.get("name", ""))
                fdmap[int(m["fd"])] = fd
                self._maps[fd] = m
                if m.get("name"):
                    self.map_fds.setdefault(m["name"], fd)
            for role, old in entry["roles"].items():
                self.map_fds[role] = fdmap[int(old)]
            self._load_programs(entry, fdmap)
        except BaseException:
            self._close_fds()
            raise
        self.load_seconds = time.monotonic() - t0

    def _load_programs(self, entry: dict, fdmap: dict[int, int]):
        """BPF_PROG_LOAD for every program. The verifier's work (~170k instructions for each
        return probe) is CPU-bound in the calling thread and ctypes drops the GIL, so the
        programs are loaded on up to one thread per CPU: wall time ~ the largest one."""
        kv = entry.get("kern_version") or None
        jobs = []
        for name, p in entry["programs"].items():
            insns = _patch_map_fds(base64.b64decode(p["insns"]), fdmap)
            jobs.append((len(insns), name, insns, p.get("license", "GPL")))
        jobs.sort(reverse=True)                 # biggest first
        results: dict[str, int] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker():
            while True:
                with lock:
                    if not jobs or errors:
                        return
                    _, name, insns, lic = jobs.pop(0)
                try:
                    fd = prog_load(insns, name, lic, kern_version=kv)
                except BaseException as e:      # noqa: BLE001 - re-raised below
                    with lock:
                        errors.append(e)
                    return
                with lock:
                    results[name] = fd

        n = max(1, min(len(jobs), os.cpu_count() or 1, 4))
        threads = [threading.Thread(target=worker, name="tracer-bpf-load", daemon=True)
                   for _ in range(n - 1)]
        for t in threads:
            t.start()
        worker()
        for t in threads:
            t.join()
        self.prog_fds.update(results)           # closed by the caller on error
        if errors:
            raise errors[0]

    # -- attach/detach --------------------------------------------------------------------------
    def attach(self, pid: int, path: str, located: Located) -> Attachment:
        """uprobes (+uretprobes) on the located functions of `path`, for `pid` only."""
        att = LoadedAttachment(pid, path, located)
        try:
            todo: list[tuple[str, int, str]] = []
            for func, (entry, ret) in PROBES.items():
                loc = located.functions.get(func)
                if loc is None:
                    continue
                todo.append(("uprobe", loc.address, entry))
                todo.append(("uretprobe", loc.address, ret))
            free = located.functions.get("SSL_free")
            if free is not None:
                todo.append(("uprobe", free.address, "probe_free"))
            for kind, addr, fn in todo:
                off = file_offset(path, addr)
                fd = self._open_probe(self.prog_fds[fn], path, off, pid, kind == "uretprobe")
                att.fds.append(fd)
                att.probes.append((kind, addr, fn))
        except Exception as e:
            self._detach(att)
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            if isinstance(e, OSError) and e.errno == errno.ESRCH:
                msg = f"no such process ({msg})"
            elif isinstance(e, OSError) and e.errno == errno.EINVAL:
                msg += (" - the kernel refused the uprobe. If another tool has a uprobe on the same "
                        "function, it may use a different reference-counter offset (BCC 0.26's "
                        "Python attach_uprobe passes an uninitialised one; dmesg then shows "
                        "'ref_ctr_offset mismatch'): stop that tool, or run tracer with "
                        "TRACER_BPF_LOADER=bcc")
            raise TracerError(f"attaching uprobes to {path} (pid {pid}) failed: {msg}") from None
        with self._lock:
            self.attachments.append(att)
        return att

    def _open_probe(self, prog_fd: int, path: str, off: int, pid: int, ret: bool) -> int:
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
            if self.stderr is not None:
                print(f"tracer: {note}", file=self.stderr)
        return fd

    def _detach(self, att: LoadedAttachment):
        _close_quietly(att.fds)
        att.fds.clear()
        att.probes.clear()

    # -- ring buffer ----------------------------------------------------------------------------
    def open_ring(self, callback):
        """callback(ctx, data_address, size) per record, as with BCC."""
        fd = self.map_fds["events"]
        self._ring = RingBuffer(fd, int(self._maps[fd]["max_entries"]), callback)

    def poll(self, timeout_ms: int):
        if self._ring is None:
            time.sleep(max(0, timeout_ms) / 1000)
            return 0
        return self._ring.poll(timeout_ms)

    def consume(self):
        return self._ring.consume() if self._ring is not None else 0

    @property
    def callback_errors(self) -> int:
        return self._ring.callback_errors if self._ring else 0

    # -- counters -------------------------------------------------------------------------------
    def drops(self) -> dict[str, int]:
        fd = self.map_fds.get("drops")
        m = self._maps.get(fd) if fd is not None else None
        if self.closed or m is None:
            return dict(self._last_drops)
        vs = int(m["value_size"])
        if int(m["type"]) in PERCPU_MAP_TYPES:
            ncpu, slot = possible_cpus(), (vs + 7) & ~7
        else:
            ncpu, slot = 1, vs
        try:
            raw = map_lookup(fd, struct.pack("<I", 0), slot * ncpu)
        except OSError:
            return dict(self._last_drops)     # counters are informative: never fail a caller
        total: dict[str, int] = {}
        if raw is not None:
            for c in range(ncpu):
                for k, n in decode_drops(raw[c * slot:c * slot + vs]).items():
                    total[k] = total.get(k, 0) + n
        self._last_drops = total
        return dict(total)

    # -- the end --------------------------------------------------------------------------------
    def _close_fds(self):
        _close_quietly(list(self.prog_fds.values()) + list(self._maps))
        self.prog_fds.clear()
        self._maps.clear()
        self.map_fds.clear()

    def close(self):
        if self.closed:
            return
        try:
            self.drops()
        except OSError:
            pass
        for a in list(self.attachments):
            self._detach(a)
        self.attachments.clear()
        if self._ring is not None:
            self._ring.close()
        self.closed = True
        self._close_fds()


# -- factory ------------------------------------------------------------------------------------

def load_program(ring_buffer_mb: int = 8, copy_limit: int = 1 << 20, *, stderr=None,
                 cache_dir=None, fallback: bool | None = None):
    """The tracer's BPF program: from the bytecode cache when possible (compiling once in a BCC
    subprocess on a miss), else BCC in this process (BpfProgram) with a note on stderr.

    TRACER_BPF_LOADER=bcc forces BCC in-process; =cache forbids the fallback (errors are raised)."""
    from tracer.probes import bpfcache
    from tracer.probes.attach import BpfProgram

    stderr = stderr or sys.stderr
    mode = os.environ.get("TRACER_BPF_LOADER", "auto")
    if mode == "bcc":
        t0 = time.monotonic()
        prog = BpfProgram(ring_buffer_mb=ring_buffer_mb, copy_limit=copy_limit)
        prog.backend, prog.cache_hit = "bcc", False
        prog.load_seconds = time.monotonic() - t0
        return prog
    if fallback is None:
        fallback = mode != "cache"
    if os.geteuid() != 0:
        raise TracerError("tracer needs root (or CAP_BPF + CAP_PERFMON) to load eBPF programs; "
                          "run it with sudo")
    t0 = time.monotonic()
    try:
        if platform.machine() != "x86_64":
            # the ring reader relies on x86-64's ordering of plain loads and stores (TSO); other
            # architectures need acquire/release barriers that Python cannot issue
            raise OSError(errno.ENOTSUP, f"the cached-bytecode loader supports x86-64 only, "
                                         f"not {platform.machine()}")
        entry, hit = bpfcache.get_entry(ring_buffer_mb, copy_limit, cache_dir=cache_dir)
        try:
            prog = LoadedProgram(entry, stderr=stderr)
        except (OSError, ValueError, KeyError) as e:
            if not hit or (isinstance(e, OSError) and e.errno == errno.EPERM):
                raise
            # a stale entry the kernel refuses: compile afresh once before giving up on the cache
            bpfcache.invalidate(ring_buffer_mb, copy_limit, cache_dir=cache_dir)
            entry, hit = bpfcache.get_entry(ring_buffer_mb, copy_limit, cache_dir=cache_dir)
            prog = LoadedProgram(entry, stderr=stderr)
    except bpfcache.CompileError as e:
        # BCC itself could not compile/load the program: in-process BCC would fail the same way
        raise TracerError(str(e)) from None
    except Exception as e:
        why = _describe(e)
        if not fallback:
            raise TracerError(f"loading the cached BPF program failed: {why}") from None
        print(f"tracer: the fast BPF loader failed ({why}); compiling with BCC in-process instead "
              "(slower start, more memory)", file=stderr)
        prog = BpfProgram(ring_buffer_mb=ring_buffer_mb, copy_limit=copy_limit)
        prog.backend = "bcc"
        prog.cache_hit = False
        prog.load_seconds = time.monotonic() - t0
        return prog
    prog.cache_hit = hit
    prog.load_seconds = time.monotonic() - t0
    return prog


def _describe(e: BaseException) -> str:
    if isinstance(e, VerifierError):
        tail = "\n".join(e.log.strip().splitlines()[-12:])
        return f"{e}; verifier log tail:\n{tail}"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f" ({e.filename})" if e.filename else "")
    return f"{type(e).__name__}: {e}"
