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
PROC_EVENT_FIELDS = _parse_struct(_text, "tracer_proc_event")
PROC_FIELDS = _parse_struct(_text, "tracer_proc")
FOLLOW_FIELDS = _parse_struct(_text, "tracer_follow")
DROP_FIELDS = _parse_struct(_text, "tracer_drops")
CONST = _parse_defines(_text)
EVENT_STRUCT = struct.Struct("<" + "".join(f for _, f in EVENT_FIELDS))
DROP_STRUCT = struct.Struct("<" + "".join(f for _, f in DROP_FIELDS))
HEADER_SIZE = EVENT_STRUCT.size
PROC_EVENT_STRUCT = struct.Struct("<" + "".join(f for _, f in PROC_EVENT_FIELDS))
PROC_STRUCT = struct.Struct("<" + "".join(f for _, f in PROC_FIELDS))
FOLLOW_STRUCT = struct.Struct("<" + "".join(f for _, f in FOLLOW_FIELDS))


EV_DATA = CONST["TRACER_EV_DATA"]
EV_CLOSE = CONST["TRACER_EV_CLOSE"]
DIR_READ = CONST["TRACER_DIR_READ"]
DIR_WRITE = CONST["TRACER_DIR_WRITE"]
F_TRUNCATED = CONST["TRACER_F_TRUNCATED"]
F_COPY_FAIL = CONST["TRACER_F_COPY_FAIL"]
F_EX = CONST["TRACER_F_EX"]
EV_FORK = CONST["TRACER_EV_FORK"]
EV_EXEC = CONST["TRACER_EV_EXEC"]
EV_EXIT = CONST["TRACER_EV_EXIT"]
EV_STOP = CONST["TRACER_EV_STOP"]
PROC_TYPES = frozenset({EV_FORK, EV_EXEC, EV_EXIT, EV_STOP})
# the ring length of every process record, which no data record shares (bpf/tracer_event.h)
PROC_RECORD_LEN = PROC_EVENT_STRUCT.size + CONST["TRACER_PROC_NAME_MAX"] + CONST["TRACER_PROC_PAD"]
assert PROC_RECORD_LEN != HEADER_SIZE and (PROC_RECORD_LEN - HEADER_SIZE) & (PROC_RECORD_LEN - HEADER_SIZE - 1)


def _offset(fields: list[tuple[str, str]], name: str) -> int:
    off = 0
    for n, fmt in fields:
        if n == name:
            return off
        off += struct.calcsize("<" + fmt)
    raise KeyError(name)


# Data and process records share the ring; both carry `type` (and `len`) at the same offset.
LEN_OFFSET = _offset(EVENT_FIELDS, "len")        # where a record's payload length and flags are, for
FLAGS_OFFSET = _offset(EVENT_FIELDS, "flags")    # readers that size records without decoding them
TYPE_OFFSET = _offset(EVENT_FIELDS, "type")
assert TYPE_OFFSET == _offset(PROC_EVENT_FIELDS, "type"), "tracer_proc_event.type moved"
assert _offset(EVENT_FIELDS, "len") == _offset(PROC_EVENT_FIELDS, "len")


def record_type(raw: bytes | memoryview) -> int:
    return raw[TYPE_OFFSET] | (raw[TYPE_OFFSET + 1] << 8)


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
    if record_type(raw) in PROC_TYPES:     # another layout: kept whole
        return len(raw)
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


@dataclass(slots=True)
class ProcEvent:
    ts_ns: int
    clone_flags: int
    cgroup_id: int
    pid: int
    tid: int
    ppid: int
    stop: int
    len: int
    type: int
    state: int
    flags: int
    comm: str
    filename: str


assert [n for n, _ in PROC_EVENT_FIELDS] == ["ts_ns", "clone_flags", "cgroup_id", "pid", "tid", "ppid",
                                             "stop", "len", "type", "state", "flags", "comm"]


def decode_proc(raw: bytes | memoryview) -> ProcEvent:
    """Decode one process record (TRACER_EV_FORK .. TRACER_EV_STOP)."""
    vals = PROC_EVENT_STRUCT.unpack_from(raw, 0)
    comm = vals[11].split(b"\0", 1)[0].decode("utf-8", "replace")
    start = PROC_EVENT_STRUCT.size
    name = bytes(raw[start:start + vals[7]]).split(b"\0", 1)[0]
    return ProcEvent(*vals[:11], comm, name.decode("utf-8", "surrogateescape"))
