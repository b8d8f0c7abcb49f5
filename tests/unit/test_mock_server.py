"""The mock Anthropic server, driven by real clients (http.client, httpx, curl, Node fetch) over TLS.

Every test also checks that the server's records equal what the client saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from tracer.mock import MockServer, MockServerProcess, body_bytes
from tracer.mock.app import text_pieces
from tracer.mock.encoding import decode, negotiate
from tracer.mock.knobs import Knobs, from_request, with_overrides

NODE = "/usr/bin/node"
CURL = shutil.which("curl")


# ------------------------------------------------------------------------------------------------
# helpers

@pytest.fixture(scope="module")
def srv():
    with MockServer() as s:
        yield s


def ssl_ctx(s) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(s.cert_path))


def conn(s) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", s.port, context=ssl_ctx(s), timeout=20)


def msg_body(content="say hi", stream=True, tools=None, messages=None, **extra) -> dict:
    b = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": stream,
         "messages": messages or [{"role": "user", "content": content}]}
    if tools is not None:
        b["tools"] = tools
    b.update(extra)
    return b


BASH = [{"name": "Bash", "description": "run a command",
         "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}]


def parse_sse(raw: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        ev, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                ev = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        events.append((ev, json.loads("\n".join(data))))
    return events


def check_sequence(events: list[tuple[str, dict]]) -> None:
    """The Anthropic streaming grammar: start, (block_start [ping] delta* block_stop)+, delta, stop."""
    names = [e for e, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names[1] == "content_block_start" and names[2] == "ping"
    for name, data in events:
        assert data["type"] == name
    open_index = None
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None
            open_index = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None
    usage = events[-2][1]["usage"]
    for k in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
        assert isinstance(usage[k], int)
    m = events[0][1]["message"]
    assert m["id"].startswith("msg_") and m["role"] == "assistant" and m["content"] == []


def blocks(events) -> list[dict]:
    """Rebuild content blocks from the stream like an SDK would."""
    out: list[dict] = []
    for name, d in events:
        if name == "content_block_start":
            out.append(dict(d["content_block"], _json=""))
        elif name == "content_block_delta":
            b, delta = out[d["index"]], d["delta"]
            if delta["type"] == "text_delta":
                b["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                b["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                b["signature"] += delta["signature"]
            elif delta["type"] == "input_json_delta":
                b["_json"] += delta["partial_json"]
        elif name == "content_block_stop":
            b = out[d["index"]]
            if b["type"] == "tool_use":
                b["input"] = json.loads(b["_json"])
    for b in out:
        b.pop("_json")
    return out


def record_for(s, resp_headers) -> dict:
    rid = int(dict((k.lower(), v) for k, v in resp_headers)["x-mock-record-id"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for r in s.records():
            if r["id"] == rid:
                return r
        time.sleep(0.01)
    raise AssertionError(f"no record {rid}")


def post(s, body: dict | bytes, path="/v1/messages", headers=None):
    c = conn(s)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    c.request("POST", path, body=data, headers={"content-type": "application/json", **(headers or {})})
    r = c.getresponse()
    raw = r.read()
    c.close()
    return r, raw


# ------------------------------------------------------------------------------------------------
# pure pieces

def test_text_pieces_sizes():
    assert "".join(text_pieces("Hi there you", Knobs())) == "Hi there you"
    assert list(text_pieces("Hi there you", Knobs())) == ["Hi ", "there ", "you"]
    p = list(text_pieces("hello", Knobs(text_bytes=10_000, delta_size=1000)))
    assert len(p) == 10 and all(len(x) == 1000 for x in p) and p[0].startswith("hello ")
    p = list(text_pieces("hello", Knobs(deltas=7)))
    assert len(p) == 7 and all(p)
    p = list(text_pieces("", Knobs(text_bytes=2_500_000)))
    assert sum(map(len, p)) == 2_500_000 and len(p) == 2442
    assert all(json.dumps(x)[1:-1] == x for x in p[:50])  # no JSON escapes in filler


def test_knob_parsing():
    k = with_overrides(Knobs(), from_request([("X-Mock-Delay-Ms", "5"), ("x-mock-close", "yes")],
                                             [("mock_text_bytes", "10"), ("beta", "true")]))
    assert (k.delay_ms, k.close, k.text_bytes) == (5.0, True, 10)
    with pytest.raises(ValueError):
        with_overrides(Knobs(), {"status": "abc"})
    with pytest.raises(ValueError):
        with_overrides(Knobs(), {"transfer": "sideways"})
    assert negotiate("gzip", "gzip, br") == "gzip"
    assert negotiate("gzip", "br") is None
    assert negotiate("gzip!", None) == "gzip"
    assert negotiate("auto", "gzip;q=0.5, br") == "br"
    assert negotiate("auto", "identity") is None


# ------------------------------------------------------------------------------------------------
# streaming and JSON with http.client / httpx

def test_stream_text_http_client(srv):
    r, raw = post(srv, msg_body())
    assert r.status == 200
    assert r.getheader("content-type").startswith("text/event-stream")
    assert r.getheader("transfer-encoding") == "chunked"
    ev = parse_sse(raw)
    check_sequence(ev)
    assert ev[0][1]["message"]["model"] == "claude-sonnet-4-5"
    (b,) = blocks(ev)
    assert b["type"] == "text" and "mock" in b["text"]
    assert ev[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert sum(1 for e, _ in ev if e == "content_block_delta") > 3
    rec = record_for(srv, r.getheaders())
    assert body_bytes(rec["response_body"]) == raw
    assert rec["response_body"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert json.loads(body_bytes(rec["request_body"])) == msg_body()
    assert rec["method"] == "POST" and rec["path"] == "/v1/messages" and rec["status"] == 200
    assert [tuple(h) for h in rec["response_headers"]] == [tuple(h) for h in r.getheaders()]
    assert ["Content-Length", str(len(json.dumps(msg_body())))] in rec["headers"]  # as received, case kept
    assert rec["complete"] and rec["error"] is None and rec["content_encoding"] is None


def test_json_message_httpx(srv):
    with httpx.Client(verify=ssl_ctx(srv), http2=False) as c:
        r = c.post(srv.url + "/v1/messages?beta=true", json=msg_body(stream=False))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    m = r.json()
    assert m["type"] == "message" and m["id"].startswith("msg_") and m["model"] == "claude-sonnet-4-5"
    assert m["content"][0]["type"] == "text" and m["stop_reason"] == "end_turn"
    assert set(m["usage"]) >= {"input_tokens", "output_tokens", "cache_creation_input_tokens",
                               "cache_read_input_tokens"}
    rec = record_for(srv, r.headers.items())
    assert rec["target"] == "/v1/messages?beta=true"
    assert body_bytes(rec["response_body"]) == r.content


def test_httpx_streaming_keepalive(srv):
    with httpx.Client(verify=ssl_ctx(srv)) as c:
        got = []
        for i in range(3):
            with c.stream("POST", srv.url + "/v1/messages", json=msg_body(f"q{i}"),
                          headers={"x-mock-deltas": "20"}) as r:
                chunks = list(r.iter_bytes())
                got.append((r.headers, b"".join(chunks)))
    recs = [record_for(srv, h.items()) for h, _ in got]
    assert len({r["conn_id"] for r in recs}) == 1  # one keep-alive connection
    for (h, raw), rec in zip(got, recs):
        ev = parse_sse(raw)
        check_sequence(ev)
        assert sum(1 for e, _ in ev if e == "content_block_delta") == 20
        assert body_bytes(rec["response_body"]) == raw


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd", "deflate"])
@pytest.mark.parametrize("stream", [True, False])
def test_content_encoding(srv, enc, stream):
    r, wire = post(srv, msg_body(stream=stream), headers={"accept-encoding": enc, "x-mock-encoding": enc})
    assert r.getheader("content-encoding") == enc
    plain = decode(enc, wire)
    rec = record_for(srv, r.getheaders())
    assert rec["content_encoding"] == enc and rec["wire_body_bytes"] == len(wire)
    assert body_bytes(rec["response_body"]) == plain
    if stream:
        check_sequence(parse_sse(plain))
    else:
        assert json.loads(plain)["type"] == "message"


def test_encoding_respects_accept_encoding(srv):
    r, raw = post(srv, msg_body(stream=False), headers={"accept-encoding": "identity", "x-mock-encoding": "gzip"})
    assert r.getheader("content-encoding") is None and json.loads(raw)["type"] == "message"
    with httpx.Client(verify=ssl_ctx(srv)) as c:  # httpx decodes gzip itself
        r = c.post(srv.url + "/v1/messages?mock-encoding=gzip", json=msg_body())
    assert r.headers["content-encoding"] == "gzip"
    assert body_bytes(record_for(srv, r.headers.items())["response_body"]) == r.content


# ------------------------------------------------------------------------------------------------
# the Claude Code scenario

def test_tool_round_trip(srv):
    r, raw = post(srv, msg_body(tools=BASH))
    ev = parse_sse(raw)
    check_sequence(ev)
    (tb,) = blocks(ev)
    assert tb["type"] == "tool_use" and tb["name"] == "Bash" and tb["id"].startswith("toolu_")
    assert tb["input"]["command"] == "echo hi" and tb["input"]["description"]
    assert sum(1 for e, d in ev if e == "content_block_delta"
               and d["delta"]["type"] == "input_json_delta") >= 3
    assert ev[-2][1]["delta"]["stop_reason"] == "tool_use"

    messages = [
        {"role": "user", "content": "say hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": tb["id"], "name": "Bash",
                                           "input": tb["input"]}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tb["id"],
                                      "content": [{"type": "text", "text": "hi\n"}]}]},
    ]
    r, raw = post(srv, msg_body(tools=BASH, messages=messages))
    ev = parse_sse(raw)
    check_sequence(ev)
    (b,) = blocks(ev)
    assert b["type"] == "text" and "The command printed: hi" in b["text"]
    assert ev[-2][1]["delta"]["stop_reason"] == "end_turn"

    # non-streaming with tools: tool_use in a JSON Message
    r, raw = post(srv, msg_body(tools=BASH, stream=False))
    m = json.loads(raw)
    assert m["stop_reason"] == "tool_use" and m["content"][0]["input"]["command"] == "echo hi"


def test_thinking_block(srv):
    r, raw = post(srv, msg_body(thinking={"type": "enabled", "budget_tokens": 2000}))
    ev = parse_sse(raw)
    check_sequence(ev)
    th, tx = blocks(ev)
    assert th["type"] == "thinking" and th["thinking"] and len(th["signature"]) > 20
    assert tx["type"] == "text"
    kinds = [d["delta"]["type"] for e, d in ev if e == "content_block_delta"]
    assert "thinking_delta" in kinds and "signature_delta" in kinds and "text_delta" in kinds


def test_custom_text_and_runtime_knobs():
    with MockServer(knobs={"text": "fixed answer"}) as s:
        r, raw = post(s, msg_body(stream=False))
        assert json.loads(raw)["content"][0]["text"] == "fixed answer"
        r, raw = post(s, msg_body(), headers={"x-mock-text": "h\u00e9llo w\u00f6rld".encode().decode("latin-1")})
        assert blocks(parse_sse(raw))[0]["text"] == "h\u00e9llo w\u00f6rld"
        s.set_knobs(status=503)
        r, raw = post(s, msg_body())
        assert r.status == 503 and json.loads(raw)["error"]["type"] == "api_error"
        assert len(s.wait_records(3)) == 3


def test_small_non_streaming_and_other_routes(srv):
    r, raw = post(srv, msg_body(stream=False, max_tokens=1))
    m = json.loads(raw)
    assert m["stop_reason"] == "max_tokens" and len(m["content"][0]["text"]) <= 4
    r, raw = post(srv, msg_body(stream=False), path="/v1/messages/count_tokens")
    assert r.status == 200 and json.loads(raw)["input_tokens"] >= 1
    c = conn(srv)
    c.request("HEAD", "/")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b""
    c.request("GET", "/v1/models")  # same connection: HEAD framing was right
    r = c.getresponse()
    err = json.loads(r.read())
    assert r.status == 404 and err["type"] == "error" and err["error"]["type"] == "not_found_error"
    c.request("GET", "/v1/messages")
    r = c.getresponse()
    assert r.status == 405 and json.loads(r.read())["type"] == "error"
    c.close()
    r, raw = post(srv, b"{not json")
    assert r.status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    r, raw = post(srv, msg_body(), headers={"x-mock-delay-ms": "banana"})
    assert r.status == 400 and "delay_ms" in json.loads(raw)["error"]["message"]


@pytest.mark.parametrize("status,etype", [(429, "rate_limit_error"), (500, "api_error"),
                                          (529, "overloaded_error")])
def test_status_knob(srv, status, etype):
    r, raw = post(srv, msg_body(), headers={"x-mock-status": str(status)})
    assert r.status == status
    assert json.loads(raw)["error"]["type"] == etype
    if status == 429:
        assert r.getheader("retry-after")
    assert record_for(srv, r.getheaders())["status"] == status


# ------------------------------------------------------------------------------------------------
# knobs: size, delays, framing, connection handling

def test_large_stream_hash_only(srv):
    n = 5_000_000  # above the 4 MiB record limit: only hash + length recorded
    c = conn(srv)
    c.request("POST", "/v1/messages", body=json.dumps(msg_body()),
              headers={"x-mock-text-bytes": str(n), "x-mock-delta-size": "65536"})
    r = c.getresponse()
    h = hashlib.sha256()
    total = 0
    text_len = 0
    buf = b""
    while True:
        chunk = r.read1(1 << 16)
        if not chunk:
            break
        h.update(chunk)
        total += len(chunk)
        buf += chunk
        *done, buf = buf.split(b"\n\n")
        for blk in done:
            if b"text_delta" in blk:
                text_len += len(json.loads(blk.split(b"data: ", 1)[1])["delta"]["text"])
    c.close()
    assert text_len == n
    rec = record_for(srv, r.getheaders())
    rb = rec["response_body"]
    assert rb["stored"] is False and rb["data"] is None
    assert rb["length"] == total and rb["sha256"] == h.hexdigest()


def test_delay_between_events(srv):
    c = conn(srv)
    t0 = time.monotonic()
    c.request("POST", "/v1/messages", body=json.dumps(msg_body()),
              headers={"x-mock-deltas": "5", "x-mock-delay-ms": "40"})
    r = c.getresponse()
    first = r.read1(65536)
    t_first = time.monotonic() - t0
    rest = r.read()
    t_all = time.monotonic() - t0
    c.close()
    check_sequence(parse_sse(first + rest))
    # 11 events -> 10 gaps of 40 ms; the first event comes without delay, the rest trickle in
    assert t_all >= 0.38 and t_first < t_all
    assert b"message_start" in first and b"message_stop" not in first
    rec = record_for(srv, r.getheaders())
    offs = [o for o, _ in rec["response_chunks"]]
    times = [t for _, t in rec["response_chunks"]]
    raw = first + rest
    assert len(offs) == 11 and offs[0] == 0 and all(raw[o - 2:o] == b"\n\n" for o in offs[1:])
    assert all(0.035 < b - a < 1.0 for a, b in zip(times, times[1:]))


def test_connection_close_knob(srv):
    s = socket.create_connection(("127.0.0.1", srv.port))
    t = ssl_ctx(srv).wrap_socket(s, server_hostname="127.0.0.1")
    body = json.dumps(msg_body(stream=False)).encode()
    t.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-mock-close: 1\r\ncontent-length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    t.settimeout(10)
    while True:
        d = t.recv(65536)
        if not d:
            break  # the server closed the connection
        data += d
    t.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower() and json.loads(rest)["type"] == "message"


def test_pipelining_and_garbage(srv):
    s = socket.create_connection(("127.0.0.1", srv.port))
    t = ssl_ctx(srv).wrap_socket(s, server_hostname="127.0.0.1")
    t.settimeout(10)
    t.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
              b"\x00\x01 NOT HTTP AT ALL\r\n\r\n")
    data = b""
    while True:
        d = t.recv(65536)
        if not d:
            break
        data += d
    t.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", data) == [b"200", b"404", b"400"]
    r, raw = post(srv, msg_body(stream=False))  # still serving
    assert r.status == 200


@pytest.mark.skipif(not CURL, reason="curl missing")
@pytest.mark.parametrize("transfer", ["length", "close", "chunked"])
def test_curl_stream_framing(srv, transfer):
    out = subprocess.run(
        [CURL, "-sS", "--http1.1", "--cacert", str(srv.cert_path), "-D", "-", "-o", "-",
         "-H", "content-type: application/json", "-H", f"x-mock-transfer: {transfer}",
         "-H", "x-mock-write-size: 7", "--data-binary", json.dumps(msg_body(tools=BASH)),
         srv.url + "/v1/messages"], capture_output=True, timeout=30, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    headers = [tuple(x.split(": ", 1)) for x in head.decode().split("\r\n")[1:]]
    ev = parse_sse(body)
    check_sequence(ev)
    assert blocks(ev)[0]["input"]["command"] == "echo hi"
    lower = {k.lower(): v for k, v in headers}
    if transfer == "length":
        assert int(lower["content-length"]) == len(body)
    elif transfer == "close":
        assert lower["connection"] == "close" and "content-length" not in lower
    else:
        assert lower["transfer-encoding"] == "chunked"
    rec = record_for(srv, headers)
    assert body_bytes(rec["response_body"]) == body
    assert [tuple(h) for h in rec["response_headers"]] == headers


@pytest.mark.skipif(not CURL, reason="curl missing")
def test_curl_expect_100_continue(srv):
    big = msg_body(stream=False, system="x" * 200_000)
    out = subprocess.run(
        [CURL, "-sS", "--http1.1", "--cacert", str(srv.cert_path), "-H", "Expect: 100-continue",
         "-H", "content-type: application/json", "--data-binary", "@-", "-w", "\n%{http_code}",
         srv.url + "/v1/messages"], input=json.dumps(big).encode(), capture_output=True,
        timeout=30, check=True).stdout
    body, _, code = out.rpartition(b"\n")
    assert code == b"200" and json.loads(body)["type"] == "message"


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """De-chunk a (possibly truncated) chunked body -> (body, saw the terminator)."""
    out = b""
    while data:
        line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        n = int(line, 16)
        if n == 0:
            return out, True
        out += rest[:n]
        data = rest[n + 2:]
    return out, False


def test_abort_records_what_was_sent(srv):
    s = socket.create_connection(("127.0.0.1", srv.port))
    t = ssl_ctx(srv).wrap_socket(s, server_hostname="127.0.0.1")
    t.settimeout(10)
    body = json.dumps(msg_body()).encode()
    t.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-mock-abort-after: 3\r\nx-mock-delay-ms: 5\r\n"
              b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    try:
        while d := t.recv(65536):
            data += d
    except (ConnectionError, ssl.SSLError):
        pass
    t.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    got, finished = dechunk(rest)
    assert not finished
    hdrs = [tuple(x.split(": ", 1)) for x in head.decode().split("\r\n")[1:]]
    rec = record_for(srv, hdrs)
    assert rec["complete"] is False and "abort" in rec["error"]
    assert body_bytes(rec["response_body"]) == got and got.count(b"\n\n") == 3


def test_error_event(srv):

    r, raw = post(srv, msg_body(), headers={"x-mock-error-after": "2"})
    ev = parse_sse(raw)
    assert ev[-1][0] == "error" and ev[-1][1]["error"]["type"] == "overloaded_error"
    assert sum(1 for e, _ in ev if e == "content_block_delta") == 2


def test_concurrent_streams(srv):
    n = 60

    async def one(i: int, ctx) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx,
                                                       server_hostname="127.0.0.1")
        body = json.dumps(msg_body(f"hello {i}")).encode()
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-mock-delay-ms: 5\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        data = await reader.read()
        writer.close()
        return data

    async def main():
        ctx = ssl_ctx(srv)
        return await asyncio.gather(*(one(i, ctx) for i in range(n)))

    t0 = time.monotonic()
    results = asyncio.run(main())
    assert time.monotonic() - t0 < 30
    for data in results:
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"0\r\n\r\n")
        assert b"event: message_stop" in data


# ------------------------------------------------------------------------------------------------
# other clients and modes

NODE_SCRIPT = r"""
const [url, body] = process.argv.slice(2);
(async () => {
  const out = [];
  for (let i = 0; i < 2; i++) {
    const r = await fetch(url, {method: 'POST', body, headers: {'content-type': 'application/json',
                                                                'accept-encoding': 'gzip'}});
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let text = '', reads = 0;
    for (;;) { const {done, value} = await reader.read(); if (done) break; reads++; text += dec.decode(value, {stream: true}); }
    out.push({status: r.status, headers: Object.fromEntries(r.headers), text, reads});
  }
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(1); });
"""


@pytest.mark.skipif(not os.path.exists(NODE), reason="node missing")
def test_node_fetch(srv, tmp_path):
    script = tmp_path / "f.js"
    script.write_text(NODE_SCRIPT)
    env = dict(os.environ, NODE_EXTRA_CA_CERTS=str(srv.cert_path))
    out = subprocess.run([NODE, str(script), srv.url + "/v1/messages?mock-encoding=gzip&mock-delay-ms=2",
                          json.dumps(msg_body(tools=BASH))], env=env, capture_output=True,
                         timeout=60, check=True).stdout
    res = json.loads(out)
    for r in res:
        assert r["status"] == 200 and r["headers"]["content-encoding"] == "gzip"
        ev = parse_sse(r["text"].encode())
        check_sequence(ev)
        assert blocks(ev)[0]["input"]["command"] == "echo hi"
        assert r["reads"] > 1  # arrived in pieces
        rec = record_for(srv, r["headers"].items())
        assert body_bytes(rec["response_body"]) == r["text"].encode()
    recs = [record_for(srv, r["headers"].items()) for r in res]
    assert recs[0]["conn_id"] == recs[1]["conn_id"]  # undici keeps the connection alive


def test_subprocess_mode_and_sigterm(tmp_path):
    d = tmp_path / "state"
    s = MockServerProcess(state_dir=d, knobs={"deltas": 3, "close": True})
    with s:
        assert s.url == f"https://127.0.0.1:{s.port}" and s.cert_path == d / "cert.pem"
        assert (d / "key.pem").exists() and (d / "server.json").exists()
        r, raw = post(s, msg_body())
        assert r.getheader("connection") == "close"
        ev = parse_sse(raw)
        assert sum(1 for e, _ in ev if e == "content_block_delta") == 3
        recs = s.wait_records(1)
        assert body_bytes(recs[0]["response_body"]) == raw
        proc = s.proc
    assert proc.returncode == 0  # SIGTERM -> clean exit
    assert d.exists()  # caller-owned dir is kept


def test_cli_help():
    from tracer.cli import main
    res = CliRunner().invoke(main, ["mock-server", "--help"])
    assert res.exit_code == 0
    for word in ("--text-bytes", "--delay-ms", "--encoding", "--status", "--h2", "records.jsonl",
                 "x-mock-"):
        assert word in res.output


def test_http10_stream_is_close_delimited(srv):
    s = socket.create_connection(("127.0.0.1", srv.port))
    t = ssl_ctx(srv).wrap_socket(s, server_hostname="127.0.0.1")
    t.settimeout(10)
    body = json.dumps(msg_body()).encode()
    t.sendall(b"POST /v1/messages HTTP/1.0\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    while d := t.recv(65536):
        data += d
    t.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"transfer-encoding" not in head.lower()
    check_sequence(parse_sse(rest))


def test_h2_hook(monkeypatch):
    """With h2 on, ALPN offers h2 and an h2 connection goes to tracer.mock.h2.serve(reader, writer,
    app, recorder); http/1.1 clients are unaffected."""
    import types

    calls = []

    async def serve(reader, writer, app, recorder):
        calls.append((app, recorder.conn_id, recorder.protocol))
        writer.write(b"fake-h2")
        await writer.drain()
        writer.close()

    monkeypatch.setitem(sys.modules, "tracer.mock.h2", types.SimpleNamespace(serve=serve))
    with MockServer(h2=True) as s:
        assert s.info["alpn"] == ["h2", "http/1.1"]
        ctx = ssl_ctx(s)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", s.port)) as raw:
            t = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            assert t.selected_alpn_protocol() == "h2"
            t.settimeout(10)
            assert t.recv(100) == b"fake-h2"
            t.close()
        assert calls and calls[0][0] is s.core.app and calls[0][2] == "h2"
        ctx = ssl_ctx(s)
        ctx.set_alpn_protocols(["http/1.1"])
        c = http.client.HTTPSConnection("127.0.0.1", s.port, context=ctx, timeout=10)
        c.request("HEAD", "/")
        assert c.getresponse().status == 200
        c.close()
    with MockServer() as s:  # h2 off: ALPN never picks h2
        assert s.info["alpn"] == ["http/1.1"]
        ctx = ssl_ctx(s)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", s.port)) as raw:
            t = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            assert t.selected_alpn_protocol() == "http/1.1"
            t.close()


def _release(package: str, version: str) -> str:
    """A real client release from npm (downloaded once into the test cache, tracer/testing/releases.py):
    these tests must run on a clean machine too, not only after another test filled the cache."""
    from tracer.testing.releases import fetch_npm_release
    return str(fetch_npm_release(package, version))


def _bun() -> str:
    import platform
    arch = {"x86_64": "x64", "aarch64": "aarch64"}.get(platform.machine(), platform.machine())
    return _release(f"@oven/bun-linux-{arch}", "1.4.5")


def _claude() -> str:
    """The newest native Claude Code release the locate tests know for this machine."""
    from tests.known_releases import versions
    from tracer.testing.releases import claude_code_package
    package = claude_code_package()
    known = versions(package)
    assert known, f"no known {package} release in tests/data/locate_known.json"
    return _release(package, known[-1])


BUN_SCRIPT = r"""
const r = await fetch(process.argv[2], {method: 'POST', body: process.argv[3],
                                        headers: {'accept-encoding': 'br', 'content-type': 'application/json'}});
