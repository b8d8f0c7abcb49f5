"""The spool: ring records on their way from the ring buffer to the parsing stage.

The session's ring thread drains the kernel's ring buffer in batches (capture/ring.py `drain`) and
appends them here - a few microseconds per record, no parsing - so the ring never waits for the
parser. The parsing stage (tracer/worker.py, its own low-priority process) reads the spool behind it
at its own pace and catches up when the target stops saturating the CPUs.

The spool is one unnamed file (O_TMPFILE: no name anybody could open, gone when the last descriptor
closes) in a root-only directory under tracer's cache (`<cache>/spool`, 0700), or an anonymous
memory file (memfd) when that is not possible. It is written with pwritev and read with pread, never
mapped: its pages live in the page cache, not in either process' resident memory, and the writer
punches out what the reader reports consumed. `max_backlog` bounds it: past that many bytes not yet
parsed the writer refuses batches, the records stay in the ring and, once the ring is full, the
kernel drops (and counts) new ones - the spool never grows without bound.

Format - segments, each `u32 kind, u32 n` then:
  * KIND_RING: n bytes copied from the kernel's ring buffer as they were: whole committed records,
    each with its 8-byte ring header and its size-class padding (capture/event.py RINGBUF_*). The
    ring thread writes these (capture/ring.py MappedRing): it only has to look at each record's ring
    header; the reader cuts the records out;
  * KIND_RECORDS: n u32 record lengths, then the n records back to back (each a struct tracer_event
    and its payload, cut to the bytes it carries) - from libbpf's reader (capture/ring.py Ring);
  * KIND_CONTROL: n bytes of JSON, an instruction for the parsing stage (close a process'
    connections, a new API host, ...) that must take effect at this point of the record stream.
The writer tells the reader how far the spool is complete by writing the committed length (u64) to
a pipe; closing that pipe means "no more".
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import struct
import sys
import threading
from array import array
from pathlib import Path

from tracer.capture import event as ev

SEGMENT = struct.Struct("<II")
KIND_RECORDS = 1
KIND_CONTROL = 2
KIND_RING = 3
U32 = struct.Struct("<I")
OFFSET = struct.Struct("<Q")

FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
PUNCH_EVERY = 8 << 20        # consumed spool is freed in steps of this size
READ_CHUNK = 1 << 20         # the reader reads up to this much at a time (> the longest segment, < 600 KB)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int


def open_spool_file(directory: Path | None = None) -> tuple[int, str]:
    """(fd, where): an unnamed read-write file in `directory` (default: <cache root>/spool, created
    0700 and required to be this user's own and closed to others), else a memfd."""
    if directory is None:
        from tracer.paths import cache_root
        directory = cache_root() / "spool"
    try:
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(dfd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise PermissionError(errno.EPERM, f"{directory} is not a private directory of uid "
                                                   f"{os.geteuid()} (mode {st.st_mode & 0o7777:o})")
            fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        finally:
            os.close(dfd)
        return fd, f"{directory} (unnamed file)"
    except OSError:
        return os.memfd_create("tracer-spool", os.MFD_CLOEXEC), "memory (memfd)"


def _segment_size(data: bytes) -> int:
    """Bytes the segment at the start of `data` takes - or, when its record lengths are not all in
    `data` yet, how many bytes would show them."""
    kind, n = SEGMENT.unpack_from(data, 0)
    if kind != KIND_RECORDS:
        return SEGMENT.size + n
    start = SEGMENT.size + 4 * n
    if len(data) < start:
        return start
    lens = array("I")
    lens.frombytes(data[SEGMENT.size:start])
    return start + sum(lens)


def _nbytes(b) -> int:
    return b.itemsize * len(b) if isinstance(b, array) else len(b)


class SpoolWriter:
    """The ring thread's end. `store` and `control` may be called from several threads."""

    def __init__(self, fd: int, notify_fd: int, *, max_backlog: int, where: str = "", stderr=None):
        self.fd = fd
        self.notify_fd = notify_fd
        os.set_blocking(notify_fd, False)
        self.max_backlog = max_backlog
        self.where = where
        self.stderr = stderr or sys.stderr
        self.written = 0          # bytes of whole segments in the spool (what the reader may read)
        self.consumed = 0         # bytes the reader has finished with (it reports them)
        self.records = 0
        self.record_bytes = 0
        self.peak_backlog = 0
        self.refused = 0          # batches refused because the backlog was at max_backlog
        self.write_errors = 0
        self.last_error = ""
        self.notified = 0         # the committed length the reader was last told
        self._punched = 0
        self._can_punch = True
        self._failing = False
        self._lock = threading.Lock()
        self.closed = False

    @property
    def backlog(self) -> int:
        return self.written - self.consumed

    def store(self, lens: array, bufs: list) -> bool:
        """A batch of records cut to their content (capture/ring.py `Sink`); False: not taken (full,
        or a write error)."""
        return self._append([SEGMENT.pack(KIND_RECORDS, len(lens)), lens, *bufs], len(lens), sum(lens))

    def store_ring(self, bufs: list, records: int) -> bool:
        """A stretch of the ring buffer holding `records` whole records (capture/ring.py `Sink`)."""
        n = sum(_nbytes(b) for b in bufs)
        return self._append([SEGMENT.pack(KIND_RING, n), *bufs], records, n)

    def _append(self, parts: list, records: int, nbytes: int) -> bool:
        with self._lock:
            if self.closed:
                return False
            if self.written - self.consumed >= self.max_backlog:
                self.refused += 1
                return False
            if not self._write(parts):
                return False
            self.records += records
            self.record_bytes += nbytes
            return True

    def control(self, msg: dict) -> bool:
        """An instruction for the parsing stage, in order with the records stored before it."""
        data = json.dumps(msg, separators=(",", ":")).encode()
        with self._lock:
            if self.closed:
                return False
            return self._write([SEGMENT.pack(KIND_CONTROL, len(data)), data])

    def _write(self, iov: list) -> bool:
        total = sum(_nbytes(b) for b in iov)
        done = 0
        try:
            while done < total:
                n = os.pwritev(self.fd, iov, self.written + done)
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                done += n
                if done < total:
                    iov = _skip(iov, n)
        except OSError as e:
            self.write_errors += 1
            self.last_error = f"{e.strerror or e} ({self.where})"
            if not self._failing:
                self._failing = True
                print(f"tracer: cannot write the capture spool ({self.last_error}); records stay in "
                      "the ring buffer, and what does not fit there is dropped and counted",
                      file=self.stderr, flush=True)
            return False          # `written` stays: the partial segment is overwritten next time
        if self._failing:
            self._failing = False
            print("tracer: writing the capture spool works again", file=self.stderr, flush=True)
        self.written += total
        if self.written - self.consumed > self.peak_backlog:
            self.peak_backlog = self.written - self.consumed
        return True

    def punch(self) -> None:
        """Free the pages (and blocks) of the spool the reader has finished with. Done here, by the
        writer, not by the (low-priority) reader: punching takes the file's lock that writes take
        too, and a preempted low-priority holder would stall the ring thread."""
        end = self.consumed & ~((1 << 20) - 1)
        if not self._can_punch or end - self._punched < PUNCH_EVERY:
            return
        with self._lock:
            if self.closed:
                return
            if _libc.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, self._punched,
                               end - self._punched) != 0:
                self._can_punch = False   # the file system cannot: the file is freed when closed
                return
            self._punched = end

    def notify(self) -> None:
        """Tell the reader how far the spool is complete (cheap when nothing is new)."""
        with self._lock:
            if self.closed or self.written == self.notified:
                return
            try:
                os.write(self.notify_fd, OFFSET.pack(self.written))
                self.notified = self.written
            except BlockingIOError:
                pass              # the reader has 8,192 offsets unread: it will see a later one
            except OSError:
                pass              # the reader is gone; the session notices through its reports

    def close(self) -> None:
        """No more records: the reader finishes what is committed and stops."""
        self.notify()
        with self._lock:
            if self.closed:
                return
            self.closed = True
            os.close(self.notify_fd)


def _skip(iov: list, n: int) -> list:
    """`iov` without its first `n` bytes."""
    out = []
    for b in iov:
        size = _nbytes(b)
        if n >= size:
            n -= size
            continue
        out.append(memoryview(b).cast("B")[n:] if n else b)
        n = 0
    return out


class SpoolReader:
    """The parsing stage's end: segments in order, waiting for the writer as needed."""

    def __init__(self, fd: int, notify_fd: int):
        self.fd = fd
        self.notify_fd = notify_fd
        self.pos = 0              # everything before this has been handed out and processed
        self.committed = 0
        self.eof = False
        self._partial = b""

    def wait(self, timeout: float | None = None) -> bool:
        """Until there is something past `pos` to read, or the writer closed (then False once all
        is read), or `timeout` seconds."""
        while self.committed <= self.pos and not self.eof:
            r, _, _ = select.select([self.notify_fd], [], [], timeout)
            if not r:
                return False
            self._read_notify()
        return self.committed > self.pos

    def _read_notify(self) -> None:
        try:
            data = os.read(self.notify_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            return
        data = self._partial + data
        whole = len(data) - len(data) % OFFSET.size
        self._partial = data[whole:]
        if whole:
            self.committed = max(self.committed, OFFSET.unpack_from(data, whole - OFFSET.size)[0])

    def segments(self):
        """(kind, payload) for every whole segment committed so far: KIND_RECORDS with a list of
        records (memoryviews, valid until the next segment is asked for), KIND_CONTROL with the
        decoded message. `pos` moves past a segment once the caller asks for the next one (it has
        processed this one), and consumed spool is freed as `pos` moves on."""
        want = READ_CHUNK
        while self.pos < self.committed:
            base = self.pos
            data = os.pread(self.fd, min(self.committed - base, want), base)
            view = memoryview(data)
            off = 0
            while off + SEGMENT.size <= len(data):
                kind, n = SEGMENT.unpack_from(data, off)
                body = off + SEGMENT.size
                if kind == KIND_RECORDS:
                    start = body + 4 * n
                    if start > len(data):
                        break
                    lens = array("I")
                    lens.frombytes(view[body:start])
                    end = start + sum(lens)
                    if end > len(data):
                        break
                    recs = []
                    for ln in lens:
                        recs.append(view[start:start + ln])
                        start += ln
                    yield KIND_RECORDS, recs
                elif kind == KIND_RING:
                    end = body + n
                    if end > len(data):
                        break
                    yield KIND_RECORDS, ring_records(data, view, body, end, base)
                elif kind == KIND_CONTROL:
                    end = body + n
                    if end > len(data):
                        break
                    yield KIND_CONTROL, json.loads(bytes(view[body:end]))
                else:
                    raise ValueError(f"spool damaged: segment kind {kind} at offset {base + off}")
                off = end
                self.pos = base + off
            if off == 0:                 # one segment longer than a read: read (at least) all of it
                need = _segment_size(data)
                if need <= len(data) or base + need > self.committed:
                    raise ValueError(f"spool damaged: the segment at offset {base} is incomplete "
                                     f"({self.committed - base} bytes committed from there)")
                want = need
                continue
            want = READ_CHUNK



def ring_records(data: bytes, view: memoryview, start: int, end: int, base: int = 0) -> list:
    """The records in data[start:end], a stretch of the ring buffer (KIND_RING), each cut to the bytes
    it carries (views of `view`); discarded ones left out. A stretch that does not hold whole committed
    records exactly is damage, never skipped silently."""
    unpack = U32.unpack_from
    busy, discard, len_mask = ev.RINGBUF_BUSY_BIT, ev.RINGBUF_DISCARD_BIT, ev.RINGBUF_LEN_MASK
    head, len_at, flags_at, copy_fail = ev.HEADER_SIZE, ev.LEN_OFFSET, ev.FLAGS_OFFSET, ev.F_COPY_FAIL
    type_at, proc_types = ev.TYPE_OFFSET, ev.PROC_TYPES
    recs = []
    p = start
    while p < end:
        hdr = unpack(data, p)[0]
        length = hdr & len_mask
        s = p + ev.RINGBUF_HDR_SZ
        nxt = s + ((length + 7) & ~7)
        if hdr & busy or nxt > end:
            raise ValueError(f"spool damaged: the ring stretch at offset {base + start} has "
                             f"{'an uncommitted' if hdr & busy else 'a truncated'} record at {base + p}")
        if not hdr & discard:
            if length >= head and data[s + type_at] | (data[s + type_at + 1] << 8) in proc_types:
                n = length          # a process record (another layout): whole
            elif length >= head:
                n = head if data[s + flags_at] & copy_fail else head + unpack(data, s + len_at)[0]
                if n > length:
                    n = length
            else:
                n = length          # shorter than a header: the pipeline counts it as malformed
            recs.append(view[s:s + n])
        p = nxt
    return recs


__all__ = ["SpoolWriter", "SpoolReader", "open_spool_file", "ring_records", "KIND_RECORDS", "KIND_CONTROL",
           "KIND_RING"]
