"""Kernel headers for BCC's compile step.

BCC compiles the BPF C against kernel headers it looks for in /lib/modules/$(uname -r)/{build,source}.
Machines whose running kernel has no header package (cloud/VM kernels) still work with the headers of
another kernel of the same architecture for our program (uprobes only, no kernel struct access), so
when the exact ones are missing we build a merged tree from an installed Debian pair
(/usr/src/linux-headers-V-common + /usr/src/linux-headers-V-ARCH) in a cache dir and point BCC at it
with BCC_KERNEL_SOURCE.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tracer.paths import kheaders_dir
from tracer.trust import tree_problem

USR_SRC = Path("/usr/src")


@dataclass
class HeaderChoice:
    source: str        # "environment", "running kernel", "merged debian headers", "none"
    path: str | None   # tree to give BCC (None: BCC's own default lookup works)
    detail: str


def _tree_ok(p: Path) -> bool:
    return (p / "include" / "linux").is_dir() or (p / "include" / "generated").is_dir()


def _version_key(v: str) -> list:
    return [int(x) if x.isdigit() else x for x in re.split(r"[.\-+]", v)]


def debian_pairs(usr_src: Path = USR_SRC) -> list[tuple[str, Path, Path]]:
    """Installed (version, common_dir, arch_dir) pairs, newest first."""
    pairs = []
    if not usr_src.is_dir():
        return pairs
    for common in usr_src.glob("linux-headers-*-common"):
        ver = common.name[len("linux-headers-"):-len("-common")]
        for arch in sorted(usr_src.glob(f"linux-headers-{ver}-*")):
            if arch == common or arch.name.endswith("-common"):
                continue
            if (arch / "include").is_dir() and (common / "include").is_dir():
                pairs.append((ver, common, arch))
    pairs.sort(key=lambda t: _version_key(t[0]), reverse=True)
    return pairs


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy src over dst; symlinks that point outside the tree are re-made absolute."""
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        out = dst / rel
        out.mkdir(parents=True, exist_ok=True)
        for name in dirs + files:
            s = Path(root) / name
            d = out / name
            if s.is_symlink():
                target = os.readlink(s)
                resolved = (s.parent / target).resolve() if not os.path.isabs(target) else Path(target)
                if d.is_symlink() or d.is_file():
                    d.unlink()
                if not d.exists():
                    os.symlink(resolved, d)
                if name in dirs:
                    dirs.remove(name)
            elif s.is_file():
                shutil.copy2(s, d)


def merged_tree(common: Path, arch: Path, dest_root: Path | None = None) -> Path:
    """Build (once) and return a merged header tree for a Debian -common/-arch pair."""
    dest_root = dest_root or kheaders_dir()
    dest = dest_root / arch.name
    stamp = dest / ".tracer-complete"
    if stamp.exists():
        return dest
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=arch.name + ".", dir=dest_root))
    try:
        _copy_tree(common, tmp)
        _copy_tree(arch, tmp)
        (tmp / ".tracer-complete").write_text(f"{common}\n{arch}\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def choose(release: str | None = None, usr_src: Path = USR_SRC, build: bool = True) -> HeaderChoice:
    """Decide which kernel headers BCC should use, building a merged tree when needed."""
    release = release or platform.release()
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        # headers decide what the BPF program root loads into the kernel does: as root, only a tree
        # nobody else can change (the tree and everything in it, and the directories above it)
        why = tree_problem(env) if os.geteuid() == 0 else None
        if why:
            return HeaderChoice("none", None, f"BCC_KERNEL_SOURCE={env} is not trusted: {why}")
        if _tree_ok(Path(env)):
            return HeaderChoice("environment", env, f"BCC_KERNEL_SOURCE={env}")
        return HeaderChoice("none", None, f"BCC_KERNEL_SOURCE={env} has no include/ tree")
    mod = Path("/lib/modules") / release
    for sub in ("build", "source"):
        p = mod / sub
        if p.exists() and _tree_ok(p.resolve()):
            return HeaderChoice("running kernel", None, f"{p} -> {p.resolve()}")
    pairs = debian_pairs(usr_src)
    if not pairs:
        return HeaderChoice("none", None,
                            f"no kernel headers for {release} and no Debian header pair in {usr_src}")
    ver, common, arch = pairs[0]
    if not build:
        return HeaderChoice("merged debian headers", None, f"would merge {common.name} + {arch.name}")
    tree = merged_tree(common, arch)
    return HeaderChoice("merged debian headers", str(tree),
                        f"no headers for {release}; using {arch.name} merged with {common.name} at {tree}")


def install_hint() -> str:
    rel = platform.release()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return (f"apt-get install linux-headers-{rel}  (or, when that does not exist, "
            f"apt-get install linux-headers-{arch})")


def apply(choice: HeaderChoice) -> None:
    if choice.path:
        os.environ["BCC_KERNEL_SOURCE"] = choice.path
