"""Decoder for `struct tracer_event`, built from bpf/tracer_event.h so C and Python share one definition."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from tracer.paths import bpf_dir

HEADER = bpf_dir() / "tracer_event.h"

_CTYPES = {"u64": "Q", "u32": "I", "u16": "H", "u8": "B", "s64": "q", "s32": "i"}


def _parse_struct(text: str, name: str) -> list[tuple[str, str]]:
    m = re.search(r"struct\s+%s\s*\{(.*?)\};" % re.escape(name), text, re.S)
    if not m:
        raise ValueError(f"struct {name} not found in {HEADER}")
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    body = re.sub(r"//[^\n]*", "", body)
    fields = []
    for decl in body.split(";"):
        decl = decl.strip()
        if not decl:
            continue
        fm = re.fullmatch(r"(\w+)\s+(\w+)\s*(?:\[(\d+)\])?", decl)
        if not fm:
            raise ValueError(f"cannot parse field {decl!r} of struct {name}")
        ctype, fname, arr = fm.groups()
        if ctype == "char" and arr:
            fmt = f"{arr}s"
        elif ctype in _CTYPES and not arr:
            fmt = _CTYPES[ctype]
        else:
            raise ValueError(f"unsupported field type {decl!r} in struct {name}")
        fields.append((fname, fmt))
    return fields


def _parse_defines(text: str) -> dict[str, int]:
    return {k: int(v, 0) for k, v in re.findall(r"#define\s+(TRACER_\w+)\s+(0x[0-9a-fA-F]+|\d+)", text)}


_text = HEADER.read_text()
EVENT_FIELDS = _parse_struct(_text, "tracer_event")
DROP_FIELDS = _parse_struct(_text, "tracer_drops")
CONST = _parse_defines(_text)
EVENT_STRUCT = struct.Struct("<" + "".join(f for _, f in EVENT_FIELDS))
DROP_STRUCT = struct.Struct("<" + "".join(f for _, f in DROP_FIELDS))
HEADER_SIZE = EVENT_STRUCT.size


def _offset(name: str) -> int:
    fmt = "<"
    for n, f in EVENT_FIELDS:
        if n == name:
            return struct.calcsize(fmt)
        fmt += f
    raise KeyError(name)


LEN_OFFSET = _offset("len")        # where a record's payload length and flags are, for readers
FLAGS_OFFSET = _offset("flags")    # that size records without decoding them (capture/ring.py)

EV_DATA = CONST["TRACER_EV_DATA"]
EV_CLOSE = CONST["TRACER_EV_CLOSE"]
DIR_READ = CONST["TRACER_DIR_READ"]
DIR_WRITE = CONST["TRACER_DIR_WRITE"]
F_TRUNCATED = CONST["TRACER_F_TRUNCATED"]
F_COPY_FAIL = CONST["TRACER_F_COPY_FAIL"]
F_EX = CONST["TRACER_F_EX"]


@dataclass(slots=True)
class Event:
    ts_ns: int
    conn: int
    stream_off: int
    pid: int
    tid: int
    total_len: int
    offset: int
    len: int
    type: int
    dir: int
    flags: int
    comm: str
    data: bytes


_NAMES = [n for n, _ in EVENT_FIELDS]
assert _NAMES == ["ts_ns", "conn", "stream_off", "pid", "tid", "total_len", "offset", "len",
                  "type", "dir", "flags", "comm"], _NAMES


_comms: dict[bytes, str] = {}


def _comm(raw: bytes) -> str:
    name = _comms.get(raw)
    if name is None:
        name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        if len(_comms) < 4096:              # thread names are few; never let them grow without bound
            _comms[raw] = name
    return name


def decode(raw: bytes | memoryview) -> Event:
    """Decode one ring-buffer record (header + payload)."""
    vals = EVENT_STRUCT.unpack_from(raw, 0)
    n = 0 if vals[10] & F_COPY_FAIL else vals[7]
    return Event(*vals[:11], _comm(vals[11]), bytes(raw[HEADER_SIZE:HEADER_SIZE + n]))


def record_size(raw: bytes | memoryview) -> int:
    """Bytes of a ring record that carry information: the header and the payload actually copied
    (a ring record is reserved in size classes, so it is usually longer)."""
    n = HEADER_SIZE if raw[FLAGS_OFFSET] & F_COPY_FAIL else HEADER_SIZE + int.from_bytes(
        raw[LEN_OFFSET:LEN_OFFSET + 4], "little")
    return min(n, len(raw))


# How the kernel's BPF ring buffer frames each record (include/uapi/linux/bpf.h): an 8-byte header -
# u32 length with two flag bits, u32 page offset - then the record, the whole padded to 8 bytes.
# The ring readers (capture/ring.py) and the spool's reader of raw ring stretches (capture/spool.py)
# walk records by it.
RINGBUF_BUSY_BIT = 1 << 31         # reserved, not committed yet
RINGBUF_DISCARD_BIT = 1 << 30      # committed as discarded: skip it
RINGBUF_HDR_SZ = 8
RINGBUF_LEN_MASK = ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT) & 0xFFFFFFFF


def decode_drops(raw: bytes) -> dict[str, int]:
    return dict(zip((n for n, _ in DROP_FIELDS), DROP_STRUCT.unpack_from(raw, 0)))
