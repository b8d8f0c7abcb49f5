"""Bounded reading of ELF headers from files tracer does not trust.

The locator opens whatever a traced process maps executable, and `tracer locate` whatever it is
given: the headers are written by whoever built the file. pyelftools trusts them - a section's
``data()`` of an ``SHT_NOBITS`` section is ``b"\\0" * sh_size`` (a 1 GiB allocation from a 300-byte
file), a compressed section is inflated to the size its header claims, and iterating sections builds
every hash table with the bucket counts the file states. So tracer reads headers itself here, with
every count and size checked against the file before anything is allocated:

  * the ELF header's table offsets, entry sizes and counts (including the extended counts kept in
    section 0) must describe tables inside the file, with the entry size the class defines;
  * a section's bytes are read only for sections that have bytes in the file (not ``SHT_NOBITS``,
    not ``SHF_COMPRESSED``), whose ``sh_offset + sh_size`` lies inside the file, and up to a caller's
    limit;
  * notes are walked inside their section with every name/descriptor size checked;
  * the dynamic section's DT_NEEDED entries are read inside it, their names inside its string table.

Allocation is therefore bounded by the size of the file itself (and for a section's bytes by the
caller's limit), never by a number the file states. pyelftools' `ELFFile` is still used for the ELF
header (it reads a fixed-size structure), its ``stream`` and its class/endianness.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass

SHT_NOBITS = 8
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_NOTE = 7
SHT_DYNSYM = 11
SHT_DYNAMIC = 6
PT_INTERP = 3
DT_NEEDED = 1
SHF_COMPRESSED = 0x800
PT_LOAD = 1
PF_X = 1
NT_GNU_BUILD_ID = 3
MAX_SECTIONS = 1 << 16          # real files have < 100; a table of more is refused
MAX_SEGMENTS = 1 << 12


class ELFBoundsError(ValueError):
    """The file's headers describe something outside the file (or absurdly large)."""


@dataclass(frozen=True)
class SectionHeader:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int


@dataclass(frozen=True)
class Segment:
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int


def file_size(elf) -> int:
    f = elf.stream
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        pos = f.tell()
        f.seek(0, os.SEEK_END)
        n = f.tell()
        f.seek(pos)
        return n


def _read(elf, off: int, n: int, size: int) -> bytes:
    if off < 0 or n < 0 or off + n > size:
        raise ELFBoundsError(f"{n} bytes at offset {off:#x} lie outside the {size}-byte file")
    elf.stream.seek(off)
    data = elf.stream.read(n)
    if len(data) != n:
        raise ELFBoundsError(f"short read at offset {off:#x}")
    return data


def _per_file(fn):
    """Compute once per ELFFile (the result is kept on the object)."""
    @functools.wraps(fn)
    def wrapper(elf):
        memo = elf.__dict__.setdefault("_tracer_bounded", {})
        if fn.__name__ not in memo:
            memo[fn.__name__] = fn(elf)
        return memo[fn.__name__]
    return wrapper


def _fmt(elf) -> tuple[str, bool]:
    return ("<" if elf.little_endian else ">"), elf.elfclass == 64


@_per_file
def sections(elf) -> list[SectionHeader]:
    """Every section header, checked against the file; names from the section-name table."""
    end, is64 = _fmt(elf)
    size = file_size(elf)
    h = elf.header
    shoff, shnum, shentsize, shstrndx = h.e_shoff, h.e_shnum, h.e_shentsize, h.e_shstrndx
    if isinstance(shstrndx, str):          # pyelftools names SHN_UNDEF / SHN_XINDEX
        shstrndx = {"SHN_UNDEF": 0, "SHN_XINDEX": 0xFFFF}.get(shstrndx, 0)
    want = 64 if is64 else 40
    fmt = end + ("IIQQQQIIQQ" if is64 else "IIIIIIIIII")
    out: list[SectionHeader] = []
    if shoff == 0:
        return out
    if shentsize != want:
        raise ELFBoundsError(f"section header entry size {shentsize}, expected {want}")
    first = struct.unpack(fmt, _read(elf, shoff, want, size))
    if shnum == 0:                          # extended numbering: the count is section 0's sh_size
        shnum = first[5]
    if shstrndx == 0xFFFF:
        shstrndx = first[6]
    if shnum > MAX_SECTIONS or shoff + shnum * want > size:
        raise ELFBoundsError(f"{shnum} section headers at {shoff:#x} do not fit in the {size}-byte file")
    table = _read(elf, shoff, shnum * want, size)
    # both classes: name, type, flags, addr, offset, size, link, info, addralign, entsize
    rows = [r[:8] + r[9:] for r in (struct.unpack_from(fmt, table, i * want) for i in range(shnum))]
    names = b""
    if 0 < shstrndx < shnum:
        n = rows[shstrndx]
        if n[1] != SHT_NOBITS and not n[2] & SHF_COMPRESSED and n[4] + n[5] <= size:
            names = _read(elf, n[4], n[5], size)
    for i, r in enumerate(rows):
        name = ""
        if r[0] < len(names):
            e = names.find(b"\0", r[0])
            name = names[r[0]:e if e >= 0 else len(names)].decode("latin-1")
        out.append(SectionHeader(i, name, *r[1:]))
    return out


