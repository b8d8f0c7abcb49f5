"""What the mock server received and sent, one record per request/response exchange.

A record (a dict; also one line of ``records.jsonl`` in the state directory — a fresh file per server
run — written and flushed when the exchange completes — just before its last byte is sent, so a client that has its whole
response can already find the record)::

    {
      "id": 7,                          # per-server sequence number; also sent as x-mock-record-id
      "conn_id": "c3",                  # per-server connection sequence ("c1", "c2", ...)
      "peer": "127.0.0.1:53422",        # client address
      "protocol": "http/1.1",           # or "h2"
      "stream_id": null,                # HTTP/2 stream id
      "arrival": 1764203400.123456,     # epoch seconds: request's first byte seen
      "response_start": 1764203400.2,   # epoch seconds: response head handed to the transport
      "done": 1764203401.5,             # epoch seconds: record finalized
      "method": "POST", "target": "/v1/messages?beta=true", "path": "/v1/messages",
      "http_version": "1.1",
      "headers": [["Host", "127.0.0.1:4443"], ...],   # request headers as received (case, order)
      "request_body": BODY,
      "status": 200,
      "response_headers": [["content-type", "text/event-stream; charset=utf-8"], ...],  # as sent
      "response_body": BODY,            # bytes BEFORE content-encoding (what a tracer log decodes to)
      "response_chunks": [[0, 1764203400.21], [412, 1764203400.25], ...],
                                        # [offset in the decoded body, epoch seconds] per body piece
                                        # handed to the transport (first MAX_CHUNKS only)
      "content_encoding": "gzip",       # or null
      "wire_body_bytes": 1234,          # body bytes after content-encoding, before chunk framing
      "complete": true,                 # false: client went away / aborted on purpose
      "error": null                     # text when something went wrong
    }

    BODY = {"length": N, "sha256": "hex", "stored": true, "encoding": "utf-8" | "base64", "data": "..."}
           # bodies longer than the record limit: "stored": false, "encoding": null, "data": null

Use :func:`body_bytes` to get a stored body back as bytes.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

DEFAULT_BODY_LIMIT = 4 << 20
MAX_CHUNKS = 4000


def body_bytes(body: dict) -> bytes | None:
    """The bytes of a BODY dict, or None if it was too large to store."""
    if not body.get("stored"):
        return None
    data = body.get("data") or ""
    if body.get("encoding") == "base64":
        return base64.b64decode(data)
    return data.encode("utf-8")


def _body_dict(data: bytes | None, length: int, digest: str, stored: bool) -> dict:
    if not stored or data is None:
        return {"length": length, "sha256": digest, "stored": False, "encoding": None, "data": None}
    try:
        text = data.decode("utf-8")
        return {"length": length, "sha256": digest, "stored": True, "encoding": "utf-8", "data": text}
    except UnicodeDecodeError:
        return {"length": length, "sha256": digest, "stored": True, "encoding": "base64",
                "data": base64.b64encode(data).decode("ascii")}


class Recorder:
    """Collects exchange records for one server; thread-safe reads, writes from the server loop."""

    def __init__(self, path: str | os.PathLike | None = None, keep: bool = True,
                 body_limit: int = DEFAULT_BODY_LIMIT):
        self.path = Path(path) if path else None
        self.keep = keep
        self.body_limit = body_limit
        self._records: list[dict] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._conns = itertools.count(1)
        # a fresh file per server run (ids restart at 1); unbuffered: one write per line
        self._file = open(self.path, "wb", buffering=0) if self.path else None
        self.count = 0

    def connection(self, peer: str = "", protocol: str = "http/1.1") -> "ConnRecorder":
        return ConnRecorder(self, f"c{next(self._conns)}", peer, protocol)

    def _emit(self, rec: dict) -> None:
        line = orjson.dumps(rec) + b"\n"
        with self._lock:
            self.count += 1
            if self.keep:
                self._records.append(rec)
            if self._file is not None:  # unbuffered: visible to readers at once
                mv = memoryview(line)
                while mv:
                    mv = mv[self._file.write(mv):]

    def records(self) -> list[dict]:
        with self._lock:
            return list(self._records)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_records(path: str | os.PathLike) -> list[dict]:
    """Parse a records.jsonl file (ignores a torn last line)."""
    out = []
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return out
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pass
    return out


class ConnRecorder:
    """Per-connection view of a :class:`Recorder` (what a protocol front end is handed)."""

    def __init__(self, recorder: Recorder, conn_id: str, peer: str, protocol: str):
        self.recorder = recorder
        self.conn_id = conn_id
        self.peer = peer
        self.protocol = protocol

    def begin(self, request: Any, stream_id: int | None = None) -> "ExchangeRecord":
        return ExchangeRecord(self, request, stream_id)


class ExchangeRecord:
    """Accumulates one exchange; ``finish()`` emits it (exactly once)."""

    def __init__(self, conn: ConnRecorder, request: Any, stream_id: int | None):
        self.conn = conn
        self.id = next(conn.recorder._ids)
        self.request = request
        self.stream_id = stream_id
        self.status: int | None = None
        self.response_headers: list[tuple[str, str]] = []
        self.response_start: float | None = None
        self.content_encoding: str | None = None
        self._limit = conn.recorder.body_limit
        self._hash = hashlib.sha256()
        self._len = 0
        self._buf: bytearray | None = bytearray()
        self.wire_bytes = 0
        self.chunks: list[list] = []
        self.finished = False

    def head(self, status: int, headers: list[tuple[str, str]], content_encoding: str | None) -> None:
        self.status = status
        self.response_headers = list(headers)
        self.content_encoding = content_encoding

    def started(self) -> None:
        if self.response_start is None:
            self.response_start = time.time()

    def body(self, data: bytes) -> None:
        """Decoded (pre-content-encoding) response body bytes."""
        if not data:
            return
        if len(self.chunks) < MAX_CHUNKS:
            self.chunks.append([self._len, time.time()])
        self._hash.update(data)
        self._len += len(data)
        if self._buf is not None:
            if self._len > self._limit:
                self._buf = None
            else:
                self._buf += data

    def wire(self, n: int) -> None:
        self.wire_bytes += n

    def finish(self, error: str | None = None, complete: bool = True) -> None:
        if self.finished:
            return
        self.finished = True
        req = self.request
        rbody = getattr(req, "body", b"") or b""
        self.conn.recorder._emit({
            "id": self.id,
            "conn_id": self.conn.conn_id,
            "peer": self.conn.peer,
            "protocol": self.conn.protocol,
            "stream_id": self.stream_id,
            "arrival": getattr(req, "arrival", None),
            "response_start": self.response_start,
            "done": time.time(),
            "method": getattr(req, "method", None),
            "target": getattr(req, "target", None),
            "path": getattr(req, "path", None),
            "http_version": getattr(req, "http_version", None),
            "headers": [list(h) for h in getattr(req, "headers", [])],
            "request_body": _body_dict(rbody, len(rbody), hashlib.sha256(rbody).hexdigest(),
                                       len(rbody) <= self._limit),
            "status": self.status,
            "response_headers": [list(h) for h in self.response_headers],
            "response_body": _body_dict(bytes(self._buf) if self._buf is not None else None,
                                        self._len, self._hash.hexdigest(), self._buf is not None),
            "response_chunks": self.chunks,
            "content_encoding": self.content_encoding,
            "wire_body_bytes": self.wire_bytes,
            "complete": complete and error is None,
            "error": error,
        })
