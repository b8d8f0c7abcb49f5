"""Viewer back end: session grouping, subagents, compaction, token and timing figures, safe embedding."""

from __future__ import annotations

import copy
import html as _html
import json
import re

import pytest
from hypothesis import given, settings, strategies as st

from tracer.sinks.html import default_html_path, write_html
from tracer.viewer.analyze import analyze, analyze_call, chunk_time_ms
from tracer.viewer.index import write_index
from tracer.viewer.logs import read_records
from tracer.viewer.page import embed_json
from tracer.viewer.synth import (HAIKU, SONNET, XSS_IMG, Agent, LogBuilder, claude_code_session,
                                 compacted_session, sse_stream, write_jsonl)


@pytest.fixture(scope="module")
def cc_log():
    log = claude_code_session()
    compacted_session(log)
    return log


def test_threads_and_sessions(cc_log):
    an = analyze(cc_log.records)
    kinds = [(t.kind, len(t.calls)) for t in an.threads]
    # quota side call, main agent, subagent, topic side call, compacted main, its continuation
    assert kinds == [("aux", 1), ("main", 12), ("subagent", 2), ("aux", 1), ("main", 3), ("main", 2)]
    assert len(an.sessions) == 2
    s0, s1 = an.sessions
    assert an.threads[s0.root].title.startswith("Fix the failing price test")
    assert set(s0.threads) == {0, 1, 2, 3}
    assert s1.threads == [4, 5]
    # the telemetry POST belongs to no conversation but is still a call
    other = [c for c in an.calls if c.kind == "other"]
    assert len(other) == 1 and other[0].session is None and other[0].path == "/api/event_logging/batch"
    # every Messages call is in exactly one session
    in_sessions = sorted(i for s in an.sessions for i in s.calls)
    assert in_sessions == [c.index for c in an.calls if c.kind == "messages"]


def test_subagent_hangs_under_its_task_call(cc_log):
    an = analyze(cc_log.records)
    main, sub = an.threads[1], an.threads[2]
    assert sub.parent == (1, cc_log.task_id)
    assert main.children == [(cc_log.task_id, 2)]
    assert sub.title.startswith("Find every caller of round_price")


def test_compaction_merges_continuation(cc_log):
    an = analyze(cc_log.records)
    first, cont = an.threads[4], an.threads[5]
    assert cont.continues == 4 and first.continued_by == 5
    # the summary request itself extends the original conversation, so it stays in the first thread
    final_msgs = cc_log.records[first.final]["request"]["body"]["messages"]
    assert "create a detailed summary" in final_msgs[-1]["content"]


def test_final_call_is_the_longest(cc_log):
    an = analyze(cc_log.records)
    main = an.threads[1]
    n = [an.calls[i].n_messages for i in main.calls]
    assert an.calls[main.final].n_messages == max(n) and main.final == main.calls[-1]


