"""Helpers shared by the tests and the benchmarks: wire-format builders (HTTP/1.1 chunked bodies, ring
records laid out by bpf/tracer_event.h), and running the tracer CLI as a user would - the command
line, `tracer attach` until it is tracing, stopping it, and reading its --summary-json file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tracer.capture import event as ev
from tracer.protocols.base import ConnInfo

# A connection as a parser sees it (protocol unit tests).
CONN = ConnInfo(pid=1, tid=1, comm="t", conn_id="1:0x1:1")


def claude_env(mock, home, base: dict | None = None, drop: tuple[str, ...] = ()) -> dict:
    """The environment a Claude Code run against the mock API needs: ``base`` (default: this process'
    environment) without ANTHROPIC_*/CLAUDE* (nor the ``drop`` prefixes), HOME a temp dir, the mock's
    URL and CA, a test key, telemetry, non-essential traffic and the auto-updater off."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if not k.startswith(("ANTHROPIC_", "CLAUDE", *drop))}
    env.update(HOME=str(home), ANTHROPIC_BASE_URL=mock.url, ANTHROPIC_API_KEY="sk-test",
               NODE_EXTRA_CA_CERTS=str(mock.ca_path), DISABLE_TELEMETRY="1",
               CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1")
    return env


def chunked(body: bytes, sizes=(7,)) -> bytes:
    """`body` in HTTP/1.1 chunked encoding, chunk sizes taken from `sizes` in turn (an int: all the same)."""
    sizes = [sizes] if isinstance(sizes, int) else list(sizes) or [len(body)]
    out, i, k = [], 0, 0
    while i < len(body):
        n = max(1, sizes[k % len(sizes)])
        out.append(b"%x\r\n%s\r\n" % (len(body[i:i + n]), body[i:i + n]))
        i += n
        k += 1
    return b"".join(out) + b"0\r\n\r\n"


def record(data: bytes = b"", *, conn: int = 0x1000, stream_off: int = 0, pid: int = 100,
           tid: int | None = None, type: int = ev.EV_DATA, dir: int = ev.DIR_WRITE, flags: int = 0,
           ts_ns: int = 0, total_len: int | None = None, offset: int = 0, length: int | None = None,
           comm: str = "client", pad_to: int = 0) -> bytes:
    """One ring-buffer record as the BPF program writes it: struct tracer_event (packed with the
    header's own struct) followed by the payload; with F_COPY_FAIL, no payload. `length` is the
    chunk length the header claims (default: len(data)); `pad_to` fills the record up to a size class."""
    n = len(data) if length is None else length
    head = ev.EVENT_STRUCT.pack(ts_ns, conn, stream_off, pid, tid if tid is not None else pid,
                                n if total_len is None else total_len, offset, n, type, dir, flags,
                                comm.encode()[:16])
    raw = head + (b"" if flags & ev.F_COPY_FAIL else data)
    return raw + b"\0" * max(0, pad_to - len(raw))


# -- the CLI ------------------------------------------------------------------------------------

def tracer_cmd(*args) -> list[str]:
    """The tracer CLI; TRACER_BENCH_TRACER=path/to/script.py runs that script instead (A/B experiments
    with a patched tracer: it gets the same arguments)."""
    alt = os.environ.get("TRACER_BENCH_TRACER")
    if alt:
        return [sys.executable, alt, *args]
    return [sys.executable, "-m", "tracer.cli", *args]


def start_attach(pids, out_dir, *extra, env=None, cwd=None,
                 timeout: float = 300) -> tuple[subprocess.Popen, float, list[str]]:
    """`tracer attach` on one pid or a list of pids; returns once it says the probes are in place:
    (process, seconds until then, its stderr lines so far)."""
    args = []
    for p in ([pids] if isinstance(pids, int) else pids):
        args += ["--pid", str(p)]
    t0 = time.monotonic()
    t = subprocess.Popen(tracer_cmd("attach", *args, "-o", str(out_dir), "--quiet", "--no-html", *extra),
                         stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    lines: list[str] = []
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        line = t.stderr.readline()
        if not line:
            raise AssertionError("tracer attach exited early:\n" + "".join(lines))
        lines.append(line)
        if "tracing" in line and "process" in line:
            return t, time.monotonic() - t0, lines
    t.kill()
    raise AssertionError("tracer attach did not start in time:\n" + "".join(lines))


def stop_tracer(t: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 120) -> str:
    """Stop a running tracer as Ctrl-C does; its remaining stderr."""
    t.send_signal(sig)
    err = t.stderr.read() if t.stderr else ""
    t.wait(timeout)
    return err


def read_summary(path: str | Path) -> dict:
    """The end-of-run summary a tracer wrote with --summary-json."""
    return orjson.loads(Path(path).read_bytes())


def children(pid: int) -> list[int]:
    """The child processes of `pid` (all its threads'), [] when it is gone."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def comm(pid: int, tid: int | None = None) -> str:
    """A process' (or one of its threads') name, "" when it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/comm" if tid else f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


PARSER_COMM = "tracer-parse"     # the name of a tracer's parsing process (tracer/worker.py)


def parsing_processes(tracer_pid: int) -> list[int]:
    """The parsing process(es) a tracer started (deferred parsing)."""
    return [c for c in children(tracer_pid) if comm(c) == PARSER_COMM]


def wait_for(pred, timeout: float = 10.0, interval: float = 0.02):
    """Poll `pred` until it returns something true (returned) or `timeout` passes (its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def end_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a server a test started: SIGTERM, then SIGKILL if it is still there after ``grace`` s."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
