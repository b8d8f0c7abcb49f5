"""Synthetic logs shaped like a traced Claude Code session, for the viewer's tests and benchmark.

``claude_code_session()`` returns the records of one realistic session: a quota side call, the main
agent (system prompt, tool list, a user prompt with a <system-reminder>) working through TodoWrite, Bash,
Read, Edit, MultiEdit, Grep, Glob, WebFetch, WebSearch and a Task subagent, a final answer, a topic side
call and a telemetry POST. Responses are real SSE streams with ``response_chunks`` timings.
``big_log()`` makes many such sessions with long histories (the 1,000-pair benchmark).
"""

from __future__ import annotations

import json
import random
from typing import Any

from tracer.viewer.logs import dumps

SONNET = "claude-sonnet-4-5-20250929"
HAIKU = "claude-3-5-haiku-20241022"
URL = "https://api.anthropic.com/v1/messages?beta=true"
XSS_IMG = '<img src=x onerror="window.__xss=(window.__xss||0)+1">'
XSS_SCRIPT = "<script>window.__xss=(window.__xss||0)+1</script>"
XSS_LINK = "[see the docs](javascript:window.__xss=(window.__xss||0)+1)"

TOOLS = ["Task", "Bash", "Glob", "Grep", "LS", "Read", "Edit", "MultiEdit", "Write", "WebFetch",
         "WebSearch", "TodoWrite"]
SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
     "cache_control": {"type": "ephemeral"}},
    {"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering "
     "tasks.\n\n# Tone and style\nBe concise.\n\n<env>\nWorking directory: /home/dev/shop\nPlatform: linux\n"
     "</env>", "cache_control": {"type": "ephemeral"}},
]
SUB_SYSTEM = [{"type": "text", "text": "You are an agent for Claude Code. Given the user's message, use the "
               "tools available to complete the task. Answer with a concise report."}]


def tool_defs(names=TOOLS) -> list[dict]:
    return [{"name": n, "description": f"The {n} tool.",
             "input_schema": {"type": "object", "properties": {}, "additionalProperties": True}}
            for n in names]


def sse_stream(message: dict, t_first_ms: float = 400.0, ms_per_event: float = 8.0,
               piece: int = 12) -> tuple[str, list[list[float]], float]:
    """The SSE body that streams ``message``, its response_chunks and its last event's time."""
    start = dict(message, content=[], stop_reason=None, stop_sequence=None,
                 usage={k: v for k, v in message["usage"].items() if k != "output_tokens"} | {"output_tokens": 1})
    events: list[tuple[str, dict]] = [("message_start", {"type": "message_start", "message": start}),
                                      ("ping", {"type": "ping"})]
    for i, b in enumerate(message["content"]):
        t = b["type"]
        if t == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            s = b["text"]
            for k in range(0, len(s), piece):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "text_delta", "text": s[k:k + piece]}}))
        elif t == "thinking":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "thinking", "thinking": "",
                                                                     "signature": ""}}))
            s = b["thinking"]
            for k in range(0, len(s), piece):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "thinking_delta", "thinking": s[k:k + piece]}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "signature_delta", "signature": b["signature"]}}))
        elif t == "tool_use":
            events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                "type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}}))
            s = json.dumps(b["input"])
            for k in range(0, len(s), piece * 3):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "input_json_delta", "partial_json": s[k:k + piece * 3]}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                     "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    body = bytearray()
    chunks: list[list[float]] = []
    t = t_first_ms
    for n, (name, payload) in enumerate(events):
        if n in (0, 2) or n > 2:
            chunks.append([len(body), round(t, 3)])
        body += f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
        t += ms_per_event if n >= 2 else 1.0
    return body.decode(), chunks, t


