"""Records out of the kernel: the BPF ring buffer (`events` map) and the drop counters (`drops`).

Two ways to take records out, for the two ways the session parses (tracer/stage.py):

  * `Ring` is libbpf's ring-buffer reader (ring_buffer__poll / ring_buffer__consume through ctypes):
    it calls `callback(record: bytes)` once per committed record, in order, with the memory ordering
    the ring protocol needs on every architecture (acquire loads of producer_pos and of each record
    header, a release store of consumer_pos). Parsing in the tracer process (--no-deferred-parsing)
    uses it; against a Python per-record reader of its own mapping of the ring libbpf's is as fast
    or faster (BENCHMARKS.md, "Own code vs libbpf").
  * `drain(sink)` moves every committed record, in order and in batches, to a `Sink` (the spool,
    capture/spool.py), releasing them to the kernel once the sink has taken them - how deferred
    parsing gets records out of the ring. `MappedRing` (x86-64) does it through its own single
    mapping of the ring, and moves the ring's bytes *as they are*: a stretch of whole committed
    records - their 8-byte ring headers and class padding included - goes to the spool by one
    pwritev straight from the ring (`Sink.store_ring`). The only Python per record is a look at its
    ring header (committed yet? how long?); cutting records to their content and skipping padding is
    left to the parsing process, which reads them back (capture/spool.py KIND_RING). It also takes
    8 MB less RSS than libbpf's double mapping of the default ring. x86-64 is TSO: plain aligned
    loads of producer_pos and of record headers are acquire loads, a plain store of consumer_pos a
    release store, which is what the protocol needs; other architectures need barriers Python cannot
    issue, so there `Ring.drain` (libbpf's reader, records collected per pass, cut to their content)
    hands them over with `Sink.store`. (BENCHMARKS.md, "Deferred parsing", has the measurements.)
`drain_reader` picks one; TRACER_RING_READER=mapped|libbpf forces it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import select
import struct
import threading
import time
from array import array
from typing import Callable, Protocol

from tracer import libbpf
from tracer.capture import event as ev
from tracer.capture.event import RINGBUF_BUSY_BIT, RINGBUF_HDR_SZ, decode_drops
from tracer.probes.program import PERCPU_MAP_TYPES, MapInfo

Callback = Callable[[bytes], object]


class Sink(Protocol):
    """Where a drain puts records (capture/spool.py SpoolWriter). Both return True when taken (the
    buffers are not used after the call), False when refused."""

    def store(self, lens: array, bufs: list) -> bool:
        """Records cut to their content: their lengths (array of u32) and the buffers that hold them
        back to back."""

    def store_ring(self, bufs: list, records: int) -> bool:
        """A stretch of the ring as the kernel laid it out: `records` whole entries (8-byte ring header,
        record, padding to 8) in one buffer, or two when it wraps round the ring's end."""


DRAIN_BATCH_RECORDS = 1000   # Ring.drain: records a store() call takes at most
DRAIN_BATCH_BYTES = 512 << 10
RAW_BATCH_BYTES = 512 << 10  # MappedRing.drain: ring bytes a store_ring() call takes (+ the last record: < 600 KB)


class Drainer(Protocol):
    """What the session's ring thread needs under deferred parsing."""
    size: int
    lost_records: int
    lost_bytes: int
    peak_fill: int

    def drain(self, sink: Sink) -> tuple[int, int, str]: ...
    def wait(self, timeout_ms: int) -> None: ...
    def close(self) -> None: ...


class _Waits:
    """Readers with an epoll on the ring's fd (`_ep`) and a `closed` flag."""

    def wait(self, timeout_ms: int) -> None:
        """Sleep until the kernel wakes the reader (a forced wake-up) or `timeout_ms` passes."""
        if self.closed:
            time.sleep(max(0, timeout_ms) / 1000)
            return
        try:
            self._ep.poll(timeout_ms / 1000 if timeout_ms >= 0 else -1)
        except (OSError, ValueError):        # closed under us
            pass


