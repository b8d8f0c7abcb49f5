"""tracer.testing.releases: npm downloads cached outside the repository, idempotent and safe to call
concurrently (a tiny real package keeps this fast)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tracer.testing import releases

_USER_CACHE = os.environ.get("TRACER_CACHE_DIR")


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_concurrent_fetches_download_once(cache_in_tmp, monkeypatch):
    calls = []
    real = releases._npm_pack

    def counting(spec, dest):
        calls.append(spec)
        return real(spec, dest)

    monkeypatch.setattr(releases, "_npm_pack", counting)
    results, errors = [], []

    def worker():
        try:
            results.append(releases.fetch_npm_release("ms", "2.1.3"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert len(set(results)) == 1 and calls == ["ms@2.1.3"]
    pkg = results[0]
    assert pkg == cache_in_tmp / "npm" / "ms" / "2.1.3" / "package"   # no "bin": the package dir
    assert (pkg / "package.json").is_file() and (pkg / "index.js").is_file()
    assert releases.is_cached("ms", "2.1.3")
    # nothing left behind: no temporary dirs, no tarball
    assert sorted(p.name for p in (cache_in_tmp / "npm" / "ms").iterdir()) == ["2.1.3", "2.1.3.lock"]
    assert not list((cache_in_tmp / "npm" / "ms" / "2.1.3").glob("*.tgz"))


def test_interrupted_unpack_is_redone(cache_in_tmp):
    rdir = releases.release_dir("ms", "2.1.3")
    (rdir / "package").mkdir(parents=True)            # half-populated, no completion marker
    (rdir / "package" / "junk").write_text("x")
    pkg = releases.fetch_npm_release("ms", "2.1.3")
    assert (pkg / "index.js").is_file() and not (pkg / "junk").exists()
    releases.remove_npm_release("ms", "2.1.3")
    assert not rdir.exists() and not releases.is_cached("ms", "2.1.3")


def test_unknown_version_is_a_clear_error():
    with pytest.raises(releases.ReleaseError, match="npm pack ms@0.0.0-nonexistent failed"):
        releases.fetch_npm_release("ms", "0.0.0-nonexistent")


def test_program_paths(tmp_path):
    assert releases._program("@anthropic-ai/claude-code-linux-x64", tmp_path) == tmp_path / "claude"
    assert releases._program("@oven/bun-linux-x64", tmp_path) == tmp_path / "bin" / "bun"
    assert releases._program("@anthropic-ai/claude-code", tmp_path) == tmp_path / "cli.js"


def test_claude_code_cli_js_release(monkeypatch):
    """The 2.0.x npm package is plain JavaScript for node: the helper returns cli.js."""
    if _USER_CACHE:   # the shared cache, not this test's temporary one (the lead's e2e tests reuse it)
        monkeypatch.setenv("TRACER_CACHE_DIR", _USER_CACHE)
    else:
        monkeypatch.delenv("TRACER_CACHE_DIR")
    p = releases.fetch_npm_release("@anthropic-ai/claude-code", "2.0.77")
    assert p.name == "cli.js" and p.stat().st_size > 1_000_000
    assert Path(p).read_bytes()[:2] == b"#!"
