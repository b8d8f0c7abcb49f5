"""Following process trees: what it costs processes tracer does NOT trace, what it costs the ones it
does, and why per-process probes are shared tracefs uprobes.

1. Untraced workloads, each measured without tracer, then beside `tracer run` following an idle tree
   (the fork/exec/exit tracepoint programs armed, nothing else happening), then beside `tracer run`
   following a busy tree (a shell starting a curl client against the mock API every 100 ms: held
   execs, probes, records; on a 2-CPU machine this also takes CPU away from the workload):
     * fork+exec: /bin/true started N times by an untraced Python (every exec on the machine runs the
       tracepoint programs);
     * wrk over TLS against the mock server (both untraced libssl users next to traced ones on the
       same libssl file: the probes are pid-filtered; the mock, in Python, sets the pace);
     * a getppid() loop (syscalls: no syscall tracepoints are used, so nothing should change).
2. The traced side: a traced shell exec'ing /bin/true N times (every exec held until probed) and
   running curl N/10 times, against the same untraced; how long the kernel side held each process.
3. Removing per-process probes: 16 processes x 9 probes through the uprobe PMU (one kernel uprobe per
   probe; closing waits for an RCU grace period) vs per-process events on shared tracefs uprobes.

    .venv/bin/python bench/process_tree.py [--execs 400] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import ROOT, machine, tracer_cmd  # noqa: E402

from tracer.mock import MockServerProcess  # noqa: E402

SYSLOOP_C = r"""
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int c, char **v) { int n = 2000000; struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a); for (int i = 0; i < n; i++) syscall(SYS_getppid);
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n); return 0; }
"""
FORK_EXEC = ("import subprocess, sys, time\nn = int(sys.argv[1])\nt = time.monotonic()\n"
             "for _ in range(n):\n    subprocess.run(['/bin/true'])\nprint(n / (time.monotonic() - t))\n")


def fork_exec_rate(n: int) -> float:
    out = subprocess.run(["/usr/bin/python3", "-c", FORK_EXEC, str(n)], capture_output=True, text=True,
                         check=True).stdout
    return float(out)


def wrk_rate(url: str, seconds: int) -> float:
    p = subprocess.run(["wrk", "-t1", "-c4", f"-d{seconds}s", f"{url}/v1/models"],
                       capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise SystemExit(f"wrk printed no rate:\n{p.stdout}\n{p.stderr}")


def syscall_ns(exe: Path) -> float:
    return float(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def start_tracer_tree(script: str, out: Path, env: dict) -> tuple[subprocess.Popen, int]:
    """`tracer run -- sh -c SCRIPT`, returned once the command runs (its launcher has exec'd)."""
    p = subprocess.Popen(tracer_cmd("run", "-o", str(out), "--quiet", "--no-html", "--", "sh", "-c", script),
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                         start_new_session=True)      # its tree in one process group, killed at the end
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise SystemExit("tracer run exited early:\n" + p.stderr.read())
        for c in _children(p.pid):
            try:
                exe = os.readlink(f"/proc/{c}/exe")
            except OSError:
                continue
            if not exe.startswith(sys.executable.rsplit("/", 1)[0]) and "python" not in exe:
                time.sleep(1)          # the tree settles (its first clients probed)
                return p, c
        time.sleep(0.1)
    raise SystemExit("tracer run did not start its command in 120 s")


def stop(p: subprocess.Popen, child: int) -> str:
    """SIGTERM to tracer (it passes it on to its command), then the rest of the tree goes."""
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
    try:
        os.killpg(p.pid, signal.SIGKILL)   # the command's own children (sh does not pass SIGTERM on)
    except OSError:
        pass
    return p.stderr.read()


def untraced_side(args, srv, tmp: Path, sysloop: Path) -> None:
    env = dict(os.environ, ANTHROPIC_BASE_URL=srv.url)
    curl = (f"curl -s --cacert {srv.ca_path} -o /dev/null -H 'content-type: application/json' "
            f"-d '{{\"model\":\"m\",\"max_tokens\":5,\"messages\":[]}}' {srv.url}/v1/messages")
    configs = [("no tracer", None),
               ("tracer following an idle tree", "sleep 100000"),
               ("tracer following a busy tree", f"while :; do {curl}; sleep 0.1; done")]
    rows = []
    for name, script in configs:
        tr, child = start_tracer_tree(script, tmp / f"out-{len(rows)}", env) if script else (None, 0)
        try:
            fe = statistics.median(fork_exec_rate(args.execs) for _ in range(3))
            wr = statistics.median(wrk_rate(srv.url, args.seconds) for _ in range(3))
            sc = statistics.median(syscall_ns(sysloop) for _ in range(3))
        finally:
            err = stop(tr, child) if tr else ""
        rows.append((name, fe, wr, sc))
        if tr and "losses: none" not in err and "pairs:" in err:
            print(f"  ({name}: {err.splitlines()[2] if len(err.splitlines()) > 2 else err.strip()})")
    base = rows[0]
    print(f"{'untraced workload':<34} {'fork+exec /s':>13} {'wrk req/s':>11} {'ns/syscall':>11}")
    for name, fe, wr, sc in rows:
        print(f"{name:<34} {fe:>13.0f} {wr:>11.0f} {sc:>11.1f}   "
              f"(x{fe / base[1]:.3f}, x{wr / base[2]:.3f}, x{sc / base[3]:.3f})")


def traced_side(args, srv, tmp: Path) -> None:
    n = args.execs
    curl = (f"curl -s --cacert {srv.ca_path} -o /dev/null -H 'content-type: application/json' "
            f"-d '{{\"model\":\"m\",\"max_tokens\":5,\"messages\":[]}}' {srv.url}/v1/messages")
    script = (f"t0=$(date +%s%N); i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done; "
              f"t1=$(date +%s%N); i=0; while [ $i -lt {n // 10} ]; do {curl}; i=$((i+1)); done; "
              f"t2=$(date +%s%N); echo $(( (t1-t0)/{n} )) $(( (t2-t1)/{n // 10} ))")
    env = dict(os.environ, ANTHROPIC_BASE_URL=srv.url)
    plain = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, check=True)
    base_true, base_curl = (int(x) / 1e6 for x in plain.stdout.split())
    t0 = time.monotonic()
    sj = tmp / "traced-summary.json"
    p = subprocess.run(tracer_cmd("run", "-o", str(tmp / "traced"), "--no-html", "--summary-json", str(sj),
                                  "--", "sh", "-c", script),
                       capture_output=True, text=True, env=env, cwd=str(ROOT))
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    tr_true, tr_curl = (int(x) / 1e6 for x in p.stdout.split())
    s = json.loads(sj.read_text())
    f = s["following"]
    print(f"traced shell, {n} x /bin/true: {tr_true:.2f} ms per exec traced vs {base_true:.2f} ms untraced "
          f"(+{tr_true - base_true:.2f} ms)")
    print(f"traced shell, {n // 10} x curl: {tr_curl:.2f} ms per request traced vs {base_curl:.2f} ms "
          f"untraced (+{tr_curl - base_curl:.2f} ms); {s['pairs_logged']} of {n // 10} pairs logged, "
          f"losses: {'none' if 'losses: none' in p.stderr else 'see summary'}")
    print(f"held until probed: {f['held']} processes, median {f['held_ms_median']} ms, max {f['held_ms_max']} ms "
          f"(exec to SIGCONT); whole run {wall:.1f} s")


