"""Background threads whose death is never silent.

tracer's work happens on threads (ring poll, parsing worker, log writer). If one of them dies, the
capture goes on without it -- the ring fills, records pile up or stop being written -- so a death is
reported at once on stderr, kept for the end-of-run summary, and makes tracer exit with
``EXIT_FAILED`` (see ``tracer run --help``).
"""

from __future__ import annotations

import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Callable

from tracer.textsafe import printable

EXIT_FAILED = 70   # EX_SOFTWARE (sysexits.h): tracer itself failed
PARSER = "tracer-parse"     # tracer's parsing process (tracer/worker.py), reported like a thread


def who(thread: str) -> str:
    return "parsing process tracer-parse" if thread == PARSER else f"thread {thread}"


@dataclass(frozen=True)
class ThreadFailure:
    thread: str
    error: str         # "TypeError: ..."
    consequence: str   # what stopped working because of it
    where: str         # innermost frame of the traceback


class ThreadFailures:
    """The threads that died during a run (shared by the session and the components it starts)."""

    def __init__(self, stderr=None):
        self.stderr = stderr or sys.stderr
        self.items: list[ThreadFailure] = []
        self._lock = threading.Lock()

    def record(self, thread: str, exc: BaseException, consequence: str) -> ThreadFailure:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{tb[-1].filename}:{tb[-1].lineno} in {tb[-1].name}" if tb else ""
        f = ThreadFailure(thread, f"{type(exc).__name__}: {exc}", consequence, where)
        with self._lock:
            self.items.append(f)
        try:
            print(printable(f"tracer: INTERNAL ERROR: thread {thread} died ({f.error}; at {where}): "
                            f"{consequence}"), file=self.stderr, flush=True)
        except (OSError, ValueError):
            pass
        return f

    def report(self, thread: str, error: str, consequence: str, where: str = "") -> ThreadFailure:
        """A failure known by its message only: tracer's parsing process (PARSER) or a thread of it."""
        f = ThreadFailure(thread, error, consequence, where)
        with self._lock:
            self.items.append(f)
        try:
            print(printable(f"tracer: INTERNAL ERROR: {who(thread)} died ({error}"
                            + (f"; at {where}" if where else "") + f"): {consequence}"),
                  file=self.stderr, flush=True)
        except (OSError, ValueError):
            pass
        return f

    def __bool__(self) -> bool:
        return bool(self.items)

    def as_list(self) -> list[dict]:
        with self._lock:
            return [{"thread": f.thread, "error": f.error, "consequence": f.consequence, "where": f.where}
                    for f in self.items]


def start_thread(name: str, target: Callable[[], None], failures: ThreadFailures, consequence: str,
                 on_death: Callable[[], None] | None = None) -> threading.Thread:
    """Start a daemon thread running ``target``; if it raises, the failure is recorded (and reported)
    and ``on_death`` runs on that thread, so the component can stop accepting work it can no longer do."""

    def run() -> None:
        try:
            target()
        except BaseException as exc:   # noqa: BLE001 -- any death must be seen
            failures.record(name, exc, consequence)
            if on_death is not None:
                try:
                    on_death()
                except Exception:      # noqa: BLE001 -- the death is already reported
                    pass

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t
