"""Records out of the kernel: the BPF ring buffer (`events` map) and the drop counters (`drops`).

`Ring` is libbpf's ring-buffer reader (ring_buffer__poll / ring_buffer__consume through ctypes): it
calls `callback(record: bytes)` once per committed record, in order, with the memory ordering the
ring protocol needs on every architecture (acquire loads of producer_pos and of each record header,
a release store of consumer_pos). Against a Python reader of its own mapping of the ring
(bench/_mapped_ring.py) libbpf's is as fast or faster per record, and costs the ring's size in RSS
once more (it maps the data area twice); BENCHMARKS.md, "Own code vs libbpf", has the numbers.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Callable

from tracer import libbpf
from tracer.capture.event import decode_drops
from tracer.probes.program import PERCPU_MAP_TYPES, MapInfo

Callback = Callable[[bytes], object]


class Ring:
    """Reader of a BPF_MAP_TYPE_RINGBUF map. A failing callback (a consumer bug) is counted, never
    allowed to stop the ring."""

    def __init__(self, map_fd: int, callback: Callback):
        self.callback = callback
        self.callback_errors = 0
        self.last_callback_error = ""
        self._lock = threading.Lock()
        self._cb = libbpf.RING_SAMPLE_FN(self._sample)     # kept alive as long as the ring
        self._lib = libbpf.lib()
        rb = self._lib.ring_buffer__new(map_fd, self._cb, None, None)
        if not rb:
            raise OSError(22, "libbpf ring_buffer__new failed (see libbpf's message above)")
        self._rb = rb
        self.closed = False

    def _sample(self, _ctx, data, size) -> int:
        try:
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

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._lib.ring_buffer__free(self._rb)
            self._rb = None


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
