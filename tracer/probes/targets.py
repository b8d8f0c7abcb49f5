"""Which ELF objects of a process carry TLS functions (read from /proc/PID/maps)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tracer.probes.locate import LocateError, Located, is_elf, locate


@dataclass(frozen=True)
class MappedObject:
    path: str        # path inside the process' mount namespace, as /proc/PID/maps shows it
    host_path: str   # the same file reached through /proc/PID/root (works for containers)
    dev: int
    inode: int


def mapped_objects(pid: int) -> list[MappedObject]:
    """Distinct file-backed executable mappings of a process, in map order."""
    seen: set[tuple[int, int]] = set()
    out: list[MappedObject] = []
    with open(f"/proc/{pid}/maps", "rb") as f:
        lines = f.read().splitlines()
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or b"x" not in parts[1]:
            continue
        path = os.fsdecode(parts[5])     # any bytes the target chose (print with textsafe.printable)
        if not path.startswith("/") or path.endswith(" (deleted)"):
            continue
        host = f"/proc/{pid}/root{path}"
        try:
            st = os.stat(host)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        out.append(MappedObject(path, host, st.st_dev, st.st_ino))
    return out


class Locator:
    """Locates TLS functions per file, remembering answers by (device, inode, size, mtime, ctime)."""

    def __init__(self):
        self._memo: dict[tuple[int, int, int, int, int], Located | None] = {}
        self.errors: dict[str, str] = {}

    def locate_file(self, path: str, display: str | None = None) -> Located | None:
        """``display``: the name to report errors under (``path`` may be /proc/self/fd/N)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in self._memo:
            name = display or path
            try:
                self._memo[key] = locate(path) if is_elf(path) else None
            except LocateError as e:
                self.errors[name] = str(e)
                self._memo[key] = None
            except OSError:
                return None          # the process (and its /proc/PID/root view) went away
            except Exception as e:   # a malformed ELF must not stop the trace
                self.errors[name] = f"cannot read ELF: {type(e).__name__}: {e}"
                self._memo[key] = None
        return self._memo[key]

    def tls_objects(self, pid: int) -> list[tuple[MappedObject, Located]]:
        out = []
        for mo in mapped_objects(pid):
            loc = self.locate_file(mo.host_path)
            if loc is not None:
                out.append((mo, loc))
        return out
