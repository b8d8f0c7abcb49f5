"""Put tracer's BPF program into the kernel: `load_program()` gives a `Program` (tracer/probes/program.py).

Normally from the bytecode cache (tracer/probes/bpfcache.py; a miss compiles once in BCC's isolated
child): `LoadedProgram` creates each map with the cached definition and loads each program's cached
instructions - map references patched from the compiling process' fds to the new ones - through
libbpf (tracer/libbpf.py). No BCC and no LLVM in this process. When anything on that path fails,
BCC compiles and loads the program in this process instead (`compile.BccProgram`), with a note.
"""

from __future__ import annotations

import base64
import errno
import os
import sys
import threading
import time

from tracer import libbpf, trust
from tracer.errors import TracerError
from tracer.probes import bpfcache
from tracer.probes.compile import BccProgram
from tracer.probes.kheaders import HeaderChoice
from tracer.probes.program import MapInfo, Program, patch_map_fds

NOT_ROOT = "tracer needs root (or CAP_BPF + CAP_PERFMON) to load eBPF programs; run it with sudo"


class LoadedProgram(Program):
    """The program recreated from a cache entry (see bpfcache.py)."""

    backend = "cached bytecode"

    def __init__(self, entry: dict, *, cache_hit: bool = True, started: float | None = None):
        """`started`: when getting the entry began (time.monotonic()), so that load_seconds
        includes a compile on a cache miss."""
        super().__init__()
        t0 = time.monotonic() if started is None else started
        self.cache_hit = cache_hit
        hc = entry.get("header_choice") or {}
        self.header_choice = HeaderChoice(hc.get("source", "cache"), hc.get("path"),
                                          hc.get("detail", "compiled earlier"))
        self.ring_pages = int(entry["ring_pages"])
        self._map_fds: list[int] = []
        try:
            fdmap: dict[int, int] = {}
            by_old: dict[int, tuple[int, MapInfo]] = {}
            for m in entry["maps"]:
                info = MapInfo(int(m["type"]), int(m["key_size"]), int(m["value_size"]),
                               int(m["max_entries"]), int(m.get("flags", 0)), m.get("name", ""))
                fd = libbpf.map_create(info.type, info.key_size, info.value_size, info.max_entries,
                                       info.flags, info.name)
                self._map_fds.append(fd)
                fdmap[int(m["fd"])] = fd
                by_old[int(m["fd"])] = (fd, info)
            for name, old in entry["roles"].items():
                self.maps[name] = by_old[int(old)]
            self._load_programs(entry, fdmap)
        except BaseException:
            self.close()
            raise
        self.load_seconds = time.monotonic() - t0

    def _load_programs(self, entry: dict, fdmap: dict[int, int]) -> None:
        """Load every program. The verifier's work (~170k instructions for each return probe) is
        CPU-bound in the calling thread and ctypes drops the GIL, so the programs are loaded on up
        to one thread per CPU: wall time ~ the largest one."""
        kv = entry.get("kern_version") or None
        jobs = []
        for name, p in entry["programs"].items():
            insns = patch_map_fds(base64.b64decode(p["insns"]), fdmap)
            jobs.append((len(insns), name, insns, int(p["type"]), p.get("license", "GPL")))
        jobs.sort(reverse=True)                 # biggest first
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker():
            while True:
                with lock:
                    if not jobs or errors:
                        return
                    _, name, insns, ptype, lic = jobs.pop(0)
                try:
                    fd = libbpf.prog_load(ptype, insns, name, lic, kern_version=kv)
                except BaseException as e:      # noqa: BLE001 - re-raised below
                    with lock:
                        errors.append(e)
                    return
                with lock:
                    self.prog_fds[name] = fd

        n = max(1, min(len(jobs), os.cpu_count() or 1, 4))
        threads = [threading.Thread(target=worker, name="tracer-bpf-load", daemon=True)
                   for _ in range(n - 1)]
        for t in threads:
            t.start()
        worker()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in list(self.prog_fds.values()) + self._map_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.prog_fds.clear()
        self._map_fds.clear()


def load_program(ring_buffer_mb: int = 8, copy_limit: int = 1 << 20, *, stderr=None,
                 cache_dir=None, fallback: bool | None = None) -> Program:
    """tracer's BPF program, loaded: from the bytecode cache when possible (compiling once in the
    isolated child on a miss), else BCC in this process with a note on stderr.

    TRACER_BPF_LOADER=bcc forces BCC in-process; =cache forbids the fallback (errors are raised)."""
    stderr = stderr or sys.stderr
    if os.geteuid() != 0:
        raise TracerError(NOT_ROOT)
    trust.check_root_can_trust()
    mode = os.environ.get("TRACER_BPF_LOADER", "auto")
    t0 = time.monotonic()
    if mode == "bcc":
        return BccProgram(ring_buffer_mb, copy_limit, started=t0)
    if fallback is None:
        fallback = mode != "cache"
    try:
        entry, hit = bpfcache.get_entry(ring_buffer_mb, copy_limit, cache_dir=cache_dir)
        try:
            return LoadedProgram(entry, cache_hit=hit, started=t0)
        except (OSError, ValueError, KeyError) as e:
            if not hit or (isinstance(e, OSError) and e.errno == errno.EPERM):
                raise
            # a stale entry the kernel refuses: compile afresh once before giving up on the cache
            bpfcache.invalidate(ring_buffer_mb, copy_limit, cache_dir=cache_dir)
            entry, hit = bpfcache.get_entry(ring_buffer_mb, copy_limit, cache_dir=cache_dir)
            return LoadedProgram(entry, cache_hit=hit, started=t0)
    except TracerError:     # e.g. CompileError: in-process BCC would fail the same way
        raise
    except Exception as e:
        why = _describe(e)
        if not fallback:
            raise TracerError(f"loading the cached BPF program failed: {why}") from None
        print(f"tracer: the fast BPF loader failed ({why}); compiling with BCC in-process instead "
              "(slower start, more memory)", file=stderr)
        return BccProgram(ring_buffer_mb, copy_limit, started=t0)


def _describe(e: BaseException) -> str:
    if isinstance(e, libbpf.VerifierError):
        tail = "\n".join(e.log.strip().splitlines()[-12:])
        return f"{e}; verifier log tail:\n{tail}"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f" ({e.filename})" if e.filename else "")
    return f"{type(e).__name__}: {e}"
