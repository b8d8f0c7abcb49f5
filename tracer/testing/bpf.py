"""Real eBPF without the CLI, for tests and benchmarks: a TLS pump to trace (with its own copies of
libssl), and a loaded program put together with its attach and ring steps as Session does."""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

from tracer.capture import event as ev
from tracer.capture.ring import DropCounters, Ring
from tracer.mock.certs import ensure_certs
from tracer.probes.attach import Probes
from tracer.probes.kcreds import CredGuard
from tracer.probes.targets import Locator

PERIOD = 251                      # the pump's byte pattern: stream offset i carries byte i % 251
PATTERN = bytes(range(PERIOD)) * ((ev.HEADER_SIZE + (1 << 20)) // PERIOD + 2)

# A TLS pump in one /usr/bin/python3 process (OpenSSL through the ssl module): a server thread
# writes N patterned bytes per round in writes of W bytes, the main thread reads them; both ends
# are probed. A round starts when the file <go><round> appears.
PUMP = r'''
import os, socket, ssl, sys, threading, time
cert, key, ca, total, wsize, go = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
rounds = int(sys.argv[7]) if len(sys.argv) > 7 else 1
P = 251
pat = bytes(range(P)) * (wsize // P + 2)
lsock = socket.socket(); lsock.bind(("127.0.0.1", 0)); lsock.listen(1)
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(cert, key)
cctx = ssl.create_default_context(cafile=ca)
go_round = [threading.Event() for _ in range(rounds)]
def server():
    s, _ = lsock.accept()
    s = sctx.wrap_socket(s, server_side=True)
    off = 0
    for r in range(rounds):
        go_round[r].wait()
        end = off + total
        while off < end:
            k = min(wsize, end - off)
            s.sendall(pat[off % P: off % P + k])
            off += k
    s.recv(1)
    s.close()
t = threading.Thread(target=server, daemon=True); t.start()
c = cctx.wrap_socket(socket.create_connection(lsock.getsockname()), server_hostname="localhost")
print("ready", flush=True)
buf = bytearray(1 << 16)
for r in range(rounds):
    while not os.path.exists(f"{go}{r}"):
        time.sleep(0.01)
    go_round[r].set()
    got = 0
    while got < total:
        n = c.recv_into(buf)
        if not n:
            break
        got += n
    print(f"done {r} {got}", flush=True)
c.close()
t.join(10)
'''


def private_tls_env(directory: Path, base: dict | None = None) -> dict:
    """An environment whose processes load their own copies of libssl/libcrypto (LD_LIBRARY_PATH).

    Uprobes are per (inode, offset), and the kernel refuses a second uprobe at the same place with
    a different reference-counter offset - which BCC 0.26's Python binding leaves uninitialised.
    Private copies keep a test independent of BCC tracers that run at the same time."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("libssl.so.3", "libcrypto.so.3"):
        src = next(Path(d) / name for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu",
                                            "/usr/lib/aarch64-linux-gnu", "/lib/aarch64-linux-gnu",
                                            "/usr/lib64", "/usr/lib") if (Path(d) / name).exists())
        dst = directory / name
        if not dst.exists():
            dst.write_bytes(src.read_bytes())
    env = dict(base if base is not None else os.environ)
    env["LD_LIBRARY_PATH"] = str(directory)
    return env


def start_pump(workdir: Path, total: int, *, wsize: int = 65536, rounds: int = 1):
    """Start the pump (its libssl copies in workdir/lib); returns (process, go-file prefix)."""
    certs = ensure_certs(workdir / "certs")
    script = workdir / "pump.py"
    script.write_text(PUMP)
    go = str(workdir / "go")
    p = subprocess.Popen(["/usr/bin/python3", str(script), str(certs.cert), str(certs.key), str(certs.ca),
                          str(total), str(wsize), go, str(rounds)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=private_tls_env(workdir / "lib"))
    if not select.select([p.stdout], [], [], 60)[0]:
        p.kill()
        raise AssertionError("the pump did not start")
    line = p.stdout.readline()
    assert line.strip() == "ready", p.stderr.read()
    return p, go


def pump_round(p, go: str, r: int, timeout: float = 120) -> int:
    """Let the pump run round r; returns the bytes its client read."""
    Path(f"{go}{r}").touch()
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    if not ready:
        p.kill()
        raise AssertionError(f"pump round {r} did not finish in {timeout} s")
    line = p.stdout.readline()
    assert line.startswith(f"done {r}"), (line, p.stderr.read() if p.poll() is not None else "")
    return int(line.split()[2])


def tls_objects(pid: int, private: Path | None = None):
    """(mapped object, located functions) of the TLS libraries `pid` has mapped; only the copies
    in `private` when given."""
    objs = Locator().tls_objects(pid)
    if private is not None:
        objs = [(mo, loc) for mo, loc in objs if mo.path.startswith(str(private) + "/")]
    return objs


class Traced:
    """A loaded program with its attach and ring steps, put together as Session does."""

    def __init__(self, prog, callback, stderr=None):
        self.prog = prog
        self.probes = Probes(prog, stderr=stderr)
        self.ring = Ring(prog.map_fd("events"), callback)
        self.counters = DropCounters(prog.map_fd("drops"), prog.map_info("drops"))

    def approve(self, pid):
        """The credential guard (bpf/tracer.bpf.c) copies nothing of a process user space has not
        approved: approved unchecked, as Session does for root's own tracing."""
        CredGuard(self.prog.map_fd("cred_layout"), self.prog.map_fd("target_ids")).approve(pid, 0, 0, False)

    def attach(self, pid, path, located):
        return self.probes.attach(pid, path, located)

    def poll(self, ms):
        return self.ring.poll(ms)

    def consume(self):
        return self.ring.consume()

    def drops(self):
        return self.counters.read()

    def close(self):
        self.probes.close()
        self.ring.close()
        self.counters.close()
        self.prog.close()
