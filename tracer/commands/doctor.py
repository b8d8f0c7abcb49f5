"""`tracer doctor`: can this machine run tracer? One line per check, with a fix for each failure."""

from __future__ import annotations

import io
import os
import platform
import sys
from dataclasses import dataclass

import click

from tracer import libbpf, paths
from tracer.errors import TracerError
from tracer.probes import kheaders
from tracer.probes.attach import TRACEFS
from tracer.probes.load import load_program

CAP_PERFMON, CAP_BPF, CAP_SYS_ADMIN = 38, 39, 21


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False


def _caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_privileges() -> Check:
    if os.geteuid() == 0:
        return Check("privileges", True, "running as root")
    caps = _caps()
    if (caps >> CAP_BPF) & 1 and (caps >> CAP_PERFMON) & 1:
        return Check("privileges", True, "CAP_BPF and CAP_PERFMON present")
    return Check("privileges", False, "not root and no CAP_BPF+CAP_PERFMON", "run with sudo")


def check_kernel() -> Check:
    rel = platform.release()
    try:
        major, minor = (int(x) for x in rel.split(".")[:2])
    except ValueError:
        return Check("kernel", False, f"cannot parse kernel version {rel!r}", warn=True)
    ok = (major, minor) >= (5, 8)
    return Check("kernel", ok, f"{rel} ({'BPF ring buffer available' if ok else 'too old'})",
                 "" if ok else "tracer needs Linux >= 5.8 (BPF ring buffer)")


def check_uprobes() -> Check:
    if os.path.exists("/sys/bus/event_source/devices/uprobe/type"):
        return Check("uprobes", True, "uprobe PMU present (perf_event_open uprobes)")
    for p in ("/sys/kernel/tracing/uprobe_events", "/sys/kernel/debug/tracing/uprobe_events"):
        if os.path.exists(p):
            return Check("uprobes", True, f"{p}")
    return Check("uprobes", False, "no uprobe PMU and no uprobe_events",
                 "kernel needs CONFIG_UPROBE_EVENTS=y")


def check_tracefs() -> Check:
    for p in TRACEFS:
        if os.path.exists(os.path.join(p, "uprobe_events")):
            return Check("tracefs", True, f"mounted at {p}")
    return Check("tracefs", False, "not mounted (tracepoints are found through it)",
                 "mount -t tracefs nodev /sys/kernel/tracing  (tracer does this itself when root)",
                 warn=True)


def check_btf() -> Check:
    p = "/sys/kernel/btf/vmlinux"
    if os.path.exists(p):
        return Check("BTF", True, p)
    return Check("BTF", False, "no /sys/kernel/btf/vmlinux (not needed for uprobes)", warn=True)


def check_bcc() -> Check:
    try:
        import bcc
        ver = getattr(bcc, "__version__", "?")
        return Check("BCC", True, f"python module {ver} ({os.path.dirname(bcc.__file__)})")
    except ImportError as e:
        return Check("BCC", False, f"cannot import bcc from {sys.executable}: {e}",
                     "apt-get install python3-bpfcc, and use /usr/bin/python3 or a venv created with "
                     "--system-site-packages (make bootstrap)")


def check_libbpf() -> Check:
    try:
        return Check("libbpf", True, f"libbpf {libbpf.version()} (libbpf.so.1)")
    except TracerError as e:
        return Check("libbpf", False, str(e).split(";")[0], libbpf.INSTALL_HINT)


def check_headers(build: bool) -> Check:
    try:
        c = kheaders.choose(build=build)
    except TracerError as e:                 # an untrusted cache directory named by the environment
        return Check("kernel headers", False, str(e), "unset it, or point it at a root-only directory")
    except OSError as e:
        return Check("kernel headers", False, f"building a merged tree failed: {e}",
                     "check free space in " + str(paths.kheaders_dir()))
    if c.source == "none":
        return Check("kernel headers", False, c.detail, kheaders.install_hint())
    return Check("kernel headers", True, f"{c.source}: {c.detail}")


def check_compile() -> Check:
    """Compile (or take from the bytecode cache) and load the real program: also warms the cache."""
    notes = io.StringIO()
    try:
        prog = load_program(ring_buffer_mb=1, stderr=notes)
    except TracerError as e:
        return Check("BPF program", False, str(e).splitlines()[0], "see the checks above")
    if prog.cache_hit:
        how = "from the bytecode cache"
    elif prog.backend == "bcc":
        how = "compiled with BCC in-process"
    else:
        how = "compiled with BCC and cached"
    prog.close()
    extra = f"; {notes.getvalue().strip()}" if notes.getvalue().strip() else ""
    return Check("BPF program", True, f"{how}, loaded by the kernel verifier in "
                 f"{prog.load_seconds:.2f} s" + extra)


def run_checks(compile_prog: bool = True) -> list[Check]:
    checks = [check_privileges(), check_kernel(), check_uprobes(), check_tracefs(), check_btf(),
              check_bcc(), check_libbpf()]
    root = checks[0].ok
    checks.append(check_headers(build=root and os.geteuid() == 0))
    if compile_prog and root and all(c.ok or c.warn for c in checks):
        checks.append(check_compile())
    return checks


@click.command("doctor")
@click.option("--no-compile", is_flag=True, help="Skip compiling and loading the BPF program.")
def doctor_cmd(no_compile):
    """Check that this machine can run tracer; print a fix for each failure."""
    checks = run_checks(compile_prog=not no_compile)
    failed = False
    for c in checks:
        mark = "ok  " if c.ok else ("warn" if c.warn else "FAIL")
        click.echo(f"[{mark}] {c.name}: {c.detail}")
        if not c.ok and c.fix:
            click.echo(f"       fix: {c.fix}")
        failed |= not c.ok and not c.warn
    sys.exit(1 if failed else 0)


COMMANDS = [doctor_cmd]
