"""Malformed and hostile log records never make the viewer's back end raise."""

from __future__ import annotations

import io
import json

from hypothesis import HealthCheck, example, given, settings, strategies as st

from tracer.viewer.analyze import analyze
from tracer.viewer.page import build_page

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=20))
json_values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), c, max_size=4)),
                           max_leaves=12)

block = st.one_of(
    json_values,
    st.fixed_dictionaries({"type": st.sampled_from(["text", "tool_use", "tool_result", "thinking", "image", "x"])},
                          optional={"text": json_values, "id": json_values, "name": json_values,
                                    "input": json_values, "tool_use_id": json_values, "content": json_values}))
message = st.one_of(json_values, st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "x"])},
    optional={"content": st.one_of(st.text(max_size=30), st.lists(block, max_size=3), json_values)}))
sse_text = st.lists(st.tuples(st.sampled_from(["message_start", "content_block_start", "content_block_delta",
                                               "content_block_stop", "message_delta", "message_stop", "error", "x"]),
                              json_values), max_size=6).map(
    lambda evs: "".join(f"event: {e}\ndata: {json.dumps(p)}\n\n" for e, p in evs))
record = st.fixed_dictionaries(
    {"request": st.fixed_dictionaries({}, optional={
        "timestamp": json_values, "method": json_values, "url": json_values, "headers": json_values,
        "body": st.one_of(json_values, st.fixed_dictionaries({"messages": st.lists(message, max_size=4)},
                                                            optional={"model": json_values, "system": json_values,
                                                                      "tools": json_values}))})},
    optional={"response": st.one_of(st.none(), json_values, st.fixed_dictionaries({}, optional={
        "timestamp": json_values, "status_code": json_values, "headers": json_values,
        "body": json_values, "body_raw": st.one_of(sse_text, json_values)})),
        "note": json_values,
        "tracer": st.one_of(json_values, st.fixed_dictionaries({}, optional={
            "response_chunks": json_values, "ttfb_ms": json_values, "duration_ms": json_values,
            "content_encoding": json_values, "response_body_encoding": json_values, "complete": json_values}))})


@given(st.lists(record, max_size=5))
@example([{"request": {"timestamp": float("inf")}, "response": {"status_code": float("inf"), "timestamp": 1e308}}])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_garbage_records_never_raise(records):
    an = analyze(records)
    out = io.BytesIO()
    build_page(records, out, source="fuzz.jsonl", analysis=an)
    page = out.getvalue()
    assert page.startswith(b"<!DOCTYPE html>") and page.count(b"<script>") == 1


def test_odd_response_chunks_are_ignored():
    from tracer.viewer.synth import SONNET, LogBuilder
    from tracer.viewer.analyze import analyze_call
    log = LogBuilder()
    log.call({"model": SONNET, "stream": True, "messages": [{"role": "user", "content": "q"}]},
             [{"type": "text", "text": "ok"}])
    rec = log.records[0]
    good = rec["tracer"]["response_chunks"]
    rec["tracer"]["response_chunks"] = [["x", 1], [None], 5, [True, 2]] + list(reversed(good))
    c = analyze_call(0, rec)
    rec["tracer"]["response_chunks"] = good
    assert c.ttft_ms == analyze_call(0, rec).ttft_ms is not None
