"""Concurrent HTTPS load on /v1/messages from one process: httpx on asyncio (CPython's ssl -> OpenSSL
SSL_read_ex/SSL_write_ex through memory BIOs), for fault tests and benchmarks.

usage: async_client.py BASE_URL CAFILE [--n N] [--concurrency C] [--stream] [--header K:V ...]
       [--go-file F] [--then-wait F --n2 N] [--new-conn] [--rate R] [--prompt-bytes B] [--timeout S]

Prints one JSON line per finished request: {"record", "status", "sha256", "len", "t0", "t1", "error"}
(t0/t1: epoch seconds at the request's start / the response's last byte), then {"done": ...} at the end.
--go-file: wait for that file before starting; --then-wait F --n2 N: after the first N requests, wait
for F and make N2 more (phases a test can line up with its own actions); --new-conn: a fresh TLS
connection per request (no keep-alive); --rate R: start R requests per second instead of all at once;
--hold-file F: when done, keep the (keep-alive) connections open until F exists.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import sys
import time

import httpx


def parse_args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("cafile")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--n2", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--go-file")
    ap.add_argument("--then-wait")
    ap.add_argument("--new-conn", action="store_true")
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--prompt-bytes", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--hold-file", help="when done, keep the connections open until this file exists")
    return ap.parse_args(argv)


async def wait_file(path: str):
    while not os.path.exists(path):
        await asyncio.sleep(0.01)


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def one(client: httpx.AsyncClient, args, i: int, sem: asyncio.Semaphore, headers: dict):
    prompt = f"request #{i} ünïcode " + "x" * max(0, args.prompt_bytes)
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": args.stream,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    async with sem:
        t0 = time.time()
        h = hashlib.sha256()
        n = 0
        try:
            async with client.stream("POST", "/v1/messages?beta=true", content=body, headers=headers) as r:
                async for chunk in r.aiter_raw():
                    h.update(chunk)
                    n += len(chunk)
            out({"i": i, "record": r.headers.get("x-mock-record-id"), "status": r.status_code,
                 "sha256": h.hexdigest(), "len": n, "t0": t0, "t1": time.time(), "error": None})
        except Exception as e:  # reported, the run goes on
            out({"i": i, "record": None, "status": None, "sha256": None, "len": n, "t0": t0,
                 "t1": time.time(), "error": f"{type(e).__name__}: {e}"})


async def phase(client, args, start: int, n: int, headers: dict):
    sem = asyncio.Semaphore(max(1, args.concurrency))
    tasks = []
    t_start = time.monotonic()
    for i in range(start, start + n):
        if args.rate > 0:
            due = t_start + (i - start) / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(client, args, i, sem, headers)))
    await asyncio.gather(*tasks)


async def main(args):
    ctx = ssl.create_default_context(cafile=args.cafile)
    headers = {"content-type": "application/json", "x-api-key": "sk-ant-api03-asyncsecretasyncsecret",
               "anthropic-version": "2023-06-01", "accept-encoding": "identity"}
    for h in args.header:
        k, v = h.split(":", 1)
        headers[k.strip()] = v.strip()
    if args.new_conn:
        headers["connection"] = "close"
    conc = max(1, args.concurrency)
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=0 if args.new_conn else conc)
    timeout = httpx.Timeout(args.timeout, connect=args.timeout)
    if args.go_file:
        await wait_file(args.go_file)
    async with httpx.AsyncClient(base_url=args.base_url, verify=ctx, limits=limits, timeout=timeout,
                                 http1=True, http2=False) as client:
        await phase(client, args, 0, args.n, headers)
        if args.then_wait:
            out({"phase": 1, "t": time.time()})
            await wait_file(args.then_wait)
            await phase(client, args, args.n, args.n2, headers)
        if args.hold_file:
            out({"holding": True, "t": time.time()})
            await wait_file(args.hold_file)
    out({"done": True, "t": time.time()})


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
