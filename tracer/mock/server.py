"""The asyncio TLS server and its HTTP/1.1 front end.

One task per connection. After the TLS handshake the ALPN result picks the front end:

- ``http/1.1`` (or no ALPN): :class:`H1Connection` below (httptools parser, keep-alive, pipelining,
  ``Expect: 100-continue``, chunked / content-length / close-delimited bodies).
- ``h2``: only offered when enabled; then the connection is handed to
  ``await tracer.mock.h2.serve(reader, writer, app, recorder)`` (see ``tracer/mock/__init__.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import importlib
import logging
import os
import resource
import socket
import ssl
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Callable

import httptools
import orjson

from .app import MockApp, MockRequest
from .certs import CertPaths, ensure_certs
from .exchange import Prepared, prepare
from .knobs import Knobs
from .records import DEFAULT_BODY_LIMIT, ConnRecorder, Recorder

log = logging.getLogger("tracer.mock")

MAX_REQUEST_BODY = 256 << 20
_DISCONNECT_ERRORS = (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    state_dir: str | None = None          # default: a new temp dir
    h2: bool = False                      # offer h2 in ALPN (needs tracer.mock.h2)
    key_type: str = "ec"                  # ec | rsa
    record_limit: int = DEFAULT_BODY_LIMIT  # bodies above this: only sha256 + length
    keep_records: bool = True             # keep records in memory (server.records())
    record_file: bool = True              # append records.jsonl in the state dir
    knobs: Knobs = field(default_factory=Knobs)
    idle_timeout: float = 300.0           # close idle keep-alive connections after this
    backlog: int = 4096
    tls_version: str = "auto"             # auto (1.2 and 1.3) | 1.2 | 1.3 (only that version)
    request_log: Callable[[str], None] | None = None  # one line per exchange, if given


def _status_line(version: str, status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = {529: "Site Overloaded"}.get(status, "Unknown")
    return f"HTTP/{version} {status} {reason}\r\n".encode("latin-1")


_date_cache = [0, ""]


def _http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = email.utils.formatdate(now, usegmt=True)
    return _date_cache[1]


def _split(data: bytes, size: int):
    if size <= 0 or len(data) <= size:
        yield data
        return
    mv = memoryview(data)
    for i in range(0, len(data), size):
        yield bytes(mv[i:i + size])


class _ParsedRequest:
    __slots__ = ("arrival", "method", "url", "headers", "body", "version", "keep_alive", "size")

    def __init__(self):
        self.arrival = time.time()
        self.method = "GET"
        self.url = bytearray()
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.version = "1.1"
        self.keep_alive = True
        self.size = 0


class _H1Callbacks:
    """httptools callbacks; completed requests queue up in ``ready`` (pipelining)."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.parser: httptools.HttpRequestParser | None = None
        self.cur: _ParsedRequest | None = None
        self.ready: deque[_ParsedRequest] = deque()
        self.error: str | None = None

    def on_message_begin(self):
        self.cur = _ParsedRequest()

    def on_url(self, url: bytes):
        self.cur.url += url

    def on_header(self, name: bytes, value: bytes):
        self.cur.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self):
        p, c = self.parser, self.cur
        c.method = p.get_method().decode("latin-1")
        c.version = p.get_http_version()
        c.keep_alive = p.should_keep_alive()
        for k, v in c.headers:
            if k.lower() == "expect" and v.strip().lower() == "100-continue" and c.version == "1.1":
                self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes):
        c = self.cur
        c.size += len(body)
        if c.size > MAX_REQUEST_BODY:
            raise ValueError("request body too large")
        c.body.append(body)

    def on_message_complete(self):
        self.ready.append(self.cur)
        self.cur = None