class LogBuilder:
    """Accumulates records with plausible timestamps."""

    def __init__(self, t0: float = 1764203400.0, claude_trace: bool = False, pid: int = 4242,
                 session_id: str = "3f1c2b9e-7d41-4c8a-9b2e-5a6d7e8f9012"):
        self.t = t0
        self.session_id = session_id
        self.records: list[dict] = []
        self.claude_trace = claude_trace
        self.pid = pid
        self.conn = 0
        self._ids = 0

    def new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_01{self._ids:022d}"

    def call(self, body: dict, content: list[dict], stop: str = "end_turn", *, usage: dict | None = None,
             status: int = 200, ttfb: float = 380.0, model: str | None = None) -> dict:
        model = model or body["model"]
        in_tok = sum(len(dumps(m)) for m in body["messages"]) // 4 + 50
        usage = usage or {"input_tokens": in_tok % 900 + 4, "cache_creation_input_tokens": 200,
                          "cache_read_input_tokens": max(0, in_tok - 1000),
                          "output_tokens": max(1, len(dumps(content)) // 5)}
        msg = {"id": self.new_id("msg"), "type": "message", "role": "assistant", "model": model,
               "content": content, "stop_reason": stop, "stop_sequence": None, "usage": usage}
        raw, chunks, t_last = sse_stream(msg, t_first_ms=ttfb + 30.0)
        req_body = json.dumps(body)
        rec = {
            "request": {"timestamp": round(self.t, 6), "method": "POST", "url": URL,
                        "headers": {"content-type": "application/json", "anthropic-version": "2023-06-01",
                                    "x-api-key": "sk-ant-api...abcd", "user-agent": "claude-cli/2.1.113 (external, cli)",
                                    **({"x-claude-code-session-id": self.session_id} if self.session_id else {})},
                        "body": body},
            "response": {"timestamp": round(self.t + t_last / 1000.0, 6), "status_code": status,
                         "headers": {"content-type": "text/event-stream; charset=utf-8",
                                     "request-id": self.new_id("req")},
                         "body_raw": raw},
            "logged_at": "2026-11-27T01:02:03.456Z",
        }
        if not self.claude_trace:
            self.conn += 1
            rec["tracer"] = {"pid": self.pid, "tid": self.pid + 3, "comm": "claude", "conn_id": f"{self.pid}:0x55d0:{self.conn}",
                             "protocol": "http/1.1", "stream_id": None, "complete": True, "notes": [], "gaps": [],
                             "request_bytes": len(req_body) + 300, "response_bytes": len(raw) + 200,
                             "request_body_bytes": len(req_body), "response_body_bytes": len(raw.encode()),
                             "content_encoding": "", "decode_error": "", "ttfb_ms": ttfb,
                             "duration_ms": round(t_last, 3), "response_chunks": chunks}
        self.records.append(rec)
        self.t += t_last / 1000.0 + 0.05
        return msg

    def other(self, method: str, url: str, body: Any, status: int = 200) -> None:
        rec = {"request": {"timestamp": round(self.t, 6), "method": method, "url": url,
                           "headers": {"content-type": "application/json"}, "body": body},
               "response": {"timestamp": round(self.t + 0.08, 6), "status_code": status,
                            "headers": {"content-type": "application/json"}, "body": {"accepted": 1}},
               "logged_at": "2026-11-27T01:02:04.000Z"}
        if not self.claude_trace:
            rec["tracer"] = {"pid": self.pid, "complete": True, "ttfb_ms": 70.0, "duration_ms": 80.0,
                             "response_chunks": [[0, 79.0]]}
        self.records.append(rec)
        self.t += 0.1


class Agent:
    """One conversation (main agent or subagent) growing turn by turn."""

    def __init__(self, log: LogBuilder, system: list, tools: list[dict], first_user: list | str,
                 model: str = SONNET):
        self.log = log
        self.system = system
        self.tools = tools
        self.model = model
        self.messages: list[dict] = [{"role": "user", "content": first_user}]

    def body(self) -> dict:
        system = self.system
        if isinstance(system, list) and system is not SUB_SYSTEM:
            # Claude Code's first system block: a billing line with a per-request checksum
            self.log._ids += 1
            system = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.113.e6a; "
                                               f"cc_entrypoint=cli; cch={self.log._ids * 7919 % 99991:05x};"}] + system
        return {"model": self.model, "max_tokens": 32000, "stream": True, "system": system,
                "tools": self.tools, "messages": json.loads(json.dumps(self.messages)),
                "metadata": {"user_id": "user_abc_account__session_1"}}

    def turn(self, content: list[dict], stop: str | None = None) -> dict:
        stop = stop or ("tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn")
        msg = self.log.call(self.body(), content, stop)
        self.messages.append({"role": "assistant", "content": msg["content"]})
        return msg

    def tool(self, name: str, input: dict, result: str | list, *, text: str | None = None,
             is_error: bool = False) -> str:
        tid = self.log.new_id("toolu")
        content = ([{"type": "text", "text": text}] if text else []) + [
            {"type": "tool_use", "id": tid, "name": name, "input": input}]
        self.turn(content)
        block = {"type": "tool_result", "tool_use_id": tid, "content": result}
        if is_error:
            block["is_error"] = True
        self.messages.append({"role": "user", "content": [block]})
        return tid


