"""HTTP/2 front end for the mock server (a real endpoint, built on the ``h2`` library).

    await serve(reader, writer, app, recorder)     # after ALPN picked "h2" (see tracer/mock/__init__.py)

One asyncio task reads frames and feeds ``h2``; every request stream, once its END_STREAM arrives, gets
its own task that runs the app (``exchange.prepare``) and sends the response: HEADERS, then the body
pieces as DATA frames within the peer's flow-control windows (waiting for WINDOW_UPDATE as needed),
then END_STREAM. Many streams run concurrently on one connection; SSE pieces go out as they are
produced. ``p.close`` sends GOAWAY after that response; ``p.abort_after`` aborts the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time

from h2 import events as ev
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import FlowControlError, H2Error, ProtocolError, StreamClosedError
from h2.settings import SettingCodes

from .app import MockRequest
from .exchange import Prepared, prepare

log = logging.getLogger("tracer.mock.h2")

_DISCONNECT = (ConnectionError, OSError, asyncio.IncompleteReadError)
_IDLE_TIMEOUT = 300.0
_LINGER = 2.0               # after GOAWAY and the last response: wait this long for the client's EOF
_WINDOW = 1 << 24            # our receive window: large request bodies flow without round trips


class _Stream:
    def __init__(self, sid: int, headers: list[tuple[str, str]]):
        self.sid = sid
        self.headers = headers
        self.body = bytearray()
        self.arrival = time.time()
        self.window = asyncio.Event()
        self.reset = False
        self.task: asyncio.Task | None = None


class _H2Server:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, app, recorder):
        self.reader = reader
        self.writer = writer
        self.app = app
        self.rec = recorder
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None,
                                                 validate_inbound_headers=True))
        self.streams: dict[int, _Stream] = {}
        self.tasks: set[asyncio.Task] = set()
        self.write_lock = asyncio.Lock()
        self.closing = False      # GOAWAY sent: no new streams
        self.dead = False         # transport gone or aborted

    # ------------------------------------------------------------------ I/O

    async def flush(self) -> None:
        if self.dead:
            return
        async with self.write_lock:     # take h2's bytes under the lock: writes stay in order
            data = self.conn.data_to_send()
            if data:
                self.writer.write(data)
                await self.writer.drain()

    def abort(self) -> None:
        self.dead = True
        with contextlib.suppress(Exception):
            self.writer.transport.abort()
        for s in self.streams.values():
            s.reset = True
            s.window.set()

    async def run(self) -> None:
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
                                   SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW})
        self.conn.increment_flow_control_window(_WINDOW)
        try:
            await self.flush()
            while not self.dead:
                timeout = None if self.streams else _IDLE_TIMEOUT
                if self.closing and not self.streams:
                    timeout = _LINGER   # GOAWAY sent and all answered: give the client time to leave
                try:
                    data = await asyncio.wait_for(self.reader.read(65536), timeout)
                except (asyncio.TimeoutError, *_DISCONNECT):
                    break
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except ProtocolError as e:   # h2 queued a GOAWAY for us
                    log.debug("h2 protocol error from client: %s", e)
                    with contextlib.suppress(*_DISCONNECT):
                        await self.flush()
                    break
                for e in events:
                    self.on_event(e)
                try:
                    await self.flush()
                except _DISCONNECT:
                    break
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        pending = [t for t in self.tasks if not t.done()]
        if pending and not self.dead:
            # The client stopped sending (EOF or GOAWAY): let responses in flight finish briefly.
            with contextlib.suppress(Exception):
                await asyncio.wait(pending, timeout=2)
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if not self.dead:
            with contextlib.suppress(Exception):
                if not self.closing:
                    self.conn.close_connection()
                await self.flush()
            with contextlib.suppress(Exception):
                self.writer.close()
                await asyncio.wait_for(self.writer.wait_closed(), 2)

    # ------------------------------------------------------------------ events

    def on_event(self, e) -> None:
        if isinstance(e, ev.RequestReceived):
            hdrs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in e.headers]
            if self.closing:
                self.conn.reset_stream(e.stream_id, ErrorCodes.REFUSED_STREAM)
                return
            self.streams[e.stream_id] = _Stream(e.stream_id, hdrs)
            if e.stream_ended is not None:
                self.start(e.stream_id)
        elif isinstance(e, ev.DataReceived):
            s = self.streams.get(e.stream_id)
            if s is not None:
                s.body += e.data
            with contextlib.suppress(H2Error):
                self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, ev.StreamEnded):
            s = self.streams.get(e.stream_id)
            if s is not None and s.task is None:
                self.start(e.stream_id)
        elif isinstance(e, ev.StreamReset):
            s = self.streams.get(e.stream_id)
            if s is not None:
                s.reset = True
                s.window.set()
                if s.task is None:
                    self.streams.pop(e.stream_id, None)
        elif isinstance(e, ev.WindowUpdated):
            if e.stream_id == 0:
                for s in self.streams.values():
                    s.window.set()
            elif e.stream_id in self.streams:
                self.streams[e.stream_id].window.set()
        elif isinstance(e, ev.RemoteSettingsChanged):
            for s in self.streams.values():
                s.window.set()
        elif isinstance(e, ev.ConnectionTerminated):
            self.closing = True
            for s in self.streams.values():
                if s.task is None:
                    s.reset = True

    def start(self, sid: int) -> None:
        s = self.streams[sid]
        s.task = asyncio.get_running_loop().create_task(self.respond(s))
        self.tasks.add(s.task)
        s.task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ one stream

    async def respond(self, s: _Stream) -> None:
        pseudo = dict((k, v) for k, v in s.headers if k.startswith(":"))
        req = MockRequest(method=pseudo.get(":method", "GET"), target=pseudo.get(":path", "/"),
                          headers=s.headers, body=bytes(s.body), http_version="2",
                          conn_id=self.rec.conn_id, arrival=s.arrival)
        p = await prepare(self.app, req, self.rec, stream_id=s.sid)
        try:
            await self._send(s, p)
        except asyncio.CancelledError:
            p.finish(error="server shutting down or client gone", complete=False)
            raise
        except (StreamClosedError, _Reset):
            p.finish(error="client reset the stream", complete=False)
        except _DISCONNECT as e:
            p.finish(error=f"client went away: {type(e).__name__}: {e}", complete=False)
            self.abort()
        except Exception as e:    # keep the server alive whatever happens
            log.exception("h2 stream %d failed", s.sid)
            p.finish(error=f"server error: {type(e).__name__}: {e}", complete=False)
            with contextlib.suppress(Exception):
                self.conn.reset_stream(s.sid, ErrorCodes.INTERNAL_ERROR)
                await self.flush()
        finally:
            self.streams.pop(s.sid, None)

    async def _send(self, s: _Stream, p: Prepared) -> None:
        if s.reset:
            raise _Reset()
        if not p.head_only and p.length is None and p.transfer == "length":
            await p.materialize()
        headers = [(k.lower(), v) for k, v in p.headers
                   if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "upgrade")]
        if p.length is not None and p.status >= 200 and p.status not in (204, 304):
            headers.append(("content-length", str(p.length)))
        headers.append(("date", email.utils.formatdate(usegmt=True)))
        headers.append(("server", "tracer-mock"))
        if p.ttfb > 0:
            await asyncio.sleep(p.ttfb)
        if s.reset:
            raise _Reset()
        p.sent_head(headers)
        wire_headers = [(":status", str(p.status))] + headers
        if p.head_only:
            p.finish()
            self.conn.send_headers(s.sid, wire_headers, end_stream=True)
            self._after(p)
            await self.flush()
            return
        self.conn.send_headers(s.sid, wire_headers)
        await self.flush()
        writes = 0
        if p.abort_after == 0:
            return self._abort(p, writes)
        async for data in p.pieces():
            for piece in _split(data, p.write_size):
                await self._send_data(s, piece)
                writes += 1
                if 0 <= p.abort_after <= writes:
                    return self._abort(p, writes)
        p.finish()   # record first: the client may look as soon as it sees END_STREAM
        self.conn.end_stream(s.sid)
        self._after(p)
        await self.flush()

    async def _send_data(self, s: _Stream, data: bytes) -> None:
        mv = memoryview(data)
        while mv:
            if s.reset or self.dead:
                raise _Reset()
            room = min(self.conn.local_flow_control_window(s.sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                s.window.clear()
                await s.window.wait()
                continue
            n = min(room, len(mv))
            try:
                self.conn.send_data(s.sid, mv[:n].tobytes())
            except FlowControlError:
                s.window.clear()
                await s.window.wait()
                continue
            mv = mv[n:]
            await self.flush()

    def _abort(self, p: Prepared, writes: int) -> None:
        p.finish(error=f"aborted on purpose after {writes} body writes (abort_after)", complete=False)
        self.abort()

    def _after(self, p: Prepared) -> None:
        """``close`` knob: GOAWAY right behind END_STREAM (same write), so the client sees both."""
        if p.close and not self.closing:
            self.closing = True
            self.conn.close_connection(last_stream_id=self.conn.highest_inbound_stream_id)


class _Reset(Exception):
    pass


def _split(data: bytes, size: int):
    if size <= 0 or len(data) <= size:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, app, recorder) -> None:
    """Serve one HTTP/2 connection until it ends. Never raises for client misbehaviour."""
    srv = _H2Server(reader, writer, app, recorder)
    try:
        await srv.run()
    except asyncio.CancelledError:
        srv.abort()
        raise
    except Exception:
        log.exception("h2 connection failed")
        srv.abort()
