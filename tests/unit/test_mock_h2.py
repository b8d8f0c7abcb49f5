"""The mock server's HTTP/2 front end (tracer.mock.h2), driven by real h2 clients: httpx (h2), curl
(nghttp2) and Node's http2 module. Every exchange's server record must equal what the client saw."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import time

import httpx
import pytest

from tracer.mock import MockServer, body_bytes

NODE = "/usr/bin/node"
CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def srv():
    with MockServer(h2=True) as s:
        yield s


def ctx(s) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(s.cert_path))


def msg(content="say hi", stream=True, **extra) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": stream,
            "messages": [{"role": "user", "content": content}], **extra}


def record(s, headers) -> dict:
    rid = int(headers["x-mock-record-id"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for r in s.records():
            if r["id"] == rid:
                return r
        time.sleep(0.02)
    raise AssertionError(f"no record {rid}")


def test_alpn_offers_h2(srv):
    assert srv.info["alpn"] == ["h2", "http/1.1"]


def test_httpx_h2_streaming_and_json(srv):
    with httpx.Client(verify=ctx(srv), http2=True) as c:
        with c.stream("POST", srv.url + "/v1/messages?mock-delay-ms=2", json=msg()) as r:
            assert r.http_version == "HTTP/2"
            pieces = list(r.iter_raw())
        sse = b"".join(pieces)
        assert r.headers["content-type"].startswith("text/event-stream")
        assert sse.endswith(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
        assert len(pieces) > 3      # SSE events arrive as they are produced
        rec = record(srv, r.headers)
        assert rec["protocol"] == "h2" and rec["http_version"] == "2" and rec["stream_id"] == 1
        assert body_bytes(rec["response_body"]) == sse
        assert rec["method"] == "POST" and rec["target"] == "/v1/messages?mock-delay-ms=2"
        assert [":method", "POST"] in rec["headers"]
        r2 = c.post(srv.url + "/v1/messages", json=msg(stream=False))
        assert r2.json()["type"] == "message"
        rec2 = record(srv, r2.headers)
        assert rec2["conn_id"] == rec["conn_id"] and rec2["stream_id"] == 3
        assert int(r2.headers["content-length"]) == len(r2.content)
        assert json.loads(body_bytes(rec2["response_body"])) == r2.json()


def test_many_concurrent_streams_one_connection(srv):
    n = 40

    async def main():
        async with httpx.AsyncClient(verify=ctx(srv), http2=True) as c:
            async def one(i):
                r = await c.post(srv.url + f"/v1/messages?mock-delay-ms=3&mock-text=reply{i}",
                                 json=msg(f"hello {i}"))
                return i, r
            return await asyncio.gather(*(one(i) for i in range(n)))

    results = asyncio.run(main())
    conns = set()
    for i, r in results:
        assert r.status_code == 200 and r.http_version == "HTTP/2"
        rec = record(srv, r.headers)
        assert body_bytes(rec["response_body"]) == r.content
        assert f"reply{i}".encode() in r.content
        assert json.loads(body_bytes(rec["request_body"]))["messages"][0]["content"] == f"hello {i}"
        conns.add(rec["conn_id"])
    assert len(conns) == 1


def test_flow_control_large_response_and_upload(srv):
    big = "x" * 3_000_000
    with httpx.Client(verify=ctx(srv), http2=True, timeout=60) as c:
        r = c.post(srv.url + "/v1/messages?mock-text-bytes=2000000", json=msg(big))
        assert r.status_code == 200
        rec = record(srv, r.headers)
        assert rec["response_body"]["length"] == len(r.content) > 2_000_000
        assert rec["request_body"]["length"] == len(r.request.content) > 3_000_000


@pytest.mark.skipif(CURL is None, reason="curl missing")
def test_curl_default_is_h2_with_gzip(srv):
    out = subprocess.run([CURL, "-sS", "--cacert", str(srv.cert_path), "-D", "-", "--compressed",
                          "-H", "x-mock-encoding: gzip", "-H", "content-type: application/json",
                          "-d", json.dumps(msg()), srv.url + "/v1/messages"],
                         capture_output=True, timeout=60, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200")
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    assert headers["content-encoding"] == "gzip"
    rec = record(srv, headers)
    assert body_bytes(rec["response_body"]) == body
    assert rec["content_encoding"] == "gzip"


NODE_H2 = r"""
const http2 = require('http2');
const [url, body, n] = process.argv.slice(2);
const client = http2.connect(url);
client.on('error', e => { console.error(e); process.exit(1); });
const one = i => new Promise((resolve, reject) => {
  const req = client.request({':method': 'POST', ':path': '/v1/messages?mock-delay-ms=2',
                              'content-type': 'application/json'});
  let headers, chunks = [];
  req.on('response', h => { headers = h; });
  req.on('data', d => chunks.push(d));
  req.on('end', () => resolve({headers, text: Buffer.concat(chunks).toString('latin1'), reads: chunks.length}));
  req.on('error', reject);
  req.end(body);
});
Promise.all([...Array(Number(n)).keys()].map(one)).then(out => {
  console.log(JSON.stringify(out)); client.close();
}).catch(e => { console.error(e); process.exit(1); });
"""


@pytest.mark.skipif(not os.path.exists(NODE), reason="node missing")
def test_node_http2_client(srv, tmp_path):
    script = tmp_path / "h2.js"
    script.write_text(NODE_H2)
    env = dict(os.environ, NODE_EXTRA_CA_CERTS=str(srv.cert_path))
    out = subprocess.run([NODE, str(script), srv.url, json.dumps(msg()), "5"], env=env,
                         capture_output=True, timeout=60, check=True).stdout
    res = json.loads(out)
    assert len(res) == 5
    sids = set()
    for r in res:
        assert r["headers"][":status"] == 200
        rec = record(srv, r["headers"])
        assert body_bytes(rec["response_body"]) == r["text"].encode("latin-1")
        sids.add(rec["stream_id"])
    assert sids == {1, 3, 5, 7, 9}


def test_client_reset_is_recorded_incomplete(srv):
    """A raw h2 client resets a streaming response mid-way, then reuses the connection."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2 import events as ev

    async def main():
        c = ctx(srv)
        c.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=c,
                                                       server_hostname="127.0.0.1")
        h = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        h.initiate_connection()
        body = json.dumps(msg()).encode()
        hdrs = [(":method", "POST"), (":scheme", "https"), (":authority", f"127.0.0.1:{srv.port}"),
                (":path", "/v1/messages?mock-delay-ms=30&mock-deltas=40"), ("content-type", "application/json")]
        h.send_headers(1, hdrs)
        h.send_data(1, body, end_stream=True)
        writer.write(h.data_to_send())
        got: dict[int, dict] = {1: {}, 3: {}}
        reset_done = False
        while not got[3].get("ended"):
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data
            for e in h.receive_data(data):
                if isinstance(e, ev.ResponseReceived):
                    got[e.stream_id]["headers"] = dict(e.headers)
                elif isinstance(e, ev.DataReceived):
                    h.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                    if e.stream_id == 1 and not reset_done:
                        reset_done = True
                        h.reset_stream(1)
                        h.send_headers(3, hdrs[:3] + [(":path", "/v1/messages")], end_stream=False)
                        h.send_data(3, json.dumps(msg(stream=False)).encode(), end_stream=True)
                elif isinstance(e, ev.StreamEnded):
                    got[e.stream_id]["ended"] = True
            writer.write(h.data_to_send())
        writer.close()
        return got

    got = asyncio.run(main())
    rec = record(srv, got[1]["headers"])
    assert rec["complete"] is False and "reset" in rec["error"]
    rec3 = record(srv, got[3]["headers"])
    assert rec3["complete"] is True and rec3["conn_id"] == rec["conn_id"] and rec3["stream_id"] == 3


def test_close_knob_sends_goaway(srv):
    with httpx.Client(verify=ctx(srv), http2=True) as c:
        r1 = c.post(srv.url + "/v1/messages?mock-close=1", json=msg(stream=False))
        r2 = c.post(srv.url + "/v1/messages", json=msg(stream=False))   # needs a new connection
    rec1, rec2 = record(srv, r1.headers), record(srv, r2.headers)
    assert rec1["conn_id"] != rec2["conn_id"]
    assert r1.status_code == r2.status_code == 200


def test_encodings_over_h2(srv):
    with httpx.Client(verify=ctx(srv), http2=True) as c:
        for enc in ("gzip", "deflate", "br", "zstd"):
            r = c.post(srv.url + f"/v1/messages?mock-encoding={enc}",
                       headers={"accept-encoding": enc}, json=msg())
            assert r.headers["content-encoding"] == enc
            rec = record(srv, r.headers)
            assert body_bytes(rec["response_body"]) == r.content   # httpx decoded it
            assert rec["content_encoding"] == enc
