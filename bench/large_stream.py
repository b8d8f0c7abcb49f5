"""One 100 MB streaming response (SSE, 1 KiB text deltas; `x-mock-text-bytes`) from the mock server to an
httpx client, untraced and then under `tracer attach`: the logged body must be byte-exact (sha256 vs
the mock's record and the client's own hash), the log line whole, and the tracer's peak RSS (VmHWM,
polled every 50 ms) at most 100 MB: bodies stream through the tracer (spilled to a temp file, written
into the line in pieces).

    .venv/bin/python bench/large_stream.py [--mb 100] [--tracer-arg=--ring-buffer-mb=64]
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
from _util import (ASYNC_CLIENT, MemWatch, logs, machine, start_attach, status_kb,  # noqa: E402
                   stop_tracer, tracer_summary)

import orjson  # noqa: E402

from tracer.mock import MockServerProcess  # noqa: E402


def run_client(srv, size: int, go: Path, env) -> tuple[subprocess.Popen, float]:
    c = subprocess.Popen([sys.executable, str(ASYNC_CLIENT), srv.url, str(srv.ca_path), "--n", "1", "--stream",
                          "--header", f"x-mock-text-bytes: {size}", "--go-file", str(go)],
                         stdout=subprocess.PIPE, text=True, env=env)
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--skip-untraced", action="store_true")
    ap.add_argument("--tracer-arg", action="append", default=[],
                    help="extra option for tracer attach, e.g. --tracer-arg=--ring-buffer-mb=64")
    args = ap.parse_args()
    size = args.mb * 1_000_000
    print(machine())
    with MockServerProcess() as srv, tempfile.TemporaryDirectory(prefix="tracer-bench-ls-") as tmpd:
        tmp = Path(tmpd)
        env = dict(os.environ, ANTHROPIC_BASE_URL=srv.url)
        wall_u = None
        if not args.skip_untraced:
            c = run_client(srv, size, tmp / "go-u", env)
            time.sleep(0.3)
            t0 = time.monotonic()
            (tmp / "go-u").touch()
            out, _ = c.communicate(timeout=1800)
            wall_u = time.monotonic() - t0
        c = run_client(srv, size, tmp / "go-t", env)
        time.sleep(0.3)
        tr, _, _ = start_attach([c.pid], tmp / "log", "--summary-json", str(tmp / "summary.json"),
                                *args.tracer_arg)
        rss0 = status_kb(tr.pid, "VmRSS")
        mw = MemWatch(tr.pid)
        t0 = time.monotonic()
        (tmp / "go-t").touch()
        out, _ = c.communicate(timeout=1800)
        wall_t = time.monotonic() - t0
        res = [json.loads(l) for l in out.splitlines() if '"i"' in l][0]
        # wait until the pair is written (the log grows past the body size), then stop
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            lf = logs(tmp / "log")
            if lf and lf[0].stat().st_size > size:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        stop_tracer(tr)
        mw.stop()
        rec_m = srv.records()[-1]
        raw = logs(tmp / "log")[0].read_bytes()
        lines = raw.split(b"\n")
        whole = raw.endswith(b"\n") and len(lines) == 2
        rec = orjson.loads(lines[0])
        body = rec["response"]["body_raw"].encode()
        sha = hashlib.sha256(body).hexdigest()
        print(f"response body: {len(body) / 1e6:.1f} MB logged, {rec_m['response_body']['length'] / 1e6:.1f} MB "
              f"sent; sha256 {'== mock record' if sha == rec_m['response_body']['sha256'] else '!= mock record'}"
              f", {'== client' if sha == res['sha256'] else '!= client'}; complete {rec['tracer']['complete']}; "
              f"log line whole: {whole}")
        print(f"time: untraced {wall_u and f'{wall_u:.1f} s'} | traced {wall_t:.1f} s (client's last byte)")
        print(f"tracer: RSS {rss0 / 1024:.0f} MB at start, peak VmHWM {mw.hwm_kb / 1024:.0f} MB "
              f"(target <= 100 MB); CPU {mw.cpu_s:.1f} s; losses: {tracer_summary(tmp / 'summary.json')['losses']}")


if __name__ == "__main__":
    main()
