"""Compile tracer's BPF program once with BCC - in a subprocess - and cache what is needed to load it
again without BCC (tracer/probes/loader.py).

Importing BCC maps libbcc and LLVM into the process (~77 MB RSS) and compiling costs 1.5-3 s and
~60 MB more. So the compile runs in a child process (`python -m tracer.probes.bpfcache`), which
builds and loads the program exactly as BpfProgram does (same cflags, kernel-header logic, license),
then records
  * each program's final instructions (`BPF.dump_func`: after BCC's rewriting, map references are
    ld_imm64 with src_reg BPF_PSEUDO_MAP_FD and imm = the child's map fd), and
  * every map those instructions reference plus BCC's named tables (events, active, offsets, drops),
    each defined by BPF_OBJ_GET_INFO_BY_FD (type, key/value size, max_entries, flags, name),
as JSON (base64 bytecode) in <cache root>/bpf/, written atomically. The file name is a hash of
everything the bytecode depends on: the BPF source and header, the compile flags, BpfProgram's
code, the BCC version, the kernel release/build and the kernel-header choice.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracer.capture.event import BPF_DIR, HEADER
from tracer.probes import kheaders
from tracer.probes.attach import PROBES

FORMAT = 1
PROGRAM_NAMES = sorted({f for pair in PROBES.values() for f in pair} | {"probe_free"})
ROLES = ("events", "active", "offsets", "drops")
REQUIRED_ROLES = ("events", "drops")
BPF_SOURCE = BPF_DIR / "tracer.bpf.c"
ATTACH_PY = Path(__file__).resolve().parent / "attach.py"
BPF_MAP_TYPE_RINGBUF = 27
COMPILE_TIMEOUT = 180


class CompileError(Exception):
    """BCC could not compile or load the program (the message is for the user, as is)."""


class CacheError(Exception):
    """A cache entry is missing, corrupt or does not match."""


# -- the key ------------------------------------------------------------------------------------

def ring_pages(ring_buffer_mb: int) -> int:
    """Ring size in pages, as BpfProgram computes it (a power of two)."""
    pages = max(1, (int(ring_buffer_mb) << 20) // 4096)
    return 1 << (pages.bit_length() - 1)


def cflags(ring_buffer_mb: int, copy_limit: int) -> list[str]:
    """BpfProgram's compile flags (its code is part of the key too, so drift only costs a compile)."""
    return [f"-I{BPF_DIR}", f"-DRINGBUF_PAGES={ring_pages(ring_buffer_mb)}",
            f"-DCOPY_LIMIT={int(copy_limit)}", "-Wno-macro-redefined", "-Wno-unused-function"]


def bcc_version() -> str:
    """BCC's version without importing it (importing it maps LLVM)."""
    try:
        from importlib.metadata import version
        return version("bcc")
    except Exception:
        pass
    try:
        import importlib.util
        spec = importlib.util.find_spec("bcc")
        if spec and spec.origin:
            text = (Path(spec.origin).parent / "version.py").read_text()
            return text.split("=", 1)[1].strip().strip("'\"")
    except Exception:
        pass
    return "unknown"


def header_identity() -> str:
    c = kheaders.choose(build=False)
    return f"{c.source}|{c.detail}"


def key_material(ring_buffer_mb: int, copy_limit: int) -> dict:
    un = os.uname()
    return {
        "format": FORMAT,
        "source": hashlib.sha256(BPF_SOURCE.read_bytes()).hexdigest(),
        "header": hashlib.sha256(HEADER.read_bytes()).hexdigest(),
        "bpfprogram": hashlib.sha256(ATTACH_PY.read_bytes()).hexdigest(),
        "cflags": cflags(ring_buffer_mb, copy_limit),
        "bcc": bcc_version(),
        "kernel": [un.release, un.version, un.machine],
        "headers": header_identity(),
    }


def cache_key(ring_buffer_mb: int, copy_limit: int) -> str:
    blob = json.dumps(key_material(ring_buffer_mb, copy_limit), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:40]


def cache_dir() -> Path:
    env = os.environ.get("TRACER_BPF_CACHE_DIR")
    return Path(env) if env else kheaders.cache_root() / "bpf"


def entry_path(key: str, directory: Path | None = None) -> Path:
    return Path(directory or cache_dir()) / f"tracer-{key}.json"


# -- reading and checking an entry ---------------------------------------------------------------

def referenced_map_fds(insns: bytes) -> set[int]:
    """fds in ld_imm64 map references (BPF_PSEUDO_MAP_FD / BPF_PSEUDO_MAP_VALUE)."""
    fds = set()
    for i in range(0, len(insns) - 7, 8):
        if insns[i] == 0x18 and (insns[i + 1] >> 4) in (1, 2):
            fds.add(struct.unpack_from("<i", insns, i + 4)[0])
    return fds


