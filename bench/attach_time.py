"""Attach time: from starting `tracer attach --pid P` until it says "tracing" (probes in place, ring
open: capturing), cold (empty locate and BPF bytecode caches) and warm (the same caches again), for an
idle CPython client (libssl.so.3), an idle Node client (static OpenSSL in the node binary) and, when a
release is cached, Claude Code's native Bun binary (stripped BoringSSL, found by fingerprints) waiting
on a slow mock response. Capturing is checked: after attaching, the Python and Node clients make one
request, which must be in the log.

    .venv/bin/python bench/attach_time.py [--warm 3] [--drop-page-cache]

--drop-page-cache also empties the kernel page cache before each cold attach (whole machine; slower
for everyone for a moment), so "cold" includes reading the binaries from disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import PY_CLIENT, ROOT, logs, machine, start_attach, stop_tracer  # noqa: E402

from tracer.mock import MockServerProcess  # noqa: E402

NODE_CLIENT = ROOT / "tests" / "integration" / "clients" / "node_client.mjs"
CACHE_ROOT = Path("/var/cache/tracer/bench")   # not under /tmp: the BPF cache refuses others-writable parents
CLAUDE = sorted(Path("/var/cache/tracer/npm/anthropic-ai+claude-code-linux-x64").glob("*/package/claude"))


def fresh_caches() -> tuple[Path, dict]:
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="attach-", dir=CACHE_ROOT))
    env = dict(os.environ, TRACER_CACHE_DIR=str(d / "locate"), TRACER_BPF_CACHE_DIR=str(d / "bpf"))
    return d, env


def target_cmd(kind: str, srv, go: Path) -> list[str]:
    if kind == "python":
        return ["/usr/bin/python3", str(PY_CLIENT), srv.url, str(srv.ca_path), "--json", "--go-file", str(go)]
    if kind == "node":
        return [shutil.which("node") or "/usr/bin/node", str(NODE_CLIENT), srv.url, "--json", "--go-file", str(go)]
    return [str(CLAUDE[-1]), "-p", "say hi"]


def one(kind: str, srv, env: dict, tmp: Path, tag: str, drop: bool) -> tuple[float, bool]:
    go = tmp / f"go-{kind}-{tag}"
    home = tmp / f"home-{kind}-{tag}"
    home.mkdir()
    tenv = dict(os.environ, ANTHROPIC_BASE_URL=srv.url, NODE_EXTRA_CA_CERTS=str(srv.ca_path), HOME=str(home),
                ANTHROPIC_API_KEY="sk-test", DISABLE_TELEMETRY="1", DISABLE_AUTOUPDATER="1",
                CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    t = subprocess.Popen(target_cmd(kind, srv, go), env=tenv, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, cwd=str(tmp))
    time.sleep(1.5 if kind != "python" else 0.5)     # loaded, its TLS library mapped, idle
    if drop:
        subprocess.run(["sync"])
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    tr, secs, _ = start_attach([t.pid], tmp / f"log-{kind}-{tag}", "--include-all-requests", env=env)
    captured = False
    if kind != "claude":
        go.touch()
        t.wait(60)
        time.sleep(0.5)
        err = stop_tracer(tr)
        lf = logs(tmp / f"log-{kind}-{tag}")
        captured = bool(lf) and lf[0].stat().st_size > 0
        if not captured:
            print(err)
    else:
        err = stop_tracer(tr)
        t.send_signal(signal.SIGKILL)
        t.wait(10)
        captured = True
    return secs, captured


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--drop-page-cache", action="store_true")
    ap.add_argument("--targets", default="python,node,claude")
    args = ap.parse_args()
    print(machine())
    kinds = [k for k in args.targets.split(",") if k != "claude" or CLAUDE]
    with MockServerProcess(knobs={"ttfb_ms": 60000}) as slow, MockServerProcess() as srv, \
            tempfile.TemporaryDirectory(prefix="tracer-bench-at-") as tmpd:
        tmp = Path(tmpd)
        for kind in kinds:
            cache, env = fresh_caches()
            try:
                s = slow if kind == "claude" else srv
                cold, ok = one(kind, s, env, tmp, "cold", args.drop_page_cache)
                warm = []
                oks = [ok]
                for i in range(args.warm):
                    w, ok = one(kind, s, env, tmp, f"warm{i}", False)
                    warm.append(w)
                    oks.append(ok)
                name = {"python": "CPython (libssl.so.3)", "node": "Node (static OpenSSL)",
                        "claude": f"Claude Code {CLAUDE[-1].parts[-3]} (Bun, BoringSSL)"}[kind]
                print(f"{name:42s} cold {cold:5.2f} s | warm median {statistics.median(warm):5.2f} s "
                      f"(min {min(warm):.2f}, max {max(warm):.2f}) | captured after attach: {all(oks)}",
                      flush=True)
            finally:
                shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
