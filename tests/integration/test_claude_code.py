"""Real Claude Code under `tracer run`, against the mock server, with the Bash tool round trip.

Native (Bun) releases: the stripped BoringSSL is found by error-site fingerprinting
(tracer.probes.boringssl) on the releases of tests/data/locate_known.json; the last npm JavaScript
release (2.0.x, cli.js) runs under /usr/bin/node (static OpenSSL, symbols). Releases are downloaded
once into the cache (tracer.testing.releases).
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from tests.integration.conftest import assert_pair_matches, run_traced
from tests.known_releases import versions
from tracer.probes.locate import locate
from tracer.testing.helpers import claude_env as _claude_env
from tracer.testing.releases import claude_code_package, fetch_npm_release

PACKAGE = claude_code_package()          # this machine's native build (linux-x64 or linux-arm64)
NATIVE = versions(PACKAGE)
JS_RELEASE = "2.0.77"
NODE = shutil.which("node") or "/usr/bin/node"

CASES = [pytest.param("native", v, id="native-" + v) for v in NATIVE] + [
    pytest.param("node", JS_RELEASE, id="cli.js-" + JS_RELEASE)]


def _sse_blocks(raw: str) -> list[dict]:
    out = []
    for line in raw.splitlines():
        if line.startswith("data:"):
            ev = json.loads(line[5:])
            if ev.get("type") == "content_block_start":
                out.append(ev["content_block"])
    return out


@pytest.mark.parametrize("kind,version", CASES)
def test_claude_say_hi_traced(mock, tmp_path, kind, version):
    if kind == "native":
        prog = fetch_npm_release(PACKAGE, version)
        cmd = [str(prog)]
    else:
        if not os.path.exists(NODE):
            pytest.skip("node not installed")
        cmd = [NODE, str(fetch_npm_release("@anthropic-ai/claude-code", version))]
    home = tmp_path / "home"
    home.mkdir()
    t0 = time.time()
    p, recs = run_traced(cmd + ["-p", "say hi", "--allowedTools", "Bash"], tmp_path / "log",
                         env=_claude_env(mock, home), timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "The command printed: hi" in p.stdout
    assert "losses: none" in p.stderr, p.stderr[-3000:]
    # what was probed: BoringSSL found by fingerprint in Bun, OpenSSL symbols in node
    located = locate(cmd[0])
    assert located.library == ("boringssl" if kind == "native" else "openssl")

    # every Messages API exchange the mock served during this run is in the log, byte for byte
    # (by arrival: an earlier test's cut-off stream may finish recording while this one runs)
    served = [r for r in mock.records() if r["arrival"] >= t0 and r["path"] == "/v1/messages"]
    assert len(served) >= 2
    assert sorted(str(r["id"]) for r in served) == \
        sorted(r["response"]["headers"]["x-mock-record-id"] for r in recs)
    for r in recs:
        assert_pair_matches(mock, r)
        assert r["tracer"]["protocol"] == "http/1.1"
        if kind == "native":
            assert r["tracer"]["comm"] == "HTTP Client"   # Bun's TLS thread

    # the tool round trip: a tool_use answer, then a request carrying its tool_result
    tool_uses = [b for r in recs if "body_raw" in r["response"]
                 for b in _sse_blocks(r["response"]["body_raw"]) if b["type"] == "tool_use"]
    assert tool_uses and tool_uses[0]["name"] == "Bash"
    results = [b for r in recs for m in r["request"]["body"]["messages"] if m["role"] == "user"
               and isinstance(m["content"], list) for b in m["content"] if b.get("type") == "tool_result"]
    assert tool_uses[0]["id"] in {b["tool_use_id"] for b in results}
    final = recs[-1]["response"]["body_raw"]
    assert "The command printed: hi" in "".join(
        json.loads(l[5:]).get("delta", {}).get("text", "") for l in final.splitlines() if l.startswith("data:"))
