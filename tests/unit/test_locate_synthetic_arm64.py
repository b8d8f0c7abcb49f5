"""AArch64 BoringSSL discovery on small arm64 programs assembled here (binutils-aarch64-linux-gnu,
no downloads), located from this (x86-64) host: the reader is chosen from the ELF, not the machine.

The assembly has the shape clang gives ssl_lib.cc on arm64 (what Bun ships): the file name
materialised with adrp+add into x3 (x2 in the older 4-argument convention), ``mov w0, #16`` /
``mov w2, #reason`` / ``mov w4, #line``, error paths that branch to one shared
``bl ERR_put_error``, frames set up by ``stp x29, x30, [sp, #-N]!`` or ``sub sp`` + ``stp``,
functions only 4-byte aligned and back to back. A stripped link is located and compared with the
symbol table of the same link unstripped.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.unit.synthetic_locate import check_stripped_build, symbols
from tracer.probes.boringssl import BoringSSLStrategy, analyze_path
from tracer.probes.locate import LocateError, locate

AS, LD = "aarch64-linux-gnu-as", "aarch64-linux-gnu-ld"
pytestmark = pytest.mark.skipif(shutil.which(AS) is None or shutil.which(LD) is None,
                                reason="needs binutils-aarch64-linux-gnu (scripts/bootstrap.sh installs it)")

# PUT file-register reason-register reason line: one error site that falls through to the shared
# call at label 9 of its function (clang's layout), in either calling convention.
SRC = r"""
    .macro SITE reason, line
    .ifdef OLD_ABI
        adrp x2, file
        add x2, x2, :lo12:file
        mov w1, #\reason
        mov w3, #\line
    .else
        .ifdef REASON_FIRST
        mov w2, #\reason
        .endif
        adrp x3, file
        add x3, x3, :lo12:file
        mov w1, wzr
        .ifndef REASON_FIRST
        mov w2, #\reason
        .endif
        mov w4, #\line
    .endif
        mov w0, #LIB
    .endm

    .ifndef LIB
    .set LIB, 16
    .endif

    .section .rodata
    .ascii "padding before the string\0"
file:
    .ifdef OTHER_FILE
    .asciz "ssl/other.cc"
    .else
    .asciz "../../vendor/boringssl/ssl/ssl_lib.cc"
    .endif

    .text
    .p2align 2
    .globl _start
ERR_put_error:
    ret
