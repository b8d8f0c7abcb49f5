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

from pathlib import Path
from typing import Protocol

import numpy as np
from elftools.elf.elffile import ELFFile

from tracer.probes import cache
from tracer.probes.boringssl import BoringSSLStrategy
from tracer.probes.located import (ALL_FUNCS, DATA_FUNCS, FunctionLocation, LocateError, Located,  # noqa: F401
                                   build_id)


class Strategy(Protocol):
    name: str

    def locate(self, path: str, elf: ELFFile) -> Located | None: ...


class SymbolStrategy:
    """Functions found by name in .dynsym or .symtab.

    Symbol tables of big executables (node: ~100k symbols) are scanned with numpy over the raw
    section bytes: pyelftools' per-symbol objects take seconds there."""

    name = "symbols"

    def locate(self, path: str, elf: ELFFile) -> Located | None:
        found: dict[str, FunctionLocation] = {}
        for secname, method in ((".dynsym", "dynamic symbol table"), (".symtab", "symbol table")):
            sec = elf.get_section_by_name(secname)
            if sec is None or sec["sh_size"] == 0:
                continue
            missing = [n for n in ALL_FUNCS if n not in found]
            if not missing:
                break
            strtab = elf.get_section(sec["sh_link"])
            for name, value in _find_symbols(elf, sec, strtab, missing).items():
                found[name] = FunctionLocation(name, value, method)
        if not found:
            return None
        return Located(path=path, build_id=build_id(elf), library="openssl", functions=found)


_SYM64 = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
                   ("value", "<u8"), ("size", "<u8")])


def _find_symbols(elf: ELFFile, symsec, strtab, names: list[str]) -> dict[str, int]:
    """Defined STT_FUNC symbols among `names` -> st_value."""
    out: dict[str, int] = {}
    if elf.elfclass == 64 and elf.little_endian and symsec["sh_entsize"] == _SYM64.itemsize:
        strings = strtab.data()
        offsets = {}
        for n in names:
            needle = b"\0" + n.encode() + b"\0"
            pos = strings.find(needle)
            while pos >= 0:
                offsets.setdefault(pos + 1, n)
                pos = strings.find(needle, pos + 1)
        if not offsets:
            return out
        syms = np.frombuffer(symsec.data(), dtype=_SYM64)
        hit = np.isin(syms["name"], np.fromiter(offsets, dtype=np.uint32))
        for sym in syms[hit]:
            name = offsets[int(sym["name"])]
            if (sym["info"] & 0xF) == 2 and sym["shndx"] != 0 and sym["value"] and name not in out:
                out[name] = int(sym["value"])
        return out
    for n in names:  # other ELF flavours: pyelftools
        for sym in symsec.get_symbol_by_name(n) or ():
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF" and sym["st_value"]:
                out[n] = sym["st_value"]
                break
    return out


def default_strategies() -> list[Strategy]:
    return [SymbolStrategy(), BoringSSLStrategy()]


def is_elf(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def locate(path: str, strategies: list[Strategy] | None = None, use_cache: bool = True) -> Located | None:
    """Locate TLS functions in one ELF file, or None if it holds none we know how to find.

    Results of expensive strategies (``cacheable = True``) are cached by ELF build-id
    (tracer.probes.cache); a hit reports method "cache".
    """
    if not is_elf(path):
        return None
    strategies = strategies if strategies is not None else default_strategies()
    with open(path, "rb") as f:
        elf = ELFFile(f)
        bid = build_id(elf) if use_cache and any(getattr(s, "cacheable", False) for s in strategies) else ""
        if bid:
            hit = cache.load(bid, path)
            if hit is not None:
                return hit
        for strat in strategies:
            res = strat.locate(path, elf)
            if res is not None and res.has_data_funcs:
                if bid and getattr(strat, "cacheable", False):
                    cache.store(res)
                return res
    return None
