"""OpenTelemetry export: what it costs the capture, the exporter process' own cost, and the memory of
the whole run, with and without export, in the same run.

For each mode (off, then on): an httpx client makes N streaming requests (Claude-Code-like: a prompt of
--prompt-bytes, C at a time) to the mock server under `tracer attach`; with export on, spans go to a
local OTLP/HTTP receiver in this process (it decodes every request and counts the spans). Printed:

  * tracer CPU per pair (utime+stime of the tracer process, all threads, from the go signal to its exit):
    the capture path's cost; export adds no work there (the exporter process follows the log);
  * exporter process CPU per pair (its own utime+stime), and spans received / undelivered;
  * VmHWM of the tracer process, of the exporter process, their sum (the whole run, shared pages counted
    twice), and the peak of their summed PSS (shared pages counted once; sampled every 100 ms);
  * with --mb M, the same for one streamed answer of M MB (memory of the partial-record path);
  * with --claude VERSION, the same for `tracer run -- claude -p` (native release from npm, cached) whose
    main conversation starts a subagent that runs a Bash round trip (the mock's subagent scenario).

    .venv/bin/python bench/otlp.py [--pairs 1000] [--concurrency 8] [--prompt-bytes 50000] [--mb 100]
                                   [--claude 2.1.332]
"""

from __future__ import annotations

import argparse
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import (ASYNC_CLIENT, MemWatch, cpu_seconds, machine, proc_children, start_attach,  # noqa: E402
                   stop_tracer)

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from tracer.mock import MockServerProcess  # noqa: E402
from tracer.testing.helpers import claude_env  # noqa: E402


class Receiver(http.server.ThreadingHTTPServer):
    def __init__(self):
        self.spans = 0
        self.requests = 0
        lock = threading.Lock()

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(h):  # noqa: N805
                req = ExportTraceServiceRequest()
                req.ParseFromString(h.rfile.read(int(h.headers["content-length"])))
                n = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
                with lock:
                    self.spans += n
                    self.requests += 1
                h.send_response(200)
                h.end_headers()

            def log_message(h, *a):  # noqa: N805
                pass
        super().__init__(("127.0.0.1", 0), H)