def claude_code_session(log: LogBuilder | None = None, prompt: str = "Fix the failing price test in shop/cart.py",
                        with_payload: bool = True) -> LogBuilder:
    log = log or LogBuilder()
    # Side call Claude Code makes at start-up.
    log.call({"model": HAIKU, "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}],
              "metadata": {"user_id": "user_abc"}}, [{"type": "text", "text": "#"}], model=HAIKU)
    user_text = prompt + (f"\n\nThe test output mentions {XSS_IMG} and {XSS_SCRIPT} — odd." if with_payload else "")
    main = Agent(log, SYSTEM, tool_defs(), [
        {"type": "text", "text": "<system-reminder>\nAs you answer the user's questions, you can use the "
                                 "following context: CLAUDE.md says run `pytest -q`.\n</system-reminder>"},
        {"type": "text", "text": user_text, "cache_control": {"type": "ephemeral"}}])
    main.tool("TodoWrite", {"todos": [
        {"content": "Run the test suite", "status": "in_progress", "activeForm": "Running tests"},
        {"content": "Fix the rounding bug", "status": "pending", "activeForm": "Fixing"},
        {"content": "Check other callers", "status": "pending", "activeForm": "Checking"}]},
        "Todos have been modified successfully.",
        text="I'll start by running the tests.")
    main.tool("Bash", {"command": "cd /home/dev/shop && python -m pytest -q tests/test_cart.py",
                       "description": "Run the cart tests"},
              "F.\n=== FAILURES ===\ntest_total: assert 10.0 == 9.99\n" + (XSS_SCRIPT if with_payload else "")
              + "\n1 failed, 1 passed in 0.03s")
    main.tool("Glob", {"pattern": "shop/**/*.py"}, "/home/dev/shop/shop/cart.py\n/home/dev/shop/shop/money.py")
    main.tool("Read", {"file_path": "/home/dev/shop/shop/cart.py"},
              "     1→from shop.money import round_price\n     2→\n     3→def total(items):\n"
              "     4→    return round(sum(i.price for i in items))\n")
    main.tool("Edit", {"file_path": "/home/dev/shop/shop/cart.py",
                       "old_string": "    return round(sum(i.price for i in items))",
                       "new_string": "    return round_price(sum(i.price for i in items))"},
              "The file /home/dev/shop/shop/cart.py has been updated.")
    # A subagent checks the other callers.
    sub_prompt = "Find every caller of round_price in /home/dev/shop and report whether it passes floats."
    task_id = main.tool("Task", {"description": "Find round_price callers", "prompt": sub_prompt,
                                 "subagent_type": "general-purpose"}, "placeholder")
    sub = Agent(log, SUB_SYSTEM, tool_defs(["Bash", "Glob", "Grep", "LS", "Read"]), sub_prompt)
    sub.tool("Grep", {"pattern": "round_price", "path": "/home/dev/shop", "output_mode": "content", "-n": True},
             "shop/cart.py:1:from shop.money import round_price\nshop/cart.py:4:    return round_price(...)\n"
             "shop/money.py:3:def round_price(x):")
    sub_final = sub.turn([{"type": "text", "text": "Two callers: `shop/cart.py` (floats) and the definition in "
                                                   "`shop/money.py`. All pass floats."}])
    main.messages[-1]["content"][0]["content"] = [{"type": "text", "text": sub_final["content"][0]["text"]}]
    main.tool("MultiEdit", {"file_path": "/home/dev/shop/shop/money.py", "edits": [
        {"old_string": "def round_price(x):", "new_string": "def round_price(x: float) -> float:"},
        {"old_string": "    return round(x)", "new_string": "    return round(x, 2)"}]},
        "Applied 2 edits to /home/dev/shop/shop/money.py")
    main.tool("WebSearch", {"query": "python round half even decimal"},
              "Web search results: 1. Decimal — docs.python.org")
    main.tool("WebFetch", {"url": "https://docs.python.org/3/library/decimal.html", "prompt": "rounding modes"},
              "ROUND_HALF_EVEN is the default.")
    main.tool("Write", {"file_path": "/home/dev/shop/NOTES.md", "content": "# Notes\n\nPrices round to cents.\n"},
              "File created successfully at: /home/dev/shop/NOTES.md")
    main.tool("Bash", {"command": "python -m pytest -q", "description": "Run all tests"}, "..\n2 passed in 0.02s")
    main.turn([{"type": "thinking", "thinking": "Both tests pass now; summarise.", "signature": "EqQBCkYIBxgC"},
               {"type": "text", "text": "## Fixed\n\nThe total now uses **`round_price`**, which keeps two "
                                        "decimals. All tests pass.\n\n- `shop/cart.py`\n- `shop/money.py`"
                + (f"\n\nSpotted in the output: {XSS_IMG} {XSS_SCRIPT} and {XSS_LINK}" if with_payload else "")}])
    log.call({"model": HAIKU, "max_tokens": 512, "system": [{"type": "text", "text": "Analyze if this message "
              "indicates a new conversation topic."}],
              "messages": [{"role": "user", "content": prompt}]},
             [{"type": "text", "text": '{"isNewTopic": true, "title": "Fix cart rounding"}'}], model=HAIKU)
    log.other("POST", "https://api.anthropic.com/api/event_logging/batch", {"events": [{"name": "tengu_exit"}]})
    main_state = main
    log.main = main_state  # type: ignore[attr-defined]
    log.task_id = task_id  # type: ignore[attr-defined]
    return log


