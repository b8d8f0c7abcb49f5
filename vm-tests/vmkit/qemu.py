"""Boot one guest under QEMU (TCG) and read its verdict from the second serial port."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmkit.apt import Kernel
from vmkit.arch import Arch

RUNNING: set = set()          # qemu processes, killed if the runner is interrupted


@dataclass
class Guest:
    name: str                  # matrix entry, e.g. bookworm-6.12
    userspace: str
    kernel: Kernel
    arch: Arch
    result: str = "FAIL"
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)


def _die_with_parent() -> None:
    """In the qemu child: SIGKILL when the runner's thread that started it dies (even by SIGKILL)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)    # PR_SET_PDEATHSIG


def boot(g: Guest, vmlinuz: Path, layers: list[Path], rundir: Path, timeout: int, mem: str,
         smp: int) -> None:
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    # The concatenated initrd (~650 MB) goes to RAM when there is room: writing it to disk costs seconds.
    shm = Path("/dev/shm")
    total = sum(l.stat().st_size for l in layers)
    if total >= (1 << 31) - (1 << 12):     # QEMU reads the initrd with one read(), capped at 2 GiB
        g.details.append(f"the initramfs is {total >> 20} MB; QEMU loads at most 2 GB: copy fewer "
                         f"Claude Code releases (--claude) into one guest")
        g.result = "FAIL"
        return
    tmpdir = shm if shm.is_dir() and shutil.disk_usage(shm).free > 3 * total else rundir
    # Unlinked at once and handed to qemu as an open descriptor: nothing is left behind in RAM even
    # if the runner is killed.
    fd, name = tempfile.mkstemp(prefix=f"vmtest-{g.name}-", suffix=".cpio", dir=tmpdir)
    os.unlink(name)
    try:
        with open(fd, "wb", closefd=False) as out:
            for l in layers:
                with open(l, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        arch = g.arch
        console = rundir / "console.log"
        result = rundir / "result.log" if arch.two_serials else console
        cmd = [arch.qemu, *arch.qemu_args, "-m", mem,
               "-smp", str(smp), "-nodefaults", "-display", "none", "-no-reboot",
               "-kernel", str(vmlinuz), "-initrd", f"/dev/fd/{fd}",
               "-append", f"console={arch.console} panic=-1 quiet",
               "-serial", f"file:{console}"]
        if arch.two_serials:
            cmd += ["-serial", f"file:{result}"]
        t0 = time.time()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             preexec_fn=_die_with_parent, pass_fds=(fd,))
        RUNNING.add(p)
        try:
            qemu_out, _ = p.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            p.kill()
            qemu_out, _ = p.communicate()
            timed_out = True
        g.seconds = time.time() - t0
        RUNNING.discard(p)
    finally:
        os.close(fd)
    text = result.read_text(errors="replace").replace("\r\n", "\n") if result.exists() else ""
    m = re.search(r"^VMTEST-EXIT (\d+)", text, re.M)
    summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|error|skipped|deselected).* in [\d.]+s)", text, re.M)
    if summary:
        g.details.append(summary[-1].strip("= "))
    # the verify payload's one line per checked binary
    g.details += [l for l in text.splitlines() if re.match(r"(OK  |FAIL) \S+ \S+: ", l)]
    vacuous = summary and not re.search(r"\d+ passed", summary[-1])
    if m and m.group(1) == "0" and not timed_out and not vacuous:
        g.result = "PASS"
        return
    g.result = "FAIL"
    if vacuous:
        g.details.append("no test passed (all skipped or deselected?)")
    if timed_out:
        g.details.append(f"timed out after {timeout}s")
    elif not m:
        g.details.append(f"no exit status from the guest (qemu exit {p.returncode})")
    fails = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)
    g.details += [f"failed: {t}" for t in fails]
    if not fails:
        g.details += ["payload output (tail):"] + (["  " + l for l in text.splitlines()[-25:]]
                                                   or ["  (none: /init did not get to run it)"])
    if timed_out or not m:
        cons = console.read_text(errors="replace") if console.exists() else ""
        g.details += ["console (tail):"] + (["  " + l for l in cons.splitlines()[-30:]]
                                            or ["  (empty: quiet boot, no warning or panic yet)"])
        if qemu_out.strip():
            g.details += ["qemu:"] + ["  " + l for l in qemu_out.decode(errors="replace").splitlines()[-10:]]