def validate(entry: dict, key: str | None = None) -> dict:
    """Raise CacheError unless `entry` is a complete, self-consistent entry (for `key`)."""
    try:
        if entry.get("format") != FORMAT:
            raise CacheError(f"format {entry.get('format')!r}, expected {FORMAT}")
        if key is not None and entry.get("key") != key:
            raise CacheError("key does not match")
        maps = entry["maps"]
        known = {int(m["fd"]) for m in maps}
        for m in maps:
            for f in ("type", "key_size", "value_size", "max_entries", "flags"):
                if not isinstance(m[f], int) or m[f] < 0:
                    raise CacheError(f"map {m.get('name')}: bad {f}")
        if set(entry["programs"]) != set(PROGRAM_NAMES):
            raise CacheError(f"programs {sorted(entry['programs'])}, expected {PROGRAM_NAMES}")
        for name, p in entry["programs"].items():
            insns = base64.b64decode(p["insns"], validate=True)
            if not insns or len(insns) % 8:
                raise CacheError(f"{name}: {len(insns)} instruction bytes")
            missing = referenced_map_fds(insns) - known
            if missing:
                raise CacheError(f"{name} references maps {sorted(missing)} that are not defined")
        for r in REQUIRED_ROLES:
            if int(entry["roles"][r]) not in known:
                raise CacheError(f"no map for {r}")
        ev = next(m for m in maps if int(m["fd"]) == int(entry["roles"]["events"]))
        if ev["type"] != BPF_MAP_TYPE_RINGBUF or ev["max_entries"] != int(entry["ring_pages"]) * 4096:
            raise CacheError("events is not a ring buffer of ring_pages pages")
    except CacheError:
        raise
    except (KeyError, TypeError, ValueError, StopIteration) as e:
        raise CacheError(f"malformed entry ({type(e).__name__}: {e})") from None
    return entry


class UnsafeCache(Exception):
    """The cache directory could be written by someone else: its bytecode must not be loaded."""


def check_safe(p: Path) -> None:
    """Bytecode from the cache goes into the kernel as root: the file and its directory must be
    ours and not writable by group or others."""
    st = os.lstat(p)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:       # (a symlink's mode is 777)
        raise UnsafeCache(f"{p} is writable by others or not owned by uid {os.geteuid()} "
                          f"(mode {st.st_mode & 0o7777:o}, owner {st.st_uid}); not using the BPF cache")
    parent = os.stat(Path(p).parent)      # could someone else rename the directory away?
    if parent.st_mode & 0o022 and not parent.st_mode & 0o1000:
        raise UnsafeCache(f"{Path(p).parent} is writable by others; not using the BPF cache in it")