def worker_pid(tracer_pid: int, timeout: float = 10.0) -> int | None:
    """The exporter process tracer started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in proc_children().get(tracer_pid, []):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"tracer.sinks.otlp.worker" in f.read():
                        return pid
            except OSError:
                continue
        time.sleep(0.05)
    return None


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PssWatch:
    """Peak of the summed proportional set size (pages shared by the two processes counted once)."""

    def __init__(self, pids_fn, interval: float = 0.1):
        self.peak_kb = 0
        self._stop = threading.Event()
        self._pids_fn = pids_fn
        self._t = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._t.start()

    def _run(self, interval):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, sum(pss_kb(p) for p in self._pids_fn() if p))
            time.sleep(interval)

    def stop(self):
        self._stop.set()
        self._t.join(2)


def run(srv, tmp: Path, mode: str, client_args: list[str], endpoint: str | None, n_pairs: int) -> dict:
    run.n = getattr(run, "n", 0) + 1
    go = tmp / f"go-{run.n}-{mode}"
    c = subprocess.Popen([sys.executable, str(ASYNC_CLIENT), srv.url, str(srv.ca_path), "--go-file", str(go),
                          *client_args], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, ANTHROPIC_BASE_URL=srv.url))
    time.sleep(0.5)
    extra = ["--otlp-endpoint", endpoint] if endpoint else ["--no-otlp"]
    tr, _t, _lines = start_attach([c.pid], tmp / f"log-{run.n}-{mode}", *extra, env=dict(os.environ))
    tw = MemWatch(tr.pid, 0.02)
    wpid = worker_pid(tr.pid) if endpoint else None
    ww = MemWatch(wpid, 0.02) if wpid else None
    pw = PssWatch(lambda: (tr.pid, wpid))
    cpu0 = cpu_seconds(tr.pid)
    wcpu0 = cpu_seconds(wpid) if wpid else 0.0
    t0 = time.monotonic()
    go.touch()
    c.communicate(timeout=3600)
    t_client = time.monotonic() - t0
    time.sleep(0.5)
    err = stop_tracer(tr)
    wall = time.monotonic() - t0
    tw.stop()
    pw.stop()
    if ww:
        ww.stop()
    out = {"mode": mode, "client_s": t_client, "wall_s": wall, "tracer_cpu_s": tw.cpu_s - cpu0,
           "tracer_hwm_mb": tw.hwm_kb / 1024, "exporter_cpu_s": (ww.cpu_s - wcpu0) if ww else 0.0,
           "exporter_hwm_mb": (ww.hwm_kb / 1024) if ww else 0.0, "stderr": err}
    out["sum_hwm_mb"] = out["tracer_hwm_mb"] + out["exporter_hwm_mb"]
    out["pss_peak_mb"] = pw.peak_kb / 1024
    for line in err.splitlines():
        if line.startswith("pairs:"):
            out["logged"] = int(line.split()[1])
        if line.startswith("otlp:"):
            out["otlp"] = line
        if line.startswith(("pairs:", "losses:")):
            out.setdefault("lines", []).append(line)
    out["pairs"] = out.get("logged", n_pairs) or n_pairs
    return out


def run_claude(tmp: Path, mode: str, version: str, endpoint: str | None) -> dict:
    from tracer.mock import MockServer
    from tracer.testing.releases import fetch_npm_release
    exe = str(fetch_npm_release("@anthropic-ai/claude-code-linux-x64", version))
    home = tmp / f"home-{mode}"
    home.mkdir()
    with MockServer(knobs={"scenario": "subagent"}) as mock:
        env = claude_env(mock, home, drop=("OTEL_",))
        extra = ["--otlp-endpoint", endpoint] if endpoint else ["--no-otlp"]
        t0 = time.monotonic()
        tr = subprocess.Popen([sys.executable, "-m", "tracer.cli", "run", "-o", str(tmp / f"log-cc-{mode}"),
                               "--quiet", *extra, "--", exe, "-p", "say hi through a subagent",
                               "--allowedTools", "Bash,Task,Agent"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        tw = MemWatch(tr.pid, 0.02)
        wpid = worker_pid(tr.pid) if endpoint else None
        ww = MemWatch(wpid, 0.02) if wpid else None
        pw = PssWatch(lambda: (tr.pid, wpid))
        err = tr.communicate(timeout=600)[1]
        wall = time.monotonic() - t0
        for w in (tw, pw, ww):
            if w:
                w.stop()
    out = {"mode": mode, "client_s": wall, "wall_s": wall, "tracer_cpu_s": tw.cpu_s,
           "tracer_hwm_mb": tw.hwm_kb / 1024, "exporter_cpu_s": ww.cpu_s if ww else 0.0,
           "exporter_hwm_mb": (ww.hwm_kb / 1024) if ww else 0.0, "pss_peak_mb": pw.peak_kb / 1024}
    out["sum_hwm_mb"] = out["tracer_hwm_mb"] + out["exporter_hwm_mb"]
    for line in err.splitlines():
        if line.startswith("pairs:"):
            out["pairs"] = int(line.split()[1])
        if line.startswith(("pairs:", "losses:", "otlp:", "html:")):
            out.setdefault("lines", []).append(line)
    out.setdefault("pairs", 0)
    return out


def report(rows: list[dict], receiver: Receiver | None) -> None:
    print(f"{'mode':5} {'pairs':>6} {'client s':>9} {'wall s':>7} {'tracer CPU/pair':>16} {'exporter CPU/pair':>18} "
          f"{'tracer VmHWM':>13} {'exporter VmHWM':>15} {'sum':>8} {'PSS peak':>9}")
    for r in rows:
        n = max(1, r["pairs"])
        print(f"{r['mode']:5} {r['pairs']:>6} {r['client_s']:>9.2f} {r['wall_s']:>7.2f} "
              f"{r['tracer_cpu_s'] / n * 1e6:>13.0f} µs {r['exporter_cpu_s'] / n * 1e6:>15.0f} µs "
              f"{r['tracer_hwm_mb']:>10.1f} MB {r['exporter_hwm_mb']:>12.1f} MB {r['sum_hwm_mb']:>5.1f} MB "
              f"{r['pss_peak_mb']:>6.1f} MB")
        for line in r.get("lines", []) + ([r["otlp"]] if r.get("otlp") else []):
            print("      " + line)
    if receiver is not None:
        print(f"      receiver: {receiver.spans} spans in {receiver.requests} requests")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--prompt-bytes", type=int, default=50000)
    ap.add_argument("--mb", type=int, default=0, help="also one streamed answer of this many MB")
    ap.add_argument("--claude", default="", help="also `tracer run -- claude -p` of this native release")
    args = ap.parse_args()
    print(machine())
    recv = Receiver()
    threading.Thread(target=recv.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{recv.server_address[1]}"
    with MockServerProcess() as srv, tempfile.TemporaryDirectory(prefix="tracer-bench-otlp-") as tmpd:
        tmp = Path(tmpd)
        load = ["--n", str(args.pairs), "--concurrency", str(args.concurrency), "--stream",
                "--prompt-bytes", str(args.prompt_bytes)]
        print(f"== {args.pairs} streaming pairs, {args.concurrency} at a time, {args.prompt_bytes} B prompts")
        rows = [run(srv, tmp, "off", load, None, args.pairs), run(srv, tmp, "on", load, endpoint, args.pairs)]
        report(rows, recv)
        if args.mb:
            print(f"== one streamed answer of {args.mb} MB (1 KiB deltas)")
            big = ["--n", "1", "--stream", "--header", f"x-mock-text-bytes: {args.mb * 1_000_000}"]
            before = recv.spans
            rows = [run(srv, tmp, "off", big, None, 1), run(srv, tmp, "on", big, endpoint, 1)]
            report(rows, None)
            print(f"      receiver: {recv.spans - before} spans")
        if args.claude:
            print(f"== tracer run (viewer on) -- claude {args.claude} -p, a subagent with a Bash round trip "
                  "(CPU: whole run)")
            before = recv.spans
            rows = [run_claude(tmp, "off", args.claude, None), run_claude(tmp, "on", args.claude, endpoint)]
            report(rows, None)
            print(f"      receiver: {recv.spans - before} spans")
    recv.shutdown()
    print(machine())


if __name__ == "__main__":
    main()
