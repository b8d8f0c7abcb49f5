"""Our logs keep opening in claude-trace's own viewer: a real traced Claude Code session (tool round
trip) is turned into HTML by claude-trace (npm @mariozechner/claude-trace) and read in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tracer.paths import cache_root

HARNESS = Path(__file__).parent / "harness"
CLAUDE_TRACE = "@mariozechner/claude-trace@1.0.9"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _claude_trace_cli() -> Path:
    d = cache_root() / "claude-trace-1.0.9"
    cli = d / "node_modules" / "@mariozechner" / "claude-trace" / "dist" / "cli.js"
    if not cli.exists():
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(d), CLAUDE_TRACE],
                       check=True, capture_output=True, timeout=600)
    return cli


@pytest.mark.skipif(not (HARNESS / "node_modules" / "playwright-core").exists() or not shutil.which("chromium"),
                    reason="browser harness not installed (scripts/bootstrap-browser.sh)")
def test_claude_trace_viewer_reads_our_log(tmp_path, traced_claude_log):
    log = traced_claude_log
    out_html = tmp_path / "claude-trace.html"
    g = subprocess.run(["node", str(_claude_trace_cli()), "--generate-html", str(log), str(out_html), "--no-open"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert g.returncode == 0 and out_html.exists(), g.stdout + g.stderr
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "claude-trace-viewer.png"
    r = subprocess.run(["node", str(HARNESS / "text_probe.mjs"), str(out_html), "--screenshot", str(shot)],
                       capture_output=True, text=True, timeout=300, cwd=HARNESS)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert not seen["pageErrors"], seen["pageErrors"]
    text = seen["text"]
    assert "say hi" in text
    assert "echo hi" in text                    # the Bash tool call
    assert "The command printed: hi" in text    # the final answer, after the tool result
