"""CPython client (ssl module -> OpenSSL SSL_read_ex/SSL_write_ex) for integration tests.

usage: py_client.py BASE_URL CAFILE [--stream] [--json] [--gzip] [--count N] [--go-file PATH]
       [--header K:V ...] [--sleep-between S] [--prompt TEXT] [--prompt-bytes N] [--knob NAME=VALUE ...]
Makes requests to /v1/messages over one keep-alive connection and prints one JSON line per response
with the status, the x-mock-record-id and the body's sha256 (as the client received it, decoded).
--prompt: the user message (" #N" appended), padded with "x" to --prompt-bytes (a request body sent
with one SSL_write of that size); --knob: a mock-server knob in the query string (so its
value may hold any character, control characters included).
"""
import argparse
import gzip
import hashlib
import http.client
import json
import os
import ssl
import sys
import time
from urllib.parse import quote, urlsplit

ap = argparse.ArgumentParser()
ap.add_argument("base_url")
ap.add_argument("cafile")
ap.add_argument("--stream", action="store_true")
ap.add_argument("--json", action="store_true")
ap.add_argument("--gzip", action="store_true")
ap.add_argument("--count", type=int, default=1)
ap.add_argument("--go-file")
ap.add_argument("--header", action="append", default=[])
ap.add_argument("--sleep-between", type=float, default=0.0)
ap.add_argument("--prompt", default="hello from python")
ap.add_argument("--prompt-bytes", type=int, default=0)
ap.add_argument("--knob", action="append", default=[])
args = ap.parse_args()
query = "".join(f"&mock-{k}={quote(v, safe='')}" for k, v in (kv.split("=", 1) for kv in args.knob))

if args.go_file:
    while not os.path.exists(args.go_file):
        time.sleep(0.02)

u = urlsplit(args.base_url)
ctx = ssl.create_default_context(cafile=args.cafile)
conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
modes = []
if args.stream:
    modes.append(True)
if args.json or not modes:
    modes.append(False)
for i in range(args.count):
    for stream in modes:
        body = json.dumps({
            "model": "claude-sonnet-4-5", "max_tokens": 256, "stream": stream,
            "messages": [{"role": "user", "content": f"{args.prompt} #{i} ünïcode".ljust(args.prompt_bytes, "x")}],
        }).encode()
        headers = {"content-type": "application/json", "x-api-key": "sk-ant-api03-secretsecretsecret",
                   "anthropic-version": "2023-06-01"}
        if args.gzip:
            headers["accept-encoding"] = "gzip"
            headers["x-mock-encoding"] = "gzip!"
        for h in args.header:
            k, v = h.split(":", 1)
            headers[k.strip()] = v.strip()
        conn.request("POST", "/v1/messages?beta=true" + query, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        if r.getheader("content-encoding") == "gzip":
            data = gzip.decompress(data)
        print(json.dumps({"status": r.status, "record": r.getheader("x-mock-record-id"),
                          "sha256": hashlib.sha256(data).hexdigest(), "len": len(data)}), flush=True)
        if args.sleep_between:
            time.sleep(args.sleep_between)
conn.close()
