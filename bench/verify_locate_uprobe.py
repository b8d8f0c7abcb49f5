#!/usr/bin/env python3
"""Independent check of discovered SSL_read/SSL_write addresses: put real uprobes there and see them
fire with HTTP plaintext (needs root + BCC).

    sudo .venv/bin/python bench/verify_locate_uprobe.py claude 2.1.220 [claude 2.1.113 ...]
    sudo .venv/bin/python bench/verify_locate_uprobe.py bun 1.4.5
    sudo .venv/bin/python bench/verify_locate_uprobe.py --binary PATH --kind claude|bun

Runs on the machine the binaries are built for (x86-64, or arm64 e.g. inside an arm64 vm-test guest:
`make vm-test KERNELS=arm64-bookworm-6.12 PAYLOAD=verify VM_CLAUDE="arm64:2.1.220 ..."`).
For each binary: run discovery (no cache), attach a uprobe at SSL_write (captures the first bytes of
the plaintext buffer) and a uprobe+uretprobe pair at SSL_read (captures what was read), start the
mock Anthropic server (tracer.mock) and drive real TLS traffic through the binary:
claude: ``claude -p "say hi"`` with ANTHROPIC_BASE_URL pointing at the mock; bun: ``bun -e 'await
fetch(...)'``. The addresses are confirmed when SSL_write saw an HTTP request line and SSL_read an
HTTP status line. Prints one line per binary; exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import machine  # noqa: E402
from tracer.probes.boringssl import analyze_path  # noqa: E402
from tracer.testing.releases import claude_code_package, fetch_npm_release  # noqa: E402

# this machine's builds: the uprobes fire only where the binary runs natively
PACKAGES = {"claude": claude_code_package(),
            "bun": "@oven/bun-linux-" + {"aarch64": "aarch64"}.get(os.uname().machine, "x64")}

BPF = r"""
#include <uapi/linux/ptrace.h>
struct ev { u32 pid; u32 kind; s64 ret; char data[48]; };
BPF_PERF_OUTPUT(events);
BPF_HASH(rbuf, u32, u64);
int on_write(struct pt_regs *ctx) {
    struct ev e = {};
    e.pid = bpf_get_current_pid_tgid() >> 32; e.kind = 1; e.ret = PT_REGS_PARM3(ctx);
    bpf_probe_read_user(&e.data, sizeof(e.data), (void *)PT_REGS_PARM2(ctx));
    events.perf_submit(ctx, &e, sizeof(e));
    return 0;
}
int on_read(struct pt_regs *ctx) {
    u32 tid = bpf_get_current_pid_tgid(); u64 buf = PT_REGS_PARM2(ctx);
    rbuf.update(&tid, &buf);
    return 0;
}
int on_read_ret(struct pt_regs *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    u64 *buf = rbuf.lookup(&tid);
    if (!buf) return 0;
    struct ev e = {};
    e.pid = bpf_get_current_pid_tgid() >> 32; e.kind = 2; e.ret = (int)PT_REGS_RC(ctx);
    if (e.ret > 0) bpf_probe_read_user(&e.data, sizeof(e.data), (void *)*buf);
    rbuf.delete(&tid);
    events.perf_submit(ctx, &e, sizeof(e));
    return 0;
}
"""


class Ev(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint32), ("kind", ctypes.c_uint32), ("ret", ctypes.c_int64),
                ("data", ctypes.c_char * 48)]


class Probes:
    """The BPF program, compiled once (a minute or two under TCG) and attached to one binary at a time."""

    def __init__(self):
        from bcc import BPF as _BPF

        from tracer.probes import kheaders
        kheaders.apply(kheaders.choose())
        self.b = _BPF(text=BPF)
        self.seen: list[tuple[int, int, bytes]] = []

        def cb(cpu, data, size):
            e = ctypes.cast(data, ctypes.POINTER(Ev)).contents
            self.seen.append((e.kind, e.ret, bytes(e.data)))

        self.b["events"].open_perf_buffer(cb)

    def attach(self, binary: str, w: int, r: int) -> None:
        self.seen.clear()
        self.b.attach_uprobe(name=binary, addr=w, fn_name="on_write")
        self.b.attach_uprobe(name=binary, addr=r, fn_name="on_read")
        self.b.attach_uretprobe(name=binary, addr=r, fn_name="on_read_ret")

    def detach(self, binary: str, w: int, r: int) -> None:
        self.b.detach_uprobe(name=binary, addr=w)
        self.b.detach_uprobe(name=binary, addr=r)
        self.b.detach_uretprobe(name=binary, addr=r)


def verify(probes: Probes, binary: str, kind: str, timeout: float = 120) -> tuple[bool, str]:
    from tracer.mock import MockServer

    an = analyze_path(binary)
    if an is None:
        return False, "no BoringSSL found"
    w, r = an.found["SSL_write"], an.found["SSL_read"]
    probes.attach(binary, w, r)
    b, seen = probes.b, probes.seen
    with MockServer() as srv, tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, HOME=home, NODE_EXTRA_CA_CERTS=str(srv.cert_path), DISABLE_TELEMETRY="1",
                   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", ANTHROPIC_API_KEY="sk-test",
                   ANTHROPIC_BASE_URL="https://127.0.0.1:%d" % srv.port)
        if kind == "claude":
            cmd = [binary, "-p", "say hi"]
        else:
            env["NODE_TLS_REJECT_UNAUTHORIZED"] = "0"   # Bun < 1.2 ignores NODE_EXTRA_CA_CERTS
            cmd = [binary, "-e", "const r = await fetch('https://127.0.0.1:%d/v1/messages', {method: 'POST',"
                   " headers: {'content-type': 'application/json', 'x-api-key': 'sk-test', "
                   "'anthropic-version': '2023-06-01'}, body: JSON.stringify({model: 'claude-x', "
                   "max_tokens: 10, messages: [{role: 'user', content: 'hi'}]})}); "
                   "console.log(r.status, (await r.text()).length)" % srv.port]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env, cwd=home, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        dt = time.monotonic() - t0
        for _ in range(5):
            b.perf_buffer_poll(timeout=200)
    probes.detach(binary, w, r)
    writes = [d for k, _, d in seen if k == 1]
    reads = [d for k, ret, d in seen if k == 2 and ret > 0]
    req = [d for d in writes if d[:5] in (b"POST ", b"HEAD ", b"GET /")]
    resp = [d for d in reads if d.startswith(b"HTTP/1.1 ")]
    ok = bool(req) and bool(resp)
    detail = ("SSL_write=%#x SSL_read=%#x: %d SSL_write / %d SSL_read(>0) hits, first request %r, "
              "first response %r, client exit %d in %.1f s"
              % (w, r, len(writes), len(reads), req[0][:30] if req else None,
                 resp[0][:20] if resp else None, proc.returncode, dt))
    if not ok:
        detail += "; client stderr: %r" % proc.stderr[-300:]
    return ok, detail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="*", help="KIND VERSION pairs (kind: claude or bun)")
    ap.add_argument("--binary")
    ap.add_argument("--kind", default="claude")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per client run (default: %(default)s)")
    args = ap.parse_args()
    jobs = []
    if args.binary:
        jobs.append((args.binary, args.kind, args.binary))
    it = iter(args.pairs)
    for kind, version in zip(it, it):
        jobs.append((str(fetch_npm_release(PACKAGES[kind], version)), kind, "%s %s" % (kind, version)))
    bad = 0
    probes = Probes()
    for binary, kind, label in jobs:
        ok, detail = verify(probes, binary, kind, args.timeout)
        bad += not ok
        print("%s %s: %s" % ("OK  " if ok else "FAIL", label, detail), flush=True)
    probes.b.cleanup()
    print("%d/%d confirmed; %s" % (len(jobs) - bad, len(jobs), machine()), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
