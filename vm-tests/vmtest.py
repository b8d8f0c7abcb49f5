#!/usr/bin/env python3
"""Run the tracer's eBPF tests inside QEMU guests booting several Debian kernels.

Each guest boots a Debian kernel straight into an initramfs that holds the whole root filesystem,
made of four concatenated newc cpio archives (the kernel unpacks them in order into one tmpfs):

  1. base    - a debootstrap'ed minimal Debian userspace (BCC, clients, openssl, ...) plus /init
  2. venv    - /opt/venv with the tracer's Python dependencies for that userspace's python3
  3. kernel  - that kernel's Debian header packages (what `tracer doctor` looks for) and config
  4. payload - a copy of this repository (tracked files only) and the command to run

Layers 1-3 are cached under --cache (default /var/cache/tracer/vm), keyed by their inputs, so a
warm run only writes the payload. Kernel versions are resolved from the mirror's package lists at
run time ("newest 6.1", "newest 7.x", ...). The guest writes the payload's output and exit status
to its second serial port; a guest that hangs or panics is killed at --timeout.

Output: one line per guest, ``KERNEL <uname -r> PASS|FAIL <seconds>s``; exit status 1 if any failed.
Stdlib only: runs with the system python3, no venv needed. Needs root (debootstrap, chroot).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import hashlib
import io
import json
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
SUITES = ("bookworm", "trixie")

# The default matrix: USERSPACE-KERNELSPEC. KERNELSPEC is a version prefix ("6.1", "6.12", "7")
# resolved to the newest matching amd64 kernel, preferring packages built for that userspace's
# release (+deb12 / +deb13 / 6.1.0-N) and falling back to any suite (7.x lives in trixie-backports).
# An exact kernel release ("6.1.0-41", "6.12.117+deb12") pins one.
DEFAULT_MATRIX = ("bookworm-6.1", "bookworm-6.12", "bookworm-7", "trixie-6.12")

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

BASE_PACKAGES = (
    "python3-bpfcc", "python3-venv", "openssl", "curl", "ca-certificates", "kmod", "procps",
    "iproute2", "nodejs",
)
# Bumped whenever the way a layer is built changes (the cache key includes it).
LAYER_FORMAT = {"base": 3, "venv": 3, "kernel": 2}

RUNNING: set = set()          # qemu processes, killed if the runner is interrupted

RELEASE_TAG = {"bookworm": "deb12", "trixie": "deb13"}


def log(msg: str) -> None:
    print(f"vm-test: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


def sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True).encode() if not isinstance(p, bytes) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# host tools

def ensure_host_tools() -> None:
    need = {"qemu-system-x86_64": "qemu-system-x86", "debootstrap": "debootstrap", "cpio": "cpio"}
    missing = [pkg for exe, pkg in need.items() if shutil.which(exe) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"vm-test: need root to install {' '.join(missing)}")
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=900"]
    if run(["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", *missing],
           env=env, check=False, stdout=subprocess.DEVNULL).returncode != 0:
        run(["apt-get", *lock, "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        run(["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", *missing],
            env=env, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------
# a private apt configuration (its own sources, lists and caches) for kernel packages

class Apt:
    def __init__(self, root: Path):
        self.root = root
        for d in ("lists/partial", "archives/partial", "etc/empty"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        lines = []
        for s in SUITES:
            lines += [f"deb {MIRROR} {s} main", f"deb {MIRROR} {s}-updates main",
                      f"deb {MIRROR} {s}-backports main", f"deb {SECURITY} {s}-security main"]
        (root / "etc/sources.list").write_text("\n".join(lines) + "\n")
        conf = {
            "Dir::State": root, "Dir::State::Lists": root / "lists", "Dir::State::status": root / "status",
            "Dir::Cache": root, "Dir::Cache::Archives": root / "archives",
            "Dir::Etc::SourceList": root / "etc/sources.list", "Dir::Etc::SourceParts": root / "etc/empty",
            "Dir::Etc::Preferences": root / "etc/none", "Dir::Etc::PreferencesParts": root / "etc/empty",
            "Dir::Etc::Parts": root / "etc/empty", "APT::Architecture": "amd64",
            "Acquire::Languages": "none", "APT::Sandbox::User": "root",
        }
        (root / "etc/apt.conf").write_text("".join(f'{k} "{v}";\n' for k, v in conf.items()))
        self.env = dict(os.environ, APT_CONFIG=str(root / "etc/apt.conf"))

    def update(self, max_age: float) -> None:
        stamp = self.root / "lists" / ".updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < max_age:
            return
        r = run(["apt-get", "update", "-q"], env=self.env, check=False, capture_output=True, text=True)
        if r.returncode != 0:
            if not any((self.root / "lists").glob("*Packages*")):
                sys.exit(f"vm-test: apt-get update failed:\n{r.stderr}")
            log("apt-get update failed; using the package lists from the last run")
        else:
            stamp.touch()

    def packages(self) -> list[dict]:
        """Every kernel-related stanza of every Packages index, with the suite it came from."""
        out = run(["apt-get", "indextargets", "--format", "$(FILENAME) $(CODENAME) $(SUITE)",
                   "Created-By: Packages"], env=self.env, capture_output=True, text=True).stdout
        result = []
        for line in out.splitlines():
            fn, suite, _suite = line.split(" ", 2)
            if not os.path.exists(fn):
                continue
            text = run(["/usr/lib/apt/apt-helper", "cat-file", fn], capture_output=True, text=True).stdout
            for stanza in text.split("\n\n"):
                if not stanza.startswith("Package: linux-"):
                    continue
                rec: dict = {"Suite": suite}
                for l in stanza.splitlines():
                    if l[:1] not in (" ", "\t") and ":" in l:
                        k, v = l.split(":", 1)
                        rec[k] = v.strip()
                result.append(rec)
        return result

    def download(self, specs: list[str], dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        run(["apt-get", "download", "-q", *specs], env=self.env, cwd=dest, stdout=subprocess.DEVNULL)


def version_key(v: str):
    """Natural sort key for kernel release strings such as 6.12.90+deb12.1 or 6.1.0-56."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|[a-z]+", v)]


