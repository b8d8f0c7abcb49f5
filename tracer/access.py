"""May the invoking user trace this process? The kernel's ptrace rule, checked from /proc, and pids
pinned with a pidfd so that the answer stays about the same process.

Reading a process' TLS plaintext is what ``ptrace`` would give its reader, so tracer applies the
rule the kernel applies to ``PTRACE_ATTACH`` (``__ptrace_may_access``) for a caller without
CAP_SYS_PTRACE, with the invoking user as the caller:

  * the target's real, effective, saved and file-system uids all equal the user's uid, and
  * its real, effective, saved and file-system gids all equal the user's gid, and
  * the target is *dumpable*: it has not changed credentials (setuid/setgid exec, or dropping
    privileges) and not exec'd a file the user cannot read since its last exec, and has not made
    itself non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``; ssh-agent, gpg-agent do).

Dumpability is not shown in /proc/PID/status; the kernel shows it in the owner of the files under
/proc/PID (``task_dump_owner()``): they belong to the process' euid/egid when it is dumpable, and to
root (of its user namespace) when it is not. So `may_trace()` stats /proc/PID/status.

The invoking user root (tracer run directly as root) may trace anything, as root may ptrace
anything; so may any caller given ``--allow-other-users`` (that option is the caller saying so).

Pids are reused. `PinnedProcess` holds a pidfd (``pidfd_open``) taken *before* the check, and the
process' start time; `PinnedProcess.same()` after the attach says whether that very process is still
alive (a pidfd becomes readable when its process exits, so a live pinned process means the pid was
never free to be reused in between).
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass

from tracer.invoker import InvokingUser


@dataclass(frozen=True)
class ProcCreds:
    uids: tuple[int, int, int, int]     # real, effective, saved, fs
    gids: tuple[int, int, int, int]
    status_owner: tuple[int, int]       # owner of /proc/PID/status: (euid, egid) iff dumpable
    state: str

    @property
    def dumpable(self) -> bool:
        return self.status_owner == (self.uids[1], self.gids[1])


def read_creds(pid: int) -> ProcCreds | None:
    """The process' credentials from /proc, or None when it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        raw = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            raw += chunk
    except OSError:
        return None
    finally:
        os.close(fd)
    uids = gids = None
    state = "?"
    for line in raw.decode("ascii", "replace").splitlines():
        if line.startswith("Uid:"):
            uids = tuple(int(x) for x in line.split()[1:5])
        elif line.startswith("Gid:"):
            gids = tuple(int(x) for x in line.split()[1:5])
        elif line.startswith("State:"):
            state = line.split()[1] if len(line.split()) > 1 else "?"
    if uids is None or gids is None or len(uids) != 4 or len(gids) != 4:
        return None
    return ProcCreds(uids, gids, (st.st_uid, st.st_gid), state)


def may_trace(pid: int, user: InvokingUser, *, allow_other_users: bool = False) -> tuple[bool, str]:
    """(True, "") when ``user`` may trace ``pid`` under the ptrace rule above, else (False, why)."""
    c = read_creds(pid)
    if c is None or c.state in ("Z", "X"):
        return False, f"no such process: {pid}"
    if user.is_root or allow_other_users:
        return True, ""
    if c.uids[0] != user.uid:
        return False, f"pid {pid} belongs to uid {c.uids[0]}, not to you ({user.describe()})"
    if set(c.uids) != {user.uid}:
        return False, (f"pid {pid} runs with uids {' '.join(map(str, c.uids))} (real, effective, saved, "
                       f"fs): not all yours ({user.describe()})")
    if set(c.gids) != {user.gid}:
        return False, (f"pid {pid} runs with gids {' '.join(map(str, c.gids))} (real, effective, saved, "
                       f"fs), not all {user.gid} (your group)")
    if not c.dumpable:
        return False, (f"pid {pid} is not dumpable (it changed credentials, exec'd a file you cannot "
                       "read, or asked not to be inspected): the kernel would not let you ptrace it")
    return True, ""


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return int(raw.rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class PinnedProcess:
    """A pid held by a pidfd (taken before any check about it) plus its start time."""

    def __init__(self, pid: int):
        self.pid = pid
        self.fd = os.pidfd_open(pid)          # ProcessLookupError when there is no such process
        self.start = start_time(pid)

    def alive(self) -> bool:
        if self.fd < 0:
            return False
        r, _, _ = select.select([self.fd], [], [], 0)
        return not r                           # readable: the process has exited

    def same(self) -> bool:
        """The pinned process still lives, and the pid still names it."""
        return self.alive() and self.start is not None and start_time(self.pid) == self.start

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
