"""The locate cache (tracer.probes.cache): keyed by the file's identity (dev, inode, size, mtime,
ctime), checked against its headers and code, never consulted before the symbol table; its directory
must be private. Uses the synthetic BoringSSL of test_locate_synthetic (gcc, no download)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from tests.unit.test_locate_synthetic import CFLAGS, SRC
from tracer.probes import cache
from tracer.probes.boringssl import METHOD
from tracer.probes.locate import build_id, locate

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "locate"


def build(d, name="fake", *flags) -> str:
    src = d / "ssl_lib_like.c"
    src.write_text(SRC)
    out = d / name
    subprocess.run(["gcc", *CFLAGS, "-fno-pie", "-no-pie", "-s", *flags, "-o", str(out), str(src)], check=True)
    return str(out)


@pytest.fixture
def fake(tmp_path):
    return build(tmp_path)


def _addrs(res):
    return {n: f.address for n, f in res.functions.items()}


def _entries(d):
    return sorted(d.glob("*.json")) if d.exists() else []


def test_second_locate_is_a_cache_hit(fake, cache_in_tmp):
    first = locate(fake)
    assert {f.method for f in first.functions.values()} == {METHOD}
    [entry] = _entries(cache_in_tmp)
    data = json.loads(entry.read_text())
    assert data["version"] == 2 and data["identity"]["ino"] == os.stat(fake).st_ino
    assert all(len(bytes.fromhex(f["code"])) == cache.CODE_BYTES for f in data["functions"].values())
    t = time.monotonic()
    second = locate(fake)
    assert time.monotonic() - t < 1.0
    assert {f.method for f in second.functions.values()} == {"cache"}
    assert _addrs(second) == _addrs(first) and second.library == "boringssl"


def test_no_cache_bypasses_and_does_not_write(fake, cache_in_tmp):
    res = locate(fake, use_cache=False)
    assert {f.method for f in res.functions.values()} == {METHOD}
    assert _entries(cache_in_tmp) == []


def test_a_changed_file_is_a_miss(fake, cache_in_tmp):
    locate(fake)
    st = os.stat(fake)
    os.utime(fake, ns=(st.st_atime_ns, st.st_mtime_ns))   # same mtime, but the kernel moves ctime
    res = locate(fake)
    assert {f.method for f in res.functions.values()} == {METHOD}
    assert len(_entries(cache_in_tmp)) == 2


def test_entry_of_another_file_with_the_same_build_id_is_never_used(tmp_path, cache_in_tmp):
    """The poisoning of issue 10: an ELF declaring another file's build-id. Entries are per file, so
    an entry made from one file is never an answer for another, whatever build-id both declare."""
    a = build(tmp_path, "a", "-Wl,--build-id=0x" + "ab" * 20)
    (tmp_path / "b").mkdir()
    b = build(tmp_path / "b", "b", "-Wl,--build-id=0x" + "ab" * 20, "-DFILE_=\"x/boringssl/ssl/ssl_lib.cc\"")
    with open(a, "rb") as f, open(b, "rb") as g:
        from elftools.elf.elffile import ELFFile
        assert build_id(ELFFile(f)) == build_id(ELFFile(g)) == "ab" * 20
    locate(a)
    [entry] = _entries(cache_in_tmp)
    # copy a's entry to the name b's identity would use: identity and code checks still refuse it
    st = os.stat(b)
    forged = json.loads(entry.read_text())
    (cache_in_tmp / cache._entry_name(cache.identity(st))).write_text(json.dumps(forged))
    res = locate(b)
    assert {f.method for f in res.functions.values()} == {METHOD}
    forged["identity"] = cache.identity(st)      # even with b's identity: the headers differ
    (cache_in_tmp / cache._entry_name(cache.identity(st))).write_text(json.dumps(forged))
    assert {f.method for f in locate(b).functions.values()} == {METHOD}


@pytest.mark.parametrize("garbage", [
    b"", b"{", b"\x00\xff" * 10, b"[]", b'{"version": 2}', b'{"version": 1, "build_id": "x"}',
])
def test_corrupt_entries_are_misses_and_get_repaired(fake, cache_in_tmp, garbage):
    good = locate(fake, use_cache=False)
    cache_in_tmp.mkdir(parents=True, exist_ok=True)
    entry = cache_in_tmp / cache._entry_name(cache.identity(os.stat(fake)))
    entry.write_bytes(garbage)
    res = locate(fake)
    assert _addrs(res) == _addrs(good) and {f.method for f in res.functions.values()} == {METHOD}
    assert json.loads(entry.read_text())["version"] == 2


def test_recorded_code_must_match(fake, cache_in_tmp):
    good = locate(fake)
    [entry] = _entries(cache_in_tmp)
    data = json.loads(entry.read_text())
    data["functions"]["SSL_read"]["address"] = hex(good.functions["SSL_read"].address + 1)
    entry.write_text(json.dumps(data))
    res = locate(fake)
    assert _addrs(res) == _addrs(good) and {f.method for f in res.functions.values()} == {METHOD}


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_cache_dir_writable_by_others_is_not_used(fake, cache_in_tmp, mode):
    locate(fake)
    cache_in_tmp.chmod(mode)
    res = locate(fake)
    assert {f.method for f in res.functions.values()} == {METHOD}


def test_entry_writable_by_others_is_not_used(fake, cache_in_tmp):
    locate(fake)
    [entry] = _entries(cache_in_tmp)
    entry.chmod(0o666)
    assert {f.method for f in locate(fake).functions.values()} == {METHOD}


def test_unwritable_cache_location_only_disables_caching(fake, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TRACER_CACHE_DIR", str(blocker))     # <file>/locate cannot be created
    res = locate(fake)
    assert res is not None and {f.method for f in res.functions.values()} == {METHOD}


def test_symbol_table_first_and_never_cached(cache_in_tmp):
    if not os.path.exists(LIBSSL):
        pytest.skip("no libssl.so.3")
    for _ in range(2):
        res = locate(LIBSSL)
        assert res.functions["SSL_read"].method == "dynamic symbol table"
    assert _entries(cache_in_tmp) == []
