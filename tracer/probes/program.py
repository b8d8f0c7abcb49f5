"""The BPF program tracer runs (bpf/tracer.bpf.c): its programs and their types, the maps user space
uses, and `Program`, what every way of loading it hands to the next steps.

Loading has two backends, both `Program`s: the cached-bytecode loader (tracer/probes/load.py,
bytecode compiled once by BCC in an isolated child) and BCC in this process (tracer/probes/compile.py,
the fallback). Either way the result is a set of kernel objects - one fd per program, one fd per
map - and everything after loading works on those fds alone: attaching (tracer/probes/attach.py),
reading the ring buffer and the drop counters (tracer/capture/ring.py), reading or writing any map
(tracer.libbpf.map_lookup / map_update / map_delete on `map_fd(name)`).
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum

from tracer.probes.kheaders import HeaderChoice


class ProgType(IntEnum):
    """BPF program types (enum bpf_prog_type) and how a program of the type is attached."""
    KPROBE = 2          # uprobes and uretprobes: perf_event_open on the uprobe PMU
    TRACEPOINT = 5      # perf_event_open(PERF_TYPE_TRACEPOINT, the tracepoint's id)


@dataclass(frozen=True)
class ProgramSpec:
    """One program of bpf/tracer.bpf.c. Its C function must not be named with BCC's kprobe__ /
    tracepoint__ prefixes: BCC attaches those by itself when it compiles, and tracer attaches
    every program itself (tracer/probes/attach.py), for the pids it traces."""
    name: str                       # the C function in bpf/tracer.bpf.c
    type: ProgType = ProgType.KPROBE
    tracepoint: str = ""            # "category/name" for TRACEPOINT programs, e.g. "sched/sched_process_exec"


# TLS function -> (program run at its entry, program run at its return)
UPROBES = {
    "SSL_read": ("probe_read_enter", "probe_read_return"),
    "SSL_write": ("probe_write_enter", "probe_write_return"),
    "SSL_read_ex": ("probe_read_ex_enter", "probe_read_return"),
    "SSL_write_ex": ("probe_write_ex_enter", "probe_write_return"),
}
# TLS function whose entry ends a connection -> its program
ENTRY_ONLY = {"SSL_free": "probe_free"}

# The process-tree section (following a traced process' children): programs on the tracepoints of
# process creation, exec and exit, and the return of libc's fork() (a uretprobe, per process).
PROCESS_TRACEPOINTS = {
    "proc_newtask": "task/task_newtask",
    "proc_exec": "sched/sched_process_exec",
    "proc_exit": "sched/sched_process_exit",
}
FORK_RETURN = "proc_fork_return"

PROGRAMS: tuple[ProgramSpec, ...] = tuple(
    ProgramSpec(name) for name in sorted({p for pair in UPROBES.values() for p in pair}
                                         | set(ENTRY_ONLY.values()) | {FORK_RETURN})) + tuple(
    ProgramSpec(name, ProgType.TRACEPOINT, tp) for name, tp in sorted(PROCESS_TRACEPOINTS.items()))
PROGRAM_NAMES = tuple(p.name for p in PROGRAMS)

# Maps user space reads or writes by name (the program's other maps are internal to it).
MAP_NAMES = ("events", "active", "offsets", "drops",
             "cred_layout", "target_ids",     # the credential guard's (tracer/probes/kcreds.py)
             "procs", "follow", "cgroups")    # following process trees (tracer/processes/kernel.py)
REQUIRED_MAPS = ("events", "drops")     # the ring buffer and the loss counters

# where tracepoints (and uprobe events) are found
TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

# enum bpf_map_type values tracer looks at
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21
BPF_MAP_TYPE_RINGBUF = 27
PERCPU_MAP_TYPES = frozenset({BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
                              BPF_MAP_TYPE_LRU_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE})


def spec(name: str) -> ProgramSpec:
    for p in PROGRAMS:
        if p.name == name:
            return p
    raise KeyError(f"no BPF program {name!r} in bpf/tracer.bpf.c")


@dataclass(frozen=True)
class MapInfo:
    """A map's definition, as BPF_OBJ_GET_INFO_BY_FD reports it."""
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


class Program(ABC):
    """The loaded BPF program: an fd per program and per map, until close().

    Backends fill `prog_fds` and `maps` in their constructor and say there where the program came
    from (`backend`, `cache_hit`, `load_seconds`, `header_choice`)."""

    backend: str                         # "cached bytecode" or "bcc"
    cache_hit: bool = False              # the bytecode came from the cache (no compile this time)
    load_seconds: float = 0.0            # compile (if any) + load, wall time
    header_choice: HeaderChoice          # the kernel headers the bytecode was compiled against
    ring_pages: int                      # size of the events ring buffer in pages

    def __init__(self) -> None:
        self.prog_fds: dict[str, int] = {}
        self.maps: dict[str, tuple[int, MapInfo]] = {}
        self.closed = False

    def prog_fd(self, name: str) -> int:
        return self.prog_fds[name]

    def map_fd(self, name: str) -> int:
        return self.maps[name][0]

    def map_info(self, name: str) -> MapInfo:
        return self.maps[name][1]

    @abstractmethod
    def close(self) -> None:
        """Release the programs and maps (attachments made from them are closed separately)."""


# -- map references inside instructions ---------------------------------------------------------
# A map is referenced by a two-slot ld_imm64 (opcode BPF_LD|BPF_IMM|BPF_DW) whose src_reg says
# BPF_PSEUDO_MAP_FD or BPF_PSEUDO_MAP_VALUE and whose imm is the map's fd in the loading process.

BPF_LD_IMM64 = 0x18
BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2
_MAP_REFS = (BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE)


def _map_refs(insns: bytes | bytearray):
    for i in range(0, len(insns) - 7, 8):
        if insns[i] == BPF_LD_IMM64 and (insns[i + 1] >> 4) in _MAP_REFS:
            yield i, struct.unpack_from("<i", insns, i + 4)[0]


def referenced_map_fds(insns: bytes) -> set[int]:
    """The map fds an instruction stream refers to."""
    return {fd for _, fd in _map_refs(insns)}


def patch_map_fds(insns: bytes, fdmap: dict[int, int]) -> bytes:
    """The instructions with every map reference moved from the compiling process' fds to ours."""
    code = bytearray(insns)
    for i, old in list(_map_refs(code)):
        if old not in fdmap:
            raise ValueError(f"instruction {i // 8} references map fd {old}, not in the cache entry")
        struct.pack_into("<i", code, i + 4, fdmap[old])
    return bytes(code)
