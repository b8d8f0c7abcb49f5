"""For bench/bpf_loader.py: a per-record reader of the ring in Python over its own mapping (the
mapping of tracer/capture/ring.py MappedRing, which tracer uses for its batch drain), calling back once
per record like libbpf's reader does (tracer/capture/ring.py Ring), to compare the two."""

from __future__ import annotations

import time

from tracer.capture.ring import RINGBUF_BUSY_BIT, RINGBUF_DISCARD_BIT, RINGBUF_HDR_SZ
from tracer.capture.ring import MappedRing as _Mapping


class MappedRing(_Mapping):
    """The ring read in Python record by record through its own mapping; records that wrap past the
    end of the data area joined. x86-64 only (see tracer/capture/ring.py)."""

    callback_errors = 0
    last_callback_error = ""

    def _failed(self, e: Exception) -> None:
        self.callback_errors += 1
        self.last_callback_error = f"{type(e).__name__}: {e}"

    def __init__(self, map_fd: int, size: int, callback):
        super().__init__(map_fd, size)
        self.callback = callback

    def consume(self) -> int:
        """Hand out every committed record; returns how many."""
        with self._lock:
            if self.closed:
                return 0
            return self._consume()

    def _consume(self) -> int:
        n = 0
        view, words, mask, cb, size = self._view, self._v32, self.mask, self.callback, self.size
        consumer, producer = self._consumer, self._producer
        cons = consumer.value
        while True:
            prod = producer.value
            progressed = False
            while cons < prod:
                off = cons & mask
                hdr = words[off >> 2]                          # records start 8-byte aligned
                if hdr & RINGBUF_BUSY_BIT:
                    consumer.value = cons
                    return n          # the producer's commit will wake us (consumer is at it)
                length = hdr & ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT)
                cons += (length + RINGBUF_HDR_SZ + 7) & ~7
                if not hdr & RINGBUF_DISCARD_BIT:
                    start = (off + RINGBUF_HDR_SZ) & mask      # headers never straddle the end
                    end = start + length
                    if end <= size:
                        record = view[start:end].tobytes()
                    else:                                      # wraps: join the two pieces
                        self.wrapped_records += 1
                        record = view[start:].tobytes() + view[:end - size].tobytes()
                    try:
                        cb(record)
                    except Exception as e:
                        self._failed(e)
                    n += 1
                    if not n & 63:                             # hand space back to the producer
                        consumer.value = cons
                progressed = True
            consumer.value = cons
            if not progressed:
                return n

    def poll(self, timeout_ms: int) -> int:
        n = self.consume()
        if n:
            return n
        if self.closed:
            time.sleep(max(0, timeout_ms) / 1000)
            return 0
        self.wait(timeout_ms)
        return self.consume()
