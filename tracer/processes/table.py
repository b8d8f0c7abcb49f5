"""The traced processes: who they are, how they relate, what was probed in each and what it logged.

One `Proc` per process tracer looked at (an exec starts no new entry: the process is the same,
its command line changes). The table gives the log records their `tracer.process` extras (pid,
command, parent chain) and the summary its per-process accounting and tree.

A record is attributed to the program that made it, not to whatever the process runs when the
record is built: an exec keeps the earlier program's command line with the time it ended (the exec
record's capture time), and a record takes the program that ran at its first byte. A record built
after its process exec'd another program - a setuid one tracer must not trace, say - therefore
never carries the later program's command line.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from tracer.processes import procinfo
from tracer.sinks.redact import redact_argv

COMMAND_SHOWN = 160          # characters of a command line in the summary
COMMAND_LOGGED = 2048        # ... in a log record
CHAIN_MAX = 32               # ancestors listed in a record
EARLIER_KEPT = 16            # earlier programs of one process remembered for attribution


def short_command(argv: list[str], comm: str = "", limit: int = 60) -> str:
    """A command as a chain shows it: program names without their directories ('python3
    agent.py → claude -p hi')."""
    if not argv:
        return command_text(argv, comm, limit)
    short = [os.path.basename(argv[0]) or argv[0]]
    for a in argv[1:]:
        short.append(os.path.basename(a) if a.startswith("/") and len(short) == 1 else a)
    return command_text(short, comm, limit)


def command_text(argv: list[str], comm: str = "", limit: int = COMMAND_SHOWN) -> str:
    text = " ".join(argv) if argv else (f"[{comm}]" if comm else "?")
    text = "".join(c if c.isprintable() else (" " if c.isspace() else "?") for c in text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


# -- the table --------------------------------------------------------------------------------------

@dataclass
class Probed:
    path: str                 # in the process' view
    reach: str                # how tracer reached it
    library: str
    methods: dict
    mapped: bool              # seen in the process' mappings (else loaded later, maybe never)
    dev: int = 0
    inode: int = 0
    own_copy: bool = False    # not the file tracer itself sees at that path (mount namespace)
    deleted: bool = False     # mapped, then deleted (reached through /proc/PID/map_files)

    def where(self) -> str:
        if self.deleted:
            return f"{self.path} (deleted)"
        if not self.own_copy:
            return self.path
        return (f"{self.path} [its mount namespace's file: device {os.major(self.dev)}:"
                f"{os.minor(self.dev)} inode {self.inode}]")


@dataclass(frozen=True)
class Image:
    """A program a process ran before its last exec(s), and when it stopped running it."""
    argv: tuple
    exe: str
    comm: str
    until_ns: int             # CLOCK_MONOTONIC ns of the exec that replaced it


@dataclass
class Proc:
    pid: int
    ppid: int = 0
    argv: list[str] = field(default_factory=list)     # redacted
    exe: str = ""
    comm: str = ""
    start_time: int = 0                                 # /proc/PID/stat start time (ticks)
    origin: str = ""          # "command", "attached", "child", "cgroup", "descendant"
    traced: bool = True
    why_not: str = ""         # when not traced: why
    alive: bool = True
    seen_ns: int = field(default_factory=time.monotonic_ns)
    exit_ns: int = 0
    execs: int = 0
    stops: int = 0            # times the kernel side held it before it ran
    late: list[str] = field(default_factory=list)      # probed after it started running: why
    unprobed: str = ""        # ran (and ended) before tracer could probe it, though it might have used TLS
    shares_memory: bool = False                         # vfork/CLONE_VM child before exec
    files: dict = field(default_factory=dict)           # (dev, inode) -> Probed
    looked_at: set = field(default_factory=set)         # (dev, inode) of files already examined
    problems: list[str] = field(default_factory=list)  # TLS code that could not be probed
    notes: list[str] = field(default_factory=list)
    pairs: int = 0
    fork_keys: set = field(default_factory=set)         # libc files with the fork() return probe
    pin: object = None        # tracer.access.PinnedProcess: its pidfd, from before it was admitted
    earlier: list = field(default_factory=list)         # Image of each earlier program, oldest first
    _record: dict | None = None
    _earlier_records: dict = field(default_factory=dict)

    def image_at(self, ts_ns: int) -> tuple[int, list, str, str]:
        """(index, argv, exe, comm) of the program that ran at ``ts_ns`` (CLOCK_MONOTONIC; 0: now).
        Index -1 is the current program."""
        if ts_ns:
            for i, im in enumerate(self.earlier):
                if ts_ns < im.until_ns:
                    return i, list(im.argv), im.exe, im.comm
        return -1, self.argv, self.exe, self.comm

    @property
    def command(self) -> str:
        return command_text(self.argv, self.comm)

    @property
    def tls(self) -> list[Probed]:
        return list(self.files.values())

    def tls_status(self) -> str:
        """What was found: probed libraries, or why nothing was."""
        mapped = [p for p in self.files.values() if p.mapped]
        pending = sorted({p.path for p in self.files.values() if not p.mapped})
        parts = []
        if mapped:
            parts.append(", ".join(f"{p.library} in {p.where()}" for p in mapped) + " (probed)")
        elif pending and self.pairs:
            parts.append(", ".join(f"{p.library} in {p.where()}" for p in self.files.values())
                         + " (probed; loaded after start)")
        elif pending:
            parts.append("no TLS library loaded (probes ready on " + ", ".join(pending) + ")")
        elif self.shares_memory:
            parts.append("shares its parent's memory and probes (vfork) until exec")
        else:
            parts.append("no TLS library in its mappings")
        if self.problems:
            parts.append("NOT PROBED: " + "; ".join(self.problems))
        return "; ".join(parts)


class ProcessTable:
    def __init__(self):
        self.procs: dict[int, Proc] = {}
        self.gone: list[Proc] = []            # earlier processes whose pid was reused
        self.lock = threading.RLock()

    def add(self, pid: int, *, ppid: int = 0, origin: str = "", traced: bool = True,
            why_not: str = "", read: bool = True) -> Proc:
        with self.lock:
            old = self.procs.get(pid)
            st = procinfo.read_stat(pid) if read else None
            if old is not None and (not old.alive or (st and old.start_time and st.start_time != old.start_time)):
                self.gone.append(old)
                old = None
            if old is not None:
                return old
            p = Proc(pid, ppid=ppid or (st.ppid if st else 0), origin=origin, traced=traced,
                     why_not=why_not)
            if st:
                p.start_time, p.comm = st.start_time, st.comm
            if read:
                self.reread(p)
            self.procs[pid] = p
            return p

    def exec_(self, p: Proc, ts_ns: int) -> None:
        """``p`` exec'd a new program at ``ts_ns`` (0: unknown, taken as now): keep the earlier one
        for the records it made, then read the new one."""
        until = ts_ns or time.monotonic_ns()
        with self.lock:
            if p.argv or p.exe or p.comm:
                p.earlier.append(Image(tuple(p.argv), p.exe, p.comm, until))
                del p.earlier[:-EARLIER_KEPT]
            self.reread(p)
            for q in self.procs.values():       # its descendants' chains show it differently now
                q._record = None
                q._earlier_records.clear()

    def reread(self, p: Proc) -> None:
        """Command line, executable and name from /proc (after start and after each exec)."""
        argv = procinfo.read_cmdline(p.pid)
        if argv:
            p.argv = redact_argv(argv)
        p.exe = procinfo.read_exe(p.pid) or p.exe
        st = procinfo.read_stat(p.pid)
        if st:
            p.comm = st.comm
        p._record = None

    def get(self, pid: int) -> Proc | None:
        return self.procs.get(pid)

    def all(self) -> list[Proc]:
        with self.lock:
            return sorted(self.gone + list(self.procs.values()), key=lambda p: p.seen_ns)

    def chain(self, pid: int) -> list[Proc]:
        """The process and its traced ancestors, root first."""
        out: list[Proc] = []
        seen: set[int] = set()
        p = self.procs.get(pid)
        while p is not None and p.pid not in seen and len(out) < CHAIN_MAX:
            out.append(p)
            seen.add(p.pid)
            p = self.procs.get(p.ppid)
        return out[::-1]

    def record_info(self, pid: int, ts_ns: int = 0) -> dict | None:
        """The `tracer.process` extras of a log record made by `pid` whose first byte was captured
        at ``ts_ns`` (CLOCK_MONOTONIC ns; 0: the processes as they are now). Each process in it is
        shown with the program it ran at that time."""
        p = self.procs.get(pid)
        if p is None:
            return None
        chain = self.chain(pid)
        images = [c.image_at(ts_ns) for c in chain]
        key = tuple(i for i, *_ in images)
        if key == (-1,) * len(key) and p._record is not None:
            return p._record
        cached = p._earlier_records.get(key)
        if cached is not None:
            return cached
        _i, argv, exe, comm = images[-1]
        info = {
            "pid": p.pid,
            "ppid": p.ppid,
            "command": command_text(argv, comm, COMMAND_LOGGED),
            "exe": exe,
            "chain": [{"pid": c.pid, "command": command_text(a, m, COMMAND_LOGGED)}
                      for c, (_, a, _e, m) in zip(chain, images)],
            "chain_text": " → ".join(short_command(a, m) for (_, a, _e, m) in images),
        }
        if key == (-1,) * len(key):
            p._record = info
        else:
            if len(p._earlier_records) > 64:
                p._earlier_records.clear()
            p._earlier_records[key] = info
        return info

    # -- accounting ---------------------------------------------------------------------------
    def summary(self) -> list[dict]:
        out = []
        for p in self.all():
            out.append({
                "pid": p.pid, "ppid": p.ppid, "command": p.command, "exe": p.exe,
                "origin": p.origin, "traced": p.traced, "why_not": p.why_not, "alive": p.alive,
                "tls": [{"path": f.path, "library": f.library, "mapped": f.mapped,
                         "device": f"{os.major(f.dev)}:{os.minor(f.dev)}", "inode": f.inode,
                         "own_copy": f.own_copy, "deleted": f.deleted, "functions": sorted(f.methods)}
                        for f in p.files.values()],
                "tls_status": p.tls_status() if p.traced else f"not traced: {p.why_not}",
                "problems": list(p.problems), "late": list(p.late), "unprobed": p.unprobed,
                "notes": list(p.notes),
                "pairs_logged": p.pairs, "execs": p.execs, "stops": p.stops,
            })
        return out

    def tree_lines(self) -> list[str]:
        """The traced processes as an indented tree (pid, command, TLS, pairs)."""
        procs = self.all()
        by_pid = {p.pid: p for p in procs}
        kids: dict[int, list[Proc]] = {}
        roots: list[Proc] = []
        for p in procs:
            if p.ppid in by_pid and by_pid[p.ppid] is not p and by_pid[p.ppid].seen_ns <= p.seen_ns:
                kids.setdefault(p.ppid, []).append(p)
            else:
                roots.append(p)
        lines: list[str] = []

        def walk(p: Proc, prefix: str, last: bool, top: bool):
            branch = "" if top else ("└─ " if last else "├─ ")
            what = p.tls_status() if p.traced else f"not traced: {p.why_not}"
            extra = []
            if p.stops:
                extra.append("held until probed" + (f" {p.stops}×" if p.stops > 1 else ""))
            if p.late:
                extra.append("probed late: " + "; ".join(dict.fromkeys(p.late)))
            if not p.alive:
                extra.append("exited")
            lines.append(f"{prefix}{branch}{p.pid} {command_text(p.argv, p.comm, 80)} — {what}; "
                         f"pairs logged: {p.pairs}" + (f" ({', '.join(extra)})" if extra else ""))
            sub = kids.get(p.pid, [])
            for i, k in enumerate(sub):
                walk(k, prefix + ("" if top else ("   " if last else "│  ")), i == len(sub) - 1, False)

        for r in roots:
            walk(r, "  ", True, True)
        return lines
