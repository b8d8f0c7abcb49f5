"""A JSONL log followed as it grows (``tail -f``), opened without trusting the path, and its live feed.

``open_log(path)`` walks the path one component at a time from a directory descriptor and follows a
symbolic link only when it belongs to root or to the user running tail: run as root (``sudo tracer
tail``: it drops to the invoking user first anyway) it cannot be led by a link someone else planted
to a file they could not read themselves. The log must be a regular file; it is opened non-blocking
(a FIFO planted in its place cannot hang us), read-only.

``Follower.poll()`` returns the records of the complete lines written since the last call: a partial
last line (the writer is in the middle of it) waits for its newline; a long line is never held whole
(tracer/viewer/logs.py leaves its big strings in the file, read back through ``/proc/self/fd/N`` - the
descriptor opened here, never the path again). A log cut back (the writer rolls back a failed write to
its last whole line) is read on from where it now ends. Rotation is not followed: tracer writes one log
per run.

``connect_feed(log)`` connects to the running tracer's live feed beside the log (tracer/live/feed.py),
when there is one: a socket owned by the log's owner or root, whose peer is root or that owner.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from dataclasses import dataclass, field
from typing import Any

from tracer.errors import TracerError
from tracer.viewer.logs import INLINE_LINE, read_line

MAX_LINKS = 40
READ = 1 << 20


class UnsafeLog(TracerError):
    pass


@dataclass
class OpenedLog:
    fd: int            # the log, read-only
    dir_fd: int        # its directory (O_PATH), for the feed's socket beside it
    name: str          # its name in that directory (after following allowed links)
    owner: int         # the log's uid

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def _link_ok(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def open_log(path: str | os.PathLike) -> OpenedLog:
    """Open a log to follow (see the module docstring); UnsafeLog or OSError when it cannot be."""
    path = os.fspath(path)
    if not path:
        raise UnsafeLog("empty log path")
    parts = path.split("/")
    dfd = os.open("/" if path.startswith("/") else ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    links = 0
    try:
        while True:
            while parts and parts[0] in ("", "."):
                parts.pop(0)
            if not parts:
                raise UnsafeLog(f"{path}: not a file")
            name = parts.pop(0)
            last = not any(p not in ("", ".") for p in parts)
            flags = (os.O_RDONLY | os.O_NONBLOCK if last else os.O_PATH | os.O_DIRECTORY) \
                | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(name, flags, dir_fd=dfd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise
                st = os.lstat(name, dir_fd=dfd)
                if not stat.S_ISLNK(st.st_mode):
                    raise
                if not _link_ok(st):
                    raise UnsafeLog(f"{path}: not following the symbolic link {name!r}: it belongs to "
                                    f"uid {st.st_uid}, not to you or root") from None
                links += 1
                if links > MAX_LINKS:
                    raise UnsafeLog(f"{path}: too many symbolic links") from None
                target = os.readlink(name, dir_fd=dfd)
                if target.startswith("/"):
                    os.close(dfd)
                    dfd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                parts[:0] = target.split("/")
                continue
            if not last:
                os.close(dfd)
                dfd = fd
                continue
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise UnsafeLog(f"{path}: not a regular file")
            os.set_blocking(fd, True)
            return OpenedLog(fd, dfd, name, st.st_uid)
    except BaseException:
        os.close(dfd)
        raise


def connect_feed(log: OpenedLog, suffix: str = ".live") -> socket.socket | None:
    """The live feed of the tracer writing ``log``, or None (no feed offered, or it is gone)."""
    stem = log.name[:-len(".jsonl")] if log.name.endswith(".jsonl") else log.name.rsplit(".", 1)[0]
    name = stem + suffix
    try:
        st = os.lstat(name, dir_fd=log.dir_fd)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid not in (0, log.owner):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(2.0)
        sock.connect(f"/proc/self/fd/{log.dir_fd}/{name}")
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
        if uid not in (0, log.owner):
            sock.close()
            return None
        sock.setblocking(False)
        return sock
    except OSError:
        sock.close()
        return None


@dataclass
class Follower:
    """The complete lines appended to a log since the last ``poll``, parsed (bad lines described in
    ``warnings``)."""

    fd: int
    pos: int = 0                  # offset of the first byte not yet consumed (a line start)
    lineno: int = 0               # lines consumed so far
    warnings: list[str] = field(default_factory=list)
    _scanned: int = 0             # bytes after pos already searched for a newline (no line end there)

    def __post_init__(self) -> None:
        self.f = os.fdopen(self.fd, "rb", buffering=0, closefd=False)
        self.path = f"/proc/self/fd/{self.fd}"     # for strings left in the file (BigString)

    def skip_to_last(self, n: int) -> None:
        """Start with the last ``n`` complete lines of what the log holds now (counting the lines
        before them, for line numbers). Reads backwards from the end: a long log costs one newline
        count, not a parse."""
        pos = os.fstat(self.fd).st_size
        seen = 0
        start = 0
        while pos > 0 and not start:
            lo = max(0, pos - READ)
            chunk = os.pread(self.fd, pos - lo, lo)
            i = len(chunk)
            while True:
                j = chunk.rfind(b"\n", 0, i)
                if j < 0:
                    break
                seen += 1                     # the 1st ends the last complete line, the (n+1)th the
                if seen == n + 1:             # line before the n we keep
                    start = lo + j + 1
                    break
                i = j
            pos = lo
        self.pos = start
        self._scanned = 0
        self.lineno = self._count_lines(start)

    def _count_lines(self, upto: int) -> int:
        count, off = 0, 0
        while off < upto:
            chunk = os.pread(self.fd, min(READ, upto - off), off)
            if not chunk:
                break
            count += chunk.count(b"\n")
            off += len(chunk)
        return count

    def poll(self, max_lines: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        """(line number, record) of up to ``max_lines`` new complete lines."""
        out: list[tuple[int, dict[str, Any]]] = []
        size = os.fstat(self.fd).st_size
        if size < self.pos:
            self.warnings.append(f"the log was cut back to {size} bytes; reading on from there")
            self.pos = size
            self._scanned = 0
            self.lineno = self._count_lines(size)
        while len(out) < max_lines and self.pos < size:
            start = self.pos + self._scanned
            nl = -1
            while start < size:
                chunk = os.pread(self.fd, min(READ, size - start), start)
                if not chunk:
                    break
                j = chunk.find(b"\n")
                if j >= 0:
                    nl = start + j
                    break
                start += len(chunk)
            if nl < 0:
                self._scanned = size - self.pos       # the last line is still being written
                break
            off, length = self.pos, nl - self.pos
            self.pos = nl + 1
            self._scanned = 0
            self.lineno += 1
            if length == 0:
                continue
            try:
                rec = read_line(self.f, self.path, self.lineno, off, length)
            except (ValueError, RecursionError, MemoryError) as e:
                self.warnings.append(f"line {self.lineno}: skipped ({type(e).__name__}: {str(e)[:80]})")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("request"), dict):
                self.warnings.append(f"line {self.lineno}: not a request/response record")
                continue
            out.append((self.lineno, rec))
        return out

    @property
    def caught_up(self) -> bool:
        return self.pos >= os.fstat(self.fd).st_size


__all__ = ["Follower", "OpenedLog", "UnsafeLog", "connect_feed", "open_log", "INLINE_LINE"]
