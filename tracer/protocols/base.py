"""The contract every connection parser implements, and the objects they produce.

A connection parser is fed the plaintext of one TLS connection, both directions, in the order the
bytes were captured. It yields finished :class:`Exchange` objects (one request/response pair each).
It never does I/O; bodies that grow large spill to an anonymous temporary file inside :class:`Body`
(that is memory management, not output).

    parser = Http1Connection(conn_info)
    for ex in parser.feed(Direction.WRITE, data, ts_ns): ...
    for ex in parser.gap(Direction.READ, nbytes): ...     # bytes lost in capture
    for ex in parser.close(reason): ...                   # connection ended; flush partial pairs

Direction is from the traced process' point of view: WRITE = bytes it sent (requests, for a client),
READ = bytes it received (responses).
"""

from __future__ import annotations

import enum
import tempfile
from dataclasses import dataclass, field
from typing import Iterator, Protocol


class Direction(enum.IntEnum):
    READ = 0   # received by the traced process (response side for a client)
    WRITE = 1  # sent by the traced process (request side for a client)


@dataclass(frozen=True)
class ConnInfo:
    """Identity of one traced connection (stable for the life of the connection)."""

    pid: int
    tid: int
    comm: str
    conn_id: str  # unique across the run, e.g. "1234:0x55d0c0ffee00:3"
    ssl_ptr: int = 0


