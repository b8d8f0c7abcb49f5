"""HTTP/2 frame headers: the connection preface, the per-type rules, and finding frame boundaries in
bytes that did not start at one (attached mid-connection, or after a capture gap).

A boundary is trusted when a chain of plausible frame headers follows it (known type and flags,
stream-id and length rules, odd stream ids below 2**20, no empty DATA without END_STREAM, ...), each
frame's length leading to the next header: 2 frames long where a captured chunk began (SSL_write output
is frame-aligned), else 4 long, or 2 ending exactly where the captured bytes end.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# type -> (allowed flag bits, stream id rule: 1 must be non-zero, 0 must be zero, None either,
#          length rule: exact int, ("min", n), ("mul", n) or None)
FRAME_RULES: dict[int, tuple[int, int | None, object]] = {
    0x0: (0x01 | 0x08, 1, None),                   # DATA: END_STREAM, PADDED
    0x1: (0x01 | 0x04 | 0x08 | 0x20, 1, None),     # HEADERS: END_STREAM, END_HEADERS, PADDED, PRIORITY
    0x2: (0x00, 1, 5),                             # PRIORITY
    0x3: (0x00, 1, 4),                             # RST_STREAM
    0x4: (0x01, 0, ("mul", 6)),                    # SETTINGS
    0x5: (0x04 | 0x08, 1, ("min", 4)),             # PUSH_PROMISE
    0x6: (0x01, 0, 8),                             # PING
    0x7: (0x00, 0, ("min", 8)),                    # GOAWAY
    0x8: (0x00, None, 4),                          # WINDOW_UPDATE
    0x9: (0x04, 1, None),                          # CONTINUATION
    0xA: (0x00, None, ("min", 2)),                 # ALTSVC (RFC 7838)
    0xC: (0x00, 0, None),                          # ORIGIN (RFC 8336)
    0x10: (0x00, 0, ("min", 4)),                   # PRIORITY_UPDATE (RFC 9218)
}
SYNC_MAX_FRAME = 16384        # the default SETTINGS_MAX_FRAME_SIZE; used when guessing boundaries
MAX_FRAME = (1 << 24) - 1
HDR = struct.Struct(">HBBBL")


def looks_like_h2(data: bytes) -> bool:
    """True when ``data`` starts with the HTTP/2 client connection preface (or a prefix of it, >= 4 bytes)."""
    data = bytes(data[:len(PREFACE)])
    if len(data) >= len(PREFACE):
        return data == PREFACE
    return len(data) >= 4 and PREFACE.startswith(data)


def frame_len(data, off: int, max_len: int, strict: bool = False) -> int | None:
    """Total size (header + payload) of the frame whose header starts at ``off``, or None if implausible.

    ``strict`` (used to find frame boundaries in unsynchronised bytes) also rejects frames that are
    legal but that real peers (practically) do not send: empty DATA without END_STREAM, empty header
    fragments, a zero WINDOW_UPDATE increment, padding longer than the frame, stream frames on even
    (server-push) stream ids or on ids beyond 2**20."""
    hi, lo, typ, flags, sid = HDR.unpack_from(data, off)
    length = (hi << 8) | lo
    if length > max_len or strict and sid & 0x80000000:   # the reserved bit is ignored when synced
        return None
    sid &= 0x7FFFFFFF
    rule = FRAME_RULES.get(typ)
    if rule is None:
        return None
    allowed, sid_rule, len_rule = rule
    if strict and flags & ~allowed:     # receivers must ignore unknown flags; only guessing rejects them
        return None
    if sid_rule == 1 and sid == 0 or sid_rule == 0 and sid != 0:
        return None
    if isinstance(len_rule, int):
        if length != len_rule:
            return None
    elif len_rule is not None:
        kind, n = len_rule
        if kind == "min" and length < n or kind == "mul" and length % n:
            return None
    if typ == 0x4 and flags & 0x1 and length:   # SETTINGS ACK carries nothing
        return None
    if strict:
        if length == 0 and (typ in (0x1, 0x9) or typ == 0x0 and not flags & 0x1):
            return None
        if typ == 0x8 and off + 13 <= len(data) and not int.from_bytes(data[off + 9:off + 13], "big"):
            return None
        if typ in (0x0, 0x1, 0x3, 0x9) and (not sid & 1 or sid >= 1 << 20):
            return None
        if typ in (0x0, 0x1) and flags & 0x8 and (
                not length or off + 9 < len(data) and data[off + 9] >= length):
            return None
    return 9 + length


def chain(data, off: int, max_len: int = SYNC_MAX_FRAME) -> tuple[bool, int, bool]:
    """Walk frame headers from ``off``: (all plausible, complete frames, ends exactly at the end)."""
    n = 0
    end = len(data)
    while off + 9 <= end:
        size = frame_len(data, off, max_len, strict=True)
        if size is None:
            return False, n, False
        off += size
        if off > end:
            return True, n, False
        n += 1
    return True, n, off == end


def looks_like_h2_frames(data: bytes) -> bool:
    """Heuristic for a connection already running when we attached: ``data`` starts with a plausible
    sequence of HTTP/2 frame headers (known type, valid flags, stream-id and length rules, lengths
    within the default maximum frame size), chained by their lengths up to the end of ``data``."""
    if len(data) < 9:
        return False
    ok, n, _ = chain(memoryview(data), 0)
    return ok and (n >= 1 or frame_len(data, 0, SYNC_MAX_FRAME, strict=True) is not None)


def h2_frames_offset(data: bytes) -> int | None:
    """Where a confident chain of HTTP/2 frames starts inside ``data`` (a chunk that may begin in the
    middle of a frame, e.g. the first SSL_read after attaching), or None. Confident: 4 plausible
    frames chained by their lengths, or 2 that end exactly at the end of ``data``."""
    mv = memoryview(data)
    try:
        off = 0
        while off + 9 <= len(data):
            ok, n, exact = chain(mv, off)
            if ok and (n >= 4 or exact and n >= 2):
                return off
            off = next_candidate(data, off)
        return None
    finally:
        mv.release()


def next_candidate(buf, off: int) -> int:
    """The next offset after ``off`` where a frame header may start: its first byte is 0 for every
    payload below 64 KiB."""
    nxt = buf.find(b"\x00", off + 1)
    return nxt if nxt >= 0 else len(buf)


def find_boundary(buf, starts: list[int], lenient: bool = False) -> tuple[int | None, int | None]:
    """(a trusted frame boundary in ``buf``, or None; where a chain that is plausible but too short to
    tell begins, or None). ``starts``: offsets where captured chunks began, tried first (a chain of 2
    there; with ``lenient``, at close, 1 frame ending exactly at the end). Then anywhere: a chain of 4,
    or of 2 ending exactly at the end."""
    mv = memoryview(buf)
    found = wait = None
    try:
        for c in starts:
            if c + 9 > len(buf):
                break
            ok, n, exact = chain(mv, c)
            if ok and (n >= 2 or lenient and exact and n == 1):
                return c, None
            if ok and wait is None:
                wait = c
        off = 0
        while off + 9 <= len(buf) and (wait is None or off < wait):
            ok, n, exact = chain(mv, off)
            if ok and (n >= 4 or exact and n >= 2):
                found = off
                break
            if ok:          # plausible so far but too short to tell: wait for more
                wait = off
                break
            off = next_candidate(buf, off)
    finally:
        mv.release()
    return found, wait
