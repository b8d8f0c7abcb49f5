"""A real Claude Code session traced once per test run (native 2.1.332 against the mock API, with the
Bash tool round trip), for the browser tests that need a genuine log."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import bpf_unavailable_reason


@pytest.fixture(scope="session")
def traced_claude_log(tmp_path_factory) -> Path:
    reason = bpf_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from tests.integration.conftest import run_traced
    from tests.integration.test_claude_code import _claude_env
    from tracer.mock import MockServer
    from tracer.testing.releases import fetch_npm_release

    claude = fetch_npm_release("@anthropic-ai/claude-code-linux-x64", "2.1.332")
    tmp = tmp_path_factory.mktemp("claude-log")
    home = tmp / "home"
    home.mkdir()
    with MockServer() as mock:
        p, recs = run_traced([str(claude), "-p", "say hi", "--allowedTools", "Bash"], tmp / "log",
                             env=_claude_env(mock, home), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(recs) >= 2
    return next((tmp / "log").glob("*.jsonl"))
