"""Files tracer writes for the invoking user: logs, viewers, indexes, summaries.

Everything here runs inside `as_user()` (tracer/invoker.py), so a file or directory is *created as
the user* - the kernel's permission checks apply as for anything they run themselves, and nothing
needs a chown afterwards. On top of that:

  * an output directory is opened once (``O_DIRECTORY | O_NOFOLLOW``) and every later operation is
    relative to that descriptor, so nobody can swap the path under us between check and use;
  * a directory that already existed must belong to the user and not be writable by group or others
    (someone else could plant or swap entries in it); a symlink is refused;
  * files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (never through a planted link), written
    under a temporary name and renamed when a reader must never see half of one.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from tracer.errors import TracerError
from tracer.invoker import InvokingUser, as_user, invoking_user


class UnsafeOutput(TracerError):
    """An output location tracer must not write to for this user."""


def _why_unsafe(st: os.stat_result, user: InvokingUser) -> str | None:
    if st.st_uid != user.uid:
        return f"belongs to uid {st.st_uid}, not to {user.describe()}"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        who = "others" if mode & 0o002 else "its group"
        return f"is writable by {who} (mode {mode:o})"
    return None


class UserDir:
    """An output directory, created (mode 0700, parents as needed) as the user when missing, checked
    when it existed; operations on its entries go through its descriptor."""

    def __init__(self, path: str | os.PathLike, user: InvokingUser | None = None, *,
                 create: bool = True, mode: int = 0o700):
        self.path = Path(path)
        self.user = user or invoking_user()
        with as_user(self.user):
            if create:
                try:
                    os.makedirs(self.path, mode=mode, exist_ok=True)
                except FileExistsError:
                    pass                     # a file or dangling link: the open below says which
                except OSError as e:
                    raise UnsafeOutput(f"cannot create {self.path} as {self.user.describe()}: "
                                       f"{e.strerror or e}") from None
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(self.path):
                    raise UnsafeOutput(f"refusing to write into a symlinked directory: {self.path}") from None
                raise UnsafeOutput(f"cannot open the directory {self.path} as {self.user.describe()}: "
                                   f"{e.strerror or e}") from None
        why = _why_unsafe(os.fstat(self.fd), self.user)
        if why:
            os.close(self.fd)
            raise UnsafeOutput(f"refusing to write into {self.path}: it {why}; use a directory that "
                               "only you can write to")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def create(self, name: str, mode: int = 0o600, flags: int = os.O_WRONLY) -> int:
        """A new file (never an existing one, never through a link); FileExistsError when taken."""
        with as_user(self.user):
            return os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                           dir_fd=self.fd)

    def replace(self, src: str, dst: str) -> None:
        with as_user(self.user):
            os.replace(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        with as_user(self.user):
            os.unlink(name, dir_fd=self.fd)

    def dup(self) -> "UserDir":
        """Another handle on the same (already checked) directory, closed on its own."""
        other = object.__new__(UserDir)
        other.path, other.user, other.fd = self.path, self.user, os.dup(self.fd)
        return other

    def bind_unix(self, sock, name: str) -> os.stat_result:
        """Bind the Unix socket ``sock`` to the new entry ``name`` (an existing entry of any kind makes
        this fail: EADDRINUSE), as the user, through the descriptor - which also keeps long paths
        under the 108-byte limit of socket addresses. The entry takes the socket's mode less the
        umask: fchmod the socket first. Returns the entry's lstat."""
        with as_user(self.user):
            sock.bind(f"/proc/self/fd/{self.fd}/{name}")
            return os.lstat(name, dir_fd=self.fd)

    def unlink_if_same(self, name: str, ident: tuple[int, int]) -> bool:
        """Remove ``name`` only while it is still the entry (st_dev, st_ino) = ``ident``."""
        with as_user(self.user):
            try:
                st = os.lstat(name, dir_fd=self.fd)
            except FileNotFoundError:
                return False
            if (st.st_dev, st.st_ino) != ident:
                return False
            os.unlink(name, dir_fd=self.fd)
            return True

    def write_atomic(self, name: str, data: bytes | None = None, writer=None, mode: int = 0o600) -> Path:
        """Write ``name`` through a temporary file renamed over it: ``data``, or ``writer(fileobj)``."""
        tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = self.create(tmp, mode)
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as f:
                if writer is not None:
                    writer(f)
                else:
                    f.write(data or b"")
            self.replace(tmp, name)
        except BaseException:
            try:
                self.unlink(tmp)
            except OSError:
                pass
            raise
        return self.path / name


def make_user_dir(path: str | os.PathLike, user: InvokingUser | None = None) -> Path:
    """Create (0700, as the user) or check an output directory; returns its path."""
    with UserDir(path, user):
        return Path(path)


def write_user_file(path: str | os.PathLike, data: bytes | None = None, *, writer=None,
                    user: InvokingUser | None = None, mode: int = 0o600, create_dir: bool = False) -> Path:
    """Write a whole file for the user (atomically, as the user, in a directory they own)."""
    p = Path(path)
    if not p.name or p.name in (".", ".."):
        raise UnsafeOutput(f"{path} is not a file name")
    with UserDir(p.parent if str(p.parent) else ".", user, create=create_dir) as d:
        return d.write_atomic(p.name, data, writer, mode)


def open_user_file(path: str | os.PathLike, user: InvokingUser | None = None, mode: int = 0o600,
                   append: bool = False) -> int:
    """A descriptor for writing ``path`` as the user: created when missing, truncated (or appended
    to) when it is a regular file of theirs; never opened through a symlink. The directory must be
    theirs (see UserDir). For whole files prefer write_user_file (atomic)."""
    p = Path(path)
    with UserDir(p.parent if str(p.parent) else ".", user, create=False) as d:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else 0)
        with as_user(d.user):
            fd = os.open(p.name, flags, mode, dir_fd=d.fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != d.user.uid:
            os.close(fd)
            raise UnsafeOutput(f"refusing to write {p}: not a regular file of {d.user.describe()}")
        if not append:
            os.ftruncate(fd, 0)
        return fd


def open_for_reading(path: str | os.PathLike, user: InvokingUser | None = None):
    """Open a file the user named, for reading, with their permissions (a binary file object)."""
    with as_user(user):
        return open(path, "rb")
