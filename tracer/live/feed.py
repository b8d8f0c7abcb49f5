"""The live feed: pairs in flight, from the parsers to the live views, over a Unix socket.

The running tracer offers the feed next to its log (``log-….live`` beside ``log-….jsonl``): a
``SOCK_STREAM`` Unix socket created *as the invoking user*, mode 0600, so only that user (and root)
can connect; a connecting peer's uid is checked again (``SO_PEERCRED``). ``tracer tail LOG`` connects
to it to show answers as they stream; `run/attach --follow` hands its view one end of a socketpair
instead. Frames are described in tracer/live/wire.py.

Cost. With no client connected the feed is not installed in the capture pipeline at all (the parsers'
``progress`` is None: one None check per body chunk), and its thread sleeps in ``poll``. With clients,
the parsing thread only builds small frames and queues them (request bodies are copied once, response
bytes are passed as they are): all interpretation - Content-Encoding, SSE, JSON, the Messages API -
happens in the view, which runs as the user in its own process. Each client has a bounded queue: when
a client reads too slowly, response bytes for it are dropped and counted (a ``lost`` frame tells the
view, which then waits for the record); a client that reads nothing at all is disconnected. The log
never depends on any of this: the feed observes, it never changes a message or holds the parser up.

What runs as root: this module, inside the tracer (the process that parses). It opens no path other
than binding its socket, which it does in the log's directory as the session opened and checked it,
with the invoking user's file-system identity (tracer/userfiles.py ``UserDir``, tracer/invoker.py
``as_user``); it reads nothing from clients.

Where it runs: next to the capture pipeline it observes (``attach(capture)``), on the parsing side.
``LiveFeed`` itself takes sockets, not paths: a parsing process of its own can be handed the
listening socket (``Listener.sock``, made by the session as the user) and the `--follow` view's end
of the socket pair as descriptors; the session keeps the ``Listener`` to remove the name at the end.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from tracer.invoker import InvokingUser, invoking_user
from tracer.live import wire
from tracer.protocols.base import ConnInfo, Exchange, Message
from tracer.sinks.record import BEDROCK_PATH, Clock, url_of
from tracer.threads import ThreadFailures, start_thread
from tracer.userfiles import UserDir

SUFFIX = ".live"
SESSION_HEADER = "x-claude-code-session-id"
REQUEST_BODY_MAX = 8 << 20     # request bodies (the conversation so far) sent to views up to this size
CLIENT_BUFFER = 8 << 20        # bytes queued per client before its response bytes are dropped
PENDING_MAX = 32 << 20         # bytes between the parsing thread and the feed's thread, at most
CLIENT_HARD_LIMIT = 64 << 20   # a client this far behind (reading nothing) is disconnected
MAX_CLIENTS = 8
MAX_CALLS = 4096               # pairs in flight remembered (the oldest forgotten first)


def live_path(log_path: str | os.PathLike) -> Path:
    """Where the feed of a log is offered: the log's name with ``.live`` for ``.jsonl``."""
    return Path(log_path).with_suffix(SUFFIX)


