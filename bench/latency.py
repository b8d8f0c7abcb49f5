"""Added latency per request: Node making sequential requests to the mock server - untraced, with
*empty* uprobes on the same TLS functions, and under `tracer run`.

    .venv/bin/python bench/latency.py [--requests 300] [--rounds 3] [--modes stream,json]

Each round runs the same client in three modes, the order rotated every round so drift hits all
three: untraced; with empty pid-filtered programs on every TLS function tracer probes in node (the
uprobe trap alone - the floor any uprobe tracer pays, bench/per_call.py EmptyProbes); and under
`tracer run`. Streaming (SSE) and non-streaming requests. Times are measured inside the client, from
the fetch call to the last body byte, in microseconds (the first 10 requests of a run are warm-up);
the tracer's start-up is not part of any request.

Reported per mode: p50/p90/p99 over all rounds, and two differences at p50 - what the uprobe trap
costs (empty - untraced) and what tracer adds beyond it (traced - empty; the target, < 0.05 ms) -
pooled and per round. Every line gives the load average.
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
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import family, load_line, machine, pct, read_summary, tracer_cmd  # noqa: E402

from tracer.mock import MockServerProcess  # noqa: E402

CLIENT = Path(__file__).resolve().parent / "node_seq_client.mjs"
MODES = ("untraced", "empty", "traced")
# execs its arguments once a byte arrives on stdin: probes go on the pid before node runs
LAUNCHER = "import os,sys; sys.stdin.buffer.read(1); os.execv(sys.argv[1], sys.argv[1:])"


def run_seconds(pid: int) -> float:
    """CPU time of all a process' threads to the nanosecond (schedstat; /proc/PID/stat counts ticks
    of 10 ms, too coarse for a second of requests); 0 when it is gone."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return total / 1e9


def _marks(p: subprocess.Popen, tracer_pid: int | None, at: dict, lines: list) -> None:
    """Reads the client's stderr; at its "warm" and "done" lines, takes the BPF programs' statistics
    and (traced) the CPU time of tracer and its parsing process."""
    from per_call import bpf_prog_stats
    for line in p.stderr:
        lines.append(line)
        mark = line.strip()
        if mark in ("warm", "done"):
            cpu = (0.0, 0.0)
            if tracer_pid:
                fam = family(tracer_pid)
                cpu = (run_seconds(tracer_pid), sum(run_seconds(x) for x in fam[1:]))
            at[mark] = (bpf_prog_stats(), cpu)


