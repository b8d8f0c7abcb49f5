"""From log records to what the viewer shows: per-call figures, conversations (threads) and sessions.

API (also used by other sinks, e.g. OpenTelemetry export)::

    an = analyze(records)                          # a list of records in memory
    an, lines = analyze_log(path, warnings)        # a log file, streamed: bounded memory, linear time
    an.calls[i]          # CallInfo: model, tokens (input/output/cache read/cache creation), ttfb/ttft/
                         #   duration ms, stop reason, error, .response (the Messages response rebuilt
                         #   from SSE or the JSON body; None with keep_responses=False), .thread, .session
    an.threads[t]        # Thread: calls (indexes), final call, kind main|subagent|aux, parent
                         #   (thread, tool_use id), children, continues/continued_by, title, sid
    an.sessions[s]       # Session: root thread, threads, calls; .totals(an.calls)
    lines[i]             # analyze_log only: LogLine of call i (line number, offset, length)

Or record by record: ``a = Analyzer(); a.add(rec) ...; an = a.finish()``. Calls that keep arriving
(live export): ``w = GroupingWindow(); w.add(index, rec, analyze_call(index, rec)); an = w.group()``
as often as wanted, ``w.forget(indexes)`` for calls no longer needed (``an.calls`` is then a dict).
Every pass is linear in the size of the log: a record is looked at once, then only small facts about
it are kept (fingerprints, tool names, Task prompts), and grouping uses dictionaries, never all-pairs
comparisons.

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
import math
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any
from functools import cached_property, lru_cache
from urllib.parse import unquote, urlsplit

import orjson

from tracer.protocols.eventstream import reconstruct_eventstream
from tracer.protocols.sse import reconstruct
from tracer.viewer.cost import PriceTable, provider_for
from tracer.viewer.logs import BigString, LogLine, dumps, iter_lines
from tracer.viewer.processes import ProcessTree

CONTINUATION_MARK = "This session is being continued from a previous conversation"
SUBAGENT_TOOLS = ("Task", "Agent")
WARMUP_TEXTS = ("Warmup",)
BILLING_PREFIX = "x-anthropic-billing-header:"
FIRST_TEXT_CHARS = 4 << 10    # of a thread's first message kept for matching subagents and continuations
SESSION_HEADER = "x-claude-code-session-id"  # Claude Code names its session in every request  # Claude Code pre-warms its subagents' prompt caches with these


# ----------------------------------------------------------------------------------------- calls

@lru_cache(maxsize=256)
def _prices_for(model: str, provider: str):
    return PriceTable.load().match(model, provider)


def _url_model(path: str) -> str:
    """The model of a Bedrock runtime call: /model/{id}/invoke[-with-response-stream]."""
    parts = path.split("/")
    if len(parts) >= 4 and parts[1] == "model":
        return unquote(parts[2])
    return ""


def _num(v: Any) -> float | None:
    """A finite number from the log, else None (a log may hold Infinity, or integers past a float)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _int(v: Any) -> int:
    f = _num(v)
    return int(v) if f is not None and isinstance(v, int) else int(f) if f is not None else 0


def is_sse(response: dict) -> bool:
    headers = response.get("headers") or {}
    ctype = ""
    if isinstance(headers, dict):
        for k, v in headers.items():
            if str(k).lower() == "content-type":
                ctype = str(v).lower()
    raw = response.get("body_raw")
    if isinstance(raw, BigString):
        raw = raw.head(16)[0]
    if "text/event-stream" in ctype:
        return isinstance(raw, str)
    return isinstance(raw, str) and (raw.startswith("event:") or raw.startswith("data:"))


def is_eventstream(response: dict) -> bool:
    """A Bedrock streaming answer (AWS event stream), logged as text or base64 in body_raw."""
    return ("vnd.amazon.eventstream" in header(response.get("headers"), "content-type").lower()
            and isinstance(response.get("body_raw"), (str, BigString)))


