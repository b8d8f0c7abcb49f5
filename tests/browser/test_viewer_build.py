"""The committed front-end assets are exactly what `npm ci && npm run build` in viewer-src/ produces."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "viewer-src"
ASSETS = ROOT / "tracer" / "viewer" / "assets"


@pytest.mark.skipif(not (shutil.which("node") and (SRC / "node_modules" / "esbuild").exists()),
                    reason="needs node and viewer-src/node_modules: run scripts/bootstrap-browser.sh")
def test_assets_rebuild_byte_for_byte(tmp_path):
    r = subprocess.run(["node", "build.mjs"], cwd=SRC, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TRACER_VIEWER_OUT": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    for name in ("viewer.js", "viewer.css"):
        assert (tmp_path / name).read_bytes() == (ASSETS / name).read_bytes(), f"{name} is stale: npm run build"
    js = (tmp_path / "viewer.js").read_text()
    assert "</script" not in js.lower() and "<!--" not in js and js.isascii()
