"""Helpers shared by the vm-test modules: logging, subprocesses, cache keys, host packages."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]        # vm-tests/
REPO = HERE.parent


def log(msg: str) -> None:
    print(f"vm-test: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


def older_versions(directory: Path, prefix: str, suffix: str, keep: Path) -> list[Path]:
    """Entries of `directory` named exactly PREFIX-KEY[SUFFIX] (KEY: a `sha()` key) other than `keep`:
    the older builds of one layer. Nothing else matches - not another architecture's or suite's
    layer whose name merely starts the same way (the cache is shared by every checkout on the host,
    and by older versions of this code)."""
    pat = re.compile(re.escape(prefix) + "-[0-9a-f]{16}" + re.escape(suffix))
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [directory / n for n in sorted(names) if pat.fullmatch(n) and directory / n != keep]


def sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True).encode() if not isinstance(p, bytes) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def apt_install(packages: list[str]) -> None:
    """Install Debian packages on the host (the runner's own tools), updating the lists if needed."""
    if os.geteuid() != 0:
        sys.exit(f"vm-test: need root to install {' '.join(packages)}")
    log(f"apt-get install {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=900"]
    if run(["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", *packages],
           env=env, check=False, stdout=subprocess.DEVNULL).returncode != 0:
        run(["apt-get", *lock, "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        run(["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", *packages],
            env=env, stdout=subprocess.DEVNULL)
