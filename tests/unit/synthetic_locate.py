"""Helpers shared by the synthetic locator tests (x86-64 programs built with gcc, arm64 programs
assembled with binutils-aarch64-linux-gnu): compare discovery on a stripped build with the symbol
table of the same build unstripped."""

from __future__ import annotations

from pathlib import Path

from elftools.elf.elffile import ELFFile

from tracer.probes.boringssl import METHOD
from tracer.probes.locate import locate


def symbols(path: Path) -> dict[str, int]:
    """Function (and label) addresses of an unstripped build."""
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {s.name: s["st_value"] for s in symtab.iter_symbols()
                if s.name and s["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE")}


def check_stripped_build(full: Path, stripped: Path, machine: str) -> None:
    """Discovery on the stripped build finds exactly the unstripped build's SSL_read/SSL_write."""
    syms = symbols(full)
    with open(stripped, "rb") as f:
        elf = ELFFile(f)
        assert elf.header.e_machine == machine
        assert elf.get_section_by_name(".symtab") is None   # really stripped
    res = locate(str(stripped), use_cache=False)
    assert res is not None and res.library == "boringssl"
    assert {n: f.address for n, f in res.functions.items()} == {
        "SSL_read": syms["SSL_read"], "SSL_write": syms["SSL_write"]}
    assert {f.method for f in res.functions.values()} == {METHOD}
    assert res.build_id and len(res.build_id) == 40
