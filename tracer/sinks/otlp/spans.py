"""Span attributes for one logged call, its tool calls and its session (pure: no I/O, no SDK).

Conventions followed (both on every span, so Phoenix/Langfuse and GenAI-aware backends all render them):

- OpenTelemetry GenAI semantic conventions: ``chat {model}`` CLIENT spans for Messages API calls
  (``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.*``, ``gen_ai.response.*``,
  ``gen_ai.usage.*`` with Anthropic's rule that ``gen_ai.usage.input_tokens`` includes cache reads and
  writes, ``gen_ai.response.time_to_first_chunk``, ``server.address``/``server.port``,
  ``http.response.status_code``, ``error.type``), ``execute_tool {name}`` INTERNAL spans for tool calls,
  ``invoke_agent`` INTERNAL spans for a Claude Code session. Content only on request, as the opt-in
  ``gen_ai.system_instructions`` / ``gen_ai.input.messages`` / ``gen_ai.output.messages`` /
  ``gen_ai.tool.call.arguments`` / ``gen_ai.tool.call.result`` (JSON strings).
- OpenInference: ``openinference.span.kind`` (LLM / TOOL / AGENT), ``llm.system``, ``llm.provider``,
  ``llm.model_name``, ``llm.invocation_parameters``, ``llm.token_count.*`` (prompt includes cache read and
  write, as ``prompt_details.cache_read`` / ``cache_write``), ``session.id``, ``tool.name``; with content
  ``input.value``/``output.value`` and the flattened ``llm.input_messages.*`` / ``llm.output_messages.*``.
- tracer's own figures under ``tracer.*``: completeness, gaps, notes, time to first byte, duration.

Content (``content=True``) is taken from the log record, i.e. after the log's own redaction; every text
is cut at ``TEXT_LIMIT`` characters and each representation of a call's messages at ``MESSAGES_BUDGET``,
keeping the most recent messages (the number left out is in ``tracer.content.messages_omitted``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from tracer.viewer.analyze import CallInfo, header, message_text
from tracer.viewer.logs import dumps

TEXT_LIMIT = 16 * 1024          # characters per message text / tool argument / tool result
MESSAGES_BUDGET = 128 * 1024    # characters per span for each representation of the input messages

PROVIDER_ANTHROPIC = "anthropic"
PROVIDER_BEDROCK = "aws.bedrock"

# Anthropic stop_reason -> the GenAI output-message finish_reason vocabulary
FINISH_REASON = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "tool_use": "tool_call", "refusal": "content_filter", "pause_turn": "pause_turn"}
INVOCATION_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "stop_sequences", "stream", "thinking",
                   "tool_choice", "service_tier")

_rng = random.SystemRandom()


def new_trace_id() -> int:
    return _rng.getrandbits(128) or 1


def new_span_id() -> int:
    return _rng.getrandbits(64) or 1


@dataclass
class SpanData:
    """A finished span, independent of the OpenTelemetry SDK (``export`` turns it into one)."""

    name: str
    kind: str                      # "CLIENT" | "INTERNAL"
    trace_id: int
    span_id: int
    parent_id: int | None
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: str = "UNSET"          # "UNSET" | "ERROR"
    status_message: str = ""
    pid: int | None = None         # traced process (selects the resource)
    role: str = "chat"             # chat | tool | session (statistics)


def to_ns(t: float | None) -> int | None:
    return int(round(t * 1e9)) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def cut(text: str, limit: int = TEXT_LIMIT) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"…[tracer: {len(text) - limit} more characters]"


def json_text(v: Any, limit: int = TEXT_LIMIT) -> str:
    if isinstance(v, str):
        return cut(v, limit)
    return cut(dumps(v).decode("utf-8", "replace"), limit)


def parse_user_agent(ua: str) -> tuple[str, str]:
    """('claude-cli', '2.1.332') from 'claude-cli/2.1.332 (external, cli)'; ('', '') if none."""
    first = ua.strip().split(" ", 1)[0] if ua else ""
    if "/" in first:
        name, ver = first.split("/", 1)
        return name, ver
    return first, ""


def agent_name(ua_product: str) -> str:
    return "Claude Code" if ua_product in ("claude-cli", "claude-code") else ""


# ------------------------------------------------------------------------------------ the request

@dataclass
class Target:
    """What the URL says about the call: provider, server, model (Bedrock puts it in the path)."""

    provider: str
    host: str
    port: int | None
    path: str
    model: str = ""


def target_of(url: str) -> Target:
    try:
        p = urlsplit(url)
        host = p.hostname or ""
        port = p.port or (443 if p.scheme == "https" else 80 if p.scheme == "http" else None)
    except ValueError:
        return Target(PROVIDER_ANTHROPIC, "", None, "")
    provider, model = PROVIDER_ANTHROPIC, ""
    if host.startswith("bedrock-runtime") and host.endswith(".amazonaws.com"):
        provider = PROVIDER_BEDROCK
        parts = p.path.split("/")
        if len(parts) >= 3 and parts[1] == "model":
            model = unquote(parts[2])
    return Target(provider, host, port, p.path, model)


def is_llm_call(rec: dict, call: CallInfo) -> bool:
    """A Messages API call (parsed body), or a request to a Messages endpoint whose body is missing
    (incomplete pair): both become chat spans."""
    if call.kind == "messages":
        return True
    path = target_of(call.url).path.rstrip("/")
    return path.endswith("/v1/messages") or (target_of(call.url).provider == PROVIDER_BEDROCK
                                             and "/model/" in path)


def request_body(rec: dict) -> dict:
    b = (rec.get("request") or {}).get("body")
    return b if isinstance(b, dict) else {}


def new_turn(messages: Any) -> tuple[dict | None, list[dict]]:
    """What a request adds to its conversation: its last user message, and the tool results in it."""
    last = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None) \
        if isinstance(messages, list) else None
    blocks = last.get("content") if last is not None else None
    results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"
               and isinstance(b.get("tool_use_id"), str)] if isinstance(blocks, list) else []
    return last, results


def tool_uses(response: dict | None) -> list[dict]:
    if not isinstance(response, dict) or not isinstance(response.get("content"), list):
        return []
    return [b for b in response["content"] if isinstance(b, dict) and b.get("type") == "tool_use"
            and isinstance(b.get("id"), str)]


def result_text(block: dict) -> str:
    c = block.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        out = []
        for b in c:
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str):
                out.append(b["text"])
            elif isinstance(b, dict):
                out.append(f"[{b.get('type', 'block')}]")
        return "\n".join(out)
    return ""


# ------------------------------------------------------------------------------------ content

def _gen_ai_part(b: Any) -> dict | None:
    """An Anthropic content block as a GenAI message part."""
    if isinstance(b, str):
        return {"type": "text", "content": cut(b)}
    if not isinstance(b, dict):
        return None
    t = b.get("type")
    if t == "text":
        return {"type": "text", "content": cut(str(b.get("text", "")))}
    if t in ("tool_use", "server_tool_use", "mcp_tool_use"):
        return {"type": "tool_call", "id": b.get("id"), "name": b.get("name"),
                "arguments": json_text(b.get("input"))}
    if t == "tool_result":
        return {"type": "tool_call_response", "id": b.get("tool_use_id"), "response": cut(result_text(b))}
    if t in ("thinking", "redacted_thinking"):
        return {"type": "reasoning", "content": cut(str(b.get("thinking", "")))}
    if t in ("image", "document"):
        src = b.get("source") if isinstance(b.get("source"), dict) else {}
        return {"type": "blob", "modality": t, "mime_type": src.get("media_type"),
                "content": "", "tracer.omitted": "binary data not exported"}
    return {"type": str(t or "unknown")}


def _blocks(content: Any) -> list:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def gen_ai_messages(messages: list) -> list[dict]:
    out = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        parts = [p for p in (_gen_ai_part(b) for b in _blocks(m.get("content"))) if p]
        role = m.get("role") or "user"
        if role == "user" and parts and all(p.get("type") == "tool_call_response" for p in parts):
            role = "tool"
        out.append({"role": role, "parts": parts})
    return out


def gen_ai_system(system: Any) -> list[dict]:
    return [p for p in (_gen_ai_part(b) for b in _blocks(system)) if p]


def _oi_messages(messages: list, system: Any) -> list[dict]:
    """Messages in OpenInference's shape: one dict of message.* attributes per message; tool results
    are messages of role "tool"; tool calls go into message.tool_calls."""
    out: list[dict] = []
    sys_text = "\n".join(p.get("content", "") for p in gen_ai_system(system) if p.get("type") == "text")
    if sys_text:
        out.append({"message.role": "system", "message.content": cut(sys_text)})
    for m in messages:
        if not isinstance(m, dict):
            continue
        role = m.get("role") or "user"
        texts, calls = [], []
        for b in _blocks(m.get("content")):
            if not isinstance(b, dict):
                continue
            t = b.get("type")
            if t == "text":
                texts.append(str(b.get("text", "")))
            elif t in ("tool_use", "server_tool_use", "mcp_tool_use"):
                calls.append({"tool_call.id": str(b.get("id", "")), "tool_call.function.name": str(b.get("name", "")),
                              "tool_call.function.arguments": json_text(b.get("input"))})
            elif t == "tool_result":
                out.append({"message.role": "tool", "message.tool_call_id": str(b.get("tool_use_id", "")),
                            "message.content": cut(result_text(b))})
            elif t in ("thinking", "redacted_thinking"):
                pass
            elif t in ("image", "document"):
                texts.append(f"[{t}]")
        if texts or calls:
            msg = {"message.role": role, "message.content": cut("\n".join(texts))}
            if calls:
                msg["message.tool_calls"] = calls
            out.append(msg)
    return out


def _flatten(prefix: str, items: list[dict], attrs: dict) -> None:
    for i, item in enumerate(items):
        for k, v in item.items():
            if isinstance(v, list):
                for j, sub in enumerate(v):
                    for k2, v2 in sub.items():
                        attrs[f"{prefix}.{i}.{k}.{j}.{k2}"] = v2
            else:
                attrs[f"{prefix}.{i}.{k}"] = v


def _size(obj: Any) -> int:
    return len(dumps(obj))


def _budgeted(items: list, keep_first: int = 0) -> tuple[list, int]:
    """The most recent items that fit MESSAGES_BUDGET (plus the first ``keep_first``); how many were left out."""
    head = items[:keep_first]
    used = sum(_size(x) for x in head)
    tail: list = []
    for item in reversed(items[keep_first:]):
        n = _size(item)
        if used + n > MESSAGES_BUDGET and tail:
            break
        tail.append(item)
        used += n
    tail.reverse()
    return head + tail, len(items) - len(head) - len(tail)


def content_attributes(body: dict, response: dict | None, stop: str | None) -> dict[str, Any]:
    """Opt-in content of a chat span: GenAI and OpenInference representations, budgeted."""
    attrs: dict[str, Any] = {}
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    system = body.get("system")
    gi, omitted = _budgeted(gen_ai_messages(messages))
    if system:
        attrs["gen_ai.system_instructions"] = dumps(gen_ai_system(system)).decode()
    attrs["gen_ai.input.messages"] = dumps(gi).decode()
    oi = _oi_messages(messages, system)
    oi_kept, oi_omitted = _budgeted(oi, keep_first=1 if oi and oi[0]["message.role"] == "system" else 0)
    _flatten("llm.input_messages", oi_kept, attrs)
    if omitted or oi_omitted:
        attrs["tracer.content.messages_omitted"] = max(omitted, oi_omitted)
    last, res = new_turn(messages)
    if last is not None:
        text = message_text(last) or "\n".join(result_text(b) for b in res)
        attrs["input.value"] = cut(text)
        attrs["input.mime_type"] = "text/plain"
    if isinstance(response, dict):
        blocks = _blocks(response.get("content"))
        out_msg = {"role": "assistant", "parts": [p for p in (_gen_ai_part(b) for b in blocks) if p]}
        if stop:
            out_msg["finish_reason"] = FINISH_REASON.get(stop, stop)
        attrs["gen_ai.output.messages"] = dumps([out_msg]).decode()
        _flatten("llm.output_messages", _oi_messages([{"role": "assistant", "content": blocks}], None)
                 or [{"message.role": "assistant", "message.content": ""}], attrs)
        text = message_text({"content": blocks})
        calls = [f"{b.get('name')}({json_text(b.get('input'), 2000)})" for b in tool_uses(response)]
        attrs["output.value"] = cut("\n".join([t for t in [text] if t] + calls))
        attrs["output.mime_type"] = "text/plain"
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, t in enumerate(tools):
            if isinstance(t, dict):
                attrs[f"llm.tools.{i}.tool.json_schema"] = json_text(t)
    return attrs


# ------------------------------------------------------------------------------------ chat spans

def _api_error_type(rec: dict) -> str:
    """The ``error.type`` of an Anthropic error body (``rate_limit_error``, ``overloaded_error``, ...)."""
    res = rec.get("response") if isinstance(rec.get("response"), dict) else None
    body = res.get("body") if res else None
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and body["error"].get("type"):
        return str(body["error"]["type"])
    return ""


def chat_attributes(rec: dict, call: CallInfo, *, content: bool) -> tuple[dict[str, Any], str, str]:
    """(attributes, status, status message) of the chat span of one logged call."""
    req = rec.get("request") or {}
    res = rec.get("response") if isinstance(rec.get("response"), dict) else None
    tr = rec.get("tracer") if isinstance(rec.get("tracer"), dict) else {}
    body = request_body(rec)
    tgt = target_of(call.url)
    req_model = str(body.get("model") or tgt.model or "")
    resp = call.response if isinstance(call.response, dict) else None
    resp_model = str(resp.get("model") or "") if resp else ""
    a: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": tgt.provider,
        "openinference.span.kind": "LLM",
        "llm.system": PROVIDER_ANTHROPIC,
        "llm.provider": "aws" if tgt.provider == PROVIDER_BEDROCK else PROVIDER_ANTHROPIC,
    }
    if req_model:
        a["gen_ai.request.model"] = req_model
    if resp_model:
        a["gen_ai.response.model"] = resp_model
    if req_model or resp_model:
        a["llm.model_name"] = resp_model or req_model
    for key, attr in (("max_tokens", "gen_ai.request.max_tokens"), ("temperature", "gen_ai.request.temperature"),
                      ("top_p", "gen_ai.request.top_p"), ("top_k", "gen_ai.request.top_k")):
        v = body.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            a[attr] = v
    if isinstance(body.get("stop_sequences"), list):
        a["gen_ai.request.stop_sequences"] = [str(s) for s in body["stop_sequences"]]
    if body.get("stream") is True:
        a["gen_ai.request.stream"] = True
    params = {k: body[k] for k in INVOCATION_KEYS if k in body}
    if params:
        a["llm.invocation_parameters"] = dumps(params).decode()
    if resp:
        if resp.get("id"):
            a["gen_ai.response.id"] = str(resp["id"])
        if call.stop_reason:
            a["gen_ai.response.finish_reasons"] = [str(call.stop_reason)]
        total_in = call.input_tokens + call.cache_read_tokens + call.cache_creation_tokens
        a.update({
            "gen_ai.usage.input_tokens": total_in,
            "gen_ai.usage.output_tokens": call.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": call.cache_read_tokens,
            "gen_ai.usage.cache_creation.input_tokens": call.cache_creation_tokens,
            "llm.token_count.prompt": total_in,
            "llm.token_count.completion": call.output_tokens,
            "llm.token_count.total": total_in + call.output_tokens,
            "llm.token_count.prompt_details.cache_read": call.cache_read_tokens,
            "llm.token_count.prompt_details.cache_write": call.cache_creation_tokens,
        })
        a["tracer.usage.input_tokens"] = call.input_tokens   # Anthropic's figure (without cache)
    if call.ttft_ms is not None:
        a["gen_ai.response.time_to_first_chunk"] = round(call.ttft_ms / 1000.0, 6)
        a["tracer.ttft_ms"] = call.ttft_ms
    if tgt.host:
        a["server.address"] = tgt.host
    if tgt.port:
        a["server.port"] = tgt.port
    a["http.request.method"] = call.method or "POST"
    if call.url:
        a["url.full"] = call.url.split("?", 1)[0]
    if call.status is not None:
        a["http.response.status_code"] = call.status
    headers = req.get("headers")
    ua = header(headers, "user-agent")
    if ua:
        a["user_agent.original"] = ua
    if res:
        rid = header(res.get("headers"), "request-id")
        if rid:
            a["http.response.header.request-id"] = [rid]
    # tracer's own figures
    complete = bool(tr.get("complete", True)) and res is not None
    a["tracer.complete"] = complete
    gaps = tr.get("gaps") if isinstance(tr.get("gaps"), list) else []
    gap_bytes = sum(int(g.get("bytes") or 0) for g in gaps if isinstance(g, dict))
    if gaps:
        a["tracer.gaps"] = len(gaps)
        a["tracer.gap_bytes"] = gap_bytes
    notes = [str(n) for n in tr.get("notes") or []] if isinstance(tr.get("notes"), list) else []
    if notes:
        a["tracer.notes"] = notes
    for k in ("ttfb_ms", "duration_ms"):
        if isinstance(tr.get(k), (int, float)):
            a[f"tracer.{k}"] = tr[k]
    if tr.get("protocol"):
        a["network.protocol.name"] = "http"
        a["network.protocol.version"] = "2" if tr["protocol"] == "h2" else str(tr["protocol"]).split("/")[-1]
    for k in ("conn_id", "stream_id", "tid", "comm"):
        if tr.get(k) is not None:
            a[f"tracer.{k}"] = tr[k]
    # the program that made the call, as it was then (tracer.process: after an exec, the new program;
    # the resource describes the pid as first seen). Command lines are content (claude -p "PROMPT").
    proc = tr.get("process") if isinstance(tr.get("process"), dict) else {}
    for k, attr in (("pid", "tracer.process.pid"), ("ppid", "tracer.process.parent_pid")):
        if isinstance(proc.get(k), int) and not isinstance(proc.get(k), bool):
            a[attr] = proc[k]
    if isinstance(proc.get("exe"), str) and proc["exe"]:
        a["tracer.process.executable.path"] = proc["exe"]
    if content:
        for k, attr in (("command", "tracer.process.command_line"), ("chain_text", "tracer.process.chain")):
            if isinstance(proc.get(k), str) and proc[k]:
                a[attr] = proc[k]
    if call.rebuild_errors:
        a["tracer.rebuild_errors"] = [str(e) for e in call.rebuild_errors[:10]]
    if rec.get("tracer.partial"):
        a["tracer.partial_record"] = True
    # status: errors only (success stays UNSET, as the OpenTelemetry error conventions ask)
    status, msg = "UNSET", ""
    if res is None:
        status, msg = "ERROR", "no response"
        a["error.type"] = "no_response"
    elif call.status is not None and call.status >= 400:
        status, msg = "ERROR", call.error or f"HTTP {call.status}"
        a["error.type"] = _api_error_type(rec) or str(call.status)
    elif call.error and call.error != rec.get("note"):
        status, msg = "ERROR", call.error     # an `error` event inside a 2xx stream
        a["error.type"] = "stream_error"
    if not complete:
        detail = "; ".join(notes) or "response incomplete"
        if gap_bytes:
            detail += f"; {gap_bytes} bytes missing in {len(gaps)} gap(s)"
        msg = f"{msg}; incomplete: {detail}" if msg else f"incomplete: {detail}"
        status = "ERROR"
        a.setdefault("error.type", "incomplete")
    if content:
        a.update(content_attributes(body, resp, call.stop_reason))
    return a, status, msg


def chat_name(rec: dict, call: CallInfo) -> str:
    model = str(request_body(rec).get("model") or target_of(call.url).model or call.model or "")
    return f"chat {model}" if model else "chat"


# ------------------------------------------------------------------------------------ tool spans

def tool_attributes(use: dict, result: dict | None, *, content: bool, session_id: str) -> tuple[dict, str, str]:
    name = str(use.get("name") or "")
    a: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": str(use.get("id")),
        "gen_ai.tool.type": "function",
        "openinference.span.kind": "TOOL",
        "tool.name": name,
        "tool.id": str(use.get("id")),
        "tool_call.id": str(use.get("id")),
    }
    if session_id:
        a["session.id"] = session_id
        a["gen_ai.conversation.id"] = session_id
    inp = use.get("input") if isinstance(use.get("input"), dict) else {}
    if name in ("Task", "Agent") and isinstance(inp.get("subagent_type"), str):
        a["tracer.subagent.type"] = inp["subagent_type"]
    status, msg = "UNSET", ""
    if result is None:
        a["tracer.tool.result_seen"] = False
    else:
        a["tracer.tool.result_seen"] = True
        if result.get("is_error"):
            status, msg = "ERROR", "the tool reported an error"
            a["error.type"] = "tool_error"
    if content:
        args = json_text(use.get("input"))
        a["gen_ai.tool.call.arguments"] = args
        a["input.value"] = args
        a["input.mime_type"] = "application/json"
        if result is not None:
            text = cut(result_text(result))
            a["gen_ai.tool.call.result"] = text
            a["output.value"] = text
            a["output.mime_type"] = "text/plain"
            if result.get("is_error"):
                msg = cut(text, 500)
    return a, status, msg


# ------------------------------------------------------------------------------------ session spans

@dataclass
class SessionFacts:
    """What a session span says; accumulated as its calls arrive."""

    session_id: str
    agent: str = ""                # "Claude Code" when the user-agent says so
    agent_version: str = ""
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0          # GenAI convention: cache reads and writes included
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    models: set = field(default_factory=set)
    subagents: int = 0
    tools: int = 0
    first_prompt: str = ""
    last_answer: str = ""
    segment: int = 1               # > 1: the session went idle and resumed (a new span each time)


def session_name(f: SessionFacts) -> str:
    return f"invoke_agent {f.agent}" if f.agent else "invoke_agent"


def session_attributes(f: SessionFacts, *, content: bool) -> dict[str, Any]:
    a: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": PROVIDER_ANTHROPIC,
        "gen_ai.conversation.id": f.session_id,
        "openinference.span.kind": "AGENT",
        "session.id": f.session_id,
        "tracer.session.calls": f.calls,
        "tracer.session.errors": f.errors,
        "tracer.session.input_tokens": f.input_tokens,
        "tracer.session.output_tokens": f.output_tokens,
        "tracer.session.cache_read_tokens": f.cache_read_tokens,
        "tracer.session.cache_creation_tokens": f.cache_creation_tokens,
        "tracer.session.tool_calls": f.tools,
        "tracer.session.subagents": f.subagents,
        "tracer.session.models": sorted(f.models),
        "tracer.session.segment": f.segment,
    }
    if f.agent:
        a["gen_ai.agent.name"] = f.agent
        a["agent.name"] = f.agent
    if f.agent_version:
        a["gen_ai.agent.version"] = f.agent_version
    if content:
        if f.first_prompt:
            a["input.value"] = cut(f.first_prompt)
            a["input.mime_type"] = "text/plain"
        if f.last_answer:
            a["output.value"] = cut(f.last_answer)
            a["output.mime_type"] = "text/plain"
    return a