console.log(JSON.stringify({status: r.status, headers: Object.fromEntries(r.headers), text: await r.text()}));
"""


def test_bun_fetch(srv, tmp_path):
    script = tmp_path / "b.mjs"
    script.write_text(BUN_SCRIPT)
    env = dict(os.environ, NODE_EXTRA_CA_CERTS=str(srv.cert_path))
    out = subprocess.run([_bun(), str(script), srv.url + "/v1/messages?mock-encoding=br",
                          json.dumps(msg_body(thinking={"type": "enabled", "budget_tokens": 1024}))],
                         env=env, capture_output=True, timeout=60, check=True).stdout
    r = json.loads(out)
    assert r["status"] == 200
    ev = parse_sse(r["text"].encode())
    check_sequence(ev)
    assert [b["type"] for b in blocks(ev)] == ["thinking", "text"]
    rec = record_for(srv, r["headers"].items())
    assert rec["content_encoding"] == "br" and body_bytes(rec["response_body"]) == r["text"].encode()


def test_claude_code_say_hi(tmp_path):
    """`claude -p "say hi"` runs the Bash tool round trip against the mock."""
    home = tmp_path / "home"
    home.mkdir()
    with MockServer() as s:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
        env.update(HOME=str(home), ANTHROPIC_BASE_URL=s.url, ANTHROPIC_API_KEY="sk-ant-mock-key-0123456789",
                   NODE_EXTRA_CA_CERTS=str(s.cert_path), CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
                   DISABLE_AUTOUPDATER="1")
        out = subprocess.run([_claude(), "-p", "say hi", "--allowedTools", "Bash"], env=env,
                             cwd=tmp_path, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        assert "The command printed: hi" in out.stdout.decode()
        msgs = [r for r in s.records() if r["path"] == "/v1/messages"]
        assert len(msgs) >= 2
        first = parse_sse(body_bytes(msgs[0]["response_body"]))
        assert blocks(first)[-1]["type"] == "tool_use"
        second_req = json.loads(body_bytes(msgs[-1]["request_body"]))
        last_user = [m for m in second_req["messages"] if m["role"] == "user"][-1]
        (tr,) = [b for b in last_user["content"] if b.get("type") == "tool_result"]
        assert tr["tool_use_id"] == blocks(first)[-1]["id"]


# ------------------------------------------------------------------------------------------------
# odd input never crashes the app

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tracer.mock.app import MockApp, MockRequest  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["role", "content", "type", "tools", "name", "messages", "stream", "thinking",
                         "tool_result", "text", "max_tokens", "model", "system", "is_error"]) | st.text(max_size=5),
        inner, max_size=5),
    max_leaves=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_json, stream=st.booleans(), path=st.sampled_from(["/v1/messages", "/v1/messages/count_tokens",
                                                                "/", "/x", "/v1/messages?beta=true"]),
       method=st.sampled_from(["POST", "GET", "HEAD", "PUT"]),
       knob=st.sampled_from([None, ("x-mock-deltas", "3"), ("x-mock-text-bytes", "100"),
                             ("x-mock-scenario", "tool"), ("x-mock-thinking", "on"),
                             ("x-mock-error-after", "1"), ("x-mock-status", "999"), ("x-mock-x", "1")]))
def test_app_survives_odd_bodies(body, stream, path, method, knob):
    if isinstance(body, dict) and stream:
        body["stream"] = True
    raw = json.dumps(body).encode()
    headers = [("content-type", "application/json")] + ([knob] if knob else [])
    resp = MockApp().handle(MockRequest(method, path, headers, raw))
    assert 200 <= resp.status < 600 and resp.status != 500  # 500 = the app raised internally
    data = resp.body if isinstance(resp.body, bytes) else b"".join(resp.body)
    if resp.status >= 400:
        assert json.loads(data)["type"] == "error"
    elif path.startswith("/v1/messages") and "count_tokens" not in path:
        if dict(resp.headers)["content-type"].startswith("text/event-stream"):
            assert parse_sse(data)[0][0] == "message_start"
        else:
            assert json.loads(data)["type"] == "message"
