"""Our logs keep opening in claude-trace's own viewer: a real traced Claude Code session (tool round
trip) is turned into HTML by claude-trace (npm @mariozechner/claude-trace) and read in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import bpf_unavailable_reason
from tests.integration.conftest import run_traced
from tracer.probes.kheaders import cache_root
from tracer.testing.releases import fetch_npm_release

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


@pytest.mark.skipif(bpf_unavailable_reason() is not None, reason=bpf_unavailable_reason() or "")
@pytest.mark.skipif(not (HARNESS / "node_modules" / "playwright-core").exists() or not shutil.which("chromium"),
                    reason="browser harness not installed (scripts/bootstrap-browser.sh)")
def test_claude_trace_viewer_reads_our_log(tmp_path):
    from tracer.mock import MockServer
    claude = fetch_npm_release("@anthropic-ai/claude-code-linux-x64", "2.1.332")
    home = tmp_path / "home"
    home.mkdir()
    with MockServer() as mock:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
        env.update(HOME=str(home), ANTHROPIC_BASE_URL=mock.url, ANTHROPIC_API_KEY="sk-test",
                   NODE_EXTRA_CA_CERTS=str(mock.ca_path), DISABLE_TELEMETRY="1",
                   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1")
        p, recs = run_traced([str(claude), "-p", "say hi", "--allowedTools", "Bash"], tmp_path / "log",
                             env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(recs) >= 2
    log = next((tmp_path / "log").glob("*.jsonl"))
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
