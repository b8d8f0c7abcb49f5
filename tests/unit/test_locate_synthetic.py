"""BoringSSL discovery on small programs compiled here with gcc (no downloads).

The C file mimics the shape of BoringSSL's ssl_lib.cc as far as discovery cares: error sites call
ERR_put_error(16, 0, reason, "…/vendor/boringssl/ssl/ssl_lib.cc", __LINE__) with the real reason
codes, SSL_read = SSL_peek's guard + a call to ssl_read_impl, SSL_shutdown also calls ssl_read_impl.
A stripped build is located and compared with the symbol table of the same build unstripped.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.unit.synthetic_locate import check_stripped_build
from tracer.probes.boringssl import BoringSSLStrategy
from tracer.probes.locate import LocateError, locate

SRC = r"""
#include <stdlib.h>
#include <string.h>
#define NI __attribute__((noipa))
#ifndef FILE_
#define FILE_ "../../vendor/boringssl/ssl/ssl_lib.cc"
#endif
#ifndef LIB
#define LIB 16
#endif
#define PUT(r) ERR_put_error(LIB, 0, (r), FILE_, __LINE__)
volatile int sink;
struct ssl { void *quic; void *ctx; int hs; int n; char buf[64]; };
NI void ERR_put_error(int lib, int unused, int reason, const char *file, unsigned line) {
  sink = lib + reason + line + file[0];
}
NI int ssl_do_handshake(struct ssl *s) { return s->hs; }
NI int ssl_read_impl(struct ssl *s) {
  if (s->ctx == NULL) { PUT(0xe2); return -1; }
  if (ssl_do_handshake(s) < 0) { PUT(0xd7); return -1; }
  return s->n;
}
NI int SSL_read(struct ssl *s, void *buf, int num) {
  if (s->quic) { PUT(0x42); return -1; }
  int r = ssl_read_impl(s);
  if (r <= 0) return r;
  memcpy(buf, s->buf, num < r ? num : r);
  return r;
}
#ifdef WITH_PEEK
NI int SSL_peek(struct ssl *s, void *buf, int num) {
  if (s->quic) { PUT(0x42); return -1; }
  int r = ssl_read_impl(s);
  if (r <= 0) return r;
  memcpy(buf, s->buf, 1);
  return r + 1;
}
#endif
NI int SSL_write(struct ssl *s, const void *buf, int num) {
  if (s->quic) { PUT(0x42); return -1; }
  if (s->ctx == NULL) { PUT(0xe2); return -1; }
#ifndef NO_BAD_LENGTH
  if (num < 0) { PUT(0x6f); return -1; }
#endif
  if (ssl_do_handshake(s) < 0) { PUT(0xd7); return -1; }
  memcpy(s->buf, buf, num > 64 ? 64 : num);
  return num;
}
NI int SSL_shutdown(struct ssl *s) {
  if (s->ctx == NULL) { PUT(0xe2); return -1; }
  if (s->quic) { PUT(0x123); return -1; }
  return ssl_read_impl(s);
}
NI int other_library(struct ssl *s) {   /* library 20 (not SSL): must be ignored */
  if (s->quic) { ERR_put_error(20, 0, 0x42, FILE_, __LINE__); return -1; }
  return 0;
}
int main(int argc, char **argv) {
  struct ssl s = {0};
  char b[8];
  s.ctx = argv; s.n = argc;
  int r = SSL_write(&s, "x", 1) + SSL_read(&s, b, 8) + SSL_shutdown(&s) + other_library(&s);
#ifdef WITH_PEEK
  r += SSL_peek(&s, b, 8);
#endif
  return r & 1;
}
"""

CFLAGS = ["-O2", "-fno-omit-frame-pointer", "-falign-functions=16",
          "-fno-reorder-blocks-and-partition", "-fno-optimize-sibling-calls", "-Wl,--build-id"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _build(d: Path, name: str, *flags: str) -> tuple[Path, Path]:
    src = d / "ssl_lib_like.c"
    src.write_text(SRC)
    full, stripped = d / (name + ".full"), d / name
    subprocess.run(["gcc", *CFLAGS, *flags, "-o", str(full), str(src)], check=True)
    subprocess.run(["gcc", *CFLAGS, *flags, "-s", "-o", str(stripped), str(src)], check=True)
    return full, stripped


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic")
    return {
        "nopie": _build(d, "nopie", "-fno-pie", "-no-pie"),
        "pie": _build(d, "pie", "-fPIE", "-pie"),
        "peek": _build(d, "peek", "-fno-pie", "-no-pie", "-DWITH_PEEK"),
        "nobadlen": _build(d, "nobadlen", "-fno-pie", "-no-pie", "-DNO_BAD_LENGTH"),
        "nostring": _build(d, "nostring", "-fno-pie", "-no-pie", '-DFILE_="ssl/other.cc"'),
        "otherlib": _build(d, "otherlib", "-fno-pie", "-no-pie", "-DLIB=20"),
    }


@pytest.mark.parametrize("kind", ["nopie", "pie"])
def test_stripped_build_matches_symbols(builds, kind):
    check_stripped_build(*builds[kind], "EM_X86_64")


def test_two_ssl_read_candidates_is_an_error_not_a_guess(builds):
    _, stripped = builds["peek"]   # SSL_peek has the same shape as SSL_read
    with pytest.raises(LocateError) as ei:
        locate(str(stripped), use_cache=False)
    msg = str(ei.value)
    assert str(stripped) in msg and "SSL_read" in msg and "found 2" in msg


def test_missing_fingerprint_is_an_error(builds):
    _, stripped = builds["nobadlen"]   # SSL_write lost BAD_LENGTH: no function has the SSL_write set
    with pytest.raises(LocateError, match=r"SSL_write candidate, found 0"):
        locate(str(stripped), use_cache=False)


def test_without_file_string_strategy_does_not_apply(builds):
    _, stripped = builds["nostring"]
    with open(stripped, "rb") as f:
        assert BoringSSLStrategy().locate(str(stripped), ELFFile(f)) is None
    assert locate(str(stripped), use_cache=False) is None


def test_sites_of_another_library_are_an_error(builds):
    """The file name is loaded by code, but never for ERR_LIB_SSL: looks like BoringSSL, can't probe."""
    _, stripped = builds["otherlib"]
    with pytest.raises(LocateError, match=r"none decodes as ERR_put_error\(ERR_LIB_SSL"):
        locate(str(stripped), use_cache=False)


def test_unreferenced_file_name_is_not_boringssl(tmp_path):
    src = tmp_path / "s.c"
    src.write_text('__attribute__((used)) static const char s[] = "../../vendor/boringssl/ssl/ssl_lib.cc";\n'
                   "int main(void) { return 0; }\n")
    exe = tmp_path / "s"
    subprocess.run(["gcc", "-O2", "-s", "-no-pie", "-o", str(exe), str(src)], check=True)
    assert b"boringssl/ssl/ssl_lib.cc" in exe.read_bytes()
    assert locate(str(exe), use_cache=False) is None
