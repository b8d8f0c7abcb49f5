"""`tracer locate` on real objects: libssl (symbols), node (static OpenSSL), Bun/Claude (BoringSSL),
and the error paths (stripped ELF without TLS, non-ELF, missing file)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tracer.cli import main
from tracer.testing.releases import fetch_npm_release

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
NODE = shutil.which("node") or "/usr/bin/node"


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACER_CACHE_DIR", str(tmp_path / "cache"))


def run(*args):
    r = CliRunner().invoke(main, ["locate", *args])
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), r.exception
    return r


def nm_dynamic(path):
    out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[2].split("@")[0]: int(line.split()[0], 16) for line in out.splitlines()
            if len(line.split()) == 3 and line.split()[1] in "Tt"}


@pytest.mark.parametrize("path", [LIBSSL, NODE])
def test_symbol_objects_json(path):
    if not os.path.exists(path):
        pytest.skip("%s not installed" % path)
    r = run("--json", path)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["binary"] == path and len(out["build_id"]) == 40
    funcs = out["functions"]
    assert {"SSL_read", "SSL_write"} <= set(funcs)
    if shutil.which("nm"):   # cross-check against binutils
        syms = nm_dynamic(path)
        for name, f in funcs.items():
            assert int(f["address"], 16) == syms[name]
    assert funcs["SSL_read"]["method"] == "dynamic symbol table"


def test_bun_text_then_cache_json():
    bun = str(fetch_npm_release("@oven/bun-linux-x64", "1.4.5"))
    r = run(bun)
    assert r.exit_code == 0, r.output
    assert "SSL_read" in r.output and "0x02586500" in r.output
    assert "boringssl error-site fingerprint" in r.output
    r = run("--json", bun)
    out = json.loads(r.output)
    assert out["build_id"] == "b5188e4f53b53f3a346614bd78ba53f2ff234402"
    assert out["functions"]["SSL_write"] == {"address": "0x2607c30", "method": "cache"}
    r = run("--json", "--no-cache", bun)
    assert json.loads(r.output)["functions"]["SSL_write"]["method"] == "boringssl error-site fingerprint"


def test_stripped_elf_without_tls(tmp_path):
    true = tmp_path / "true"
    shutil.copy("/bin/true", true)
    if shutil.which("strip"):
        subprocess.run(["strip", str(true)], check=True)
    r = run(str(true))
    assert r.exit_code == 1
    assert "no TLS library found in %s" % true in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("content", [b"", b"#!/bin/sh\necho hi\n", b"\x7fELF", b"\x7fELF" + b"\x00" * 60,
                                     b"\x7fELF\x02\x01\x01" + os.urandom(200)])
def test_non_elf_and_broken_elf(tmp_path, content):
    p = tmp_path / "thing"
    p.write_bytes(content)
    r = run(str(p))
    assert r.exit_code == 1
    assert str(p) in r.output and "Traceback" not in r.output


def test_missing_file(tmp_path):
    r = run(str(tmp_path / "nope"))
    assert r.exit_code != 0 and "no such file" in r.output


def test_real_entry_point_exit_code(tmp_path):
    """The installed console script (not only CliRunner) exits 1 with one line on stderr."""
    p = tmp_path / "notelf"
    p.write_text("hello")
    proc = subprocess.run([sys.executable, "-m", "tracer.cli", "locate", str(p)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "no TLS library found in" in proc.stderr and "Traceback" not in proc.stderr
