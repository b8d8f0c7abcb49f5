"""`make demo`: the embedded mock Anthropic API over HTTPS, real clients (Node fetch, CPython, curl)
each run under `tracer run`, and what the tracer logged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from tracer.errors import TracerError
from tracer.invoker import as_user, invoking_user
from tracer.mock import MockServer
from tracer.userfiles import make_user_dir, write_user_file

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "tests" / "integration" / "clients"


def _out_dir(user) -> Path:
    """TRACER_DEMO_DIR, else .claude-trace-demo in the checkout - or, under sudo (the clients and the
    logs are the invoking user's), a fresh directory of theirs in /tmp. Created as that user."""
    if os.environ.get("TRACER_DEMO_DIR"):
        d = Path(os.environ["TRACER_DEMO_DIR"])
    elif user.acting_for_other:
        with as_user(user):
            return Path(tempfile.mkdtemp(prefix="tracer-demo-"))
    else:
        d = ROOT / ".claude-trace-demo"
    return make_user_dir(d, user)


def main() -> int:
    try:
        user = invoking_user()
        out_dir = _out_dir(user)
    except TracerError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    with MockServer(knobs={"delay_ms": 5}) as srv:
        # the clients run as the invoking user: give them the CA where they can read it
        ca = write_user_file(out_dir / "mock-ca.pem", srv.ca_path.read_bytes(), user=user, mode=0o644)
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=str(ca), ANTHROPIC_BASE_URL=srv.url)
        body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                           "messages": [{"role": "user", "content": "hello from curl"}]})
        clients = [
            ("node fetch", [shutil.which("node") or "node", str(CLIENTS / "node_client.mjs"), srv.url,
                            "--stream", "--json"]),
            ("cpython", ["/usr/bin/python3", str(CLIENTS / "py_client.py"), srv.url, str(ca),
                         "--stream", "--json", "--gzip"]),
            ("curl", ["curl", "-sS", "--http1.1", "--cacert", str(ca), f"{srv.url}/v1/messages",
                      "-H", "content-type: application/json", "-H", "x-api-key: sk-ant-demo-key-1234567890",
                      "-d", body, "-o", "/dev/null"]),
        ]
        print(f"mock Anthropic API: {srv.url} (cert {ca})\n", flush=True)
        failed = 0
        for name, cmd in clients:
            print(f"== {name}: tracer run -- {' '.join(Path(cmd[0]).name if i == 0 else a for i, a in enumerate(cmd[:3]))} ...",
                  flush=True)
            before = set(out_dir.glob("*.jsonl"))
            p = subprocess.run([sys.executable, "-m", "tracer.cli", "run", "--quiet", "-o", str(out_dir),
                                "--", *cmd], env=env, capture_output=True, text=True, timeout=300)
            sys.stderr.write(p.stderr)
            new = sorted(set(out_dir.glob("*.jsonl")) - before)
            if p.returncode != 0 or not new:
                print(f"   FAILED (exit {p.returncode})")
                failed += 1
                continue
            with as_user(user):
                lines = new[-1].read_bytes().splitlines()
            for line in lines:
                r = orjson.loads(line)
                resp = r["response"] or {}
                kind = "SSE" if "body_raw" in resp else "JSON"
                t = r["tracer"]
                print(f"   {r['request']['method']} {r['request']['url']} -> {resp.get('status_code')} {kind}, "
                      f"{t.get('response_body_bytes', 0)} B, ttfb {t.get('ttfb_ms')} ms, "
                      f"{'complete' if t['complete'] else 'INCOMPLETE'}")
            print()
        print(f"logs in {out_dir}/  (open the .html files in a browser)")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
