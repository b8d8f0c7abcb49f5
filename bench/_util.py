"""Helpers of the benchmarks: the machine line, percentiles, /proc figures of a process, the tracer's
summary. Running the tracer CLI (tracer_cmd, start_attach, stop_tracer) comes from
tracer/testing/helpers.py, shared with the tests."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tracer.sinks.summary import losses  # noqa: E402
from tracer.testing.helpers import read_summary, start_attach, stop_tracer, tracer_cmd  # noqa: E402,F401

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


def proc_children() -> dict[int, list[int]]:
    """Every process' children (pids), from /proc."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


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


def tracer_summary(path) -> dict:
    """The --summary-json file of a finished tracer, plus its losses line as text under "losses"."""
    s = read_summary(path)
    s["losses"] = losses(s)
    return s


def logs(out_dir) -> list[Path]:
    return sorted(Path(out_dir).glob("*.jsonl"))