def read_entry(path: Path, key: str | None = None) -> dict:
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise CacheError("no entry") from None
    except OSError as e:
        raise CacheError(f"unreadable: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise CacheError(f"{path} is not ours or writable by others")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read()
    finally:
        os.close(fd)
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CacheError(f"not JSON ({e})") from None
    if not isinstance(entry, dict):
        raise CacheError("not a JSON object")
    return validate(entry, key)


def write_entry(path: Path, entry: dict) -> None:
    """Atomic: a temp file in the same directory, fsynced, renamed over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(entry, indent=1, sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- compiling (in the child process) ------------------------------------------------------------

def compile_entry(ring_buffer_mb: int, copy_limit: int, key: str) -> dict:
    """Compile+load with BCC in THIS process (BpfProgram) and describe the result. Child only."""
    from tracer.probes import loader
    from tracer.probes.attach import BpfProgram, TracerError

    t0 = time.monotonic()
    try:
        prog = BpfProgram(ring_buffer_mb=ring_buffer_mb, copy_limit=copy_limit)
    except TracerError as e:
        raise CompileError(str(e)) from None
    from bcc import libbcc
    b = prog.bpf
    programs, fds = {}, set()
    license = libbcc.lib.bpf_module_license(b.module)
    license = license.decode() if license else "GPL"
    for name in PROGRAM_NAMES:
        code = b.dump_func(name.encode())
        fds |= referenced_map_fds(code)
        programs[name] = {"insns": base64.b64encode(code).decode(), "license": license,
                          "insn_count": len(code) // 8}
    roles = {}
    for r in ROLES:
        try:
            roles[r] = int(b[r].map_fd)
        except KeyError:
            continue
    maps = []
    for fd in sorted(fds | set(roles.values())):
        info = loader.map_info(fd)
        maps.append({"fd": fd, "name": info.name, "type": info.type, "key_size": info.key_size,
                     "value_size": info.value_size, "max_entries": info.max_entries,
                     "flags": info.flags})
    hc = prog.header_choice
    entry = {
        "format": FORMAT,
        "key": key,
        "material": key_material(ring_buffer_mb, copy_limit),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "compile_seconds": round(time.monotonic() - t0, 3),
        "ring_pages": prog.ring_pages,
        "copy_limit": int(copy_limit),
        "kern_version": int(libbcc.lib.bpf_module_kern_version(b.module)),
        "header_choice": {"source": hc.source, "path": hc.path, "detail": hc.detail},
        "roles": roles,
        "maps": maps,
        "programs": programs,
    }
    prog.close()
    return validate(entry, key)


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m tracer.probes.bpfcache",
                                 description="compile tracer's BPF program with BCC and cache it")
    ap.add_argument("--ring-buffer-mb", type=int, default=8)
    ap.add_argument("--copy-limit", type=int, default=1 << 20)
    ap.add_argument("--key", help="cache key (default: computed here)")
    ap.add_argument("--out", help="entry file (default: in the cache directory)")
    a = ap.parse_args(argv)
    key = a.key or cache_key(a.ring_buffer_mb, a.copy_limit)
    out = Path(a.out) if a.out else entry_path(key)
    try:
        entry = compile_entry(a.ring_buffer_mb, a.copy_limit, key)
        write_entry(out, entry)
    except CompileError as e:
        print(str(e), file=sys.stderr)
        return 2
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"path": str(out), "compile_seconds": entry["compile_seconds"],
                      "programs": {n: p["insn_count"] for n, p in entry["programs"].items()},
                      "maps": [m["name"] for m in entry["maps"]]}))
    return 0


# -- the parent side ---------------------------------------------------------------------------

def _child_python() -> str:
    return sys.executable or "/usr/bin/python3"


def compile_subprocess(ring_buffer_mb: int, copy_limit: int, key: str, path: Path,
                       timeout: float = COMPILE_TIMEOUT) -> None:
    """Run the compile step in a child process; raises CompileError (BCC said no) or RuntimeError."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [_child_python(), "-m", "tracer.probes.bpfcache", "--ring-buffer-mb", str(ring_buffer_mb),
           "--copy-limit", str(copy_limit), "--key", key, "--out", str(path)]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"compiling the BPF program took longer than {timeout:.0f} s") from None
    except OSError as e:
        raise RuntimeError(f"could not start {cmd[0]}: {e.strerror}") from None
    err = p.stderr.strip()
    if p.returncode == 2:
        raise CompileError(err or "BCC could not compile the BPF program")
    if p.returncode != 0:
        tail = "\n".join(err.splitlines()[-8:])
        raise RuntimeError(f"the compile step exited with {p.returncode}: {tail}")


def get_entry(ring_buffer_mb: int = 8, copy_limit: int = 1 << 20, *,
              cache_dir: Path | None = None) -> tuple[dict, bool]:
    """(entry, cache_hit). On a miss (or a corrupt entry) compile through a subprocess, under a
    lock so that tracers started together compile once."""
    key = cache_key(ring_buffer_mb, copy_limit)
    path = entry_path(key, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    check_safe(path.parent)
    try:
        entry = read_entry(path, key)
        with contextlib.suppress(OSError):
            os.utime(path)                          # last use, for prune()
        return entry, True
    except CacheError:
        pass
    import fcntl
    with open(path.parent / f".tracer-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return read_entry(path, key), False     # another tracer compiled it meanwhile
        except CacheError:
            pass
        compile_subprocess(ring_buffer_mb, copy_limit, key, path)
        entry = read_entry(path, key)
    prune(path.parent, keep=path)
    return entry, False


def prune(directory: Path, keep: Path | None = None, max_age_days: float = 30) -> int:
    """Remove entries (and their lock files) unused for `max_age_days`: every change of the BPF
    source, BCC, the kernel or the ring/copy-limit options makes a new one."""
    n = 0
    cutoff = time.time() - max_age_days * 86400
    for p in Path(directory).glob("tracer-*.json"):
        if keep is not None and p == keep:
            continue
        with contextlib.suppress(OSError):
            if p.stat().st_mtime < cutoff:
                p.unlink()
                key = p.stem[len("tracer-"):]
                with contextlib.suppress(OSError):
                    (p.parent / f".tracer-{key}.lock").unlink()
                n += 1
    return n


def invalidate(ring_buffer_mb: int = 8, copy_limit: int = 1 << 20, *,
               cache_dir: Path | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        entry_path(cache_key(ring_buffer_mb, copy_limit), cache_dir).unlink()


if __name__ == "__main__":
    sys.exit(main())
