"""The live view's loop: the tracer's feed and the log in, the model updated, drawn at a bounded rate.

One process (``tracer tail``; `run/attach --follow` start it as the invoking user), one thread: it
waits on the feed socket with a short timeout, decodes what arrived, looks at the log for new complete
lines every ``LOG_POLL_S``, and redraws when something changed but at most ``max_fps`` times a second.
The tracer's capture never waits for it: the feed drops what a slow view does not take.

Ends when the tracer says ``bye``: then the log is complete, so it is read to its end, calls still in
flight are marked as not finished, and the last state is drawn. If the feed closes without a goodbye
while the tracer still runs (it let this view go: too far behind), the view goes on with finished
calls from the log until the tracer process is gone. Without a feed it follows the log until
interrupted, like ``tail -f``.
"""

from __future__ import annotations

import os
import select
import socket
import time

from tracer.live import wire
from tracer.live.follow import Follower, OpenedLog
from tracer.live.model import Model

LOG_POLL_S = 0.1
READ_BUDGET = 4 << 20        # bytes of feed taken per turn before drawing again


class View:
    def __init__(self, log: OpenedLog, feed: socket.socket | None, renderer, *, history: int = 10,
                 max_fps: float = 10.0, max_calls: int = 200):
        self.log = log
        self.feed = feed
        self.renderer = renderer
        self.model = Model(max_calls=max_calls)
        self.follower = Follower(log.fd)
        self.follower.skip_to_last(max(0, history))
        self.min_interval = 1.0 / max(0.5, min(max_fps, 30.0))
        self.decoder = wire.Decoder()
        self.model.feed_state = "connected" if feed is not None else "none"
        self._feed_done = feed is None
        self._bye = False
        self._tracer_pid: int | None = None      # from the feed's hello, watched once the feed is gone
        self._until = None
        self._names: dict[int, str] = {}

    def run(self, stop=None) -> int:
        """Until the tracer ends (with a feed) or ``stop()`` returns true / Ctrl-C (without)."""
        r = self.renderer
        r.start()
        last_draw = 0.0
        last_log = 0.0
        try:
            while True:
                now = time.monotonic()
                if now - last_log >= LOG_POLL_S:
                    self._read_log()
                    last_log = now
                    self.model.expire(now)
                if self.model.dirty and now - last_draw >= self.min_interval:
                    self._name_processes()
                    r.draw(self.model)
                    last_draw = time.monotonic()
                if self._feed_done and self.feed is not None:
                    if self._bye or (self._tracer_pid is not None and not self._tracer_alive()):
                        break
                    self._drop_feed()       # let go, or refused (no hello): the log alone from now
                if stop is not None and stop():
                    break
                if self._until is not None and self._until():
                    break
                wait = max(0.0, min(LOG_POLL_S - (time.monotonic() - last_log),
                                    self.min_interval - (time.monotonic() - last_draw)
                                    if self.model.dirty else LOG_POLL_S))
                if self.feed is not None:
                    ready, _, _ = select.select([self.feed], [], [], wait)
                    if ready:
                        self._read_feed()
                else:
                    time.sleep(wait)
            # the tracer is done: its log is complete once it said bye (or died)
            self._read_log(everything=True)
            self.model.expire(feed_gone=True)
            r.stop(self.model)
        except BaseException:
            r.stop(None)
            raise
        return 0

    def _read_feed(self) -> None:
        taken = 0
        while taken < READ_BUDGET:
            try:
                data = self.feed.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._feed_done = True
                return
            taken += len(data)
            try:
                for h, payload in self.decoder.feed(data):
                    self.model.on_frame(h, payload)
                    if h.get("t") == "hello" and isinstance(h.get("pid"), int):
                        self._tracer_pid = h["pid"]
                    if h.get("t") == "bye":
                        self._feed_done = self._bye = True
            except wire.FrameError as e:
                self.model.warnings.append(f"live feed: {e}; records only from now on")
                self._feed_done = True
                return

    def _name_processes(self) -> None:
        """The traced process' name next to its pid (the connection's thread may be called "HTTP
        Client"): /proc/PID/comm, read once per pid, as the user running the view."""
        for call in self.model.calls.values():
            if not call.pid or call.proc_name or call.k is None:
                continue             # only calls seen live: a pid in an old record may be reused
            name = self._names.get(call.pid)
            if name is None:
                try:
                    with open(f"/proc/{call.pid}/comm", "rb") as f:
                        name = f.read(64).decode("utf-8", "replace").strip()
                except OSError:
                    name = ""
                self._names[call.pid] = name
                if len(self._names) > 1024:
                    self._names.pop(next(iter(self._names)))
            call.proc_name = name

    def _tracer_alive(self) -> bool:
        return self._tracer_pid is not None and os.path.exists(f"/proc/{self._tracer_pid}")

    def _drop_feed(self) -> None:
        """The feed let us go but the tracer runs on (or it refused us: too many views): finished calls
        from the log only, until the tracer ends (when known) or Ctrl-C."""
        self.feed.close()
        self.feed = None
        self.model.feed_state = "records only: the live feed let this view go"
        self.model.expire(feed_gone=True, why="the live feed let this view go; see the log")
        self.model.dirty = True
        pid = self._tracer_pid
        if pid is not None:
            self._until = lambda: not os.path.exists(f"/proc/{pid}")

    def _read_log(self, everything: bool = False) -> None:
        while True:
            batch = self.follower.poll()
            for lineno, rec in batch:
                self.model.on_record(lineno, rec)
            if not everything or not batch:
                break
