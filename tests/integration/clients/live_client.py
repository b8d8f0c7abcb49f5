"""CPython client (ssl module -> OpenSSL) for the live-view tests: streaming Messages calls with a chosen
prompt, the mock server's knobs in the query string (so they may carry any character).

usage: live_client.py BASE_URL CAFILE [--prompt TEXT] [--knob NAME=VALUE ...] [--count N] [--sleep S]
       [--go-file PATH]
Prints one JSON line per response (status, bytes) on stdout.
"""
import argparse
import http.client
import json
import ssl
import time
from urllib.parse import quote, urlsplit

ap = argparse.ArgumentParser()
ap.add_argument("base_url")
ap.add_argument("cafile")
ap.add_argument("--prompt", default="hello")
ap.add_argument("--knob", action="append", default=[])
ap.add_argument("--count", type=int, default=1)
ap.add_argument("--sleep", type=float, default=0.0)
ap.add_argument("--go-file", help="wait until this file exists before the first request")
args = ap.parse_args()

if args.go_file:
    import os
    while not os.path.exists(args.go_file):
        time.sleep(0.02)

u = urlsplit(args.base_url)
ctx = ssl.create_default_context(cafile=args.cafile)
conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=120)
query = "&".join(f"mock-{k}={quote(v, safe='')}" for k, v in (kv.split("=", 1) for kv in args.knob))
for i in range(args.count):
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": True,
                       "messages": [{"role": "user", "content": f"{args.prompt} #{i}"}]}).encode()
    conn.request("POST", "/v1/messages?beta=true" + ("&" + query if query else ""), body=body,
                 headers={"content-type": "application/json", "x-api-key": "sk-ant-api03-livelivelive",
                          "anthropic-version": "2023-06-01"})
    r = conn.getresponse()
    data = r.read()
    print(json.dumps({"status": r.status, "bytes": len(data)}), flush=True)
    if args.sleep and i + 1 < args.count:
        time.sleep(args.sleep)
conn.close()
