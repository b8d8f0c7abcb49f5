"""Helpers shared by the benchmarks: the machine line, percentiles, /proc figures of a process, and
starting `tracer attach` / `tracer run` as a user would."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ASYNC_CLIENT = ROOT / "tests" / "integration" / "clients" / "async_client.py"
PY_CLIENT = ROOT / "tests" / "integration" / "clients" / "py_client.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine() -> str:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), "
            f"kernel {platform.release()}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class MemWatch:
    """Polls VmHWM/VmRSS of a process until it exits (keeps the last values read)."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.hwm_kb = 0
        self.rss_max_kb = 0
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._t.start()

    def _run(self, interval):
        while not self._stop.is_set():
            try:
                self.hwm_kb = max(self.hwm_kb, status_kb(self.pid, "VmHWM"))
                self.rss_max_kb = max(self.rss_max_kb, status_kb(self.pid, "VmRSS"))
                self.cpu_s = cpu_seconds(self.pid)
            except (OSError, ValueError, IndexError):
                return
            time.sleep(interval)

    def stop(self):
        self._stop.set()
        self._t.join(2)


def tracer_cmd(*args) -> list[str]:
    """The tracer CLI; TRACER_BENCH_TRACER=path/to/script.py runs that script instead (A/B experiments
    with a patched tracer: it gets the same arguments)."""
    alt = os.environ.get("TRACER_BENCH_TRACER")
    if alt:
        return [sys.executable, alt, *args]
    return [sys.executable, "-m", "tracer.cli", *args]


def start_attach(pids, out_dir, *extra, env=None, timeout=300) -> tuple[subprocess.Popen, float, list[str]]:
    """`tracer attach`; returns (process, seconds until it said it is tracing, its first stderr lines)."""
    args = []
    for p in pids:
        args += ["--pid", str(p)]
    t0 = time.monotonic()
    t = subprocess.Popen(tracer_cmd("attach", *args, "-o", str(out_dir), "--quiet", "--no-html", *extra),
                         stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = t.stderr.readline()
        if not line:
            raise SystemExit("tracer attach exited early:\n" + "".join(lines))
        lines.append(line)
        if "tracing" in line and "process" in line:
            return t, time.monotonic() - t0, lines
    raise SystemExit("tracer attach did not start in time")


def stop_tracer(t: subprocess.Popen, sig=2, timeout=120) -> str:
    t.send_signal(sig)
    err = t.stderr.read()
    t.wait(timeout)
    return err


def summary_numbers(stderr: str) -> dict:
    out = {}
    for line in stderr.splitlines():
        if line.startswith("pairs:"):
            w = line.split()
            out["logged"] = int(w[1])
            out["filtered"] = int(w[3])
            out["incomplete"] = int(w[6])
        elif line.startswith("losses:"):
            out["losses"] = line[len("losses:"):].strip()
    return out


def logs(out_dir) -> list[Path]:
    return sorted(Path(out_dir).glob("*.jsonl"))
