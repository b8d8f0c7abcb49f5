"""The checks right before uprobes go in (tracer/probes/verify.py) and the credential guard's kernel
offsets (tracer/probes/kcreds.py)."""

from __future__ import annotations

import os

import pytest
from elftools.elf.elffile import ELFFile

from tracer.probes import elfview
from tracer.probes.attach import file_offset
from tracer.probes.kcreds import cred_layout
from tracer.probes.locate import locate
from tracer.probes.located import FunctionLocation, Located, LocateError
from tracer.probes.verify import check_before_attach

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
pytestmark = pytest.mark.skipif(not os.path.exists(LIBSSL), reason="no libssl.so.3")


def _open():
    return os.open(LIBSSL, os.O_RDONLY)


def test_symbol_answers_pass_with_the_attach_offsets():
    loc = locate(LIBSSL)
    fd = _open()
    try:
        offsets = check_before_attach(fd, loc)
    finally:
        os.close(fd)
    assert offsets == {n: file_offset(LIBSSL, f.address) for n, f in loc.functions.items()}


def test_address_outside_executable_code_is_refused():
    """The poisoned cache of issue 10 put SSL_read into .dynstr: never attached there."""
    with open(LIBSSL, "rb") as f:
        dynstr = elfview.section(ELFFile(f), ".dynstr")
    bad = Located(LIBSSL, library="boringssl", functions={
        "SSL_read": FunctionLocation("SSL_read", dynstr.addr + 16, "cache"),
        "SSL_write": FunctionLocation("SSL_write", locate(LIBSSL).functions["SSL_write"].address, "cache")})
    fd = _open()
    try:
        with pytest.raises(LocateError, match="SSL_read .* not in an executable segment"):
            check_before_attach(fd, bad, display="libssl")
    finally:
        os.close(fd)


def test_cached_code_bytes_must_match():
    good = locate(LIBSSL)
    a = good.functions["SSL_read"].address
    fd = _open()
    try:
        with open(LIBSSL, "rb") as f:
            f.seek(file_offset(LIBSSL, a))
            code = f.read(16)
        ok = Located(LIBSSL, functions={"SSL_read": FunctionLocation("SSL_read", a, "cache", code)})
        check_before_attach(fd, ok)
        wrong = Located(LIBSSL, functions={"SSL_read": FunctionLocation("SSL_read", a, "cache",
                                                                        bytes(16))})
        with pytest.raises(LocateError, match="not what the cached answer was computed from"):
            check_before_attach(fd, wrong)
    finally:
        os.close(fd)


@pytest.mark.skipif(not os.path.exists("/sys/kernel/btf/vmlinux"), reason="no kernel BTF")
def test_cred_layout_from_btf():
    lay = cred_layout()
    assert lay is not None
    assert 0 < lay.cred_uid < 64 and lay.cred_uid % 4 == 0
    assert lay.task_real_cred > 0 and lay.task_mm > 0 and lay.mm_flags > 0
    assert lay.task_real_cred % 8 == lay.task_mm % 8 == lay.mm_flags % 8 == 0
    assert cred_layout("/nonexistent") is None
