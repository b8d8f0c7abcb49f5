"""A Python program on the Claude Agent SDK under `tracer run`: the SDK starts the native Claude Code
it ships as a child process, which makes the Messages API calls (and starts a shell for the Bash
tool). Every call the spawned Claude Code makes is logged, under its own pid and parent chain.

The SDK comes from PyPI into a virtualenv of its own (tracer.testing.releases.pypi_venv, cached next
to the npm releases): its dependencies (mcp, httpx, pydantic, ...) never meet tracer's pins.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.integration.conftest import CLIENTS, assert_pair_matches, run_traced
from tracer.testing.helpers import claude_env as _claude_env
from tracer.testing.releases import ReleaseError, pypi_venv

SDK = "claude-agent-sdk==0.2.189"      # bundles Claude Code 2.1.332


@pytest.fixture(scope="module")
def sdk_python():
    try:
        return pypi_venv(SDK)
    except ReleaseError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot install {SDK} from PyPI: {e}")


def test_agent_sdk_program_all_calls_logged(mock, tmp_path, sdk_python):
    home = tmp_path / "home"
    home.mkdir()
    t0 = time.time()
    p, recs = run_traced([str(sdk_python), str(CLIENTS / "agent_sdk.py"), "say hi"], tmp_path / "log",
                         env=_claude_env(mock, home), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "result: The command printed: hi" in p.stdout, p.stdout[-2000:]
    served = [r for r in mock.records() if r["arrival"] >= t0 and r["path"] == "/v1/messages"]
    assert len(served) >= 2                              # the tool_use turn and the final answer
    assert sorted(str(r["id"]) for r in served) == \
        sorted(r["response"]["headers"]["x-mock-record-id"] for r in recs)
    for r in recs:
        assert_pair_matches(mock, r)
        proc = r["tracer"]["process"]
        assert proc["exe"].endswith("/claude_agent_sdk/_bundled/claude"), proc
        chain = proc["chain"]
        assert len(chain) == 2 and "agent_sdk.py say hi" in chain[0]["command"]
        assert chain[1]["pid"] == r["tracer"]["pid"]
        assert proc["chain_text"].startswith("python agent_sdk.py say hi → claude ")
    # the tool call ran in a shell Claude Code started: followed too, and in the summary
    assert "losses: none" in p.stderr, p.stderr
    assert "boringssl in " in p.stderr and "/bin/bash" in p.stderr
    results = [b for r in recs for m in r["request"]["body"]["messages"] if m["role"] == "user"
               and isinstance(m["content"], list) for b in m["content"] if b.get("type") == "tool_result"]
    assert results and "hi" in json.dumps(results)
