"""Records in, finished spans out (no I/O, no OpenTelemetry SDK).

Per logged Messages API call: one ``chat {model}`` span, child of its session's ``invoke_agent`` span,
or, for a subagent's call, of the ``execute_tool Task`` span that started the subagent. Per ``tool_use``
in a response: one ``execute_tool {name}`` span, from the end of that response to the start of the
request that carries its ``tool_result`` (a sibling of the chat spans, under the same parent).

When spans end and leave:
- a chat span as soon as its record is processed (its parent's ids are allocated before, so parents
  may reach the backend after their children);
- a tool span when the request with its result arrives, or when its session ends (then
  ``tracer.tool.result_seen=false``, ending at the session's last activity);
- a session span when the session has seen no call for ``idle_s`` seconds, ``exit_grace_s`` after all
  the processes it came from have exited (``target_exited``: a process' last records reach the log after
  its exit is known - the pipeline parses and the writer batches them - and must still join it), or at
  the end of the run (``finish``). It covers the first
  call's start to the last call's or tool's end. A session that resumes after going idle continues as a
  new span (new trace) with the same ``session.id`` (``tracer.session.segment`` counts them).

Time in ``tick`` is the caller's clock (monotonic seconds); span times come from the records (kernel
timestamps mapped to the epoch by the capture).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from tracer.sinks.otlp import spans as S
from tracer.sinks.otlp.config import DEFAULT_EXIT_GRACE_S
from tracer.sinks.otlp.grouping import Assignment, Grouper
from tracer.viewer.analyze import analyze_call, chunk_time_ms, message_text, user_text

MAX_PENDING_TOOLS = 10_000
AUX_HOLD_S = 30.0            # live: a side call waits this long for its main conversation to show up
MAX_EXITED = 100_000        # exited pids remembered
MAX_ENDED_TOOLS = 10_000     # ended Task/Agent calls remembered as parents (background subagents outlive them)


def call_info(index: int, rec: dict):
    """The viewer's per-call figures; for a partial record (too large to read whole) the time to first
    token comes from the stream head the reader kept."""
    call = analyze_call(index, rec)
    first = rec.get("tracer.first_delta_end")
    if isinstance(first, int) and call.ttft_ms is None:
        tr = rec.get("tracer") if isinstance(rec.get("tracer"), dict) else {}
        chunks = tr.get("response_chunks") if isinstance(tr.get("response_chunks"), list) else []
        chunks = sorted(c for c in chunks if isinstance(c, list) and len(c) >= 2
                        and all(isinstance(x, (int, float)) for x in c[:2]))
        call.ttft_ms = chunk_time_ms(chunks, first)
    return call


@dataclass
class Digest:
    """What the spans of one call need, taken from its record at once: queued and held calls do not keep
    their records (a request can be megabytes)."""

    index: int
    name: str
    pid: int | None
    start: int
    end: int
    attrs: dict
    status: str
    msg: str
    uses: list            # the response's tool_use blocks (inputs only as far as the spans need them)
    results: list         # tool_result blocks the request carries
    model: str
    tokens: tuple         # input (cache included), output, cache read, cache creation
    ua: str
    prompt: str = ""      # content: the conversation's first prompt and this call's answer
    answer: str = ""
    seen: float = 0.0


def _slim_use(b: dict, content: bool) -> dict:
    inp = b.get("input") if isinstance(b.get("input"), dict) else {}
    if content:
        return {"id": b.get("id"), "name": b.get("name"), "input": b.get("input")}
    keep = {"subagent_type": inp["subagent_type"]} if isinstance(inp.get("subagent_type"), str) else {}
    return {"id": b.get("id"), "name": b.get("name"), "input": keep}


def _slim_result(b: dict, content: bool) -> dict:
    if content:
        return b
    return {"tool_use_id": b.get("tool_use_id"), "is_error": bool(b.get("is_error"))}


def digest(index: int, rec: dict, call, content: bool, seen: float) -> Digest:
    tr = rec.get("tracer") if isinstance(rec.get("tracer"), dict) else {}
    pid = tr.get("pid") if isinstance(tr.get("pid"), int) else None
    start = S.to_ns(call.t)
    end = S.to_ns(call.t_end)
    if start is None:
        start = end if end is not None else time.time_ns()
    if end is None or end < start:
        end = start + int((call.duration_ms or 0) * 1e6)
    body = S.request_body(rec)
    attrs, status, msg = S.chat_attributes(rec, call, content=content)
    attrs["tracer.log.index"] = index
    d = Digest(index, S.chat_name(rec, call), pid, start, end, attrs, status, msg,
               [_slim_use(u, content) for u in S.tool_uses(call.response)],
               [_slim_result(r, content) for r in S.new_turn(body.get("messages"))[1]],
               call.model,
               (call.input_tokens + call.cache_read_tokens + call.cache_creation_tokens, call.output_tokens,
                call.cache_read_tokens, call.cache_creation_tokens),
               S.header((rec.get("request") or {}).get("headers"), "user-agent"), seen=seen)
    if content:
        msgs = body.get("messages") if isinstance(body.get("messages"), list) else []
        d.prompt = user_text(msgs[0]) if msgs else ""
        d.answer = message_text(call.response) if isinstance(call.response, dict) else ""
    return d


@dataclass
class PendingTool:
    use: dict
    trace_id: int
    span_id: int
    parent_id: int | None
    start_ns: int
    pid: int | None
    session_key: str | None


@dataclass
class LiveSession:
    key: str
    facts: S.SessionFacts
    trace_id: int
    span_id: int
    pid: int | None
    start_ns: int | None = None
    end_ns: int | None = None
    last_activity: float = 0.0
    pids: set = field(default_factory=set)
    calls: set = field(default_factory=set)        # call indexes (to drop them from the grouping window)
    tools: set = field(default_factory=set)        # pending tool_use ids


@dataclass
class EngineStats:
    records: int = 0
    calls: int = 0                 # chat spans
    tool_spans: int = 0
    session_spans: int = 0
    skipped: int = 0               # records that are not LLM calls (telemetry, count_tokens, ...)
    orphan_calls: int = 0          # LLM calls outside any conversation (no parsable request body)
    tools_without_result: int = 0
    tools_evicted: int = 0
    analysis_runs: int = 0
    analysis_s: float = 0.0


class SpanEngine:
    def __init__(self, *, content: bool = False, idle_s: float = 300.0, exit_grace_s: float = DEFAULT_EXIT_GRACE_S,
                 clock: Callable[[], float] = time.monotonic, prune: bool = True):
        self.content = content
        self.idle_s = idle_s
        self.exit_grace_s = exit_grace_s
        self.clock = clock
        self.prune = prune
        self.grouper = Grouper()
        self.sessions: dict[str, LiveSession] = {}
        self.segments: dict[str, int] = {}
        self.tools: dict[str, PendingTool] = {}
        self.ended_agents: dict[str, tuple[int, int]] = {}   # Task/Agent tool_use id -> (trace, span) once ended
        self.call_session: dict[int, str] = {}      # call index (in the grouping window) -> session key
        self.exited: dict[int, float] = {}         # pid -> when its exit was known (clock)
        self.stats = EngineStats()
        self._queued: list[Digest] = []
        self._planned: dict[int, Assignment] = {}
        self._held: dict[int, list] = {}     # side calls waiting: index -> [deadline, digest, assignment]

    # -- input ---------------------------------------------------------------------------------
    def add(self, index: int, rec: dict) -> None:
        """Queue one record (log order); spans come out of the next ``flush``."""
        self.stats.records += 1
        call = call_info(index, rec)
        if S.is_llm_call(rec, call):
            self.grouper.add(index, rec, call)
        self._queued.append(digest(index, rec, call, self.content, self.clock()))

    def flush(self, *, hold: bool = True) -> list[S.SpanData]:
        """Group what was added since the last flush and return the spans that are finished now.

        A side call (an auxiliary thread: one call, no tools) is held for up to ``AUX_HOLD_S``: it usually
        completes before the first call of the conversation it belongs to, and only that call tells
        where it goes. Held calls are placed by the latest grouping when they leave."""
        if not self._queued and not self._held:
            return []
        t = time.perf_counter()
        assigned = self.grouper.assign(prune=self.prune, also=tuple(self._held))
        self.stats.analysis_runs = self.grouper.runs
        self.stats.analysis_s += time.perf_counter() - t
        out: list[S.SpanData] = []
        queued, self._queued = self._queued, []
        now = self.clock()
        for d in queued:
            if d.index not in assigned:
                self.stats.skipped += 1
                continue
            a = assigned[d.index]
            if hold and a.thread_kind == "aux":
                self._held[d.index] = [d.seen + AUX_HOLD_S, d, a]
                continue
            out.extend(self._call(d, a))
        for index, h in list(self._held.items()):
            if index in assigned:
                h[2] = assigned[index]
            if not hold or now >= h[0]:
                del self._held[index]
                out.extend(self._call(h[1], h[2]))
        return out

    # -- a whole log at once (tracer export otlp): two passes, records need not stay in memory --------
    def plan(self, index: int, rec: dict) -> None:
        """First pass: what the grouping needs (the viewer's small facts per call, not the records)."""
        call = call_info(index, rec)
        if S.is_llm_call(rec, call):
            self.grouper.add(index, rec, call)

    def commit_plan(self) -> None:
        """Group the whole log once (the viewer's grouping of all its calls)."""
        t = time.perf_counter()
        self._planned = self.grouper.assign(prune=False)
        self.stats.analysis_runs = self.grouper.runs
        self.stats.analysis_s += time.perf_counter() - t

    def emit(self, index: int, rec: dict) -> list[S.SpanData]:
        """Second pass: the spans one record finishes."""
        self.stats.records += 1
        a = self._planned.pop(index, None)
        if a is None:
            self.stats.skipped += 1
            return []
        return self._call(digest(index, rec, call_info(index, rec), self.content, self.clock()), a)

    def tick(self) -> list[S.SpanData]:
        """End the sessions that have been idle for ``idle_s``, and those whose processes have all been
        gone for ``exit_grace_s``."""
        now = self.clock()
        out: list[S.SpanData] = []
        if any(now >= h[0] for h in self._held.values()):
            out.extend(self.flush())
        if any(self._gone(ls, now) for ls in self.sessions.values()):
            if self._held:         # side calls waiting for their conversation: placed now, before it ends
                out.extend(self.flush(hold=False))
            for ls in list(self.sessions.values()):
                if self._gone(ls, now):
                    out.extend(self._end_session(ls))
        for ls in list(self.sessions.values()):
            if now - ls.last_activity >= self.idle_s:
                out.extend(self._end_session(ls))
        return out

    def _gone(self, ls: LiveSession, now: float) -> bool:
        return bool(ls.pids) and all(p in self.exited and now - self.exited[p] >= self.exit_grace_s
                                     for p in ls.pids)

    def target_exited(self, pid: int) -> list[S.SpanData]:
        """A traced process exited: its sessions end once its last records had time to reach the log
        (``tick``, ``exit_grace_s`` later); at once with a grace of 0."""
        self.exited[pid] = self.clock()
        if len(self.exited) > MAX_EXITED:
            self.exited.pop(next(iter(self.exited)))
        return self.tick() if self.exit_grace_s <= 0 else []

    def finish(self) -> list[S.SpanData]:
        out = self.flush(hold=False)
        for ls in list(self.sessions.values()):
            out.extend(self._end_session(ls))
        for tid in list(self.tools):     # tools of calls outside sessions
            out.append(self._tool_span(self.tools.pop(tid), None, None))
        return out

    # -- one call --------------------------------------------------------------------------------
    def _session(self, a: Assignment, pid: int | None) -> LiveSession:
        ls = self.sessions.get(a.session_key)
        if ls is None:
            # A session seen before under another root (e.g. a side call that completed before the first
            # call of its main conversation) is still open: continue it under its new identity.
            for peer in a.peers:
                old = self.sessions.get(self.call_session.get(peer, ""))
                if old is not None:
                    del self.sessions[old.key]
                    for i in old.calls:
                        self.call_session[i] = a.session_key
                    old.key = a.session_key
                    self.sessions[a.session_key] = old
                    self.segments.setdefault(a.session_key, old.facts.segment)
                    return old
        if ls is None:
            seg = self.segments.get(a.session_key, 0) + 1
            self.segments[a.session_key] = seg
            ls = LiveSession(a.session_key, S.SessionFacts(a.session_id, segment=seg), S.new_trace_id(),
                             S.new_span_id(), pid)
            self.sessions[a.session_key] = ls
        return ls

    def _call(self, d: Digest, a: Assignment) -> list[S.SpanData]:
        out: list[S.SpanData] = []
        ls = self._session(a, d.pid) if a.session_key else None
        if ls is None:
            self.stats.orphan_calls += 1
            trace_id, parent_id = S.new_trace_id(), None
        else:
            trace_id, parent_id = ls.trace_id, ls.span_id
            if a.parent_tool_id and a.parent_tool_id in self.tools:
                parent = self.tools[a.parent_tool_id]
                trace_id, parent_id = parent.trace_id, parent.span_id
            elif a.parent_tool_id and a.parent_tool_id in self.ended_agents:
                # a subagent running in the background after its Task/Agent call returned
                trace_id, parent_id = self.ended_agents[a.parent_tool_id]
            ls.calls.add(d.index)
            self.call_session[d.index] = ls.key
            if d.pid is not None:
                ls.pids.add(d.pid)
                gone = self.exited.get(d.pid)
                if gone is not None and d.seen > gone + self.exit_grace_s:
                    del self.exited[d.pid]      # a new process with a reused pid
            ls.last_activity = max(ls.last_activity, d.seen)

        # results of earlier tool calls, carried by this request
        for block in d.results:
            pend = self.tools.pop(block["tool_use_id"], None)
            if pend is not None:
                out.append(self._tool_span(pend, block, d.start))

        attrs = d.attrs
        if ls is not None:
            attrs["session.id"] = ls.facts.session_id
            attrs["gen_ai.conversation.id"] = ls.facts.session_id
            attrs["tracer.thread.kind"] = a.thread_kind
        out.append(S.SpanData(d.name, "CLIENT", trace_id, S.new_span_id(), parent_id, d.start, d.end,
                              attrs, d.status, d.msg, d.pid, "chat"))
        self.stats.calls += 1

        # tool calls this response asks for
        for use in d.uses:
            if len(self.tools) >= MAX_PENDING_TOOLS:
                oldest = next(iter(self.tools))
                out.append(self._tool_span(self.tools.pop(oldest), None, None))
                self.stats.tools_evicted += 1
            self.tools[use["id"]] = PendingTool(use, trace_id, S.new_span_id(), parent_id, d.end, d.pid,
                                                ls.key if ls else None)
            if ls is not None:
                ls.tools.add(use["id"])
                ls.facts.tools += 1
                if use.get("name") in ("Task", "Agent"):
                    ls.facts.subagents += 1

        if ls is not None:
            self._account(ls, d, a.thread_kind)
        return out

    def _account(self, ls: LiveSession, d: Digest, kind: str) -> None:
        f = ls.facts
        f.calls += 1
        if d.status == "ERROR":
            f.errors += 1
        f.input_tokens += d.tokens[0]
        f.output_tokens += d.tokens[1]
        f.cache_read_tokens += d.tokens[2]
        f.cache_creation_tokens += d.tokens[3]
        if d.model:
            f.models.add(d.model)
        product, version = S.parse_user_agent(d.ua)
        if S.agent_name(product) and not f.agent:
            f.agent, f.agent_version = S.agent_name(product), version
        ls.start_ns = d.start if ls.start_ns is None else min(ls.start_ns, d.start)
        ls.end_ns = d.end if ls.end_ns is None else max(ls.end_ns, d.end)
        if self.content and kind == "main":     # the conversation's prompt and latest answer, not side calls
            if d.prompt and not f.first_prompt:
                f.first_prompt = d.prompt
            if d.answer:
                f.last_answer = d.answer

    # -- ends ------------------------------------------------------------------------------------
    def _tool_span(self, pend: PendingTool, result: dict | None, end_ns: int | None) -> S.SpanData:
        ls = self.sessions.get(pend.session_key) if pend.session_key else None
        if ls is not None:
            ls.tools.discard(pend.use["id"])
        if result is None:
            self.stats.tools_without_result += 1
            end_ns = max(pend.start_ns, (ls.end_ns if ls and ls.end_ns else pend.start_ns))
        end_ns = max(end_ns or pend.start_ns, pend.start_ns)
        if ls is not None:
            ls.end_ns = max(ls.end_ns or end_ns, end_ns)
        if pend.use.get("name") in ("Task", "Agent"):
            self.ended_agents[pend.use["id"]] = (pend.trace_id, pend.span_id)
            if len(self.ended_agents) > MAX_ENDED_TOOLS:
                self.ended_agents.pop(next(iter(self.ended_agents)))
        attrs, status, msg = S.tool_attributes(pend.use, result, content=self.content,
                                               session_id=ls.facts.session_id if ls else "")
        self.stats.tool_spans += 1
        return S.SpanData(f"execute_tool {pend.use.get('name') or ''}".rstrip(), "INTERNAL", pend.trace_id,
                          pend.span_id, pend.parent_id, pend.start_ns, end_ns, attrs, status, msg, pend.pid, "tool")

    def _end_session(self, ls: LiveSession) -> list[S.SpanData]:
        out = [self._tool_span(self.tools.pop(t), None, None) for t in list(ls.tools) if t in self.tools]
        self.sessions.pop(ls.key, None)
        self.grouper.forget(ls.calls)
        for i in ls.calls:
            self.call_session.pop(i, None)
        start = ls.start_ns if ls.start_ns is not None else time.time_ns()
        end = max(ls.end_ns or start, start)
        attrs = S.session_attributes(ls.facts, content=self.content)
        out.append(S.SpanData(S.session_name(ls.facts), "INTERNAL", ls.trace_id, ls.span_id, None, start, end,
                              attrs, "UNSET", "", ls.pid, "session"))
        self.stats.session_spans += 1
        return out
