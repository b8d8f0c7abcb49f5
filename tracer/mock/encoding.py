"""Streaming Content-Encoding for the mock server (gzip, deflate, br, zstd).

Every chunk is flushed through the compressor (sync flush), so a compressed SSE stream still reaches
the client event by event, as a real server's would.
"""

from __future__ import annotations

import zlib

import brotli
import zstandard

SUPPORTED = ("gzip", "deflate", "br", "zstd")
# Preference when the knob says "auto": first of these the client accepts.
AUTO_ORDER = ("zstd", "br", "gzip", "deflate")


def parse_accept_encoding(value: str | None) -> dict[str, float]:
    """``"gzip, br;q=0.5, *;q=0"`` -> ``{"gzip": 1.0, "br": 0.5, "*": 0.0}`` (names lower-cased)."""
    out: dict[str, float] = {}
    if not value:
        return out
    for item in value.split(","):
        parts = [p.strip() for p in item.split(";")]
        name = parts[0].lower()
        if not name:
            continue
        q = 1.0
        for p in parts[1:]:
            if p.lower().startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        out[name] = q
    return out


def negotiate(knob: str, accept_encoding: str | None) -> str | None:
    """Pick the content-coding to apply, or None for identity.

    ``knob``: ``identity`` (default), ``auto`` (best the client accepts), one of SUPPORTED (used only
    if the client's Accept-Encoding allows it), or one of SUPPORTED suffixed with ``!`` (forced).
    """
    knob = (knob or "identity").strip().lower()
    if knob in ("", "identity", "none", "off"):
        return None
    if knob.endswith("!"):
        name = knob[:-1]
        if name not in SUPPORTED:
            raise ValueError(f"unsupported encoding {name!r}")
        return name
    accepted = parse_accept_encoding(accept_encoding)

    def ok(name: str) -> bool:
        if name in accepted:
            return accepted[name] > 0
        return accepted.get("*", 0) > 0

    if knob == "auto":
        ranked = sorted(AUTO_ORDER, key=lambda n: -(accepted.get(n, accepted.get("*", 0))))
        for name in ranked:
            if ok(name):
                return name
        return None
    if knob not in SUPPORTED:
        raise ValueError(f"unsupported encoding {knob!r}")
    return knob if ok(knob) else None


class Encoder:
    """``feed(bytes) -> bytes`` (flushed) and ``finish() -> bytes`` for one response body."""

    def __init__(self, name: str):
        self.name = name
        if name == "gzip":
            self._z = zlib.compressobj(6, zlib.DEFLATED, 31)
        elif name == "deflate":  # HTTP "deflate" is the zlib format (RFC 1950)
            self._z = zlib.compressobj(6, zlib.DEFLATED, 15)
        elif name == "br":
            self._z = brotli.Compressor(quality=4)
        elif name == "zstd":
            self._z = zstandard.ZstdCompressor(level=3).compressobj()
        else:
            raise ValueError(f"unsupported encoding {name!r}")

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self.name in ("gzip", "deflate"):
            return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        if self.name == "br":
            return self._z.process(data) + self._z.flush()
        return self._z.compress(data) + self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        if self.name in ("gzip", "deflate"):
            return self._z.flush(zlib.Z_FINISH)
        if self.name == "br":
            return self._z.finish()
        return self._z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


def decode(name: str | None, data: bytes) -> bytes:
    """Decode a whole body (for tests and tools)."""
    if not name or name == "identity":
        return data
    if name == "gzip":
        return zlib.decompress(data, 31)
    if name == "deflate":
        return zlib.decompress(data, 15)
    if name == "br":
        return brotli.decompress(data)
    if name == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise ValueError(f"unsupported encoding {name!r}")
