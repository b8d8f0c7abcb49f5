"""Who tracer works for - the invoking user - and doing file-system work as that user.

tracer runs as root on behalf of someone who is not. This module is the one place that decides who
that is, and every component asks it: the credentials `run` gives the command, the owner `attach`
checks targets against, the identity files are created with, what the summary reports.

The rule (`invoking_user()`):
  * tracer not running with root's effective uid: the process' own identity (nothing is done for
    anybody else, the kernel checks everything);
  * root without ``SUDO_UID``: root itself (uid 0);
  * root with ``SUDO_UID`` (sudo sets it, and ``SUDO_GID``): that uid and gid, with the supplementary
    groups of the passwd entry when there is one. A value that is not a plain decimal id, or that is
    ``(uid_t)-1`` (which ``setresuid`` reads as "leave unchanged"), is refused: guessing would mean
    acting as root for them.

Files as the user (`as_user()`): the calling *thread* gets the user's file-system uid and gid
(``setfsuid``/``setfsgid``) and supplementary groups (raw ``setgroups``: glibc's wrapper would change
every thread) for the duration of a ``with`` block, so the kernel's own permission checks decide what
may be created or read and new files belong to the user from the start. Changing the fs uid away from
0 also clears CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_CHOWN and the other file capabilities from the
thread's effective set (capabilities(7)); switching back restores them. Other threads - the ring
reader, the parser, the JSONL writer - keep root's credentials and are unaffected; a thread that
itself opens a file for the user must do so inside its own ``as_user()`` (the helpers in
tracer/userfiles.py do). Nothing here forks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import pwd
import re
import threading
from dataclasses import dataclass

from tracer.errors import TracerError

UID_MAX = 2**32 - 2            # 2**32 - 1 is (uid_t)-1: "unchanged" for the set*id() calls
_DECIMAL = re.compile(r"[0-9]{1,10}")


class InvokerError(TracerError):
    """SUDO_UID / SUDO_GID cannot be trusted to name a user."""


@dataclass(frozen=True)
class InvokingUser:
    uid: int
    gid: int
    groups: tuple[int, ...]      # supplementary groups (gid first)
    name: str | None             # passwd name, when there is an entry
    home: str | None
    via_sudo: bool               # decided by SUDO_UID

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @property
    def acting_for_other(self) -> bool:
        """True when tracer holds root's file powers but works for a non-root user: then files are
        created as that user and targets must pass the ptrace rule for them."""
        return os.geteuid() == 0 and self.uid != 0

    def describe(self) -> str:
        return f"uid {self.uid}" + (f" ({self.name})" if self.name else "")


def parse_id(name: str, raw: str) -> int:
    """A SUDO_UID/SUDO_GID value as an id; InvokerError for anything but a plain decimal id."""
    if not _DECIMAL.fullmatch(raw) or int(raw) > UID_MAX:
        raise InvokerError(f"{name}={raw!r} is not a user or group id; refusing to guess who invoked "
                           "tracer")
    return int(raw)


def invoking_user(environ=None) -> InvokingUser:
    """The user tracer works for (see the module documentation); InvokerError for unusable SUDO_*."""
    env = os.environ if environ is None else environ
    raw_uid = env.get("SUDO_UID")
    if os.geteuid() != 0 or raw_uid is None:
        uid, gid = os.getuid(), os.getgid()
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            pw = None
        groups = tuple(dict.fromkeys([gid, *os.getgroups()]))
        return InvokingUser(uid, gid, groups, pw.pw_name if pw else None, pw.pw_dir if pw else None,
                            via_sudo=False)
    uid = parse_id("SUDO_UID", raw_uid)
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        pw = None
    raw_gid = env.get("SUDO_GID")
    if raw_gid is not None:
        gid = parse_id("SUDO_GID", raw_gid)
    else:
        gid = pw.pw_gid if pw else uid
    groups: list[int] = [gid]
    if pw is not None and uid != 0:
        try:
            groups += os.getgrouplist(pw.pw_name, gid)
        except OSError:
            pass
    return InvokingUser(uid, gid, tuple(dict.fromkeys(groups)), pw.pw_name if pw else None,
                        pw.pw_dir if pw else None, via_sudo=True)


# -- acting as the user (per thread) ------------------------------------------------------------

# raw syscall numbers: (setgroups, setfsuid, setfsgid)
_NR = {
    "x86_64": (116, 122, 123),
    "aarch64": (159, 151, 152),     # the generic table (arm64, riscv64, loongarch64)
    "riscv64": (159, 151, 152),
    "loongarch64": (159, 151, 152),
}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_tls = threading.local()


def _nr() -> tuple[int, int, int]:
    nr = _NR.get(platform.machine())
    if nr is None:
        raise TracerError(f"acting as the invoking user is not implemented for {platform.machine()}")
    return nr


def _set_groups(groups) -> None:
    arr = (ctypes.c_uint32 * max(1, len(groups)))(*groups)
    if _libc.syscall(ctypes.c_long(_nr()[0]), ctypes.c_long(len(groups)), arr) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setgroups: {os.strerror(e)}")


def _set_fs(which: int, value: int) -> int:
    """setfsuid/setfsgid on this thread; returns the previous value (the syscalls report no error:
    callers read the value back)."""
    return int(_libc.syscall(ctypes.c_long(_nr()[which]), ctypes.c_long(value & 0xFFFFFFFF)))


def _current_fs(which: int) -> int:
    return _set_fs(which, 0xFFFFFFFF) & 0xFFFFFFFF    # -1 is invalid: only reports the current value


def thread_fs_ids() -> tuple[int, int]:
    """(fsuid, fsgid) of the calling thread."""
    return _current_fs(1), _current_fs(2)


@contextlib.contextmanager
def as_user(user: InvokingUser | None = None):
    """Run the block with the user's file-system identity on this thread (no-op when tracer is not
    root or works for root). Re-entrant."""
    user = user or invoking_user()
    if not user.acting_for_other or getattr(_tls, "depth", 0):
        _tls.depth = getattr(_tls, "depth", 0) + 1
        try:
            yield user
        finally:
            _tls.depth -= 1
        return
    saved_groups = os.getgroups()
    _set_groups(user.groups)
    old_gid = _set_fs(2, user.gid)
    old_uid = _set_fs(1, user.uid)
    _tls.depth = 1
    try:
        if thread_fs_ids() != (user.uid, user.gid):
            raise TracerError(f"could not take on {user.describe()}'s file-system identity")
        yield user
    finally:
        _tls.depth = 0
        _set_fs(1, old_uid)
        _set_fs(2, old_gid)
        _set_groups(saved_groups)
        if thread_fs_ids() != (old_uid & 0xFFFFFFFF, old_gid & 0xFFFFFFFF):   # pragma: no cover
            raise TracerError("could not restore tracer's own file-system identity")


def become(user: InvokingUser | None = None) -> InvokingUser:
    """Become the user for good - real, effective, saved and fs ids and groups, every thread - for a
    command that needs none of root's powers (the viewer, the mock server). No-op unless tracer is
    root working for someone else. Call before any thread starts."""
    user = user or invoking_user()
    if not user.acting_for_other:
        return user
    os.setgroups(list(user.groups))
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    if os.getresuid() != (user.uid,) * 3 or os.getresgid() != (user.gid,) * 3:   # pragma: no cover
        raise TracerError(f"could not become {user.describe()}")
    if user.home and os.environ.get("HOME") in (None, "", "/root"):
        os.environ["HOME"] = user.home
    return user