def test_cache_control_moves_do_not_split_threads():
    log = LogBuilder()
    body = {"model": SONNET, "system": "sys", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
        "tools": [{"name": "Bash"}]}
    log.call(body, [{"type": "text", "text": "hello"}])
    body2 = copy.deepcopy(body)
    del body2["messages"][0]["content"][0]["cache_control"]
    body2["messages"] += [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    log.call(body2, [{"type": "text", "text": "sure"}])
    an = analyze(log.records)
    assert len(an.threads) == 1 and an.threads[0].calls == [0, 1]


def test_plain_api_calls_each_form_a_session():
    log = LogBuilder()
    for q in ("a", "b"):
        log.call({"model": HAIKU, "messages": [{"role": "user", "content": q}]}, [{"type": "text", "text": "x"}])
    an = analyze(log.records)
    assert len(an.sessions) == 2 and all(t.kind == "main" for t in an.threads)


def test_tokens_and_timings_from_chunks():
    log = LogBuilder()
    usage = {"input_tokens": 11, "cache_creation_input_tokens": 22, "cache_read_input_tokens": 33,
             "output_tokens": 40}
    log.call({"model": SONNET, "stream": True, "messages": [{"role": "user", "content": "q"}]},
             [{"type": "text", "text": "x" * 120}], usage=usage, ttfb=300.0)
    rec = log.records[0]
    c = analyze_call(0, rec)
    assert (c.input_tokens, c.output_tokens, c.cache_read_tokens, c.cache_creation_tokens) == (11, 40, 33, 22)
    assert c.ttfb_ms == 300.0 and c.model == SONNET and c.stop_reason == "end_turn"
    # sse_stream puts message_start at 330 ms, ping +1 ms, the first delta's chunk at +8 ms steps
    chunks = rec["tracer"]["response_chunks"]
    body = rec["response"]["body_raw"].encode()
    first_delta = body.index(b"event: content_block_delta")
    expected_ttft = next(t for off, t in chunks if off == first_delta)
    assert c.ttft_ms == expected_ttft
    last_t = chunks[-1][1]
    assert c.output_tps == pytest.approx(40 / ((last_t - expected_ttft) / 1000.0))
    assert c.duration_ms == rec["tracer"]["duration_ms"]


def test_claude_trace_log_without_tracer_key():
    log = LogBuilder(claude_trace=True)
    log.call({"model": SONNET, "stream": True, "messages": [{"role": "user", "content": "q"}]},
             [{"type": "text", "text": "answer"}],
             usage={"input_tokens": 5, "output_tokens": 10})
    rec = log.records[0]
    assert "tracer" not in rec
    c = analyze_call(0, rec)
    # claude-trace's response timestamp is taken at the headers: that is a TTFB, not a duration
    assert c.ttft_ms is None and c.duration_ms is None and c.output_tps is None
    assert c.ttfb_ms == pytest.approx((rec["response"]["timestamp"] - rec["request"]["timestamp"]) * 1000)
    assert (c.input_tokens, c.output_tokens) == (5, 10)
    assert c.response["content"] == [{"type": "text", "text": "answer"}]


def test_json_response_error_and_missing_response():
    rec_ok = {"request": {"timestamp": 1.0, "method": "POST", "url": "https://api.anthropic.com/v1/messages",
                          "body": {"model": SONNET, "messages": [{"role": "user", "content": "q"}]}},
              "response": {"timestamp": 2.0, "status_code": 200, "headers": {"content-type": "application/json"},
                           "body": {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "a"}],
                                    "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 4}}}}
    c = analyze_call(0, rec_ok)
    assert (c.input_tokens, c.output_tokens, c.ttfb_ms, c.duration_ms) == (3, 4, 1000.0, None)
    with_tracer = dict(rec_ok, tracer={"complete": True})
    assert analyze_call(0, with_tracer).duration_ms == 1000.0   # ours: response timestamp = last byte
    rec_err = copy.deepcopy(rec_ok)
    rec_err["response"]["status_code"] = 529
    rec_err["response"]["body"] = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert analyze_call(0, rec_err).error == "Overloaded"
    rec_none = {"request": rec_ok["request"], "response": None, "note": "target exited before the response"}
    c = analyze_call(0, rec_none)
    assert c.status is None and not c.complete and c.error.startswith("target exited")


def test_chunk_time_lookup():
    chunks = [[0, 10.0], [100, 20.0], [250, 30.0]]
    assert chunk_time_ms(chunks, 1) == 10.0
    assert chunk_time_ms(chunks, 100) == 10.0     # byte 99 arrived with the first chunk
    assert chunk_time_ms(chunks, 101) == 20.0
    assert chunk_time_ms(chunks, 10_000) == 30.0
    assert chunk_time_ms([], 5) is None


def test_sse_stream_fixture_round_trips():
    msg = {"id": "m", "type": "message", "role": "assistant", "model": SONNET,
           "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                       {"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "/x"}}],
           "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 2}}
    raw, chunks, _ = sse_stream(msg)
    from tracer.protocols.sse import reconstruct
    assert reconstruct(raw).message == msg


@pytest.mark.parametrize("evil", ["</script><script>alert(1)</script>", "<!--<script>", "a\u2028b\u2029c&amp;",
                                  "\ud800 lone surrogate"])
def test_embed_json_is_inert_and_round_trips(evil):
    b = embed_json({"k": evil, "n": [1, 2]})
    assert b"<" not in b and b">" not in b and b"&" not in b
    assert "\u2028".encode() not in b and "\u2029".encode() not in b
    assert json.loads(b) == {"k": evil, "n": [1, 2]}


def test_write_html_embeds_safely(tmp_path, cc_log):
    log = tmp_path / "log-2026.jsonl"
    write_jsonl(cc_log.records, log)
    out = write_html(log)
    assert out == default_html_path(log) == tmp_path / "log-2026.html"
    page = out.read_text("utf-8")
    # the payload appears only escaped inside JSON blobs
    assert XSS_IMG not in page and "<script>window.__xss" not in page
    scripts = re.findall(r"<script([^>]*)>", page)
    executable = [s for s in scripts if "application/json" not in s]
    assert executable == [""]           # exactly one executable script: the app
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in _html.unescape(csp) and "'unsafe-inline'" not in _html.unescape(csp).split(
        "style-src")[0]
    # the summary and each call's blob parse; messages are deduplicated
    summ = json.loads(re.search(r'id="tracer-summary">(.*?)</script>', page, re.S).group(1))
    assert len(summ["calls"]) == len(cc_log.records)
    n_msgs = len(re.findall(r'<script type="application/json" id="m\d+">', page))
    total_refs = sum(len(r["request"]["body"].get("messages", [])) for r in cc_log.records
                     if isinstance(r["request"].get("body"), dict))
    end = json.loads(re.search(r'id="tracer-end">(.*?)</script>', page, re.S).group(1))
    assert n_msgs == end["messages"] < total_refs
    blob = json.loads(re.search(r'id="c1">(.*?)</script>', page, re.S).group(1))
    assert blob["msgref"] and all(isinstance(i, int) for i in blob["request"]["body"]["messages"])
    assert blob["rebuilt"]["content"][-1]["name"] == "TodoWrite"


