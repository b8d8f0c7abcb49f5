"""Cost per SSL call: bench/per_call.c (OpenSSL client+server over a memory BIO pair, 4 SSL calls per
iteration, no I/O) timed untraced, with an *empty* BCC uprobe+uretprobe on SSL_read/SSL_write (the floor
any uprobe tracer pays on this machine), and under `tracer attach`. Rounds interleave the three.

    .venv/bin/python bench/per_call.py [--iterations 50000] [--rounds 3]

Reported: ns per call for each, the added cost per call (probe - untraced) and the tracer's added cost
relative to the empty probes (target <= 1.2x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import MemWatch, machine, start_attach, stop_tracer, summary_numbers  # noqa: E402

from tracer.mock.certs import ensure_certs  # noqa: E402

SRC = Path(__file__).resolve().parent / "per_call.c"
BUILD = Path(os.environ.get("TRACER_BENCH_BUILD", "/var/cache/tracer/bench"))
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"

EMPTY_BPF = "int empty(struct pt_regs *ctx) { return 0; }"


def build() -> Path:
    BUILD.mkdir(parents=True, exist_ok=True)
    exe = BUILD / "per_call"
    if not exe.exists() or exe.stat().st_mtime < SRC.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-o", str(exe), str(SRC), "-lssl", "-lcrypto"], check=True)
    return exe


def start(exe: Path, certs, iters: int) -> subprocess.Popen:
    p = subprocess.Popen([str(exe), str(certs.cert), str(certs.key), str(iters), "--wait"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("ready"), line
    return p


def go(p: subprocess.Popen) -> dict:
    p.stdin.write("go\n")
    p.stdin.flush()
    out = p.stdout.readline()
    p.wait(600)
    return json.loads(out)


class EmptyProbes:
    """uprobe + uretprobe with an empty body on SSL_read and SSL_write of libssl, for one pid."""

    def __init__(self, pid: int):
        from bcc import BPF
        from tracer.probes import kheaders
        kheaders.apply(kheaders.choose())   # the same kernel headers the tracer uses
        self.b = BPF(text=EMPTY_BPF)
        for fn in ("SSL_read", "SSL_write"):
            self.b.attach_uprobe(name=LIBSSL, sym=fn, fn_name="empty", pid=pid)
            self.b.attach_uretprobe(name=LIBSSL, sym=fn, fn_name="empty", pid=pid)

    def close(self):
        self.b.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=50000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(machine())
    exe = build()
    with tempfile.TemporaryDirectory(prefix="tracer-bench-pc-") as tmpd:
        tmp = Path(tmpd)
        certs = ensure_certs(tmp / "certs")
        res = {"untraced": [], "empty": [], "tracer": []}
        tracer_cpu = []
        for r in range(args.rounds):
            p = start(exe, certs, args.iterations)
            res["untraced"].append(go(p)["ns_per_call"])
            p = start(exe, certs, args.iterations)
            probes = EmptyProbes(p.pid)
            res["empty"].append(go(p)["ns_per_call"])
            probes.close()
            p = start(exe, certs, args.iterations)
            tr, _, _ = start_attach([p.pid], tmp / f"log{r}", "--include-all-requests")
            mw = MemWatch(tr.pid, interval=0.2)
            c0 = mw.cpu_s
            out = go(p)
            res["tracer"].append(out["ns_per_call"])
            time.sleep(0.5)
            err = stop_tracer(tr)
            mw.stop()
            s = summary_numbers(err)
            tracer_cpu.append(mw.cpu_s - c0)
            print(f"  round {r}: untraced {res['untraced'][-1]:.0f} ns/call, empty probes {res['empty'][-1]:.0f}, "
                  f"tracer {res['tracer'][-1]:.0f} (tracer logged {s.get('logged')} pairs, "
                  f"losses: {s.get('losses')})", flush=True)
        u, e, t = (statistics.median(res[k]) for k in ("untraced", "empty", "tracer"))
        calls = 4 * args.iterations
        print(f"per SSL call (median of {args.rounds}; {calls} calls each): untraced {u:.0f} ns, empty "
              f"uprobe+uretprobe {e:.0f} ns (+{(e - u) / 1e3:.2f} us), tracer {t:.0f} ns (+{(t - u) / 1e3:.2f} us); "
              f"tracer / empty added cost = {(t - u) / max(e - u, 1e-9):.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
