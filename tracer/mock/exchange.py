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
        # (delay, decoded bytes, wire bytes) when the whole body is known up front
        self._materialized: list[tuple[float, bytes, bytes]] | None = None
        body = response.body
        if isinstance(body, (bytes, bytearray, memoryview)):
            # small in-memory body: encode now so the length is known
            data = bytes(body)
            if content_encoding:
                e = _enc.Encoder(content_encoding)
                wire = e.feed(data) + e.finish()
            else:
                wire = data
            self._materialized = [(0.0, data, wire)] if (data or wire) else []
            self.length: int | None = len(wire)
        else:
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

    async def _gen(self) -> AsyncIterator[tuple[float, bytes, bytes]]:
        """(delay, decoded, wire) for a streamed body; no sleeping, no recording."""
        enc = _enc.Encoder(self.content_encoding) if self.content_encoding else None
        async for d, data in self._source():
            yield d, data, (enc.feed(data) if enc else data)
        if enc:
            tail = enc.finish()
            if tail:
                yield 0.0, b"", tail

    async def materialize(self) -> int:
        """Produce the whole (encoded) body now so its length is known; returns the length."""
        if self._materialized is None:
            self._materialized = [p async for p in self._gen()]
            self.length = sum(len(w) for _, _, w in self._materialized)
        return self.length or 0

    async def pieces(self) -> AsyncIterator[bytes]:
        """Wire body pieces (content-encoded, not framed, never empty), after the configured delays.

        A piece is recorded (decoded bytes into the record's body) as it is handed out, i.e. after
        its delay, so an exchange cut short records only what was handed to the transport.
        """
        rec = self.record
        src = self._materialized if self._materialized is not None else None
        if src is not None:
            async def it():
                for x in src:
                    yield x
            source = it()
        else:
            source = self._gen()
        async for d, dec, w in source:
            if d > 0:
                await asyncio.sleep(d)
            rec.body(dec)
            if w:
                rec.wire(len(w))
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