class H1Connection:
    def __init__(self, server: "MockServerCore", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, recorder: ConnRecorder):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.rec = recorder

    async def run(self) -> None:
        cb = _H1Callbacks(self.writer)
        parser = httptools.HttpRequestParser(cb)
        cb.parser = parser
        upgrade = False
        while True:
            while cb.ready:
                if not await self.respond(cb.ready.popleft()):
                    return
            if cb.error or upgrade:
                if cb.error:
                    await self.bad_request(cb.error)
                return
            try:
                data = await asyncio.wait_for(self.reader.read(65536), self.server.config.idle_timeout)
            except (asyncio.TimeoutError, *_DISCONNECT_ERRORS):
                return
            if not data:
                return
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                upgrade = True
            except httptools.HttpParserError as e:
                cb.error = f"malformed HTTP/1.1 request: {e}"
            except ValueError as e:
                cb.error = str(e)

    async def bad_request(self, why: str) -> None:
        body = orjson.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": why}})
        head = (_status_line("1.1", 400) + b"content-type: application/json\r\ncontent-length: "
                + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n")
        with contextlib.suppress(*_DISCONNECT_ERRORS, RuntimeError):
            self.writer.write(head + body)
            await self.writer.drain()

    async def respond(self, pr: _ParsedRequest) -> bool:
        """Answer one request; returns whether the connection stays open."""
        req = MockRequest(method=pr.method, target=pr.url.decode("latin-1"), headers=pr.headers,
                          body=b"".join(pr.body), http_version=pr.version,
                          conn_id=self.rec.conn_id, arrival=pr.arrival)
        p = await prepare(self.server.app, req, self.rec)
        w = self.writer
        keep = pr.keep_alive and not p.close
        version = "1.1" if pr.version == "1.1" else "1.0"

        if p.head_only:
            framing = "none"
        else:
            framing = p.transfer
            if framing == "auto":
                framing = "length" if p.length is not None else ("chunked" if version == "1.1" else "close")
            elif framing == "chunked" and version != "1.1":
                framing = "close"
        if framing == "close":
            keep = False
        ok = False
        try:
            if framing == "length":
                await p.materialize()

            headers = list(p.headers)
            if framing == "length" or (p.head_only and p.length is not None and p.status not in (204, 304)
                                       and p.status >= 200):
                headers.append(("content-length", str(p.length)))
            elif framing == "chunked":
                headers.append(("transfer-encoding", "chunked"))
            headers.append(("date", _http_date()))
            headers.append(("server", "tracer-mock"))
            if keep:
                if version == "1.0":
                    headers.append(("connection", "keep-alive"))
            else:
                headers.append(("connection", "close"))
            head = _status_line(version, p.status) + b"".join(
                k.encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n" for k, v in headers) + b"\r\n"

            if p.ttfb > 0:
                await asyncio.sleep(p.ttfb)
            p.sent_head(headers)
            if framing == "none":
                p.finish()
                w.write(head)
                await w.drain()
                ok = True
            else:
                if framing != "length":  # SSE etc.: the head goes out on its own, like real servers
                    w.write(head)
                    head = b""
                ok = await self._send_body(p, framing, head)
        except _DISCONNECT_ERRORS as e:
            p.finish(error=f"client went away: {type(e).__name__}: {e}", complete=False)
            ok = False
        except asyncio.CancelledError:
            p.finish(error="server shutting down", complete=False)
            raise
        except Exception as e:  # keep the server alive whatever happens
            log.exception("error while answering %s %s", req.method, req.target)
            p.finish(error=f"server error: {type(e).__name__}: {e}", complete=False)
            ok = False
        self.server._log_exchange(self.rec, req, p)
        if not ok:
            self.writer.transport.abort()
            return False
        if not keep:
            await self.close()
            return False
        return True

    async def _send_body(self, p: Prepared, framing: str, head: bytes = b"") -> bool:
        """Write the body; ``head`` (if any) is sent together with the first piece."""
        w = self.writer
        writes = 0
        sent = 0

        async def abort() -> bool:
            if head:
                w.write(head)
                await w.drain()
            p.finish(error=f"aborted on purpose after {writes} body writes (abort_after)", complete=False)
            return False

        if p.abort_after == 0:
            return await abort()
        async for data in p.pieces():
            for piece in _split(data, p.write_size):
                if framing == "chunked":
                    w.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                else:
                    sent += len(piece)
                    if framing == "length" and sent >= (p.length or 0):
                        p.finish()  # record first: the client may check it as soon as it has all
                    if head:
                        piece, head = head + piece, b""
                    w.write(piece)
                writes += 1
                await w.drain()
                if 0 <= p.abort_after <= writes:
                    # (with write_size splitting, the record may hold the rest of the current piece)
                    return await abort()
        p.finish()
        if head:  # empty body
            w.write(head)
        if framing == "chunked":
            w.write(b"0\r\n\r\n")
        await w.drain()
        return True

    async def close(self) -> None:
        w = self.writer
        with contextlib.suppress(*_DISCONNECT_ERRORS, RuntimeError):
            w.close()
            await asyncio.wait_for(w.wait_closed(), 5)
        if not w.transport.is_closing():
            w.transport.abort()


class MockServerCore:
    """The server proper; lives on one asyncio loop. ``await start()``, ``await stop()``."""

    def __init__(self, config: ServerConfig | None = None, app: MockApp | None = None):
        self.config = config or ServerConfig()
        self.app = app or MockApp(self.config.knobs)
        self.state_dir: Path | None = None
        self.certs: CertPaths | None = None
        self.recorder: Recorder | None = None
        self.port: int | None = None
        self.h2_module = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._owns_dir = False

    @property
    def url(self) -> str:
        return f"https://{self.config.host}:{self.port}"

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.certs.cert), str(self.certs.key))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.config.tls_version == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        elif self.config.tls_version == "1.3":
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.options |= ssl.OP_NO_COMPRESSION
        protos = ["http/1.1"]
        if self.config.h2:
            # the h2 front end (and the h2 library) is loaded only when asked for
            self.h2_module = importlib.import_module("tracer.mock.h2")
            protos = ["h2", "http/1.1"]
        ctx.set_alpn_protocols(protos)
        keylog = os.environ.get("SSLKEYLOGFILE")
        if keylog:
            ctx.keylog_filename = keylog
        return ctx

    @property
    def alpn(self) -> list[str]:
        return ["h2", "http/1.1"] if self.h2_module is not None else ["http/1.1"]

    async def start(self) -> None:
        cfg = self.config
        _raise_nofile()
        if cfg.state_dir:
            self.state_dir = Path(cfg.state_dir)
            self.state_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.state_dir = Path(tempfile.mkdtemp(prefix="tracer-mock-"))
            self._owns_dir = True
        self.certs = ensure_certs(self.state_dir, cfg.key_type)
        self.recorder = Recorder(self.state_dir / "records.jsonl" if cfg.record_file else None,
                                 keep=cfg.keep_records, body_limit=cfg.record_limit)
        ctx = self._ssl_context()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_exception_handler)
        self._server = await asyncio.start_server(
            self._on_conn, cfg.host, cfg.port, ssl=ctx, backlog=cfg.backlog,
            ssl_handshake_timeout=30, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        info = self.info()
        (self.state_dir / "server.json").write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))

    def info(self) -> dict:
        return {
            "url": self.url, "host": self.config.host, "port": self.port, "pid": os.getpid(),
            "dir": str(self.state_dir), "cert": str(self.certs.cert), "key": str(self.certs.key),
            "ca": str(self.certs.ca),
            "records": str(self.state_dir / "records.jsonl") if self.config.record_file else None,
            "alpn": self.alpn,
        }

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        if self.recorder is not None:
            self.recorder.close()

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = writer.get_extra_info("peername")
            peer_s = f"{peer[0]}:{peer[1]}" if peer else ""
            sslobj = writer.get_extra_info("ssl_object")
            alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
            if alpn == "h2" and self.h2_module is not None:
                rec = self.recorder.connection(peer_s, "h2")
                await self.h2_module.serve(reader, writer, self.app, rec)
                return
            rec = self.recorder.connection(peer_s, "http/1.1")
            await H1Connection(self, reader, writer, rec).run()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("connection handler failed")
        finally:
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                with contextlib.suppress(Exception):
                    writer.transport.abort()

    def _log_exchange(self, rec: ConnRecorder, req: MockRequest, p: Prepared) -> None:
        fn = self.config.request_log
        if fn is None:
            return
        ms = (time.time() - req.arrival) * 1000
        with contextlib.suppress(Exception):
            fn(f"{rec.conn_id} {req.method} {req.target} -> {p.status} "
               f"{p.record._len}B{' ' + p.content_encoding if p.content_encoding else ''} {ms:.1f}ms")

    def records(self) -> list[dict]:
        return self.recorder.records() if self.recorder else []


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    exc = context.get("exception")
    if isinstance(exc, (ssl.SSLError, ConnectionError, asyncio.TimeoutError, TimeoutError)):
        log.debug("ignored: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


def _raise_nofile() -> None:
    with contextlib.suppress(Exception):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 1 << 20
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
