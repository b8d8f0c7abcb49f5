"""Content-Encoding decoders (gzip, deflate, br, zstd, identity and stacks of them), streaming and capped.

    dec = StreamDecoder("gzip", cap=256 << 20)
    out = dec.feed(chunk) ... out += dec.flush()
    dec.error         -> "" or why decoding failed (input after that point is not decoded)
    dec.truncated_at  -> 0 or the decoded size at which output was cut (decompression-bomb cap)
"""

from __future__ import annotations

import zlib

import brotli
import zstandard

from tracer.protocols.base import Body

DEFAULT_CAP = 512 << 20


def _bounded(first: bytes, limit: int, pending, more) -> bytes:
    """Collect a decompressor's output in steps of at most `limit` bytes in all: `more(room)` yields
    the next piece while `pending()` says the decoder holds back output."""
    out = [first]
    total = len(first)
    while total < limit and pending():
        o = more(limit - total)
        if not o:
            break
        out.append(o)
        total += len(o)
    return b"".join(out)


class _Zlib:
    def __init__(self, wbits: int):
        self._d = zlib.decompressobj(wbits)
        self._first = wbits

    def feed(self, data: bytes, limit: int) -> bytes:
        # max_length bounds each step so a bomb never materialises past the cap
        d = self._d
        return _bounded(d.decompress(data, limit), limit, lambda: d.unconsumed_tail,
                        lambda room: d.decompress(d.unconsumed_tail, room))

    def flush(self) -> bytes:
        return self._d.flush()


class _Deflate(_Zlib):
    """HTTP 'deflate' is zlib-wrapped per the RFC, raw deflate in practice too often: try both."""

    def __init__(self):
        super().__init__(zlib.MAX_WBITS)
        self._sniffed = False
        self._head = b""      # the zlib header is 2 bytes; a body may arrive 1 byte at a time

    def feed(self, data: bytes, limit: int) -> bytes:
        if not self._sniffed:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return b""
            self._head = b""
            self._sniffed = True
            if (data[0] & 0x0F) != 8 or ((data[0] << 8) | data[1]) % 31:
                self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        return super().feed(data, limit)

    def flush(self) -> bytes:
        if not self._sniffed and self._head:   # a 1-byte body: cannot be zlib-wrapped
            self._sniffed = True
            self._d = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._d.decompress(self._head)
            return out + self._d.flush()
        return super().flush()


class _Brotli:
    def __init__(self):
        self._d = brotli.Decompressor()

    def feed(self, data: bytes, limit: int) -> bytes:
        d = self._d
        return _bounded(d.process(data, output_buffer_limit=limit), limit,
                        lambda: not d.can_accept_more_data(),
                        lambda room: d.process(b"", output_buffer_limit=room))

    def flush(self) -> bytes:
        if not self._d.is_finished():
            raise ValueError("brotli stream truncated")
        return b""


class _CapReached(Exception):
    pass


class _Sink:
    """Receives zstd output in write_size pieces; stops the decoder once the limit is passed."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = 0

    def write(self, b) -> int:
        self.parts.append(bytes(b))
        self.size += len(b)
        if self.size >= self.limit:
            raise _CapReached()
        return len(b)


class _Zstd:
    def __init__(self):
        self._sink = _Sink()
        self._w = zstandard.ZstdDecompressor().stream_writer(self._sink, write_size=65536,
                                                             write_return_read=True)

    def feed(self, data: bytes, limit: int) -> bytes:
        self._sink.parts, self._sink.size, self._sink.limit = [], 0, limit
        try:
            self._w.write(data)
        except _CapReached:
            pass
        return b"".join(self._sink.parts)

    def flush(self) -> bytes:
        return b""


def _make(name: str):
    if name in ("gzip", "x-gzip"):
        return _Zlib(16 + zlib.MAX_WBITS)
    if name == "deflate":
        return _Deflate()
    if name == "br":
        return _Brotli()
    if name == "zstd":
        return _Zstd()
    return None


def parse_encodings(header: str) -> list[str]:
    """Content-Encoding value -> codings in the order they were applied (identity dropped)."""
    return [c.strip().lower() for c in header.split(",") if c.strip() and c.strip().lower() != "identity"]


class StreamDecoder:
    def __init__(self, content_encoding: str, cap: int = DEFAULT_CAP):
        self.codings = parse_encodings(content_encoding)
        self.cap = cap
        self.error = ""
        self.truncated_at = 0
        self.out_size = 0
        self._stages = []
        for c in reversed(self.codings):  # undo the last-applied coding first
            st = _make(c)
            if st is None:
                self.error = f"unsupported content-encoding {c!r}; body kept as received"
                self._stages = []
                break
            self._stages.append(st)

    @property
    def active(self) -> bool:
        return bool(self._stages) and not self.error and not self.truncated_at

    def _run(self, data: bytes, final: bool) -> bytes:
        for st in self._stages:
            room = max(self.cap - self.out_size, 0) + 1
            out = st.feed(data, room) if data else b""
            if final:
                out += st.flush()
            data = out
        return data

    def feed(self, data: bytes) -> bytes:
        if not self._stages:
            return data if not self.error else b""
        if not self.active:
            return b""
        try:
            out = self._run(data, False)
        except Exception as e:  # zlib.error, brotli.error, zstandard.ZstdError, ...
            self.error = f"{'+'.join(self.codings)} decode failed at decoded byte {self.out_size}: {e}"
            return b""
        return self._capped(out)

    def flush(self) -> bytes:
        if not self._stages or not self.active:
            return b""
        try:
            out = self._run(b"", True)
        except Exception as e:
            self.error = f"{'+'.join(self.codings)} stream incomplete at decoded byte {self.out_size}: {e}"
            return b""
        return self._capped(out)

    def _capped(self, out: bytes) -> bytes:
        if self.out_size + len(out) > self.cap:
            out = out[: self.cap - self.out_size]
            self.truncated_at = self.cap
        self.out_size += len(out)
        return out


def decode_body(content_encoding: str, body: Body, cap: int = DEFAULT_CAP) -> tuple[Body, str, int]:
    """Decode a whole Body. Returns (decoded body, error, truncated_at). On error the raw body is returned."""
    dec = StreamDecoder(content_encoding, cap)
    if not dec.codings:
        return body, "", 0
    if dec.error:
        return body, dec.error, 0
    out = Body(spill_at=body.spill_at)
    for chunk in body.chunks():
        out.append(dec.feed(chunk))
        if not dec.active:
            break
    out.append(dec.flush())
    if dec.error:
        out.close()
        return body, dec.error, 0
    return out, "", dec.truncated_at
