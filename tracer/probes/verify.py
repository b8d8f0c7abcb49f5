"""The last check before tracer writes breakpoints into a process: do the located addresses make
sense in the very file the probes go on?

uprobes put an int3 at a file offset of an inode, in every traced process that maps it. An address
that is not the start of code there corrupts the target (an int3 in .dynstr made a client crash with
"undefined symbol"). So, on the open file the attach will use (not a path looked up again):

  * every function's address must lie inside the file bytes of an executable PT_LOAD segment;
  * an answer that came from the cache must find, at each address, the bytes recorded when the
    answer was computed (tracer/probes/cache.py).

A failure raises LocateError and nothing is attached to that file.
"""

from __future__ import annotations

import os

from elftools.elf.elffile import ELFFile

from tracer.probes import elfview
from tracer.probes.located import Located, LocateError


def check_before_attach(fd: int, located: Located, display: str = "") -> dict[str, int]:
    """{function: file offset} for the attach, or LocateError. ``fd``: the file the probes go on."""
    what = display or located.path
    with os.fdopen(os.dup(fd), "rb") as f:
        try:
            elf = ELFFile(f)
            loads = [s for s in elfview.loads(elf) if s.flags & elfview.PF_X and s.filesz]
        except Exception as e:          # a file that was an ELF when located and is not one now
            raise LocateError(f"{what}: cannot read its program headers ({e})") from None
        offsets: dict[str, int] = {}
        for name, fn in located.functions.items():
            seg = next((s for s in loads if s.vaddr <= fn.address < s.vaddr + s.filesz), None)
            if seg is None:
                raise LocateError(f"{what}: {name} at {fn.address:#x} is not in an executable segment "
                                  "of the file; not attaching there")
            off = seg.offset + (fn.address - seg.vaddr)
            if fn.code:
                f.seek(off)
                if f.read(len(fn.code)) != fn.code:
                    raise LocateError(f"{what}: the code at {name} ({fn.address:#x}) is not what the "
                                      "cached answer was computed from; not attaching there")
            offsets[name] = off
    return offsets
