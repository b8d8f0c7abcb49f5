"""Real eBPF, HTTP/2: curl (nghttp2), httpx (h2) and Node's http2 module talk h2 to the mock server
(ALPN h2) under `tracer run` / `tracer attach`; every logged pair must equal what the server saw."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import (assert_pair_matches, client_env, read_log, run_traced,
                                        start_attach)
from tracer.mock import MockServer, body_bytes

NODE = "/usr/bin/node"


@pytest.fixture(scope="module")
def h2mock():
    with MockServer(h2=True) as srv:
        yield srv


def body(stream: bool, text: str = "hello over h2") -> str:
    return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
                       "messages": [{"role": "user", "content": text}]})


def check_h2_pairs(mock, recs, n: int) -> set[str]:
    assert len(recs) == n, recs
    conns = set()
    for r in recs:
        assert r["tracer"]["protocol"] == "h2"
        assert isinstance(r["tracer"]["stream_id"], int) and r["tracer"]["stream_id"] % 2 == 1
        m = assert_pair_matches(mock, r)
        assert m["protocol"] == "h2" and m["stream_id"] == r["tracer"]["stream_id"]
        assert m["conn_id"] == mock_record_conn(mock, r)
        conns.add(r["tracer"]["conn_id"])
    return conns


def mock_record_conn(mock, r) -> str:
    rid = r["response"]["headers"]["x-mock-record-id"]
    return next(m["conn_id"] for m in mock.records() if str(m["id"]) == rid)


# --------------------------------------------------------------------------------------------- curl

def curl_args(mock, data: str, *extra) -> list[str]:
    return ["--cacert", str(mock.ca_path), "-sS", "-o", "/dev/null", "-w", "%{http_version}\n",
            "-H", "content-type: application/json", "-H", "x-api-key: sk-ant-api03-curlsecretcurlsecret",
            *extra, "-d", data, f"{mock.url}/v1/messages"]


def test_curl_default_is_h2(h2mock, tmp_path):
    cmd = ["curl", *curl_args(h2mock, body(True)), "--next",
           *curl_args(h2mock, body(False), "-H", "x-mock-encoding: gzip", "--compressed"), "--next",
           *curl_args(h2mock, body(True), "-H", "x-mock-delay-ms: 5")]
    p, recs = run_traced(cmd, tmp_path, env=client_env(h2mock))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["2", "2", "2"]          # curl negotiated HTTP/2 each time
    conns = check_h2_pairs(h2mock, recs, 3)
    assert len(conns) == 1                              # one connection, streams 1, 3, 5
    assert [r["tracer"]["stream_id"] for r in recs] == [1, 3, 5]
    assert recs[1]["tracer"]["content_encoding"] == "gzip"
    assert len(recs[2]["tracer"]["response_chunks"]) > 3   # SSE frames timed as they arrived
    assert "losses: none" in p.stderr


def test_curl_parallel_multiplexed_streams(h2mock, tmp_path):
    n = 12
    cmd = ["curl", "--parallel", "--parallel-max", str(n)]
    for i in range(n):
        if i:
            cmd.append("--next")
        cmd += curl_args(h2mock, body(True, f"parallel {i}"), "-H", "x-mock-delay-ms: 20")
    p, recs = run_traced(cmd, tmp_path, env=client_env(h2mock))
    assert p.returncode == 0, p.stderr
    conns = check_h2_pairs(h2mock, recs, n)
    assert len(conns) == 1          # multiplexed on one connection
    texts = sorted(json.loads(json.dumps(r["request"]["body"]))["messages"][0]["content"] for r in recs)
    assert texts == sorted(f"parallel {i}" for i in range(n))


# -------------------------------------------------------------------------------------------- httpx

HTTPX_CLIENT = r"""
import asyncio, json, os, sys, time
import httpx

url, cafile, mode = sys.argv[1:4]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 1
go = sys.argv[5] if len(sys.argv) > 5 else None

