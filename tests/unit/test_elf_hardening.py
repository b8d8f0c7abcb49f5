"""ELF files whose headers lie (tests/crafted_elf.py): the locator answers "nothing here" or a clear
error, never allocates what a header claims, and never hands pyelftools a section it would inflate."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from elftools.elf.elffile import ELFFile

from tests import crafted_elf
from tracer.probes import elfview
from tracer.probes.locate import LocateError, locate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name", sorted(crafted_elf.ALL))
def test_locate_refuses_cleanly(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(crafted_elf.ALL[name]())
    try:
        assert locate(str(p), use_cache=False) is None
    except LocateError as e:
        assert "malformed" in str(e)


def test_section_bytes_checks():
    elf = ELFFile(io.BytesIO(crafted_elf.dynsym_nobits()))
    dynsym = elfview.section(elf, ".dynsym")
    with pytest.raises(elfview.ELFBoundsError, match="NOBITS"):
        elfview.section_bytes(elf, dynsym)
    elf = ELFFile(io.BytesIO(crafted_elf.compressed_strtab()))
    with pytest.raises(elfview.ELFBoundsError, match="compressed"):
        elfview.section_bytes(elf, elfview.section(elf, ".dynstr"))
    elf = ELFFile(io.BytesIO(crafted_elf.symtab_larger_than_file()))
    with pytest.raises(elfview.ELFBoundsError, match="outside"):
        elfview.section_bytes(elf, elfview.section(elf, ".symtab"))
    with pytest.raises(elfview.ELFBoundsError, match="do not fit"):
        elfview.sections(ELFFile(io.BytesIO(crafted_elf.huge_section_count())))


def test_build_id_note_sizes_are_checked():
    assert elfview.build_id(ELFFile(io.BytesIO(crafted_elf.huge_hash_table()))) == ""


def test_segments_past_the_end_have_no_file_bytes():
    elf = ELFFile(io.BytesIO(crafted_elf.huge_segment()))
    [seg] = elfview.loads(elf)
    assert seg.filesz == 0


def test_tiny_crafted_elf_allocates_nothing_it_claims(tmp_path):
    """A 367-byte ELF whose .dynsym is SHT_NOBITS of 1 GiB made `tracer locate` allocate 1 GiB."""
    p = tmp_path / "crafted"
    p.write_bytes(crafted_elf.dynsym_nobits())
    rss = {}
    for what, path in (("baseline", "/bin/true"), ("crafted", str(p))):
        proc = subprocess.Popen([sys.executable, "-m", "tracer.cli", "locate", path], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, _, ru = os.wait4(proc.pid, 0)
        rss[what] = ru.ru_maxrss
    assert rss["crafted"] - rss["baseline"] < 8 * 1024, rss      # KiB


@pytest.mark.parametrize("name", sorted(crafted_elf.ALL))
def test_process_tree_readers_refuse_cleanly(tmp_path, name):
    """What following a process reads of the files it maps or may load (DT_NEEDED, an imported
    dlopen, libc's fork()) goes through the same bounded reader: no exception, no inflated section."""
    from tracer.processes import resolve
    p = tmp_path / name
    p.write_bytes(crafted_elf.ALL[name]())
    info = resolve.dyn_info(str(p))
    assert info is None or isinstance(info.needed, tuple)
    assert resolve.function_address(str(p), ("fork", "__libc_fork")) is None


def test_process_tree_readers_never_open_a_fifo(tmp_path):
    """A FIFO named like a library in a directory the traced user controls: opening it for reading
    would block tracer (root) for good."""
    from tracer.processes import resolve
    fifo = tmp_path / "libssl.so.3"
    os.mkfifo(fifo)
    assert resolve.dyn_info(str(fifo)) is None
    assert resolve.function_address(str(fifo), ("fork",)) is None


def test_process_tree_readers_on_real_files():
    from tracer.processes import resolve
    libc = next(p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6",
                            "/usr/lib/x86_64-linux-gnu/libc.so.6") if os.path.exists(p))
    assert resolve.function_address(libc, ("fork", "__libc_fork"))
    info = resolve.dyn_info("/usr/bin/curl")
    assert info is not None and info.dynamic and any(n.startswith("libcurl") for n in info.needed)
