"""Cost of redaction per logged pair (µs), measured on the record builder in one process.

Three pairs: a Claude Code Messages call (23 request headers, 14 response headers, 30 KB JSON request,
SSE response), an OAuth token refresh (JSON both ways, walked for secrets) and a form login, each built
with and without redaction (batches interleaved, best of 25); the difference is what redaction costs per
record. Also the header pass alone, next to the substring loop the builder used before (one `in` test per
listed name per header).

usage: bench/redaction.py [--n N]
"""

from __future__ import annotations

import argparse
import sys
import time

import _util  # noqa: F401  (puts the repository on sys.path)
import orjson

from tracer.protocols.base import Body, ConnInfo, Exchange, Message
from tracer.sinks import redact as R
from tracer.sinks.record import Clock, build_record, headers_dict

CONN = ConnInfo(pid=1, tid=1, comm="HTTP Client", conn_id="1:0x1:1")
REQ_HEADERS = [("host", "api.anthropic.com"), ("connection", "keep-alive"), ("Accept", "application/json"),
               ("X-Stainless-Retry-Count", "0"), ("X-Stainless-Timeout", "600"), ("X-Stainless-Lang", "js"),
               ("X-Stainless-Package-Version", "0.60.0"), ("X-Stainless-OS", "Linux"),
               ("X-Stainless-Arch", "x64"), ("X-Stainless-Runtime", "node"),
               ("X-Stainless-Runtime-Version", "v24.3.0"), ("anthropic-dangerous-direct-browser-access", "true"),
               ("anthropic-version", "2023-06-01"), ("x-api-key", "sk-ant-api03-" + "x" * 90),
               ("x-app", "cli"), ("User-Agent", "claude-cli/2.1.0 (external, cli)"),
               ("content-type", "application/json"), ("anthropic-beta", "claude-code-20250219,oauth-2025-04-20"),
               ("x-stainless-helper-method", "stream"), ("accept-language", "*"),
               ("sec-fetch-mode", "cors"), ("accept-encoding", "gzip, deflate"), ("content-length", "30000")]
RESP_HEADERS = [("date", "Mon, 01 Jan 2026 00:00:00 GMT"), ("content-type", "text/event-stream; charset=utf-8"),
                ("transfer-encoding", "chunked"), ("connection", "keep-alive"), ("cache-control", "no-cache"),
                ("anthropic-ratelimit-input-tokens-limit", "400000"),
                ("anthropic-ratelimit-input-tokens-remaining", "399000"),
                ("anthropic-ratelimit-output-tokens-limit", "80000"),
                ("anthropic-ratelimit-tokens-remaining", "479000"), ("request-id", "req_011CU"),
                ("strict-transport-security", "max-age=31536000"), ("anthropic-organization-id", "org"),
                ("via", "1.1 google"), ("cf-ray", "abc-SJC")]
OLD_SENSITIVE = ("authorization", "x-api-key", "x-auth-token", "cookie", "set-cookie", "x-session-token",
                 "x-access-token", "bearer", "proxy-authorization")


def body(data: bytes) -> Body:
    b = Body()
    b.append(data)
    return b


def exchange(host, path, req_headers, req_body, resp_headers, resp_body):
    req = Message(ts_ns=1, end_ts_ns=2, method="POST", target=path, authority=host, headers=req_headers,
                  body=body(req_body), complete=True, wire_bytes=len(req_body))
    resp = Message(ts_ns=3, end_ts_ns=4, status=200, headers=resp_headers, body=body(resp_body),
                   complete=True, wire_bytes=len(resp_body))
    return Exchange(conn=CONN, request=req, response=resp, body_times=[(0, 3)])


def pairs():
    messages = [{"role": "user" if i % 2 == 0 else "assistant",
                 "content": [{"type": "text", "text": "word " * 120}]} for i in range(50)]
    claude = exchange("api.anthropic.com", "/v1/messages?beta=true", REQ_HEADERS,
                      orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": True,
                                    "system": [{"type": "text", "text": "You are Claude Code."}],
                                    "messages": messages}),
                      RESP_HEADERS, b"event: content_block_delta\ndata: {\"delta\":{\"text\":\"hi\"}}\n\n" * 120)
    oauth = exchange("console.anthropic.com", "/v1/oauth/token",
                     [("host", "console.anthropic.com"), ("content-type", "application/json")],
                     orjson.dumps({"grant_type": "refresh_token", "refresh_token": "sk-ant-ort01-" + "r" * 80,
                                   "client_id": "9d1c250a"}),
                     [("content-type", "application/json")],
                     orjson.dumps({"access_token": "sk-ant-oat01-" + "a" * 80, "refresh_token": "r" * 80,
                                   "expires_in": 28800, "token_type": "Bearer",
                                   "account": {"uuid": "u", "email_address": "e@x"},
                                   "organization": {"uuid": "o", "name": "n"}}))
    form = exchange("login.example.com", "/session",
                    [("host", "login.example.com"), ("content-type", "application/x-www-form-urlencoded")],
                    b"user=bob&password=hunter2&remember=1", [("content-type", "text/html")], b"<html>ok</html>")
    return {"claude Messages call": claude, "OAuth token refresh": oauth, "form login": form}


def per_call(fns, n: int, rounds: int = 25) -> list[float]:
    """µs per call of each function: the best of `rounds` batches of n calls, the functions' batches
    interleaved so that a busy machine slows them alike."""
    best = [float("inf")] * len(fns)
    for fn in fns:
        fn()
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t) / n)
    return [b * 1e6 for b in best]


def old_headers(headers):
    out = {}
    for name, value in headers:
        k = name.lower()
        if any(s in k for s in OLD_SENSITIVE):
            value = R.redact_value(value)
        out[k] = value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    a = ap.parse_args(argv)
    print(_util.machine())
    clock = Clock()
    print(f"{'pair':24} {'no redaction':>14} {'redaction':>11} {'cost':>9}   (µs per record, best of 25 x {a.n})")
    for name, e in pairs().items():
        off, on = per_call([lambda: build_record(e, clock, redact=False),
                            lambda: build_record(e, clock, redact=True)], a.n)
        print(f"{name:24} {off:14.1f} {on:11.1f} {on - off:+9.2f}")
    hs = REQ_HEADERS + RESP_HEADERS
    plain, new, old = per_call([lambda: headers_dict(hs, False), lambda: headers_dict(hs, True),
                                lambda: old_headers(hs)], a.n * 5)
    print(f"headers of the Messages pair ({len(hs)}): no redaction {plain:.2f} µs, redaction {new:.2f} µs "
          f"(+{new - plain:.2f}); previous substring loop {old:.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
