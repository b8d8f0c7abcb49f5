"""A process' files, reached through its own view of the file system.

A process in another mount namespace (any container, `unshare -m`) may map a libssl at the same
path as the host's but from a different file. Probes go on inodes, so the file must be the one the
process maps, never a same-named host file:

  * mapped files are reached through /proc/PID/map_files/START-END (the mapping's own file, even
    when deleted or shadowed by a later mount), else through /proc/PID/root/PATH (the process'
    root, walked through its mount namespace), and kept only when device and inode equal the ones
    /proc/PID/maps shows for the mapping;
  * files not mapped yet (a libssl a program will load after exec) are looked up under
    /proc/PID/root with symlinks resolved inside that root: an absolute link target means the
    process' root, not ours.
"""

from __future__ import annotations

import glob
import os
import stat as statmod
import time
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from tracer.probes import elfview
from tracer.probes.locate import LocateError, defined_functions, open_regular, symbols_named

MAX_LINKS = 40


@dataclass(frozen=True)
class MappedFile:
    path: str        # as /proc/PID/maps shows it (the process' view), " (deleted)" removed
    dev: int         # st_dev encoding of the mapping's device
    inode: int
    reach: str       # a path that reaches the same file from tracer ('' when none does)
    error: str = ""  # why the file could not be reached
    deleted: bool = False


def _maps_dev(text: str) -> int:
    major, minor = text.split(":")
    return os.makedev(int(major, 16), int(minor, 16))


def mapped_files(pid: int) -> list[MappedFile]:
    """Distinct file-backed executable mappings of `pid`, in map order, each reached through the
    process' own view (see the module documentation). OSError when the process is gone."""
    with open(f"/proc/{pid}/maps") as f:
        lines = f.read().splitlines()
    seen: set[tuple[int, int]] = set()
    out: list[MappedFile] = []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or "x" not in parts[1]:
            continue
        addr, _perms, _off, dev_s, ino_s, path = parts
        if not path.startswith("/"):
            continue
        try:
            dev, ino = _maps_dev(dev_s), int(ino_s)
        except ValueError:
            continue
        if ino == 0 or (dev, ino) in seen:
            continue
        seen.add((dev, ino))
        deleted = path.endswith(" (deleted)")
        if deleted:
            path = path[:-len(" (deleted)")]
        out.append(_reach(pid, addr, path, dev, ino, deleted))
    return out


def _same(p: str, dev: int, ino: int) -> tuple[bool, str]:
    try:
        st = os.stat(p)
    except OSError as e:
        return False, e.strerror or str(e)
    if (st.st_dev, st.st_ino) != (dev, ino):
        return False, (f"device {os.major(st.st_dev)}:{os.minor(st.st_dev)} inode {st.st_ino} there, "
                       f"mapping has {os.major(dev)}:{os.minor(dev)} inode {ino}")
    return True, ""


def _reach(pid: int, addr: str, path: str, dev: int, ino: int, deleted: bool) -> MappedFile:
    via_map = f"/proc/{pid}/map_files/{addr}"
    ok, why_map = _same(via_map, dev, ino)
    if ok:
        return MappedFile(path, dev, ino, via_map, deleted=deleted)
    via_root = f"/proc/{pid}/root{path}"
    ok, why_root = (False, "deleted") if deleted else _same(via_root, dev, ino)
    if ok:
        return MappedFile(path, dev, ino, via_root, deleted=deleted)
    return MappedFile(path, dev, ino, "", f"cannot reach the mapped file: {via_map}: {why_map}; "
                                          f"{via_root}: {why_root}", deleted)


# -- files a process may load later ---------------------------------------------------------------

