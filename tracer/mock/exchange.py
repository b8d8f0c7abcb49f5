"""Glue every protocol front end uses: app response -> encoded, recorded, delayed body pieces.

    prepared = await prepare(app, request, conn_recorder, stream_id=None)
    # send prepared.status / prepared.headers (front end adds framing + connection headers)
    async for data in prepared.pieces():     # wire bytes (content-encoded), delays already applied
        send(data)
    prepared.finish()                        # BEFORE the last framing bytes (chunked terminator,
                                             # END_STREAM, close), so the record exists when the
                                             # client sees the end of the response
    # or prepared.finish(error="...", complete=False) when the client went away
"""

from __future__ import annotations

import asyncio
import inspect
from typing import AsyncIterator

from . import encoding as _enc
from .app import MockRequest, MockResponse, error_response
from .records import ConnRecorder, ExchangeRecord

_NO_BODY_STATUS = (204, 304)


class Prepared:
    def __init__(self, request: MockRequest, response: MockResponse, record: ExchangeRecord,
                 content_encoding: str | None):
        self.request = request
        self.response = response
        self.record = record
        self.status = response.status
        self.content_encoding = content_encoding
        self.head_only = request.method.upper() == "HEAD" or response.status in _NO_BODY_STATUS \
            or 100 <= response.status < 200
        hdrs = [(k, v) for k, v in response.headers
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")]
        if content_encoding:
            hdrs.append(("content-encoding", content_encoding))
            hdrs.append(("vary", "accept-encoding"))
        hdrs.append(("x-mock-record-id", str(record.id)))
        self.headers: list[tuple[str, str]] = hdrs
        self._materialized: list[tuple[float, bytes]] | None = None
        self._replay = False
        body = response.body
        if isinstance(body, (bytes, bytearray, memoryview)):
            # small in-memory body: encode now so the length is known
            data = bytes(body)
            if content_encoding:
                e = _enc.Encoder(content_encoding)
                wire = e.feed(data) + e.finish()
            else:
                wire = data
            self._decoded_whole = data
            self._materialized = [(0.0, wire)] if wire else []
            self.length: int | None = len(wire)
        else:
            self._decoded_whole = None
            self.length = None
        self.close = response.close
        self.ttfb = response.ttfb
        self.transfer = response.transfer
        self.abort_after = response.abort_after
        self.write_size = response.write_size

    # -- body --------------------------------------------------------------------------------
    async def _source(self) -> AsyncIterator[tuple[float, bytes]]:
        body = self.response.body
        default = self.response.chunk_delay
        first = True

        def norm(item) -> tuple[float, bytes]:
            nonlocal first
            if isinstance(item, tuple):
                d, data = item
            else:
                d, data = (0.0 if first else default), item
            first = False
            return float(d or 0.0), bytes(data)

        if hasattr(body, "__aiter__"):
            async for item in body:
                yield norm(item)
        else:
            for item in body:
                yield norm(item)

    async def _raw(self) -> AsyncIterator[tuple[float, bytes]]:
        """(delay, wire bytes) with recording; no sleeping."""
        rec = self.record
        if self._materialized is not None:
            if self._decoded_whole is not None:
                rec.body(self._decoded_whole)
                self._decoded_whole = None
            for d, w in self._materialized:
                rec.wire(len(w))
                yield d, w
            return
        enc = _enc.Encoder(self.content_encoding) if self.content_encoding else None
        async for d, data in self._source():
            rec.body(data)
            w = enc.feed(data) if enc else data
            if w:
                rec.wire(len(w))
                yield d, w
        if enc:
            tail = enc.finish()
            if tail:
                rec.wire(len(tail))
                yield 0.0, tail

    async def materialize(self) -> int:
        """Produce the whole (encoded) body now so its length is known; returns the length."""
        if self._materialized is None:
            self._materialized = [p async for p in self._raw()]  # noqa: records the body once
            self.length = sum(len(w) for _, w in self._materialized)
            self._decoded_whole = None
            self._replay = True
        return self.length or 0

    async def pieces(self) -> AsyncIterator[bytes]:
        """Wire body pieces (content-encoded, not framed), sleeping the configured delays."""
        if getattr(self, "_replay", False):
            for d, w in self._materialized or ():
                if d > 0:
                    await asyncio.sleep(d)
                yield w
            return
        async for d, w in self._raw():
            if d > 0:
                await asyncio.sleep(d)
            yield w

    # -- end ---------------------------------------------------------------------------------
    def sent_head(self, headers: list[tuple[str, str]]) -> None:
        """Tell the record the exact head that went out (front ends add framing headers)."""
        self.record.head(self.status, headers, self.content_encoding)
        self.record.started()

    def finish(self, error: str | None = None, complete: bool = True) -> None:
        self.record.finish(error=error, complete=complete)


async def prepare(app, request: MockRequest, recorder: ConnRecorder,
                  stream_id: int | None = None) -> Prepared:
    """Run ``app.handle`` (sync or async) and wrap its answer for sending; starts the record."""
    record = recorder.begin(request, stream_id)
    try:
        resp = app.handle(request)
        if inspect.isawaitable(resp):
            resp = await resp
    except Exception as e:  # the app is supposed to never raise; be safe anyway
        resp = error_response(500, f"mock server error: {type(e).__name__}: {e}")
    try:
        enc = _enc.negotiate(resp.encoding, request.header("accept-encoding"))
    except ValueError as e:
        resp = error_response(400, str(e))
        enc = None
    p = Prepared(request, resp, record, enc)
    record.head(p.status, p.headers, enc)
    return p
