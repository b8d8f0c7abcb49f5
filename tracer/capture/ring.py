"""Records out of the kernel: the BPF ring buffer (`events` map) and the drop counters (`drops`).

Two readers with one interface, `poll(timeout_ms)` / `consume()` / `close()`, each calling
`callback(record: bytes)` once per committed record, in order:

  * `MappedRing` walks the ring in Python through its own mapping (x86-64 only): the data area is
    mapped once, not twice back to back as libbpf does - the kernel puts every page of a ring
    mapping in at mmap time and they count in the tracer's resident set, so libbpf's double mapping
    costs the ring's size again (8 MB for the default ring). Records that wrap past the end of the
    area are joined into one bytes object instead. Memory ordering: x86-64 is TSO, so a plain
    aligned 8-byte load of producer_pos / of a record header is an acquire load and a plain store of
    consumer_pos a release store - exactly what the ring protocol needs. Other architectures need
    barriers that Python cannot issue.
  * `LibbpfRing` is libbpf's ring_buffer__poll (correct memory ordering on every architecture),
    calling back into Python once per record.

`open_ring` picks `MappedRing` on x86-64 and `LibbpfRing` elsewhere (BENCHMARKS.md, "Ring
reader", has the measurements behind that choice); TRACER_RING_READER=mapped|libbpf forces one.
"""

from __future__ import annotations

import ctypes
import os
import platform
import select
import struct
import threading
import time
from typing import Callable, Protocol

from tracer import libbpf
from tracer.capture.event import decode_drops
from tracer.probes.program import PERCPU_MAP_TYPES, MapInfo

Callback = Callable[[bytes], object]

RINGBUF_BUSY_BIT = 1 << 31
RINGBUF_DISCARD_BIT = 1 << 30
RINGBUF_HDR_SZ = 8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PROT_READ, PROT_WRITE, MAP_SHARED = 1, 2, 1
MAP_FAILED = ctypes.c_void_p(-1).value


class Ring(Protocol):
    callback_errors: int
    last_callback_error: str

    def poll(self, timeout_ms: int) -> int: ...
    def consume(self) -> int: ...
    def close(self) -> None: ...


class _Errors:
    """A failing callback (a consumer bug) is counted, never allowed to stop the ring."""
    callback_errors = 0
    last_callback_error = ""

    def _failed(self, e: Exception) -> None:
        self.callback_errors += 1
        self.last_callback_error = f"{type(e).__name__}: {e}"


class MappedRing(_Errors):
    """The ring buffer read through our own mapping of it (x86-64 only, see the module docstring)."""

    def __init__(self, map_fd: int, size: int, callback: Callback):
        if platform.machine() != "x86_64":
            raise OSError(95, f"the mapped ring reader relies on x86-64 memory ordering, "
                              f"not {platform.machine()}'s")
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        self.size = size
        self.mask = size - 1
        self.callback = callback
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.wrapped_records = 0
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
        self._view = memoryview((ctypes.c_char * size).from_address(prod + self.page)).cast("B")
        self._ep = select.epoll()
        self._ep.register(map_fd, select.EPOLLIN)
        self.closed = False

    @property
    def consumer_pos(self) -> int:
        return self._consumer.value

    def consume(self) -> int:
        """Hand out every committed record; returns how many."""
        with self._lock:
            if self.closed:
                return 0
            return self._consume()

    def _consume(self) -> int:
        n = 0
        view, mask, cb, size = self._view, self.mask, self.callback, self.size
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
                    end = start + length
                    if end <= size:
                        record = bytes(view[start:end])
                    else:                                      # wraps: join the two pieces
                        self.wrapped_records += 1
                        record = bytes(view[start:]) + bytes(view[:end - size])
                    try:
                        cb(record)
                    except Exception as e:
                        self._failed(e)
                    n += 1
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

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._view.release()
            _libc.munmap(self._prod_addr, self._prod_len)
            _libc.munmap(self._cons_addr, self.page)
            self._ep.close()


