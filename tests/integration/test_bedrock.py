"""Anthropic on Bedrock, traced for real: a CPython client streams an answer in AWS event-stream frames
from the mock (Bedrock mode); tracer logs the pair (Bedrock runtime host), the viewer rebuilds the same
message view as for SSE and prices it with the Bedrock table (issue 16)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from pathlib import Path

from tests.integration.conftest import client_env, mock_record, tracer_cmd
from tracer.mock.app import text_pieces
from tracer.mock.knobs import Knobs
from tracer.viewer.analyze import analyze
from tracer.viewer.logs import read_records

CLIENT = Path(__file__).resolve().parent / "clients" / "bedrock_client.py"
REPLY = "Bedrock says hello, streamed in event-stream frames."


def test_bedrock_stream_traced_and_rebuilt(mock, tmp_path):
    out = tmp_path / "log"
    cmd = tracer_cmd("run", "-o", str(out), "--", "/usr/bin/python3", str(CLIENT), mock.url, str(mock.ca_path),
                     "--header", f"x-mock-text: {REPLY}", "--header", "x-mock-text-bytes: 200000",
                     "--header", "x-mock-delta-size: 700")
    p = subprocess.run(cmd, env=client_env(mock), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    client = json.loads(p.stdout.splitlines()[-1])
    assert client["status"] == 200
    recs, warnings = read_records(next(out.glob("*.jsonl")))
    assert not warnings and len(recs) == 1
    rec = recs[0]
    assert rec["request"]["url"].startswith("https://bedrock-runtime.us-east-1.amazonaws.com/model/")
    assert rec["response"]["headers"]["content-type"] == "application/vnd.amazon.eventstream"
    assert rec["tracer"].get("response_body_encoding") == "base64" and rec["tracer"]["complete"]
    body = base64.b64decode(rec["response"]["body_raw"])
    assert hashlib.sha256(body).hexdigest() == client["sha256"] == mock_record(mock, rec)["response_body"]["sha256"]
    an = analyze(recs)
    c = an.calls[0]
    text = "".join(text_pieces(REPLY, Knobs(text=REPLY, text_bytes=200_000, delta_size=700)))
    assert c.response["content"] == [{"type": "text", "text": text}] and c.rebuild_errors == []
    assert c.model == "anthropic.claude-3-5-sonnet-20241022-v2:0" and c.provider == "aws"
    assert c.output_tokens > 0 and c.ttft_ms is not None and c.cost is not None and c.cost > 0
    page = next(out.glob("*.html")).read_text()
    blob = json.loads(re.search(r'id="c0">(.*?)</script>', page, re.S).group(1))
    assert blob["rebuilt"]["content"][0]["text"] == text
