"""`tracer run` with the viewer on, after a 100 MB answer streamed in 1 KB text deltas (the shape Claude
streams): the run ends promptly, the logged body and the answer rebuilt from the log are byte-exact, and
the page shows the answer's head with a marker naming the log line (issue 11, items 1 and 2).

Default options, the 8 MB ring included: the ring thread only moves bytes to the spool (tracer/stage.py),
so it keeps up with one loopback stream; "losses: none" covers ring drops too."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time

from tests.integration.conftest import client_env, py_client, tracer_cmd
from tracer.mock.app import text_pieces
from tracer.mock.knobs import Knobs
from tracer.protocols.sse import reconstruct
from tracer.viewer.logs import BigString, iter_lines

REPLY = "Here is the long answer you asked for."
SIZE = 100_000_000


def test_100mb_answer_in_1kb_deltas_viewer_on(mock, tmp_path):
    out = tmp_path / "log"
    cmd = tracer_cmd("run", "-o", str(out), "--", *py_client(
        mock, "--stream", "--header", f"x-mock-text-bytes: {SIZE}", "--header", "x-mock-delta-size: 1024",
        "--header", f"x-mock-text: {REPLY}"))
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=client_env(mock), capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    assert "viewer failed" not in p.stderr and "losses: none" in p.stderr, p.stderr[-3000:]
    client = json.loads(p.stdout.splitlines()[-1])
    log = next(out.glob("*.jsonl"))
    page = log.with_suffix(".html")
    assert f"html: {page}" in p.stderr

    # the log: one whole line, body byte-exact; the answer rebuilt from it equals what the mock generated
    [ln] = list(iter_lines(log))
    raw = ln.record["response"]["body_raw"]
    assert isinstance(raw, BigString)
    body_sha, text_sha = hashlib.sha256(), hashlib.sha256()

    def chunks():
        for s in raw.pieces():
            b = s.encode()
            body_sha.update(b)
            yield b
    r = reconstruct(chunks(), max_field_chars=1000,
                    on_text=lambda i, f, piece: text_sha.update(piece.encode()))
    assert body_sha.hexdigest() == client["sha256"]
    want = hashlib.sha256()
    for piece in text_pieces(REPLY, Knobs(text=REPLY, text_bytes=SIZE, delta_size=1024)):
        want.update(piece.encode())
    assert text_sha.hexdigest() == want.hexdigest() and r.complete and not r.errors
    assert r.truncated == [{"index": 0, "field": "text", "kept": 1000, "chars": SIZE}]

    # the page: small, the answer's head, the cut said with the line
    html = page.read_text()
    assert page.stat().st_size < 5_000_000
    blob = json.loads(re.search(r'id="c0">(.*?)</script>', html, re.S).group(1))
    text = blob["rebuilt"]["content"][0]["text"]
    assert text.startswith(REPLY) and "more, not in this page — see the log, line 1]" in text
    assert {c["path"] for c in blob["truncated"]} >= {"response.body_raw", "rebuilt.content.0.text"}
    assert took < 300, f"tracer run took {took:.0f} s"    # a hang guard; bench/viewer_build.py measures