def test_bad_lines_are_skipped_and_reported(tmp_path):
    p = tmp_path / "x.jsonl"
    good = json.dumps({"request": {"method": "GET", "url": "https://h/x"}, "response": None})
    p.write_text(good + "\n{not json\n\n[1,2]\n" + good + "\n")
    recs, warnings = read_records(p)
    assert len(recs) == 2 and len(warnings) == 2
    out = write_html(p, tmp_path / "o.html")
    assert "2 log line(s) skipped" not in out.read_text()  # the message is built by the front end
    assert '"warnings":["line 2' in out.read_text()


def test_index_lists_logs_sessions_and_totals(tmp_path, cc_log):
    write_jsonl(cc_log.records, tmp_path / "log-a.jsonl")
    write_jsonl(cc_log.records[:3], tmp_path / "log-b.jsonl")
    out = write_index(tmp_path, build_missing=True)
    page = out.read_text()
    assert (tmp_path / "log-a.html").exists() and 'href="log-a.html"' in page and 'href="log-b.html"' in page
    assert "Refactor the billing module" in page and "claude-sonnet-4-5-20250929" in page
    assert "1 subagent" in page and 'href="log-a.html#session=1"' in page
    assert XSS_IMG not in page and _html.escape(XSS_IMG, quote=True)[:20] in page
    an = analyze(cc_log.records)
    total_out = sum(c.output_tokens for c in an.calls)
    assert f"/ {total_out}<" in page or f"/ {total_out / 1000:.1f}k<" in page


def test_cli_html_and_index(tmp_path, cc_log):
    from click.testing import CliRunner
    from tracer.cli import main
    log = tmp_path / "l.jsonl"
    write_jsonl(cc_log.records, log)
    r = CliRunner().invoke(main, ["html", str(log), "-o", str(tmp_path / "v.html")])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == str(tmp_path / "v.html") and (tmp_path / "v.html").stat().st_size > 1000
    r = CliRunner().invoke(main, ["index", str(tmp_path), "--no-build"])
    assert r.exit_code == 0 and (tmp_path / "index.html").exists()


def test_base64_logged_sse_body_is_decoded():
    import base64
    log = LogBuilder()
    log.call({"model": SONNET, "stream": True, "messages": [{"role": "user", "content": "q"}]},
             [{"type": "text", "text": "ok"}], usage={"input_tokens": 1, "output_tokens": 2})
    rec = log.records[0]
    rec["response"]["body_raw"] = base64.b64encode(rec["response"]["body_raw"].encode()).decode()
    rec["tracer"]["response_body_encoding"] = "base64"
    c = analyze_call(0, rec)
    assert c.response["content"] == [{"type": "text", "text": "ok"}] and c.ttft_ms is not None


def test_content_encoded_body_has_no_ttft():
    log = LogBuilder()
    log.call({"model": SONNET, "stream": True, "messages": [{"role": "user", "content": "q"}]},
             [{"type": "text", "text": "ok"}])
    rec = log.records[0]
    rec["tracer"]["content_encoding"] = "gzip"
    c = analyze_call(0, rec)
    assert c.ttft_ms is None and c.output_tokens > 0 and c.output_tps is not None


