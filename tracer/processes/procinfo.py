"""What /proc says about a process. Everything here is read as root from a process the user may
control: values are bounded in size and never trusted as paths to open outside /proc."""

from __future__ import annotations

import os
from dataclasses import dataclass

CMDLINE_MAX = 4096          # bytes of /proc/PID/cmdline kept
SHELLS = frozenset({"bash", "zsh", "fish", "sh", "dash", "ksh", "mksh", "ksh93", "tcsh", "csh",
                    "ash", "busybox", "yash", "posh", "elvish", "nu", "xonsh"})


@dataclass(frozen=True)
class Stat:
    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    tty_nr: int
    tpgid: int
    start_time: int         # clock ticks after boot


def read_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return None
    try:
        head, rest = raw.rsplit(b")", 1)
        comm = head.split(b"(", 1)[1].decode("utf-8", "replace")
        f = rest.split()
        return Stat(pid, comm, f[0].decode(), int(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[5]),
                    int(f[19]))
    except (IndexError, ValueError):
        return None


def read_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(CMDLINE_MAX + 1)
    except OSError:
        return []
    cut = len(raw) > CMDLINE_MAX
    raw = raw[:CMDLINE_MAX]
    args = [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")] if raw else []
    if cut and args:
        args[-1] += "…"
    return args


def read_exe(pid: int) -> str:
    """The executable's path as the process sees it ('' when unreadable)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def read_environ(pid: int) -> dict[str, str]:
    """The process' environment as it was at exec (empty when unreadable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read(1 << 20)
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    return env


def children(pid: int) -> list[int]:
    """Direct child processes (thread-group leaders whose parent is `pid`)."""
    out: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.update(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return sorted(out)


def alive(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and st.state not in ("Z", "X")


def is_job_control_shell(pid: int, argv: list[str] | None = None) -> bool:
    """A shell that (probably) runs jobs with job control: it waits for its children with
    WUNTRACED, so a child the kernel side stops would show up as a stopped job ("[1]+ Stopped")
    and lose the terminal. Interactive shells do this; scripts do not.

    Seen from outside: a known shell that leads its own process group on a terminal (what a
    job-control shell makes itself), or one started interactively (-i, or no script operand)."""
    st = read_stat(pid)
    if st is None:
        return False
    argv = read_cmdline(pid) if argv is None else argv
    names = {st.comm}
    if argv:
        names.add(os.path.basename(argv[0]).lstrip("-"))
    if not names & SHELLS:
        return False
    if st.tty_nr and st.pgrp == pid:
        return True
    args = argv[1:]
    if any(a.startswith("-") and not a.startswith("--") and "i" in a[1:] for a in args):
        return True
    # a login or no-operand shell reading its terminal
    return bool(st.tty_nr) and not any(not a.startswith("-") for a in args) and "-c" not in args
