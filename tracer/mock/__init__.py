"""A mock Anthropic Messages API over HTTPS, for demos, integration tests and benchmarks.

Pieces
- ``app.py``       ``MockApp.handle(MockRequest) -> MockResponse``: routes and the Claude Code scenario,
                   protocol independent.
- ``knobs.py``     behaviour knobs (server-wide defaults, per-request ``x-mock-*`` headers / ``mock-*``
                   query parameters).
- ``exchange.py``  ``prepare(app, request, recorder)``: runs the app, negotiates content-encoding,
                   records, yields wire body pieces with the configured delays.
- ``server.py``    asyncio TLS server (ALPN) and the HTTP/1.1 front end (httptools).
- ``records.py``   what was received and sent per exchange (in memory and ``records.jsonl``).
- ``certs.py``     a throw-away CA + leaf for 127.0.0.1 / localhost (``cert.pem``, ``key.pem``, ``ca.pem``).
- ``harness.py``   ``MockServer`` (thread) and ``MockServerProcess`` (subprocess) context managers.

HTTP/2 front end (``tracer/mock/h2.py``)
    When the server runs with ``h2=True`` / ``--h2``, ALPN offers
    ``h2, http/1.1``; a connection that picks ``h2`` is handed over after the TLS handshake as::

        await tracer.mock.h2.serve(reader, writer, app, recorder)

    reader, writer  asyncio StreamReader/StreamWriter of the TLS connection (plaintext side)
    app             the MockApp (``app.defaults`` holds the server-wide knobs)
    recorder        a ``records.ConnRecorder`` for this connection (``.conn_id``, protocol "h2")

    ``serve`` returns when the connection is done (the server aborts the transport afterwards if it is
    still open) and must not raise for client misbehaviour. Per stream it should do::

        req = MockRequest(method=..., target=<:path>, headers=[(name, value), ...] (as received,
                          pseudo-headers included), body=..., http_version="2",
                          conn_id=recorder.conn_id, arrival=<time.time() at HEADERS>)
        p = await tracer.mock.exchange.prepare(app, req, recorder, stream_id=sid)
        # p.status, p.headers (no framing headers; content-encoding + x-mock-record-id included),
        # p.length (content-length when known, else None), p.head_only (HEAD/204/304: no body),
        # p.ttfb (sleep before HEADERS), p.close (send GOAWAY after), p.abort_after, p.write_size
        p.sent_head(final_headers_as_sent)
        async for data in p.pieces():  # content-encoded body pieces, delays applied
            ... DATA frames (respect flow control) ...
        p.finish()                     # before the END_STREAM frame; on reset/disconnect:
                                       # p.finish(error="...", complete=False)

Python API: ``MockServer`` / ``MockServerProcess`` (see harness.py), CLI: ``tracer mock-server --help``.
"""

from .app import MockApp, MockRequest, MockResponse
from .harness import MockServer, MockServerProcess
from .knobs import Knobs
from .records import body_bytes, read_records

__all__ = ["MockApp", "MockRequest", "MockResponse", "MockServer", "MockServerProcess", "Knobs",
           "body_bytes", "read_records"]