def compacted_session(log: LogBuilder | None = None) -> LogBuilder:
    """A main conversation, its compaction call, and the conversation that continues from the summary."""
    log = log or LogBuilder()
    a = Agent(log, SYSTEM, tool_defs(), [{"type": "text", "text": "Refactor the billing module"}])
    a.tool("Bash", {"command": "ls billing"}, "invoice.py\ntax.py")
    a.turn([{"type": "text", "text": "The billing module has two files."}])
    a.messages.append({"role": "user", "content": "Your task is to create a detailed summary of the "
                                                  "conversation so far."})
    a.turn([{"type": "text", "text": "<summary>We listed billing/.</summary>"}])
    b = Agent(log, SYSTEM, tool_defs(), [{"type": "text", "text":
        "This session is being continued from a previous conversation that ran out of context. The "
        "conversation is summarized below:\nWe listed billing/."}])
    b.tool("Read", {"file_path": "billing/tax.py"}, "     1→RATE = 0.2\n")
    b.turn([{"type": "text", "text": "Done refactoring."}])
    return log


def big_log(n_pairs: int = 1000, target_bytes: int = 100 << 20, sessions: int = 10, seed: int = 1) -> list[dict]:
    """About ``n_pairs`` records totalling about ``target_bytes`` of JSONL, Claude-Code-shaped."""
    rnd = random.Random(seed)
    log = LogBuilder()
    per = max(2, n_pairs // sessions)
    # history grows by `chunk` per turn: total ~ sessions * per^2/2 * chunk
    chunk = max(200, int(target_bytes / (sessions * per * per / 2)))
    words = ("def class return import self value price total cart item test assert error path file "
             "config parse round float int list dict json http request response stream token").split()
    for s in range(sessions):
        a = Agent(log, SYSTEM, tool_defs(), [{"type": "text", "text": f"Session {s}: investigate issue #{s}"}])
        for k in range(per - 1):
            out = "\n".join(" ".join(rnd.choice(words) for _ in range(12)) for _ in range(chunk // 70 + 1))
            a.tool("Bash", {"command": f"grep -rn item{k} src/", "description": f"step {k}"}, out,
                   text=f"Step {k}: looking at **item{k}**.")
        a.turn([{"type": "text", "text": f"Session {s} done."}])
    return log.records[:n_pairs] if len(log.records) > n_pairs else log.records


def unique_log(n_pairs: int = 1000, target_bytes: int = 100 << 20, seed: int = 2) -> list[dict]:
    """``n_pairs`` one-call conversations with distinct large prompts: nothing to deduplicate, so the
    page is as big as the log (the worst case for the viewer's load time)."""
    rnd = random.Random(seed)
    log = LogBuilder()
    words = "alpha beta gamma delta price item cart total round float config parse".split()
    n_words = max(10, target_bytes // n_pairs // 6)
    for i in range(n_pairs):
        text = " ".join(rnd.choice(words) for _ in range(n_words))
        a = Agent(log, SYSTEM, tool_defs(), [{"type": "text", "text": f"Task {i}: {text}"}])
        a.turn([{"type": "text", "text": f"Done with task {i}."}])
    return log.records


def write_jsonl(records: list[dict], path) -> None:
    with open(path, "wb") as f:
        for r in records:
            f.write(dumps(r) + b"\n")
