"""Own code vs libbpf on the BPF path: what each costs in load time, tracer memory and ring throughput.

  load      creating the maps and loading the programs of the cached bytecode entry: with raw bpf(2)
            syscalls written here (the hand-written alternative) vs libbpf's bpf_map_create / bpf_prog_load
            (tracer/libbpf.py, what tracer does); median of --loads alternating runs, same process.
  RSS       VmRSS / VmHWM of a fresh process that imports the loader, loads the program with the
            default 8 MB ring and opens the ring with each reader (the tracer process minus parsing):
            libbpf maps the ring's data area twice, the reader here once.
  ring      records/s and MB/s (payload) of draining a full ring with each reader - a Python reader
            of its own mapping of the ring (MappedRing here, x86-64 only) vs libbpf's
            ring_buffer__consume (capture/ring.py, what tracer uses) - with a GIL-holding Python callback
            that queues the record's bytes (what Capture.feed did under the in-process worker); the
            ring (64 MB) is filled by a TLS pump while nobody consumes, then drained and timed (wall
            clock, and the draining thread's CPU time, which a busy machine disturbs less), readers
            taking turns on the same ring, for small (64 B writes) and large (16 KiB writes) records.
  drain     the same fills drained the way deferred parsing does (capture/ring.py drain -> the spool,
            capture/spool.py): MappedRing.drain (own mapping, no call or copy per record, one pwritev
            per batch) vs Ring.drain (libbpf's reader, records collected per pass, then the same
            writes); records per CPU-second of the draining thread.

    .venv/bin/python bench/bpf_loader.py [--loads 7] [--rounds 5]

Needs root. Prints the machine line (with the load average) first.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mapped_ring import MappedRing  # noqa: E402
from _util import ROOT, machine  # noqa: E402

from tracer import libbpf  # noqa: E402
from tracer.capture import event as ev  # noqa: E402
from tracer.capture.ring import Ring  # noqa: E402
from tracer.probes import bpfcache, load  # noqa: E402
from tracer.probes.program import patch_map_fds  # noqa: E402
from tracer.testing.bpf import Traced, pump_round, start_pump, tls_objects  # noqa: E402

# -- the hand-written loader, for comparison: bpf(2) through libc's syscall() -------------------

_NR_BPF = {"x86_64": 321, "aarch64": 280}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr) -> int:
    r = _libc.syscall(ctypes.c_long(_NR_BPF[platform.machine()]), ctypes.c_long(cmd), attr,
                      ctypes.c_long(len(attr)))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def own_map_create(m: dict) -> int:
    a = ctypes.create_string_buffer(72)
    struct.pack_into("<IIIII", a, 0, m["type"], m["key_size"], m["value_size"], m["max_entries"], m["flags"])
    name = m["name"].encode()[:15]
    a[28:28 + len(name)] = name
    return _bpf(0, a)                                             # BPF_MAP_CREATE


def own_prog_load(ptype: int, insns: bytes, name: str, license: str, kv: int) -> int:
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    a = ctypes.create_string_buffer(72)
    struct.pack_into("<IIQQIIQII", a, 0, ptype, len(insns) // 8, ctypes.addressof(code),
                     ctypes.addressof(lic), 0, 0, 0, kv, 0)
    nm = name.encode()[:15]
    a[48:48 + len(nm)] = nm
    return _bpf(5, a)                                             # BPF_PROG_LOAD


def load_once(entry: dict, how: str) -> float:
    """Create the maps and load the programs of `entry` (sequentially, both ways); seconds."""
    fds: list[int] = []
    t0 = time.perf_counter()
    try:
        fdmap = {}
        for m in entry["maps"]:
            if how == "own":
                fd = own_map_create(m)
            else:
                fd = libbpf.map_create(m["type"], m["key_size"], m["value_size"], m["max_entries"],
                                       m["flags"], m["name"])
            fds.append(fd)
            fdmap[m["fd"]] = fd
        kv = entry.get("kern_version") or libbpf.kernel_version_code()
        for name, p in entry["programs"].items():
            insns = patch_map_fds(base64.b64decode(p["insns"]), fdmap)
            if how == "own":
                fds.append(own_prog_load(p["type"], insns, name, p["license"], kv))
            else:
                fds.append(libbpf.prog_load(p["type"], insns, name, p["license"], kern_version=kv))
        return time.perf_counter() - t0
    finally:
        for fd in fds:
            os.close(fd)


def bench_load(n: int) -> dict:
    entry, _ = bpfcache.get_entry(8, 1 << 20)
    load_once(entry, "libbpf")                                    # warm both paths up
    load_once(entry, "own")
    times = {"own": [], "libbpf": []}
    for i in range(n):
        for how in (("own", "libbpf") if i % 2 else ("libbpf", "own")):
            times[how].append(load_once(entry, how))
    return {k: statistics.median(v) for k, v in times.items()}


# -- ring readers --------------------------------------------------------------------------------

READERS = {"libbpf": lambda fd, size, cb: Ring(fd, cb), "mapped": MappedRing}


def open_reader(name: str, prog, callback):
    return READERS[name](prog.map_fd("events"), prog.map_info("events").max_entries, callback)


# -- memory -------------------------------------------------------------------------------------

CHILD = r'''
import sys, json
from tracer.probes.load import load_program
p = load_program(8, fallback=False)
if sys.argv[1] == "mapped":
    sys.path.insert(0, sys.argv[2])
    from _mapped_ring import MappedRing
    r = MappedRing(p.map_fd("events"), p.map_info("events").max_entries, lambda b: None)
else:
    from tracer.capture.ring import Ring
    r = Ring(p.map_fd("events"), lambda b: None)
r.poll(0)
st = open("/proc/self/status").read()
kb = lambda k: int(st.split(k + ":")[1].split()[0])
print(json.dumps({"rss_kb": kb("VmRSS"), "hwm_kb": kb("VmHWM")}))
'''


LIBBPF_RSS = r'''
import ctypes
kb = lambda: int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
before = kb()
ctypes.CDLL("libbpf.so.1")
print(kb() - before)
'''


def libbpf_rss_kb() -> int:
    """What mapping libbpf.so.1 (and what it links) adds to a Python process' RSS."""
    out = subprocess.run([sys.executable, "-c", LIBBPF_RSS], capture_output=True, text=True, check=True)
    return int(out.stdout)


