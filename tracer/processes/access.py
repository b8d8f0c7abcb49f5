"""May the invoking user trace this process? The kernel's rule for ptrace, checked from /proc.

Reading a process' TLS plaintext is what ptrace would give its reader, so a process is traced for
a user only when its real, effective, saved and file-system uids all equal the user's uid, the
same for the gids, and it is dumpable: it has not changed credentials (setuid/setgid exec) and
not exec'd a file the user cannot read since its last exec. The kernel shows dumpability in the
owner of /proc/PID/status (the process' euid/egid when dumpable, root's otherwise). Root, and a
caller who passed --allow-other-users, may trace anything.
"""

from __future__ import annotations

import os


def _creds(pid: int):
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        raw = os.read(fd, 65536)
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
            state = (line.split() + ["?", "?"])[1]
    if not uids or not gids or len(uids) != 4 or len(gids) != 4:
        return None
    return uids, gids, (st.st_uid, st.st_gid), state


def may_trace(pid: int, uid: int, gid: int, *, allow_other_users: bool = False) -> tuple[bool, str]:
    """(True, "") when the user (uid, gid) may trace `pid`, else (False, why)."""
    c = _creds(pid)
    if c is None or c[3] in ("Z", "X"):
        return False, "the process is gone"
    uids, gids, owner, _ = c
    if uid == 0 or allow_other_users:
        return True, ""
    if uids[0] != uid:
        return False, f"it belongs to uid {uids[0]}, not to you (uid {uid})"
    if set(uids) != {uid}:
        return False, (f"it runs with uids {' '.join(map(str, uids))} (real, effective, saved, fs): "
                       "it exec'd a setuid program or changed its credentials")
    if set(gids) != {gid}:
        return False, (f"it runs with gids {' '.join(map(str, gids))} (real, effective, saved, fs): "
                       "it exec'd a setgid program or changed its credentials")
    if owner != (uids[1], gids[1]):
        return False, ("it is not dumpable (it changed credentials, exec'd a file you cannot read, "
                       "or asked not to be inspected)")
    return True, ""