def _body_chunks(raw: str | BigString, base64_encoded: bool):
    """The logged response body as bytes chunks (decoded from base64 when logged so)."""
    if isinstance(raw, BigString):
        pieces = raw.pieces()
    else:
        pieces = iter((raw,))
    if not base64_encoded:
        for p in pieces:
            yield p.encode("utf-8", "surrogatepass")
        return
    carry = ""
    for p in pieces:
        p = carry + "".join(p.split())
        cut = len(p) - len(p) % 4
        carry = p[cut:]
        if cut:
            try:
                yield base64.b64decode(p[:cut], validate=True)
            except ValueError:
                return
    if carry:
        try:
            yield base64.b64decode(carry + "=" * (-len(carry) % 4))
        except ValueError:
            return


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
    truncated: list[dict] = field(default_factory=list)   # response fields cut by max_field_chars
    n_messages: int = 0
    thread: int | None = None
    session: int | None = None
    provider: str = "anthropic"   # price table provider: "aws" for Bedrock runtime hosts
    cost: float | None = None     # USD from the price table; None: no usage, or a model it does not know
    price_model: str | None = None  # the table's model id used for the cost

    def summary(self) -> dict:
        return {
            "i": self.index, "t": self.t, "te": self.t_end, "method": self.method, "url": self.url,
            "host": self.host, "path": self.path, "status": self.status, "kind": self.kind,
            "model": self.model, "stream": self.stream, "in": self.input_tokens,
            "out": self.output_tokens, "cr": self.cache_read_tokens, "cc": self.cache_creation_tokens,
            "ttfb": self.ttfb_ms, "ttft": self.ttft_ms, "dur": self.duration_ms, "tps": self.output_tps,
            "stop": self.stop_reason, "err": self.error, "complete": self.complete,
            "nmsg": self.n_messages, "thread": self.thread, "session": self.session,
            "cost": self.cost, "pm": self.price_model,
        }


def analyze_call(index: int, rec: dict, max_field_chars: int | None = None) -> CallInfo:
    """One record's figures; the response is rebuilt with every text cut to ``max_field_chars``."""
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
    c.provider = provider_for(parts.hostname or "")
    if is_msgs:
        c.model = str(body.get("model") or "") or _url_model(parts.path)
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
    es = is_eventstream(res)
    if es or is_sse(res):
        # body not valid UTF-8 (always so for an event stream): logged as base64
        chunks_in = _body_chunks(res["body_raw"], tr.get("response_body_encoding") == "base64")
        if es:   # Bedrock: the same Anthropic events in binary AWS event-stream frames
            r = reconstruct_eventstream(chunks_in, max_field_chars=max_field_chars)
        else:
            r = reconstruct(chunks_in, tr.get("response_holes") or (),
                            max_field_chars=max_field_chars)
        c.response = r.message
        c.rebuild_errors = r.errors
        c.truncated = r.truncated
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
    if c.response and isinstance(c.response.get("usage"), dict) and c.model:
        prices = _prices_for(c.model, c.provider)
        if prices is not None:
            c.price_model = prices.id
            c.cost = prices.cost(c.response["usage"], c.t)
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
    """A copy without cache_control keys at any depth (iterative: a deeply nested log cannot recurse)."""
    if not isinstance(v, (dict, list)):
        return v
    root: list = [None]
    stack = [(v, root, 0)]
    while stack:
        src, dst, key = stack.pop()
        if isinstance(src, dict):
            out: Any = {}
            dst[key] = out
            for k, x in src.items():
                if k == "cache_control":
                    continue
                if isinstance(x, (dict, list)):
                    out[k] = None
                    stack.append((x, out, k))
                else:
                    out[k] = x
        else:
            out = [None] * len(src)
            dst[key] = out
            for i, x in enumerate(src):
                if isinstance(x, (dict, list)):
                    stack.append((x, out, i))
                else:
                    out[i] = x
    return root[0]


