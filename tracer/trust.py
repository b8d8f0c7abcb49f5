"""Code that tracer runs as root must be code only root can change.

As root, tracer imports its own package, BCC's Python module and whatever else is on sys.path, and
its compile step starts a Python child. If any of those files or directories - or a directory above
them - can be written by another user, that user can make root run their code (plant a module,
edit one, swap a directory, drop a .pth file into site-packages). `check_root_can_trust()` refuses
to go on in that case and says which path and why; tracer then has to be installed root-owned
(a root-owned clone or virtualenv, `pip install` as root), which is what a sudoers entry needs anyway.

Rules for a path that code is imported from: owned by root, not writable by group (unless the group
is root's) or others. For the directories above it the same, except that a world-writable directory
with the sticky bit (/tmp) is fine: nobody else can rename or remove root's entries in it.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from pathlib import Path

from tracer.errors import TracerError


def _problem(path: str, ancestor: bool) -> str | None:
    """Why another user could change `path`, or None (also when it does not exist)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if st.st_uid != 0:
        return f"{path} is owned by uid {st.st_uid}"
    mode = st.st_mode
    writable = (mode & stat.S_IWOTH) or (mode & stat.S_IWGRP and st.st_gid != 0)
    if writable and not (ancestor and stat.S_ISDIR(mode) and mode & stat.S_ISVTX):
        who = "others" if mode & stat.S_IWOTH else f"group {st.st_gid}"
        return f"{path} is writable by {who} (mode {stat.S_IMODE(mode):o})"
    return None


def _chain(path: str) -> str | None:
    """The first problem with `path` or a directory above it (both as given and resolved)."""
    for p in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
        cur, ancestor = p, False
        while True:
            why = _problem(cur, ancestor)
            if why:
                return why
            parent = os.path.dirname(cur)
            if parent == cur:
                break
            cur, ancestor = parent, True
    return None


def _tree(root: str) -> str | None:
    """The first problem inside the directory tree `root` (symlinks followed and checked)."""
    why = _chain(root)
    for d, dirs, files in os.walk(root, followlinks=True):
        for name in dirs + files:
            if why:
                return why
            p = os.path.join(d, name)
            why = _problem(p, False) or (_chain(os.path.realpath(p)) if os.path.islink(p) else None)
    return why


def dir_chain_problem(path: str) -> str | None:
    """For files root reads or writes elsewhere (caches, kernel headers named by the environment):
    the first problem with `path` (if it exists yet) or a directory above it, by the rule above."""
    return _chain(path)


def tree_problem(root: str) -> str | None:
    """The same for a whole tree: `root`, the directories above it and everything below it."""
    return _tree(root)


def package_dir(name: str) -> str | None:
    """Directory of an importable package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def tracer_dir() -> str:
    return str(Path(__file__).resolve().parent)


def problems() -> list[str]:
    """What another user could change among the code a root tracer runs (empty: nothing)."""
    found = []
    trees = [tracer_dir()]
    bcc = package_dir("bcc")
    if bcc:
        trees.append(bcc)
    for t in trees:
        why = _tree(t)
        if why:
            found.append(why)
    for entry in [os.path.realpath(sys.executable)] + [p or os.getcwd() for p in sys.path]:
        if os.path.exists(entry):
            why = _chain(entry)
            if why and why not in found:
                found.append(why)
    return found


def check_root_can_trust() -> None:
    """Raise TracerError when running as root from code another user could change."""
    if os.geteuid() != 0:
        return
    found = problems()
    if found:
        raise TracerError(
            "refusing to run as root: tracer's code (or Python's import path) can be changed by "
            f"another user - {found[0]}. Another user could make root run their code. Install tracer "
            "root-owned (a root-owned checkout or virtualenv; `sudo pip install` into it), and run it "
            "from there" + (f" ({len(found) - 1} more such path(s))" if len(found) > 1 else ""))