def _ucred(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


class Listener:
    """The feed's listening socket beside the log, created as the invoking user with mode 0600.

    The name is bound in the log's directory through the directory's descriptor (tracer/userfiles.py
    ``UserDir``: opened and checked once as the user, never looked up by path again), with the user's
    file-system identity. An existing entry of that name makes this fail rather than replace anything.
    ``close()`` removes the name only while it is still the socket created here."""

    def __init__(self, log_path: str | os.PathLike, user: InvokingUser | None = None,
                 directory: UserDir | None = None):
        """``directory``: the log's directory as the session opened it (a handle of it is kept until
        ``close``); without it, the log's parent is opened and checked here."""
        self.path = live_path(log_path)
        self.user = user or invoking_user()
        self.dir = directory.dup() if directory is not None else UserDir(self.path.parent, self.user,
                                                                         create=False)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # the bound inode takes the socket's mode (less the umask): 0600 from the start
            os.fchmod(self.sock.fileno(), 0o600)
            st = self.dir.bind_unix(self.sock, self.path.name)
            self.ident = (st.st_dev, st.st_ino)
            self.sock.listen(MAX_CLIENTS)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            self.dir.close()
            raise

    def close(self) -> None:
        _close(self.sock)
        try:
            self.dir.unlink_if_same(self.path.name, self.ident)
        except OSError:
            pass
        self.dir.close()


class _Client:
    __slots__ = ("sock", "out", "queued", "lost", "partial", "dead")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.out: deque[bytes] = deque()
        self.queued = 0                       # bytes in out
        self.lost: dict[int, int] = {}        # call -> response bytes dropped for this client
        self.partial: memoryview | None = None
        self.dead = False


class LiveFeed:
    """Implements tracer.protocols.base.Progress; serves frames to the clients who connect to ``listen``
    (a listening socket: ``Listener.sock``, or one inherited by a parsing process as a descriptor; its
    name is its creator's to remove) and to pre-connected sockets (``add_client``). ``wants(exchange)``
    is the log's filter: pairs it would not log are not shown either.

    Two sides. The parsing thread (the Progress methods) only appends small tuples to one queue - no
    encoding, no socket - and drops response bytes when the queue already holds ``PENDING_MAX``. The
    feed's own thread takes the queue, merges consecutive response pieces of a call into one frame,
    encodes, and hands the frames to each client within its budget, writing non-blocking sockets."""

    def __init__(self, *, clock: Clock, wants: Callable[[Exchange], bool], log_name: str = "",
                 listen: socket.socket | None = None, allowed_uids: set[int] | None = None):
        self.clock = clock
        self.wants = wants
        self.log_name = log_name
        self.listener = listen
        self.allowed_uids = allowed_uids if allowed_uids is not None else {0, os.geteuid(),
                                                                           invoking_user().uid}
        self.capture = None
        self._clients: list[_Client] = []
        self._calls: dict[int, tuple[int | None, Message]] = {}   # id(request) -> (k or None, request)
        self._next_k = 0
        self._enabled = False
        # the queue between the parsing thread and the feed's thread
        self._qlock = threading.Lock()
        self._items: deque = deque()
        self._backlog = 0
        self._dropped: dict[int, int] = {}          # call -> response bytes dropped before the queue
        self._idle = True
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.last_error = ""
        self.clients_served = 0
        self.refused_clients = 0

    # -- set-up and the end ----------------------------------------------------------------------
    def attach(self, capture) -> None:
        """The capture pipeline whose parsers this feed observes (while it has clients)."""
        self.capture = capture
        self._update_enabled()

    def add_client(self, sock: socket.socket) -> None:
        """A socket already connected to a view (run/attach --follow: one end of a socketpair)."""
        sock.setblocking(False)
        self._hello(sock)
        self._clients = self._clients + [_Client(sock)]
        self.clients_served += 1
        self._update_enabled()
        self._wake()

    def start(self, failures: ThreadFailures | None = None) -> None:
        """The feed's thread. With ``failures`` (the session's, tracer/threads.py) its death is reported
        and counted like any tracer thread's; the parsers then stop feeding it (the log goes on)."""
        if failures is None:
            self._thread = threading.Thread(target=self._run, name="tracer-live", daemon=True)
            self._thread.start()
            return
        self._thread = start_thread("tracer-live", self._run, failures,
                                    "the live views get no more calls in flight (the log is not affected)",
                                    on_death=self._died)

    def _died(self) -> None:
        for c in self._clients:
            c.dead = True
        if self.capture is not None:
            self.capture.set_progress(None)
            self._enabled = False

    def close(self, timeout: float = 3.0) -> None:
        """Say goodbye to the clients (after everything queued for them), then stop. Call once the log
        is complete: a view reads it to its end after the ``bye``."""
        self._post({"t": "bye"})
        end = time.monotonic() + timeout
        while time.monotonic() < end and self._thread is not None and self._thread.is_alive():
            busy = self._items or any((c.out or c.partial is not None) and not c.dead for c in self._clients)
            if not busy:
                break
            time.sleep(0.01)
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.capture is not None and self._enabled:
            self.capture.set_progress(None)
        clients, self._clients = self._clients, []
        for c in clients:
            _close(c.sock)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- Progress (called on the parsing thread; never raises, never blocks) --------------------
    def request_done(self, conn: ConnInfo, stream_id: int | None, request: Message) -> None:
        try:
            self._call(conn, stream_id, request)
        except Exception as e:          # the capture must not notice the view
            self._error(e)

    def response_head(self, conn: ConnInfo, stream_id: int | None, request: Message | None,
                      response: Message) -> None:
        try:
            k = self._call(conn, stream_id, request) if request is not None else None
            if k is not None:
                self._post({"t": "head", "k": k, "ts": self.clock.epoch(response.ts_ns),
                            "status": response.status, "ctype": response.header("content-type"),
                            "enc": response.header("content-encoding")})
        except Exception as e:
            self._error(e)

    def response_data(self, conn: ConnInfo, stream_id: int | None, request: Message | None,
                      data: bytes, ts_ns: int) -> None:
        try:
            entry = self._calls.get(id(request))
            if entry is not None and entry[1] is request:
                k = entry[0]
            else:
                k = self._call(conn, stream_id, request) if request is not None else None
            if k is None:
                return
            n = len(data)
            with self._qlock:
                if self._backlog + n > PENDING_MAX:
                    self._dropped[k] = self._dropped.get(k, 0) + n
                    return
                self._items.append((k, ts_ns, data))
                self._backlog += n
                wake, self._idle = self._idle, False
            if wake:
                self._wake()
        except Exception as e:
            self._error(e)

    def exchange_done(self, ex: Exchange) -> None:
        try:
            entry = self._calls.pop(id(ex.request), None)
            if entry is not None and entry[0] is not None:
                self._post({"t": "end", "k": entry[0], "complete": not ex.incomplete})
        except Exception as e:
            self._error(e)

    def _call(self, conn: ConnInfo, stream_id: int | None, request: Message) -> int | None:
        """The feed's number for the pair of ``request``, announcing it (a ``req`` frame) the first time
        it is seen; None for pairs the log filters out."""
        entry = self._calls.get(id(request))
        if entry is not None and entry[1] is request:
            return entry[0]
        if len(self._calls) >= MAX_CALLS:
            self._calls.pop(next(iter(self._calls)))
        if not self.wants(Exchange(conn=conn, request=request)):
            self._calls[id(request)] = (None, request)
            return None
        self._next_k += 1
        k = self._next_k
        self._calls[id(request)] = (k, request)
        path = request.target.split("?", 1)[0]
        api = path.endswith("/v1/messages") or bool(BEDROCK_PATH.match(path))
        body = request.body
        cut = (not api or body.spilled or body.size > REQUEST_BODY_MAX
               or self._backlog + body.size > PENDING_MAX)
        self._post({"t": "req", "k": k, "conn": conn.conn_id, "sid": stream_id,
                    "ts": self.clock.epoch(request.ts_ns), "pid": conn.pid, "tid": conn.tid,
                    "comm": conn.comm, "method": request.method, "url": url_of(request),
                    "session": request.header(SESSION_HEADER), "ctype": request.header("content-type"),
                    "enc": "" if request.content_encoding else request.header("content-encoding"),
                    "size": body.size, "cut": cut},
                   b"" if cut else body.getvalue())
        return k

    def _error(self, e: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(e).__name__}: {e}"

    def _post(self, header: dict, payload: bytes = b"") -> None:
        """A frame that is always delivered (to every client still keeping up)."""
        with self._qlock:
            self._items.append((header, payload))
            self._backlog += len(payload)
            wake, self._idle = self._idle, False
        if wake:
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _hello(self, sock: socket.socket) -> None:
        data = wire.encode({"t": "hello", "v": wire.VERSION, "pid": os.getpid(), "log": self.log_name})
        try:
            sock.send(data)
        except OSError:
            pass

    def _update_enabled(self) -> None:
        """Installed in the pipeline exactly while somebody is connected."""
        want = any(not c.dead for c in self._clients)
        if self.capture is None or want == self._enabled:
            return
        self._enabled = want
        self.capture.set_progress(self if want else None)
        if not want:
            self._calls.clear()      # the parsers call no more (set_progress waited for them)

    # -- the feed's thread ----------------------------------------------------------------------
    def _take(self) -> list[tuple[bytes, int | None, int]]:
        """The queue as frames: (frame, call or None, response bytes in it); consecutive response
        pieces of one call become one frame."""
        with self._qlock:
            items, self._items = self._items, deque()
            self._backlog = 0
            dropped, self._dropped = self._dropped, {}
            if not items:
                self._idle = True
        frames: list[tuple[bytes, int | None, int]] = []
        for k, n in dropped.items():
            frames.append((wire.encode({"t": "lost", "k": k, "bytes": n}), None, 0))
        run_k, run_ts, run = None, 0, []
        size = 0

        def flush():
            if run:
                data = b"".join(run)
                frames.append((wire.encode({"t": "data", "k": run_k, "ts": self.clock.epoch(run_ts)}, data),
                               run_k, len(data)))
        for it in items:
            if len(it) == 3:
                k, ts, data = it
                if k != run_k or size + len(data) > (1 << 20):
                    flush()
                    run_k, run_ts, run, size = k, ts, [], 0
                run.append(data)
                size += len(data)
            else:
                flush()
                run_k, run, size = None, [], 0
                header, payload = it
                frames.append((wire.encode(header, payload), header.get("k"), 0))
        flush()
        return frames

    def _distribute(self, frames) -> None:
        for c in self._clients:
            if c.dead:
                continue
            for frame, k, nbytes in frames:
                if nbytes and c.queued + len(frame) > CLIENT_BUFFER:
                    c.lost[k] = c.lost.get(k, 0) + nbytes
                    continue
                if c.queued > CLIENT_HARD_LIMIT:
                    c.dead = True           # reads nothing at all: let go
                    break
                if k is not None and c.lost:
                    n = c.lost.pop(k, 0)
                    if n:
                        lost = wire.encode({"t": "lost", "k": k, "bytes": n})
                        c.out.append(lost)
                        c.queued += len(lost)
                c.out.append(frame)
                c.queued += len(frame)

    def _run(self) -> None:
        while not self._stop:
            if self._items:
                self._distribute(self._take())
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            if self.listener is not None:
                poller.register(self.listener, select.POLLIN)
            clients = self._clients
            by_fd = {}
            for c in clients:
                ev = select.POLLIN
                if c.out or c.partial is not None:
                    ev |= select.POLLOUT
                poller.register(c.sock, ev)
                by_fd[c.sock.fileno()] = c
            try:
                events = poller.poll(1000)
            except InterruptedError:
                continue
            changed = False
            for fd, ev in events:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                elif self.listener is not None and fd == self.listener.fileno():
                    changed |= self._accept()
                else:
                    c = by_fd.get(fd)
                    if c is None:
                        continue
                    if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        if not self._readable(c):
                            c.dead = True
                    if not c.dead and ev & select.POLLOUT:
                        self._send(c)
            gone = [c for c in self._clients if c.dead]
            if gone:
                self._clients = [c for c in self._clients if not c.dead]
                for c in gone:
                    _close(c.sock)
            if gone or changed:
                self._update_enabled()
        if self._items:                     # the goodbye, if it came with the stop
            self._distribute(self._take())
            for c in self._clients:
                while (c.out or c.partial is not None) and not c.dead:
                    self._send(c)
                    if c.out or c.partial is not None:
                        break

    def _accept(self) -> bool:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            self._error(e)
            return False
        try:
            _pid, uid, _gid = _ucred(sock)
        except OSError:
            uid = -1
        if uid not in self.allowed_uids or len(self._clients) >= MAX_CLIENTS:
            self.refused_clients += 1
            _close(sock)
            return False
        self.add_client(sock)
        return True

    @staticmethod
    def _readable(c: _Client) -> bool:
        """Clients send nothing; readable means it hung up (or sent something we throw away)."""
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        return bool(data)

    def _send(self, c: _Client) -> None:
        while True:
            if c.partial is None:
                if not c.out:
                    return
                parts = []
                size = 0
                while c.out and size < (1 << 20):
                    f = c.out.popleft()
                    parts.append(f)
                    size += len(f)
                c.queued -= size
                c.partial = memoryview(b"".join(parts))
            try:
                n = c.sock.send(c.partial)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                    self._error(e)
                c.dead = True
                return
            c.partial = c.partial[n:] if n < len(c.partial) else None


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