def section(elf, name: str) -> SectionHeader | None:
    for s in sections(elf):
        if s.name == name:
            return s
    return None


def section_bytes(elf, sec: SectionHeader, limit: int | None = None) -> bytes:
    """The bytes a section has in the file; ELFBoundsError for a section that has none (NOBITS,
    compressed), lies outside the file, or is larger than ``limit``."""
    if sec.type == SHT_NOBITS:
        raise ELFBoundsError(f"section {sec.name or sec.index} is SHT_NOBITS (no bytes in the file)")
    if sec.flags & SHF_COMPRESSED:
        raise ELFBoundsError(f"section {sec.name or sec.index} is compressed")
    if limit is not None and sec.size > limit:
        raise ELFBoundsError(f"section {sec.name or sec.index} is {sec.size} bytes (limit {limit})")
    return _read(elf, sec.offset, sec.size, file_size(elf))


@_per_file
def segments(elf) -> list[Segment]:
    """Every program header, checked against the file."""
    end, is64 = _fmt(elf)
    size = file_size(elf)
    h = elf.header
    phoff, phnum, phentsize = h.e_phoff, h.e_phnum, h.e_phentsize
    want = 56 if is64 else 32
    out: list[Segment] = []
    if phoff == 0 or phnum == 0:
        return out
    if phentsize != want:
        raise ELFBoundsError(f"program header entry size {phentsize}, expected {want}")
    if phnum == 0xFFFF:                     # PN_XNUM: the count is section 0's sh_info
        secs = sections(elf)
        phnum = secs[0].info if secs else 0
    if phnum > MAX_SEGMENTS or phoff + phnum * want > size:
        raise ELFBoundsError(f"{phnum} program headers at {phoff:#x} do not fit in the {size}-byte file")
    table = _read(elf, phoff, phnum * want, size)
    for i in range(phnum):
        if is64:   # type, flags, offset, vaddr, paddr, filesz, memsz, align
            t, fl, off, va, _pa, fs, ms, _al = struct.unpack_from(end + "IIQQQQQQ", table, i * want)
        else:      # type, offset, vaddr, paddr, filesz, memsz, flags, align
            t, off, va, _pa, fs, ms, fl, _al = struct.unpack_from(end + "IIIIIIII", table, i * want)
        out.append(Segment(t, fl, off, va, fs, ms))
    return out


def loads(elf) -> list[Segment]:
    """PT_LOAD segments, their file extent clipped to the file (a segment past the end has none)."""
    size = file_size(elf)
    out = []
    for s in segments(elf):
        if s.type != PT_LOAD:
            continue
        fs = max(0, min(s.filesz, size - s.offset)) if s.offset < size else 0
        out.append(Segment(s.type, s.flags, s.offset, s.vaddr, fs, s.memsz))
    return out


def build_id(elf) -> str:
    """The GNU build-id (hex), read from SHT_NOTE sections with every size checked; "" if none."""
    end, _ = _fmt(elf)
    size = file_size(elf)
    for sec in sections(elf):
        if sec.type != SHT_NOTE or sec.flags & SHF_COMPRESSED or sec.offset + sec.size > size:
            continue
        data = _read(elf, sec.offset, min(sec.size, 1 << 20), size)
        pos = 0
        while pos + 12 <= len(data):
            namesz, descsz, ntype = struct.unpack_from(end + "III", data, pos)
            name_end = pos + 12 + ((namesz + 3) & ~3)
            desc_end = name_end + ((descsz + 3) & ~3)
            if desc_end > len(data) or name_end > len(data):
                break
            if ntype == NT_GNU_BUILD_ID and data[pos + 12:pos + 12 + namesz].rstrip(b"\0") == b"GNU" \
                    and 0 < descsz <= 64:
                return data[name_end:name_end + descsz].hex()
            pos = desc_end
    return ""


def needed(elf, limit: int = 256) -> list[str]:
    """DT_NEEDED names of the dynamic section (at most ``limit``), every size checked; [] if none."""
    end, is64 = _fmt(elf)
    secs = sections(elf)
    dyn = next((s for s in secs if s.type == SHT_DYNAMIC), None)
    if dyn is None or not 0 < dyn.link < len(secs) or secs[dyn.link].type != SHT_STRTAB:
        return []
    data = section_bytes(elf, dyn, 1 << 20)
    strings = section_bytes(elf, secs[dyn.link], 16 << 20)
    fmt, step = (end + "qQ", 16) if is64 else (end + "iI", 8)
    out: list[str] = []
    for pos in range(0, len(data) - step + 1, step):
        tag, val = struct.unpack_from(fmt, data, pos)
        if tag == 0:                            # DT_NULL ends the table
            break
        if tag == DT_NEEDED and val < len(strings):
            e = strings.find(b"\0", val)
            out.append(strings[val:e if e >= 0 else len(strings)].decode("latin-1"))
            if len(out) >= limit:
                break
    return out
