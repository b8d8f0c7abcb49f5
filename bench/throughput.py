"""Throughput: Debian's `wrk` (C, OpenSSL libssl.so.3) against `nginx` with TLS and keep-alive, both on
127.0.0.1: untraced, with *empty* uprobes, and under `tracer run --include-all-requests`, in one run.

    .venv/bin/python bench/throughput.py [--duration 8] [--connections 16] [--rounds 3] [--rate-seconds 20]
                                         [--tracer-arg=--no-deferred-parsing] [--skip-rate] [--bpf-stats]

Two parts:
  * saturation (issue 14): wrk as fast as it goes, rounds interleaving three modes - untraced, wrk
    with *empty* pid-filtered BCC uprobe+uretprobe pairs on SSL_read/SSL_write (the floor for any
    uprobe tracer here), and traced - with the order rotated every round so drift hits all three;
    medians over the rounds. For each traced round: the pairs logged complete vs the requests wrk
    counted (wrk counts only finished requests; those in flight when it closes its connections are
    logged incomplete with a note), ring drops, and CPU per pair - the tracer process' CPU while wrk
    ran (the part that competes with the target: the ring thread moving bytes to the spool) and the
    parsing process' CPU (behind it, at SCHED_IDLE), plus how long parsing went on after wrk ended,
    the spool's peak and the whole run's memory (VmHWM of tracer + its parsing process);
  * where the time goes (every saturation round): at saturation this setup is bound by wrk's one
    thread, not by the machine's CPUs - so each round also prints the CPU time of wrk's busiest thread
    per request and how long it was runnable but waiting for a CPU (/proc/<pid>/task/<tid>/schedstat),
    and the share of both CPUs left idle (/proc/stat) while wrk ran; the traced - empty difference of
    wrk's thread is what tracer adds where it counts. With --bpf-stats also the BPF programs' own run
    time (BPF_ENABLE_STATS; it adds two clock reads to every program run, in every mode alike);
  * fixed rate: one connection, requests due every 10 ms on a wall-clock schedule (open loop, a Lua
    `delay()` with LuaJIT ffi clock_gettime): 100 req/s offered; the reduction of the achieved rate, and
    the added per-request latency (p50/p99 from wrk's latency distribution).
wrk and nginx are installed with apt-get if missing. Every line says the load average at the time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import ROOT, FamilyWatch, children, comm, load_line, logs, machine, tracer_cmd, tracer_summary  # noqa: E402

from tracer.mock.certs import ensure_certs  # noqa: E402

BODY = ('{"id":"msg_bench","type":"message","role":"assistant","model":"claude-sonnet-4-5",'
        '"content":[{"type":"text","text":"Hello from nginx."}],"stop_reason":"end_turn",'
        '"usage":{"input_tokens":12,"output_tokens":5}}')

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""

RATE_LUA = """
-- open loop: request k is due at start + k * interval (wall clock via LuaJIT's ffi), so added latency
-- does not lower the rate by itself; only a tracer that cannot keep up would
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = %d
local due = nil
wrk.method = "POST"
wrk.body = '{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
function delay()
  local t = now_ms()
  if due == nil then due = t end
  due = due + interval
  local d = due - t
  if d < 0 then return 0 end
  return d
end
"""

POST_LUA = """
wrk.method = "POST"
wrk.body = '{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
"""


def ensure_tools():
    missing = [p for p, exe in (("wrk", "wrk"), ("nginx-light", "nginx")) if not shutil.which(exe)
               and not os.path.exists(f"/usr/sbin/{exe}")]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)


def free_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_nginx(tmp: Path) -> tuple[subprocess.Popen, int]:
    certs = ensure_certs(tmp / "certs")
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp, port=port, cert=certs.cert, key=certs.key, body=BODY))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    p = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stderr=subprocess.PIPE)
    for _ in range(200):
        try:
            import socket
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nginx did not start: " + (tmp / "error.log").read_text())


def parse_wrk(out: str) -> dict:
    r = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    r["requests"] = int(m.group(1))
    r["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    for p in ("50", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            v = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
            r[f"p{p}_us"] = v
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    r["socket_errors"] = m.group(1) if m else ""
    return r


def _cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]   # user nice system idle iowait irq softirq steal


class WrkWatch:
    """While wrk runs (the process `root`, or its child named wrk under `tracer run`): its busiest
    thread's schedstat (CPU ns, runnable-but-waiting ns), the machine's idle share, and - when BPF stats
    are on - the run time of the BPF programs whose names start with `progs`."""

    def __init__(self, root: int, progs: tuple[str, ...] = (), interval: float = 0.25):
        import threading
        self.root, self.progs = root, progs
        self.thread = (0, 0)            # (run ns, wait ns) of wrk's busiest thread, last seen
        self.cpu0 = self.cpu1 = None    # /proc/stat while wrk was seen
        self.bpf: dict[int, tuple[str, int, int]] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._t.start()

    def _wrk(self) -> int | None:
        if comm(self.root) == "wrk":
            return self.root
        return next((c for c in children(self.root) if comm(c) == "wrk"), None)

    def _run(self, interval):
        while not self._stop.wait(interval):
            try:
                pid = self._wrk()
                if pid is None:
                    continue
                best = (0, 0)
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        run_ns, wait_ns = (int(x) for x in f.read().split()[:2])
                    best = max(best, (run_ns, wait_ns))
            except (OSError, ValueError):
                continue
            self.thread = best
            cpu = _cpu_times()
            self.cpu0 = self.cpu0 or cpu
            self.cpu1 = cpu
            if self.progs:
                from per_call import bpf_prog_stats
                for pid_, st in bpf_prog_stats().items():
                    if st[0].startswith(self.progs):
                        self.bpf[pid_] = st

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)

    def figures(self, requests: int) -> dict:
        n = max(requests, 1)
        out = {"wrk_us": self.thread[0] / 1e3 / n, "wrk_wait_us": self.thread[1] / 1e3 / n, "idle": None}
        if self.cpu0 and self.cpu1:
            d = [b - a for a, b in zip(self.cpu0, self.cpu1)]
            out["idle"] = (d[3] + d[4]) / max(sum(d), 1)
        if self.bpf:
            per: dict[str, list[int]] = {}
            for name, ns, cnt in self.bpf.values():
                a = per.setdefault(name, [0, 0])
                a[0] += ns
                a[1] += cnt
            out["bpf_ns_a_run"] = {k: round(a[0] / a[1]) for k, a in sorted(per.items()) if a[1]}
            out["bpf_us"] = sum(a[0] for a in per.values()) / 1e3 / n
        return out


def describe(f: dict) -> str:
    txt = f"wrk's thread {f['wrk_us']:.2f} us CPU a request (waiting {f['wrk_wait_us']:.2f})"
    if f.get("idle") is not None:
        txt += f", CPUs {100 * f['idle']:.0f} % idle"
    if "bpf_us" in f:
        txt += f", BPF {f['bpf_us']:.2f} us a request {f['bpf_ns_a_run']} ns a run"
    return txt


def run_wrk_empty_probes(args: list[str], progs: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """wrk with an empty uprobe+uretprobe on libssl's SSL_read/SSL_write (pid-filtered, put in place
    before wrk execs): the throughput any uprobe-based tracer is bounded by on this machine."""
    from per_call import EmptyProbes
    wrk = shutil.which("wrk")
    launcher = "import os,sys; sys.stdin.buffer.read(1); os.execv(sys.argv[1], sys.argv[1:])"
    p = subprocess.Popen([sys.executable, "-c", launcher, wrk, "--latency", *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    probes = EmptyProbes(p.pid)
    watch = WrkWatch(p.pid, progs)
    try:
        p.stdin.write("x")
        p.stdin.close()
        out = p.stdout.read()
        p.wait(900)
    finally:
        watch.stop()
        probes.close()
    res = parse_wrk(out)
    return res, watch.figures(res["requests"])


def run_wrk(args: list[str], traced: bool, out_dir: Path, tracer_args=(), progs: tuple[str, ...] = (),
            figures: dict | None = None) -> tuple[dict, dict | None, str]:
    """wrk untraced or under `tracer run`; `figures`, if given, receives WrkWatch's figures."""
    wrk = shutil.which("wrk")
    cmd = [wrk, "--latency", *args]
    if traced:
        summary = out_dir.with_name(out_dir.name + "-summary.json")
        summary.unlink(missing_ok=True)
        cmd = tracer_cmd("run", "--quiet", "--no-html", "--include-all-requests", "-o", str(out_dir),
                         "--summary-json", str(summary), *tracer_args, "--", *cmd)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    fw = FamilyWatch(proc.pid, target_comm="wrk") if traced else None
    watch = WrkWatch(proc.pid, progs) if figures is not None else None
    stdout, stderr = proc.communicate(timeout=1800)
    if watch is not None:
        watch.stop()
    p = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if p.returncode != 0:
        raise SystemExit(f"wrk failed ({p.returncode}): {p.stdout}\n{p.stderr}")
    res = parse_wrk(p.stdout)
    if watch is not None:
        figures.update(watch.figures(res["requests"]))
    log = None
    if traced:
        fw.stop()
        s = tracer_summary(summary)
        s["tracer_cpu_s"] = fw.tracer_cpu
        s["parser_cpu_s"] = fw.helper_cpu
        span = fw.target_span or [0.0, 0.0]
        s["tracer_cpu_during_s"] = span[1] - span[0]
        s["parser_cpu_during_s"] = (fw.helper_span or [0.0, 0.0])[1] - (fw.helper_span or [0.0, 0.0])[0]
        s["hwm_mb"] = fw.total_hwm_kb / 1024
        s["hwm_parts"] = {fw.names.get(p_, str(p_)): round(kb / 1024) for p_, kb in fw.hwm_kb.items()}
        complete = incomplete = noted = 0
        lf = logs(out_dir)
        import orjson
        if lf:
            with open(lf[-1], "rb") as f:
                for line in f:
                    rec = orjson.loads(line)
                    if rec["tracer"]["complete"]:
                        complete += 1
                    else:
                        incomplete += 1
                        noted += bool(rec.get("note"))
        s["complete"] = complete
        s["incomplete_logged"] = incomplete
        s["incomplete_noted"] = noted
        s["drops"] = s["ring_drops_events"]
        log = s
    return res, log, p.stderr


