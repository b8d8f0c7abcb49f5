"""Which session, and which Task/Agent tool call, a logged call belongs to: the viewer's grouping
(``tracer.viewer.analyze``: threads, subagents, continuations, auxiliary calls, sessions) through its
``GroupingWindow``, so that it can run again as calls arrive (live export) or once over a whole log
(``tracer export otlp``). The window keeps the viewer's small facts per call, never the records.

Live use (``Grouper.assign`` after each batch of new calls): a call's session and parent tool call are
decided when the call is first analysed and never change afterwards (its span may already be exported).
They are the same as the whole-log grouping (the viewer's, and ``tracer export otlp``'s) whenever the
later calls do not change earlier decisions; what can differ is an auxiliary side call (no tools, one
call) that completes before any call of its main conversation and carries no session-id header
(Claude Code before 2.1 sends none): live, it becomes a session of its own. To keep the window small,
only the calls the grouping needs to place future calls stay in it (per thread: its first call, its
longest, its latest start and latest end); sessions that end (idle, process exit) are dropped from it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tracer.viewer.analyze import CallInfo, GroupingWindow, Thread


@dataclass
class Assignment:
    """Where one call goes: its session (None: not a Messages API conversation call) and, for a
    subagent's call, the Task/Agent tool_use id that started it."""

    session_key: str | None
    session_id: str = ""           # what backends group by (session.id / gen_ai.conversation.id)
    thread_kind: str = ""          # main | subagent | aux
    parent_tool_id: str | None = None
    root_pid: int | None = None
    peers: tuple = ()              # the other calls of its session still in the window


def _session_key(root: Thread, pid: int | None) -> tuple[str, str]:
    """(identity of the session: its root conversation, as analyze has it; its session.id: Claude Code's
    own session id (request header) when it sends one, else the root's fingerprints and process id)."""
    h = hashlib.blake2b(repr(root.key).encode(), digest_size=8).hexdigest()
    if root.sid:
        return f"sid:{root.sid}:{h}", root.sid
    return f"fp:{pid}:{h}", f"tracer-{pid}-{h}"


class Grouper:
    """Calls go in with ``add``; ``assign`` groups what is in the window and returns the assignments of
    the calls added since the last ``assign``."""

    def __init__(self) -> None:
        self._window = GroupingWindow()
        self._pids: dict[int, int | None] = {}
        self._new: list[int] = []
        self.runs = 0

    def __len__(self) -> int:
        return len(self._window)

    def add(self, index: int, rec: dict, call: CallInfo) -> None:
        self._window.add(index, rec, call)
        if index not in self._window:       # not a Messages API conversation call
            return
        tr = rec.get("tracer") if isinstance(rec.get("tracer"), dict) else {}
        self._pids[index] = tr.get("pid") if isinstance(tr.get("pid"), int) else None
        self._new.append(index)

    def forget(self, indexes) -> None:
        indexes = list(indexes)
        for i in indexes:
            self._pids.pop(i, None)
        self._window.forget(indexes)

    def assign(self, prune: bool = True, also: tuple = ()) -> dict[int, Assignment]:
        """Group the window; the assignments of the calls added since the last run, and of ``also``
        (earlier calls whose placement is still wanted)."""
        also = [i for i in also if i in self._window]
        if not self._new and not also:
            return {}
        an = self._window.group()
        self.runs += 1
        out: dict[int, Assignment] = {}
        for idx in self._new + also:
            c = an.calls[idx]
            if c.session is None or c.thread is None:
                out[idx] = Assignment(None)
                continue
            th = an.threads[c.thread]
            root = an.threads[an.sessions[c.session].root]
            root_pid = self._pids.get(root.calls[0]) if root.calls else None
            key, sid = _session_key(root, root_pid)
            peers = tuple(i for i in an.sessions[c.session].calls if i != idx)
            out[idx] = Assignment(key, sid, th.kind, th.parent[1] if th.parent else None, root_pid, peers)
        self._new = []
        if prune:
            self._prune(an)
        return out

    def _prune(self, an) -> None:
        """Keep, per thread, the calls the grouping places later calls by: first, longest, latest start,
        latest end."""
        keep: set[int] = set()
        for th in an.threads:
            cs = [an.calls[i] for i in th.calls]
            if not cs:
                continue
            keep.add(cs[0].index)
            keep.add(th.final)
            keep.add(max(cs, key=lambda c: (c.t if c.t is not None else float("-inf"))).index)
            keep.add(max(cs, key=lambda c: (c.t_end or c.t or float("-inf"))).index)
        drop = [i for i in an.calls if i not in keep]
        if drop:
            self.forget(drop)