def _normalize(v: Any) -> Any:
    """Drop what clients change between turns of one conversation: cache_control markers, and string
    content vs. a single text block."""
    v = _strip_cache_control(v)
    if isinstance(v, dict) and isinstance(v.get("content"), (str, BigString)):
        v = dict(v, content=[{"type": "text", "text": v["content"]}])
    return v


def _big_digest(o: Any) -> Any:
    if isinstance(o, BigString):
        h = hashlib.blake2b(digest_size=16)
        for piece in o.pieces():
            h.update(piece.encode("utf-8", "surrogatepass"))
        return {"$big": h.hexdigest()}
    raise TypeError(type(o).__name__)


def fingerprint(v: Any) -> str:
    v = _normalize(v)
    try:
        raw = orjson.dumps(v, default=_big_digest)
    except TypeError:
        raw = json.dumps(v, ensure_ascii=True, separators=(",", ":"), default=_big_digest).encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def text_of(v: Any, limit: int = 1 << 16) -> str | None:
    """A string field's value (a big one's first ``limit`` characters), else None."""
    if isinstance(v, str):
        return v
    if isinstance(v, BigString):
        return v.head(limit)[0]
    return None


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
    if isinstance(c, (str, BigString)):
        return text_of(c) or ""
    out = []
    if isinstance(c, list):
        for b in c:
            if isinstance(b, dict) and b.get("type") == "text" and text_of(b.get("text")) is not None:
                out.append(text_of(b["text"]))
    return "\n".join(out)


def user_text(msg: Any) -> str:
    """What the user typed: the last text block that is not a <system-reminder>."""
    if not isinstance(msg, dict):
        return ""
    c = msg.get("content")
    if isinstance(c, (str, BigString)):
        texts = [text_of(c)]
    elif isinstance(c, list):
        texts = [text_of(b["text"]) for b in c if isinstance(b, dict) and b.get("type") == "text"
                 and text_of(b.get("text")) is not None]
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
    pick = " ".join(user_text(msg)[:limit * 8].split())
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
    first_text: str = ""            # all text blocks of the first message (first FIRST_TEXT_CHARS)
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
            "cost": sum(c.cost for c in cs if c.cost is not None),
            "cost_unknown": sum(1 for c in cs if c.cost is None and c.kind == "messages" and c.response),
        }


@dataclass
class Analysis:
    calls: list[CallInfo]
    threads: list[Thread]
    sessions: list[Session]
    processes: list[dict] = field(default_factory=list)   # tracer/viewer/processes.py


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



@dataclass
class _Facts:
    """What grouping needs of one Messages call, kept instead of the record."""
    sid: str
    key: tuple[str, str, str]
    tools: tuple[str, ...]
    first: str                                   # first message's fingerprint
    tasks: tuple[tuple[str, str], ...]           # Task/Agent (tool_use id, prompt) in request + response


class CallFacts:
    """What the grouping rules look at in one Messages call (see the module docstring): its thread
    ``key`` (session id, system prompt and first message fingerprints), the first message's text
    (for subagent and continuation matching), prompt and title (computed when first asked for), tool
    names, and the Task/Agent calls in its messages and response. Also used by the live view
    (tracer/live/model.py), call by call."""

    def __init__(self, headers: Any, body: dict, response: Any = None):
        msgs = body["messages"]
        self._first_msg = msgs[0] if msgs else None
        self.sid = header(headers, SESSION_HEADER)
        self.first = fingerprint(msgs[0]) if msgs else ""
        self.key = (self.sid, system_fingerprint(body.get("system")), self.first)
        self.tools = _tool_names(body)
        tmsgs = list(msgs)
        if isinstance(response, dict):
            tmsgs.append({"role": "assistant", "content": response.get("content")})
        self.tasks = _subagent_calls(tmsgs)

    @cached_property
    def first_text(self) -> str:
        return message_text(self._first_msg)[:FIRST_TEXT_CHARS] if self._first_msg is not None else ""

    @cached_property
    def prompt(self) -> str:
        return user_text(self._first_msg)[:1024] if self._first_msg is not None else ""

    @cached_property
    def title(self) -> str:
        return _prompt_preview(self._first_msg) if self._first_msg is not None else ""


