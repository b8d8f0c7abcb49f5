"""Debian's package lists through a private apt configuration, and the kernels in them.

The runner never touches the host's apt state: sources, lists and downloaded packages live under the
vm-test cache (``apt/``). Kernels are found by their image package (``linux-image-R`` or, from 7.x,
``linux-binary[-unsigned]-R``) and the header packages a guest needs next to it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vmkit.util import log, run

MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
SUITES = ("bookworm", "trixie")
RELEASE_TAG = {"bookworm": "deb12", "trixie": "deb13"}


class Apt:
    def __init__(self, root: Path, arches: list[str]):
        self.root = root
        self.arches = sorted(set(arches)) or ["amd64"]
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
        (root / "etc/apt.conf").write_text(
            "".join(f'{k} "{v}";\n' for k, v in conf.items())
            + "APT::Architectures {%s};\n" % "".join(f'"{a}"; ' for a in self.arches))
        self.env = dict(os.environ, APT_CONFIG=str(root / "etc/apt.conf"))

    def update(self, max_age: float) -> None:
        stamp = self.root / "lists" / f".updated-{'+'.join(self.arches)}"
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

    def download(self, k: "Kernel", dest: Path) -> list[Path]:
        """The kernel's packages (image first) as .deb files in dest."""
        dest.mkdir(parents=True, exist_ok=True)
        specs = [f"{p}:{a}={k.version}" if a != "all" else f"{p}={k.version}" for p, a in k.packages]
        run(["apt-get", "download", "-q", *specs], env=self.env, cwd=dest, stdout=subprocess.DEVNULL)
        return [next(dest.glob(f"{p}_*_{a}.deb")) for p, a in k.packages]


def version_key(v: str):
    """Natural sort key for kernel release strings such as 6.12.90+deb12.1 or 6.1.0-56."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|[a-z]+", v)]


@dataclass
class Kernel:
    release: str               # uname -r, e.g. 6.1.0-56-amd64
    version: str               # Debian package version
    suite: str                 # where it came from
    arch: str                  # Debian architecture: amd64, arm64
    image_pkg: str             # package holding vmlinuz
    extra_pkgs: list[str]      # headers (common + arch), linux-base-* (7.x)
    packages: list[tuple[str, str]]    # (package, its architecture or "all"), image first


def kernel_packages(by_name: dict[str, list[dict]], rel: str, arch: str) -> Kernel:
    def newest(name):
        rs = [r for r in by_name.get(name, ()) if r.get("Architecture") in (arch, "all")]
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
    pkgs = [(image["Package"], image["Architecture"])]
    pkgs += [(n, newest(n)["Architecture"] if newest(n) else arch) for n in extra]
    return Kernel(rel, image["Version"], image["Suite"], arch, image["Package"], extra, pkgs)


class Kernels:
    """The bootable kernels in the package lists: release -> its image package record."""

    def __init__(self, apt: Apt):
        self.by_name: dict[str, list[dict]] = {}
        for r in apt.packages():
            self.by_name.setdefault(r["Package"], []).append(r)
        # kernels we can boot: linux-image-R (with /boot/vmlinuz) or linux-binary[-unsigned]-R (7.x);
        # R ends with the flavour, which is the architecture (6.1.0-57-amd64, 6.12.117+deb12-arm64)
        self.releases: dict[str, dict] = {}
        flavours = "|".join(apt.arches)
        for name, rs in self.by_name.items():
            m = re.fullmatch(r"linux-(?:image|binary(?:-unsigned)?)-(\d[^ ]*-(?:%s))" % flavours, name)
            if not m or "-rt-" in name or "-cloud-" in name:
                continue
            rel = m.group(1)
            if f"linux-headers-{rel}" not in self.by_name or not any(
                    int(r.get("Size", "0")) > 1_000_000 for r in rs):
                continue                       # meta packages (linux-image-6.12-amd64) are a few kB
            self.releases.setdefault(rel, rs[0])

    def resolve(self, userspace: str, spec: str, arch: str) -> Kernel:
        """An exact release, else the newest of a version prefix, preferring the userspace's own
        builds (6.1.0-N / +deb12 for bookworm, +deb13 for trixie) over other suites'."""
        mine = [r for r in self.releases if r.endswith(f"-{arch}")]
        exact = [r for r in mine if r == spec or r == f"{spec}-{arch}"]
        if exact:
            rel = exact[0]
        else:
            pat = re.compile(re.escape(spec) + r"[.\-+]")
            cands = [r for r in mine if pat.match(r)]
            tag = RELEASE_TAG[userspace]
            native = [r for r in cands if tag in r or (userspace == "bookworm" and re.match(r"6\.1\.0-", r))]
            cands = native or cands
            if not cands:
                sys.exit(f"vm-test: no bootable {arch} kernel matching {spec!r} on the mirror; available: "
                         + " ".join(sorted(mine, key=version_key)))
            rel = max(cands, key=version_key)
        return kernel_packages(self.by_name, rel, arch)
