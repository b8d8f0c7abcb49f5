"""Where tracer keeps what it caches, and where its BPF sources are.

Caches (all under one root, ``$TRACER_CACHE_DIR`` when set, else ``/var/cache/tracer`` as root, else
``$XDG_CACHE_HOME/tracer`` or ``~/.cache/tracer``):

    bpf/        compiled BPF bytecode + map layouts (``$TRACER_BPF_CACHE_DIR`` overrides)
    locate/     TLS function addresses found in big binaries
    kheaders/   merged kernel header trees for BCC
    npm/        client releases downloaded by tests and benchmarks
    pypi/       virtualenvs of PyPI packages tests run (claude-agent-sdk), one per requirement

The BPF sources (the repository's top-level ``bpf/``) are package data: ``tracer/bpf`` in the wheel
(in a checkout, a symlink to ``../bpf``), found through ``importlib.resources``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from tracer.errors import TracerError


def env_dir(name: str) -> Path | None:
    """A directory named by an environment variable, or None. As root, the environment belongs to
    whoever invoked tracer (sudo may keep variables): a directory root would cache bytecode in, build
    kernel headers in or compile against must be one only root can change - it and every existing
    directory above it (tracer/trust.py's rule); else TracerError."""
    value = os.environ.get(name)
    if not value:
        return None
    if os.geteuid() == 0:
        from tracer.trust import dir_chain_problem
        why = dir_chain_problem(value)
        if why:
            raise TracerError(f"{name}={value}: {why}; as root, tracer only uses directories only root "
                              "can change")
    return Path(value)


def cache_root() -> Path:
    env = env_dir("TRACER_CACHE_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return Path("/var/cache/tracer")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tracer"


def bpf_cache_dir() -> Path:
    env = env_dir("TRACER_BPF_CACHE_DIR")
    return env if env else cache_root() / "bpf"


def locate_cache_dir() -> Path:
    return cache_root() / "locate"


def kheaders_dir() -> Path:
    return cache_root() / "kheaders"


def npm_cache_dir() -> Path:
    return cache_root() / "npm"


def bpf_dir() -> Path:
    """The directory holding tracer.bpf.c and tracer_event.h (BCC needs real files: -I and src_file)."""
    d = resources.files("tracer") / "bpf"
    if not isinstance(d, Path) or not (d / "tracer_event.h").is_file():
        raise FileNotFoundError(f"tracer's BPF sources are missing from the installed package ({d})")
    return d