def prompt_matches(prompt: str, first_text: str) -> bool:
    """The subagent rule: does a thread whose first message has ``first_text`` (its first
    FIRST_TEXT_CHARS characters, stripped) carry this Task/Agent ``prompt``? Equal, or - for a prompt
    the first message holds with more around it - contained (a long prompt by its first quarter)."""
    if not prompt:
        return False
    if first_text == prompt[:FIRST_TEXT_CHARS]:
        return True
    probe = prompt if len(prompt) < FIRST_TEXT_CHARS // 2 else prompt[:FIRST_TEXT_CHARS // 4]
    return len(first_text) > len(probe) and probe in first_text


def _call_facts(rec: dict, c: CallInfo, texts: dict[str, tuple[str, str, str]], intern) -> _Facts:
    """What grouping keeps of one Messages call (``c`` with its rebuilt response): its CallFacts,
    interned; the first message's texts go to ``texts`` once per first message (bounded: a 100 KB
    prompt per thread in a 1,000-thread log would otherwise stay in memory)."""
    req = rec.get("request") or {}
    f = CallFacts(req.get("headers"), req["body"], c.response)
    if f.first not in texts:
        texts[f.first] = (f.first_text, f.prompt, f.title)
    tasks = tuple(intern((intern(t), intern(p))) for t, p in f.tasks)
    return _Facts(intern(f.sid), intern(f.key), intern(f.tools), f.first, intern(tasks))


class Analyzer:
    """Calls added one record at a time (nothing of a record is kept but small facts), then grouped.

    ``keep_responses``: keep each call's rebuilt response on ``CallInfo.response`` (False for big logs:
    the page build rebuilds a call's response again when it writes it). ``max_field_chars``: cut every
    rebuilt text to that many characters (see ``MessageBuilder``).
    """

    def __init__(self, *, keep_responses: bool = True, max_field_chars: int | None = None) -> None:
        self.calls: list[CallInfo] = []
        self.keep_responses = keep_responses
        self.max_field_chars = max_field_chars
        self._facts: dict[int, _Facts] = {}
        self._intern: dict[Any, Any] = {}
        self._texts: dict[str, tuple[str, str, str]] = {}   # first fingerprint -> (text, prompt, title)
        self._procs = ProcessTree()

    def _i(self, v: Any) -> Any:
        return self._intern.setdefault(v, v)

    def add(self, rec: dict) -> CallInfo:
        c = analyze_call(len(self.calls), rec, self.max_field_chars)
        self.calls.append(c)
        self._procs.add(c.index, rec)
        if c.kind == "messages":
            self._facts[c.index] = _call_facts(rec, c, self._texts, self._i)
        if not self.keep_responses:
            c.response = None
        return c

    def finish(self) -> Analysis:
        an = _group(self.calls, self._facts, self._texts)
        an.processes = self._procs.summary()
        return an


def analyze(records, *, keep_responses: bool = True, max_field_chars: int | None = None) -> Analysis:
    """Calls, threads and sessions of records (any iterable of record dicts)."""
    a = Analyzer(keep_responses=keep_responses, max_field_chars=max_field_chars)
    for r in records:
        a.add(r)
    return a.finish()


