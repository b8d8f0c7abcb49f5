"""Frames of the live feed: a small JSON header and an optional byte payload.

    frame = u32 header length | u32 payload length | header (JSON object) | payload     (little-endian)

Headers carry ``"t"``, the frame type:

  hello  {v, pid, log}                      first frame on every connection
  req    {k, conn, sid, ts, pid, tid, comm, method, url, session, ctype, enc, size, cut}
         + the request body (Content-Encoding ``enc`` not removed; empty when ``cut`` is true: too big,
         or not a Messages API call). ``ts`` is the request's start as the log's ``request.timestamp``
         will say it, so a view matches the record to the call by (conn, sid, ts).
  head   {k, ts, status, ctype, enc}       the response's head
  data   {k, ts} + response body bytes      framing removed, Content-Encoding ``enc`` of the head not
  lost   {k, bytes}                         bytes of call k the feed dropped for this client (it was slow)
  end    {k, complete}                      the pair is finished; its record is on its way to the log
  bye    {}                                 the tracer is stopping: the log is complete after this frame

``k`` is the feed's number for a call (unique within one tracer run). Decoding is defensive: a view
never trusts sizes from the socket beyond ``MAX_HEADER`` / ``MAX_PAYLOAD``.
"""

from __future__ import annotations

import struct
from typing import Any, Iterator

import orjson

PREFIX = struct.Struct("<II")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 32 << 20
VERSION = 1


class FrameError(ValueError):
    pass


def encode(header: dict, payload: bytes | bytearray | memoryview = b"") -> bytes:
    h = orjson.dumps(header)
    return PREFIX.pack(len(h), len(payload)) + h + bytes(payload)


class Decoder:
    """Bytes from the socket in any split -> (header, payload) frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
        self._buf += data
        buf = self._buf
        pos = 0
        try:
            while len(buf) - pos >= PREFIX.size:
                hlen, plen = PREFIX.unpack_from(buf, pos)
                if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
                    raise FrameError(f"frame sizes out of range ({hlen}, {plen})")
                end = pos + PREFIX.size + hlen + plen
                if len(buf) < end:
                    break
                h0 = pos + PREFIX.size
                try:
                    header = orjson.loads(bytes(buf[h0:h0 + hlen]))
                except orjson.JSONDecodeError as e:
                    raise FrameError(f"frame header is not JSON: {e}") from None
                if not isinstance(header, dict):
                    raise FrameError("frame header is not an object")
                payload = bytes(buf[h0 + hlen:end])
                pos = end
                yield header, payload
        finally:
            del buf[:pos]

    @property
    def pending(self) -> int:
        return len(self._buf)
