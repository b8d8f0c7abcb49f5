"""One 100 MB streaming response (SSE; `x-mock-text-bytes`) from the mock server, at full loopback speed,
to a client traced by `tracer attach` (default options: 8 MB ring): the logged body must be byte-exact
(sha256 vs the mock's record, and the client's own hash where it prints one), the log line whole,
and the whole run's memory (VmHWM of the tracer + its parsing process, polled every 50 ms) at most
100 MB: bodies stream through the tracer (spilled to a temp file, written into the line in pieces).
Repeated `--runs` times, it also counts the runs with ring-buffer drops (issue 11: 0 drops in 5 of 5
with CPython and curl clients, 60 KB deltas).

    .venv/bin/python bench/large_stream.py [--mb 100] [--client httpx|python|curl] [--delta-size 1024]
                                           [--runs 1] [--tracer-arg=--ring-buffer-mb=64]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import (ASYNC_CLIENT, PY_CLIENT, FamilyWatch, load_line, logs, machine,  # noqa: E402
                   start_attach, status_kb, stop_tracer, tracer_summary)

import orjson  # noqa: E402

from tracer.mock import MockServerProcess  # noqa: E402


def start_client(kind: str, srv, size: int, delta: int, tmp: Path, tag: str, env) -> tuple[subprocess.Popen, callable]:
    """A client waiting for the go signal; returns (process, go())."""
    headers = [f"x-mock-text-bytes: {size}", f"x-mock-delta-size: {delta}"]
    if kind == "curl":
        fifo = tmp / f"body-{tag}"
        os.mkfifo(fifo)
        hargs = []
        for h in headers + ["content-type: application/json", "x-api-key: sk-ant-api03-benchbenchbench"]:
            hargs += ["-H", h]
        p = subprocess.Popen(["curl", "--http1.1", "--cacert", str(srv.ca_path), "-sS", "-o", "/dev/null",
                              *hargs, "-d", f"@{fifo}", f"{srv.url}/v1/messages"],
                             stdout=subprocess.PIPE, text=True, env=env)

        def go():
            with open(fifo, "w") as f:
                f.write(json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                                    "messages": [{"role": "user", "content": "hello from curl"}]}))
        return p, go
    go_file = tmp / f"go-{tag}"
    hargs = []
    for h in headers:
        hargs += ["--header", h]
    if kind == "python":
        cmd = ["/usr/bin/python3", str(PY_CLIENT), srv.url, str(srv.ca_path), "--stream", "--go-file",
               str(go_file), *hargs]
    else:
        cmd = [sys.executable, str(ASYNC_CLIENT), srv.url, str(srv.ca_path), "--n", "1", "--stream",
               "--go-file", str(go_file), *hargs]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    return p, go_file.touch


def client_sha(kind: str, out: str) -> str | None:
    if kind == "curl":
        return None
    for line in out.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict) and "sha256" in d:
            return d["sha256"]
    return None


def one_run(args, srv, tmp: Path, tag: str, env) -> dict:
    size = args.mb * 1_000_000
    c, go = start_client(args.client, srv, size, args.delta_size, tmp, tag, env)
    time.sleep(0.3)
    summary = tmp / f"summary-{tag}.json"
    tr, _, _ = start_attach([c.pid], tmp / f"log-{tag}", "--summary-json", str(summary), *args.tracer_arg)
    rss0 = status_kb(tr.pid, "VmRSS")
    fw = FamilyWatch(tr.pid)
    t0 = time.monotonic()
    go()
    out, _ = c.communicate(timeout=1800)
    wall = time.monotonic() - t0
    time.sleep(0.5)
    t1 = time.monotonic()
    err = stop_tracer(tr, timeout=1800)
    stop_s = time.monotonic() - t1
    fw.stop()
    s = tracer_summary(summary)
    rec_m = srv.records()[-1]
    raw = logs(tmp / f"log-{tag}")[0].read_bytes()
    lines = raw.split(b"\n")
    whole = raw.endswith(b"\n") and len(lines) == 2
    rec = orjson.loads(lines[0])
    body = (rec["response"] or {}).get("body_raw") or ""
    sha = hashlib.sha256(body.encode()).hexdigest()
    csha = client_sha(args.client, out)
    return {"wall": wall, "stop_s": stop_s, "logged_mb": len(body) / 1e6,
            "sent_mb": rec_m["response_body"]["length"] / 1e6,
            "exact_mock": sha == rec_m["response_body"]["sha256"], "exact_client": csha is None or sha == csha,
            "complete": rec["tracer"]["complete"], "whole": whole, "rss0_mb": rss0 / 1024,
            "hwm_mb": fw.total_hwm_kb / 1024,
            "hwm_parts": {fw.names.get(p, str(p)): round(kb / 1024) for p, kb in fw.hwm_kb.items()},
            "cpu_tracer": fw.tracer_cpu, "cpu_parser": fw.helper_cpu,
            "drops": s["ring_drops_events"], "drop_bytes": s["ring_drops_bytes"], "skipped": s["skipped_bytes"],
            "losses": s["losses"], "spool_peak_mb": round(s.get("spool_peak_backlog_bytes", 0) / 1e6, 1),
            "parse_after_s": s.get("parse_after_capture_s"), "failed": s.get("thread_failures"),
            "ring_fill_pct": round(100 * s.get("ring_peak_fill", 0)),
            "drain_gap_ms": round(s.get("ring_max_drain_interval_ms", 0)), "stderr": err}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--client", choices=("httpx", "python", "curl"), default="httpx")
    ap.add_argument("--delta-size", type=int, default=1024, help="bytes of text per SSE delta event")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--skip-untraced", action="store_true")
    ap.add_argument("--tracer-arg", action="append", default=[],
                    help="extra option for tracer attach, e.g. --tracer-arg=--ring-buffer-mb=64")
    args = ap.parse_args()
    if args.client == "curl" and not shutil.which("curl"):
        raise SystemExit("curl is not installed")
    print(machine())
    print(f"{args.mb} MB answer in {args.delta_size}-byte deltas to the {args.client} client, "
          f"tracer attach {' '.join(args.tracer_arg)}")
    with MockServerProcess() as srv, tempfile.TemporaryDirectory(prefix="tracer-bench-ls-") as tmpd:
        tmp = Path(tmpd)
        env = dict(os.environ, ANTHROPIC_BASE_URL=srv.url)
        if not args.skip_untraced:
            c, go = start_client(args.client, srv, args.mb * 1_000_000, args.delta_size, tmp, "u", env)
            time.sleep(0.3)
            t0 = time.monotonic()
            go()
            c.communicate(timeout=1800)
            print(f"untraced: {time.monotonic() - t0:.1f} s ({load_line()})", flush=True)
        runs = []
        for i in range(args.runs):
            r = one_run(args, srv, tmp, str(i), env)
            runs.append(r)
            print(f"  run {i}: client {r['wall']:.1f} s ({args.mb / r['wall']:.0f} MB/s), tracer stopped "
                  f"{r['stop_s']:.1f} s after (parsing done {r['parse_after_s']} s after the capture); "
                  f"body {r['logged_mb']:.1f} / {r['sent_mb']:.1f} MB, sha256 "
                  f"{'== mock' if r['exact_mock'] else '!= mock'}"
                  f"{'' if r['exact_client'] else ', != client'}, complete {r['complete']}, line whole "
                  f"{r['whole']}; ring drops {r['drops']} ({r['drop_bytes']} bytes), skipped {r['skipped']} "
                  f"bytes; VmHWM {r['hwm_mb']:.0f} MB {r['hwm_parts']} (RSS at start {r['rss0_mb']:.0f}); "
                  f"CPU tracer {r['cpu_tracer']:.1f} s, parser {r['cpu_parser']:.1f} s; spool peak "
                  f"{r['spool_peak_mb']} MB; ring at most {r['ring_fill_pct']} % full, drained at least every "
                  f"{r['drain_gap_ms']} ms ({load_line()})", flush=True)
            for f in r["failed"] or ():
                print("    FAILED: " + f)
        clean = sum(1 for r in runs if r["drops"] == 0)
        exact = sum(1 for r in runs if r["exact_mock"] and r["exact_client"] and r["whole"])
        worst_loss = max((r["skipped"] for r in runs if r["drops"]), default=0)
        print(f"{args.client}, {args.delta_size}-byte deltas: 0 ring drops in {clean} of {len(runs)} runs; "
              f"byte-exact in {exact} of {len(runs)}; "
              f"{'bytes skipped beyond the drops: up to ' + str(worst_loss) + '; ' if worst_loss else ''}"
              f"client wall median {statistics.median(r['wall'] for r in runs):.1f} s; whole-run VmHWM max "
              f"{max(r['hwm_mb'] for r in runs):.0f} MB (target <= 100) ({load_line()})")


if __name__ == "__main__":
    main()