class GroupingWindow:
    """The grouping of calls that keep arriving (live export, ``tracer.sinks.otlp``): the same facts and
    the same grouping as ``Analyzer``, but calls are added under the caller's own index, grouped as often
    as wanted (``group``), and dropped when no longer needed (``forget``), so memory is bounded by what
    the window holds. Only Messages API calls take part; nothing of a record is kept but its facts and
    its figures without the response."""

    def __init__(self) -> None:
        self.calls: dict[int, CallInfo] = {}
        self._facts: dict[int, _Facts] = {}
        self._texts: dict[str, tuple[str, str, str]] = {}
        self._intern: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self.calls)

    def __contains__(self, index: int) -> bool:
        return index in self.calls

    def _i(self, v: Any) -> Any:
        return self._intern.setdefault(v, v)

    def add(self, index: int, rec: dict, call: CallInfo) -> None:
        """``call``: ``analyze_call`` of ``rec`` (its response is read here and not kept)."""
        if call.kind != "messages":
            return
        self._facts[index] = _call_facts(rec, call, self._texts, self._i)
        self.calls[index] = replace(call, index=index, response=None, rebuild_errors=[], truncated=[],
                                    thread=None, session=None)

    def forget(self, indexes) -> None:
        for i in indexes:
            self.calls.pop(i, None)
            self._facts.pop(i, None)
        firsts = {f.first for f in self._facts.values()}
        self._texts = {k: v for k, v in self._texts.items() if k in firsts}
        self._intern = {}
        for f in self._facts.values():      # only what the calls still held share
            for v in (f.sid, f.key, f.tools, f.tasks, *f.tasks, *(x for t in f.tasks for x in t)):
                self._intern.setdefault(v, v)

    def group(self) -> Analysis:
        """Threads and sessions of the calls in the window; ``Analysis.calls`` maps index -> CallInfo."""
        for c in self.calls.values():
            c.thread = c.session = None
        return _group(self.calls, self._facts, self._texts)


def analyze_log(path, warnings: list[str] | None = None, *, keep_responses: bool = False,
                max_field_chars: int | None = None) -> tuple[Analysis, list[LogLine]]:
    """Analyse a log file line by line (bounded memory). Lines that cannot be read or analysed are
    skipped and described in ``warnings``; ``lines[i]`` says where call ``i`` is in the file."""
    a = Analyzer(keep_responses=keep_responses, max_field_chars=max_field_chars)
    lines: list[LogLine] = []
    for ln in iter_lines(path, warnings):
        n = len(a.calls)
        try:
            a.add(ln.record)
        except (RecursionError, ValueError, TypeError, KeyError, AttributeError, OSError) as e:
            del a.calls[n:]
            a._facts.pop(n, None)
            if warnings is not None:
                warnings.append(f"line {ln.lineno}: cannot be analysed ({type(e).__name__}: {str(e)[:80]})")
            continue
        lines.append(LogLine(ln.lineno, ln.offset, ln.length, {}))   # the record itself is not kept
    return a.finish(), lines