def run_client(url, env, n, kind, mode, out_dir) -> tuple[list[float], dict]:
    """The client's request times in one mode, and for the probed modes what the probes cost over
    the timed requests: BPF program run time (BPF_ENABLE_STATS) and, traced, the CPU time of tracer's
    processes."""
    from per_call import bpf_prog_stats, prog_time
    node = os.path.realpath(shutil.which("node"))
    cmd = [node, str(CLIENT), url, str(n)] + (["--json"] if kind == "json" else [])
    summary = Path(str(out_dir) + "-summary.json")
    if mode == "traced":
        cmd = tracer_cmd("run", "--quiet", "--no-html", "-o", str(out_dir), "--summary-json", str(summary),
                         "--", *cmd)
    before = set(bpf_prog_stats())
    at: dict = {}
    lines: list[str] = []
    probes = None
    if mode == "empty":
        from per_call import EmptyProbes
        p = subprocess.Popen([sys.executable, "-c", LAUNCHER, *cmd], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        probes = EmptyProbes(p.pid, node)
        p.stdin.write("x")
        p.stdin.close()
    else:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader = threading.Thread(target=_marks, args=(p, p.pid if mode == "traced" else None, at, lines))
    reader.start()
    try:
        out = p.stdout.read()
        p.wait(600)
        reader.join(60)
    finally:
        if probes:
            probes.close()
    if p.returncode != 0:
        raise SystemExit(f"client failed ({mode}): {''.join(lines)}")
    times = json.loads(out.strip().splitlines()[-1])
    info: dict = {"bpf_ns": 0, "tracer_cpu_s": 0.0, "parser_cpu_s": 0.0}
    if "warm" in at and "done" in at:
        (s0, c0), (s1, c1) = at["warm"], at["done"]
        new = {k: v for k, v in s1.items() if k not in before}       # this run's programs only
        info["bpf_ns"] = prog_time(s0, new, ("probe_",) if mode == "traced" else ("empty",))[0]
        info["tracer_cpu_s"], info["parser_cpu_s"] = c1[0] - c0[0], c1[1] - c0[1]
    if mode == "traced":
        logs = sorted(Path(out_dir).glob("*.jsonl"))
        info["logged"] = sum(1 for _ in logs[-1].open()) if logs else 0
        info["held_s"] = read_summary(summary).get("parse_held_s", 0)
    return times, info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default="stream,json", help="stream, json or both (comma-separated)")
    args = ap.parse_args()
    print(machine())
    from per_call import enable_bpf_stats
    stats_fd = enable_bpf_stats()
    with MockServerProcess() as srv, tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=str(srv.ca_path), ANTHROPIC_BASE_URL=srv.url)
        for kind in args.modes.split(","):
            times = {m: [] for m in MODES}
            p50s = {m: [] for m in MODES}
            logged_total = 0
            cost = {"bpf_empty": [], "bpf_traced": [], "tracer": [], "parser": [], "held": []}
            for r in range(args.rounds):
                order = MODES[r % 3:] + MODES[:r % 3]
                for m in order:
                    t, info = run_client(srv.url, env, args.requests, kind, m, Path(tmp) / f"{kind}{r}")
                    times[m] += t
                    p50s[m].append(pct(t, 50))
                    n = len(t)
                    if m != "untraced":
                        cost[f"bpf_{m}"].append(info["bpf_ns"] / 1e3 / n)
                    if m == "traced":
                        logged_total += info["logged"]
                        cost["tracer"].append(1e6 * info["tracer_cpu_s"] / n)
                        cost["parser"].append(1e6 * info["parser_cpu_s"] / n)
                        cost["held"].append(info["held_s"])
                u, e, t = (p50s[m][-1] for m in MODES)
                print(f"  {kind} round {r}: p50 untraced {u:.0f} us | empty probes {e:.0f} us | traced {t:.0f} us "
                      f"| trap {e - u:+.0f} us, tracer beyond it {t - e:+.0f} us ({load_line()})", flush=True)
            q = {m: [pct(times[m], p) for p in (50, 90, 99)] for m in MODES}
            line = "  ".join(f"{m} p50 {q[m][0]:.0f} p90 {q[m][1]:.0f} p99 {q[m][2]:.0f} us" for m in MODES)
            beyond = [t - e for t, e in zip(p50s["traced"], p50s["empty"])]
            trap = [e - u for e, u in zip(p50s["empty"], p50s["untraced"])]
            print(f"{kind:6s} n={len(times['traced'])} a mode | {line}")
            print(f"{kind:6s} added at p50: uprobe trap (empty - untraced) {q['empty'][0] - q['untraced'][0]:+.1f} us "
                  f"(median of rounds {statistics.median(trap):+.1f}); tracer beyond the trap (traced - empty) "
                  f"{q['traced'][0] - q['empty'][0]:+.1f} us (median of rounds {statistics.median(beyond):+.1f}, "
                  f"rounds {' '.join(f'{x:+.0f}' for x in beyond)}; target < 50 us); traced - untraced "
                  f"{q['traced'][0] - q['untraced'][0]:+.1f} us; p99 traced - empty {q['traced'][2] - q['empty'][2]:+.0f} us; "
                  f"pairs logged {logged_total}/{len(times['traced']) + 10 * args.rounds} ({load_line()})", flush=True)
            med = {k: statistics.median(v) if v else float("nan") for k, v in cost.items()}
            print(f"{kind:6s} per request (medians of rounds): BPF programs {med['bpf_traced']:.1f} us traced, "
                  f"{med['bpf_empty']:.1f} us empty (in the request's own thread: {med['bpf_traced'] - med['bpf_empty']:+.1f} us "
                  f"of tracer's); CPU during the timed requests: tracer process {med['tracer']:.1f} us, parsing process "
                  f"{med['parser']:.1f} us (parsing held {med['held']:.1f} s a run while records came fast)", flush=True)
        if stats_fd >= 0:
            os.close(stats_fd)


if __name__ == "__main__":
    main()
