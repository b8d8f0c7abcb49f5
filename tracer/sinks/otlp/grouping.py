"""Which session, and which Task/Agent tool call, a logged call belongs to: the viewer's grouping
(``tracer.viewer.analyze.analyze``: threads, subagents, continuations, auxiliary calls, sessions), run on
*compact records* so that it can run again and again while a trace is live.

A compact record keeps exactly what ``analyze`` groups by, and nothing big:
- the request's timestamp, URL, the Claude Code session-id header, model, stream flag, tool names;
- the system prompt replaced by a stand-in with the same fingerprint;
- the first message's text blocks, each cut to its first ``TEXT_HEAD`` characters, plus a fingerprint
  block of the original (same fingerprint; enough text for the subagent-prompt, continuation and warm-up
  matching; no images or tool payloads);
- later messages reduced to their role and their Task/Agent tool calls (subagent detection), each prompt
  cut to its first ``TEXT_HEAD`` characters like the text it is matched against;
- the response reduced to its Task/Agent tool calls, model and stop reason.
A test runs ``analyze`` on full and on compact records of synthetic Claude Code sessions and checks that
the grouping is the same.

Live use (``Grouper.assign`` after each batch of new calls): a call's session and parent tool call are
decided when the call is first analysed and never change afterwards (its span may already be exported).
They are the same as the whole-log grouping (the viewer's, and ``tracer export otlp``'s) whenever the
later calls do not change earlier decisions; what can differ is an auxiliary side call (no tools, one
call) that completes before any call of its main conversation and carries no session-id header
(Claude Code before 2.1 sends none): live, it becomes a session of its own. To keep the window small,
only the calls ``analyze`` needs to place future calls stay in it (per thread: its first call, its
longest, its latest start and latest end); sessions that end (idle, process exit) are dropped from it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from tracer.viewer.analyze import (SESSION_HEADER, SUBAGENT_TOOLS, CallInfo, Thread, analyze, fingerprint,
                                   header, system_fingerprint)

FP_BLOCK = "x-tracer-fingerprint"
TEXT_HEAD = 1024        # characters kept of each text block of a first message, and of each Task prompt
MAX_BLOCKS = 32         # text blocks kept of a first message (the first and the last halves)


def _subagent_blocks(content: Any) -> list[dict]:
    out = []
    if isinstance(content, list):
        for b in content:
            if (isinstance(b, dict) and b.get("type") == "tool_use" and b.get("name") in SUBAGENT_TOOLS
                    and isinstance(b.get("input"), dict) and isinstance(b["input"].get("prompt"), str)):
                out.append({"type": "tool_use", "id": b.get("id"), "name": b["name"],
                            "input": {"prompt": b["input"]["prompt"].strip()[:TEXT_HEAD]}})
    return out


def _first_message(msg: Any) -> Any:
    if not isinstance(msg, dict):
        return msg
    content = msg.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    texts = [{"type": "text", "text": b["text"].strip()[:TEXT_HEAD]} for b in blocks or []
             if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)]
    if len(texts) > MAX_BLOCKS:
        texts = texts[:MAX_BLOCKS // 2] + texts[-MAX_BLOCKS // 2:]
    return {"role": msg.get("role"), "content": texts + [{"type": FP_BLOCK, "fp": fingerprint(msg)}]}


def compact_record(rec: dict, call: CallInfo, interned: dict[str, Any] | None = None) -> dict:
    """The parts of a record ``analyze`` groups by (see the module docstring)."""
    req = rec.get("request") if isinstance(rec.get("request"), dict) else {}
    sid = header(req.get("headers"), SESSION_HEADER)
    out_req: dict = {"timestamp": req.get("timestamp"), "method": req.get("method"), "url": req.get("url"),
                     "headers": {SESSION_HEADER: sid} if sid else {}}
    body = req.get("body")
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        msgs = body["messages"]
        first = _first_message(msgs[0]) if msgs else None
        if interned is not None and isinstance(first, dict):
            key = first["content"][-1]["fp"]
            first = interned.setdefault(key, first)
        cmsgs = [first] if msgs else []
        for m in msgs[1:]:
            role = m.get("role") if isinstance(m, dict) else None
            cmsgs.append({"role": role, "content": _subagent_blocks(m.get("content")) if isinstance(m, dict) else []})
        tools = body.get("tools")
        out_req["body"] = {
            "model": body.get("model"), "stream": body.get("stream"), "messages": cmsgs,
            "system": [{"type": "text", "text": "fp:" + system_fingerprint(body.get("system"))}],
            "tools": [{"name": t.get("name")} for t in tools if isinstance(t, dict)] if isinstance(tools, list) else None,
        }
    else:
        out_req["body"] = None
    res = rec.get("response") if isinstance(rec.get("response"), dict) else None
    out: dict = {"request": out_req, "response": None}
    if res is not None:
        r: dict = {"timestamp": res.get("timestamp"), "status_code": res.get("status_code"),
                   "headers": {"content-type": "application/json"}}
        if isinstance(call.response, dict):
            r["body"] = {"type": "message", "model": call.response.get("model"),
                         "stop_reason": call.response.get("stop_reason"),
                         "content": _subagent_blocks(call.response.get("content"))}
        out["response"] = r
    out["tracer"] = {"complete": call.complete, "duration_ms": call.duration_ms}
    return out


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
    """Calls go in with ``add``; ``assign`` analyses what is in the window and returns the assignments of
    the calls added since the last ``assign``."""

    def __init__(self) -> None:
        self._compact: dict[int, dict] = {}       # call index -> compact record (the window)
        self._pids: dict[int, int | None] = {}
        self._new: list[int] = []
        self._interned: dict[str, Any] = {}
        self.runs = 0

    def __len__(self) -> int:
        return len(self._compact)

    def add(self, index: int, rec: dict, call: CallInfo) -> None:
        self._compact[index] = compact_record(rec, call, self._interned)
        tr = rec.get("tracer") if isinstance(rec.get("tracer"), dict) else {}
        self._pids[index] = tr.get("pid") if isinstance(tr.get("pid"), int) else None
        self._new.append(index)

    def forget(self, indexes) -> None:
        for i in indexes:
            self._compact.pop(i, None)
            self._pids.pop(i, None)
        live = {id(c["request"]["body"]["messages"][0]) for c in self._compact.values()
                if c["request"]["body"] and c["request"]["body"]["messages"]}
        self._interned = {k: v for k, v in self._interned.items() if id(v) in live}

    def assign(self, prune: bool = True, also: tuple = ()) -> dict[int, Assignment]:
        """Analyse the window; the assignments of the calls added since the last run, and of ``also``
        (earlier calls whose placement is still wanted)."""
        also = [i for i in also if i in self._compact]
        if not self._new and not also:
            return {}
        order = sorted(self._compact)
        recs = [self._compact[i] for i in order]
        an = analyze(recs)
        self.runs += 1
        pos = {idx: p for p, idx in enumerate(order)}
        out: dict[int, Assignment] = {}
        for idx in self._new + also:
            c = an.calls[pos[idx]]
            if c.session is None or c.thread is None:
                out[idx] = Assignment(None)
                continue
            th = an.threads[c.thread]
            root = an.threads[an.sessions[c.session].root]
            root_pid = self._pids.get(order[root.calls[0]]) if root.calls else None
            key, sid = _session_key(root, root_pid)
            peers = tuple(order[i] for i in an.sessions[c.session].calls if order[i] != idx)
            out[idx] = Assignment(key, sid, th.kind, th.parent[1] if th.parent else None, root_pid, peers)
        self._new = []
        if prune:
            self._prune(an, order)
        return out

    def _prune(self, an, order: list[int]) -> None:
        """Keep, per thread, the calls analyze places later calls by: first, longest, latest start, latest end."""
        keep: set[int] = set()
        for th in an.threads:
            cs = [an.calls[i] for i in th.calls]
            if not cs:
                continue
            keep.add(cs[0].index)
            keep.add(th.final)
            keep.add(max(cs, key=lambda c: (c.t if c.t is not None else float("-inf"))).index)
            keep.add(max(cs, key=lambda c: (c.t_end or c.t or float("-inf"))).index)
        drop = [order[p] for p in range(len(order)) if p not in keep]
        if drop:
            self.forget(drop)