def median(xs):
    import statistics
    return statistics.median(xs)


def saturation(args, tmp: Path, url: str) -> None:
    sat = ["-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s",
           "-s", str(tmp / "post.lua"), url]
    modes = ["untraced", "empty", "traced"]
    rps = {m: [] for m in modes}
    wrk_us = {m: [] for m in modes}
    bpf_us = {m: [] for m in modes}
    traced = []
    stats_fd = -1
    if args.bpf_stats:
        from per_call import enable_bpf_stats
        stats_fd = enable_bpf_stats()
        if stats_fd < 0:
            print("  (BPF_ENABLE_STATS refused: no BPF run times)", flush=True)
    for r in range(args.rounds):
        order = modes[r % 3:] + modes[:r % 3]
        for m in order:
            fig: dict = {}
            if m == "untraced":
                res = run_wrk(sat, False, tmp, figures=fig)[0]
                print(f"  round {r} untraced: {res['rps']:.0f} req/s; {describe(fig)} ({load_line()})", flush=True)
            elif m == "empty":
                res, fig = run_wrk_empty_probes(sat, ("empty",) if stats_fd >= 0 else ())
                print(f"  round {r} empty uprobes: {res['rps']:.0f} req/s; {describe(fig)} ({load_line()})",
                      flush=True)
            else:
                res, log, _err = run_wrk(sat, True, tmp / f"sat{r}", args.tracer_arg,
                                         ("probe_",) if stats_fd >= 0 else (), fig)
                traced.append((res, log))
                n = max(res["requests"], 1)
                print(f"  round {r} traced: {res['rps']:.0f} req/s; {log['complete']} complete pairs logged of "
                      f"{res['requests']} requests ({100 * log['complete'] / n:.2f} %), "
                      f"{log['incomplete_logged']} incomplete ({log['incomplete_noted']} with a note), "
                      f"ring drops {log['drops']}; CPU per request: tracer process "
                      f"{1e6 * log['tracer_cpu_during_s'] / n:.1f} us while wrk ran, parsing process "
                      f"{1e6 * log['parser_cpu_s'] / n:.1f} us in all ({1e6 * log['parser_cpu_during_s'] / n:.1f} "
                      f"while wrk ran); parsing done {log.get('parse_after_capture_s', 0):.1f} s after wrk, "
                      f"spool peak {log.get('spool_peak_backlog_bytes', 0) / 1e6:.0f} MB, ring at most "
                      f"{100 * log.get('ring_peak_fill', 0):.0f} % full; VmHWM {log['hwm_mb']:.0f} MB "
                      f"{log['hwm_parts']}; losses: {log['losses']}; {describe(fig)} ({load_line()})", flush=True)
                for f in log.get("thread_failures") or ():
                    print(f"    FAILED: {f}")
            rps[m].append(res["rps"])
            wrk_us[m].append(fig["wrk_us"])
            if "bpf_us" in fig:
                bpf_us[m].append(fig["bpf_us"])
    if stats_fd >= 0:
        os.close(stats_fd)
    b, e, t = (median(rps[m]) for m in modes)
    req = sum(x[0]["requests"] for x in traced)
    comp = sum(x[1]["complete"] for x in traced)
    worst = min(x[1]["complete"] / max(x[0]["requests"], 1) for x in traced)
    crit = median([1e6 * x[1]["tracer_cpu_during_s"] / max(x[0]["requests"], 1) for x in traced])
    deferred = median([1e6 * x[1]["parser_cpu_s"] / max(x[0]["requests"], 1) for x in traced])
    print(f"saturation ({args.connections} connections, {args.duration} s, medians of {args.rounds} rounds): "
          f"untraced {b:.0f} req/s, empty uprobes {e:.0f} req/s ({e / b:.3f} of untraced), traced {t:.0f} req/s "
          f"= {t / e:.3f} of the empty-probe floor (target >= 0.9), {t / b:.3f} of untraced; pairs logged "
          f"complete {comp} / {req} requests ({100 * comp / max(req, 1):.2f} %, worst round "
          f"{100 * worst:.2f} %; target >= 99.9 %); CPU per pair: tracer process {crit:.1f} us while wrk ran "
          f"(target <= 10), parsing process {deferred:.1f} us; whole-run VmHWM "
          f"{max(x[1]['hwm_mb'] for x in traced):.0f} MB; ({load_line()})", flush=True)
    we, wt = median(wrk_us["empty"]), median(wrk_us["traced"])
    line = (f"where the time goes (medians): wrk's busiest thread {median(wrk_us['untraced']):.2f} us of CPU a "
            f"request untraced, {we:.2f} with empty probes, {wt:.2f} traced: tracer adds {wt - we:+.2f} us a "
            f"request in the target's own thread")
    if bpf_us["empty"] and bpf_us["traced"]:
        line += (f", of which BPF run time {median(bpf_us['traced']) - median(bpf_us['empty']):+.2f} us "
                 f"({median(bpf_us['traced']):.2f} traced, {median(bpf_us['empty']):.2f} empty)")
    print(line, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate-rounds", type=int, default=2)
    ap.add_argument("--rate-seconds", type=int, default=20)
    ap.add_argument("--skip-saturation", action="store_true")
    ap.add_argument("--skip-rate", action="store_true")
    ap.add_argument("--bpf-stats", action="store_true",
                    help="also read the BPF programs' run time (BPF_ENABLE_STATS; slows every mode a little)")
    ap.add_argument("--tracer-arg", action="append", default=[],
                    help="extra option for tracer run, e.g. --tracer-arg=--no-deferred-parsing")
    args = ap.parse_args()
    ensure_tools()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="tracer-bench-tp-") as tmpd:
        tmp = Path(tmpd)
        nginx, port = start_nginx(tmp)
        (tmp / "post.lua").write_text(POST_LUA)
        (tmp / "rate.lua").write_text(RATE_LUA % 10)
        url = f"https://127.0.0.1:{port}/v1/messages"
        try:
            if not args.skip_saturation:
                saturation(args, tmp, url)
            if args.skip_rate:
                return
            rate = ["-t", "1", "-c", "1", "-d", f"{args.rate_seconds}s", "-s", str(tmp / "rate.lua"), url]
            base, traced = [], []
            for r in range(args.rate_rounds):
                base.append(run_wrk(rate, False, tmp)[0])
                res, log, err = run_wrk(rate, True, tmp / f"rate{r}", args.tracer_arg)
                traced.append((res, log))
                base.append(run_wrk(rate, False, tmp)[0])
                print(f"  round {r}: untraced {base[-2]['rps']:.2f}/{base[-1]['rps']:.2f} req/s | traced "
                      f"{res['rps']:.2f} req/s, {log['complete']} complete pairs of {res['requests']}", flush=True)
            b = sum(x["rps"] for x in base) / len(base)
            t = sum(x[0]["rps"] for x in traced) / len(traced)
            bp50 = sum(x["p50_us"] for x in base) / len(base)
            tp50 = sum(x[0]["p50_us"] for x in traced) / len(traced)
            bp99 = sum(x["p99_us"] for x in base) / len(base)
            tp99 = sum(x[0]["p99_us"] for x in traced) / len(traced)
            req = sum(x[0]["requests"] for x in traced)
            comp = sum(x[1]["complete"] for x in traced)
            print(f"fixed 100 req/s offered (1 connection, open-loop 10 ms schedule): untraced {b:.2f} req/s, traced "
                  f"{t:.2f} req/s, reduction {100 * (1 - t / b):.2f} %; latency p50 {bp50:.0f} -> {tp50:.0f} us, "
                  f"p99 {bp99:.0f} -> {tp99:.0f} us; pairs logged complete {comp} / {req}")
        finally:
            nginx.terminate()
            nginx.wait(10)


if __name__ == "__main__":
    main()