def body(stream, i):
    return {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": f"httpx h2 #{i}"}]}

async def one(c, i, stream):
    hdrs = {"x-api-key": "sk-ant-api03-httpxsecrethttpxsecret", "anthropic-version": "2023-06-01",
            "x-mock-delay-ms": "10"}
    async with c.stream("POST", url + "/v1/messages?beta=true", json=body(stream, i), headers=hdrs) as r:
        pieces = [p async for p in r.aiter_bytes()]
    print(json.dumps({"record": r.headers["x-mock-record-id"], "v": r.http_version,
                      "pieces": len(pieces)}), flush=True)

async def main():
    async with httpx.AsyncClient(verify=cafile, http2=True, timeout=60) as c:
        if mode == "sequential":
            for i in range(n):
                await one(c, i, stream=(i % 2 == 0))
        elif mode == "concurrent":
            await asyncio.gather(*(one(c, i, True) for i in range(n)))
        elif mode == "slow-stream-then-more":
            hdrs = {"x-mock-delay-ms": "40", "x-mock-deltas": "80"}
            async with c.stream("POST", url + "/v1/messages", json=body(True, 0), headers=hdrs) as r:
                it = r.aiter_bytes()
                await it.__anext__()
                print("streaming", flush=True)          # the test attaches now, mid-response
                async for _ in it:
                    pass
            print(json.dumps({"record": r.headers["x-mock-record-id"], "v": r.http_version,
                              "pieces": 0}), flush=True)
            for i in range(1, n + 1):
                await one(c, i, True)
        elif mode == "warm-then-go":
            await one(c, 0, True)
            print("warm", flush=True)
            while not os.path.exists(go):
                await asyncio.sleep(0.02)
            for i in range(1, n + 1):
                await one(c, i, True)

asyncio.run(main())
"""


def httpx_client(tmp_path, mock, mode: str, n: int, go: str | None = None) -> list[str]:
    script = tmp_path / "httpx_h2.py"
    script.write_text(HTTPX_CLIENT)
    return [sys.executable, str(script), mock.url, str(mock.ca_path), mode, str(n), *([go] if go else [])]


def ids(out: str) -> list[str]:
    return [json.loads(l)["record"] for l in out.splitlines() if l.startswith("{")]


def test_httpx_http2_streaming(h2mock, tmp_path):
    p, recs = run_traced(httpx_client(tmp_path, h2mock, "sequential", 4), tmp_path / "log",
                         env=client_env(h2mock))
    assert p.returncode == 0, p.stderr
    assert all(json.loads(l)["v"] == "HTTP/2" for l in p.stdout.splitlines() if l.startswith("{"))
    conns = check_h2_pairs(h2mock, recs, 4)
    assert len(conns) == 1
    assert [r["response"]["headers"]["x-mock-record-id"] for r in recs] == ids(p.stdout)
    for r in recs[::2]:
        assert r["response"]["body_raw"].startswith("event: message_start")
        assert len(r["tracer"]["response_chunks"]) > 3


def test_httpx_many_concurrent_streams_one_connection(h2mock, tmp_path):
    n = 24
    p, recs = run_traced(httpx_client(tmp_path, h2mock, "concurrent", n), tmp_path / "log",
                         env=client_env(h2mock))
    assert p.returncode == 0, p.stderr
    conns = check_h2_pairs(h2mock, recs, n)
    assert len(conns) == 1
    assert len({r["tracer"]["stream_id"] for r in recs}) == n
    assert sorted(r["response"]["headers"]["x-mock-record-id"] for r in recs) == sorted(ids(p.stdout))
    # the responses really were interleaved on the wire: their time ranges overlap
    spans = sorted((r["request"]["timestamp"], r["response"]["timestamp"]) for r in recs)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


# --------------------------------------------------------------------------------------------- node

NODE_H2 = r"""
const http2 = require('http2');
const [url, n] = process.argv.slice(2);
const client = http2.connect(url);
client.on('error', e => { console.error(e); process.exit(1); });
const one = i => new Promise((resolve, reject) => {
  const req = client.request({':method': 'POST', ':path': '/v1/messages?beta=true',
                              'content-type': 'application/json', 'x-mock-delay-ms': '15',
                              'x-api-key': 'sk-ant-api03-nodesecretnodesecret'});
  let rid;
  req.on('response', h => { rid = h['x-mock-record-id']; });
  req.on('data', () => {});
  req.on('end', () => resolve(rid));
  req.on('error', reject);
  req.end(JSON.stringify({model: 'claude-sonnet-4-5', max_tokens: 64, stream: i % 3 !== 2,
                          messages: [{role: 'user', content: 'node h2 #' + i}]}));
});
Promise.all([...Array(Number(n)).keys()].map(one)).then(ids => {
  for (const id of ids) console.log(JSON.stringify({record: id}));
  client.close();
}).catch(e => { console.error(e); process.exit(1); });
"""


@pytest.mark.skipif(not os.path.exists(NODE), reason="node missing")
def test_node_http2_client(h2mock, tmp_path):
    script = tmp_path / "node_h2.js"
    script.write_text(NODE_H2)
    n = 9
    p, recs = run_traced([NODE, str(script), h2mock.url, str(n)], tmp_path / "log",
                         env=client_env(h2mock))
    assert p.returncode == 0, p.stderr
    conns = check_h2_pairs(h2mock, recs, n)
    assert len(conns) == 1
    assert sorted(r["tracer"]["stream_id"] for r in recs) == list(range(1, 2 * n, 2))
    assert sorted(r["response"]["headers"]["x-mock-record-id"] for r in recs) == sorted(ids(p.stdout))


# ------------------------------------------------------------------------------------------- attach


def test_attach_mid_connection_unknown_hpack_state(h2mock, tmp_path):
    """The h2 connection (and both HPACK tables) already exist when the probes go in: headers that
    refer to table entries from before are counted as unknown, never guessed; bodies are exact."""
    go = tmp_path / "go"
    n = 3
    target = subprocess.Popen(httpx_client(tmp_path, h2mock, "warm-then-go", n, str(go)),
                              env=client_env(h2mock), stdout=subprocess.PIPE, text=True)
    first = target.stdout.readline()
    assert first.startswith("{"), first
    assert target.stdout.readline().strip() == "warm"
    tr, _, head = start_attach(target.pid, tmp_path / "log", "--include-all-requests")
    go.touch()
    out, _ = target.communicate(timeout=60)
    err = tr.stderr.read()
    assert tr.wait(timeout=30) == 0, "".join(head) + err
    assert target.returncode == 0
    recs = read_log(tmp_path / "log")
    later = ids(out)
    assert len(later) == n and len(recs) == n, err
    warm_id = json.loads(first)["record"]
    conn = next(m["conn_id"] for m in h2mock.records() if str(m["id"]) == warm_id)
    by_stream = {m["stream_id"]: m for m in h2mock.records() if m["conn_id"] == conn}
    unknown = 0
    for r in recs:
        t = r["tracer"]
        assert t["protocol"] == "h2"
        m = by_stream[t["stream_id"]]
        assert str(m["id"]) in later
        # bodies are exact whatever happened to the headers
        assert r["request"]["body"] == json.loads(body_bytes(m["request_body"]))
        assert r["response"]["body_raw"].encode() == body_bytes(m["response_body"])
        assert r["response"]["status_code"] == m["status"]
        # every header that was decoded is one the server really saw / sent (no garbage)
        sent = {k.lower(): v for k, v in m["headers"]}
        for k, v in r["request"]["headers"].items():
            if k != "x-api-key":        # redacted in the log
                assert sent.get(k) == v, (k, v)
        resp_sent = {k.lower(): v for k, v in m["response_headers"]}
        for k, v in r["response"]["headers"].items():
            assert resp_sent.get(k) == v, (k, v)
        if r["request"]["method"]:
            assert r["request"]["method"] == "POST"
        unknown += t.get("request_unknown_headers", 0) + t.get("response_unknown_headers", 0)
        assert t.get("request_unknown_headers", 0) == 0 or any("unknown" in n for n in t["notes"])
    # the client's and server's tables were warm: at least some fields referred to old entries
    assert unknown > 0


def test_attach_during_a_streaming_response(h2mock, tmp_path):
    """Attached while an h2 SSE response is arriving: the in-flight pair is logged from there on
    (its body a true suffix, flagged as begun before the capture), the next pairs on the same
    connection in full."""
    n = 2
    target = subprocess.Popen(httpx_client(tmp_path, h2mock, "slow-stream-then-more", n),
                              env=client_env(h2mock), stdout=subprocess.PIPE, text=True)
    assert target.stdout.readline().strip() == "streaming"
    tr, _, head = start_attach(target.pid, tmp_path / "log", "--include-all-requests")
    out, _ = target.communicate(timeout=90)
    err = tr.stderr.read()
    assert tr.wait(timeout=30) == 0, "".join(head) + err
    assert target.returncode == 0
    recs = read_log(tmp_path / "log")
    rids = ids(out)
    first = next(m for m in h2mock.records() if str(m["id"]) == rids[0])
    by_stream = {m["stream_id"]: m for m in h2mock.records() if m["conn_id"] == first["conn_id"]}
    assert sorted(r["tracer"]["stream_id"] for r in recs) == [1, 3, 5], err
    for r in recs:
        t = r["tracer"]
        m = by_stream[t["stream_id"]]
        sent = body_bytes(m["response_body"])
        if t["stream_id"] == 1:
            got = r["response"]["body_raw"].encode()
            assert got and sent.endswith(got) and len(got) < len(sent)
            assert any("before the capture" in n for n in t["notes"])
        else:
            assert r["request"]["body"] == json.loads(body_bytes(m["request_body"]))
            assert r["response"]["body_raw"].encode() == sent
            assert r["response"]["status_code"] == 200


def test_traced_server_side(tmp_path):
    """The traced process is the h2 *server* (the mock in its own process): its WRITEs are the
    responses; the client preface it reads tells the parser so."""
    from tracer.mock import MockServerProcess
    with MockServerProcess(h2=True, state_dir=tmp_path / "mock") as srv:
        pid = srv.pid
        time.sleep(0.3)
        tr, _, head = start_attach(pid, tmp_path / "log", "--include-all-requests")
        cmd = ["curl", *curl_args(srv, body(True)), "--next", *curl_args(srv, body(False))]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
        assert out.split() == ["2", "2"]
        recs_mock = srv.wait_records(2)
        time.sleep(0.5)
        tr.send_signal(signal.SIGINT)
        err = tr.stderr.read()
        assert tr.wait(timeout=30) == 0, "".join(head) + err
    recs = read_log(tmp_path / "log")
    assert len(recs) == 2, err
    by_id = {str(m["id"]): m for m in recs_mock}
    for r in recs:
        assert r["tracer"]["protocol"] == "h2" and r["tracer"]["pid"] == pid
        m = by_id[r["response"]["headers"]["x-mock-record-id"]]
        assert r["request"]["method"] == "POST" and r["request"]["url"].endswith(m["target"])
        assert r["request"]["headers"]["user-agent"].startswith("curl/")
        assert r["request"]["body"] == json.loads(body_bytes(m["request_body"]))
        assert r["response"]["status_code"] == m["status"]
        sent = body_bytes(m["response_body"])
        if "body_raw" in r["response"]:
            assert r["response"]["body_raw"].encode() == sent
        else:
            assert r["response"]["body"] == json.loads(sent)
        assert r["tracer"]["complete"] is True
