"""`tracer run/attach --follow`: the live view, started as its own process, as the invoking user.

Where the view goes: tracer's standard error - where tracer's own messages and its summary go - so a
command's standard output (``claude -p`` prints its answer there) is never touched and stays
redirectable. The view is the ``tracer tail`` program, given the log (a read-only descriptor opened
here, so it resolves no path) and one end of a socket pair on which the session's live feed talks to
it. It runs as the invoking user (never root under sudo), at its own pace: the capture does not wait
for it, and it ignores Ctrl-C (tracer stops it by ending the feed, after the log is complete).

How it draws (``--view auto``): a redrawn live region needs a terminal nobody else writes to. When
tracer's standard error is not a terminal: plain lines. When the traced program writes to that same
terminal (run: the command's standard output is it; attach: the target's stdout or stderr is it):
append-only lines, which interleave with the program's output instead of tearing through it.
Otherwise: the live region.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tracer.invoker import child_credentials, user_environment

VIEW_ENV = ("TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "LANG", "LC_ALL",
            "LC_CTYPE", "PATH")

BOOT = """\
import json, sys
sys.path[:] = json.loads(sys.argv[1])
from tracer.cli import main
sys.argv = ["tracer"] + sys.argv[2:]
main()
"""


def _tty_rdev(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_rdev if os.isatty(fd) else None
    except OSError:
        return None


def _proc_fd_rdev(pid: int, fd: int) -> int | None:
    try:
        st = os.stat(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    import stat
    return st.st_rdev if stat.S_ISCHR(st.st_mode) else None


def follow_style(requested: str, *, run_stdout: bool = False, pids: tuple[int, ...] = ()) -> str:
    """The view's style (see the module docstring). ``run_stdout``: the command inherits tracer's
    standard output; ``pids``: attached processes."""
    if requested != "auto":
        return requested
    mine = _tty_rdev(2)
    if mine is None:
        return "lines"
    shared = set()
    if run_stdout:
        shared.add(_tty_rdev(1))
    for pid in pids:
        shared.add(_proc_fd_rdev(pid, 1))
        shared.add(_proc_fd_rdev(pid, 2))
    return "lines" if mine in shared else "live"


def start_view(session, style: str) -> subprocess.Popen | None:
    """Start the view of ``session``'s log and connect it to the session's feed; None (and a message
    on stderr) when it cannot be started - the trace goes on without it."""
    user = session.user
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    log_fd = -1
    try:
        # a read-only descriptor of the very file the writer writes (no path lookup in the user's
        # directory as root)
        log_fd = os.open(f"/proc/self/fd/{session.log_fd}", os.O_RDONLY | os.O_CLOEXEC)
        # this tracer's own package first (an editable install is found through a .pth hook, which
        # -S does not run), then the rest of the import path, made absolute
        import tracer
        root = os.path.dirname(os.path.dirname(os.path.abspath(tracer.__file__)))
        paths = [root] + [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
        cmd = [os.path.realpath(sys.executable), "-I", "-S", "-c", BOOT, json.dumps(paths), "tail",
               "--log-fd", str(log_fd), "--feed-fd", str(b.fileno()), "--view", style, "--last", "0",
               "--title", session.log_path.name]
        # as the invoking user (tracer/invoker.py): their ids, groups and HOME
        env = user_environment({k: os.environ[k] for k in VIEW_ENV if k in os.environ}, user)
        proc = subprocess.Popen(cmd, pass_fds=(log_fd, b.fileno()), stdin=subprocess.DEVNULL,
                                stdout=2, stderr=2, env=env, cwd="/", **child_credentials(user))
    except OSError as e:
        print(f"tracer: cannot start the live view: {e.strerror or e}", file=sys.stderr)
        a.close()
        return None
    finally:
        b.close()
        if log_fd >= 0:
            os.close(log_fd)
    session.feed.add_client(a)
    return proc


def finish_view(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """Wait for the view to draw the end (the feed said goodbye); stop it if it does not."""
    if proc is None:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
