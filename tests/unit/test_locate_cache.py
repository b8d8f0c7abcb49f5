"""Build-id cache of locator results (tracer.probes.cache) and its wiring into locate()."""

from __future__ import annotations

import json
import os
import time

import pytest

from tracer.probes import cache
from tracer.probes.boringssl import METHOD
from tracer.probes.locate import FunctionLocation, Located, locate
from tracer.testing.releases import fetch_npm_release


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "locate"


@pytest.fixture(scope="module")
def bun():
    return str(fetch_npm_release("@oven/bun-linux-x64", "1.4.5"))


def _addrs(res):
    return {n: f.address for n, f in res.functions.items()}


def test_second_locate_is_a_cache_hit(bun, cache_in_tmp):
    first = locate(bun)
    assert {f.method for f in first.functions.values()} == {METHOD}
    entry = cache_in_tmp / (first.build_id + ".json")
    assert entry.is_file()
    t = time.monotonic()
    second = locate(bun)
    assert time.monotonic() - t < 1.0   # discovery itself takes ~0.5-2 s; a hit only reads ELF notes + JSON
    assert {f.method for f in second.functions.values()} == {"cache"}
    assert _addrs(second) == _addrs(first)
    assert second.build_id == first.build_id and second.library == "boringssl"
    data = json.loads(entry.read_text())
    assert data["functions"]["SSL_read"]["found_by"] == METHOD


def test_no_cache_bypasses_and_does_not_write(bun, cache_in_tmp):
    res = locate(bun, use_cache=False)
    assert {f.method for f in res.functions.values()} == {METHOD}
    assert not cache_in_tmp.exists() or not any(cache_in_tmp.iterdir())


@pytest.mark.parametrize("garbage", [
    b"", b"{", b"\x00\xff" * 10, b"[]", b'{"version": 1}',
    b'{"version": 1, "build_id": "BID", "functions": {"SSL_read": {"address": "zz"}}}',
    b'{"version": 1, "build_id": "BID", "functions": {"SSL_read": {"address": "0x0"},'
    b' "SSL_write": {"address": "0x0"}}}',
    b'{"version": 1, "build_id": "BID", "functions": {"SSL_read": {"address": "0x10"}}}',
    b'{"version": 99, "build_id": "BID", "functions": {"SSL_read": {"address": "0x10"},'
    b' "SSL_write": {"address": "0x20"}}}',
    b'{"version": 1, "build_id": "BID", "functions": "nope"}',
])
def test_corrupt_entries_are_misses_and_get_repaired(bun, cache_in_tmp, garbage):
    good = locate(bun, use_cache=False)
    cache_in_tmp.mkdir(parents=True, exist_ok=True)
    entry = cache_in_tmp / (good.build_id + ".json")
    entry.write_bytes(garbage.replace(b"BID", good.build_id.encode()))
    res = locate(bun)
    assert _addrs(res) == _addrs(good)
    assert {f.method for f in res.functions.values()} == {METHOD}     # rediscovered
    assert json.loads(entry.read_text())["build_id"] == good.build_id  # and rewritten


def test_entry_of_another_build_id_is_ignored(tmp_path, cache_in_tmp):
    res = Located(path=str(tmp_path / "x"), build_id="ab" * 20, library="boringssl",
                  functions={"SSL_read": FunctionLocation("SSL_read", 0x10, METHOD),
                             "SSL_write": FunctionLocation("SSL_write", 0x20, METHOD)})
    assert cache.store(res)
    (cache_in_tmp / ("cd" * 20 + ".json")).write_text((cache_in_tmp / ("ab" * 20 + ".json")).read_text())
    assert cache.load("cd" * 20, res.path) is None
    hit = cache.load("ab" * 20, res.path)
    assert _addrs(hit) == {"SSL_read": 0x10, "SSL_write": 0x20}


def test_unusable_build_ids_are_never_cached(tmp_path):
    res = Located(path="x", build_id="../../etc/passwd", functions={
        "SSL_read": FunctionLocation("SSL_read", 1, METHOD), "SSL_write": FunctionLocation("SSL_write", 2, METHOD)})
    assert cache.store(res) is False
    assert cache.load("../../etc/passwd", "x") is None
    assert cache.load("", "x") is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_cache_dir_only_disables_caching(bun, cache_in_tmp):
    cache_in_tmp.mkdir(parents=True)
    cache_in_tmp.chmod(0o500)
    try:
        assert locate(bun) is not None
    finally:
        cache_in_tmp.chmod(0o700)


def test_unwritable_cache_location_only_disables_caching(bun, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TRACER_CACHE_DIR", str(blocker))     # <file>/locate cannot be created
    res = locate(bun)
    assert res is not None and {f.method for f in res.functions.values()} == {METHOD}


def test_symbol_results_are_not_cached(cache_in_tmp):
    lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    if not os.path.exists(lib):
        pytest.skip("no libssl.so.3")
    for _ in range(2):
        res = locate(lib)
        assert res.functions["SSL_read"].method == "dynamic symbol table"
    assert not cache_in_tmp.exists() or not any(cache_in_tmp.iterdir())
