"""The protocol-independent mock Anthropic Messages API: ``MockApp.handle(MockRequest) -> MockResponse``.

Routes
- ``POST /v1/messages`` (any query): a JSON Message, or SSE when ``"stream": true``.
- ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``.
- ``POST /model/{id}/invoke`` and ``/model/{id}/invoke-with-response-stream``: Anthropic on Bedrock (the
  streamed answer in AWS event-stream frames, ``application/vnd.amazon.eventstream``).
- ``GET /`` and ``HEAD /``: 200 (HEAD without a body).
- anything else: 404 (405 for a wrong method on a known path) with an Anthropic error JSON.

Scenario (knob ``scenario=auto``, what ``claude -p "say hi"`` needs): when the request offers a tool
named ``Bash`` and the last user message carries no ``tool_result``, the answer is a ``tool_use`` of
Bash with input ``{"command": "echo hi", "description": ...}`` (streamed as several ``input_json_delta``
pieces, stop_reason ``tool_use``). Once the last user message carries a ``tool_result``, the answer is
text with the tool's output ("The command printed: hi"), stop_reason ``end_turn``. Without tools it
is plain text. A request that enables ``thinking`` gets a thinking block first (thinking_delta +
signature_delta).

Scenario ``subagent`` (what a subagent test of ``claude -p`` needs): a conversation offering a ``Task`` or
``Agent`` tool whose first message is not the subagent prompt is answered with a call of that tool
(``SUBAGENT_PROMPT``, subagent_type ``general-purpose``); the subagent's conversation (its first message
carries ``SUBAGENT_PROMPT``) gets the Bash round trip of ``auto``; once the Task/Agent result is back,
the answer is "The subagent reported: ...".
"""

from __future__ import annotations

import base64
import math
import random
import re
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterable, Iterable, Iterator, Union
from urllib.parse import parse_qs, unquote

import orjson

from . import knobs as _knobs
from .knobs import Knobs

Chunk = Union[bytes, tuple[float, bytes]]   # bytes, or (seconds to wait before it, bytes)
Body = Union[bytes, Iterable[Chunk], AsyncIterable[Chunk]]


@dataclass
class MockRequest:
    """One request, as any front end (HTTP/1.1 here, HTTP/2 in tracer.mock.h2) hands it to the app."""

    method: str
    target: str                                   # request-target / :path, e.g. "/v1/messages?beta=true"
    headers: list[tuple[str, str]]                 # as received (original case and order)
    body: bytes = b""
    http_version: str = "1.1"                     # "1.0", "1.1" or "2"
    conn_id: str = ""
    arrival: float = field(default_factory=time.time)  # epoch seconds of the first byte

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> list[tuple[str, str]]:
        _, _, q = self.target.partition("?")
        return _knobs.parse_query(q)

    def header(self, name: str) -> str | None:
        """Case-insensitive header value (repeated headers joined with ', '), or None."""
        n = name.lower()
        vals = [v for k, v in self.headers if k.lower() == n]
        return ", ".join(vals) if vals else None


