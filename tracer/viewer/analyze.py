"""From log records to what the viewer shows: per-call figures, conversations (threads) and sessions.

Definitions
- A *call* is one record (request/response pair). Calls whose request body has a ``messages`` list are
  Messages API calls; the rest (telemetry, token counting, ...) appear in the raw view only.
- A *thread* is one conversation: Messages calls with the same Claude Code session id (request header
  ``x-claude-code-session-id``, when present), the same system prompt (less Claude Code's per-request
  billing line) and the same first message (``cache_control`` markers ignored, since clients move them
  between turns). What it shows is the request of its longest call plus that call's response.
- A *subagent* thread is one whose first user message carries the ``prompt`` of a Task/Agent tool call
  made in another thread; it hangs under that tool call.
- A *continuation* thread starts with Claude Code's "This session is being continued from a previous
  conversation" summary; it is merged with the thread it continues (the most recent main thread with the
  same tool set that was active before it started).
- *Auxiliary* threads (one call, no tools: title/topic/quota side calls) join the session whose time span
  covers them (or the nearest one).
- A *session* is a root thread with its continuations, subagents (recursively) and auxiliary threads.

Timing: ``ttfb_ms`` is the tracer's (request's last byte -> response's first byte); for claude-trace's
logs (no ``tracer`` key), whose response timestamp is taken when the headers arrive, it is that minus
the request timestamp, and duration and tokens per second are unknown. ``ttft_ms`` is the
time from the request's first byte to the arrival of the first content delta, found by mapping the
delta's byte offset in ``body_raw`` through ``tracer.response_chunks``. Output tokens per second divide
output tokens by the time from the first delta to the last event (or by the duration, when the log has
no chunk times, e.g. claude-trace's).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tracer.protocols.sse import reconstruct
from tracer.viewer.logs import dumps

CONTINUATION_MARK = "This session is being continued from a previous conversation"
SUBAGENT_TOOLS = ("Task", "Agent")
WARMUP_TEXTS = ("Warmup",)
BILLING_PREFIX = "x-anthropic-billing-header:"
SESSION_HEADER = "x-claude-code-session-id"  # Claude Code names its session in every request  # Claude Code pre-warms its subagents' prompt caches with these


# ----------------------------------------------------------------------------------------- calls

def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def is_sse(response: dict) -> bool:
    headers = response.get("headers") or {}
    ctype = ""
    if isinstance(headers, dict):
        for k, v in headers.items():
            if str(k).lower() == "content-type":
                ctype = str(v).lower()
    raw = response.get("body_raw")
    if "text/event-stream" in ctype:
        return isinstance(raw, str)
    return isinstance(raw, str) and (raw.startswith("event:") or raw.startswith("data:"))


def chunk_time_ms(chunks: list, offset: int) -> float | None:
    """Time (ms since request start) at which body byte ``offset - 1`` (the last one needed) arrived."""
    if not chunks or offset <= 0:
        return None
    offs = [c[0] for c in chunks]
    i = bisect.bisect_right(offs, offset - 1) - 1
    if i < 0:
        i = 0
    t = chunks[i][1]
    return float(t) if isinstance(t, (int, float)) else None


@dataclass
class CallInfo:
    index: int
    t: float | None               # request start, epoch seconds
    t_end: float | None           # response end, epoch seconds
    method: str
    url: str
    host: str
    path: str
    status: int | None
    kind: str                     # "messages" | "other"
    model: str = ""
    stream: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    ttfb_ms: float | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    output_tps: float | None = None
    stop_reason: str | None = None
    error: str | None = None      # API error message, or the log's note
    complete: bool = True
    response: dict | None = None  # the Messages response (rebuilt from SSE, or the JSON body)
    rebuild_errors: list[str] = field(default_factory=list)
    n_messages: int = 0
    thread: int | None = None
    session: int | None = None

    def summary(self) -> dict:
        return {
            "i": self.index, "t": self.t, "te": self.t_end, "method": self.method, "url": self.url,
            "host": self.host, "path": self.path, "status": self.status, "kind": self.kind,
            "model": self.model, "stream": self.stream, "in": self.input_tokens,
            "out": self.output_tokens, "cr": self.cache_read_tokens, "cc": self.cache_creation_tokens,
            "ttfb": self.ttfb_ms, "ttft": self.ttft_ms, "dur": self.duration_ms, "tps": self.output_tps,
            "stop": self.stop_reason, "err": self.error, "complete": self.complete,
            "nmsg": self.n_messages, "thread": self.thread, "session": self.session,
        }


def analyze_call(index: int, rec: dict) -> CallInfo:
    req = rec.get("request") or {}
    res = rec.get("response") if isinstance(rec.get("response"), dict) else None
    tr = rec.get("tracer") if isinstance(rec.get("tracer"), dict) else {}
    url = str(req.get("url") or "")
    parts = urlsplit(url)
    body = req.get("body")
    is_msgs = isinstance(body, dict) and isinstance(body.get("messages"), list)
    t0 = _num(req.get("timestamp"))
    t1 = _num(res.get("timestamp")) if res else None
    c = CallInfo(index=index, t=t0, t_end=t1, method=str(req.get("method") or ""), url=url,
                 host=parts.netloc, path=parts.path or url, status=_int(res.get("status_code")) if res else None,
                 kind="messages" if is_msgs else "other")
    if is_msgs:
        c.model = str(body.get("model") or "")
        c.stream = bool(body.get("stream"))
        c.n_messages = len(body["messages"])
    dur = _num(tr.get("duration_ms"))
    c.ttfb_ms = _num(tr.get("ttfb_ms"))
    if "tracer" not in rec and t0 is not None and t1 is not None:
        # claude-trace stamps its response when the headers arrive, not at the end of the body: the
        # difference is a time to first byte (measured in the client), and the duration is unknown.
        c.ttfb_ms = max(0.0, (t1 - t0) * 1000.0)
    elif dur is None and t0 is not None and t1 is not None:
        dur = max(0.0, (t1 - t0) * 1000.0)
    c.duration_ms = dur
    c.complete = bool(tr.get("complete", True)) and res is not None
    if rec.get("note"):
        c.error = str(rec["note"])
    if res is None:
        return c

    chunks = tr.get("response_chunks") if isinstance(tr.get("response_chunks"), list) else []
    chunks = sorted(ch for ch in chunks if isinstance(ch, (list, tuple)) and len(ch) >= 2
                    and _num(ch[0]) is not None and _num(ch[1]) is not None)
    t_last = None
    if tr.get("content_encoding"):
        chunks = []  # offsets are then in the compressed body: no byte -> time mapping for the text
    if is_sse(res):
        raw: str | bytes = res["body_raw"]
        if tr.get("response_body_encoding") == "base64":  # body not valid UTF-8: logged as base64
            try:
                raw = base64.b64decode(raw)
            except ValueError:
                pass
        r = reconstruct(raw)
        c.response = r.message
        c.rebuild_errors = r.errors
        if r.error is not None:
            err = r.error.get("message") if isinstance(r.error, dict) else None
            c.error = str(err or r.error)
        if r.first_delta_end is not None:
            c.ttft_ms = chunk_time_ms(chunks, r.first_delta_end)
        if r.last_event_end is not None:
            t_last = chunk_time_ms(chunks, r.last_event_end)
    elif isinstance(res.get("body"), dict):
        b = res["body"]
        if b.get("type") == "error" or "error" in b and not b.get("content"):
            e = b.get("error")
            c.error = str(e.get("message") if isinstance(e, dict) else e)
        elif b.get("type") == "message" or "content" in b:
            c.response = b
    if c.response:
        u = c.response.get("usage") if isinstance(c.response.get("usage"), dict) else {}
        c.input_tokens = _int(u.get("input_tokens"))
        c.output_tokens = _int(u.get("output_tokens"))
        c.cache_read_tokens = _int(u.get("cache_read_input_tokens"))
        c.cache_creation_tokens = _int(u.get("cache_creation_input_tokens"))
        c.stop_reason = c.response.get("stop_reason")
        if not c.model:
            c.model = str(c.response.get("model") or "")
    if c.output_tokens:
        if c.ttft_ms is not None and t_last is not None and t_last > c.ttft_ms:
            c.output_tps = c.output_tokens / ((t_last - c.ttft_ms) / 1000.0)
        elif dur:
            c.output_tps = c.output_tokens / (dur / 1000.0)
    if c.status and c.status >= 400 and not c.error:
        c.error = f"HTTP {c.status}"
    return c


# --------------------------------------------------------------------------------------- threads

def _strip_cache_control(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip_cache_control(x) for k, x in v.items() if k != "cache_control"}
    if isinstance(v, list):
        return [_strip_cache_control(x) for x in v]
    return v


def _normalize(v: Any) -> Any:
    """Drop what clients change between turns of one conversation: cache_control markers, and string
    content vs. a single text block."""
    v = _strip_cache_control(v)
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        v = dict(v, content=[{"type": "text", "text": v["content"]}])
    return v


def fingerprint(v: Any) -> str:
    return hashlib.blake2b(dumps(_normalize(v)), digest_size=12).hexdigest()


def system_fingerprint(system: Any) -> str:
    """Fingerprint of a system prompt without Claude Code's per-request billing line (it carries a
    per-request checksum, ``cch=...``)."""
    if isinstance(system, str):
        system = [{"type": "text", "text": system}]
    if isinstance(system, list):
        system = [b for b in system if not (isinstance(b, dict) and isinstance(b.get("text"), str)
                                            and b["text"].startswith(BILLING_PREFIX))]
    return fingerprint(system)


def header(headers: Any, name: str) -> str:
    if isinstance(headers, dict):
        for k, v in headers.items():
            if str(k).lower() == name:
                return str(v)
    return ""


def message_text(msg: Any) -> str:
    """The plain text of a message (its text blocks joined)."""
    if not isinstance(msg, dict):
        return ""
    c = msg.get("content")
    if isinstance(c, str):
        return c
    out = []
    if isinstance(c, list):
        for b in c:
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str):
                out.append(b["text"])
    return "\n".join(out)


def user_text(msg: Any) -> str:
    """What the user typed: the last text block that is not a <system-reminder>."""
    if not isinstance(msg, dict):
        return ""
    c = msg.get("content")
    if isinstance(c, str):
        texts = [c]
    elif isinstance(c, list):
        texts = [b["text"] for b in c if isinstance(b, dict) and b.get("type") == "text"
                 and isinstance(b.get("text"), str)]
    else:
        texts = []
    pick = ""
    for t in texts:
        if not t.lstrip().startswith("<system-reminder>"):
            pick = t
    if not pick and texts:
        pick = texts[-1]
    return pick


def _prompt_preview(msg: Any, limit: int = 160) -> str:
    pick = " ".join(user_text(msg).split())
    return pick[:limit] + ("…" if len(pick) > limit else "")


@dataclass
class Thread:
    id: int
    key: tuple[str, str, str]
    sid: str = ""                   # Claude Code session id (request header), if any
    calls: list[int] = field(default_factory=list)
    final: int = -1                 # index of the call whose request+response the thread shows
    tools: tuple[str, ...] = ()
    kind: str = "main"              # main | subagent | aux
    parent: tuple[int, str] | None = None      # (thread id, tool_use id)
    continues: int | None = None               # thread this one continues after compaction
    continued_by: int | None = None
    children: list[tuple[str, int]] = field(default_factory=list)   # (tool_use id, thread id)
    title: str = ""
    session: int | None = None
    first_text: str = ""            # all text blocks of the first message
    prompt: str = ""                # its last non-reminder text block (what the user typed)

    def summary(self, calls: list[CallInfo]) -> dict:
        producers = []
        for ci in self.calls:
            n = calls[ci].n_messages
            producers.append([n, ci])
        models = sorted({calls[i].model for i in self.calls if calls[i].model})
        return {"id": self.id, "calls": self.calls, "final": self.final, "kind": self.kind,
                "parent": list(self.parent) if self.parent else None, "continues": self.continues,
                "continued_by": self.continued_by, "children": [list(c) for c in self.children],
                "title": self.title, "models": models, "tools": list(self.tools),
                "producers": producers, "session": self.session}


@dataclass
class Session:
    id: int
    root: int                         # thread id
    threads: list[int] = field(default_factory=list)    # display order: root chain, subagents, aux
    calls: list[int] = field(default_factory=list)

    def totals(self, calls: list[CallInfo]) -> dict:
        cs = [calls[i] for i in self.calls]
        starts = [c.t for c in cs if c.t is not None]
        ends = [c.t_end if c.t_end is not None else
                (c.t + (c.duration_ms or 0) / 1000.0 if c.t is not None else None) for c in cs]
        ends = [e for e in ends if e is not None]
        return {
            "calls": len(cs),
            "in": sum(c.input_tokens for c in cs), "out": sum(c.output_tokens for c in cs),
            "cr": sum(c.cache_read_tokens for c in cs), "cc": sum(c.cache_creation_tokens for c in cs),
            "start": min(starts) if starts else None, "end": max(ends) if ends else None,
            "wall_ms": (max(ends) - min(starts)) * 1000.0 if starts and ends else None,
            "api_ms": sum(c.duration_ms or 0 for c in cs),
            "errors": sum(1 for c in cs if c.error or (c.status or 0) >= 400),
            "models": sorted({c.model for c in cs if c.model}),
        }


@dataclass
class Analysis:
    calls: list[CallInfo]
    threads: list[Thread]
    sessions: list[Session]


def _tool_names(body: dict) -> tuple[str, ...]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return ()
    return tuple(sorted(str(t.get("name")) for t in tools if isinstance(t, dict)))


def _subagent_calls(msgs: list) -> list[tuple[str, str]]:
    """(tool_use id, prompt) of each Task/Agent tool call in a message list."""
    out = []
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") != "assistant" or not isinstance(m.get("content"), list):
            continue
        for b in m["content"]:
            if (isinstance(b, dict) and b.get("type") == "tool_use" and b.get("name") in SUBAGENT_TOOLS
                    and isinstance(b.get("input"), dict) and isinstance(b["input"].get("prompt"), str)):
                out.append((str(b.get("id")), b["input"]["prompt"].strip()))
    return out


def analyze(records: list[dict]) -> Analysis:
    calls = [analyze_call(i, r) for i, r in enumerate(records)]
    bodies = [(r.get("request") or {}).get("body") for r in records]

    # Threads: same system prompt and first message.
    threads: list[Thread] = []
    by_key: dict[tuple[str, str, str], Thread] = {}
    by_sid_first: dict[tuple[str, str], Thread] = {}
    order = sorted((c for c in calls if c.kind == "messages"),
                   key=lambda c: (c.t if c.t is not None else float("inf"), c.index))
    for c in order:
        body = bodies[c.index]
        msgs = body["messages"]
        sid = header((records[c.index].get("request") or {}).get("headers"), SESSION_HEADER)
        first = fingerprint(msgs[0]) if msgs else ""
        key = (sid, system_fingerprint(body.get("system")), first)
        th = by_key.get(key)
        if th is None and sid:
            # Same Claude Code session and first message: the system prompt changed mid-conversation.
            th = by_sid_first.get((sid, first))
            if th is not None:
                by_key[key] = th
        if th is None:
            th = Thread(id=len(threads), key=key, tools=_tool_names(body), sid=sid)
            th.first_text = message_text(msgs[0]) if msgs else ""
            th.prompt = user_text(msgs[0]) if msgs else ""
            th.title = _prompt_preview(msgs[0]) if msgs else ""
            threads.append(th)
            by_key[key] = th
            if sid:
                by_sid_first.setdefault((sid, first), th)
        th.calls.append(c.index)
        c.thread = th.id
        if th.final < 0 or c.n_messages >= calls[th.final].n_messages:
            th.final = c.index
            th.tools = _tool_names(body) or th.tools

    def t_start(th: Thread) -> float:
        t = calls[th.calls[0]].t
        return t if t is not None else float(th.calls[0])

    def t_end(th: Thread) -> float:
        ends = [calls[i].t_end or calls[i].t for i in th.calls]
        ends = [e for e in ends if e is not None]
        return max(ends) if ends else float(th.calls[-1])

    # Subagents: a thread whose first user message carries a Task/Agent prompt from another thread.
    claimed: set[tuple[int, str]] = set()
    for th in threads:
        fin = bodies[th.final]
        msgs = list(fin["messages"])
        resp = calls[th.final].response
        if isinstance(resp, dict):
            msgs.append({"role": "assistant", "content": resp.get("content")})
        for tool_id, prompt in _subagent_calls(msgs):
            if not prompt:
                continue
            best = None
            for other in threads:
                if other is th or other.parent is not None or (th.id, tool_id) in claimed:
                    continue
                text = other.first_text.strip()
                if text == prompt or (prompt in text):
                    exact = text == prompt
                    if best is None or (exact and not best[1]):
                        best = (other, exact)
            if best is not None and best[0].calls and t_start(best[0]) >= t_start(th) - 1e-6:
                sub = best[0]
                sub.parent = (th.id, tool_id)
                sub.kind = "subagent"
                th.children.append((tool_id, sub.id))
                claimed.add((th.id, tool_id))

    # Auxiliary side calls.
    for th in threads:
        if th.kind == "main" and ((len(th.calls) == 1 and not th.tools) or th.prompt.strip() in WARMUP_TEXTS):
            th.kind = "aux"

    # Compaction: merge a continuation with the thread it continues.
    for th in sorted(threads, key=t_start):
        if th.kind != "main" or CONTINUATION_MARK not in th.first_text:
            continue
        start = t_start(th)
        cands = [o for o in threads if o is not th and o.kind == "main" and o.continued_by is None
                 and t_start(o) < start and o.continues != th.id]
        if not cands:
            continue
        if th.sid:
            cands = [o for o in cands if o.sid == th.sid] or cands
        same = [o for o in cands if o.tools == th.tools]
        pick = max(same or cands, key=t_end)
        th.continues = pick.id
        pick.continued_by = th.id

    # Sessions.
    sessions: list[Session] = []
    mains = [th for th in threads if th.kind == "main" and th.continues is None]
    if not mains:  # plain API use: every conversation is its own session
        for th in threads:
            if th.kind == "aux":
                th.kind = "main"
        mains = [th for th in threads if th.kind == "main" and th.continues is None]
    for th in sorted(mains, key=t_start):
        s = Session(id=len(sessions), root=th.id)
        sessions.append(s)
        chain = th
        while chain is not None:
            _attach(s, chain, threads)
            chain = threads[chain.continued_by] if chain.continued_by is not None else None

    # Threads whose parent is not in any session yet (a subagent of a subagent attached above is
    # handled by _attach's recursion), and auxiliary ones: the session covering their start.
    def an_sid(sess: Session) -> str:
        return threads[sess.root].sid

    spans = [(min(calls[i].t or 0 for i in s.calls), max(calls[i].t_end or calls[i].t or 0 for i in s.calls), s)
             for s in sessions if s.calls]
    for th in sorted(threads, key=t_start):
        if th.session is not None:
            continue
        if not spans:
            s = Session(id=len(sessions), root=th.id)
            sessions.append(s)
            _attach(s, th, threads)
            spans.append((t_start(th), t_end(th), s))
            continue
        ts = t_start(th)
        same_sid = [sp for sp in spans if th.sid and an_sid(sp[2]) == th.sid]
        if same_sid:
            _attach(min(same_sid, key=lambda sp: min(abs(ts - sp[0]), abs(ts - sp[1])))[2], th, threads)
            continue
        inside = [sp for sp in spans if sp[0] <= ts <= sp[1]]
        if inside:
            s = max(inside, key=lambda sp: sp[0])[2]
        else:
            s = min(spans, key=lambda sp: min(abs(ts - sp[0]), abs(ts - sp[1])))[2]
        _attach(s, th, threads)
    for s in sessions:
        s.calls.sort(key=lambda i: (calls[i].t if calls[i].t is not None else float("inf"), i))
        for i in s.calls:
            calls[i].session = s.id
    return Analysis(calls=calls, threads=threads, sessions=sessions)


def _attach(s: Session, th: Thread, threads: list[Thread]) -> None:
    if th.session is not None:
        return
    th.session = s.id
    s.threads.append(th.id)
    s.calls.extend(th.calls)
    for _tool_id, child in th.children:
        _attach(s, threads[child], threads)
