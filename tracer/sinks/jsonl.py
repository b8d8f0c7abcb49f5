"""Batched JSONL writer: whole lines only, on its own thread, never on the capture path.

Records are queued by `submit()` (non-blocking) and written by a background thread in batches of
`batch_size` records or every `flush_ms`, whichever comes first. A failed write (disk full, I/O
error) is rolled back to the last whole line with ftruncate, reported once on stderr, counted as lost
records, and writing resumes with the next batch when space is back.
"""

from __future__ import annotations

import base64
import codecs
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import orjson

from tracer.sinks.record import StreamedText
from tracer.userfiles import UserDir, make_user_dir

_SENTINEL_PREFIX = "\x00tracer-stream-"


@dataclass
class WriterStats:
    records: int = 0
    bytes: int = 0
    batches: int = 0
    lost_records: int = 0
    write_errors: int = 0
    last_error: str = ""


def make_log_dir(path: Path, user=None) -> Path:
    """Create (0700, as the invoking user) or check the output directory (tracer/userfiles.py)."""
    return make_user_dir(path, user)


def open_log(path: Path, user=None) -> int:
    """Create the log file as the invoking user: exclusively (never through a planted symlink), 0600,
    append-only, in a directory of theirs."""
    path = Path(path)
    with UserDir(path.parent, user, create=False) as d:
        return d.create(path.name, 0o600, os.O_WRONLY | os.O_APPEND)


class JsonlWriter:
    def __init__(self, path: Path, *, batch_size: int = 100, flush_ms: int = 100, durable: bool = False,
                 stderr=None, fd: int | None = None):
        self.path = Path(path)
        self.batch_size = max(1, batch_size)
        self.flush_s = max(0.001, flush_ms / 1000)
        self.durable = durable
        self.stats = WriterStats()
        self._stderr = stderr or sys.stderr
        # opened here, on the caller's thread, before the writer thread exists: the writer thread
        # only writes to this descriptor and never opens a path
        self._fd = open_log(self.path) if fd is None else fd
        self._q: deque = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="tracer-jsonl", daemon=True)
        self._thread.start()

    # -- producer side -------------------------------------------------------------------------
    def submit(self, record: dict) -> None:
        with self._cv:
            self._q.append(record)
            if self.durable or len(self._q) >= self.batch_size:
                self._cv.notify()

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything submitted so far is on disk (or counted as lost)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._cv.notify()
            while (self._q or self._busy) and time.monotonic() < deadline:
                self._cv.wait(0.05)

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout=30)
        try:
            os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)

    # -- writer thread -------------------------------------------------------------------------
    _busy = False

    def _run(self):
        while True:
            with self._cv:
                if not self._q and not self._closing:
                    self._cv.wait(self.flush_s)
                if not self._q:
                    if self._closing:
                        return
                    continue
                if (len(self._q) < self.batch_size and not self._closing and not self.durable):
                    # give the batch until flush_ms to fill up
                    self._cv.wait(self.flush_s)
                batch = [self._q.popleft() for _ in range(min(len(self._q), self.batch_size))]
                self._busy = True
            try:
                if self.durable:
                    for rec in batch:
                        self._write_batch([rec])
                else:
                    self._write_batch(batch)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _write_batch(self, batch: list[dict]) -> None:
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            buf = bytearray()
            for rec in batch:
                streams = _streamed(rec)
                if not streams:
                    buf += orjson.dumps(rec) + b"\n"
                    continue
                # a huge body: write what we have, then stream this line piece by piece
                self._write_all(buf)
                buf = bytearray()
                self._write_streamed(rec, streams)
            self._write_all(buf)
            if self.durable:
                os.fsync(self._fd)
        except OSError as e:
            try:
                os.ftruncate(self._fd, start)   # never leave half a line behind
            except OSError:
                pass
            self.stats.write_errors += 1
            self.stats.lost_records += len(batch)
            self.stats.last_error = f"{e.strerror or e} ({self.path})"
            if not self._failing:
                self._failing = True
                print(f"tracer: cannot write log {self.path}: {e.strerror or e}; records are being "
                      "dropped and counted until writing works again", file=self._stderr, flush=True)
            return
        if self._failing:
            self._failing = False
            print(f"tracer: writing {self.path} works again", file=self._stderr, flush=True)
        self.stats.records += len(batch)
        self.stats.batches += 1

    def _write_all(self, data) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            self.stats.bytes += n
            view = view[n:]

    def _write_streamed(self, rec: dict, streams: dict[str, StreamedText]) -> None:
        line = orjson.dumps(rec, default=lambda o: _SENTINEL_PREFIX + str(id(o)))
        text = line
        for key, st in streams.items():
            marker = orjson.dumps(_SENTINEL_PREFIX + key)
            before, after = text.split(marker, 1)
            self._write_all(before + b'"')
            for piece in _escaped_pieces(st):
                self._write_all(piece)
            text = b'"' + after
        self._write_all(text + b"\n")


def _streamed(rec: dict) -> dict[str, StreamedText]:
    out = {}
    for part in ("request", "response"):
        sect = rec.get(part)
        if not isinstance(sect, dict):
            continue
        for k in ("body", "body_raw"):
            v = sect.get(k)
            if isinstance(v, StreamedText):
                out[str(id(v))] = v
    return out


def _escaped_pieces(st: StreamedText):
    """The JSON-string-escaped content of a big body, in pieces (without the quotes)."""
    if st.base64:
        carry = b""
        for chunk in st.body.chunks(3 << 20):
            data = carry + chunk
            cut = len(data) - len(data) % 3
            carry = data[cut:]
            yield base64.b64encode(data[:cut])
        if carry:
            yield base64.b64encode(carry)
        return
    dec = codecs.getincrementaldecoder("utf-8")("replace")
    for chunk in st.body.chunks(1 << 20):
        s = dec.decode(chunk)
        if s:
            yield orjson.dumps(s)[1:-1]
    s = dec.decode(b"", final=True)
    if s:
        yield orjson.dumps(s)[1:-1]