ssl_do_handshake:
    ldr w0, [x0, #16]
    ret

ssl_read_impl:
    stp x29, x30, [sp, #-32]!
    mov x29, sp
    str x19, [sp, #16]
    mov x19, x0
    ldr x8, [x0, #8]
    cbz x8, 1f
    bl ssl_do_handshake
    tbnz w0, #31, 2f
    ldr w0, [x19, #20]
    b 8f
1:  SITE 0xe2, 1001
    b 9f
2:  SITE 0xd7, 1002
9:  bl ERR_put_error
    mov w0, #-1
8:  ldr x19, [sp, #16]
    ldp x29, x30, [sp], #32
    ret

    .macro READ_FN line
    stp x29, x30, [sp, #-16]!
    mov x29, sp
    ldr x8, [x0]
    cbnz x8, 1f
    bl ssl_read_impl
    ldp x29, x30, [sp], #16
    ret
1:  SITE 0x42, \line
    bl ERR_put_error
    mov w0, #-1
    ldp x29, x30, [sp], #16
    ret
    .endm

SSL_read:
    READ_FN 1010
    .ifdef WITH_PEEK
SSL_peek:                   // the same shape: two SSL_read candidates
    READ_FN 1020
    .endif

SSL_write:
    sub sp, sp, #0x30
    stp x29, x30, [sp, #0x20]
    add x29, sp, #0x20
    str x19, [sp, #0x10]
    mov x19, x0
    ldr x8, [x0]
    cbnz x8, 1f
    ldr x8, [x0, #8]
    cbz x8, 2f
    .ifndef NO_BAD_LENGTH
    tbnz w2, #31, 3f
    .endif
    bl ssl_do_handshake
    tbnz w0, #31, 4f
    mov w0, w2
    b 8f
1:  SITE 0x42, 1030
    b 9f
2:  SITE 0xe2, 1031
    b 9f
    .ifndef NO_BAD_LENGTH
3:  SITE 0x6f, 1032
    b 9f
    .endif
4:  SITE 0xd7, 1033
9:  bl ERR_put_error
    mov w0, #-1
8:  ldr x19, [sp, #0x10]
    ldp x29, x30, [sp, #0x20]
    add sp, sp, #0x30
    ret

SSL_shutdown:
    stp x29, x30, [sp, #-16]!
    mov x29, sp
    ldr x8, [x0, #8]
    cbz x8, 1f
    ldr x8, [x0]
    cbnz x8, 2f
    bl ssl_read_impl
    ldp x29, x30, [sp], #16
    ret
1:  SITE 0xe2, 1040
    b 9f
2:  SITE 0x123, 1041
9:  bl ERR_put_error
    mov w0, #-1
    ldp x29, x30, [sp], #16
    ret

other_library:
    stp x29, x30, [sp, #-16]!
    mov x29, sp
    adrp x3, file
    add x3, x3, :lo12:file
    mov w0, #20
    mov w1, wzr
    mov w2, #0x42
    mov w4, #1050
    bl ERR_put_error
    ldp x29, x30, [sp], #16
    ret

_start:
    mov x0, sp
    .ifdef INDIRECT_WRITE
    adr x9, SSL_write
    blr x9
    .else
    bl SSL_write
    .endif
    bl SSL_read
    bl SSL_shutdown
    bl other_library
    .ifdef WITH_PEEK
    bl SSL_peek
    .endif
    mov x8, #93
    svc #0
"""


def _build(d: Path, name: str, *defs: str) -> tuple[Path, Path]:
    src = d / "ssl_lib_like.s"
    src.write_text(SRC)
    obj = d / (name + ".o")
    args = [a for x in defs for a in ("--defsym", x)]
    subprocess.run([AS, *args, "-o", str(obj), str(src)], check=True)
    full, stripped = d / (name + ".full"), d / name
    for out, extra in ((full, []), (stripped, ["-s"])):
        subprocess.run([LD, "--build-id", *extra, "-o", str(out), str(obj)], check=True)
    return full, stripped


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic-arm64")
    return {
        "new": _build(d, "new"),
        "old_abi": _build(d, "old_abi", "OLD_ABI=1"),
        "reason_first": _build(d, "reason_first", "REASON_FIRST=1"),
        "peek": _build(d, "peek", "WITH_PEEK=1"),
        "nobadlen": _build(d, "nobadlen", "NO_BAD_LENGTH=1"),
        "nostring": _build(d, "nostring", "OTHER_FILE=1"),
        "otherlib": _build(d, "otherlib", "LIB=20"),
        "indirect": _build(d, "indirect", "INDIRECT_WRITE=1"),
    }


@pytest.mark.parametrize("kind", ["new", "old_abi", "reason_first"])
def test_stripped_build_matches_symbols(builds, kind):
    check_stripped_build(*builds[kind], "EM_AARCH64")


def test_fingerprint_details(builds):
    full, stripped = builds["new"]
    syms = symbols(full)
    an = analyze_path(str(stripped))
    assert an.internal == {"ssl_read_impl": syms["ssl_read_impl"]}
    assert an.functions[syms["SSL_write"]] == {0x42, 0xE2, 0x6F, 0xD7}
    assert an.functions[syms["ssl_read_impl"]] == {0xE2, 0xD7}
    assert an.functions[syms["SSL_read"]] == {0x42}
    assert an.functions[syms["SSL_shutdown"]] == {0xE2, 0x123}
    assert {s.err_call for s in an.sites} == {syms["ERR_put_error"]}
    assert an.references == 10          # 9 library-16 sites + other_library's


@pytest.mark.parametrize("kind,error", [
    ("peek", r"expected exactly one SSL_read candidate, found 2"),     # SSL_peek has SSL_read's shape
    ("nobadlen", r"SSL_write candidate, found 0"),         # no function has the SSL_write set
    ("otherlib", r"none decodes as ERR_put_error\(ERR_LIB_SSL"),     # library 20 only
    # SSL_write reached only through a pointer is no bl target: its sites must not be credited
    # to the function before it (the prologue after that function's ret is a boundary)
    ("indirect", r"SSL_write candidate, found 0"),
])
def test_unsafe_shapes_raise_instead_of_guessing(builds, kind, error):
    _, stripped = builds[kind]
    with pytest.raises(LocateError, match=error) as ei:
        locate(str(stripped), use_cache=False)
    assert str(stripped) in str(ei.value)


def test_string_without_boringssl_path_is_not_boringssl(builds):
    _, stripped = builds["nostring"]
    with open(stripped, "rb") as f:
        assert BoringSSLStrategy().locate(str(stripped), ELFFile(f)) is None


def test_unknown_machine_is_not_read(builds, tmp_path):
    """An ELF of an architecture without a reader is left alone (not decoded as A64 or x86)."""
    _, stripped = builds["new"]
    data = bytearray(stripped.read_bytes())
    data[18:20] = (243).to_bytes(2, "little")       # EM_RISCV
    other = tmp_path / "riscv"
    other.write_bytes(bytes(data))
    with open(other, "rb") as f:
        assert BoringSSLStrategy().locate(str(other), ELFFile(f)) is None


def test_cli_locates_arm64_binary(builds):
    """`tracer locate` on an arm64 binary from this host."""
    import sys
    full, stripped = builds["new"]
    syms = symbols(full)
    out = subprocess.run([sys.executable, "-m", "tracer.cli", "locate", "--no-cache", "--json", str(stripped)],
                         capture_output=True, text=True, check=True).stdout
    import json
    funcs = json.loads(out)["functions"]
    assert funcs["SSL_write"]["address"] == hex(syms["SSL_write"])
    assert funcs["SSL_read"]["address"] == hex(syms["SSL_read"])