@dataclass
class MockResponse:
    """What the app answers. Front ends add framing headers (content-length / transfer-encoding /
    connection) and content-encoding; they apply ``chunk_delay`` between body chunks."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = b""
    chunk_delay: float = 0.0      # seconds before every body chunk after the first (unless the
                                  # chunk is a (delay, bytes) tuple)
    ttfb: float = 0.0             # seconds before the head is sent
    close: bool = False           # close the connection after this response
    encoding: str = "identity"    # content-coding knob (see encoding.negotiate)
    transfer: str = "auto"        # auto | chunked | length | close (HTTP/1.1 only)
    abort_after: int = -1         # abort the connection after N body writes (-1: never)
    write_size: int = 0           # split body chunks into writes of at most N bytes (0: don't)


# ---------------------------------------------------------------------------------------------
# ids and text

_ALNUM = string.ascii_letters + string.digits


_rng = random.Random(secrets.randbits(64))  # ids need to look random, not be secret


def _rand(n: int) -> str:
    return "".join(_rng.choices(_ALNUM, k=n))


def new_id(prefix: str) -> str:
    """``msg_01...``/``toolu_01...``/``req_011C...``-shaped ids."""
    if prefix == "req":
        return "req_011C" + _rand(20)
    return f"{prefix}_01" + _rand(22)


_WORDS = ("the quick brown fox jumps over the lazy dog while a tracer watches every byte that "
          "crosses the wire and writes it down in order so nothing is lost or reordered on the way "
          "from the kernel ring buffer to the log file").split()


def _make_pattern(n: int = 8192) -> str:
    out, i = [], 0
    total = 0
    while total < n:
        w = _WORDS[(i * 7 + i // len(_WORDS)) % len(_WORDS)]
        s = (w.capitalize() if i % 11 == 0 else w) + ("." if i % 11 == 10 else "") + " "
        out.append(s)
        total += len(s)
        i += 1
    return "".join(out)[:n]


_PATTERN = _make_pattern()
_PATTERN2 = _PATTERN * 2


def _filler(off: int, n: int) -> str:
    """``n`` characters of an endless ASCII text (no JSON escapes needed) starting at offset ``off``."""
    p = len(_PATTERN)
    start = off % p
    if start + n <= len(_PATTERN2):
        return _PATTERN2[start:start + n]
    reps = (start + n) // p + 1
    return (_PATTERN * reps)[start:start + n]


def text_pieces(reply: str, k: Knobs) -> Iterator[str]:
    """The reply text cut into text_delta pieces according to the size knobs (lazily)."""
    tb, n, s = k.text_bytes, k.deltas, k.delta_size
    if tb < 0 and not n and not s:
        # natural split: a word (with its trailing space) per delta
        for w in re.findall(r"\S+\s*|\s+", reply):
            yield w
        return
    if tb >= 0:
        total = tb
        size = s or (math.ceil(total / n) if n else 1024)
    elif n and s:
        total, size = n * s, s
    elif n:
        size = max(1, math.ceil(len(reply) / n))
        total = n * size
    else:
        total, size = len(reply), s
    size = max(1, size)
    prefix = reply + " " if reply else ""
    off = 0
    while off < total:
        m = min(size, total - off)
        if off + m <= len(prefix):
            piece = prefix[off:off + m]
        elif off >= len(prefix):
            piece = _filler(off - len(prefix), m)
        else:
            piece = prefix[off:] + _filler(0, off + m - len(prefix))
        yield piece
        off += m


# ---------------------------------------------------------------------------------------------
# helpers

_BEDROCK_PATH = re.compile(r"^/model/([^/]+)/(invoke|invoke-with-response-stream)$")


def _sse(event: str, data: dict) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _count_text(obj: Any) -> int:
    if isinstance(obj, str):
        return len(obj)
    if isinstance(obj, dict):
        return sum(_count_text(v) for v in obj.values())
    if isinstance(obj, list):
        return sum(_count_text(v) for v in obj)
    return 0


def estimate_input_tokens(body: dict) -> int:
    n = _count_text(body.get("messages")) + _count_text(body.get("system")) + _count_text(body.get("tools"))
    return max(1, n // 4)


def _tokens(nchars: int) -> int:
    return max(1, math.ceil(nchars / 4))


_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
    408: "timeout_error", 413: "request_too_large", 422: "invalid_request_error",
    429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}
_ERROR_MESSAGES = {
    "rate_limit_error": "This request would exceed the rate limit for your organization (mock).",
    "overloaded_error": "Overloaded",
    "api_error": "Internal server error",
    "authentication_error": "invalid x-api-key",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found",
    "timeout_error": "Request timed out",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "billing_error": "Your credit balance is too low.",
}


def error_response(status: int, message: str | None = None, etype: str | None = None,
                   request_id: str | None = None) -> MockResponse:
    etype = etype or _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    rid = request_id or new_id("req")
    body = orjson.dumps({
        "type": "error",
        "error": {"type": etype, "message": message or _ERROR_MESSAGES.get(etype, "error")},
        "request_id": rid,
    })
    headers = [("content-type", "application/json"), ("request-id", rid)]
    if status == 429:
        headers.append(("retry-after", "1"))
    if status in (529, 503):
        headers.append(("x-should-retry", "true"))
    return MockResponse(status, headers, body)


def _last_user_message(messages: Any) -> dict | None:
    if not isinstance(messages, list):
        return None
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return m
    return None


def _tool_results(msg: dict | None) -> list[dict]:
    if not msg or not isinstance(msg.get("content"), list):
        return []
    return [b for b in msg["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]


def _tool_result_text(block: dict) -> str:
    c = block.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "".join(b.get("text", "") for b in c if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _tool_names(tools: Any) -> set[str]:
    if not isinstance(tools, list):
        return set()
    return {t.get("name") for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)}


def _split_even(s: str, parts: int) -> list[str]:
    parts = max(1, min(parts, len(s)))
    size = math.ceil(len(s) / parts)
    return [s[i:i + size] for i in range(0, len(s), size)]


SUBAGENT_PROMPT = "Run `echo hi` with the Bash tool and report what it printed. (tracer mock subagent)"
SUBAGENT_TOOLS = ("Task", "Agent")


def _first_text(messages: Any) -> str:
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return ""
    c = messages[0].get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "\n".join(b.get("text", "") for b in c if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def _agent_results(messages: Any) -> str | None:
    """None if no Task/Agent tool was called in ``messages``; else the text of its result ('' if none yet)."""
    if not isinstance(messages, list):
        return None
    ids = set()
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), list):
            ids |= {b.get("id") for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_use"
                    and b.get("name") in SUBAGENT_TOOLS}
    if not ids:
        return None
    for m in reversed(messages):
        for b in _tool_results(m if isinstance(m, dict) and m.get("role") == "user" else None):
            if b.get("tool_use_id") in ids:
                return _tool_result_text(b).strip()
    return ""


def _system_text(body: dict) -> str:
    s = body.get("system")
    if isinstance(s, str):
        return s
    if isinstance(s, list):
        return " ".join(b.get("text", "") for b in s if isinstance(b, dict))
    return ""


# ---------------------------------------------------------------------------------------------

@dataclass
class _Plan:
    model: str
    thinking: bool
    tool: dict | None          # {"id", "name", "input"} for a tool_use answer
    reply: str                 # text answer (if no tool)
    stop_reason: str
    input_tokens: int


class MockApp:
    """Routes requests and produces Anthropic-shaped answers. ``defaults`` are the server-wide knobs."""

    GREETING = "Hi! This is the tracer mock server answering."

    def __init__(self, defaults: Knobs | None = None):
        self.defaults = defaults or Knobs()

    # -- entry point -----------------------------------------------------------------------
    def handle(self, req: MockRequest) -> MockResponse:
        try:
            k = _knobs.with_overrides(self.defaults, _knobs.from_request(req.headers, req.query))
        except ValueError as e:
            return error_response(400, str(e))
        try:
            resp = self._route(req, k)
        except Exception as e:  # never crash on odd input
            resp = error_response(500, f"mock server error: {type(e).__name__}: {e}")
        resp.close = resp.close or k.close
        resp.ttfb = resp.ttfb or k.ttfb_ms / 1000.0
        resp.encoding = k.encoding
        resp.transfer = k.transfer
        resp.abort_after = k.abort_after
        resp.write_size = k.write_size
        if not resp.chunk_delay:
            resp.chunk_delay = k.delay_ms / 1000.0
        return resp

    def _route(self, req: MockRequest, k: Knobs) -> MockResponse:
        path, method = req.path, req.method.upper()
        if path == "/":
            if method in ("GET", "HEAD"):
                return MockResponse(200, [("content-type", "text/plain; charset=utf-8")],
                                    b"tracer mock Anthropic API\n")
            return error_response(405, f"Method {method} not allowed on /")
        if path.rstrip("/") == "/v1/messages":
            if method != "POST":
                return error_response(405, f"Method {method} not allowed on {path}")
            return self.messages(req, k)
        if path.rstrip("/") == "/v1/messages/count_tokens":
            if method != "POST":
                return error_response(405, f"Method {method} not allowed on {path}")
            body = self._json(req)
            if not isinstance(body, dict):
                return error_response(400, "request body must be a JSON object")
            return MockResponse(200, [("content-type", "application/json"),
                                      ("request-id", new_id("req"))],
                                orjson.dumps({"input_tokens": estimate_input_tokens(body)}))
        m = _BEDROCK_PATH.match(path)
        if m:
            if method != "POST":
                return error_response(405, f"Method {method} not allowed on {path}")
            return self.bedrock(req, k, unquote(m.group(1)), m.group(2) == "invoke-with-response-stream")
        if path.rstrip("/") == "/v1/oauth/token":
            if method != "POST":
                return error_response(405, f"Method {method} not allowed on {path}")
            return self.oauth_token(req)
        return error_response(404, f"Not found: {method} {path}")

    def oauth_token(self, req: MockRequest) -> MockResponse:
        """Claude Code's OAuth token endpoint (console.anthropic.com/v1/oauth/token): a JSON or form
        request with a grant_type; answers fresh (random) access and refresh tokens."""
        body = self._json(req)
        if not isinstance(body, dict):
            try:
                body = {k: v[-1] for k, v in parse_qs(req.body.decode("utf-8")).items()}
            except (UnicodeDecodeError, ValueError):
                body = {}
        grant = body.get("grant_type")
        if grant not in ("authorization_code", "refresh_token"):
            return MockResponse(400, [("content-type", "application/json")],
                                orjson.dumps({"error": "unsupported_grant_type"}))
        token = {"token_type": "Bearer", "expires_in": 28800, "scope": "user:inference",
                 "access_token": "sk-ant-oat01-" + secrets.token_urlsafe(32),
                 "refresh_token": "sk-ant-ort01-" + secrets.token_urlsafe(32),
                 "account": {"uuid": new_id("acct"), "email_address": "mock@example.com"}}
        return MockResponse(200, [("content-type", "application/json"), ("request-id", new_id("req"))],
                            orjson.dumps(token))

    # -- Bedrock runtime: /model/{id}/invoke[-with-response-stream] ------------------------------
    def bedrock(self, req: MockRequest, k: Knobs, model: str, stream: bool) -> MockResponse:
        """Anthropic on Bedrock: the Messages body without ``model`` (it is in the path); the streamed
        answer is the same events, each in an AWS event-stream ``chunk`` message (base64 in JSON)."""
        body = self._json(req)
        if not isinstance(body, dict):
            return error_response(400, "request body must be a JSON object")
        if k.status != 200:
            return error_response(k.status)
        plan = self._plan(dict(body, model=model), k)
        rid = new_id("req")
        msg_id = new_id("msg")
        if not stream:
            return MockResponse(200, [("content-type", "application/json"), ("x-amzn-requestid", rid)],
                                self._json_message(plan, k, msg_id))
        return MockResponse(200, [("content-type", "application/vnd.amazon.eventstream"),
                                  ("x-amzn-requestid", rid), ("x-amzn-bedrock-content-type", "application/json")],
                            self._bedrock_events(plan, k, msg_id))

    def _bedrock_events(self, plan: _Plan, k: Knobs, msg_id: str) -> Iterator[bytes]:
        from tracer.protocols.eventstream import bedrock_chunk

        t0 = time.monotonic()
        first = None
        out_tokens = 0
        for sse in self._sse_events(plan, k, msg_id):
            data = sse[sse.index(b"\ndata: ") + 7:].rstrip(b"\n")
            ev = orjson.loads(data)
            if first is None:
                first = time.monotonic()
            if ev.get("type") == "message_delta":
                out_tokens = (ev.get("usage") or {}).get("output_tokens", 0)
            if ev.get("type") == "message_stop":
                now = time.monotonic()
                ev["amazon-bedrock-invocationMetrics"] = {
                    "inputTokenCount": plan.input_tokens, "outputTokenCount": out_tokens,
                    "invocationLatency": int((now - t0) * 1000), "firstByteLatency": int(((first or now) - t0) * 1000)}
            yield bedrock_chunk(ev)

    @staticmethod
    def _json(req: MockRequest) -> Any:
        try:
            return orjson.loads(req.body) if req.body else None
        except orjson.JSONDecodeError:
            return None

    # -- /v1/messages ----------------------------------------------------------------------
    def messages(self, req: MockRequest, k: Knobs) -> MockResponse:
        body = self._json(req)
        if not isinstance(body, dict):
            return error_response(400, "request body must be a JSON object")
        if k.status != 200:
            return error_response(k.status)
        plan = self._plan(body, k)
        rid = new_id("req")
        msg_id = new_id("msg")
        if body.get("stream") is True:
            headers = [("content-type", "text/event-stream; charset=utf-8"),
                       ("cache-control", "no-cache"), ("request-id", rid)]
            return MockResponse(200, headers, self._sse_events(plan, k, msg_id))
        headers = [("content-type", "application/json"), ("request-id", rid)]
        return MockResponse(200, headers, self._json_message(plan, k, msg_id))

    def _plan(self, body: dict, k: Knobs) -> _Plan:
        model = body.get("model") if isinstance(body.get("model"), str) else "claude-mock"
        th = body.get("thinking")
        thinking = (k.thinking == "on" or
                    (k.thinking == "auto" and isinstance(th, dict) and th.get("type") in ("enabled", "adaptive")))
        last = _last_user_message(body.get("messages"))
        results = _tool_results(last)
        tools = _tool_names(body.get("tools"))
        use_tool = (k.scenario == "tool" or
                    (k.scenario == "auto" and not results and "Bash" in tools))
        inp = estimate_input_tokens(body)
        if k.scenario == "subagent":
            agent_tool = next((t for t in SUBAGENT_TOOLS if t in tools), None)
            in_subagent = SUBAGENT_PROMPT in _first_text(body.get("messages"))
            started = _agent_results(body.get("messages"))
            if agent_tool and not in_subagent and started is None:
                tool_input = {"description": "Say hi in a subagent", "prompt": SUBAGENT_PROMPT,
                              "subagent_type": "general-purpose"}
                return _Plan(model, thinking, {"id": new_id("toolu"), "name": agent_tool, "input": tool_input},
                             "", "tool_use", inp)
            if agent_tool and not in_subagent:   # one subagent per conversation, then its report
                return _Plan(model, thinking, None, f"The subagent reported: {started}".strip(), "end_turn", inp)
            use_tool = in_subagent and not results and "Bash" in tools
        if use_tool:
            name = "Bash" if ("Bash" in tools or not tools) else sorted(tools)[0]
            tool_input = {"command": k.tool_command,
                          "description": f"Run {k.tool_command!r} as the user asked"}
            return _Plan(model, thinking, {"id": new_id("toolu"), "name": name, "input": tool_input},
                         "", "tool_use", inp)
        if k.text:
            reply = k.text
        elif results:
            r = results[-1]
            out = _tool_result_text(r).strip()
            reply = (f"The command failed: {out}" if r.get("is_error") else f"The command printed: {out}")
        elif "isNewTopic" in _system_text(body):
            reply = '{"isNewTopic": false, "title": null}'
        else:
            reply = self.GREETING
        stop = "end_turn"
        natural = k.text_bytes < 0 and not k.deltas and not k.delta_size
        mt = body.get("max_tokens")
        if natural and isinstance(mt, int) and not isinstance(mt, bool) and 0 < mt and len(reply) > mt * 4:
            reply, stop = reply[:mt * 4], "max_tokens"
        return _Plan(model, thinking, None, reply, stop, inp)

    THINKING = ("The user wants a short answer. ", "I will reply briefly ", "and plainly.")

    @staticmethod
    def _usage(inp: int, out: int) -> dict:
        return {"input_tokens": inp, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": out, "service_tier": "standard"}

    def _sse_events(self, plan: _Plan, k: Knobs, msg_id: str) -> Iterator[bytes]:
        """The SSE stream, one event per chunk, generated lazily (100 MB never sits in memory)."""
        yield _sse("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": plan.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": self._usage(plan.input_tokens, 1)}})
        index = 0
        out_chars = 0
        deltas = 0
        first = True

        def start(block: dict) -> Iterator[bytes]:
            nonlocal first
            yield _sse("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": block})
            if first:
                first = False
                yield _sse("ping", {"type": "ping"})

        def delta(d: dict) -> bytes:
            nonlocal deltas
            deltas += 1
            return _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})

        def stop() -> bytes:
            return _sse("content_block_stop", {"type": "content_block_stop", "index": index})

        def error_due() -> bool:
            return k.error_after >= 0 and deltas >= k.error_after

        err = _sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})

        if plan.thinking:
            yield from start({"type": "thinking", "thinking": "", "signature": ""})
            for piece in self.THINKING:
                if error_due():
                    yield err
                    return
                out_chars += len(piece)
                yield delta({"type": "thinking_delta", "thinking": piece})
            yield delta({"type": "signature_delta", "signature": _signature()})
            yield stop()
            index += 1
        if plan.tool:
            yield from start({"type": "tool_use", "id": plan.tool["id"], "name": plan.tool["name"],
                              "input": {}})
            js = orjson.dumps(plan.tool["input"]).decode()
            for piece in [""] + _split_even(js, 5):
                if error_due():
                    yield err
                    return
                out_chars += len(piece)
                yield delta({"type": "input_json_delta", "partial_json": piece})
        else:
            yield from start({"type": "text", "text": ""})
            for piece in text_pieces(plan.reply, k):
                if error_due():
                    yield err
                    return
                out_chars += len(piece)
                yield delta({"type": "text_delta", "text": piece})
        yield stop()
        usage = self._usage(plan.input_tokens, _tokens(out_chars))
        yield _sse("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": plan.stop_reason, "stop_sequence": None},
                                     "usage": usage})
        yield _sse("message_stop", {"type": "message_stop"})

    def _json_message(self, plan: _Plan, k: Knobs, msg_id: str) -> Body:
        content: list[dict] = []
        out_chars = 0
        if plan.thinking:
            t = "".join(self.THINKING)
            out_chars += len(t)
            content.append({"type": "thinking", "thinking": t, "signature": _signature()})
        big = k.text_bytes > (1 << 20)
        if plan.tool:
            out_chars += len(orjson.dumps(plan.tool["input"]))
            content.append({"type": "tool_use", **plan.tool})
        elif not big:
            text = "".join(text_pieces(plan.reply, k))
            out_chars += len(text)
            content.append({"type": "text", "text": text})
        head = {"id": msg_id, "type": "message", "role": "assistant", "model": plan.model,
                "content": content}
        if not big or plan.tool:
            head.update(stop_reason=plan.stop_reason, stop_sequence=None,
                        usage=self._usage(plan.input_tokens, _tokens(out_chars)))
            return orjson.dumps(head)
        return self._big_json(head, plan, k, out_chars)

    def _big_json(self, head: dict, plan: _Plan, k: Knobs, out_chars: int) -> Iterator[bytes]:
        """A huge non-streaming Message, produced piecewise (text generated on the fly)."""
        prefix = orjson.dumps(head)[:-2]  # strip the closing "]}"
        sep = b"," if head["content"] else b""
        yield prefix + sep + b'{"type":"text","text":"'
        for piece in text_pieces(plan.reply, k):
            out_chars += len(piece)
            yield orjson.dumps(piece)[1:-1]
        tail = {"stop_reason": plan.stop_reason, "stop_sequence": None,
                "usage": self._usage(plan.input_tokens, _tokens(out_chars))}
        yield b'"}],' + orjson.dumps(tail)[1:]


def _signature() -> str:
    return base64.b64encode(_rng.randbytes(96)).decode()
