"""What differs between guest architectures: QEMU machine, serial console, kernel flavour, wheels,
and how a foreign userspace is built on this host (qemu-user through binfmt_misc)."""

from __future__ import annotations

import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from vmkit.util import apt_install, log, run


@dataclass(frozen=True)
class Arch:
    name: str                 # Debian architecture (and kernel flavour suffix): amd64, arm64
    machine: str              # uname -m in the guest, wheel platform suffix: x86_64, aarch64
    qemu: str                 # qemu-system-* binary
    qemu_pkg: str             # the Debian package holding it
    qemu_args: tuple[str, ...]
    console: str              # the kernel's serial console device
    # The device /init writes the payload's output to: a second UART where the machine has one
    # (x86's ttyS1), else "console" (the arm64 virt board has one PL011), in which case the
    # runner reads the verdict from the console log.
    result_tty: str
    user_static: str = ""     # qemu-user binary that runs this arch's programs on another host
    timeout: int = 900        # default seconds before a guest is killed (emulated arm64 is slower)
    time_scale: int = 1       # TRACER_TEST_TIME_SCALE: how much longer the tests' own waits may be

    @property
    def native(self) -> bool:
        return platform.machine() == self.machine

    @property
    def two_serials(self) -> bool:
        return self.result_tty != "console"


ARCHES = {
    "amd64": Arch("amd64", "x86_64", "qemu-system-x86_64", "qemu-system-x86",
                  ("-accel", "tcg,thread=multi", "-cpu", "max"), "ttyS0", "ttyS1"),
    # -M virt with the emulated "max" CPU; pauth-impdef: QEMU's own pointer-authentication hash,
    # much cheaper to emulate than the architected QARMA (the guest cannot tell the difference).
    "arm64": Arch("arm64", "aarch64", "qemu-system-aarch64", "qemu-system-arm",
                  ("-accel", "tcg,thread=multi", "-M", "virt", "-cpu", "max,pauth-impdef=on"),
                  "ttyAMA0", "console", user_static="qemu-aarch64-static", timeout=2700,
                  time_scale=4),
}

_BINFMT = Path("/proc/sys/fs/binfmt_misc")


def ensure_host_tools(arches: list[Arch]) -> None:
    need = {"debootstrap": "debootstrap", "cpio": "cpio"}
    for a in arches:
        need[a.qemu] = a.qemu_pkg
        if not a.native:
            need[a.user_static] = "qemu-user-static"
            need["update-binfmts"] = "binfmt-support"
    missing = sorted({pkg for exe, pkg in need.items() if shutil.which(exe) is None})
    if missing:
        apt_install(missing)
    for a in arches:
        if not a.native:
            ensure_binfmt(a)


def ensure_binfmt(a: Arch) -> None:
    """Let this host run the guest architecture's programs (debootstrap's second stage and the venv
    build run in a chroot of the guest's userspace): qemu-user-static's binfmt_misc entry, with the
    F flag (the interpreter is opened at registration, so it works inside any chroot)."""
    entry = _BINFMT / f"qemu-{a.machine}"
    if not (_BINFMT / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(_BINFMT)], check=False)
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        run(["update-binfmts", "--enable", f"qemu-{a.machine}"], check=False)
    text = entry.read_text() if entry.exists() else ""
    flags = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("flags:")), "")
    if not text.startswith("enabled") or "F" not in flags:
        sys.exit(f"vm-test: cannot run {a.machine} programs on this host (binfmt_misc entry {entry}: "
                 f"{text.strip() or 'missing'}); install qemu-user-static and binfmt-support")
    log(f"{a.machine} programs run through {text.splitlines()[1].split()[-1]} (binfmt_misc, flags {flags})")


def host_arch() -> Arch:
    return next((a for a in ARCHES.values() if a.native), ARCHES["amd64"])


def parse_entry(entry: str) -> tuple[Arch, str]:
    """"arm64-bookworm-6.1" -> (arm64, "bookworm-6.1"); entries without an arch are amd64."""
    head, _, rest = entry.partition("-")
    if head in ARCHES and rest:
        return ARCHES[head], rest
    return ARCHES["amd64"], entry

