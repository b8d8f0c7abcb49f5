"""Tiny hostile ELF files for the parser-hardening tests: headers that claim sizes the file does not
have. Each is a few hundred bytes."""

from __future__ import annotations

import struct

SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_HASH, SHT_NOTE, SHT_NOBITS, SHT_DYNSYM = 0, 1, 2, 3, 5, 7, 8, 11
SHF_COMPRESSED = 0x800
GIB = 1 << 30


def elf64(sections: list[dict], *, phdrs: list[tuple] = (), e_shnum: int | None = None,
          e_phnum: int | None = None, e_shentsize: int = 64) -> bytes:
    """An ELF64 LE x86-64 ET_DYN. sections: dicts with name, type, data (bytes placed in the file),
    and optional size/flags/link/entsize/offset overrides. A NULL section and .shstrtab are added."""
    names = b"\0"
    name_off = []
    for s in sections:
        name_off.append(len(names))
        names += s["name"].encode() + b"\0"
    shstr_name = len(names)
    names += b".shstrtab\0"
    all_secs = [{"name": "", "type": SHT_NULL, "data": b""}] + list(sections) + \
        [{"name": ".shstrtab", "type": SHT_STRTAB, "data": names}]
    offs_names = [0] + name_off + [shstr_name]
    nsec = len(all_secs)
    ph_off = 64
    sh_off = ph_off + 56 * len(phdrs)
    data_off = sh_off + 64 * nsec
    blob = b""
    shdrs = b""
    for i, s in enumerate(all_secs):
        off = data_off + len(blob)
        blob += s["data"]
        shdrs += struct.pack("<IIQQQQIIQQ", offs_names[i], s["type"], s.get("flags", 0), 0,
                             s.get("offset", off if s["data"] else 0), s.get("size", len(s["data"])),
                             s.get("link", 0), s.get("info", 0), 1, s.get("entsize", 0))
    ph = b"".join(struct.pack("<IIQQQQQQ", *p) for p in phdrs)
    hdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    hdr += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, ph_off if phdrs else 0, sh_off, 0, 64, 56,
                       len(phdrs) if e_phnum is None else e_phnum, e_shentsize,
                       nsec if e_shnum is None else e_shnum, nsec - 1)
    return hdr + ph + shdrs + blob


def dynsym_nobits() -> bytes:
    """The case of issue 10: a symbol table that is SHT_NOBITS with sh_size 1 GiB, linked to a real
    string table naming SSL_read (pyelftools' data() of it is b"\\0" * 1 GiB)."""
    return elf64([{"name": ".dynsym", "type": SHT_NOBITS, "data": b"", "size": GIB, "link": 2, "entsize": 24},
                  {"name": ".dynstr", "type": SHT_STRTAB, "data": b"\0SSL_read\0SSL_write\0"}])


def dynsym_linked_to_nobits() -> bytes:
    """.dynsym whose string table is SHT_NOBITS of 1 GiB."""
    sym = struct.pack("<IBBHQQ", 1, 0x12, 0, 1, 0x1000, 16)
    return elf64([{"name": ".dynsym", "type": SHT_DYNSYM, "data": sym, "link": 2, "entsize": 24},
                  {"name": ".dynstr", "type": SHT_NOBITS, "data": b"", "size": GIB}])


def symtab_larger_than_file() -> bytes:
    return elf64([{"name": ".symtab", "type": SHT_SYMTAB, "data": b"", "size": GIB, "link": 2, "entsize": 24},
                  {"name": ".strtab", "type": SHT_STRTAB, "data": b"\0SSL_read\0"}])


def compressed_strtab() -> bytes:
    """A zlib 'bomb' claimed to inflate to 1 GiB (Elf64_Chdr: type 1, size 1 GiB)."""
    import zlib
    chdr = struct.pack("<IIQQ", 1, 0, GIB, 1) + zlib.compress(b"\0" * (1 << 20), 9)
    sym = struct.pack("<IBBHQQ", 1, 0x12, 0, 1, 0x1000, 16)
    return elf64([{"name": ".dynsym", "type": SHT_DYNSYM, "data": sym, "link": 2, "entsize": 24},
                  {"name": ".dynstr", "type": SHT_STRTAB, "data": chdr, "flags": SHF_COMPRESSED}])


def huge_hash_table() -> bytes:
    """SHT_HASH with 2**30 buckets (pyelftools parses the arrays when sections are iterated)."""
    return elf64([{"name": ".hash", "type": SHT_HASH, "data": struct.pack("<II", GIB, GIB), "size": 8},
                  {"name": ".note.gnu.build-id", "type": SHT_NOTE,
                   "data": struct.pack("<III", 4, 0xFFFFFF00, 3) + b"GNU\0"}])


def huge_section_count() -> bytes:
    return elf64([{"name": ".text", "type": SHT_PROGBITS, "data": b"\xc3"}], e_shnum=0xFFFF)


def huge_segment() -> bytes:
    """An executable PT_LOAD claiming 1 GiB of file bytes at an offset past the end."""
    return elf64([{"name": ".text", "type": SHT_PROGBITS, "data": b"\xc3" * 16}],
                 phdrs=[(1, 5, 1 << 40, 0x400000, 0x400000, GIB, GIB, 0x1000)])


ALL = {
    "dynsym-nobits": dynsym_nobits,
    "dynsym-linked-to-nobits": dynsym_linked_to_nobits,
    "symtab-larger-than-file": symtab_larger_than_file,
    "compressed-strtab": compressed_strtab,
    "huge-hash-table": huge_hash_table,
    "huge-section-count": huge_section_count,
    "huge-segment": huge_segment,
}
