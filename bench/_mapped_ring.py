"""For bench/bpf_loader.py: a ring-buffer reader written in Python over its own mapping of the ring,
to compare with libbpf's (tracer/capture/ring.py). Imports nothing of tracer, so that a process
measuring memory with it carries no more than one with libbpf's reader."""

from __future__ import annotations

import ctypes
import os
import platform
import select
import threading
import time

_libc = ctypes.CDLL(None, use_errno=True)
RINGBUF_BUSY_BIT = 1 << 31
RINGBUF_DISCARD_BIT = 1 << 30
RINGBUF_HDR_SZ = 8
PROT_READ, PROT_WRITE, MAP_SHARED = 1, 2, 1
MAP_FAILED = ctypes.c_void_p(-1).value
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


class MappedRing:
    """The ring buffer read in Python through our own mapping of it - the data area mapped once, not
    twice as libbpf does; records that wrap past its end joined. x86-64 only: its plain aligned loads
    and stores are the acquire/release the ring protocol needs (TSO); elsewhere they are not."""

    callback_errors = 0
    last_callback_error = ""

    def _failed(self, e: Exception) -> None:
        self.callback_errors += 1
        self.last_callback_error = f"{type(e).__name__}: {e}"

    def __init__(self, map_fd: int, size: int, callback):
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
        self._words = self._view.cast("I")
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
        view, words, mask, cb, size = self._view, self._words, self.mask, self.callback, self.size
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
            self._words.release()
            self._view.release()
            _libc.munmap(self._prod_addr, self._prod_len)
            _libc.munmap(self._cons_addr, self.page)
            self._ep.close()
