"""Locate and attach the TLS probes of one process, on the files it maps (or will load), reached
through its own view of the file system (tracer/processes/resolve.py)."""

from __future__ import annotations

import os
import re
import threading

from tracer.errors import TracerError
from tracer.probes.locate import open_regular
from tracer.probes.located import FunctionLocation, LocateError, Located
from tracer.probes.program import FORK_RETURN
from tracer.probes.verify import check_before_attach
from tracer.processes import procinfo, resolve
from tracer.processes.table import Probed, Proc

TLS_LIBRARIES = ("libssl.so*",)
LIBC = re.compile(r"(?:^|/)(?:libc\.so[.\d]*|libc-[\d.]+\.so|ld-musl-[^/]*\.so[.\d]*)$")
LIBC_CANDIDATES = ("libc.so.6", "ld-musl-*.so.1")


class Prober:
    def __init__(self, probes, locator, *, stderr=None):
        self.probes = probes          # tracer/probes/attach.py Probes: one uprobe per probe
        self.attacher = probes        # who makes uprobes: `probes`, or shared.SharedUprobes
        self.locator = locator
        self.stderr = stderr
        self._fork_addr: dict[tuple, int | None] = {}
        self._errors: dict[tuple[int, int], str] = {}
        self._lock = threading.Lock()

    # -- one process ----------------------------------------------------------------------------
    def probe(self, proc: Proc, *, candidates: bool = False, env: dict | None = None,
              extra: list[str] = ()) -> int:
        """Attach to TLS code the process maps and has not been probed yet; with `candidates` also
        to the TLS libraries it may load later (looked up in its library directories). Returns the
        number of files newly probed. OSError when the process is gone."""
        n = 0
        for mf in resolve.mapped_files(proc.pid):
            key = (mf.dev, mf.inode)
            if key in proc.files:
                proc.files[key].mapped = True
                continue
            if key in proc.looked_at:
                continue
            proc.looked_at.add(key)
            if not mf.reach:
                if not procinfo.alive(proc.pid):
                    # it ended while we looked: the file is unreachable because the process is
                    # gone, not because it hides TLS code from us (its EXIT record follows)
                    raise ProcessLookupError(f"pid {proc.pid} ended while its files were examined")
                proc.problems.append(f"{mf.path}: {mf.error}")
                continue
            n += self._attach_file(proc, mf.path, mf.reach, key, mapped=True, deleted=mf.deleted)
        for path in extra:
            n += self._attach_path(proc, path)
        if candidates:
            for c in resolve.find_libraries(proc.pid, TLS_LIBRARIES, env):
                key = (c.dev, c.inode)
                if key in proc.looked_at:
                    continue
                proc.looked_at.add(key)
                n += self._attach_file(proc, c.path, c.reach, key, mapped=False)
        return n

    def _attach_path(self, proc: Proc, path: str) -> int:
        try:
            st = os.stat(path)
        except OSError:
            return 0
        key = (st.st_dev, st.st_ino)
        if key in proc.looked_at:
            return 0
        proc.looked_at.add(key)
        return self._attach_file(proc, path, path, key, mapped=False)

    def _attach_file(self, proc: Proc, path: str, reach: str, key, *, mapped: bool,
                     deleted: bool = False) -> int:
        """Locate, verify and attach to one file, all through one descriptor of it (opened O_PATH
        first, checked to be a regular file): the file the kernel puts the probes on is the file that
        was located and checked (tracer/probes/verify.py) - and the one the process maps (`key`) -
        whatever happens to `reach` meanwhile."""
        try:
            fd = open_regular(reach)
        except OSError:
            return 0
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != key:
                return 0            # replaced since it was looked up: the next look finds the new one
            fd_path = f"/proc/self/fd/{fd}"
            loc = self.locator.locate_file(fd_path, display=path)
            if loc is None:
                why = self.locator.errors.get(path) or self._errors.get(key)
                if why:                     # it looked like TLS code but could not be located
                    self._errors[key] = why
                    (proc.problems if mapped else proc.notes).append(f"{path}: {why}")
                return 0
            try:
                check_before_attach(fd, loc, display=path)
                self._attach(lambda a: a.attach(proc.pid, fd_path, loc))
            except (LocateError, TracerError) as e:
                if not procinfo.alive(proc.pid):
                    # the kernel said "no such process": it ended while its probes were being put in
                    # place - gone, not unprobed TLS code (its EXIT record follows), as above
                    raise ProcessLookupError(f"pid {proc.pid} ended while its probes were attached") from None
                (proc.problems if mapped else proc.notes).append(f"{path}: {str(e).replace(fd_path, path)}")
                return 0
        finally:
            os.close(fd)
        try:
            host = os.stat(path)
            own = (host.st_dev, host.st_ino) != key
        except OSError:
            own = True
        proc.files[key] = Probed(path, reach, loc.library,
                                 {n: f.method for n, f in loc.functions.items()}, mapped,
                                 key[0], key[1], own and not deleted, deleted)
        return 1

    def _attach(self, how) -> None:
        """`how(attacher)` with the shared tracefs uprobes when in use, else (or when they fail) one
        uprobe per probe."""
        try:
            how(self.attacher)
        except TracerError:
            if self.attacher is self.probes:
                raise
            how(self.probes)

    # -- stopping forked children ------------------------------------------------------------------
    def fork_return(self, proc: Proc) -> bool:
        """The return probe on libc's fork() for a process with TLS probes (on code it maps or may
        load), so that its forked children are stopped before they run (bpf/tracer.bpf.c
        proc_fork_return). On the libc it maps, or - just after exec, before the dynamic loader
        has mapped it - the libc its library directories hold."""
        if proc.fork_keys or not proc.files:
            return bool(proc.fork_keys)
        targets: list[tuple[str, str, tuple[int, int]]] = []
        try:
            for mf in resolve.mapped_files(proc.pid):
                if mf.reach and LIBC.search(mf.path):
                    targets.append((mf.path, mf.reach, (mf.dev, mf.inode)))
        except OSError:
            return False
        if not targets:
            targets = [(c.path, c.reach, (c.dev, c.inode))
                       for c in resolve.find_libraries(proc.pid, LIBC_CANDIDATES, limit=2)]
        for path, reach, key in targets:
            if key in proc.fork_keys:
                continue
            try:
                fd = open_regular(reach)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                fd_path = f"/proc/self/fd/{fd}"
                ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                addr = self._fork_address(fd_path, ident) if (st.st_dev, st.st_ino) == key else None
                if not addr:
                    continue
                loc = Located(path=fd_path, library="libc",
                              functions={"fork": FunctionLocation("fork", addr, "dynamic symbol table")})
                check_before_attach(fd, loc, display=path)
                self.attacher.attach_probes(proc.pid, fd_path, loc, [("uretprobe", addr, FORK_RETURN)])
            except (LocateError, TracerError) as e:
                proc.notes.append(f"fork() of {path}: {str(e).replace(fd_path, path)}")
                continue
            finally:
                os.close(fd)
            proc.fork_keys.add(key)
        note = ("no libc fork() in its mappings: its forked children are probed as soon as tracer "
                "sees them, not before they run")
        if not proc.fork_keys and note not in proc.notes:
            proc.notes.append(note)
        return bool(proc.fork_keys)

    def _fork_address(self, path: str, key: tuple) -> int | None:
        """fork()'s address in the libc at `path`, memoized by the file's identity `key`."""
        with self._lock:
            if key in self._fork_addr:
                return self._fork_addr[key]
        try:
            addr = resolve.function_address(path, ("fork", "__libc_fork"))
        except Exception:           # a malformed ELF must not stop the trace
            addr = None
        with self._lock:
            self._fork_addr[key] = addr
        return addr
