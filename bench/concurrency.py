"""1,000 concurrent streaming requests (httpx on asyncio, 1,000 TLS connections at once) against the mock
server, untraced and then under `tracer attach`: wall time of both, every pair logged and byte-exact
(sha256 of each logged SSE body vs the mock's record), and the tracer's memory with the 1,000
connections still open afterwards (the client holds them) and its peak (VmHWM).

    .venv/bin/python bench/concurrency.py [--n 1000] [--deltas 20] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import (ASYNC_CLIENT, MemWatch, family_kb, logs, machine, start_attach,  # noqa: E402
                   stop_tracer, tracer_summary)

import orjson  # noqa: E402

from tracer.mock import MockServerProcess, body_bytes  # noqa: E402


def client_cmd(srv, args, tmp: Path, tag: str) -> list[str]:
    return [sys.executable, str(ASYNC_CLIENT), srv.url, str(srv.ca_path), "--n", str(args.n),
            "--concurrency", str(args.n), "--stream", "--header", f"x-mock-deltas: {args.deltas}",
            "--header", f"x-mock-delay-ms: {args.delay_ms}", "--go-file", str(tmp / f"go-{tag}"),
            "--hold-file", str(tmp / f"release-{tag}")]


def wait_line(proc, key: str, timeout: float) -> list[dict]:
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        o = json.loads(line)
        got.append(o)
        if key in o:
            return got
    raise SystemExit(f"client never printed {key!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--deltas", type=int, default=20)
    ap.add_argument("--delay-ms", type=int, default=20)
    args = ap.parse_args()
    print(machine())
    with MockServerProcess() as srv, tempfile.TemporaryDirectory(prefix="tracer-bench-cc-") as tmpd:
        tmp = Path(tmpd)
        env = dict(os.environ, ANTHROPIC_BASE_URL=srv.url)
        # untraced
        c = subprocess.Popen(client_cmd(srv, args, tmp, "u"), stdout=subprocess.PIPE, text=True, env=env)
        time.sleep(0.5)
        t0 = time.monotonic()
        (tmp / "go-u").touch()
        res_u = [o for o in wait_line(c, "holding", 900) if "i" in o]
        wall_u = time.monotonic() - t0
        (tmp / "release-u").touch()
        c.wait(60)
        # traced
        c = subprocess.Popen(client_cmd(srv, args, tmp, "t"), stdout=subprocess.PIPE, text=True, env=env)
        time.sleep(0.5)
        tr, _, _ = start_attach([c.pid], tmp / "log", "--summary-json", str(tmp / "summary.json"))
        mw = MemWatch(tr.pid)
        rss_before = family_kb(tr.pid, "VmRSS")
        t0 = time.monotonic()
        (tmp / "go-t").touch()
        res_t = [o for o in wait_line(c, "holding", 900) if "i" in o]
        wall_t = time.monotonic() - t0
        time.sleep(2.0)            # let the tracer finish the last pairs
        rss_open = family_kb(tr.pid, "VmRSS")
        (tmp / "release-t").touch()
        c.wait(60)
        time.sleep(1.0)
        stop_tracer(tr)
        mw.stop()
        errors = [r for r in res_u + res_t if r["error"]]
        recs = [orjson.loads(l) for l in logs(tmp / "log")[0].read_bytes().splitlines()]
        mock = {str(m["id"]): m for m in srv.records()}
        wanted = {r["record"] for r in res_t}
        good = bad = 0
        seen = set()
        for r in recs:
            rid = (r["response"] or {}).get("headers", {}).get("x-mock-record-id")
            seen.add(rid)
            m = mock.get(rid)
            ok = (m is not None and r["tracer"]["complete"]
                  and hashlib.sha256(r["response"]["body_raw"].encode()).hexdigest() == m["response_body"]["sha256"]
                  and r["request"]["body"] == orjson.loads(body_bytes(m["request_body"])))
            good += ok
            bad += not ok
        missing = len(wanted - seen)
        s = tracer_summary(tmp / "summary.json")
        print(f"client errors: {len(errors)}")
        print(f"untraced: {args.n} concurrent streams in {wall_u:.1f} s | traced: {wall_t:.1f} s "
              f"(x{wall_t / wall_u:.2f})")
        print(f"pairs: {len(recs)} logged, {good} complete and byte-exact, {bad} wrong/incomplete, "
              f"{missing} of {len(wanted)} missing; tracer losses: {s['losses']}")
        print(f"tracer memory: RSS {rss_before / 1024:.0f} MB before, {rss_open / 1024:.0f} MB with "
              f"{args.n} connections open after their streams, peak (VmHWM) {mw.hwm_kb / 1024:.0f} MB")


if __name__ == "__main__":
    main()
