"""The vm-test runner: resolve the matrix, build the images, boot the guests, report."""

from __future__ import annotations

import argparse
import fcntl
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from vmkit.apt import SUITES, Apt, Kernels
from vmkit.arch import ARCHES, Arch, ensure_host_tools, parse_entry
from vmkit.images import PAYLOADS, build_base, build_claude, build_kernel, build_payload, build_venv
from vmkit.qemu import RUNNING, Guest, boot
from vmkit.util import log


# The default matrix: [ARCH-]USERSPACE-KERNELSPEC. ARCH is amd64 (the default) or arm64; KERNELSPEC is
# a version prefix ("6.1", "6.12", "7") resolved to the newest matching kernel of that architecture,
# preferring packages built for that userspace's release (+deb12 / +deb13 / 6.1.0-N) and falling back
# to any suite (7.x lives in trixie-backports). An exact kernel release ("6.1.0-41",
# "6.12.117+deb12") pins one.
# One arm64 guest runs in CI (an arm64 TCG guest takes several x86 guests' time); the 6.1 arm64
# kernel is one KERNELS entry away: KERNELS="arm64-bookworm-6.1 arm64-bookworm-6.12".
DEFAULT_MATRIX = ("bookworm-6.1", "bookworm-6.12", "bookworm-7", "trixie-6.12", "arm64-bookworm-6.12")

# Claude Code releases copied into the guests of an architecture (ARCH:VERSION): its native
# `claude -p` round trip (tests/integration/test_claude_code.py) then runs there too. The guest has
# no network: the release comes from the host's npm download cache (tracer.testing.releases).
DEFAULT_CLAUDE = "arm64:2.1.250"

# What runs in each guest: the integration tests of `tracer run` / `tracer attach` with the curl,
# CPython (ssl), httpx (h2) and Node clients (HTTP/1.1 and HTTP/2) against the mock server.
# Left out: the Claude Code tests (they download releases from npm; the guest has no network), the
# fault/load tests (thousands of streams: minutes each under TCG) and the tests whose premise is a
# fixed wall-clock window (attach while a 5 s response is still streaming, SIGTERM 1.5 s after
# attach, kill a client 2 s into a stream): under TCG the BCC compile+attach alone outlasts those
# windows, so they fail for the emulator's speed, not the kernel's behaviour (measured: they fail on
# every kernel, and the h2 one also flips under load).
DEFAULT_PYTEST_ARGS = ('tests/integration/test_capture.py tests/integration/test_http2_capture.py '
                       'tests/integration/test_process_tree.py '
                       '-m "not slow" -k "not midstream and not sigterm and not mid_connection '
                       'and not during_a_streaming and (not test_process_tree or shell_script_with '
                       'or forked_children)"')


def parse_matrix(entries: list[str]) -> list[tuple[str, Arch, str, str]]:
    """(entry, arch, userspace, kernel spec) for each matrix entry."""
    out = []
    for entry in entries:
        arch, rest = parse_entry(entry)
        userspace, _, spec = rest.partition("-") if rest.split("-", 1)[0] in SUITES else ("bookworm", "", rest)
        if userspace not in SUITES or not spec:
            sys.exit(f"vm-test: bad matrix entry {entry!r} (want e.g. bookworm-6.1, trixie-6.12, bookworm-7, "
                     f"arm64-bookworm-6.12)")
        out.append((entry, arch, userspace, spec))
    return out


def resolve_matrix(apt: Apt, entries: list[tuple[str, Arch, str, str]]) -> list[Guest]:
    kernels = Kernels(apt)
    return [Guest(entry, userspace, kernels.resolve(userspace, spec, arch.name), arch)
            for entry, arch, userspace, spec in entries]


def parse_claude(spec: str) -> dict[str, list[str]]:
    """"arm64:2.1.220 arm64:2.1.332" -> {"arm64": ["2.1.220", "2.1.332"]}."""
    out: dict[str, list[str]] = {}
    for item in spec.replace(",", " ").split():
        if item == "none":
            continue
        arch, _, version = item.partition(":")
        if arch not in ARCHES or not re.fullmatch(r"\d+\.\d+\.\d+", version):
            sys.exit(f"vm-test: bad --claude item {item!r} (want ARCH:VERSION, e.g. arm64:2.1.220)")
        out.setdefault(arch, []).append(version)
    return out