def resolve_in_root(root: str, path: str) -> str | None:
    """`path` as the process whose root directory is `root` (/proc/PID/root) would resolve it,
    returned as root + a symlink-free path inside it; None when it does not exist. Absolute link
    targets restart at `root`, and '..' never climbs above it."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    links = 0
    while parts:
        name = parts.pop(0)
        if name == ".":
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        cur = root + "/" + "/".join(done + [name])
        try:
            st = os.lstat(cur)
        except OSError:
            return None
        if statmod.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return None
            try:
                target = os.readlink(cur)
            except OSError:
                return None
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(name)
    return root + "/" + "/".join(done)


LIB_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib",
            "/lib/{triplet}", "/usr/lib/{triplet}", "/usr/local/lib/{triplet}")
TRIPLETS = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}
LD_CONF_MAX = 64


def _ld_conf_dirs(root: str) -> list[str]:
    """Directories named in the process' /etc/ld.so.conf (and its include globs)."""
    out: list[str] = []
    todo = ["/etc/ld.so.conf"]
    seen = 0
    while todo and seen < LD_CONF_MAX:
        seen += 1
        real = resolve_in_root(root, todo.pop(0))
        if real is None:
            continue
        try:       # the process' root is the user's: only a regular file is opened (never a FIFO)
            with os.fdopen(open_regular(real), "rb") as f:
                lines = f.read(65536).decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("include "):
                pattern = line.split(None, 1)[1]
                base = resolve_in_root(root, os.path.dirname(pattern) or "/")
                if base is None:
                    continue
                for m in sorted(glob.glob(os.path.join(glob.escape(base), os.path.basename(pattern)))):
                    todo.append(m[len(root):])
            elif line.startswith("/"):
                out.append(line)
    return out


def library_dirs(pid: int, env: dict[str, str] | None = None) -> list[str]:
    """Where the process' dynamic loader looks for libraries: LD_LIBRARY_PATH, ld.so.conf, the
    default directories (paths inside the process' root)."""
    machine = os.uname().machine
    dirs: list[str] = []
    for d in (env or {}).get("LD_LIBRARY_PATH", "").split(":"):
        if d.startswith("/"):
            dirs.append(d)
    dirs += _ld_conf_dirs(f"/proc/{pid}/root")
    dirs += [d.format(triplet=TRIPLETS.get(machine, machine + "-linux-gnu")) for d in LIB_DIRS]
    return list(dict.fromkeys(dirs))


@dataclass(frozen=True)
class Candidate:
    path: str        # inside the process' root
    reach: str       # /proc/PID/root + a symlink-free path
    dev: int
    inode: int


_found: dict[tuple, tuple[float, list[tuple[str, int, int]]]] = {}
FOUND_TTL = 1.0          # seconds a lookup is reused for other processes with the same view


def _view(pid: int) -> tuple[int, int, int] | None:
    """What a lookup inside the process' root depends on: its mount namespace and root directory."""
    try:
        ns = os.stat(f"/proc/{pid}/ns/mnt")
        root = os.stat(f"/proc/{pid}/root")
    except OSError:
        return None
    return ns.st_ino, root.st_dev, root.st_ino


def find_libraries(pid: int, patterns: tuple[str, ...], env: dict[str, str] | None = None,
                   limit: int = 32) -> list[Candidate]:
    """Distinct files matching `patterns` (globs, e.g. 'libssl.so*') in the process' library
    directories, reached inside its root. A lookup is reused for a second (a shell running one
    program after another asks the same question for each) by processes with the same mount
    namespace, root and LD_LIBRARY_PATH, each hit checked by device and inode."""
    view = _view(pid)
    key = (view, tuple(patterns), (env or {}).get("LD_LIBRARY_PATH", ""), limit)
    now = time.monotonic()
    hit = _found.get(key) if view is not None else None
    if hit is not None and now - hit[0] < FOUND_TTL:
        out = []
        for path, dev, ino in hit[1]:
            reach = f"/proc/{pid}/root{path}"
            try:
                st = os.stat(reach)
            except OSError:
                break
            if (st.st_dev, st.st_ino) != (dev, ino):
                break
            out.append(Candidate(path, reach, dev, ino))
        else:
            return out
    out = _find_libraries(pid, patterns, env, limit)
    if view is not None:
        if len(_found) > 256:
            _found.clear()
        _found[key] = (now, [(c.path, c.dev, c.inode) for c in out])
    return out


