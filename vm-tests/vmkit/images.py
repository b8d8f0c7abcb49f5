"""The initramfs layers a guest boots from, each cached under the vm-test cache by its inputs.

  base    - a debootstrap'ed minimal Debian userspace (BCC, clients, openssl, ...)
  venv    - /opt/venv with the tracer's Python dependencies for that userspace's python3
  kernel  - one kernel's vmlinuz, and its Debian header packages and config as a layer
  payload - /init, a copy of this repository (tracked files only) and the command to run

Layers are newc cpio archives; the kernel unpacks the concatenation in order into one tmpfs.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from vmkit.apt import MIRROR, Apt, Kernel
from vmkit.arch import Arch
from vmkit.util import REPO, log, older_versions, run, sha

BASE_PACKAGES = (
    "python3-bpfcc", "python3-venv", "openssl", "curl", "ca-certificates", "kmod", "procps",
    "iproute2", "nodejs",
)
# Bumped whenever the way a layer is built changes (the cache key includes it).
LAYER_FORMAT = {"base": 3, "venv": 4, "kernel": 2}


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
            self._hdr(name, stat.S_IFREG | stat.S_IMODE(st.st_mode), st.st_size)
            with open(src, "rb") as f:           # streamed: a Claude Code binary is 200-400 MB
                copied = shutil.copyfileobj(f, self.f, 1 << 20) or st.st_size
            self.f.write(b"\0" * (-copied % 4))

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


INIT = r"""#!/bin/sh
# PID 1 of a vm-test guest: mount the API filesystems, run /payload/run.sh with its output on the
# serial port named in /payload/result-tty (a second UART, or the console), write its exit status
# there, power off.
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
OUT=/dev/$(cat /payload/result-tty)
note() { echo "$1" > $OUT; [ $OUT = /dev/console ] || echo "$1" > /dev/console; }
note "VMTEST-BOOTED $(uname -r) $(cut -d' ' -f1 /proc/uptime)s"
cd /payload
sh /payload/run.sh > $OUT 2>&1 < /dev/null
note "VMTEST-EXIT $? $(cut -d' ' -f1 /proc/uptime)s"
sync
echo o > /proc/sysrq-trigger
sleep 30
"""

STRIP = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
         "var/lib/apt/lists", "var/cache/apt", "var/cache/debconf/templates.dat-old", "var/log")


def layer_name(suite: str, arch: Arch) -> str:
    """ARCH-SUITE: the architecture first, so that no name of this layout starts with a suite name
    (an older vmtest.py removed every `rootfs/SUITE-*`, `layers/base-SUITE-*.cpio` and
    `layers/venv-SUITE-*.cpio` as its own stale builds)."""
    return f"{arch.name}-{suite}"


def build_base(cache: Path, suite: str, arch: Arch) -> tuple[Path, Path, str]:
    """debootstrap'ed userspace: returns (rootfs dir, base.cpio, key). A foreign architecture's
    packages are configured through qemu-user (binfmt_misc, see vmkit.arch)."""
    key = sha("base", LAYER_FORMAT["base"], suite, arch.name, BASE_PACKAGES, STRIP)
    name = layer_name(suite, arch)
    d = cache / "rootfs" / f"{name}-{key}"
    out = cache / "layers" / f"base-{name}-{key}.cpio"
    if out.exists() and (d / ".complete").exists():
        return d, out, key
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log(f"building {suite} {arch.name} userspace (debootstrap) in {d}")
    for old in older_versions(cache / "rootfs", name, "", d):
        shutil.rmtree(old, ignore_errors=True)
    d.mkdir(parents=True)
    r = run(["debootstrap", f"--arch={arch.name}", "--variant=minbase",
             f"--include={','.join(BASE_PACKAGES)}", suite, str(d), MIRROR],
            check=False, capture_output=True, text=True)
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
    for old in older_versions(cache / "layers", f"base-{name}", ".cpio", out):
        old.unlink(missing_ok=True)
    log(f"{suite} {arch.name} userspace: {out.stat().st_size >> 20} MB in {time.time() - t0:.0f}s")
    return d, out, key


def project_deps() -> tuple[list[str], str]:
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = list(py.get("dependencies", []))
    for extra in ("test",):
        deps += py.get("optional-dependencies", {}).get(extra, [])
    scripts = py.get("scripts", {})
    return sorted(deps), scripts


def build_venv(cache: Path, suite: str, arch: Arch, rootfs: Path, base_key: str) -> Path:
    """/opt/venv for the guest's python3 (system site-packages for BCC) with the project's deps."""
    deps, scripts = project_deps()
    key = sha("venv", LAYER_FORMAT["venv"], base_key, deps, scripts)
    name = layer_name(suite, arch)
    out = cache / "layers" / f"venv-{name}-{key}.cpio"
    if out.exists():
        return out
    t0 = time.time()
    log(f"building the {suite} {arch.name} venv ({len(deps)} requirements)")
    venv = rootfs / "opt/venv"
    shutil.rmtree(venv, ignore_errors=True)
    pyver = os.readlink(rootfs / "usr/bin/python3").removeprefix("python")      # "3.11"
    # Wheels are fetched by the host's pip (its index, proxy and CA configuration), for the guest's
    # python, glibc and architecture, then installed offline inside the chroot (same architecture)
    # or by the host's pip into a venv laid out by hand (another architecture).
    wheels = cache / "wheels" / f"{name}-py{pyver}"
    wheels.mkdir(parents=True, exist_ok=True)
    host_py = REPO / ".venv/bin/python"
    host_py = str(host_py) if host_py.exists() else sys.executable
    glibc = run(["chroot", str(rootfs), "getconf", "GNU_LIBC_VERSION"], capture_output=True,
                text=True).stdout.split()[-1]                                     # "2.36"
    plats = [f"manylinux{tag}_{arch.machine}" for tag in ("2014", "2010", "1")] + [
        f"manylinux_2_{n}_{arch.machine}" for n in range(5, int(glibc.split(".")[1]) + 1)]
    target = ["--only-binary=:all:", "--python-version", pyver, "--implementation", "cp",
              "--abi", "cp" + pyver.replace(".", ""), "--abi", "abi3", "--abi", "none",
              *[x for p in plats for x in ("--platform", p)]]
    r = run([host_py, "-m", "pip", "download", "-q", "--disable-pip-version-check", *target,
             "-d", str(wheels), *deps], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"vm-test: pip download failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    if arch.native:
        mnt = rootfs / "wheels"
        mnt.mkdir(exist_ok=True)
        run(["mount", "--bind", str(wheels), str(mnt)])
        try:
            run(["chroot", str(rootfs), "python3", "-m", "venv", "--system-site-packages", "/opt/venv"], env=env)
            run(["chroot", str(rootfs), "/opt/venv/bin/pip", "install", "-q", "--disable-pip-version-check",
                 "--no-index", "--find-links", "/wheels", "--no-cache-dir", *deps], env=env)
        finally:
            run(["umount", str(mnt)])
            mnt.rmdir()
    else:
        # A foreign userspace runs under qemu-user here: pip inside it takes minutes. The venv is
        # laid out by hand instead and the host's pip installs the guest's wheels into it.
        site = venv / "lib" / f"python{pyver}" / "site-packages"
        site.mkdir(parents=True)
        (venv / "lib64").symlink_to("lib")
        (venv / "bin").mkdir()
        for exe in ("python", "python3", f"python{pyver}"):
            (venv / "bin" / exe).symlink_to(f"/usr/bin/python{pyver}")
        (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = true\n"
                                         f"version = {pyver}\nexecutable = /usr/bin/python{pyver}\n")
        host_ver = run([host_py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                       capture_output=True, text=True).stdout.strip()
        run([host_py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
             "--find-links", str(wheels), *target, "--target", str(site),
             *([] if host_ver == pyver else ["--no-compile"]), *deps], capture_output=True)
        shutil.rmtree(site / "bin", ignore_errors=True)         # console scripts for the host's python
    run(["chroot", str(rootfs), "/opt/venv/bin/python", "-c", "import bcc, numpy, orjson, pytest"], env=env)
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
    for old in older_versions(cache / "layers", f"venv-{name}", ".cpio", out):
        old.unlink(missing_ok=True)
    log(f"{suite} {arch.name} venv: {out.stat().st_size >> 20} MB in {time.time() - t0:.0f}s")
    return out


def build_kernel(cache: Path, apt: Apt, k: Kernel) -> tuple[Path, Path]:
    """(vmlinuz, headers.cpio) for one kernel, from its Debian packages."""
    key = sha("kernel", LAYER_FORMAT["kernel"], k.release, k.version, k.packages)
    d = cache / "kernels" / f"{k.release}-{key}"
    vmlinuz, layer = d / "vmlinuz", d / "headers.cpio"
    if vmlinuz.exists() and layer.exists():
        return vmlinuz, layer
    t0 = time.time()
    shutil.rmtree(d, ignore_errors=True)
    debs = cache / "debs"
    log(f"downloading {' '.join(p for p, _ in k.packages)}")
    files = apt.download(k, debs)
    stage = Path(tempfile.mkdtemp(prefix="kernel-", dir=cache))
    try:
        for deb in files:
            run(["dpkg-deb", "-x", str(deb), str(stage)])
        found = [stage / f"boot/vmlinuz-{k.release}", stage / f"usr/lib/modules/{k.release}/vmlinuz",
                 stage / f"lib/modules/{k.release}/vmlinuz"]
        src = next((p for p in found if p.exists()), None)
        if src is None:
            sys.exit(f"vm-test: no vmlinuz in {k.image_pkg}")
        d.mkdir(parents=True)
        write_bootable(src, vmlinuz)
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
    for deb in files:
        deb.unlink(missing_ok=True)
    log(f"kernel {k.release}: headers layer {layer.stat().st_size >> 20} MB in {time.time() - t0:.0f}s")
    return vmlinuz, layer


def write_bootable(src: Path, dest: Path) -> None:
    """Copy a Debian vmlinuz where QEMU's -kernel can boot it. x86's bzImage boots as it is; arm64's
    vmlinuz is a gzip'ed Image, or an EFI zboot image (a PE file whose payload is the compressed
    Image): both are unpacked to the plain Image, which every QEMU version loads."""
    data = src.read_bytes()
    if data[:4] == b"MZ\0\0" and data[4:8] == b"zimg":
        off, size = struct.unpack_from("<II", data, 8)
        comp = data[24:32].rstrip(b"\0").decode()
        payload = data[off:off + size]
        if comp == "gzip":
            data = gzip.decompress(payload)
        else:
            data = run([comp, "-dc"], input=payload, capture_output=True).stdout
    elif data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    dest.write_bytes(data)


CLAUDE_PACKAGE = {"amd64": "@anthropic-ai/claude-code-linux-x64", "arm64": "@anthropic-ai/claude-code-linux-arm64"}


def build_claude(cache: Path, arch: Arch, version: str) -> Path:
    """A layer with one Claude Code release where tracer.testing.releases finds it in the guest's
    npm cache (/var/cache/tracer/npm/...): the host downloads it once (its own npm cache, outside the
    repository); the layer is cached next to the others."""
    pkg = CLAUDE_PACKAGE[arch.name]
    out = cache / "layers" / f"claude-{arch.name}-{version}.cpio"
    if out.exists():
        return out
    host_py = REPO / ".venv/bin/python"
    r = run([str(host_py) if host_py.exists() else sys.executable, "-c",
             "import sys; from tracer.testing.releases import fetch_npm_release as f; "
             "print(f(sys.argv[1], sys.argv[2]))", pkg, version],
            cwd=REPO, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"vm-test: cannot download {pkg}@{version}: {r.stderr.strip()[-2000:]}")
    prog = Path(r.stdout.strip().splitlines()[-1])
    rdir = prog.parent.parent                       # <cache>/npm/<package>/<version>
    dest = "var/cache/tracer/npm/" + pkg.lstrip("@").replace("/", "+") + "/" + version
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        c = Cpio(f)
        parts = dest.split("/")
        for i in range(1, len(parts) + 1):
            c.dir("/".join(parts[:i]))
        c.dir(dest + "/package")
        for src in [rdir / ".tracer-complete", *sorted((rdir / "package").iterdir())]:
            if src.is_file():
                c.path(f"{dest}/{src.relative_to(rdir)}", src)
        c.close()
    tmp.rename(out)
    for old in (cache / "layers").glob(f"claude-{arch.name}-*.cpio"):      # one release per arch kept
        if old != out and time.time() - old.stat().st_mtime > 86400:
            old.unlink()
    log(f"Claude Code {version} ({arch.name}): {out.stat().st_size >> 20} MB layer")
    return out


PAYLOADS = {
    "smoke": "python3 /payload/repo/vm-tests/smoke.py",
    # The BPF program is compiled once first (`tracer run -- true` fills the bytecode cache, like a
    # user's first run): under TCG the compile takes 1-2 minutes, longer than a test's own timeout.
    "tests": "python -m tracer.cli run --quiet --no-html -o /tmp/vmtest-warm -- /bin/true\n"
             "python -m pytest -p no:cacheprovider -q -rfE --color=no --durations=5 {pytest_args}",
    # uprobes at the located SSL_write/SSL_read of each copied Claude Code release (--claude)
    "verify": "python bench/verify_locate_uprobe.py --timeout 900 {claude}",
}


def build_payload(path: Path, payload: str, pytest_args: str, arch: Arch, claude: list[str]) -> None:
    files = run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True).stdout.split(b"\0")
    cmd = PAYLOADS[payload].format(pytest_args=pytest_args, claude=" ".join(f"claude {v}" for v in claude))
    # CI=1: the integration tests fail (rather than skip) when eBPF is unusable in the guest.
    # TRACER_COMPILE_TIMEOUT: a BCC compile under TCG on a busy host can take minutes.
    script = ("set -u\ncd /payload/repo\nexport CI=1 TRACER_COMPILE_TIMEOUT=1800 "
              f"TRACER_TEST_TIME_SCALE={arch.time_scale}\n"
              "echo \"+ " + cmd.replace('"', '\\"') + "\"\n" + cmd + "\n")
    with open(path, "wb") as f:
        c = Cpio(f)
        c.file("init", INIT.encode(), 0o755)      # here, not in the base: editing it rebuilds nothing
        c.dir("payload")
        c.file("payload/run.sh", script.encode(), 0o755)
        c.file("payload/result-tty", arch.result_tty.encode())
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
