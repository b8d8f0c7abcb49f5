"""Find the TLS read/write functions inside an ELF object.

The locator is a list of strategies tried in order; the first that finds functions in an object wins.
Each strategy answers for one ELF file (a shared library or an executable) with ELF *virtual addresses*
(what BCC's ``attach_uprobe(name=path, addr=VA)`` expects), or ``None`` when it does not apply.

Strategies:
  * ``SymbolStrategy``   - exported/static symbols (libssl.so.*, node, anything not stripped)
  * ``BoringSSLStrategy`` (tracer.probes.boringssl) - stripped BoringSSL inside Bun (Claude Code)

Functions we care about: SSL_read, SSL_write, SSL_read_ex, SSL_write_ex (data) and SSL_free
(connection end, optional).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Protocol

import numpy as np
from elftools.elf.elffile import ELFFile

from tracer.probes import cache, elfview
from tracer.probes.boringssl import BoringSSLStrategy
from tracer.probes.located import (ALL_FUNCS, DATA_FUNCS, FunctionLocation, LocateError, Located,  # noqa: F401
                                   build_id)


class Strategy(Protocol):
    name: str

    def locate(self, path: str, elf: ELFFile) -> Located | None: ...


class SymbolStrategy:
    """Functions found by name in .dynsym or .symtab.

    Symbol tables of big executables (node: ~100k symbols) are scanned with numpy over the raw
    section bytes: pyelftools' per-symbol objects take seconds there. The tables and their string
    tables are read through tracer/probes/elfview.py: a table must have bytes in the file (not
    SHT_NOBITS, not compressed) and its string table must be a real SHT_STRTAB section."""

    name = "symbols"

    def locate(self, path: str, elf: ELFFile) -> Located | None:
        found: dict[str, FunctionLocation] = {}
        for secname, sectype, method in SYMBOL_TABLES:
            missing = [n for n in ALL_FUNCS if n not in found]
            if not missing:
                break
            for name, value in defined_functions(elf, secname, sectype, missing).items():
                found[name] = FunctionLocation(name, value, method)
        if not found:
            return None
        return Located(path=path, build_id=build_id(elf), library="openssl", functions=found)


SYMBOL_TABLES = ((".dynsym", elfview.SHT_DYNSYM, "dynamic symbol table"),
                 (".symtab", elfview.SHT_SYMTAB, "symbol table"))
STT_FUNC = 2


def _symbol_tables(elf: ELFFile, secname: str, sectype: int) -> tuple[bytes, bytes] | None:
    """(symbol table bytes, string table bytes) of a well-formed table, else None."""
    try:
        secs = elfview.sections(elf)
    except elfview.ELFBoundsError as e:
        raise LocateError(f"malformed ELF section headers: {e}") from None
    sec = next((x for x in secs if x.name == secname and x.type == sectype), None)
    if sec is None or sec.size == 0:
        return None
    entsize = 24 if elf.elfclass == 64 else 16
    if sec.entsize != entsize or sec.size % entsize or not 0 < sec.link < len(secs) \
            or secs[sec.link].type != elfview.SHT_STRTAB:
        return None
    try:
        return elfview.section_bytes(elf, sec), elfview.section_bytes(elf, secs[sec.link])
    except elfview.ELFBoundsError:
        return None


def _sym_dtype(elf: ELFFile) -> np.dtype:
    e = "<" if elf.little_endian else ">"
    if elf.elfclass == 64:
        return np.dtype([("name", e + "u4"), ("info", "u1"), ("other", "u1"), ("shndx", e + "u2"),
                         ("value", e + "u8"), ("size", e + "u8")])
    return np.dtype([("name", e + "u4"), ("value", e + "u4"), ("size", e + "u4"), ("info", "u1"),
                     ("other", "u1"), ("shndx", e + "u2")])


def symbols_named(elf: ELFFile, secname: str, sectype: int, names) -> list[tuple[str, int, int, int]]:
    """(name, st_info, st_shndx, st_value) of every entry of one symbol table (read through elfview)
    whose name is one of `names`. A name may be the tail of a longer string (linkers merge string
    tables: "fork" can start inside "__libc_fork"), so every place the string ends counts."""
    tables = _symbol_tables(elf, secname, sectype)
    if tables is None:
        return []
    symdata, strings = tables
    offsets: dict[int, str] = {}
    for n in names:
        needle = n.encode() + b"\0"
        pos = strings.find(needle)
        while pos >= 0:
            offsets.setdefault(pos, n)
            pos = strings.find(needle, pos + 1)
    if not offsets:
        return []
    syms = np.frombuffer(symdata, dtype=_sym_dtype(elf))
    hit = syms[np.isin(syms["name"], np.fromiter(offsets, dtype=np.uint32))]
    return [(offsets[int(x["name"])], int(x["info"]), int(x["shndx"]), int(x["value"])) for x in hit]


def defined_functions(elf: ELFFile, secname: str, sectype: int, names) -> dict[str, int]:
    """Defined STT_FUNC symbols among `names` in one symbol table -> st_value (the first of each)."""
    out: dict[str, int] = {}
    for name, info, shndx, value in symbols_named(elf, secname, sectype, names):
        if info & 0xF == STT_FUNC and shndx != 0 and value and name not in out:
            out[name] = value
    return out


def default_strategies() -> list[Strategy]:
    return [SymbolStrategy(), BoringSSLStrategy()]


def is_elf(path: str | Path) -> bool:
    try:
        fd = open_regular(path)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        return f.read(4) == b"\x7fELF"


def open_regular(path: str | Path) -> int:
    """A read-only descriptor for ``path`` if it is a regular file. The path comes from a target's
    mappings or a user: it may name a FIFO (open would block), a device (open has side effects) or a
    symlink swapped in meanwhile, so it is opened with O_PATH first (no open of the object itself),
    checked, then reopened through /proc/self/fd (the same inode, no second path lookup)."""
    pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(pfd).st_mode):
            raise OSError(errno.EINVAL, f"not a regular file: {path}")
        return os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(pfd)


def locate(path: str, strategies: list[Strategy] | None = None, use_cache: bool = True) -> Located | None:
    """Locate TLS functions in one ELF file, or None if it holds none we know how to find.

    Strategies run in order; the symbol table comes first and is never cached. Before the first
    expensive strategy (``cacheable = True``) the cache (tracer.probes.cache) is asked - keyed by this
    very file's identity, checked against its headers and code - and a hit reports method "cache";
    a fresh expensive result is stored.
    """
    strategies = strategies if strategies is not None else default_strategies()
    try:
        fd = open_regular(path)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return None
        f.seek(0)
        st = os.fstat(f.fileno())
        elf = ELFFile(f)
        asked = False
        for strat in strategies:
            cacheable = getattr(strat, "cacheable", False)
            if cacheable and use_cache and not asked:
                asked = True
                hit = cache.load(path, elf, st)
                if hit is not None:
                    return hit
            res = strat.locate(path, elf)
            if res is not None and res.has_data_funcs:
                if cacheable and use_cache:
                    cache.store(res, elf, st)
                return res
    return None
