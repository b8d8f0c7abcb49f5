"""`tracer attach` to a Claude Code (native, Bun) process that is already running and talking.

The first Messages call is held by the mock for a few seconds (ttfb knob), so the probes usually go in
while it is in flight; that call is then skipped (counted) or, if Claude was slower to start, logged
whole. The call after the tool round trip is always logged, byte for byte.
"""

from __future__ import annotations

import subprocess
import time

from tests.integration.conftest import assert_pair_matches, read_log, tracer_cmd
from tests.integration.test_claude_code import _claude_env
from tracer.testing.releases import fetch_npm_release


def test_attach_to_running_claude(mock, tmp_path):
    claude = fetch_npm_release("@anthropic-ai/claude-code-linux-x64", "2.1.332")
    home = tmp_path / "home"
    home.mkdir()
    mock.set_knobs(ttfb_ms=3000)
    try:
        t0 = time.time()
        target = subprocess.Popen([str(claude), "-p", "say hi", "--allowedTools", "Bash"],
                                  env=_claude_env(mock, home), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        tr = subprocess.Popen(tracer_cmd("attach", "--pid", str(target.pid), "-o", str(tmp_path / "log"),
                                         "--quiet", "--no-html"), stderr=subprocess.PIPE, text=True)
        out, err_c = target.communicate(timeout=240)
        err = tr.stderr.read()
        assert tr.wait(timeout=60) == 0, err
    finally:
        mock.set_knobs(ttfb_ms=0)
    assert target.returncode == 0, err_c[-2000:]
    assert "The command printed: hi" in out
    recs = read_log(tmp_path / "log")
    served = [r for r in mock.records() if r["arrival"] >= t0 and r["path"] == "/v1/messages"]
    logged = [r["response"]["headers"]["x-mock-record-id"] for r in recs]
    # never a garbled pair; the calls made after the attach are there, in order
    assert logged == [str(r["id"]) for r in served][-len(logged):] and logged, (logged, err)
    for r in recs:
        assert_pair_matches(mock, r)
        assert r["tracer"]["comm"] == "HTTP Client" and r["tracer"]["pid"] == target.pid
    last_user = recs[-1]["request"]["body"]["messages"][-1]
    assert any(b.get("type") == "tool_result" for b in last_user["content"] if isinstance(b, dict))
    if len(logged) < len(served):
        assert "skipped to resynchronise" in err, err
