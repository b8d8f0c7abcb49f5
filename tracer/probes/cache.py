"""Cache of expensive locator results (BoringSSL discovery), keyed by the file itself.

Discovery in a 200-400 MB Bun binary takes 0.5-2 s. Its answer depends on the bytes of that binary,
and tracer attaches uprobes - writes int3 into the code of a process - at the addresses it gives, so a
cache entry must never be applied to other bytes than the ones it was computed from. The build-id a
file *declares* does not guarantee that: anyone can build an ELF with libssl's build-id (and did: the
entry then put a breakpoint into libssl's .dynstr).

Key: the file's identity as the kernel keeps it - device, inode, size, mtime and **ctime** (ns). ctime
is set by the kernel on every change to the inode (write, truncate, chmod, utimes, rename) and
cannot be set by an unprivileged user, so an identity hit means "the very file analysed, unchanged
since". (A whole-file hash would also be sound, but costs ~0.4 s per 200 MB here - most of what the
cache saves - on every run; the identity is one fstat.) The entry also records a hash of the file's
ELF, program and section headers and the first bytes of every located function; both are checked on
a hit, and the function bytes again right before attaching (tracer/probes/verify.py).

One small JSON file per identity:

    <cache dir>/<sha256 of the identity, 40 hex>.json
    {"version": 2, "identity": {"dev": ..., "ino": ..., "size": ..., "mtime_ns": ..., "ctime_ns": ...},
     "headers_sha256": "...", "build_id": "...", "library": "boringssl", "binary": "/path (informational)",
     "functions": {"SSL_read": {"address": "0x35314b0", "found_by": "...", "code": "<hex of 16 bytes>"}, ...}}

Cache directory: ``<cache root>/locate`` (``$TRACER_CACHE_DIR/locate``, ``/var/cache/tracer/locate`` as
root, else ``~/.cache/tracer/locate``). It and its entries must belong to the effective user and not
be writable by group or others, like the BPF cache (else the cache is not used). Best effort
otherwise: an unreadable, corrupt or non-matching entry is a miss (and is overwritten), a read-only
directory only means no caching. Hits are reported with method ``"cache"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

from tracer.errors import TracerError
from tracer.paths import locate_cache_dir
from tracer.probes import elfview
from tracer.probes.located import ALL_FUNCS, FunctionLocation, Located

CACHE_VERSION = 2
METHOD = "cache"
CODE_BYTES = 16          # bytes recorded (and compared) at each function's address
MAX_ENTRY = 64 << 10


def cache_dir() -> Path | None:
    """None when the cache root cannot be trusted (tracer/paths.py): then nothing is cached."""
    try:
        return locate_cache_dir()
    except TracerError:
        return None


def identity(st: os.stat_result) -> dict:
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}


def _entry_name(ident: dict) -> str:
    raw = "{dev}:{ino}:{size}:{mtime_ns}:{ctime_ns}".format(**ident)
    return hashlib.sha256(raw.encode()).hexdigest()[:40] + ".json"


def headers_digest(elf) -> str:
    """sha256 of the ELF header, the program headers and the section headers (bounded reads)."""
    h = hashlib.sha256()
    f = elf.stream
    size = elfview.file_size(elf)
    hdr = elf.header
    ehsize = 64 if elf.elfclass == 64 else 52
    for off, n in ((0, ehsize), (hdr.e_phoff, hdr.e_phnum * hdr.e_phentsize),
                   (hdr.e_shoff, hdr.e_shnum * hdr.e_shentsize)):
        if off and 0 < n <= size and off + n <= size:
            f.seek(off)
            h.update(f.read(n))
        h.update(b"|")
    return h.hexdigest()


def code_at(elf, address: int, n: int = CODE_BYTES) -> bytes | None:
    """The n bytes at a virtual address inside an executable PT_LOAD's file bytes, else None."""
    for seg in elfview.loads(elf):
        if seg.flags & elfview.PF_X and seg.vaddr <= address and address + n <= seg.vaddr + seg.filesz:
            elf.stream.seek(seg.offset + (address - seg.vaddr))
            data = elf.stream.read(n)
            return data if len(data) == n else None
    return None


def _dir_problem(d: Path) -> str | None:
    """Why the cache directory cannot be trusted (None: it can)."""
    try:
        st = os.lstat(d)
        parent = os.stat(d.parent)
    except OSError as e:
        return f"{d}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return f"{d} is not a directory of uid {os.geteuid()} writable only by it"
    if parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX:
        return f"{d.parent} is writable by others"
    return None


def _read_entry(path: Path) -> dict | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022 \
                or st.st_size > MAX_ENTRY:
            return None
        data = json.loads(os.read(fd, MAX_ENTRY + 1))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def load(path: str, elf, st: os.stat_result) -> Located | None:
    """The cached result for this very file (``st``: fstat of the open file ``elf`` reads), or None."""
    d = cache_dir()
    if d is None or _dir_problem(d):
        return None
    ident = identity(st)
    data = _read_entry(d / _entry_name(ident))
    if data is None:
        return None
    try:
        if data.get("version") != CACHE_VERSION or data.get("identity") != ident \
                or data.get("headers_sha256") != headers_digest(elf):
            return None
        funcs = {}
        for name, f in data["functions"].items():
            if name not in ALL_FUNCS:
                continue
            addr = int(f["address"], 16)
            code = bytes.fromhex(f["code"])
            if addr <= 0 or len(code) != CODE_BYTES or code_at(elf, addr) != code:
                return None
            funcs[name] = FunctionLocation(name, addr, METHOD, code)
        res = Located(path=path, build_id=str(data.get("build_id", "")), library=str(data.get("library", "")),
                      functions=funcs)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, elfview.ELFBoundsError):
        return None
    return res if res.has_data_funcs else None


def store(res: Located, elf, st: os.stat_result) -> bool:
    """Remember a result for this very file; False when it could not be written (never raises for
    I/O problems)."""
    if not res.has_data_funcs:
        return False
    funcs = {}
    for n, f in sorted(res.functions.items()):
        code = code_at(elf, f.address)
        if code is None:
            return False             # not in executable code: never cached (and never attached)
        funcs[n] = {"address": hex(f.address), "found_by": f.method, "code": code.hex()}
    ident = identity(st)
    data = {"version": CACHE_VERSION, "identity": ident, "headers_sha256": headers_digest(elf),
            "build_id": res.build_id, "library": res.library, "binary": res.path, "functions": funcs}
    d = cache_dir()
    if d is None:
        return False
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
        if _dir_problem(d):
            return False
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=d)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.chmod(tmp, 0o644)
            os.replace(tmp, d / _entry_name(ident))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError:
        return False
    return True


def forget(st: os.stat_result) -> None:
    d = cache_dir()
    try:
        if d is not None:
            (d / _entry_name(identity(st))).unlink()
    except OSError:
        pass