def removal(tmp: Path) -> None:
    """16 processes x 9 probes: PMU uprobes vs per-process events on shared tracefs uprobes."""
    from tracer import libbpf
    from tracer.probes import attach
    from tracer.probes.shared import SharedUprobes
    from elftools.elf.elffile import ELFFile
    insns = bytes([0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])      # r0 = 0; exit
    pfd = libbpf.prog_load(2, insns, "bench_nop")
    lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    with open(lib, "rb") as f:
        syms = ELFFile(f).get_section_by_name(".dynsym")
        addrs = sorted({s["st_value"] for s in syms.iter_symbols()
                        if s["st_info"]["type"] == "STT_FUNC" and s["st_value"]})[200:209]
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(16)]
    holder = subprocess.Popen(["sleep", "600"])
    try:
        fds = []
        t = time.monotonic()
        for p in procs:
            fds += [attach.open_uprobe(pfd, lib, attach.file_offset(lib, a), p.pid, False) for a in addrs]
        pmu_open = time.monotonic() - t
        t = time.monotonic()
        for fd in fds:
            os.close(fd)
        pmu_close = time.monotonic() - t
        shared = SharedUprobes(lambda _name: pfd, holder.pid)
        from tracer.probes.located import FunctionLocation, Located
        loc = Located(path=lib, library="openssl",
                      functions={f"f{i}": FunctionLocation(f"f{i}", a, "x") for i, a in enumerate(addrs)})
        todo = [("uprobe", a, "bench_nop") for a in addrs]
        t = time.monotonic()
        for p in procs:
            shared.attach_probes(p.pid, lib, loc, todo)
        sh_open = time.monotonic() - t
        t = time.monotonic()
        for p in procs:
            shared.detach_pid(p.pid)
        sh_close = time.monotonic() - t
        t = time.monotonic()
        shared.close(background=False)
        sh_end = time.monotonic() - t
    finally:
        for p in procs + [holder]:
            p.kill()
        os.close(pfd)
    n = 16 * len(addrs)
    print(f"removing {n} per-process uprobes: uprobe PMU {pmu_close:.2f} s ({pmu_close / n * 1e3:.0f} ms each; "
          f"attach {pmu_open:.2f} s) vs shared tracefs uprobes {sh_close * 1e3:.0f} ms "
          f"(attach {sh_open:.2f} s; the {len(addrs)} shared uprobes themselves at the end: {sh_end:.2f} s, "
          f"done by a forked child while tracer exits)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--execs", type=int, default=400)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (eBPF)")
    for tool in ("wrk", "openssl", "curl", "cc"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed")
    print(machine())
    tmp = Path(tempfile.mkdtemp(prefix="bench-tree-"))
    sysloop = tmp / "sysloop"
    (tmp / "sysloop.c").write_text(SYSLOOP_C)
    subprocess.run(["cc", "-O2", "-o", str(sysloop), str(tmp / "sysloop.c")], check=True)
    try:
        with MockServerProcess() as srv:
            untraced_side(args, srv, tmp, sysloop)
            traced_side(args, srv, tmp)
        removal(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