class Ring(_Waits):
    """Reader of a BPF_MAP_TYPE_RINGBUF map. A failing callback (a consumer bug) is counted, never
    allowed to stop the ring."""

    lost_records = 0      # records a drain's store refused: libbpf had released them already
    lost_bytes = 0
    peak_fill = 0         # (not known through libbpf)
    # drain(): process records (fork/exec/exit/stop) are also handed, copied, to this - the process
    # follower, which holds a stopped process until it has seen them - as well as to the sink
    on_process: Callable[[bytes], None] | None = None

    def __init__(self, map_fd: int, callback: Callback | None = None, size: int = 0):
        self.callback = callback
        self.size = size
        self.callback_errors = 0
        self.last_callback_error = ""
        self._collect: list | None = None                  # records of a drain() in progress
        self._lock = threading.Lock()
        self._cb = libbpf.RING_SAMPLE_FN(self._sample)     # kept alive as long as the ring
        self._lib = libbpf.lib()
        rb = self._lib.ring_buffer__new(map_fd, self._cb, None, None)
        if not rb:
            raise OSError(22, "libbpf ring_buffer__new failed (see libbpf's message above)")
        self._rb = rb
        self._ep = select.epoll()
        self._ep.register(map_fd, select.EPOLLIN)
        self.closed = False

    def _sample(self, _ctx, data, size) -> int:
        try:
            if self._collect is not None:
                self._collect.append(data[:size])
            else:
                self.callback(data[:size])
        except Exception as e:
            self.callback_errors += 1
            self.last_callback_error = f"{type(e).__name__}: {e}"
        return 0

    def _call(self, fn, *args) -> int:
        with self._lock:
            if self.closed:
                return 0
            rc = fn(self._rb, *args)
        return max(rc, 0)              # only -EINTR (a signal) is possible: nothing was lost

    def poll(self, timeout_ms: int) -> int:
        """Wait up to `timeout_ms` for records and hand out all there are; how many."""
        if self.closed:
            time.sleep(max(0, timeout_ms) / 1000)
            return 0
        return self._call(self._lib.ring_buffer__poll, timeout_ms)

    def consume(self) -> int:
        """Hand out every committed record without waiting; how many."""
        return self._call(self._lib.ring_buffer__consume)

    def drain(self, sink: Sink) -> tuple[int, int, str]:
        """As MappedRing.drain, for architectures without it: libbpf hands the records over one by
        one (collected per pass) and releases each as it does, so a batch the sink refuses is lost
        - counted in lost_records / lost_bytes."""
        got: list[bytes] = []
        with self._lock:
            if self.closed:
                return 0, 0, ""
            self._collect = got
            try:
                self._lib.ring_buffer__consume(self._rb)
            finally:
                self._collect = None
        on_process = self.on_process
        if on_process is not None:
            for r in got:
                if ev.record_type(r) in ev.PROC_TYPES:
                    on_process(bytes(r))
        records = nbytes = 0
        for i in range(0, len(got), DRAIN_BATCH_RECORDS):
            bufs = [r[:ev.record_size(r)] for r in got[i:i + DRAIN_BATCH_RECORDS]]
            lens = array("I", map(len, bufs))
            n = sum(lens)
            if not sink.store(lens, bufs):
                self.lost_records += len(got) - i
                self.lost_bytes += n + sum(ev.record_size(r) for r in got[i + DRAIN_BATCH_RECORDS:])
                return records, nbytes, "refused"
            records += len(bufs)
            nbytes += n
        return records, nbytes, ""

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._lib.ring_buffer__free(self._rb)
            self._rb = None
            self._ep.close()


# -- the batch drain through our own mapping (x86-64) ---------------------------------------------


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PROT_READ, PROT_WRITE, MAP_SHARED = 1, 2, 1
MAP_FAILED = ctypes.c_void_p(-1).value


