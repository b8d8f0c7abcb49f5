"""The cache of compiled BPF bytecode: one JSON entry per (source, compile flags, BCC, kernel,
headers), holding what tracer/probes/compile.py's isolated child describes (instructions, program
types, map layout), base64 for the bytecode.

Entries live in the BPF cache directory (tracer/paths.py), are written atomically, and are loaded
into the kernel as root, so the directory and every entry must be root's and not writable by others
(else the cache is not used). The file name is a hash of everything the bytecode depends on: the
BPF source and header, the compile flags, the code that compiles and names the programs, the BCC
version, the kernel release/build and the kernel-header choice. A miss compiles (once, under a lock,
for tracers started together), and entries unused for 30 days are pruned.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from tracer import paths
from tracer.probes import compile, kheaders, program
from tracer.probes.program import BPF_MAP_TYPE_RINGBUF, PROGRAM_NAMES, REQUIRED_MAPS, referenced_map_fds

FORMAT = 2


class CacheError(Exception):
    """A cache entry is missing, corrupt or does not match."""


# -- the key ------------------------------------------------------------------------------------

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


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def key_material(ring_buffer_mb: int, copy_limit: int) -> dict:
    un = os.uname()
    src = paths.bpf_dir()
    return {
        "format": FORMAT,
        "source": _sha(src / "tracer.bpf.c"),
        "header": _sha(src / "tracer_event.h"),
        "compiler": [_sha(compile.__file__), _sha(program.__file__)],
        # the include directory is where tracer is installed; the header's content counts instead
        "cflags": [f for f in compile.cflags(compile.ring_pages(ring_buffer_mb), copy_limit)
                   if not f.startswith("-I")],
        "bcc": bcc_version(),
        "kernel": [un.release, un.version, un.machine],
        "headers": header_identity(),
    }


def cache_key(ring_buffer_mb: int, copy_limit: int) -> str:
    blob = json.dumps(key_material(ring_buffer_mb, copy_limit), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:40]


def entry_path(key: str, directory: Path | None = None) -> Path:
    return Path(directory or paths.bpf_cache_dir()) / f"tracer-{key}.json"


# -- reading and checking an entry ---------------------------------------------------------------

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
            if p["type"] != int(program.spec(name).type):
                raise CacheError(f"{name}: program type {p['type']}")
            insns = base64.b64decode(p["insns"], validate=True)
            if not insns or len(insns) % 8:
                raise CacheError(f"{name}: {len(insns)} instruction bytes")
            missing = referenced_map_fds(insns) - known
            if missing:
                raise CacheError(f"{name} references maps {sorted(missing)} that are not defined")
        for r in REQUIRED_MAPS:
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


# -- hit or compile -----------------------------------------------------------------------------

def compile_entry(ring_buffer_mb: int, copy_limit: int, key: str) -> dict:
    """Compile in the isolated child and make the cache entry of its result."""
    choice = compile.header_choice()
    pages = compile.ring_pages(ring_buffer_mb)
    body = compile.compile_isolated(pages, copy_limit, choice)
    entry = {
        **body,
        "format": FORMAT,
        "key": key,
        "material": key_material(ring_buffer_mb, copy_limit),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ring_pages": pages,
        "copy_limit": int(copy_limit),
        "header_choice": {"source": choice.source, "path": choice.path, "detail": choice.detail},
    }
    try:
        return validate(entry, key)
    except CacheError as e:
        raise RuntimeError(f"the compile step described an unusable program: {e}") from None


def get_entry(ring_buffer_mb: int = 8, copy_limit: int = 1 << 20, *,
              cache_dir: Path | None = None) -> tuple[dict, bool]:
    """(entry, cache_hit). On a miss (or a corrupt entry) compile in the isolated child, under a
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
    with open(path.parent / f".tracer-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return read_entry(path, key), False     # another tracer compiled it meanwhile
        except CacheError:
            pass
        write_entry(path, compile_entry(ring_buffer_mb, copy_limit, key))
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