class LibbpfRing(_Errors):
    """libbpf's ring_buffer reader (any architecture); one C -> Python call per record."""

    def __init__(self, map_fd: int, size: int, callback: Callback):
        self.size = size
        self.callback = callback
        self._lock = threading.Lock()
        self._cb = libbpf.RING_SAMPLE_FN(self._sample)     # kept alive as long as the ring
        self._lib = libbpf.lib()
        ctypes.set_errno(0)
        rb = self._lib.ring_buffer__new(map_fd, self._cb, None, None)
        if not rb:
            e = ctypes.get_errno() or 22
            raise OSError(e, f"libbpf ring_buffer__new: {os.strerror(e)}")
        self._rb = rb
        self.closed = False

    def _sample(self, _ctx, data, size) -> int:
        try:
            self.callback(ctypes.string_at(data, size))
        except Exception as e:
            self._failed(e)
        return 0

    def _call(self, fn, *args) -> int:
        with self._lock:
            if self.closed:
                return 0
            rc = fn(self._rb, *args)
        if rc < 0 and rc != -4:            # EINTR: a signal arrived, nothing lost
            raise OSError(-rc, f"libbpf ring buffer: {os.strerror(-rc)}")
        return max(rc, 0)

    def poll(self, timeout_ms: int) -> int:
        if self.closed:
            time.sleep(max(0, timeout_ms) / 1000)
            return 0
        return self._call(self._lib.ring_buffer__poll, timeout_ms)

    def consume(self) -> int:
        return self._call(self._lib.ring_buffer__consume)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._lib.ring_buffer__free(self._rb)
            self._rb = None


READERS = {"mapped": MappedRing, "libbpf": LibbpfRing}


def open_ring(map_fd: int, size: int, callback: Callback, reader: str | None = None) -> Ring:
    """A reader of the ring buffer map `map_fd` (`size` bytes of data) calling `callback(record)`."""
    reader = reader or os.environ.get("TRACER_RING_READER") or (
        "mapped" if platform.machine() == "x86_64" else "libbpf")
    if reader not in READERS:
        raise ValueError(f"unknown ring reader {reader!r} (one of {', '.join(READERS)})")
    return READERS[reader](map_fd, size, callback)


# -- loss counters ------------------------------------------------------------------------------

def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """Number of possible CPUs (per-CPU map values have one slot for each), e.g. '0-1,4' -> 5...
    counted as the highest index + 1, which is what the kernel uses for per-CPU value arrays."""
    with open(path) as f:
        text = f.read().strip()
    top = -1
    for part in text.split(","):
        part = part.strip()
        if part:
            top = max(top, int(part.split("-")[-1]))
    return top + 1


class DropCounters:
    """The kernel's loss counters (struct tracer_drops at index 0 of the `drops` map), summed over
    CPUs. The last values read stay available after the map is gone."""

    def __init__(self, map_fd: int, info: MapInfo):
        self.fd = map_fd
        self.info = info
        self.last: dict[str, int] = {}

    def read(self) -> dict[str, int]:
        if self.fd < 0:
            return dict(self.last)
        vs = self.info.value_size
        if self.info.type in PERCPU_MAP_TYPES:
            ncpu, slot = possible_cpus(), (vs + 7) & ~7
        else:
            ncpu, slot = 1, vs
        try:
            raw = libbpf.map_lookup(self.fd, struct.pack("<I", 0), slot * ncpu)
        except OSError:
            return dict(self.last)     # counters are informative: never fail a caller
        total: dict[str, int] = {}
        if raw is not None:
            for c in range(ncpu):
                for k, n in decode_drops(raw[c * slot:c * slot + vs]).items():
                    total[k] = total.get(k, 0) + n
        self.last = total
        return dict(total)

    def close(self) -> None:
        """Keep the last values (read once more now); the map's fd belongs to the program."""
        self.read()
        self.fd = -1