def test_warmup_calls_are_side_calls():
    log = claude_code_session(with_payload=False)
    warm = LogBuilder(t0=log.t)
    warm.call({"model": HAIKU, "system": "You are an agent", "tools": [{"name": "Read"}],
               "messages": [{"role": "user", "content": "Warmup"}]}, [{"type": "text", "text": "ready"}])
    # a warm-up that got a tool call answered has two calls; it is still a side call
    w2 = Agent(warm, "You are another agent", [{"name": "Bash"}],
               [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"}, {"type": "text", "text": "Warmup"}])
    w2.tool("Bash", {"command": "true"}, "")
    w2.turn([{"type": "text", "text": "ok"}])
    an = analyze(log.records + warm.records)
    assert len(an.sessions) == 1
    assert [t.kind for t in an.threads[-2:]] == ["aux", "aux"] and an.threads[-1].session == 0


@given(st.permutations(range(6)))
@settings(max_examples=30, deadline=None)
def test_grouping_does_not_depend_on_record_order(perm):
    log = LogBuilder()
    a = Agent(log, "sys A", [{"name": "Bash"}], "first task")
    b = Agent(log, "sys A", [{"name": "Bash"}], "second task")
    for k in range(3):
        a.tool("Bash", {"command": f"a{k}"}, "out")
        b.tool("Bash", {"command": f"b{k}"}, "out")
    shuffled = [log.records[i] for i in perm]
    an = analyze(shuffled)
    groups = sorted(sorted(shuffled[i]["request"]["body"]["messages"][0]["content"] for i in t.calls)
                    for t in an.threads)
    assert groups == [["first task"] * 3, ["second task"] * 3]
    assert len(an.sessions) == 2


def test_session_header_separates_identical_prompts_and_tolerates_system_changes():
    recs = []
    for sid in ("s-1", "s-2"):
        log = LogBuilder(session_id=sid)
        a = Agent(log, [{"type": "text", "text": "sys"}], [{"name": "Bash"}], "same prompt")
        a.tool("Bash", {"command": "ls"}, "x")
        a.system = [{"type": "text", "text": "sys, now with a changed environment block"}]
        a.turn([{"type": "text", "text": "done"}])
        recs += log.records
    an = analyze(recs)
    assert [len(t.calls) for t in an.threads] == [2, 2]
    assert len(an.sessions) == 2
    # the billing line's checksum differs on every request and is ignored
    systems = {json.dumps(r["request"]["body"]["system"][0]) for r in recs[:2]}
    assert len(systems) == 2 and all("cch=" in s for s in systems)


def test_html_skips_unreadable_lines_and_says_so(tmp_path, cc_log):
    """Nesting past what the parsers take, junk and a torn last line: skipped, counted on stderr and in
    the page; everything else is shown (issue 11, item 3)."""
    from click.testing import CliRunner

    from tracer.cli import main as cli

    good = [json.dumps(r) for r in cc_log.records[:3]]
    nested300 = {"request": {"method": "POST", "url": "https://api.anthropic.com/v1/messages",
                             "body": {"model": SONNET, "messages": [{"role": "user", "content": "deep"}],
                                      "metadata": json.loads("[" * 300 + "]" * 300)}}, "response": None}
    lines = [good[0], "[" * 5000 + "]" * 5000, good[1], json.dumps(nested300), "{not json", good[2],
             '{"request": {"url": "torn']
    log = tmp_path / "bad.jsonl"
    log.write_text("\n".join(lines))
    res = CliRunner().invoke(cli, ["html", str(log)])
    assert res.exit_code == 0, res.output
    assert "skipped 3 line(s)" in res.stderr and "line 2:" in res.stderr and "line 7:" in res.stderr
    page = default_html_path(log).read_text()
    summ = json.loads(re.search(r'id="tracer-summary">(.*?)</script>', page, re.S).group(1))
    assert summ["skipped"] == 3 and len(summ["calls"]) == 4     # the 300-deep record is shown
    assert any(w.startswith("line 5:") for w in summ["warnings"])


def test_big_bodies_are_cut_with_a_marker_naming_the_line(tmp_path, monkeypatch):
    from tracer.viewer import logs as vlogs
    from tracer.viewer import page as vpage

    monkeypatch.setattr(vlogs, "INLINE_LINE", 10_000)
    monkeypatch.setattr(vpage, "HEAD_CHARS", 1000)
    monkeypatch.setattr(vpage, "REBUILT_CHARS", 500)
    text = "".join(f"word{i} " for i in range(20_000))
    log = LogBuilder()
    log.call({"model": SONNET, "messages": [{"role": "user", "content": "x" * 50_000}], "stream": True},
             [{"type": "text", "text": text}])
    path = tmp_path / "big.jsonl"
    write_jsonl([log.records[0], log.records[0]], path)
    warnings = []
    out = write_html(path, warnings=warnings)
    page = out.read_text()
    assert not warnings
    assert page.count("more, not in this page — see the log, line 1]") >= 2     # request and answer cut
    assert "line 2]" in page
    blob = json.loads(re.search(r'id="c0">(.*?)</script>', page, re.S).group(1))
    paths = {c["path"] for c in blob["truncated"]}
    assert "response.body_raw" in paths and "rebuilt.content.0.text" in paths
    assert blob["rebuilt"]["content"][0]["text"].startswith(text[:500])
    assert len(blob["response"]["body_raw"]) < 1200 and len(blob["rebuilt"]["content"][0]["text"]) < 700
