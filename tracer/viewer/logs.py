"""Reading JSONL logs (ours and claude-trace's: the same schema, without the "tracer" key) in bounded memory.

    warnings = []
    for ln in iter_lines(path, warnings):      # LogLine(lineno, offset, length, record) per good line
        ...
    skipped = [w for w in warnings]             # one entry per skipped line, with its number and why

A line up to ``INLINE_LINE`` bytes is parsed whole (orjson). A longer line (a 100 MB streamed answer is
one 111 MB line) is never held in memory: it is scanned in 1 MiB pieces, every string longer than
``BIG_STRING`` bytes is replaced by a :class:`BigString` (where it is in the file, how long it is), and
the rest of the line, now small, is parsed as usual. ``BigString.pieces()`` reads it back, decoded, in
pieces (for SSE reconstruction, hashing or a head for the page). Every pass is linear in the file.

Bad lines (not JSON, too deeply nested, not a request/response record, torn last line) are skipped and
described in ``warnings`` ("line N: why"); nothing raises for what a log contains.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson

INLINE_LINE = 4 << 20        # lines up to this are parsed whole
BIG_STRING = 256 << 10       # in longer lines, strings over this (escaped bytes) stay in the file
_READ = 1 << 20
KEY_CHARS = 1 << 20          # an object key longer than this (hostile log) is cut
_NONCE = secrets.token_hex(8)
_SENTINEL = "\x00tracer-big-" + _NONCE + ":"


def loads(line: bytes | str) -> Any:
    """orjson, falling back to the stdlib for what orjson refuses (lone surrogates, huge integers)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        if isinstance(line, bytes):
            line = line.decode("utf-8", "surrogateescape")
        return json.loads(line)


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj, default=_default)
    except TypeError:  # e.g. strings with lone surrogates, ints past 64 bits, nesting past 254 levels
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), default=_default).encode()


def _default(o: Any) -> Any:
    if isinstance(o, BigString):
        return o.marker()
    raise TypeError(f"cannot serialise {type(o).__name__}")


# ------------------------------------------------------------------------------------- big strings

@dataclass(frozen=True)
class BigString:
    """A JSON string of a log line left in the file: bytes [start, end) are its escaped content."""
    path: str
    start: int
    end: int
    lineno: int

    @property
    def raw_bytes(self) -> int:
        return self.end - self.start

    def pieces(self, size: int = _READ, limit: int | None = None) -> Iterator[str]:
        """The decoded string in pieces of about ``size`` escaped bytes (stops after ``limit`` bytes)."""
        end = self.end if limit is None else min(self.end, self.start + limit)
        pending_high = ""
        with open(self.path, "rb") as f:
            f.seek(self.start)
            pos = self.start
            carry = b""
            while pos < end or carry:
                data = carry + (f.read(min(size, end - pos)) if pos < end else b"")
                pos += len(data) - len(carry)
                last = pos >= end
                cut = len(data) if last else _safe_cut(data)
                part, carry = data[:cut], data[cut:]
                if last and carry:      # (cannot happen: the whole rest is decoded at the end)
                    part, carry = data, b""
                s = _decode(part)
                if pending_high:
                    s = _join_surrogates(pending_high, s)
                    pending_high = ""
                if s and not last and "\ud800" <= s[-1] <= "\udbff":
                    s, pending_high = s[:-1], s[-1]
                if s:
                    yield s
                if last:
                    break
        if pending_high:
            yield pending_high

    def head(self, chars: int) -> tuple[str, bool]:
        """The first ``chars`` characters (at least), and whether that is the whole string."""
        out: list[str] = []
        n = 0
        read = 0
        for s in self.pieces(limit=max(chars * 6 + 16, 4096)):
            out.append(s)
            n += len(s)
            read += 1
            if n >= chars:
                break
        text = "".join(out)
        whole = n <= chars and max(chars * 6 + 16, 4096) >= self.raw_bytes
        return text[:chars], whole and len(text) <= chars

    def marker(self) -> dict:
        return {"$big": True, "line": self.lineno, "bytes": self.raw_bytes}