@dataclass
class Kernel:
    release: str               # uname -r, e.g. 6.1.0-56-amd64
    version: str               # Debian package version
    suite: str                 # where it came from
    image_pkg: str             # package holding vmlinuz
    extra_pkgs: list[str]      # headers (common + arch), linux-base-* (7.x)


@dataclass
class Guest:
    name: str                  # matrix entry, e.g. bookworm-6.12
    userspace: str
    kernel: Kernel
    result: str = "FAIL"
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)


def resolve_matrix(apt: Apt, entries: list[str]) -> list[Guest]:
    recs = apt.packages()
    by_name: dict[str, list[dict]] = {}
    for r in recs:
        by_name.setdefault(r["Package"], []).append(r)
    # kernels we can boot: linux-image-R (with /boot/vmlinuz) or linux-binary[-unsigned]-R (7.x)
    releases: dict[str, dict] = {}
    for name, rs in by_name.items():
        m = re.fullmatch(r"linux-(?:image|binary(?:-unsigned)?)-(\d[^ ]*-amd64)", name)
        if not m or "-rt-" in name or "-cloud-" in name:
            continue
        rel = m.group(1)
        if f"linux-headers-{rel}" not in by_name or not any(int(r.get("Size", "0")) > 1_000_000 for r in rs):
            continue                       # meta packages (linux-image-6.12-amd64) are a few kB
        releases.setdefault(rel, rs[0])
    guests = []
    for entry in entries:
        userspace, _, spec = entry.partition("-") if entry.split("-", 1)[0] in SUITES else ("bookworm", "", entry)
        if userspace not in SUITES or not spec:
            sys.exit(f"vm-test: bad matrix entry {entry!r} (want e.g. bookworm-6.1, trixie-6.12, bookworm-7)")
        exact = [r for r in releases if r == spec or r == f"{spec}-amd64"]
        if exact:
            rel = exact[0]
        else:
            pat = re.compile(re.escape(spec) + r"[.\-+]")
            cands = [r for r in releases if pat.match(r)]
            tag = RELEASE_TAG[userspace]
            native = [r for r in cands if tag in r or (userspace == "bookworm" and re.match(r"6\.1\.0-", r))]
            cands = native or cands
            if not cands:
                sys.exit(f"vm-test: no bootable kernel matching {spec!r} on the mirror; available: "
                         + " ".join(sorted(releases, key=version_key)))
            rel = max(cands, key=version_key)
        guests.append(Guest(entry, userspace, kernel_packages(by_name, rel)))
    return guests


