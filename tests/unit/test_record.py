"""Exchange -> claude-trace record: schema, redaction (claude-trace's rule), default filter."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tracer.protocols.base import Body, ConnInfo, Exchange, Message
from tracer.sinks.record import Clock, Filter, build_record, redact_value

CONN = ConnInfo(pid=7, tid=8, comm="HTTP Client", conn_id="7:0x10:1")


def _body(b: bytes) -> Body:
    x = Body()
    x.append(b)
    return x


def ex(host="api.anthropic.com", path="/v1/messages?beta=true", resp_ct="text/event-stream",
       resp_body=b"event: ping\ndata: {}\n\n", req_headers=()):
    req = Message(ts_ns=1_000_000_000, end_ts_ns=1_100_000_000, method="POST", target=path, authority=host,
                  headers=[("Host", host), ("Content-Type", "application/json"), *req_headers],
                  body=_body(b'{"model":"m","stream":true}'), complete=True, wire_bytes=120)
    resp = Message(ts_ns=1_300_000_000, end_ts_ns=2_000_000_000, status=200,
                   headers=[("Content-Type", resp_ct), ("Set-Cookie", "a=verylongcookievalue"),
                            ("set-cookie", "b=2")],
                   body=_body(resp_body), complete=True, wire_bytes=300)
    return Exchange(conn=CONN, request=req, response=resp, body_times=[(0, 1_300_000_000), (5, 1_500_000_000)])


def test_redaction_rule():
    assert redact_value("sk-ant-api03-abcdefghijkl") == "sk-ant-api...ijkl"
    assert redact_value("abcdefgh") == "ab...gh"
    assert redact_value("abcd") == "[REDACTED]"


def test_schema_and_extras():
    clock = Clock(offset_ns=1_700_000_000_000_000_000)
    r = build_record(ex(req_headers=[("X-Api-Key", "sk-ant-api03-abcdefghijkl"),
                                     ("Authorization", "Bearer abc")]), clock)
    assert set(r) >= {"request", "response", "logged_at", "tracer"}
    q = r["request"]
    assert q["url"] == "https://api.anthropic.com/v1/messages?beta=true"
    assert q["body"] == {"model": "m", "stream": True}
    assert q["headers"]["x-api-key"] == "sk-ant-api...ijkl"
    assert q["headers"]["authorization"] == "Be...bc"
    assert abs(q["timestamp"] - 1_700_000_001.0) < 1e-6
    s = r["response"]
    assert s["status_code"] == 200 and s["body_raw"].startswith("event: ping")
    assert s["headers"]["set-cookie"] == "a=verylong...alue\nb...2" or "\n" in s["headers"]["set-cookie"]
    t = r["tracer"]
    assert t["complete"] and t["pid"] == 7 and t["comm"] == "HTTP Client"
    assert t["ttfb_ms"] == 200.0 and t["duration_ms"] == 1000.0
    assert t["response_chunks"] == [[0, 300.0], [5, 500.0]]
    assert "note" not in r


def test_no_redact():
    r = build_record(ex(req_headers=[("X-Api-Key", "sk-ant-api03-abcdefghijkl")]), Clock(), redact=False)
    assert r["request"]["headers"]["x-api-key"] == "sk-ant-api03-abcdefghijkl"


def test_json_response_parsed_and_binary_base64():
    r = build_record(ex(resp_ct="application/json", resp_body=b'{"id":"msg_1"}'), Clock())
    assert r["response"]["body"] == {"id": "msg_1"}
    r = build_record(ex(resp_ct="application/octet-stream", resp_body=b"\xff\xfe\x00"), Clock())
    assert r["response"]["body_raw"] == "//4A" and r["tracer"]["response_body_encoding"] == "base64"


def test_missing_response_has_note():
    e = ex()
    e.response = None
    e.notes.append("no response: connection ended (target exited)")
    r = build_record(e, Clock())
    assert r["response"] is None and "target exited" in r["note"] and r["tracer"]["complete"] is False


def test_default_filter():
    f = Filter()
    assert f.wants(ex())
    assert not f.wants(ex(path="/v1/messages/count_tokens"))
    assert not f.wants(ex(host="example.com"))
    f.add_base_url("https://127.0.0.1:8443")
    assert f.wants(ex(host="127.0.0.1:8443"))
    assert f.wants(ex(host="bedrock-runtime.us-east-1.amazonaws.com",
                      path="/model/anthropic.claude-v2/invoke-with-response-stream"))
    assert Filter(include_all=True).wants(ex(host="example.com", path="/"))


def test_filter_keeps_h2_pairs_with_unknown_url():
    e = ex(host="", path="")
    e.request.unknown_headers = 2
    assert Filter().wants(e)
    r = build_record(e, Clock())
    assert r["tracer"]["request_unknown_headers"] == 2 and "HPACK" in r["note"]


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.floats(0, 4e9), st.integers(0, 4_000_000_000).map(lambda s: s + 0.9999995),
                 st.integers(0, 4_000_000_000).map(lambda s: s + 0.0005)))
def test_logged_at_is_datetimes_iso_form(t):
    """logged_at (formatted once a second, for speed) says exactly what datetime says."""
    from datetime import datetime, timezone

    from tracer.sinks.record import logged_at
    assert logged_at(t) == datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
