#!/usr/bin/env python3
"""Pipeline smoke test for a vm-test guest (`make vm-test PAYLOAD=smoke`).

Independent of the tracer: a BCC uprobe on libssl's SSL_write and a uretprobe on SSL_read must see
the plaintext of one curl request to a local `openssl s_server` (over TLS on 127.0.0.1). Proves that
the guest kernel, its headers, BCC and the clients work together. Exit status 0 on success.
"""

from __future__ import annotations

import ctypes
import glob
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid

from bcc import BPF

BPF_TEXT = r"""
#include <uapi/linux/ptrace.h>

#define CHUNK 256

struct event_t {
    u32 pid;
    u32 dir;          // 0 = write (request), 1 = read (response)
    u32 len;
    char data[CHUNK];
};

BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(scratch, struct event_t, 1);
BPF_HASH(read_bufs, u64, u64);

static int emit(struct pt_regs *ctx, u32 dir, const void *buf, int len) {
    int zero = 0;
    struct event_t *ev = scratch.lookup(&zero);
    if (!ev || len <= 0)
        return 0;
    ev->pid = bpf_get_current_pid_tgid() >> 32;
    ev->dir = dir;
    ev->len = len;
    u64 n = len < CHUNK - 1 ? len : CHUNK - 1;
    asm volatile("%0 &= 255" : "+r"(n));     // a bound the verifier sees (clang drops a C mask)
    bpf_probe_read_user(ev->data, n, buf);
    events.perf_submit(ctx, ev, sizeof(*ev));
    return 0;
}

int on_write(struct pt_regs *ctx) {
    return emit(ctx, 0, (const void *)PT_REGS_PARM2(ctx), (int)PT_REGS_PARM3(ctx));
}

int on_read_enter(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u64 buf = PT_REGS_PARM2(ctx);
    read_bufs.update(&id, &buf);
    return 0;
}

int on_read_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u64 *buf = read_bufs.lookup(&id);
    if (!buf)
        return 0;
    u64 b = *buf;
    read_bufs.delete(&id);
    return emit(ctx, 1, (const void *)b, (int)PT_REGS_RC(ctx));
}
"""


class Event(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint32), ("dir", ctypes.c_uint32), ("len", ctypes.c_uint32),
                ("data", ctypes.c_char * 256)]


def libssl() -> str:
    for pat in ("/usr/lib/*-linux-gnu/libssl.so.3", "/lib/*-linux-gnu/libssl.so.3", "/usr/lib*/libssl.so.3"):
        hits = glob.glob(pat)
        if hits:
            return os.path.realpath(hits[0])
    sys.exit("smoke: libssl.so.3 not found")


def main() -> int:
    t0 = time.time()
    print(f"smoke: kernel {os.uname().release}", flush=True)
    lib = libssl()
    work = tempfile.mkdtemp(prefix="smoke-")
    key, cert = os.path.join(work, "key.pem"), os.path.join(work, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=localhost", "-days", "1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    port = random.randint(20000, 60000)
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-key", key,
                               "-cert", cert, "-www", "-quiet"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        b = BPF(text=BPF_TEXT)
        print(f"smoke: BPF program compiled and loaded in {time.time() - t0:.1f}s", flush=True)
        b.attach_uprobe(name=lib, sym="SSL_write", fn_name="on_write")
        b.attach_uprobe(name=lib, sym="SSL_read", fn_name="on_read_enter")
        b.attach_uretprobe(name=lib, sym="SSL_read", fn_name="on_read_return")
        seen: list[tuple[int, int, bytes]] = []

        def on_event(_cpu, data, _size):
            ev = ctypes.cast(data, ctypes.POINTER(Event)).contents
            seen.append((ev.pid, ev.dir, bytes(ev.data[: min(ev.len, 255)])))

        b["events"].open_perf_buffer(on_event)
        marker = f"/smoke-{uuid.uuid4().hex}"
        for _ in range(50):                       # s_server may still be starting
            curl = subprocess.run(["curl", "-sk", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}",
                                   f"https://127.0.0.1:{port}{marker}"], capture_output=True, text=True)
            if curl.returncode == 0:
                break
            time.sleep(0.2)
        print(f"smoke: curl exit {curl.returncode}, HTTP {curl.stdout}", flush=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            b.perf_buffer_poll(timeout=200)
            got_req = any(d == 0 and f"GET {marker} HTTP/1.1".encode() in data for _, d, data in seen)
            got_resp = any(d == 1 and data.startswith(b"HTTP/1.") for _, d, data in seen)
            if got_req and got_resp:
                print(f"smoke: PASS - SSL_write request and SSL_read response captured "
                      f"({len(seen)} events, {time.time() - t0:.1f}s)", flush=True)
                return 0
        print(f"smoke: FAIL - request seen={got_req} response seen={got_resp}; events:", flush=True)
        for pid, d, data in seen[:20]:
            print(f"  pid={pid} dir={d} {data[:80]!r}", flush=True)
        return 1
    finally:
        server.kill()


if __name__ == "__main__":
    sys.exit(main())
