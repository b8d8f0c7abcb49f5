"""What the live view knows: the recent calls, their streamed text, tools and tokens, and their nesting.

Two inputs, one model:
  * frames of the running tracer's live feed (tracer/live/wire.py): a call is shown when its request
    is complete, then its answer *as it streams* - the response bytes go through Content-Encoding,
    the SSE parser or the AWS event-stream decoder, into the same ``MessageBuilder`` the viewer uses
    (tracer/protocols/sse.py, eventstream.py) - text, thinking, tool calls with their input, tokens;
  * records of the log (tracer/live/follow.py), the final word on every call: the viewer's
    ``analyze_call`` gives model, tokens, time to first token, duration, cost, errors; the record's
    ``tracer`` key gives the process, notes and gaps. A record replaces what streaming showed of its
    call (matched by connection, stream and request time, exactly as the feed announced them).

Subagents: the viewer's grouping rules (tracer/viewer/analyze.py ``CallFacts``, ``prompt_matches``),
applied call by call: a call belongs to the conversation (thread) of its session id, system prompt
and first message; a thread whose first message carries the prompt of a Task/Agent tool call made
in another thread is that call's subagent and is shown under it. Decisions are made when a call
appears and revised when the parent's tool call is learnt later (its record can arrive after the
subagent's first request).

Memory is bounded whatever the target sends: the last ``max_calls`` calls, a tail of each streamed
text, heads of tool inputs and final texts, a bounded set of conversations and Task prompts.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from tracer.protocols.encoding import StreamDecoder
from tracer.protocols.eventstream import EventStreamDecoder, bedrock_event
from tracer.protocols.sse import MessageBuilder, SSEParser
from tracer.viewer.analyze import (FIRST_TEXT_CHARS, SUBAGENT_TOOLS, CallFacts, analyze_call, prompt_matches, text_of,
                                   user_text)

TEXT_TAIL = 6000          # characters of a streaming answer kept (its end)
FINAL_TEXT = 8000         # characters of a finished answer kept (its beginning; the log has it all)
TOOL_INPUT = 600          # characters of a tool call's input kept (shown)
TASK_INPUT = 2 * FIRST_TEXT_CHARS + 1024   # of a Task/Agent call's input: enough to read its prompt live
PROMPT = 240              # characters of the last user message kept
LIVE_FIELD_CAP = 8192     # MessageBuilder's per-field cap for streamed answers (text goes through on_text)
REQUEST_BODY_MAX = 16 << 20
MAX_THREADS = 500
MAX_PROMPTS = 500
MAX_DEPTH = 6
RECORD_WAIT_S = 15.0      # an ended call whose record does not come is given up after this long


class TextTail:
    """The last ``cap`` characters of a growing text; ``total`` counts every character added, so
    ``total - len(value())`` characters came before what is kept."""

    __slots__ = ("cap", "parts", "kept", "total")

    def __init__(self, cap: int = TEXT_TAIL):
        self.cap = cap
        self.parts: deque[str] = deque()
        self.kept = 0
        self.total = 0

    def add(self, s: str) -> None:
        if not s:
            return
        self.parts.append(s)
        self.kept += len(s)
        self.total += len(s)
        if self.kept > 2 * self.cap:
            v = "".join(self.parts)[-self.cap:]
            self.parts = deque([v])
            self.kept = len(v)

    def value(self) -> str:
        if len(self.parts) > 1:
            v = "".join(self.parts)
            self.parts = deque([v])
        v = self.parts[0] if self.parts else ""
        if len(v) > self.cap:
            v = v[-self.cap:]
            self.parts = deque([v])
            self.kept = len(v)
        return v

    @property
    def start(self) -> int:
        """Offset (in characters of the whole text) of the first kept character."""
        return self.total - len(self.value())


@dataclass
class Tool:
    index: int
    name: str
    id: str = ""
    input: str = ""           # head of its input (JSON text)
    input_chars: int = 0      # characters of input seen
    done: bool = False


@dataclass
class Call:
    n: int                            # display number, #1 upwards
    k: int | None = None              # the feed's number
    key: tuple | None = None          # (conn id, stream id, request timestamp) as the record has them
    pid: int = 0
    comm: str = ""
    process: str = ""                 # command line / parent chain from the record, when present
    proc_name: str = ""               # the process' name (/proc/PID/comm, looked up by the view)
    method: str = ""
    url: str = ""
    t0: float | None = None           # request start (epoch s)
    model: str = ""
    kind: str = "messages"            # messages | other
    prompt: str = ""                  # last user message, shortened
    request_cut: int = 0              # the request body was not sent to the view (bytes)
    state: str = "sent"               # sent | streaming | ended | done | lost
    status: int | None = None
    text: TextTail = field(default_factory=TextTail)
    final_text: str | None = None     # from the record (head)
    final_text_chars: int = 0         # its full length
    thinking_chars: int = 0
    tools: list[Tool] = field(default_factory=list)
    usage: dict = field(default_factory=dict)
    ttft_s: float | None = None
    duration_s: float | None = None
    t_last: float | None = None       # last data seen (epoch s)
    stop_reason: str | None = None
    error: str | None = None
    complete: bool = True
    notes: list[str] = field(default_factory=list)
    gap_bytes: int = 0
    live_lost: int = 0                # response bytes the feed dropped for this view (log unaffected)
    cost: float | None = None
    record_line: int | None = None
    ended_at: float | None = None     # monotonic time of the feed's end frame
    thread: Any = None                # _Thread
    stream: Any = None                # _LiveStream while the answer streams

    @property
    def final(self) -> bool:
        return self.state in ("done", "lost")

    @property
    def parent(self) -> "Call | None":
        return self.thread.parent if self.thread is not None else None

    @property
    def depth(self) -> int:
        d, c, seen = 0, self, set()
        while c.parent is not None and c.n not in seen and d < MAX_DEPTH:
            seen.add(c.n)
            c = c.parent
            d += 1
        return d

    def order_key(self) -> tuple:
        """Tree order: a subagent's calls right after the call that started it."""
        chain, c, seen = [], self, set()
        while c is not None and c.n not in seen and len(chain) <= MAX_DEPTH:
            seen.add(c.n)
            chain.append((c.t0 if c.t0 is not None else float("inf"), c.n))
            c = c.parent
        return tuple(reversed(chain))