def kernel_packages(by_name: dict[str, list[dict]], rel: str) -> Kernel:
    def newest(name):
        rs = by_name.get(name)
        return max(rs, key=lambda r: version_key(r["Version"])) if rs else None

    image = None
    for cand in (f"linux-binary-{rel}", f"linux-binary-unsigned-{rel}", f"linux-image-{rel}",
                 f"linux-image-{rel}-unsigned"):
        r = newest(cand)
        if r and int(r.get("Size", "0")) > 1_000_000:      # 7.x linux-image-R is a 2 kB meta package
            image = r
            break
    if image is None:
        sys.exit(f"vm-test: no package with a vmlinuz for {rel}")
    hdr = newest(f"linux-headers-{rel}")
    extra = [hdr["Package"]]
    for dep in re.split(r",\s*", hdr.get("Depends", "")):
        name = dep.split()[0] if dep else ""
        if re.fullmatch(r"linux-headers-.*-common.*|linux-base-\d.*", name):
            extra.append(name)
    return Kernel(rel, image["Version"], image["Suite"], image["Package"], extra)


# ---------------------------------------------------------------------------------------------
# cpio (newc) writing

class Cpio:
    """Minimal newc writer for layers assembled from Python (payload, kernel)."""

    def __init__(self, f):
        self.f = f
        self.ino = 1000

    def _hdr(self, name: str, mode: int, size: int, mtime: int = 0, nlink: int = 1):
        name_b = name.encode() + b"\0"
        self.ino += 1
        fields = [self.ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, len(name_b), 0]
        hdr = b"070701" + b"".join(b"%08X" % x for x in fields) + name_b
        self.f.write(hdr + b"\0" * (-len(hdr) % 4))

    def _data(self, data: bytes):
        self.f.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str, mode: int = 0o755):
        self._hdr(name, stat.S_IFDIR | mode, 0, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644):
        self._hdr(name, stat.S_IFREG | mode, len(data))
        self._data(data)

    def symlink(self, name: str, target: str):
        t = target.encode()
        self._hdr(name, stat.S_IFLNK | 0o777, len(t))
        self._data(t)

    def path(self, name: str, src: Path):
        st = src.lstat()
        if stat.S_ISLNK(st.st_mode):
            self.symlink(name, os.readlink(src))
        elif stat.S_ISDIR(st.st_mode):
            self.dir(name, stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            self.file(name, src.read_bytes(), stat.S_IMODE(st.st_mode))

    def close(self):
        self._hdr("TRAILER!!!", 0, 0)
        pos = self.f.tell()
        self.f.write(b"\0" * (-pos % 512))


def cpio_from_dir(src: Path, out: Path, exclude: tuple[str, ...] = ()) -> None:
    """Pack a directory tree (as root: owners, devices, hard links kept) with GNU cpio."""
    tmp = out.with_suffix(".tmp")
    find = ["find", "."]
    for e in exclude:
        find += ["-path", f"./{e}", "-prune", "-o"]
    find += ["-print0"]
    with open(tmp, "wb") as f:
        p1 = subprocess.Popen(find, cwd=src, stdout=subprocess.PIPE)
        run(["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=src, stdin=p1.stdout, stdout=f)
        p1.wait()
    tmp.rename(out)


# ---------------------------------------------------------------------------------------------
# layers

INIT = r"""#!/bin/sh
# PID 1 of a vm-test guest: mount the API filesystems, run /payload/run.sh with its output on the
# second serial port (ttyS1), write its exit status there, power off.
export PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ln -sf /proc/self/fd /dev/fd 2>/dev/null
ip link set lo up
hostname vmguest
echo "VMTEST-BOOTED $(uname -r) $(cut -d' ' -f1 /proc/uptime)s" | tee /dev/console > /dev/ttyS1
cd /payload
sh /payload/run.sh > /dev/ttyS1 2>&1 < /dev/null
echo "VMTEST-EXIT $? $(cut -d' ' -f1 /proc/uptime)s" | tee /dev/console > /dev/ttyS1
sync
echo o > /proc/sysrq-trigger
sleep 30
"""

STRIP = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
         "var/lib/apt/lists", "var/cache/apt", "var/cache/debconf/templates.dat-old", "var/log")


def build_base(cache: Path, suite: str) -> tuple[Path, Path, str]:
    """debootstrap'ed userspace: returns (rootfs dir, base.cpio, key)."""
    key = sha("base", LAYER_FORMAT["base"], suite, BASE_PACKAGES, STRIP)
    d = cache / "rootfs" / f"{suite}-{key}"
    out = cache / "layers" / f"base-{suite}-{key}.cpio"
    if out.exists() and (d / ".complete").exists():
        return d, out, key
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log(f"building {suite} userspace (debootstrap) in {d}")
    for old in (cache / "rootfs").glob(f"{suite}-*"):
        shutil.rmtree(old, ignore_errors=True)
    d.mkdir(parents=True)
    r = run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite,
             str(d), MIRROR], check=False, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (d / "debootstrap/debootstrap.log")
        sys.exit(f"vm-test: debootstrap {suite} failed:\n{r.stderr[-3000:]}\n"
                 + (tail.read_text()[-3000:] if tail.exists() else ""))
    for s in STRIP:
        p = d / s
        if p.is_dir():
            shutil.rmtree(p)
            p.mkdir()
    for p in (d / "usr/share/locale",):
        p.mkdir(exist_ok=True)
    for sub in ("payload", "sys/fs/bpf", "sys/kernel/debug", "sys/kernel/tracing"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "etc/hostname").write_text("vmguest\n")
    (d / "etc/hosts").write_text("127.0.0.1 localhost vmguest\n::1 localhost\n")
    (d / "etc/resolv.conf").unlink(missing_ok=True)
    (d / "etc/resolv.conf").write_text("")
    cpio_from_dir(d, out, exclude=("opt/venv", "root/.cache", "debootstrap", ".complete"))
    (d / ".complete").touch()
    for old in (cache / "layers").glob(f"base-{suite}-*.cpio"):
        if old != out:
            old.unlink()
    log(f"{suite} userspace: {out.stat().st_size >> 20} MB in {time.time() - t0:.0f}s")
    return d, out, key


def project_deps() -> tuple[list[str], str]:
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = list(py.get("dependencies", []))
    for extra in ("test",):
        deps += py.get("optional-dependencies", {}).get(extra, [])
    scripts = py.get("scripts", {})
    return sorted(deps), scripts


def build_venv(cache: Path, suite: str, rootfs: Path, base_key: str) -> Path:
    """/opt/venv for the guest's python3 (system site-packages for BCC) with the project's deps."""
    deps, scripts = project_deps()
    key = sha("venv", LAYER_FORMAT["venv"], base_key, deps, scripts)
    out = cache / "layers" / f"venv-{suite}-{key}.cpio"
    if out.exists():
        return out
    t0 = time.time()
    log(f"building the {suite} venv ({len(deps)} requirements)")
    venv = rootfs / "opt/venv"
    shutil.rmtree(venv, ignore_errors=True)
    pyver = os.readlink(rootfs / "usr/bin/python3").removeprefix("python")      # "3.11"
    # Wheels are fetched by the host's pip (its index, proxy and CA configuration), for the guest's
    # python and glibc, then installed offline inside the chroot.
    wheels = cache / "wheels" / f"{suite}-py{pyver}"
    wheels.mkdir(parents=True, exist_ok=True)
    host_py = REPO / ".venv/bin/python"
    host_py = str(host_py) if host_py.exists() else sys.executable
    glibc = run(["chroot", str(rootfs), "getconf", "GNU_LIBC_VERSION"], capture_output=True,
                text=True).stdout.split()[-1]                                     # "2.36"
    plats = ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"] + [
        f"manylinux_2_{n}_x86_64" for n in range(5, int(glibc.split(".")[1]) + 1)]
    r = run([host_py, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
         "--python-version", pyver, "--implementation", "cp", "--abi", "cp" + pyver.replace(".", ""),
         "--abi", "abi3", "--abi", "none", *[x for p in plats for x in ("--platform", p)],
         "-d", str(wheels), *deps], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"vm-test: pip download failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    mnt = rootfs / "wheels"
    mnt.mkdir(exist_ok=True)
    run(["mount", "--bind", str(wheels), str(mnt)])
    try:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        run(["chroot", str(rootfs), "python3", "-m", "venv", "--system-site-packages", "/opt/venv"], env=env)
        run(["chroot", str(rootfs), "/opt/venv/bin/pip", "install", "-q", "--disable-pip-version-check",
             "--no-index", "--find-links", "/wheels", "--no-cache-dir", *deps], env=env)
        run(["chroot", str(rootfs), "/opt/venv/bin/python", "-c", "import bcc, numpy, orjson, pytest"], env=env)
    finally:
        run(["umount", str(mnt)])
        mnt.rmdir()
    # Not needed at run time, and every megabyte costs boot time (the guest unpacks it in TCG).
    site = next((venv / "lib").glob("python3*/site-packages"))
    for junk in ("pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth"):
        for p in [site / junk, *site.glob(f"{junk}-*.dist-info")]:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    for p in list((site / "numpy").rglob("tests")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    # The repository itself is imported from /payload/repo (like `pip install -e .`), and its
    # console scripts are thin wrappers.
    (site / "_vmtest_repo.pth").write_text("/payload/repo\n")
    for name, target in scripts.items():
        mod, func = target.split(":")
        script = venv / "bin" / name
        script.write_text(f"#!/opt/venv/bin/python\nimport sys\nfrom {mod} import {func}\n"
                          f"sys.exit({func}())\n")
        script.chmod(0o755)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        p1 = subprocess.Popen(["find", "opt", "-print0"], cwd=rootfs, stdout=subprocess.PIPE)
        run(["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=rootfs, stdin=p1.stdout, stdout=f)
        p1.wait()
    tmp.rename(out)
    for old in (cache / "layers").glob(f"venv-{suite}-*.cpio"):
        if old != out:
            old.unlink()
    log(f"{suite} venv: {out.stat().st_size >> 20} MB in {time.time() - t0:.0f}s")
    return out


def build_kernel(cache: Path, apt: Apt, k: Kernel) -> tuple[Path, Path]:
    """(vmlinuz, headers.cpio) for one kernel, from its Debian packages."""
    key = sha("kernel", LAYER_FORMAT["kernel"], k.release, k.version, k.image_pkg, k.extra_pkgs)
    d = cache / "kernels" / f"{k.release}-{key}"
    vmlinuz, layer = d / "vmlinuz", d / "headers.cpio"
    if vmlinuz.exists() and layer.exists():
        return vmlinuz, layer
    t0 = time.time()
    shutil.rmtree(d, ignore_errors=True)
    debs = cache / "debs"
    pkgs = [k.image_pkg, *k.extra_pkgs]
    log(f"downloading {' '.join(pkgs)}")
    apt.download([f"{p}={k.version}" for p in pkgs], debs)
    stage = Path(tempfile.mkdtemp(prefix="kernel-", dir=cache))
    try:
        for p in pkgs:
            deb = next(debs.glob(f"{p}_*.deb"))
            run(["dpkg-deb", "-x", str(deb), str(stage)])
        found = [stage / f"boot/vmlinuz-{k.release}", stage / f"usr/lib/modules/{k.release}/vmlinuz",
                 stage / f"lib/modules/{k.release}/vmlinuz"]
        src = next((p for p in found if p.exists()), None)
        if src is None:
            sys.exit(f"vm-test: no vmlinuz in {k.image_pkg}")
        d.mkdir(parents=True)
        shutil.move(src, vmlinuz)
        # / has /lib -> usr/lib: keep everything under usr/; drop modules (BPF, uprobes, 8250 are built in)
        if (stage / "lib").is_dir():
            (stage / "usr/lib").mkdir(parents=True, exist_ok=True)
            for sub in (stage / "lib").iterdir():
                dst = stage / "usr/lib" / sub.name
                if dst.exists():
                    shutil.copytree(sub, dst, symlinks=True, dirs_exist_ok=True)
                    shutil.rmtree(sub)
                else:
                    shutil.move(sub, dst)
            (stage / "lib").rmdir()
        for ko in (stage / "usr/lib/modules").glob("*/kernel"):
            shutil.rmtree(ko)
        for s in ("usr/share/doc", "usr/share/lintian", "usr/share/bug"):
            shutil.rmtree(stage / s, ignore_errors=True)
        cpio_from_dir(stage, layer)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for p in pkgs:
        for deb in debs.glob(f"{p}_*.deb"):
            deb.unlink()
    log(f"kernel {k.release}: headers layer {layer.stat().st_size >> 20} MB in {time.time() - t0:.0f}s")
    return vmlinuz, layer


PAYLOADS = {
    "smoke": "python3 /payload/repo/vm-tests/smoke.py",
    "tests": "python -m pytest -p no:cacheprovider -q -rfE --color=no --durations=5 {pytest_args}",
}


def build_payload(path: Path, payload: str, pytest_args: str) -> None:
    files = run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True).stdout.split(b"\0")
    cmd = PAYLOADS[payload].format(pytest_args=pytest_args)
    # CI=1: the integration tests fail (rather than skip) when eBPF is unusable in the guest.
    script = ("set -u\ncd /payload/repo\nexport CI=1\n"
              "echo \"+ " + cmd.replace('"', '\\"') + "\"\n" + cmd + "\n")
    with open(path, "wb") as f:
        c = Cpio(f)
        c.file("init", INIT.encode(), 0o755)      # here, not in the base: editing it rebuilds nothing
        c.dir("payload")
        c.file("payload/run.sh", script.encode(), 0o755)
        c.dir("payload/repo")
        c.symlink("payload/repo/.venv", "/opt/venv")
        made = {"payload", "payload/repo"}
        for rel in sorted(x.decode() for x in files if x):
            src = REPO / rel
            if not os.path.lexists(src):
                continue           # deleted in the work tree, not yet committed
            parts = rel.split("/")
            for i in range(1, len(parts)):
                dn = "payload/repo/" + "/".join(parts[:i])
                if dn not in made:
                    c.dir(dn)
                    made.add(dn)
            c.path("payload/repo/" + rel, src)
        c.close()


# ---------------------------------------------------------------------------------------------
# running guests

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
        console, result = rundir / "console.log", rundir / "result.log"
        cmd = ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-m", mem,
               "-smp", str(smp), "-nodefaults", "-display", "none", "-no-reboot",
               "-kernel", str(vmlinuz), "-initrd", f"/dev/fd/{fd}",
               "-append", "console=ttyS0 panic=-1 quiet",
               "-serial", f"file:{console}", "-serial", f"file:{result}"]
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
    text = result.read_text(errors="replace") if result.exists() else ""
    m = re.search(r"^VMTEST-EXIT (\d+)", text, re.M)
    summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|error|skipped|deselected).* in [\d.]+s)", text, re.M)
    if summary:
        g.details.append(summary[-1].strip("= "))
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", default=os.environ.get("KERNELS") or " ".join(DEFAULT_MATRIX),
                    help="space-separated matrix entries USERSPACE-KERNEL, e.g. 'bookworm-6.1 "
                         "trixie-6.12 bookworm-7' or an exact release '6.1.0-41' (default: %(default)s)")
    ap.add_argument("--payload", choices=sorted(PAYLOADS), default=os.environ.get("PAYLOAD") or "tests")
    ap.add_argument("--pytest-args", default=os.environ.get("VM_PYTEST_ARGS")
                    or DEFAULT_PYTEST_ARGS, help="arguments for the guest's pytest (default: %(default)s)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("VM_CACHE", "/var/cache/tracer/vm")))
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("VM_TIMEOUT", "600")),
                    help="seconds before a guest is killed (default: %(default)s)")
    # One vCPU per guest, two guests at a time: measured 1.5x faster than one 2-vCPU guest at a time
    # on this 2-core host (a guest mostly keeps one vCPU busy), and it avoids a QEMU 7.2 multi-threaded
    # TCG fault seen with -smp 2: a vCPU executing a stale int3 left by the kernel's text patching
    # ("Oops: int3" in __schedule, 6.12.118, in one run of four).
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("VM_JOBS", "2")),
                    help="guests booted at the same time (default: %(default)s)")
    ap.add_argument("--mem", default="3G")
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
    ensure_host_tools()
    a.cache.mkdir(parents=True, exist_ok=True)
    lockf = open(a.cache / ".lock", "w")
    try:
        fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"waiting for another vm-test run using {a.cache}")
        fcntl.flock(lockf, fcntl.LOCK_EX)
    apt = Apt(a.cache / "apt")
    apt.update(a.lists_max_age)
    guests = resolve_matrix(apt, a.kernels.split())
    for g in guests:
        k = g.kernel
        log(f"matrix {g.name}: {g.userspace} userspace, kernel {k.release} ({k.image_pkg} {k.version}, {k.suite})")
    if a.list:
        return 0

    runs = a.cache / "runs"
    payload = runs / "payload.cpio"
    runs.mkdir(parents=True, exist_ok=True)
    build_payload(payload, a.payload, a.pytest_args)

    # Images are built in matrix order by this thread (downloads, debootstrap: mostly I/O) while the
    # guests whose images are ready already boot (CPU): a cold run overlaps the two.
    ready: queue.Queue = queue.Queue()
    out_lock = threading.Lock()

    def report(g: Guest, rundir: Path | None) -> None:
        with out_lock:
            print(f"KERNEL {g.kernel.release} {g.result} {g.seconds:.0f}s  ({g.name}, {g.userspace} userspace)",
                  flush=True)
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
            boot(g, vmlinuz, layers, rundir, a.timeout, a.mem, a.smp)
            report(g, rundir)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, a.jobs))]
    for t in threads:
        t.start()
    bases: dict[str, tuple[Path, Path] | str] = {}
    kernels: dict[str, tuple[Path, Path]] = {}
    try:
        for g in guests:
            try:
                if g.userspace not in bases:
                    try:
                        rootfs, base, key = build_base(a.cache, g.userspace)
                        bases[g.userspace] = (base, build_venv(a.cache, g.userspace, rootfs, key))
                    except (SystemExit, subprocess.CalledProcessError) as e:
                        bases[g.userspace] = f"building the {g.userspace} userspace failed: {e}"
                if isinstance(bases[g.userspace], str):
                    raise SystemExit(bases[g.userspace])
                if g.kernel.release not in kernels:
                    kernels[g.kernel.release] = build_kernel(a.cache, apt, g.kernel)
            except (SystemExit, subprocess.CalledProcessError) as e:
                g.details.append(f"image build failed: {e}")
                report(g, None)
                continue
            vmlinuz, hdr = kernels[g.kernel.release]
            ready.put((g, vmlinuz, [*bases[g.userspace], hdr, payload]))
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