def _group(calls, facts: dict[int, _Facts], texts: dict[str, tuple[str, str, str]]) -> Analysis:
    """``calls``: a list (``calls[i].index == i``) or a mapping index -> CallInfo (``GroupingWindow``)."""
    # Threads: same Claude Code session id, system prompt and first message, in time order.
    threads: list[Thread] = []
    by_key: dict[tuple[str, str, str], Thread] = {}
    by_sid_first: dict[tuple[str, str], Thread] = {}
    order = sorted((c for c in (calls.values() if isinstance(calls, dict) else calls) if c.kind == "messages"),
                   key=lambda c: (c.t if c.t is not None else float("inf"), c.index))
    final_tasks: dict[int, tuple] = {}
    for c in order:
        f = facts[c.index]
        th = by_key.get(f.key)
        if th is None and f.sid:
            # Same Claude Code session and first message: the system prompt changed mid-conversation.
            th = by_sid_first.get((f.sid, f.first))
            if th is not None:
                by_key[f.key] = th
        if th is None:
            th = Thread(id=len(threads), key=f.key, tools=f.tools, sid=f.sid)
            th.first_text, th.prompt, th.title = texts.get(f.first, ("", "", ""))
            threads.append(th)
            by_key[f.key] = th
            if f.sid:
                by_sid_first.setdefault((f.sid, f.first), th)
        th.calls.append(c.index)
        c.thread = th.id
        if th.final < 0 or c.n_messages >= calls[th.final].n_messages:
            th.final = c.index
            th.tools = f.tools or th.tools
    starts: list[float] = []
    ends: list[float] = []
    for th in threads:
        t = calls[th.calls[0]].t
        starts.append(t if t is not None else float(th.calls[0]))
        e = [x for x in ((calls[i].t_end or calls[i].t) for i in th.calls) if x is not None]
        ends.append(max(e) if e else float(th.calls[-1]))

    def t_start(th: Thread) -> float:
        return starts[th.id]

    def t_end(th: Thread) -> float:
        return ends[th.id]

    # Subagents: a thread whose first user message carries a Task/Agent prompt from another thread.
    # Exact matches through a dictionary; a substring scan only for a prompt no first message equals.
    by_text: dict[str, list[Thread]] = {}
    for th in threads:
        by_text.setdefault(th.first_text.strip(), []).append(th)
    for th in threads:
        for tool_id, prompt in facts[th.final].tasks:
            if not prompt:
                continue
            best = next((o for o in by_text.get(prompt[:FIRST_TEXT_CHARS], ()) if o is not th and o.parent is None), None)
            if best is None:
                best = next((o for o in threads if o is not th and o.parent is None
                             and prompt_matches(prompt, o.first_text)), None)
            if best is not None and best.calls and t_start(best) >= t_start(th) - 1e-6:
                best.parent = (th.id, tool_id)
                best.kind = "subagent"
                th.children.append((tool_id, best.id))

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
        seen: set[int] = set()
        while chain is not None and chain.id not in seen:
            seen.add(chain.id)
            _attach(s, chain, threads)
            chain = threads[chain.continued_by] if chain.continued_by is not None else None

    # Threads not in a session yet (auxiliary ones, subagents whose parent was not found): the session
    # of the same Claude Code session id nearest in time, else the one whose span covers their start,
    # else the nearest.
    spans = []
    for s in sessions:
        if s.calls:
            spans.append((min(calls[i].t or 0 for i in s.calls),
                          max(calls[i].t_end or calls[i].t or 0 for i in s.calls), s))
    spans.sort(key=lambda sp: sp[0])
    span_starts = [sp[0] for sp in spans]
    by_sid: dict[str, list] = {}
    for sp in spans:
        sid = threads[sp[2].root].sid
        if sid:
            by_sid.setdefault(sid, []).append(sp)

    def dist(sp, ts):
        return min(abs(ts - sp[0]), abs(ts - sp[1]))

    for th in sorted(threads, key=t_start):
        if th.session is not None:
            continue
        if not spans:
            s = Session(id=len(sessions), root=th.id)
            sessions.append(s)
            _attach(s, th, threads)
            spans.append((t_start(th), t_end(th), s))
            span_starts.append(t_start(th))
            continue
        ts = t_start(th)
        same_sid = by_sid.get(th.sid) if th.sid else None
        if same_sid:
            _attach(min(same_sid, key=lambda sp: dist(sp, ts))[2], th, threads)
            continue
        k = bisect.bisect_right(span_starts, ts) - 1
        target = None
        while k >= 0:                       # latest-starting span that still covers ts
            if spans[k][1] >= ts:
                target = spans[k][2]
                break
            k -= 1
        if target is None:
            target = min(spans, key=lambda sp: dist(sp, ts))[2]
        _attach(target, th, threads)
    for s in sessions:
        s.calls.sort(key=lambda i: (calls[i].t if calls[i].t is not None else float("inf"), i))
        for i in s.calls:
            calls[i].session = s.id
    return Analysis(calls=calls, threads=threads, sessions=sessions)


def _attach(s: Session, th: Thread, threads: list[Thread]) -> None:
    stack = [th]
    while stack:
        t = stack.pop()
        if t.session is not None:
            continue
        t.session = s.id
        s.threads.append(t.id)
        s.calls.extend(t.calls)
        stack.extend(threads[child] for _tool_id, child in reversed(t.children))
