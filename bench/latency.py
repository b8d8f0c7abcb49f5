"""Added latency per request: Node making sequential requests to the mock server, untraced vs traced.

    .venv/bin/python bench/latency.py [--requests 300] [--rounds 3]

Each round runs the same client untraced, then under `tracer run`, then untraced again (so drift shows),
for streaming (SSE) and non-streaming requests. Times are measured inside the client, from the fetch
call to the last body byte, in microseconds; the tracer's start-up is not part of any request.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import tracer_cmd  # noqa: E402

from tracer.mock import MockServerProcess  # noqa: E402

CLIENT = Path(__file__).resolve().parent / "node_seq_client.mjs"


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_client(url, env, n, mode, traced, out_dir):
    cmd = [shutil.which("node"), str(CLIENT), url, str(n)] + (["--json"] if mode == "json" else [])
    if traced:
        cmd = tracer_cmd("run", "--quiet", "--no-html", "-o", str(out_dir), "--", *cmd)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"client failed: {p.stderr}")
    times = json.loads(p.stdout.strip().splitlines()[-1])
    logged = None
    if traced:
        logs = sorted(Path(out_dir).glob("*.jsonl"))
        logged = sum(1 for _ in logs[-1].open()) if logs else 0
    return times, logged


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from _util import machine
    print(machine())
    with MockServerProcess() as srv, tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=str(srv.ca_path), ANTHROPIC_BASE_URL=srv.url)
        for mode in ("stream", "json"):
            base, traced = [], []
            logged_total = 0
            for r in range(args.rounds):
                b1 = run_client(srv.url, env, args.requests, mode, False, tmp)[0]
                t, logged = run_client(srv.url, env, args.requests, mode, True, Path(tmp) / f"{mode}{r}")
                b2 = run_client(srv.url, env, args.requests, mode, False, tmp)[0]
                base += b1 + b2
                traced += t
                logged_total += logged
                print(f"  {mode} round {r}: p50 untraced {pct(b1, 50):.0f} us | traced {pct(t, 50):.0f} us | "
                      f"untraced {pct(b2, 50):.0f} us", flush=True)
            b50, b90, b99 = (pct(base, p) for p in (50, 90, 99))
            t50, t90, t99 = (pct(traced, p) for p in (50, 90, 99))
            print(f"{mode:6s} n={len(traced)} traced / {len(base)} untraced   "
                  f"untraced p50 {b50:8.1f} us p90 {b90:8.1f} us p99 {b99:8.1f} us | "
                  f"traced p50 {t50:8.1f} us p90 {t90:8.1f} us p99 {t99:8.1f} us | "
                  f"added p50 {t50 - b50:+7.1f} us p90 {t90 - b90:+7.1f} us p99 {t99 - b99:+7.1f} us | "
                  f"ratio p50 {t50 / b50:.3f} | pairs logged {logged_total}/{len(traced) + 10 * args.rounds}")


if __name__ == "__main__":
    main()