def last_user_text(messages: list) -> str:
    """What the user (or the tool loop) last said: the last user message's text, else a description
    of its tool results."""
    for m in reversed(messages):
        if not isinstance(m, dict) or m.get("role") != "user":
            continue
        t = user_text(m)
        if t.strip():
            return t
        c = m.get("content")
        if isinstance(c, list):
            for b in c:
                if isinstance(b, dict) and b.get("type") == "tool_result":
                    inner = b.get("content")
                    if isinstance(inner, list):
                        inner = " ".join(text_of(x.get("text")) or "" for x in inner if isinstance(x, dict))
                    return "[tool result] " + (text_of(inner) or "")
        return ""
    return ""


def shorten(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[:n - 1] + "…"


class _LiveStream:
    """One streaming answer as its bytes arrive, into a MessageBuilder (text via on_text)."""

    def __init__(self, call: Call, ctype: str, enc: str):
        self.call = call
        self.decoder = None
        self.broken = ""
        if enc and enc.strip().lower() != "identity":
            self.decoder = StreamDecoder(enc, 64 << 20)
            if self.decoder.error:
                self.decoder = None
                self.broken = f"cannot decode {enc}"
        self.es = "amazon.eventstream" in ctype
        self.sse = None if self.es else SSEParser()
        self.esd = EventStreamDecoder() if self.es else None
        self.last_index: int | None = None
        self.builder = MessageBuilder(max_field_chars=LIVE_FIELD_CAP, on_text=self._on_text)

    def _on_text(self, index: int, fld: str, piece: str) -> None:
        c = self.call
        if fld == "text":
            if self.last_index is not None and index != self.last_index and c.text.total:
                c.text.add("\n")
            self.last_index = index
            c.text.add(piece)
        elif fld == "thinking":
            c.thinking_chars += len(piece)

    def feed(self, data: bytes, ts: float | None) -> None:
        if self.decoder is not None:
            data = self.decoder.feed(data)
        if not data:
            return
        before = self.builder.first_delta_end
        if self.sse is not None:
            for ev in self.sse.feed(data):
                try:
                    payload = orjson.loads(ev.data)
                except orjson.JSONDecodeError:
                    self.builder.apply(ev)
                    continue
                self._event(payload, ev.end, ev.event)
        else:
            for msg in self.esd.feed(data):
                kind, v = bedrock_event(msg)
                if kind == "event":
                    self._event(v, msg.end, "message")
                elif kind == "exception" and isinstance(v, dict):
                    self.call.error = str(v.get("message") or v.get("type"))
        if before is None and self.builder.first_delta_end is not None and ts is not None \
                and self.call.t0 is not None:
            self.call.ttft_s = max(0.0, ts - self.call.t0)

    def lost(self) -> None:
        """Bytes of this answer never reached the view: start reading afresh at the next event."""
        if self.sse is not None:
            self.sse = SSEParser()
        if self.decoder is not None:
            self.broken = "compressed answer: the rest cannot be decoded live"
            self.decoder = None
            self.sse = None
            self.esd = None

    def _event(self, payload: Any, end: int, name: str) -> None:
        c = self.call
        if isinstance(payload, dict):
            t = payload.get("type")
            if t == "content_block_start":
                b = payload.get("content_block")
                i = payload.get("index")
                if isinstance(b, dict) and isinstance(i, int) and b.get("type") in (
                        "tool_use", "server_tool_use", "mcp_tool_use"):
                    c.tools.append(Tool(i, str(b.get("name") or "?"), str(b.get("id") or "")))
            elif t == "content_block_delta":
                d = payload.get("delta")
                if isinstance(d, dict) and d.get("type") == "input_json_delta":
                    tool = self._tool(payload.get("index"))
                    piece = d.get("partial_json")
                    if tool is not None and isinstance(piece, str):
                        tool.input_chars += len(piece)
                        cap = TASK_INPUT if tool.name in SUBAGENT_TOOLS else TOOL_INPUT
                        if len(tool.input) < cap:
                            tool.input = (tool.input + piece)[:cap]
            elif t == "content_block_stop":
                tool = self._tool(payload.get("index"))
                if tool is not None:
                    tool.done = True
        self.builder.apply_payload(payload, end, name)
        m = self.builder.message
        if isinstance(m, dict):
            if isinstance(m.get("usage"), dict):
                c.usage = dict(m["usage"])
            if m.get("model") and not c.model:
                c.model = str(m["model"])
            if m.get("stop_reason"):
                c.stop_reason = str(m["stop_reason"])
        if self.builder.error is not None and not c.error:
            e = self.builder.error
            c.error = str(e.get("message") if isinstance(e, dict) and e.get("message") else e)

    def _tool(self, index: Any) -> Tool | None:
        for t in reversed(self.call.tools):
            if t.index == index:
                return t
        return None

    def tasks(self) -> list[tuple[str, str]]:
        """(tool_use id, prompt) of the Task/Agent calls whose input is complete so far."""
        out = []
        for t in self.call.tools:
            if t.done and t.name in SUBAGENT_TOOLS and t.input_chars <= TASK_INPUT:
                try:
                    inp = orjson.loads(t.input)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(inp, dict) and isinstance(inp.get("prompt"), str):
                    out.append((t.id, inp["prompt"].strip()))
        return out


@dataclass
class _Thread:
    id: int
    first_text: str
    start: float
    parent: Call | None = None


class Nesting:
    """Subagent threads under the calls that started them (see the module docstring)."""

    def __init__(self) -> None:
        self.threads: OrderedDict[tuple, _Thread] = OrderedDict()
        self.by_sid_first: dict[tuple[str, str], _Thread] = {}
        self.prompts: deque[tuple[str, str, _Thread, Call]] = deque(maxlen=MAX_PROMPTS)
        self.known_tools: set[str] = set()
        self._next = 0

    def place(self, call: Call, facts: CallFacts) -> None:
        th = self.threads.get(facts.key)
        if th is None and facts.sid:
            th = self.by_sid_first.get((facts.sid, facts.first))
        if th is None:
            self._next += 1
            th = _Thread(self._next, facts.first_text.strip(), call.t0 or 0.0)
            self.threads[facts.key] = th
            if facts.sid:
                self.by_sid_first.setdefault((facts.sid, facts.first), th)
            while len(self.threads) > MAX_THREADS:
                _k, old = self.threads.popitem(last=False)
                for k2 in [k for k, v in self.by_sid_first.items() if v is old]:
                    del self.by_sid_first[k2]
            for prompt, tool_id, owner, pcall in reversed(self.prompts):
                if owner is not th and prompt_matches(prompt, th.first_text):
                    th.parent = pcall
                    break
        else:
            self.threads.move_to_end(facts.key)
        call.thread = th
        self.add_tasks(call, facts.tasks)

    def add_tasks(self, call: Call, tasks: list[tuple[str, str]]) -> bool:
        """Task/Agent calls made by ``call``; threads they started get their parent. True when a
        thread got one."""
        th = call.thread
        changed = False
        if th is None:
            return False
        for tool_id, prompt in tasks:
            if not prompt or tool_id in self.known_tools:
                continue
            prompt = prompt[:FIRST_TEXT_CHARS]        # all that matching looks at (prompt_matches)
            self.known_tools.add(tool_id)
            self.prompts.append((prompt, tool_id, th, call))
            for other in self.threads.values():
                if other is not th and other.parent is None and other.start >= th.start - 1e-6 \
                        and prompt_matches(prompt, other.first_text):
                    other.parent = call
                    changed = True
                    break
        if len(self.known_tools) > 4 * MAX_PROMPTS:
            self.known_tools = {p[1] for p in self.prompts}
        return changed


class Model:
    """Calls from feed frames and log records (see the module docstring). ``changes`` lists what
    happened since the renderer last looked: ("start" | "done", call)."""

    def __init__(self, max_calls: int = 200) -> None:
        self.max_calls = max_calls
        self.calls: OrderedDict[int, Call] = OrderedDict()
        self.by_k: dict[int, Call] = {}
        self.by_key: dict[tuple, Call] = {}
        self.nesting = Nesting()
        self.changes: list[tuple[str, Call]] = []
        self.n = 0
        self.records = 0
        self.feed_state = "none"      # none | connected | ended
        self.feed_pid: int | None = None
        self.live_lost = 0
        self.warnings: list[str] = []
        self.dirty = True

    # -- feed frames ---------------------------------------------------------------------------
    def on_frame(self, h: dict[str, Any], payload: bytes) -> None:
        t = h.get("t")
        self.dirty = True
        if t == "hello":
            self.feed_state = "connected"
            self.feed_pid = h.get("pid") if isinstance(h.get("pid"), int) else None
            return
        if t == "bye":
            self.feed_state = "ended"
            return
        k = h.get("k")
        if not isinstance(k, int):
            return
        if t == "req":
            self._on_req(k, h, payload)
            return
        call = self.by_k.get(k)
        if call is None or call.final:
            return
        if t == "head":
            call.status = h.get("status") if isinstance(h.get("status"), int) else None
            ctype = str(h.get("ctype") or "").lower()
            if call.status and call.status >= 200 and ("event-stream" in ctype or "eventstream" in ctype):
                call.stream = _LiveStream(call, ctype, str(h.get("enc") or ""))
                call.state = "streaming"
        elif t == "data":
            ts = h.get("ts") if isinstance(h.get("ts"), (int, float)) else None
            call.t_last = ts
            if call.stream is not None and not call.stream.broken:
                try:
                    call.stream.feed(payload, ts)
                except Exception as e:       # a hostile stream costs its live display, nothing else
                    call.stream.broken = f"{type(e).__name__}: {e}"
                self._learn_tasks(call)
        elif t == "lost":
            n = h.get("bytes") if isinstance(h.get("bytes"), int) else 0
            call.live_lost += n
            self.live_lost += n
            if call.stream is not None:
                call.stream.lost()
        elif t == "end":
            call.state = "ended"
            call.ended_at = time.monotonic()
            if call.t0 is not None and call.t_last is not None:
                call.duration_s = max(0.0, call.t_last - call.t0)
            if call.stream is not None:
                self._learn_tasks(call)
            if h.get("complete") is False:
                call.complete = False

    def _on_req(self, k: int, h: dict[str, Any], payload: bytes) -> None:
        call = self._new_call()
        call.k = k
        self.by_k[k] = call
        ts = h.get("ts") if isinstance(h.get("ts"), (int, float)) else None
        call.key = (h.get("conn"), h.get("sid"), ts)
        self.by_key[call.key] = call
        call.t0 = ts
        call.pid = h.get("pid") if isinstance(h.get("pid"), int) else 0
        call.comm = str(h.get("comm") or "")
        call.method = str(h.get("method") or "")
        call.url = str(h.get("url") or "")
        if h.get("cut"):
            call.request_cut = h.get("size") if isinstance(h.get("size"), int) else 0
        body = None
        if payload and len(payload) <= REQUEST_BODY_MAX:
            data = payload
            enc = str(h.get("enc") or "")
            try:
                if enc:
                    d = StreamDecoder(enc, REQUEST_BODY_MAX)
                    data = d.feed(payload) + d.flush()
                body = orjson.loads(data)
            except Exception:
                body = None
        headers = {"x-claude-code-session-id": h["session"]} if h.get("session") else {}
        self._describe_request(call, headers, body)
        self.changes.append(("start", call))

    def _describe_request(self, call: Call, headers: dict, body: Any) -> None:
        if isinstance(body, dict) and isinstance(body.get("messages"), list):
            call.kind = "messages"
            if body.get("model"):
                call.model = str(body["model"])
            call.prompt = shorten(last_user_text(body["messages"])[:PROMPT * 8], PROMPT)
            try:
                self.nesting.place(call, CallFacts(headers, body))
            except Exception as e:            # grouping is a nicety: a hostile body loses only it
                self.warnings.append(f"call #{call.n}: cannot be grouped ({type(e).__name__})")
        elif body is not None:
            call.kind = "other"

    def _learn_tasks(self, call: Call) -> None:
        if call.stream is None or call.thread is None:
            return
        if self.nesting.add_tasks(call, call.stream.tasks()):
            self.dirty = True

    # -- log records ---------------------------------------------------------------------------
    def on_record(self, lineno: int, rec: dict) -> Call:
        self.records += 1
        self.dirty = True
        req = rec.get("request") if isinstance(rec.get("request"), dict) else {}
        tr = rec.get("tracer") if isinstance(rec.get("tracer"), dict) else {}
        key = (tr.get("conn_id"), tr.get("stream_id"), req.get("timestamp"))
        call = self.by_key.get(key)
        if call is None and tr.get("conn_id") is not None:
            # the feed's request time and the record's are the same number; a record whose head was
            # rebuilt differently (attach mid-stream) is matched to the oldest ended call of its stream
            for c in self.calls.values():
                if (not c.final and c.key is not None and c.key[0] == tr.get("conn_id")
                        and c.key[1] == tr.get("stream_id") and c.state == "ended"):
                    call = c
                    break
        fresh = call is None
        if fresh:
            call = self._new_call()
            call.key = key
            if isinstance(req.get("timestamp"), (int, float)):
                call.t0 = float(req["timestamp"])
        call.record_line = lineno
        call.pid = tr.get("pid") if isinstance(tr.get("pid"), int) else call.pid
        call.comm = str(tr.get("comm") or call.comm)
        proc = tr.get("process")
        if isinstance(proc, dict):
            call.process = str(proc.get("chain_text") or proc.get("command") or "")
        call.method = str(req.get("method") or call.method)
        call.url = str(req.get("url") or call.url)
        body = req.get("body")
        if fresh or call.thread is None:
            self._describe_request(call, req.get("headers") or {}, body)
        try:
            info = analyze_call(0, rec, max_field_chars=FINAL_TEXT)
        except Exception as e:               # a record the viewer cannot read either
            self.warnings.append(f"line {lineno}: cannot be analysed ({type(e).__name__})")
            info = None
        if info is not None:
            call.kind = info.kind
            call.model = info.model or call.model
            call.status = info.status
            call.usage = {"input_tokens": info.input_tokens, "output_tokens": info.output_tokens,
                          "cache_read_input_tokens": info.cache_read_tokens,
                          "cache_creation_input_tokens": info.cache_creation_tokens} \
                if info.response else call.usage
            call.ttft_s = info.ttft_ms / 1000.0 if info.ttft_ms is not None else call.ttft_s
            call.duration_s = info.duration_ms / 1000.0 if info.duration_ms is not None else call.duration_s
            call.stop_reason = info.stop_reason
            call.error = info.error
            call.complete = info.complete
            call.cost = info.cost
            self._final_content(call, info.response)
        call.notes = [str(n) for n in tr.get("notes") or [] if isinstance(n, str)][:8]
        gaps = tr.get("gaps") if isinstance(tr.get("gaps"), list) else []
        call.gap_bytes = sum(g.get("bytes", 0) for g in gaps
                             if isinstance(g, dict) and isinstance(g.get("bytes"), int))
        call.state = "done"
        call.stream = None
        if fresh:
            self.changes.append(("start", call))
        self.changes.append(("done", call))
        self._evict()
        return call

    def _final_content(self, call: Call, response: Any) -> None:
        if not isinstance(response, dict) or not isinstance(response.get("content"), list):
            return
        texts, tools, total = [], [], 0
        for i, b in enumerate(response["content"]):
            if not isinstance(b, dict):
                continue
            if b.get("type") == "text":
                t = text_of(b.get("text"), FINAL_TEXT) or ""
                total += len(t)
                texts.append(t)
            elif b.get("type") in ("tool_use", "server_tool_use", "mcp_tool_use"):
                inp = b.get("input")
                try:
                    raw = inp if isinstance(inp, str) else orjson.dumps(inp).decode()
                except TypeError:
                    raw = str(inp)
                tools.append(Tool(i, str(b.get("name") or "?"), str(b.get("id") or ""), raw[:TOOL_INPUT],
                                  len(raw), True))
        joined = "\n".join(texts)
        call.final_text = joined[:FINAL_TEXT]
        call.final_text_chars = max(total, len(joined))
        call.tools = tools
        if call.thread is not None:
            tasks = []
            for t in tools:
                if t.name in SUBAGENT_TOOLS:
                    inp = next((b.get("input") for b in response["content"]
                                if isinstance(b, dict) and b.get("id") == t.id), None)
                    if isinstance(inp, dict) and isinstance(inp.get("prompt"), str):
                        tasks.append((t.id, inp["prompt"].strip()))
            self.nesting.add_tasks(call, tasks)

    # -- upkeep --------------------------------------------------------------------------------
    def _new_call(self) -> Call:
        self.n += 1
        call = Call(self.n)
        self.calls[call.n] = call
        return call

    def _evict(self) -> None:
        while len(self.calls) > self.max_calls:
            victim = next((c for c in self.calls.values() if c.final), None)
            if victim is None:
                victim = next(iter(self.calls.values()))
            self._forget(victim)

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.n, None)
        if call.k is not None and self.by_k.get(call.k) is call:
            del self.by_k[call.k]
        if call.key is not None and self.by_key.get(call.key) is call:
            del self.by_key[call.key]

    def expire(self, now: float | None = None, feed_gone: bool = False,
               why: str = "the tracer stopped before this call finished") -> None:
        """Calls whose record will not come: ended long ago, or in flight when the feed went away."""
        now = time.monotonic() if now is None else now
        for c in list(self.calls.values()):
            if c.final:
                continue
            if (c.ended_at is not None and now - c.ended_at > RECORD_WAIT_S) or feed_gone:
                c.state = "lost"
                c.notes.append("its record did not reach the log" if c.ended_at is not None else why)
                c.stream = None
                self.changes.append(("done", c))
                self.dirty = True

    def active(self) -> list[Call]:
        return sorted((c for c in self.calls.values() if not c.final), key=Call.order_key)

    def take_changes(self) -> list[tuple[str, Call]]:
        out, self.changes = self.changes, []
        return out
