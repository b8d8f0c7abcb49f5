"""Cost per SSL call: bench/per_call.c (OpenSSL client+server over a memory BIO pair, 4 SSL calls per
iteration, no I/O) timed untraced, with an *empty* uprobe+uretprobe on SSL_read/SSL_write (the floor
any uprobe tracer pays on this machine), and under `tracer attach`. Rounds interleave the three.

    .venv/bin/python bench/per_call.py [--iterations 50000] [--rounds 3]

Reported: ns per call for each, by wall time and by the calling process' CPU time (uprobe handling is
system time of the caller; CPU time is not inflated by other load the way wall time is), the added cost
per call (probe - untraced), the tracer's added cost relative to the empty probes (target <= 1.2x), and
the BPF programs' own run time per call (BPF_ENABLE_STATS: run_time_ns / run_cnt).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import MemWatch, machine, start_attach, stop_tracer, tracer_summary  # noqa: E402

from tracer.mock.certs import ensure_certs  # noqa: E402

SRC = Path(__file__).resolve().parent / "per_call.c"
BUILD = Path(os.environ.get("TRACER_BENCH_BUILD", "/var/cache/tracer/bench"))
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"



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


# -- BPF run-time statistics (bpf(2) BPF_ENABLE_STATS; run_time_ns/run_cnt from bpf_prog_info) -------
_libc = ctypes.CDLL(None, use_errno=True)
_NR_BPF = 321                  # x86-64
BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_ENABLE_STATS = 11, 13, 15, 32


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    return _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))


def enable_bpf_stats() -> int:
    """Run-time stats for every BPF program while the returned fd is open (-1 if refused)."""
    attr = (ctypes.c_uint8 * 128)()
    return _bpf(BPF_ENABLE_STATS, attr)      # type 0 = BPF_STATS_RUN_TIME


def bpf_prog_stats() -> dict[int, tuple[str, int, int]]:
    """id -> (name, run_time_ns, run_cnt) of every loaded BPF program."""
    out = {}
    pid = 0
    while True:
        attr = (ctypes.c_uint8 * 128)()
        struct.pack_into("I", attr, 0, pid)
        if _bpf(BPF_PROG_GET_NEXT_ID, attr) != 0:
            return out
        pid = struct.unpack_from("I", attr, 4)[0]
        attr = (ctypes.c_uint8 * 128)()
        struct.pack_into("I", attr, 0, pid)
        fd = _bpf(BPF_PROG_GET_FD_BY_ID, attr)
        if fd < 0:
            continue
        info = (ctypes.c_uint8 * 256)()
        attr = (ctypes.c_uint8 * 128)()
        struct.pack_into("IIQ", attr, 0, fd, ctypes.sizeof(info), ctypes.addressof(info))
        if _bpf(BPF_OBJ_GET_INFO_BY_FD, attr) == 0:
            name = bytes(info[64:80]).split(b"\0", 1)[0].decode()
            run_ns, run_cnt = struct.unpack_from("QQ", info, 192)
            out[pid] = (name, run_ns, run_cnt)
        os.close(fd)


def prog_time(before: dict, after: dict, names: tuple[str, ...]) -> tuple[int, int]:
    """(run_time_ns, run_cnt) added between two snapshots, over programs whose name starts with names."""
    ns = cnt = 0
    for pid, (name, t, c) in after.items():
        if name.startswith(names):
            t0, c0 = before.get(pid, (name, 0, 0))[1:]
            ns += t - t0
            cnt += c - c0
    return ns, cnt


EMPTY_INSNS = bytes([0xb7, 0, 0, 0, 0, 0, 0, 0,       # r0 = 0
                     0x95, 0, 0, 0, 0, 0, 0, 0])      # exit


class EmptyProbes:
    """Empty programs ("r0 = 0; exit", named "empty") on every TLS function tracer probes in `path`
    (default libssl): uprobe + uretprobe on SSL_read/SSL_write and their _ex variants, a uprobe on
    SSL_free - for one pid, attached the way tracer attaches its own (perf_event_open on the uprobe PMU
    with the pid), so that the two differ only in what the programs do: the floor any uprobe tracer
    pays here. (BCC's attach_uprobe also works, but fails while another process holds a probe on the
    same function with another reference-counter offset, e.g. a tracer test running meanwhile.)"""

    def __init__(self, pid: int, path: str = LIBSSL):
        from tracer import libbpf
        from tracer.probes.attach import file_offset, held_ref_ctr_offset, open_uprobe
        from tracer.probes.locate import locate
        from tracer.probes.program import ENTRY_ONLY, UPROBES, ProgType
        self.prog = libbpf.prog_load(int(ProgType.KPROBE), EMPTY_INSNS, "empty")
        self.fds = []
        located = locate(path)
        if located is None:
            raise SystemExit(f"no TLS functions found in {path}")
        self.functions = sorted(fn for fn in (*UPROBES, *ENTRY_ONLY) if fn in located.functions)
        try:
            for fn in self.functions:
                off = file_offset(path, located.functions[fn].address)
                for ret in (False, True) if fn in UPROBES else (False,):
                    try:
                        fd = open_uprobe(self.prog, path, off, pid, ret)
                    except OSError:
                        fd = open_uprobe(self.prog, path, off, pid, ret,
                                         held_ref_ctr_offset(path, off, ret) or 0)
                    self.fds.append(fd)
        except BaseException:
            self.close()
            raise

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        if self.prog >= 0:
            os.close(self.prog)
            self.prog = -1


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
        cpu = {"untraced": [], "empty": [], "tracer": []}
        runq = {"untraced": [], "empty": [], "tracer": []}
        tracer_cpu = []
        stats_fd = enable_bpf_stats()
        bpf_ns = {"empty": [0, 0], "tracer": [0, 0]}
        for r in range(args.rounds):
            p = start(exe, certs, args.iterations)
            o = go(p)
            res["untraced"].append(o["ns_per_call"])
            cpu["untraced"].append(o["cpu_ns_per_call"])
            runq["untraced"].append(o["runq_wait_ns_per_call"])
            p = start(exe, certs, args.iterations)
            probes = EmptyProbes(p.pid)
            s0 = bpf_prog_stats()
            o = go(p)
            res["empty"].append(o["ns_per_call"])
            cpu["empty"].append(o["cpu_ns_per_call"])
            runq["empty"].append(o["runq_wait_ns_per_call"])
            ns, cnt = prog_time(s0, bpf_prog_stats(), ("empty",))
            bpf_ns["empty"][0] += ns
            bpf_ns["empty"][1] += cnt
            probes.close()
            p = start(exe, certs, args.iterations)
            tr, _, _ = start_attach([p.pid], tmp / f"log{r}", "--include-all-requests",
                                    "--summary-json", str(tmp / f"summary{r}.json"))
            mw = MemWatch(tr.pid, interval=0.2)
            c0 = mw.cpu_s
            s0 = bpf_prog_stats()
            out = go(p)
            ns, cnt = prog_time(s0, bpf_prog_stats(), ("probe_",))
            bpf_ns["tracer"][0] += ns
            bpf_ns["tracer"][1] += cnt
            res["tracer"].append(out["ns_per_call"])
            cpu["tracer"].append(out["cpu_ns_per_call"])
            runq["tracer"].append(out["runq_wait_ns_per_call"])
            time.sleep(0.5)
            stop_tracer(tr)
            mw.stop()
            s = tracer_summary(tmp / f"summary{r}.json")
            tracer_cpu.append(mw.cpu_s - c0)
            print(f"  round {r}: untraced {res['untraced'][-1]:.0f} ns/call, empty probes {res['empty'][-1]:.0f}, "
                  f"tracer {res['tracer'][-1]:.0f} (tracer logged {s['pairs_logged']} pairs, "
                  f"losses: {s['losses']})", flush=True)
        u, e, t = (statistics.median(res[k]) for k in ("untraced", "empty", "tracer"))
        calls = 4 * args.iterations
        print(f"per SSL call (median of {args.rounds}; {calls} calls each): untraced {u:.0f} ns, empty "
              f"uprobe+uretprobe {e:.0f} ns (+{(e - u) / 1e3:.2f} us), tracer {t:.0f} ns (+{(t - u) / 1e3:.2f} us); "
              f"tracer / empty added cost = {(t - u) / max(e - u, 1e-9):.2f}x (target <= 1.2x)")
        u, e, t = (statistics.median(cpu[k]) for k in ("untraced", "empty", "tracer"))
        print(f"per SSL call, CPU time of the calling process (median): untraced {u:.0f} ns, empty "
              f"{e:.0f} ns (+{(e - u) / 1e3:.2f} us), tracer {t:.0f} ns (+{(t - u) / 1e3:.2f} us); "
              f"tracer / empty added cost = {(t - u) / max(e - u, 1e-9):.2f}x (target <= 1.2x)")
        u, e, t = (statistics.median(runq[k]) for k in ("untraced", "empty", "tracer"))
        print(f"per SSL call, time runnable but waiting for a CPU (schedstat, median): untraced {u:.0f} ns, "
              f"empty {e:.0f} ns, tracer {t:.0f} ns")
        if stats_fd >= 0:
            calls_all = calls * args.rounds
            for k in ("empty", "tracer"):
                ns, cnt = bpf_ns[k]
                print(f"BPF program time ({k}): {cnt} runs, {ns / max(cnt, 1):.0f} ns per run, "
                      f"{ns / calls_all:.0f} ns per SSL call (entry + return)")
            os.close(stats_fd)


if __name__ == "__main__":
    main()
