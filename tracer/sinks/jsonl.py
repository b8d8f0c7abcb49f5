"""Batched JSONL writer: whole lines only, on its own thread, never on the capture path.

Records are queued by `submit()` (non-blocking) and written by a background thread in batches of
`batch_size` records or every `flush_ms`, whichever comes first. A failed write (disk full, I/O
error) is rolled back to the last whole line with ftruncate, reported once on stderr, counted as lost
records, and writing resumes with the next batch when space is back.

No single record can stop the writer. One that orjson cannot serialise (JSON nested deeper than the
254 levels orjson writes, an integer beyond 64 bits, ...) is written again with its parsed bodies
replaced by their raw text, and if that fails too, as a stub without bodies or headers; either way
`tracer.serialization_fallback` ("raw_body" or "stub") and `tracer.serialization_error` say so, and
the writer's counters count it. The rest of its batch is written as usual. Should the thread die all
the same, the death is reported (tracer/threads.py) and everything submitted after it is counted lost.
"""

from __future__ import annotations

import base64
import codecs
import math
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import orjson

from tracer.sinks.record import StreamedText, raw_body_text
from tracer.threads import ThreadFailures, start_thread
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
    raw_body_records: int = 0     # written with raw body text: the parsed JSON could not be serialised
    stub_records: int = 0         # written as a stub (no bodies, no headers): nothing else serialised
    last_serialization_error: str = ""


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
                 stderr=None, failures: ThreadFailures | None = None, fd: int | None = None,
                 max_queue: int = 0):
        self.path = Path(path)
        self.batch_size = max(1, batch_size)
        self.flush_s = max(0.001, flush_ms / 1000)
        self.durable = durable
        self.max_queue = max_queue    # submit() waits while this many records are queued (0: never)
        self.stats = WriterStats()
        self._stderr = stderr or sys.stderr
        # opened here, on the caller's thread, before the writer thread exists - or by someone else
        # (`fd`: the session, as the invoking user, for the parsing process): the writer thread only
        # writes to this descriptor and never opens a path
        self._fd = open_log(self.path) if fd is None else fd
        self._q: deque = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._failing = False
        self.dead = False
        failures = failures if failures is not None else ThreadFailures(self._stderr)
        self._thread = start_thread("tracer-jsonl", self._run, failures,
                                    "records are no longer written to the log (counted as lost)",
                                    on_death=self._died)

    @property
    def fd(self) -> int:
        """The log's descriptor. A reader that must read this very file (the OTLP exporter) reopens
        it through /proc/self/fd instead of looking its path up again."""
        return self._fd

    # -- producer side -------------------------------------------------------------------------
    def submit(self, record: dict) -> None:
        with self._cv:
            # a producer that may wait (the parsing process) waits rather than queue without bound
            while (self.max_queue and len(self._q) >= self.max_queue and not self._closing
                   and not self.dead and self._thread.is_alive()):
                self._cv.notify()
                self._cv.wait(0.1)
            if self.dead:
                self.stats.lost_records += 1
                return
            self._q.append(record)
            if self.durable or len(self._q) >= self.batch_size:
                self._cv.notify()

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything submitted so far is on disk (or counted as lost)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._urgent = True        # no waiting for a partial batch to fill up
            self._cv.notify()
            while (self._q or self._busy) and not self.dead and time.monotonic() < deadline:
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
    _urgent = False

    def _died(self) -> None:
        with self._cv:
            self.dead = True
            self._busy = False
            self.stats.lost_records += len(self._q)
            self._q.clear()
            self._cv.notify_all()

    def _run(self):
        while True:
            with self._cv:
                if not self._q and not self._closing:
                    self._cv.wait(self.flush_s)
                if not self._q:
                    self._urgent = False
                    if self._closing:
                        return
                    continue
                if (len(self._q) < self.batch_size and not self._closing and not self.durable
                        and not self._urgent):
                    # give the batch until flush_ms to fill up
                    self._cv.wait(self.flush_s)
                batch = [self._q.popleft() for _ in range(min(len(self._q), self.batch_size))]
                if not self._q:
                    self._urgent = False
                self._busy = True
            done = 0
            try:
                if self.durable:
                    for rec in batch:
                        self._write_batch([rec])
                        done += 1
                else:
                    self._write_batch(batch)
                    done = len(batch)
            except BaseException:
                self.stats.lost_records += len(batch) - done   # what is in hand dies with the thread
                raise
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _write_batch(self, batch: list[dict]) -> None:
        start = os.lseek(self._fd, 0, os.SEEK_END)
        written = 0
        try:
            buf = bytearray()
            for rec in batch:
                streams = _streamed(rec)
                if not streams:
                    buf += self._encode(rec)
                    buf += b"\n"
                    written += 1
                    continue
                # a huge body: write what we have, then stream this line piece by piece
                self._write_all(buf)
                buf = bytearray()
                line_start = os.lseek(self._fd, 0, os.SEEK_END)
                try:
                    self._write_streamed(rec, streams)
                    written += 1
                except OSError:
                    raise
                except Exception as e:   # this record only: its half line goes, the batch goes on
                    os.ftruncate(self._fd, line_start)
                    self.stats.lost_records += 1
                    self.stats.last_serialization_error = f"{type(e).__name__}: {e}"
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
        self.stats.records += written
        self.stats.batches += 1

    def _encode(self, rec: dict, default=None) -> bytes:
        """One record as JSON; never raises (see the module docstring for the fallbacks)."""
        try:
            return orjson.dumps(rec, default=default)
        except Exception as err:   # orjson.JSONEncodeError and anything a broken record may raise
            why = f"{type(err).__name__}: {err}"
        self.stats.last_serialization_error = why
        try:
            line = orjson.dumps(_with_raw_bodies(rec, why), default=default)
            self.stats.raw_body_records += 1
            return line
        except Exception:
            pass
        self.stats.stub_records += 1
        try:
            return orjson.dumps(_stub(rec, why))
        except Exception:
            return orjson.dumps({"tracer": {"serialization_fallback": "stub",
                                            "serialization_error": _clean(why)}})

    def _write_all(self, data) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            self.stats.bytes += n
            view = view[n:]

    def _write_streamed(self, rec: dict, streams: dict[str, StreamedText]) -> None:
        text = self._encode(rec, default=lambda o: _SENTINEL_PREFIX + str(id(o)))
        for key, st in streams.items():
            marker = orjson.dumps(_SENTINEL_PREFIX + key)
            if marker not in text:     # a stub left the body out
                continue
            before, after = text.split(marker, 1)
            self._write_all(before + b'"')
            for piece in _escaped_pieces(st):
                self._write_all(piece)
            text = b'"' + after
        self._write_all(text + b"\n")


