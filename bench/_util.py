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
from tracer.testing.helpers import (PARSER_COMM, children, comm, read_summary, start_attach,  # noqa: E402,F401
                                    stop_tracer, tracer_cmd)

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
    """Polls a tracer until it exits: VmHWM (each process' peak, summed over the tracer and its
    parsing process - the whole run's memory), VmRSS (summed) and CPU time (summed); keeps the last
    values read."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.hwm_kb = 0
        self.rss_max_kb = 0
        self.cpu_s = 0.0
        self._hwm: dict[int, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._t.start()

    def _run(self, interval):
        while not self._stop.is_set():
            try:
                for p in family(self.pid):
                    self._hwm[p] = max(self._hwm.get(p, 0), status_kb(p, "VmHWM"))
                self.hwm_kb = sum(self._hwm.values())
                self.rss_max_kb = max(self.rss_max_kb, family_kb(self.pid, "VmRSS"))
                self.cpu_s = family_cpu(self.pid)
            except (OSError, ValueError, IndexError):
                return
            time.sleep(interval)

    def stop(self):
        self._stop.set()
        self._t.join(2)


HELPERS = (PARSER_COMM,)        # the tracer's helper processes (their comm), counted with it


def family(pid: int) -> list[int]:
    """The tracer process and its helper processes (the parsing process)."""
    return [pid] + [c for c in children(pid) if comm(c) in HELPERS]


def family_cpu(pid: int) -> float:
    """CPU seconds of the tracer and its helpers (the tracer's must be readable)."""
    total = cpu_seconds(pid)
    for p in family(pid)[1:]:
        try:
            total += cpu_seconds(p)
        except (OSError, IndexError):
            pass
    return total


def family_kb(pid: int, key: str) -> int:
    total = status_kb(pid, key)
    for p in family(pid)[1:]:
        try:
            total += status_kb(p, key)
        except OSError:
            pass
    return total


class FamilyWatch:
    """Polls a tracer process and its helper processes (the parsing process, named tracer-parse)
    until the tracer exits: each one's peak VmHWM and CPU time, their sum (the whole-run memory a
    user sees), and the tracer's CPU time at the moments a target child (e.g. wrk under `tracer run`)
    was first and last seen - the tracer's CPU while the target ran."""

    def __init__(self, pid: int, interval: float = 0.05, target_comm: str | None = None):
        self.pid = pid
        self.target_comm = target_comm
        self.hwm_kb: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.names: dict[int, str] = {pid: "tracer"}
        self.target_span: list[float] = []     # tracer CPU when the target was first / last seen
        self.helper_span: list[float] = []     # helpers' CPU at the same moments
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._t.start()

    def _run(self, interval):
        while not self._stop.is_set():
            pids = [self.pid]
            target_alive = False
            for c in children(self.pid):
                n = comm(c)
                if n in HELPERS:
                    pids.append(c)
                    self.names[c] = n
                elif self.target_comm and n == self.target_comm:
                    target_alive = True
            for p in pids:
                try:
                    self.hwm_kb[p] = max(self.hwm_kb.get(p, 0), status_kb(p, "VmHWM"))
                    self.cpu[p] = cpu_seconds(p)
                except (OSError, ValueError, IndexError):
                    if p == self.pid:
                        return
            if target_alive:
                t, h = self.cpu.get(self.pid, 0.0), self.helper_cpu
                if not self.target_span:
                    self.target_span, self.helper_span = [t, t], [h, h]
                self.target_span[1], self.helper_span[1] = t, h
            time.sleep(interval)

    @property
    def helper_cpu(self) -> float:
        return sum(c for p, c in self.cpu.items() if p != self.pid)

    @property
    def tracer_cpu(self) -> float:
        return self.cpu.get(self.pid, 0.0)

    @property
    def total_hwm_kb(self) -> int:
        return sum(self.hwm_kb.values())

    def stop(self):
        self._stop.set()
        self._t.join(2)


def load_line() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.1f} {b:.1f} {c:.1f}"



def tracer_summary(path) -> dict:
    """The --summary-json file of a finished tracer, plus its losses line as text under "losses"."""
    s = read_summary(path)
    s["losses"] = losses(s)
    return s


def logs(out_dir) -> list[Path]:
    return sorted(Path(out_dir).glob("*.jsonl"))
