"""Tracer CPU (utime+stime from /proc/PID/stat, all threads, of the tracer process and its parsing process):

  * idle: attached to an idle client, no traffic;
  * Claude-Code-like: one streaming request a second, 50 KB request body, 200 SSE events per response
    (target: <= 2 % of one core), measured from the first request to the last;
  * full speed: back-to-back 100 MB streamed responses; CPU seconds per GB captured (bytes the tracer
    took from the ring, from its summary) and how much arrived (drops are counted by the tracer).

    .venv/bin/python bench/cpu.py [--seconds 60] [--idle-seconds 20] [--gb-responses 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import (ASYNC_CLIENT, family_cpu, family_kb, machine, start_attach, stop_tracer,  # noqa: E402
                   tracer_summary)

from tracer.mock import MockServerProcess  # noqa: E402


def client(srv, tmp: Path, tag: str, *args) -> tuple[subprocess.Popen, Path]:
    go = tmp / f"go-{tag}"
    p = subprocess.Popen([sys.executable, str(ASYNC_CLIENT), srv.url, str(srv.ca_path), "--go-file", str(go), *args],
                         stdout=subprocess.PIPE, text=True, env=dict(os.environ, ANTHROPIC_BASE_URL=srv.url))
    time.sleep(0.5)
    return p, go


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--idle-seconds", type=int, default=20)
    ap.add_argument("--gb-responses", type=int, default=3)
    ap.add_argument("--tracer-arg", action="append", default=[])
    args = ap.parse_args()
    print(machine())
    with MockServerProcess() as srv, tempfile.TemporaryDirectory(prefix="tracer-bench-cpu-") as tmpd:
        tmp = Path(tmpd)
        # idle, then the Claude-Code-like load, in one attach
        n = args.seconds
        p, go = client(srv, tmp, "cc", "--n", str(n), "--rate", "1", "--concurrency", "4", "--stream",
                       "--prompt-bytes", "50000", "--header", "x-mock-deltas: 200", "--header", "x-mock-delay-ms: 2")
        tr, _, _ = start_attach([p.pid], tmp / "log-cc", "--summary-json", str(tmp / "summary-cc.json"),
                                *args.tracer_arg)
        time.sleep(1.0)
        c0, t0 = family_cpu(tr.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        c1, t1 = family_cpu(tr.pid), time.monotonic()
        idle = (c1 - c0) / (t1 - t0)
        go.touch()
        out, _ = p.communicate(timeout=n * 3 + 120)
        c2, t2 = family_cpu(tr.pid), time.monotonic()
        rss = family_kb(tr.pid, "VmRSS")
        stop_tracer(tr)
        res = [json.loads(l) for l in out.splitlines() if '"i"' in l]
        busy = (c2 - c1) / (t2 - t1)
        s = tracer_summary(tmp / "summary-cc.json")
        print(f"idle (attached, no traffic, {args.idle_seconds} s): {100 * idle:.2f} % of one core")
        print(f"Claude-Code-like ({len(res)} streaming requests at 1/s, 50 KB request, 200 SSE events): "
              f"{100 * busy:.2f} % of one core over {t2 - t1:.0f} s (target <= 2 %); "
              f"{s['pairs_logged']} pairs logged; RSS {rss / 1024:.0f} MB; losses: {s['losses']}")
        # full speed
        p, go = client(srv, tmp, "gb", "--n", str(args.gb_responses), "--concurrency", "1", "--stream",
                       "--header", "x-mock-text-bytes: 100000000")
        tr, _, _ = start_attach([p.pid], tmp / "log-gb", "--summary-json", str(tmp / "summary-gb.json"),
                                *args.tracer_arg)
        c0, t0 = family_cpu(tr.pid), time.monotonic()
        go.touch()
        p.communicate(timeout=3600)
        t1 = time.monotonic()
        time.sleep(1.0)
        c1 = family_cpu(tr.pid)
        stop_tracer(tr)
        s = tracer_summary(tmp / "summary-gb.json")
        captured = s["bytes_captured"]
        sent = sum(r["response_body"]["length"] for r in srv.records()[-args.gb_responses:])
        print(f"full speed ({args.gb_responses} x 100 MB streamed responses, {sent / 1e6:.0f} MB of SSE body, "
              f"{t1 - t0:.1f} s): tracer CPU {c1 - c0:.1f} s for {captured / 1e9:.3f} GB captured = "
              f"{(c1 - c0) / max(captured / 1e9, 1e-9):.1f} CPU s/GB; losses: {s['losses']}")


if __name__ == "__main__":
    main()
