"""Resume the processes tracer stopped, should tracer die.

The kernel side stops a followed process (SIGSTOP) at exec, or a forked child before it runs, and
tracer resumes it once its probes are in place. If tracer is killed in between, nobody would. So
`tracer run/attach` starts this small process first (`python -I -m tracer.processes.watchdog
MAPFD PIPEFD`, in its own session so that a Ctrl-C or a signal to tracer's process group does not
reach it), handing it the `procs` map and the read end of a pipe whose write end only tracer holds.
End of file on the pipe means tracer is gone (or done): every process the map marks as stopped by
the kernel side, and that is still stopped, gets SIGCONT; then it exits. The kernel side itself
stops nothing once tracer's programs are gone, or while tracer shows no sign of life.

Runs as root; uses libbpf through ctypes and nothing of tracer but the event header's layout.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys

from tracer.capture import event as ev

STOPPED = ev.CONST["TRACER_PROC_STOPPED"]


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"T"
    except (OSError, IndexError):
        return False


def resume_stopped(map_fd: int) -> list[int]:
    """SIGCONT to every process the map says the kernel side stopped and that is still stopped."""
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    key, nxt = ctypes.create_string_buffer(4), ctypes.create_string_buffer(4)
    val = ctypes.create_string_buffer(ev.PROC_STRUCT.size)
    pids: list[int] = []
    first = True
    for _ in range(1 << 20):
        if lib.bpf_map_get_next_key(map_fd, None if first else key, nxt) != 0:
            break
        first = False
        ctypes.memmove(key, nxt, 4)
        pid = struct.unpack("<I", nxt.raw)[0]
        if lib.bpf_map_lookup_elem(map_fd, nxt, val) != 0:
            continue
        state = ev.PROC_STRUCT.unpack(val.raw)[1]
        if state == STOPPED and _stopped(pid):
            try:
                os.kill(pid, signal.SIGCONT)
                pids.append(pid)
            except OSError:
                pass
    return pids


def main(argv: list[str]) -> int:
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGTSTP, signal.SIGPIPE):
        signal.signal(s, signal.SIG_IGN)
    map_fd, pipe_fd = int(argv[0]), int(argv[1])
    while True:
        try:
            if not os.read(pipe_fd, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    pids = resume_stopped(map_fd)
    if pids:
        print(f"tracer watchdog: tracer ended while {len(pids)} process(es) waited for their probes; "
              f"resumed {' '.join(map(str, pids))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