def _safe_cut(data: bytes) -> int:
    """A cut point in escaped JSON string content that splits no escape sequence and no UTF-8 character
    (surrogate pairs written as two escapes may be split: the decoder joins them)."""
    cut = len(data)
    lo = max(0, cut - 6)
    j = data.rfind(b"\\", lo, cut)
    if j >= 0:
        rs = j
        while rs > 0 and data[rs - 1] == 0x5C:
            rs -= 1
        # the run of backslashes starts at an escape boundary; pairs "\\" are whole escapes
        cut = rs + 2 * ((j - rs) // 2)
    k = cut - 1                      # an incomplete UTF-8 sequence at the end waits for the next piece
    while k > 0 and cut - k < 4 and 0x80 <= data[k] <= 0xBF:
        k -= 1
    if k >= 0 and data[k] >= 0xC0:
        need = 2 if data[k] < 0xE0 else 3 if data[k] < 0xF0 else 4
        if cut - k < need:
            cut = k
    if cut <= 0:
        cut = len(data)   # degenerate (tiny) piece: take all of it
    return cut


def _decode(part: bytes) -> str:
    if not part:
        return ""
    q = b'"' + part + b'"'
    try:
        return orjson.loads(q)
    except orjson.JSONDecodeError:
        return json.loads(q.decode("utf-8", "surrogateescape"))


def _join_surrogates(high: str, s: str) -> str:
    if s and "\udc00" <= s[0] <= "\udfff":
        return (high + s[0]).encode("utf-16", "surrogatepass").decode("utf-16") + s[1:]
    return high + s


# ------------------------------------------------------------------------------------- lines

@dataclass
class LogLine:
    lineno: int          # 1-based
    offset: int          # byte offset of the line in the file
    length: int          # bytes, without the newline
    record: dict         # parsed (strings of a long line may be BigString)


def line_spans(f, start: int = 0) -> Iterator[tuple[int, int, int]]:
    """(lineno, offset, length) of every non-blank line; reads 1 MiB at a time."""
    f.seek(start)
    lineno = 0
    line_start = start
    pos = start
    while True:
        buf = f.read(_READ)
        if not buf:
            break
        i = 0
        while True:
            j = buf.find(b"\n", i)
            if j < 0:
                break
            lineno += 1
            end = pos + j
            if end > line_start:
                yield lineno, line_start, end - line_start
            line_start = end + 1
            i = j + 1
        pos += len(buf)
    if pos > line_start:
        yield lineno + 1, line_start, pos - line_start


def read_line(f, path: str, lineno: int, offset: int, length: int) -> Any:
    """Parse one line: whole when short, else with its big strings left in the file."""
    if length <= INLINE_LINE:
        f.seek(offset)
        data = f.read(length).strip()
        if not data:
            return None
        return loads(data)
    return _lean_load(f, path, lineno, offset, length)


def _lean_load(f, path: str, lineno: int, offset: int, length: int) -> Any:
    """Parse a long line keeping strings longer than BIG_STRING in the file (linear, bounded memory)."""
    reduced = bytearray()
    bigs: list[BigString] = []
    f.seek(offset)
    end = offset + length
    pos = offset             # file offset of buf[0]
    buf = b""
    i = 0                    # position in buf
    in_str = False
    str_start = 0            # file offset of the current string's content
    small: bytearray | None = None   # content of the current string while it is still small
    window = 256
    while True:
        if i >= len(buf):
            if pos + len(buf) >= end:
                break
            pos += len(buf)
            buf = f.read(min(_READ, end - pos))
            i = 0
            if not buf:
                break
        if not in_str:
            q = buf.find(b'"', i)
            if q < 0:
                reduced += buf[i:]
                i = len(buf)
                continue
            reduced += buf[i:q]
            in_str = True
            str_start = pos + q + 1
            small = bytearray()
            window = 256
            i = q + 1
            continue
        # inside a string: look for its closing quote in a growing window (cost linear in its length)
        seg = buf[i:i + window]
        t = seg.replace(b"\\\\", b"\0\0").replace(b'\\"', b"\0\0")
        q = t.find(b'"')
        if q >= 0:
            if small is not None:
                small += seg[:q]
                reduced += b'"' + small + b'"'
            else:
                bigs.append(BigString(path, str_start, pos + i + q, lineno))
                reduced += orjson.dumps(_SENTINEL + str(len(bigs) - 1))
            in_str = False
            small = None
            i += q + 1
            continue
        take = len(seg)
        if t.endswith(b"\\"):           # an escape split by the window: look at it again next time
            take -= 1
            if take == 0:               # a lone backslash at the end of what was read: read on
                nxt = f.read(min(_READ, end - pos - len(buf)))
                if not nxt:
                    break
                buf = buf[i:] + nxt
                pos += i
                i = 0
                continue
        if small is not None:
            small += seg[:take]
            if len(small) > BIG_STRING:
                small = None
        i += take
        window = min(window * 2, _READ)
    if in_str:
        raise ValueError("line ends inside a string (torn line)")
    obj = loads(bytes(reduced))
    global last_reduced_bytes
    last_reduced_bytes = len(reduced)
    return _restore(obj, bigs) if bigs else obj


last_reduced_bytes = 0       # size of the last long line once its big strings were left out


def _restore(obj: Any, bigs: list[BigString]) -> Any:
    """Put the BigStrings back where their sentinels are (iterative: no recursion limit)."""
    def fix(v):
        if isinstance(v, str) and v.startswith(_SENTINEL):
            try:
                return bigs[int(v[len(_SENTINEL):])]
            except (ValueError, IndexError):
                return v
        return v
    obj = fix(obj)
    stack = [obj]
    while stack:
        c = stack.pop()
        if isinstance(c, dict):
            if any(k.startswith(_SENTINEL) for k in c):   # a key too long to be one: read it back, cut
                items = list(c.items())
                c.clear()
                for k, v in items:
                    kb = fix(k)
                    if isinstance(kb, BigString):
                        text, whole = kb.head(KEY_CHARS)
                        k = text if whole else text + "…"
                    c[k] = v
            for k, v in c.items():
                if isinstance(v, str):
                    c[k] = fix(v)
                elif isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(c, list):
            for k, v in enumerate(c):
                if isinstance(v, str):
                    c[k] = fix(v)
                elif isinstance(v, (dict, list)):
                    stack.append(v)
    return obj


def _is_array_file(f) -> bool:
    f.seek(0)
    head = f.read(64).lstrip()
    f.seek(0)
    return head.startswith(b"[")


def iter_lines(path: str | Path, warnings: list[str] | None = None) -> Iterator[LogLine]:
    """Every request/response record of a JSONL log with where it is; bad lines described in warnings.

    A file holding one JSON array of records (some tools export that) is accepted too (read whole).
    """
    path = Path(path)
    spath = str(path)
    with path.open("rb") as f:
        if _is_array_file(f):
            try:
                data = loads(f.read())
            except (ValueError, RecursionError) as e:
                if warnings is not None:
                    warnings.append(f"not a JSON array: {str(e)[:80]}")
                return
            for i, rec in enumerate(data if isinstance(data, list) else []):
                if isinstance(rec, dict):
                    yield LogLine(i + 1, 0, 0, rec)
            return
        spans = path.open("rb")    # its own handle: reading a line moves f's position
        try:
            yield from _records(f, spans, spath, warnings)
        finally:
            spans.close()


def _records(f, spans, spath: str, warnings: list[str] | None) -> Iterator[LogLine]:
    for lineno, off, length in line_spans(spans):
        try:
            rec = read_line(f, spath, lineno, off, length)
        except (ValueError, RecursionError, MemoryError) as e:
            if warnings is not None:
                why = "nested too deeply" if isinstance(e, RecursionError) or "recursion" in str(e).lower() \
                    else f"not JSON ({str(e)[:80]})"
                warnings.append(f"line {lineno}: {why}")
            continue
        if rec is None:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("request"), dict):
            if warnings is not None:
                warnings.append(f"line {lineno}: not a request/response record")
            continue
        yield LogLine(lineno, off, length, rec)


def load_line(path: str | Path, ln: LogLine) -> dict:
    """Read one record again (the second pass of the page build)."""
    with open(path, "rb") as f:
        return read_line(f, str(path), ln.lineno, ln.offset, ln.length)


def iter_records(path: str | Path, warnings: list[str] | None = None) -> Iterator[dict]:
    """Each pair record of a JSONL log (long lines with BigString bodies); bad lines skipped."""
    for ln in iter_lines(path, warnings):
        yield ln.record


def read_records(path: str | Path) -> tuple[list[dict], list[str]]:
    """All records in memory (small logs, tests); the viewer build streams instead."""
    warnings: list[str] = []
    recs = list(iter_records(path, warnings))
    return recs, warnings
