"""--cgroup: a cgroup v2 directory (a Docker container's, a systemd unit's) and its processes."""

from __future__ import annotations

import os

from tracer.errors import TracerError


def cgroup2_mounts() -> list[str]:
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    out.append(left.split()[4].replace("\\040", " "))
    except OSError:
        pass
    return out


def resolve(path: str) -> str:
    """The cgroup v2 directory `path` names: an absolute path inside a cgroup2 mount, or a path
    relative to one (e.g. 'system.slice/docker-ID.scope'). TracerError when there is none."""
    mounts = cgroup2_mounts()
    if not mounts:
        raise TracerError("--cgroup needs the cgroup v2 hierarchy (cgroup2) mounted; none is")
    tries = [path] if path.startswith("/") else []
    tries += [os.path.join(m, path.lstrip("/")) for m in mounts]
    for t in tries:
        real = os.path.realpath(t)
        if not os.path.isfile(os.path.join(real, "cgroup.procs")):
            continue
        if any(real == m or real.startswith(m.rstrip("/") + "/") for m in mounts):
            return real
    raise TracerError(f"--cgroup {path}: not a cgroup v2 directory (looked in "
                      f"{', '.join(dict.fromkeys(tries))})")


def processes(directory: str) -> set[int]:
    """Every process in the cgroup and the cgroups below it."""
    pids: set[int] = set()
    for d, _dirs, files in os.walk(directory):
        if "cgroup.procs" not in files:
            continue
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                pids.update(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return pids


def exists(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "cgroup.procs"))
