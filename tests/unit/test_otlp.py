"""OTLP export without root or a backend: endpoint rules, span attributes, grouping (live = whole log =
the viewer's), the bounded log reader, delivery accounting, and the exporter process following a log
that grows, against a small in-test OTLP/HTTP receiver that decodes the protobuf."""

from __future__ import annotations

import copy
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tracer.sinks.otlp import spans as S
from tracer.sinks.otlp.config import OtlpConfigError, display_url, resolve_endpoint
from tracer.sinks.otlp.engine import SpanEngine
from tracer.sinks.otlp.export import Exporter, ProcessInfo, Resources
from tracer.sinks.otlp.reader import LineReader, parse_line, partial_record
from tracer.viewer import synth
from tracer.viewer.analyze import GroupingWindow, analyze, analyze_call

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------- endpoint

@pytest.mark.parametrize("cli,env,url", [
    ("http://collector:4318", {}, "http://collector:4318/v1/traces"),
    ("http://collector:4318/", {}, "http://collector:4318/v1/traces"),
    ("https://gw.example/otlp", {}, "https://gw.example/otlp/v1/traces"),
    ("https://gw.example/otlp/?tenant=a", {}, "https://gw.example/otlp/v1/traces?tenant=a"),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "http://c:4318/v1/traces"),
    (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom"}, "http://c:4318/custom"),
    (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://b:2"},
     "http://t:1"),
    ("http://cli:3", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1"}, "http://cli:3/v1/traces"),
    (None, {}, None),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
    ("http://c:1", {"OTEL_SDK_DISABLED": "true"}, "http://c:1/v1/traces"),
    ("http://c:1", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http://c:1/v1/traces"),
])
def test_endpoint_rules(cli, env, url):
    assert resolve_endpoint(cli, env)[0] == url


@pytest.mark.parametrize("cli,env", [
    ("collector:4318", {}), ("ftp://c/", {}), ("http://", {}), ("http://c:99999", {}),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://c:4317"}),
    ("http://c:4317", {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}),
])
def test_endpoint_refused(cli, env):
    with pytest.raises(OtlpConfigError):
        resolve_endpoint(cli, env)


def test_display_url_hides_credentials():
    assert display_url("https://user:s3cret@c.example:4318/v1/traces?api_key=k") == "https://c.example:4318/v1/traces"


# ------------------------------------------------------------------------------------------- grouping

def _partition(values: dict) -> list:
    groups: dict = {}
    for i, v in values.items():
        groups.setdefault(v, set()).add(i)
    return sorted(sorted(g) for g in groups.values())


@functools.lru_cache(maxsize=1)
def _logs():
    big = synth.big_log(300, 6 << 20, sessions=4)
    two = synth.claude_code_session().records + synth.claude_code_session(
        synth.LogBuilder(t0=1764300000.0, session_id=""), prompt="Add a changelog entry").records
    return {"session": synth.claude_code_session().records, "compacted": synth.compacted_session().records,
            "no-session-header": synth.claude_code_session(synth.LogBuilder(session_id="")).records,
            "two": two, "big": big}


@pytest.mark.parametrize("name", ["session", "compacted", "no-session-header", "two", "big"])
def test_grouping_window_groups_like_the_viewer(name):
    """The live window (calls under the caller's indexes, responses dropped, grouped again and again)
    gives the viewer's grouping; forgetting a session leaves the others as they were."""
    recs = copy.deepcopy(_logs()[name])
    full = analyze(recs)
    w = GroupingWindow()
    for i, r in enumerate(recs):
        w.add(1000 + i, r, analyze_call(i, r))
    assert all(c.response is None for c in w.calls.values())
    for _ in range(2):                         # grouping again changes nothing
        win = w.group()
        msgs = [i for i, c in enumerate(full.calls) if c.kind == "messages"]
        assert sorted(win.calls) == [1000 + i for i in msgs]
        assert _partition({i: win.calls[1000 + i].session for i in msgs}) == \
            _partition({i: full.calls[i].session for i in msgs})
        assert [(t.kind, t.parent[1] if t.parent else None, t.continues) for t in win.threads] == \
            [(t.kind, t.parent[1] if t.parent else None, t.continues) for t in full.threads]
    if len(full.sessions) > 1:
        gone = set(full.sessions[0].calls)
        w.forget(1000 + i for i in gone)
        rest = w.group()
        kept = [i for i in msgs if i not in gone]
        assert _partition({i: rest.calls[1000 + i].session for i in kept}) == \
            _partition({i: full.calls[i].session for i in kept})


def _structure(spans: list[S.SpanData]) -> dict:
    """Per chat span (log index): its trace's partition key, parent name and parent tool call id."""
    ids = {s.span_id: s for s in spans}
    out = {}
    for s in spans:
        if s.role == "chat":
            p = ids.get(s.parent_id)
            out[s.attributes["tracer.log.index"]] = (s.trace_id, p.name if p else None,
                                                     p.attributes.get("gen_ai.tool.call.id") if p else None)
    return out


def _live(recs, batch) -> list[S.SpanData]:
    e = SpanEngine()
    out = []
    for i, r in enumerate(recs):
        e.add(i, r)
        if (i + 1) % batch == 0:
            out += e.flush()
    return out + e.finish()


def _offline(recs) -> list[S.SpanData]:
    e = SpanEngine(prune=False)
    for i, r in enumerate(recs):
        e.plan(i, r)
    e.commit_plan()
    out = []
    for i, r in enumerate(recs):
        out += e.emit(i, r)
    return out + e.finish()


@pytest.mark.parametrize("name", ["session", "compacted", "no-session-header", "two", "big"])
@pytest.mark.parametrize("batch", [1, 7])
def test_live_export_groups_like_the_whole_log(name, batch):
    recs = copy.deepcopy(_logs()[name])
    live, whole = _structure(_live(recs, batch)), _structure(_offline(recs))
    assert sorted(live) == sorted(whole)
    assert _partition({i: v[0] for i, v in live.items()}) == _partition({i: v[0] for i, v in whole.items()})
    assert {i: v[1:] for i, v in live.items()} == {i: v[1:] for i, v in whole.items()}
    # and the sessions are the viewer's
    an = analyze(recs)
    viewer = {i: c.session for i, c in enumerate(an.calls) if c.session is not None}
    assert _partition({i: v[0] for i, v in whole.items()}) == _partition(viewer)


def test_subagent_calls_hang_under_their_task_call():
    recs = synth.claude_code_session().records
    spans = _live(recs, 1)
    ids = {s.span_id: s for s in spans}
    an = analyze(recs)
    sub = [t for t in an.threads if t.kind == "subagent"]
    assert len(sub) == 1
    for i in sub[0].calls:
        chat = next(s for s in spans if s.role == "chat" and s.attributes["tracer.log.index"] == i)
        parent = ids[chat.parent_id]
        assert parent.name == "execute_tool Task"
        assert parent.attributes["gen_ai.tool.call.id"] == sub[0].parent[1]
        assert chat.attributes["tracer.thread.kind"] == "subagent"


def test_tool_spans_time_and_result():
    recs = synth.claude_code_session().records
    spans = _live(recs, 1)
    tools = [s for s in spans if s.role == "tool"]
    chats = {s.attributes["tracer.log.index"]: s for s in spans if s.role == "chat"}
    assert tools
    for t in tools:
        tid = t.attributes["gen_ai.tool.call.id"]
        asked = [i for i, r in enumerate(recs) if tid in (r["response"].get("body_raw") or "")]
        answered = [i for i, r in enumerate(recs) if any(
            b.get("tool_use_id") == tid for m in r["request"]["body"].get("messages", [])[-1:]
            for b in (m["content"] if isinstance(m["content"], list) else []))]
        assert t.start_ns == chats[asked[0]].end_ns
        assert t.end_ns == chats[answered[0]].start_ns
        assert t.attributes["tracer.tool.result_seen"] is True
        assert t.parent_id == chats[asked[0]].parent_id


def test_idle_sessions_end_and_resume_as_a_new_segment():
    now = [0.0]
    e = SpanEngine(idle_s=60, clock=lambda: now[0])
    recs = synth.claude_code_session().records
    for i, r in enumerate(recs[:5]):
        e.add(i, r)
    first = e.flush()
    assert not [s for s in first if s.role == "session"]
    now[0] = 59
    early = e.tick()       # the held side call (quota check) leaves after AUX_HOLD_S, the session stays
    assert [s.role for s in early] == ["chat"] and early[0].attributes["tracer.thread.kind"] == "aux"
    now[0] = 61
    ended = e.tick()
    sess = [s for s in ended if s.role == "session"]
    assert len(sess) == 1 and sess[0].attributes["tracer.session.segment"] == 1
    for i, r in enumerate(recs[5:], 5):
        e.add(i, r)
    rest = e.flush() + e.finish()
    sess2 = [s for s in rest if s.role == "session"]
    assert sess2[0].attributes["tracer.session.segment"] == 2
    assert sess2[0].attributes["session.id"] == sess[0].attributes["session.id"]
    assert sess2[0].trace_id != sess[0].trace_id


def test_target_exit_ends_its_sessions_and_open_tools():
    """A process' exit ends its sessions (and their open tool calls) once its last records had time to
    reach the log: the exit is known before the pipeline has written them."""
    now = [1000.0]
    e = SpanEngine(exit_grace_s=3.0, clock=lambda: now[0])
    recs = synth.claude_code_session().records
    # stop right after a response that asked for a tool
    cut = next(i for i, r in enumerate(recs) if '"tool_use"' in (r["response"].get("body_raw") or ""))
    for i, r in enumerate(recs[:cut + 1]):
        e.add(i, r)
    out = e.flush()
    pids = {r["tracer"]["pid"] for r in recs}
    for pid in pids:
        assert e.target_exited(pid) == []            # its last records may still be on their way
    now[0] += 1.0
    e.add(cut + 1, recs[cut + 1])                    # ... like this one: it joins the session
    out += e.flush() + e.tick()
    assert not [s for s in out if s.role == "session"]
    now[0] += 2.5                                    # the grace is over: the session ends
    out = e.tick()
    sess = [s for s in out if s.role == "session"]
    assert len(sess) == 1 and sess[0].attributes["tracer.session.calls"] == cut + 2
    assert all(s.role != "tool" or s.attributes["tracer.tool.result_seen"] is False for s in out)
    assert e.sessions == {}


# ------------------------------------------------------------------------------------------- spans

def _call_record(status=200, complete=True, notes=(), gaps=(), sse_error=False, body_json=None):
    log = synth.LogBuilder()
    agent = synth.Agent(log, synth.SYSTEM, synth.tool_defs(["Bash"]), "hello there")
    agent.turn([{"type": "text", "text": "Hi!"}])
    rec = copy.deepcopy(log.records[0])
    rec["response"]["status_code"] = status
    if body_json is not None:
        rec["response"].pop("body_raw")
        rec["response"]["body"] = body_json
        rec["response"]["headers"]["content-type"] = "application/json"
    if sse_error:
        raw = rec["response"]["body_raw"]
        rec["response"]["body_raw"] = raw[:raw.index("event: message_delta")] + \
            'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    rec["tracer"]["complete"] = complete
    rec["tracer"]["notes"] = list(notes)
    rec["tracer"]["gaps"] = [{"direction": "response", "bytes": n} for n in gaps]
    if notes:
        rec["note"] = "; ".join(notes)
    return rec


def _chat(rec, content=False):
    return S.chat_attributes(rec, analyze_call(0, rec), content=content)


def test_chat_span_attributes_follow_the_conventions():
    rec = _call_record()
    a, status, _ = _chat(rec)
    usage = analyze_call(0, rec)
    total = usage.input_tokens + usage.cache_read_tokens + usage.cache_creation_tokens
    assert status == "UNSET"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.usage.input_tokens"] == total == a["llm.token_count.prompt"]
    assert a["tracer.usage.input_tokens"] == usage.input_tokens
    assert a["gen_ai.usage.cache_read.input_tokens"] == usage.cache_read_tokens > 0 or usage.cache_read_tokens == 0
    assert a["gen_ai.usage.cache_creation.input_tokens"] == 200 == a["llm.token_count.prompt_details.cache_write"]
    assert a["llm.token_count.total"] == total + usage.output_tokens
    assert a["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert a["gen_ai.request.max_tokens"] == 32000 and a["gen_ai.request.stream"] is True
    assert a["server.address"] == "api.anthropic.com" and a["server.port"] == 443
    assert a["openinference.span.kind"] == "LLM" and a["llm.model_name"] == synth.SONNET
    assert abs(a["gen_ai.response.time_to_first_chunk"] - usage.ttft_ms / 1000) < 1e-6
    assert S.chat_name(rec, usage) == f"chat {synth.SONNET}"
    assert "x-api-key" not in json.dumps(a)


def test_chat_span_names_the_process_that_made_the_call():
    """tracer.process of the record (the program as it was at that call) is on the chat span; its
    command line and chain only with content."""
    rec = _call_record()
    rec["tracer"]["process"] = {"pid": 77, "ppid": 70, "exe": "/opt/claude/claude",
                                "command": "/opt/claude/claude -p hi --api-key sk-ant-...wxyz",
                                "chain": [{"pid": 70, "command": "python3 agent.py"}],
                                "chain_text": "python3 agent.py → claude -p hi"}
    a, _, _ = S.chat_attributes(rec, analyze_call(0, rec), content=False)
    assert (a["tracer.process.pid"], a["tracer.process.parent_pid"]) == (77, 70)
    assert a["tracer.process.executable.path"] == "/opt/claude/claude"
    assert "tracer.process.command_line" not in a and "tracer.process.chain" not in a
    a, _, _ = S.chat_attributes(rec, analyze_call(0, rec), content=True)
    assert a["tracer.process.command_line"].endswith("--api-key sk-ant-...wxyz")
    assert a["tracer.process.chain"] == "python3 agent.py → claude -p hi"
    del rec["tracer"]["process"]
    assert not any(k.startswith("tracer.process.") for k in S.chat_attributes(rec, analyze_call(0, rec),
                                                                               content=True)[0])


@pytest.mark.parametrize("kind", ["429", "stream-error", "incomplete", "no-response"])
def test_chat_span_errors(kind):
    if kind == "429":
        rec = _call_record(status=429, body_json={"type": "error", "error": {"type": "rate_limit_error",
                                                                               "message": "slow down"}})
        a, status, msg = _chat(rec)
        assert (status, a["error.type"], a["http.response.status_code"]) == ("ERROR", "rate_limit_error", 429)
        assert msg == "slow down"
    elif kind == "stream-error":
        a, status, msg = _chat(_call_record(sse_error=True))
        assert (status, a["error.type"], msg) == ("ERROR", "stream_error", "Overloaded")
    elif kind == "incomplete":
        a, status, msg = _chat(_call_record(complete=False, notes=["response incomplete"], gaps=[4096, 10]))
        assert status == "ERROR" and a["error.type"] == "incomplete" and a["tracer.complete"] is False
        assert a["tracer.gap_bytes"] == 4106 and a["tracer.gaps"] == 2
        assert "4106 bytes missing in 2 gap(s)" in msg
    else:
        rec = _call_record(complete=False, notes=["tracer stopped"])
        rec["response"] = None
        a, status, msg = _chat(rec)
        assert status == "ERROR" and a["error.type"] == "no_response" and "tracer stopped" in msg


def test_content_only_when_asked_and_budgeted():
    log = synth.LogBuilder()
    agent = synth.Agent(log, synth.SYSTEM, synth.tool_defs(["Bash"]), "the secret plan " + "x" * 40000)
    for k in range(12):
        agent.tool("Bash", {"command": f"echo {k}"}, "y" * 30000)
    agent.turn([{"type": "text", "text": "All done with the secret plan."}])
    rec = log.records[-1]
    off, _, _ = _chat(rec)
    assert "secret plan" not in json.dumps(off)
    on, _, _ = _chat(rec, content=True)
    assert on["output.value"] == "All done with the secret plan."
    assert json.loads(on["gen_ai.output.messages"])[0]["finish_reason"] == "stop"
    msgs = json.loads(on["gen_ai.input.messages"])
    assert len(on["gen_ai.input.messages"]) <= S.MESSAGES_BUDGET + 2000
    assert on["tracer.content.messages_omitted"] > 0
    assert msgs[-1]["role"] == "tool"            # the most recent messages are kept
    assert all(len(p.get("response", "")) <= S.TEXT_LIMIT + 40 for m in msgs for p in m["parts"])
    assert on["llm.input_messages.0.message.role"] == "system"
    assert any(k.endswith("message.tool_call_id") for k in on)


def test_tool_span_attributes():
    use = {"type": "tool_use", "id": "toolu_1", "name": "Task",
           "input": {"prompt": "look around", "subagent_type": "Explore", "description": "d"}}
    a, status, _ = S.tool_attributes(use, {"tool_use_id": "toolu_1", "content": "found it"}, content=False,
                                     session_id="s1")
    assert (a["gen_ai.operation.name"], a["gen_ai.tool.name"], a["gen_ai.tool.call.id"]) == \
        ("execute_tool", "Task", "toolu_1")
    assert a["openinference.span.kind"] == "TOOL" and a["tracer.subagent.type"] == "Explore"
    assert "look around" not in json.dumps(a) and status == "UNSET"
    a, status, msg = S.tool_attributes(use, {"tool_use_id": "toolu_1", "content": "boom", "is_error": True},
                                       content=True, session_id="s1")
    assert status == "ERROR" and a["error.type"] == "tool_error" and a["gen_ai.tool.call.result"] == "boom"
    assert json.loads(a["gen_ai.tool.call.arguments"])["prompt"] == "look around"


# ------------------------------------------------------------------------------------------- reader

def _big_record(text_bytes: int, req_bytes: int = 0) -> dict:
    """A record whose streamed answer has ``text_bytes`` of text (in 64 KiB deltas) and a tool call."""
    log = synth.LogBuilder()
    agent = synth.Agent(log, synth.SYSTEM, synth.tool_defs(["Bash"]), "write a lot" + " z" * (req_bytes // 2))
    content = [{"type": "text", "text": "w" * text_bytes},
               {"type": "tool_use", "id": "toolu_big", "name": "Bash", "input": {"command": "ls"}}]
    msg = agent.turn([{"type": "text", "text": "short"}])
    rec = log.records[0]
    raw, chunks, _t = synth.sse_stream(dict(msg, content=content, stop_reason="tool_use"), piece=65536)
    rec["response"]["body_raw"] = raw
    rec["tracer"]["response_chunks"] = chunks
    return rec


def _read_all(data: bytes, chunk: int, tmp: Path, **kw) -> tuple[list, LineReader]:
    """Append ``data`` to a file piece by piece, reading it like the exporter follows the log."""
    path = tmp / "grow.jsonl"
    out = []
    with path.open("wb") as f:
        fd = os.open(path, os.O_RDONLY)
        reader = LineReader(fd, **kw)
        try:
            for i in range(0, len(data), chunk):
                f.write(data[i:i + chunk])
                f.flush()
                out += reader.read()
            out += reader.read()
            out += reader.flush_last()
        finally:
            os.close(fd)
    return out, reader


def test_reader_whole_lines_across_reads(tmp_path):
    recs = synth.claude_code_session().records[:4]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in recs)
    items, reader = _read_all(data[:-1], 777, tmp_path)          # and a last line without its newline
    got = [parse_line(i, reader.stats) for i in items]
    assert got == recs and reader.stats.lines == 4


@pytest.mark.parametrize("req_big", [False, True])
def test_reader_oversize_record_becomes_partial(req_big, tmp_path):
    rec = _big_record(3 << 20, req_bytes=(3 << 20) if req_big else 0)
    line = json.dumps(rec, separators=(",", ":")).encode()
    small = json.dumps(synth.claude_code_session().records[0], separators=(",", ":")).encode()
    items, reader = _read_all(small + b"\n" + line + b"\n" + small + b"\n", 1 << 16, tmp_path,
                              max_line=1 << 20)
    assert len(items) == 3 and items[1][1] is not None
    part = parse_line(items[1], reader.stats)
    assert reader.stats.partial_records == 1
    assert part["tracer.partial"] is True
    assert part["request"]["timestamp"] == rec["request"]["timestamp"]
    assert part["tracer"] == rec["tracer"]
    if not req_big:
        assert part["response"]["status_code"] == 200
        body = part["response"]["body"]          # usage and tool calls rebuilt from the stream's ends
        want = analyze_call(0, rec).response
        assert body["usage"] == want["usage"] and body["id"] == want["id"]
        assert body["stop_reason"] == "tool_use"
        assert [b["id"] for b in body["content"]] == ["toolu_big"]
    call = analyze_call(0, part)
    a, status, _ = S.chat_attributes(part, call, content=False)
    assert a["tracer.partial_record"] is True
    if not req_big:
        assert a["gen_ai.usage.output_tokens"] == analyze_call(0, rec).output_tokens
        assert status == "UNSET"
    # the reader never held the long line
    assert reader.pending() == 0


def test_reader_keeps_the_whole_request_of_a_long_answer(tmp_path):
    """A long answer to a big request: the request is kept whole (grouping and content need it), the
    answer only by its ends; the same text as the response key inside the request body does not fool it."""
    rec = _big_record(4 << 20, req_bytes=2 << 20)
    rec["request"]["body"]["tools"] = [{"name": "T", "input_schema": {"x": 1, "response": {"timestamp": 5}}}]
    line = json.dumps(rec, separators=(",", ":")).encode()
    peak = [0]

    class Watch(LineReader):
        def _feed(self, chunk, out):
            super()._feed(chunk, out)
            peak[0] = max(peak[0], self.pending())
    path = tmp_path / "l.jsonl"
    path.write_bytes(line + b"\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        r = Watch(fd)
        items = r.read()
    finally:
        os.close(fd)
    assert len(items) == 1 and items[0][1] is not None
    part = parse_line(items[0], r.stats)
    assert part["request"] == rec["request"]                 # whole, body included
    assert part["response"]["body"]["usage"] == analyze_call(0, rec).response["usage"]
    assert analyze_call(0, part).kind == "messages"
    assert peak[0] < (2 << 20) + (3 << 20)                   # not the 4 MB answer (plus a read's worth)


def test_partial_record_with_big_request_and_small_response():
    rec = _big_record(100, req_bytes=2 << 20)
    line = json.dumps(rec, separators=(",", ":")).encode()
    part = partial_record(line[:64 << 10], line[-(64 << 10):])
    assert part["response"]["status_code"] == 200
    assert part["response"]["body_raw"] == rec["response"]["body_raw"]


# ------------------------------------------------------------------------------------------- export

def _spans(n=3, pid=4242):
    recs = synth.claude_code_session().records
    for r in recs:
        r["tracer"]["pid"] = pid
    return _live(recs, 1)[:n]


def test_exporter_resources_and_metadata():
    env = {"OTEL_SERVICE_NAME": "fleet", "OTEL_RESOURCE_ATTRIBUTES": "host.name=laptop-9,team=infra%2Fml"}
    mem = InMemorySpanExporter()
    res = Resources(env)
    res.note_process(ProcessInfo(4242, exe="/opt/claude/claude", argv=("claude", "-p", "secret"), owner="ann"))
    ex = Exporter("http://127.0.0.1:1/v1/traces", env, resources=res, inner=mem, schedule_delay_ms=50)
    spans = _spans()
    ex.submit(spans)
    st = ex.close(5)
    got = mem.get_finished_spans()
    assert st.exported == len(spans) == len(got) and st.undelivered == 0
    r = got[0].resource.attributes
    assert r["service.name"] == "fleet" and r["host.name"] == "laptop-9" and r["team"] == "infra/ml"
    assert r["process.pid"] == 4242 and r["process.executable.name"] == "claude" and r["process.owner"] == "ann"
    assert "process.command_line" not in r          # arguments are content
    meta = json.loads(got[0].attributes["metadata"])
    assert meta["host.name"] == "laptop-9" and got[0].attributes["user.id"] == "ann"
    res2 = Resources({}, command_line=True)
    res2.note_process(ProcessInfo(1, argv=("claude", "-p", "secret")))
    assert res2.get(1)[0].attributes["process.command_line"] == "claude -p secret"


def test_resources_from_the_records_process():
    """A followed process (tracer run's children) is known from its records' tracer.process: the
    executable, the parent, and - with content only - the redacted command line and the chain."""
    rec = {"tracer": {"pid": 77, "comm": "claude", "process": {
        "pid": 77, "ppid": 70, "exe": "/opt/claude/claude",
        "command": "/opt/claude/claude -p hi --api-key sk-ant-...wxyz",
        "chain": [{"pid": 70, "command": "python3 agent.py"}, {"pid": 77, "command": "claude -p hi"}],
        "chain_text": "python3 agent.py → claude -p hi"}},
        "request": {"headers": {"user-agent": "claude-cli/2.1.250 (external, sdk-py)"}}}
    for content in (False, True):
        res = Resources({}, command_line=content)
        res.note_record(77, rec)
        r = res.get(77)[0].attributes
        assert r["process.pid"] == 77 and r["process.parent_pid"] == 70
        assert r["process.executable.path"] == "/opt/claude/claude" and r["process.command"] == "/opt/claude/claude"
        assert r["claude_code.version"] == "2.1.250"
        if content:
            assert r["process.command_line"].endswith("--api-key sk-ant-...wxyz")
            assert r["tracer.process.chain"] == "python3 agent.py → claude -p hi"
        else:
            assert "process.command_line" not in r and "tracer.process.chain" not in r


def test_live_targets_command_line_is_redacted():
    """What the exporter learns of a process tracer is pointed at (its /proc cmdline, or run's
    command) is redacted like the log's tracer.process command."""
    import subprocess
    import sys
    from tracer.sinks.otlp import sink
    secret = "sk-ant-api03-SECRETSECRETSECRET42"
    p = subprocess.Popen([sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()",
                          "--api-key", secret], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == b"up"
        facts = sink._process_facts(p.pid)
    finally:
        p.stdin.close()
        p.wait()
    assert facts["argv"][-2] == "--api-key" and secret not in " ".join(facts["argv"])


class _Failing(SpanExporter):
    def __init__(self, delay=0.0):
        self.delay = delay

    def export(self, spans):
        time.sleep(self.delay)
        return SpanExportResult.FAILURE

    def shutdown(self):
        pass


def test_undelivered_spans_are_counted():
    changes = []
    ex = Exporter("http://127.0.0.1:1/v1/traces", {}, inner=_Failing(), schedule_delay_ms=20,
                  on_change=lambda failing, msg: changes.append(failing))
    spans = _spans(5)
    ex.submit(spans)
    st = ex.close(2)
    assert st.submitted == 5 and st.exported == 0 and st.undelivered == 5 and st.failed == 5
    assert changes == [True]


def test_close_is_bounded_with_a_stalled_exporter():
    ex = Exporter("http://127.0.0.1:1/v1/traces", {}, inner=_Failing(delay=30), schedule_delay_ms=10)
    ex.submit(_spans(4))
    time.sleep(0.2)
    t = time.monotonic()
    st = ex.close(0.5)
    assert time.monotonic() - t < 3
    assert st.undelivered == 4


# ------------------------------------------------------------------------------------------- exporter process

class _Receiver(http.server.ThreadingHTTPServer):
    """A minimal OTLP/HTTP receiver: decodes ExportTraceServiceRequest bodies."""

    def __init__(self):
        self.requests: list = []
        self.headers_seen: list = []

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(h):  # noqa: N805
                body = h.rfile.read(int(h.headers["content-length"]))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                self.requests.append((h.path, req))
                self.headers_seen.append(dict(h.headers))
                h.send_response(200)
                h.send_header("content-type", "application/x-protobuf")
                h.end_headers()

            def log_message(h, *a):  # noqa: N805
                pass
        super().__init__(("127.0.0.1", 0), H)

    def spans(self):
        out = []
        for _path, req in self.requests:
            for rs in req.resource_spans:
                res = {kv.key: kv.value for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append((res, s))
        return out


def test_exporter_process_follows_a_growing_log(tmp_path):
    recv = _Receiver()
    t = threading.Thread(target=recv.serve_forever, daemon=True)
    t.start()
    try:
        recs = synth.claude_code_session().records
        log = tmp_path / "log.jsonl"
        log.write_bytes(b"")
        fd = os.open(log, os.O_RDONLY)
        env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=team%20a,authorization=Bearer k"}
        w = subprocess.Popen([sys.executable, "-I", "-m", "tracer.sinks.otlp.worker", str(fd)], pass_fds=(fd,),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/")
        os.close(fd)
        url = f"http://127.0.0.1:{recv.server_address[1]}/v1/traces"
        cfg = {"config": {"endpoint": url, "display_endpoint": url, "content": False, "idle_s": 300,
                          "shutdown_timeout_s": 5}}
        w.stdin.write((json.dumps(cfg) + "\n" + json.dumps({"target": {"pid": 4242, "exe": "/x/claude",
                                                                        "argv": ["claude"], "owner": "ann"}}) + "\n").encode())
        w.stdin.flush()
        with log.open("ab") as f:
            for r in recs[:8]:
                f.write(json.dumps(r).encode() + b"\n")
            f.flush()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(recv.spans()) < 8:
                time.sleep(0.1)
            assert len(recv.spans()) >= 8, "chat spans leave while the log is still being written"
            data = b"".join(json.dumps(r).encode() + b"\n" for r in recs[8:])
            f.write(data[:len(data) // 2])       # half a line written when tracer stops
            f.flush()
            f.write(data[len(data) // 2:])
        w.stdin.write(b'{"finish": {"timeout_s": 5}}\n')
        w.stdin.close()
        out = w.stdout.read().decode()
        assert w.wait(20) == 0
        final = [json.loads(line)["final"] for line in out.splitlines() if '"final"' in line][-1]
        expected = _live(recs, 1)
        assert final["records"] == len(recs)
        assert final["spans"] == final["exported"] == len(expected) and final["undelivered"] == 0
        got = recv.spans()
        assert len(got) == len(expected)
        names = sorted(s.name for _r, s in got)
        assert names == sorted(s.name for s in expected)
        res = got[0][0]
        assert res["process.executable.name"].string_value == "claude"
        assert res["service.name"].string_value == "tracer"
        assert all(p == "/v1/traces" for p, _ in recv.requests)
        assert recv.headers_seen[0].get("x-tenant") == "team a"
    finally:
        recv.shutdown()