class Body:
    """An append-only byte buffer that moves to an anonymous temp file past ``spill_at`` bytes.

    Keeps the tracer's memory flat for 100 MB streams. ``chunks()`` re-reads the content in pieces.
    """

    __slots__ = ("_mem", "_file", "size", "spill_at")

    def __init__(self, spill_at: int = 8 << 20):
        self._mem = bytearray()
        self._file = None
        self.size = 0
        self.spill_at = spill_at

    def append(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._mem += data
        if len(self._mem) > self.spill_at:
            self._file = tempfile.TemporaryFile(prefix="tracer-body-")
            self._file.write(self._mem)
            self._mem = bytearray()

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        if self._file is None:
            for i in range(0, len(self._mem), size):
                yield bytes(self._mem[i:i + size])
            return
        self._file.flush()
        self._file.seek(0)
        while True:
            b = self._file.read(size)
            if not b:
                break
            yield b
        self._file.seek(0, 2)

    def getvalue(self) -> bytes:
        """All bytes in memory. Only for bodies known to be small (or tests)."""
        if self._file is None:
            return bytes(self._mem)
        return b"".join(self.chunks())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._mem = bytearray()

    def __len__(self) -> int:
        return self.size


@dataclass
class Message:
    """One HTTP message as seen on the wire (headers in wire order, names as sent)."""

    ts_ns: int = 0            # capture time (CLOCK_MONOTONIC ns) of the message's first byte
    end_ts_ns: int = 0        # capture time of its last byte
    method: str = ""          # requests
    target: str = ""          # requests: path?query as sent (HTTP/1.1) or :path (h2)
    authority: str = ""       # requests: Host header / :authority
    scheme: str = "https"
    status: int = 0           # responses
    reason: str = ""
    http_version: str = "1.1"
    headers: list[tuple[str, str]] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = field(default_factory=Body)        # decoded (Content-Encoding removed) when possible
    wire_bytes: int = 0       # bytes of this message on the wire (head + framed body)
    complete: bool = False
    content_encoding: str = ""
    decode_error: str = ""    # why decoding failed (body then holds the raw bytes)
    decoded_truncated_at: int = 0  # decoded body cut at this many bytes (decompression cap)
    first_body_ts_ns: int = 0 # capture time of the first body byte (time to first token etc.)
    unknown_headers: int = 0  # h2: header fields that could not be decoded (unknown HPACK state)
    # Where bytes are missing from ``body``: [offset in body, bytes the capture lost there (wire bytes,
    # framing included), captured bytes then skipped to find the framing again]
    holes: list[list[int]] = field(default_factory=list)

    def hole(self, gap_bytes: int, skipped_bytes: int = 0) -> list[int]:
        """Mark a hole at the body's current end (a following hole at the same offset merges)."""
        if self.holes and self.holes[-1][0] == self.body.size:
            h = self.holes[-1]
            h[1] += gap_bytes
            h[2] += skipped_bytes
            return h
        h = [self.body.size, gap_bytes, skipped_bytes]
        self.holes.append(h)
        return h

    _index: dict | None = field(default=None, repr=False, compare=False)   # header(): lower-case name -> first value
    _indexed: int = field(default=0, repr=False, compare=False)          # len(headers) when _index was built

    def header(self, name: str, default: str = "") -> str:
        """The first value of header `name` (any case): a dict lookup, the index built once."""
        idx = self._index
        if idx is None or self._indexed != len(self.headers):
            idx = {}
            for k, v in self.headers:
                idx.setdefault(k.lower(), v)
            self._index, self._indexed = idx, len(self.headers)
        return idx.get(name.lower(), default)


class ChunkTimes(list):
    """(offset in the body, capture ts_ns) of the reads that carried body bytes - at most `limit` of
    them, spread evenly over the whole body whatever its length: when full, every other point is
    dropped and from then on only every 2nd (4th, ...) read is kept. The newest read is always the
    last point. (A 100 MB answer in 1 KB events has ~100,000 reads: kept as tuples they were ~11 MB;
    the record keeps 4,000 of them - sinks/record.py.)"""

    __slots__ = ("limit", "_stride", "_n", "_provisional")

    def __init__(self, points=(), limit: int = 8192):
        super().__init__(points)
        self.limit = max(2, limit)
        self._stride = 1
        self._n = len(self)
        self._provisional = False       # the last point stands in for a read between kept ones

    def append(self, point: tuple[int, int]) -> None:
        n = self._n                     # this read's number, from 0: kept when a multiple of the stride
        self._n += 1
        if self._provisional:
            super().pop()
        super().append(point)
        self._provisional = n % self._stride != 0
        if len(self) > self.limit:      # every kept point is a multiple of the stride: keep every other
            newest = super().pop() if self._provisional else None
            del self[1::2]
            self._stride *= 2
            if newest is None and n % self._stride:
                newest = point          # on the old stride, not the new one: it stays as the last point
            if newest is not None and self[-1] is not newest:
                super().append(newest)
            self._provisional = newest is not None and self[-1] is newest and n % self._stride != 0


@dataclass
class Exchange:
    """One request/response pair on a connection. ``response`` is None when none arrived."""

    conn: ConnInfo
    request: Message
    response: Message | None = None
    notes: list[str] = field(default_factory=list)   # human-readable: what was odd about this pair
    gaps: list[tuple[str, int]] = field(default_factory=list)  # (direction, bytes lost inside pair)
    stream_id: int | None = None  # HTTP/2 stream id, None for HTTP/1.x
    protocol: str = "http/1.1"
    # (offset in the response body before content decoding, capture ts_ns) for each captured read that
    # carried response body bytes: lets deferred parsing time SSE events (first token, tokens/s)
    body_times: list[tuple[int, int]] = field(default_factory=ChunkTimes)

    @property
    def incomplete(self) -> bool:
        return (self.response is None or not self.response.complete
                or not self.request.complete or bool(self.gaps))


@dataclass
class ParserStats:
    """Counters a connection parser keeps; summed into the run summary."""

    exchanges: int = 0
    skipped_bytes: int = 0        # bytes dropped while resynchronising (mid-stream attach, after gaps)
    parse_errors: int = 0
    gap_bytes: int = 0            # bytes the capture lost (reported by gap())
    decode_errors: int = 0
    unknown_header_blocks: int = 0  # h2: header blocks that could not be decoded
    not_http: int = 0             # connections whose bytes are neither HTTP/1.x nor HTTP/2

    def add(self, other: "ParserStats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


class Progress(Protocol):
    """Optional observer of pairs *while* they happen (the live view's feed, tracer/live/feed.py).

    A parser holds one in its ``progress`` attribute, None by default: every call site is a None check,
    so a parser nobody observes pays nothing more. The pipeline sets it (``Capture.set_progress``).
    Called on the parsing thread, in stream order, from inside the parsers (an llhttp callback, say):
    an observer must return at once, never raise, and never change the messages it is shown. A pair is identified by its request ``Message`` object (the same object
    ends up in the finished ``Exchange``); ``request`` may be None for a response whose request was not
    seen (attach mid-stream).

      request_done(conn, stream_id, request)            the request's head and body are complete
      response_head(conn, stream_id, request, response) the response's head arrived
      response_data(conn, stream_id, request, data, ts_ns)
                                                        response body bytes as they arrive, framing
                                                        removed, Content-Encoding *not* removed
      exchange_done(ex)                                 the pair is finished (by the pipeline, just
                                                        before it is handed on to be logged)
    """

    def request_done(self, conn: ConnInfo, stream_id: int | None, request: Message) -> None: ...

    def response_head(self, conn: ConnInfo, stream_id: int | None, request: Message | None,
                      response: Message) -> None: ...

    def response_data(self, conn: ConnInfo, stream_id: int | None, request: Message | None,
                      data: bytes, ts_ns: int) -> None: ...

    def exchange_done(self, ex: Exchange) -> None: ...


class ConnectionParser(Protocol):
    stats: ParserStats
    progress: Progress | None

    def feed(self, direction: Direction, data: bytes, ts_ns: int) -> list[Exchange]: ...

    def gap(self, direction: Direction, nbytes: int, ts_ns: int) -> list[Exchange]: ...

    def close(self, reason: str, ts_ns: int) -> list[Exchange]: ...