def _with_raw_bodies(rec: dict, why: str) -> dict:
    """The record with every parsed (JSON) body replaced by the raw text it was parsed from."""
    bodies = getattr(rec, "bodies", None) or {}
    out = dict(rec)
    tracer = dict(rec.get("tracer") or {})
    replaced = []
    for part in ("request", "response"):
        sect, body = rec.get(part), bodies.get(part)
        if not isinstance(sect, dict) or body is None or isinstance(sect.get("body"), (str, type(None))):
            continue
        text, encoding = raw_body_text(body.getvalue())
        sect = dict(sect)
        if part == "request":
            sect["body"] = text
        else:                       # claude-trace keeps unparsed response bodies in body_raw
            del sect["body"]
            sect["body_raw"] = text
        if encoding:
            tracer[f"{part}_body_encoding"] = encoding
        out[part] = sect
        replaced.append(part)
    if not replaced:
        raise ValueError("no parsed body to replace")
    note = (f"{' and '.join(replaced)} body logged as raw text: its JSON could not be serialised ({why})")
    tracer["serialization_fallback"] = "raw_body"
    tracer["serialization_error"] = why
    tracer["notes"] = [*tracer.get("notes", []), note]
    out["tracer"] = tracer
    out["note"] = f"{rec['note']}; {note}" if isinstance(rec.get("note"), str) else note
    return out


def _clean(v):
    """A JSON scalar that always serialises (anything else becomes None)."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v if -(1 << 63) <= v < (1 << 64) else str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, str):
        return v.encode("utf-8", "replace").decode("utf-8")
    return None


def _stub(rec: dict, why: str) -> dict:
    """What is left of a record that cannot be serialised at all: when, what, who -- no bodies, no
    headers -- and why."""
    def pick(d, keys):
        d = d if isinstance(d, dict) else {}
        return {k: _clean(d.get(k)) for k in keys}

    note = f"record could not be serialised ({why}); bodies and headers left out"
    req = rec.get("request")
    resp = rec.get("response")
    tracer = pick(rec.get("tracer"), ("pid", "tid", "comm", "conn_id", "protocol", "stream_id",
                                      "request_body_bytes", "response_body_bytes"))
    tracer.update(complete=False, notes=[note], serialization_fallback="stub", serialization_error=_clean(why))
    return {
        "request": {**pick(req, ("timestamp", "method", "url")), "headers": {}, "body": None},
        "response": ({**pick(resp, ("timestamp", "status_code")), "headers": {}, "body_raw": ""}
                     if isinstance(resp, dict) else None),
        "logged_at": _clean(rec.get("logged_at")),
        "note": note,
        "tracer": tracer,
    }


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