def _find_libraries(pid: int, patterns: tuple[str, ...], env: dict[str, str] | None,
                    limit: int) -> list[Candidate]:
    root = f"/proc/{pid}/root"
    out: list[Candidate] = []
    seen: set[tuple[int, int]] = set()
    for d in library_dirs(pid, env):
        real_dir = resolve_in_root(root, d)
        if real_dir is None:
            continue
        for pat in patterns:
            for m in sorted(glob.glob(os.path.join(glob.escape(real_dir), pat))):
                name = d.rstrip("/") + "/" + os.path.basename(m)
                real = resolve_in_root(root, name)
                if real is None:
                    continue
                try:
                    st = os.stat(real)
                except OSError:
                    continue
                if not statmod.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                out.append(Candidate(real[len(root):], real, st.st_dev, st.st_ino))
                if len(out) >= limit:
                    return out
    return out


# -- will a program load TLS code later? ----------------------------------------------------------

@dataclass(frozen=True)
class DynInfo:
    dynamic: bool            # has an ELF interpreter (loads shared libraries at all)
    needed: tuple[str, ...]  # DT_NEEDED
    dlopen: bool             # imports dlopen (may load anything later)


_dyn_memo: dict[tuple, DynInfo | None] = {}
_DLOPEN = ("dlopen", "dlmopen")


def _elf_of(path: str):
    """(file object, ELFFile, identity) of a regular file, or None. Opened with open_regular (a FIFO
    or device in a process' root is never opened)."""
    try:
        f = os.fdopen(open_regular(path), "rb")
    except OSError:
        return None
    try:
        st = os.fstat(f.fileno())
        return f, ELFFile(f), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except Exception:
        f.close()
        return None


def dyn_info(path: str) -> DynInfo | None:
    """What an ELF object says about loading other code (memoized per file). Headers are read the
    bounded way (tracer/probes/elfview.py): the files are the traced user's."""
    opened = _elf_of(path)
    if opened is None:
        return None
    f, elf, key = opened
    with f:
        if key in _dyn_memo:
            return _dyn_memo[key]
        try:
            interp = any(seg.type == elfview.PT_INTERP for seg in elfview.segments(elf))
            needed = elfview.needed(elf)
            dl = any(shndx == 0 for _n, _i, shndx, _v in              # an imported dlopen
                     symbols_named(elf, ".dynsym", elfview.SHT_DYNSYM, _DLOPEN))
            info = DynInfo(interp or bool(needed), tuple(needed), dl)
        except Exception:
            info = None
    if len(_dyn_memo) > 4096:
        _dyn_memo.clear()
    _dyn_memo[key] = info
    return info


def function_address(path: str, names: tuple[str, ...]) -> int | None:
    """The address of the first of `names` the object's .dynsym defines as a function."""
    opened = _elf_of(path)
    if opened is None:
        return None
    f, elf, _key = opened
    with f:
        try:
            found = defined_functions(elf, ".dynsym", elfview.SHT_DYNSYM, names)
        except (LocateError, elfview.ELFBoundsError):       # headers that lie: no address
            return None
    return next((found[n] for n in names if n in found), None)


def may_load_tls(pid: int, exe_reach: str, env: dict[str, str] | None = None,
                 depth: int = 4) -> bool:
    """True when the program (or a library it needs, `depth` levels down) is a TLS library or
    imports dlopen: then TLS libraries are probed before it can load them. False for programs
    that cannot (static executables, `ls`, `seq`, ...): their exec is let go sooner."""
    top = dyn_info(exe_reach)
    if top is None:
        return True                    # unknown: be safe
    if not top.dynamic:
        return False
    if top.dlopen:
        return True
    root = f"/proc/{pid}/root"
    dirs = library_dirs(pid, env)
    seen: set[str] = set()
    level = list(top.needed)
    for _ in range(depth):
        nxt: list[str] = []
        for name in level:
            if name in seen:
                continue
            seen.add(name)
            if name.startswith(("libssl", "libgnutls", "libnss3", "libwolfssl", "libmbedtls")):
                return True
            for d in dirs:
                real = resolve_in_root(root, f"{d.rstrip('/')}/{name}")
                if real is None:
                    continue
                info = dyn_info(real)
                if info is not None:
                    if info.dlopen:
                        return True
                    nxt += info.needed
                break
        level = nxt
        if not level:
            break
    return False