def guest_pytest_args(args: str, versions: list[str]) -> str:
    """The guest's pytest arguments plus the native Claude Code round trip of each copied release."""
    tests = " ".join(f"'tests/integration/test_claude_code.py::test_claude_say_hi_traced[native-{v}]'"
                     for v in versions)
    return f"{args} {tests}" if tests else args


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", default=os.environ.get("KERNELS") or " ".join(DEFAULT_MATRIX),
                    help="space-separated matrix entries [ARCH-]USERSPACE-KERNEL, e.g. 'bookworm-6.1 "
                         "trixie-6.12 bookworm-7 arm64-bookworm-6.12' or an exact release '6.1.0-41' "
                         "(default: %(default)s)")
    ap.add_argument("--claude", default=os.environ.get("VM_CLAUDE") or DEFAULT_CLAUDE,
                    help="Claude Code releases (ARCH:VERSION, space-separated) copied into that "
                         "architecture's guests, whose tests then include the native `claude -p` round "
                         "trip; the 'verify' payload checks their located SSL_read/SSL_write with "
                         "uprobes; 'none' copies none (default: %(default)r)")
    ap.add_argument("--payload", choices=sorted(PAYLOADS), default=os.environ.get("PAYLOAD") or "tests")
    ap.add_argument("--pytest-args", default=os.environ.get("VM_PYTEST_ARGS")
                    or DEFAULT_PYTEST_ARGS, help="arguments for the guest's pytest (default: %(default)s)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("VM_CACHE", "/var/cache/tracer/vm")))
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("VM_TIMEOUT") or 0) or None,
                    help="seconds before a guest is killed (default: 900 for amd64 guests, 2700 for "
                         "arm64 ones, whose TCG emulation is several times slower)")
    # One vCPU per guest, two guests at a time: measured 1.5x faster than one 2-vCPU guest at a time
    # on this 2-core host (a guest mostly keeps one vCPU busy), and it avoids a QEMU 7.2 multi-threaded
    # TCG fault seen with -smp 2: a vCPU executing a stale int3 left by the kernel's text patching
    # ("Oops: int3" in __schedule, 6.12.118, in one run of four).
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("VM_JOBS", "2")),
                    help="guests booted at the same time (default: %(default)s)")
    ap.add_argument("--mem", default="3G", help="guest memory (default: %(default)s)")
    ap.add_argument("--mem-claude", default="5G",
                    help="memory of a guest that holds Claude Code releases (default: %(default)s)")
    ap.add_argument("--smp", type=int, default=int(os.environ.get("VM_SMP", "1")),
                    help="vCPUs per guest (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep each guest's logs (always kept on failure)")
    ap.add_argument("--lists-max-age", type=float, default=float(os.environ.get("VM_LISTS_MAX_AGE", "3600")),
                    help="re-read the mirror's package lists when older than this many seconds (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="resolve and print the matrix, then exit")
    a = ap.parse_args()

    if os.geteuid() != 0:
        sys.exit("vm-test: run as root (debootstrap, chroot)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # so that `finally` stops the guests
    t_start = time.time()
    matrix = parse_matrix(a.kernels.split())
    claude = parse_claude(a.claude)
    arches = sorted({m[1] for m in matrix}, key=lambda x: x.name)
    ensure_host_tools(arches)
    a.cache.mkdir(parents=True, exist_ok=True)
    lockf = open(a.cache / ".lock", "w")
    try:
        fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"waiting for another vm-test run using {a.cache}")
        fcntl.flock(lockf, fcntl.LOCK_EX)
    apt = Apt(a.cache / "apt", [x.name for x in arches])
    apt.update(a.lists_max_age)
    guests = resolve_matrix(apt, matrix)
    for g in guests:
        k = g.kernel
        log(f"matrix {g.name}: {g.arch.name} {g.userspace} userspace, kernel {k.release} "
            f"({k.image_pkg} {k.version}, {k.suite})"
            + "".join(f", Claude Code {v}" for v in claude.get(g.arch.name, [])))
    if a.list:
        return 0

    runs = a.cache / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    payloads = {}
    for x in arches:
        payloads[x.name] = runs / f"payload-{x.name}.cpio"
        versions = claude.get(x.name, [])
        build_payload(payloads[x.name], a.payload, guest_pytest_args(a.pytest_args, versions), x, versions)

    # Images are built in matrix order by this thread (downloads, debootstrap: mostly I/O) while the
    # guests whose images are ready already boot (CPU): a cold run overlaps the two.
    ready: queue.Queue = queue.Queue()
    out_lock = threading.Lock()

    def report(g: Guest, rundir: Path | None) -> None:
        with out_lock:
            print(f"KERNEL {g.kernel.release} {g.result} {g.seconds:.0f}s  ({g.name}, {g.arch.name} "
                  f"{g.userspace} userspace)", flush=True)
            for d in g.details:
                print(f"    {d}", flush=True)
            if rundir and g.result == "FAIL":
                print(f"    logs: {rundir}/console.log {rundir}/result.log", flush=True)
            elif rundir and not a.keep:
                shutil.rmtree(rundir, ignore_errors=True)

    def worker():
        while (item := ready.get()) is not None:
            g, vmlinuz, layers = item
            rundir = runs / g.name
            mem = a.mem_claude if claude.get(g.arch.name) else a.mem
            boot(g, vmlinuz, layers, rundir, a.timeout or g.arch.timeout, mem, a.smp)
            report(g, rundir)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, a.jobs))]
    for t in threads:
        t.start()
    bases: dict[tuple[str, str], list[Path] | str] = {}
    kernels: dict[str, tuple[Path, Path]] = {}
    extras: dict[str, list[Path] | str] = {}
    try:
        for g in guests:
            us = (g.userspace, g.arch.name)
            try:
                if us not in bases:
                    try:
                        rootfs, base, key = build_base(a.cache, g.userspace, g.arch)
                        bases[us] = [base, build_venv(a.cache, g.userspace, g.arch, rootfs, key)]
                    except (SystemExit, subprocess.CalledProcessError) as e:
                        bases[us] = f"building the {g.userspace} {g.arch.name} userspace failed: {e}"
                if isinstance(bases[us], str):
                    raise SystemExit(bases[us])
                if g.arch.name not in extras:
                    try:
                        extras[g.arch.name] = [build_claude(a.cache, g.arch, v)
                                               for v in claude.get(g.arch.name, [])]
                    except (SystemExit, subprocess.CalledProcessError) as e:
                        extras[g.arch.name] = f"copying Claude Code into the {g.arch.name} guests failed: {e}"
                if isinstance(extras[g.arch.name], str):
                    raise SystemExit(extras[g.arch.name])
                if g.kernel.release not in kernels:
                    kernels[g.kernel.release] = build_kernel(a.cache, apt, g.kernel)
            except (SystemExit, subprocess.CalledProcessError) as e:
                g.details.append(f"image build failed: {e}")
                report(g, None)
                continue
            vmlinuz, hdr = kernels[g.kernel.release]
            ready.put((g, vmlinuz, [*bases[us], hdr, *extras[g.arch.name], payloads[g.arch.name]]))
        log(f"images ready in {time.time() - t_start:.0f}s")
        for _ in threads:
            ready.put(None)
        for t in threads:
            t.join()
    finally:
        for p in list(RUNNING):          # interrupted: no guest outlives the runner
            p.kill()
    for d in (a.cache / "kernels").iterdir():     # kernels that left the matrix a week ago
        if d not in {v.parent for v, _ in kernels.values()}:
            if time.time() - d.stat().st_mtime > 7 * 86400:
                shutil.rmtree(d, ignore_errors=True)
        else:
            os.utime(d)
    failed = [g for g in guests if g.result != "PASS"]
    log(f"{len(guests) - len(failed)}/{len(guests)} guests passed in {time.time() - t_start:.0f}s total")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