def bench_rss(reader: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, reader, str(Path(__file__).resolve().parent)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- ring throughput ----------------------------------------------------------------------------

def _turns(traced, rings: dict, wsize: int, total: int, rounds: int, work: Path, take, extra=None) -> dict:
    """The readers in `rings` take turns on the ring of `traced` (one program, one pump): per fill,
    the pump fills the ring while nobody reads, then `take(reader)` drains it (returns the records),
    timed by wall clock and by the draining thread's CPU; `extra()` adds figures to a run."""
    names = list(rings)
    pump, go = start_pump(work, total, wsize=wsize, rounds=rounds * len(names))
    runs: dict[str, list[dict]] = {r: [] for r in names}
    try:
        traced.approve(pump.pid)
        for mo, located in tls_objects(pump.pid, work / "lib"):
            traced.attach(pump.pid, mo.host_path, located)
        for i in range(rounds * len(names)):
            reader = names[i % len(names)]
            dropped_before = traced.drops()["events"]
            assert pump_round(pump, go, i) == total
            time.sleep(0.2)
            t0, c0 = time.perf_counter(), time.thread_time()
            n = take(rings[reader])
            run = {"records": n, "wall": time.perf_counter() - t0, "cpu": time.thread_time() - c0,
                   "dropped": traced.drops()["events"] - dropped_before}
            run.update(extra() if extra else {})
            runs[reader].append(run)
    finally:
        pump.kill()
        pump.wait()
    return runs


def bench_ring(readers: list[str], wsize: int, total: int, rounds: int, work: Path) -> dict:
    """Per reader: the best and the median drain over `rounds` fills, readers taking turns on the
    same ring, each timed by wall clock and by the draining thread's CPU."""
    inbox: list[bytes] = []                     # the callback queues each record's bytes, nothing more
    prog = load.load_program(64, fallback=False)
    traced = Traced(prog, inbox.append)             # its ring is libbpf's
    rings = {r: traced.ring if r == "libbpf" else open_reader(r, prog, inbox.append) for r in readers}

    def take(ring) -> int:
        inbox.clear()
        n = 0
        while k := ring.consume():
            n += k
        return n
    try:
        runs = _turns(traced, rings, wsize, total, rounds, work, take,
                      lambda: {"bytes": sum(len(b) - ev.HEADER_SIZE for b in inbox)})
    finally:
        for r in readers:
            if rings[r] is not traced.ring:
                rings[r].close()
        traced.close()
    out = {}
    for reader, rs in runs.items():
        rate = [x["records"] / x["wall"] for x in rs]
        cpu_rate = [x["records"] / max(x["cpu"], 1e-9) for x in rs]
        mbs = [x["bytes"] / x["wall"] / 1e6 for x in rs]
        out[reader] = {"records": rs[0]["records"], "best": max(rate), "median": statistics.median(rate),
                       "cpu_median": statistics.median(cpu_rate), "mb_best": max(mbs),
                       "mb_median": statistics.median(mbs), "dropped": sum(x["dropped"] for x in rs)}
    return out


def bench_drain(readers: list[str], wsize: int, total: int, rounds: int, work: Path) -> dict:
    """Per reader: drains of a full ring into a spool file, as deferred parsing does them."""
    import io

    from tracer.capture.ring import drain_reader
    from tracer.capture.spool import SpoolWriter, open_spool_file
    prog = load.load_program(64, fallback=False)
    traced = Traced(prog, lambda raw: None)         # attach + drop counters; its reader stays idle
    size = prog.map_info("events").max_entries
    rings = {r: drain_reader(prog.map_fd("events"), size, r) for r in readers}
    fd, where = open_spool_file(work / "spool")
    nr, nw = os.pipe()
    spool = SpoolWriter(fd, nw, max_backlog=1 << 40, where=where, stderr=io.StringIO())
    mark = [0]

    def take(ring) -> int:
        mark[0] = spool.written
        n = 0
        while k := ring.drain(spool)[0]:
            n += k
        return n

    def spooled() -> dict:
        spool.consumed = spool.written
        spool.punch()
        return {"bytes": spool.written - mark[0]}
    try:
        runs = _turns(traced, rings, wsize, total, rounds, work, take, spooled)
    finally:
        for r in rings.values():
            r.close()
        traced.close()
        for x in (fd, nr, nw):
            os.close(x)
    out = {}
    for reader, rs in runs.items():
        out[reader] = {"records": rs[0]["records"],
                       "cpu_median": statistics.median(x["records"] / max(x["cpu"], 1e-9) for x in rs),
                       "us_per_record": statistics.median(1e6 * x["cpu"] / max(x["records"], 1) for x in rs),
                       "spooled_per_record": statistics.median(x["bytes"] / max(x["records"], 1) for x in rs)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loads", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=5, help="ring fills drained by each reader")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    print(machine(), flush=True)
    readers = [r for r in sorted(READERS) if r == "libbpf" or platform.machine() == "x86_64"]

    t = bench_load(a.loads)
    print(f"load (8 maps + 7 programs, median of {a.loads}): own bpf(2) {t['own'] * 1000:.1f} ms, "
          f"libbpf {t['libbpf'] * 1000:.1f} ms", flush=True)

    print(f"libbpf.so.1 itself: +{libbpf_rss_kb()} kB RSS", flush=True)
    for reader in readers:
        m = bench_rss(reader)
        print(f"RSS after load + ring open ({reader} reader): VmRSS {m['rss_kb'] / 1024:.1f} MB, "
              f"VmHWM {m['hwm_kb'] / 1024:.1f} MB", flush=True)

    drains = ["mapped", "libbpf"] if platform.machine() == "x86_64" else ["libbpf"]
    for label, wsize, total in (("small records (64 B writes)", 64, 4_000_000),
                                ("large records (16 KiB writes)", 16384, 24_000_000)):
        with tempfile.TemporaryDirectory(prefix="bench-ring-") as d:
            res = bench_ring(readers, wsize, total, a.rounds, Path(d))
        for reader, r in res.items():
            print(f"ring, {label}, {reader}: {r['median']:,.0f} records/s median ({r['best']:,.0f} best), "
                  f"{r['cpu_median']:,.0f} records per CPU-second; {r['mb_median']:.0f} MB/s median "
                  f"({r['mb_best']:.0f} best); {r['records']:,} records a fill, {a.rounds} fills; "
                  f"dropped while filling: {r['dropped']}", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-drain-") as d:
            res = bench_drain(drains, wsize, total, a.rounds, Path(d))
        for reader, r in res.items():
            print(f"drain into the spool, {label}, {reader}: {r['cpu_median']:,.0f} records per CPU-second "
                  f"({r['us_per_record']:.2f} us of CPU a record, {r['spooled_per_record']:.0f} bytes spooled "
                  f"a record); {r['records']:,} records a fill, {a.rounds} fills", flush=True)
    print(machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