class MappedRing(_Waits):
    """The ring drained through our own single mapping of it (x86-64 only, see the module docstring)."""

    lost_records = 0
    lost_bytes = 0
    peak_fill = 0         # most bytes found waiting in the ring at a drain
    on_process: Callable[[bytes], None] | None = None     # as Ring.on_process

    def __init__(self, map_fd: int, size: int):
        if platform.machine() != "x86_64":
            raise OSError(95, f"the mapped ring reader relies on x86-64 memory ordering, "
                              f"not {platform.machine()}'s")
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        self.size = size
        self.mask = size - 1
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
        self._v32 = self._view.cast("I")
        self._ep = select.epoll()
        self._ep.register(map_fd, select.EPOLLIN)
        self.closed = False

    @property
    def consumer_pos(self) -> int:
        return self._consumer.value

    def _copy(self, pos: int, length: int) -> bytes:
        s = pos & self.mask
        if s + length <= self.size:
            return bytes(self._view[s:s + length])
        return bytes(self._view[s:]) + bytes(self._view[:s + length - self.size])

    def drain(self, sink: Sink) -> tuple[int, int, str]:
        """Every committed record to `sink`, as ring stretches of about RAW_BATCH_BYTES (see the module
        docstring). Returns (records, ring bytes, why it stopped early: "busy" - at a record still
        being written -, "refused" - the sink said no -, or "")."""
        with self._lock:
            if self.closed:
                return 0, 0, ""
            return self._drain(sink)

    def _drain(self, sink: Sink) -> tuple[int, int, str]:
        v8, v32, mask, size = self._view, self._v32, self.mask, self.size
        consumer, producer = self._consumer, self._producer
        max_b = RAW_BATCH_BYTES
        busy, len_mask = RINGBUF_BUSY_BIT, ev.RINGBUF_LEN_MASK
        records = nbytes = 0
        cons = consumer.value
        if producer.value - cons > self.peak_fill:
            self.peak_fill = producer.value - cons
        while True:
            prod = producer.value
            if cons >= prod:
                return records, nbytes, ""
            # the only work per record: its 8-byte ring header (committed? how long?) - and, while
            # processes are followed, the type of a record with the length of a process record (no
            # data record has it; a discarded record's length has the discard bit: never equal)
            lim = min(prod, cons + max_b)
            pos, n, stop = cons, 0, ""
            on_process = self.on_process
            proc_len = ev.PROC_RECORD_LEN if on_process is not None else -1
            while pos < lim:
                hdr = v32[(pos & mask) >> 2]
                if hdr & busy:
                    stop = "busy"
                    break
                if hdr == proc_len:
                    t = pos + RINGBUF_HDR_SZ + ev.TYPE_OFFSET
                    if v8[t & mask] | (v8[(t + 1) & mask] << 8) in ev.PROC_TYPES:
                        on_process(self._copy(pos + RINGBUF_HDR_SZ, proc_len))
                pos += ((hdr & len_mask) + RINGBUF_HDR_SZ + 7) & ~7
                n += 1
            if pos == cons:
                return records, nbytes, stop
            s, length = cons & mask, pos - cons
            if s + length <= size:
                bufs = [v8[s:s + length]]
            else:                                              # wraps: two pieces, one stretch
                self.wrapped_records += 1
                bufs = [v8[s:], v8[:s + length - size]]
            if not sink.store_ring(bufs, n):
                return records, nbytes, "refused"             # consumer_pos stays: the kernel keeps them
            cons = pos
            consumer.value = cons
            records += n
            nbytes += length
            if stop:
                return records, nbytes, stop

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._v32.release()
            self._view.release()
            _libc.munmap(self._prod_addr, self._prod_len)
            _libc.munmap(self._cons_addr, self.page)
            self._ep.close()



def drain_reader(map_fd: int, size: int, reader: str | None = None) -> Drainer:
    """The ring of map `map_fd` (`size` bytes of data) opened for drain(): our own mapping on
    x86-64, libbpf's reader elsewhere (TRACER_RING_READER=mapped|libbpf forces one)."""
    reader = reader or os.environ.get("TRACER_RING_READER") or (
        "mapped" if platform.machine() == "x86_64" else "libbpf")
    if reader == "mapped":
        return MappedRing(map_fd, size)
    if reader == "libbpf":
        return Ring(map_fd, None, size)
    raise ValueError(f"unknown ring reader {reader!r} (mapped or libbpf)")


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
