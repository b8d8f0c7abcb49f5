"""Batched JSONL writer: whole lines, batching, flush on close, disk-full rollback, huge bodies."""

from __future__ import annotations

import errno
import os
import stat
import time

import orjson
import pytest

from tracer.protocols.base import Body
from tracer.sinks import jsonl
from tracer.sinks.jsonl import JsonlWriter, make_log_dir
from tracer.sinks.record import StreamedText


def test_batches_and_close_flushes(tmp_path):
    w = JsonlWriter(tmp_path / "a.jsonl", batch_size=10, flush_ms=10_000)
    for i in range(25):
        w.submit({"i": i})
    w.flush()
    w.close()
    lines = (tmp_path / "a.jsonl").read_bytes().splitlines()
    assert [orjson.loads(l)["i"] for l in lines] == list(range(25))
    assert w.stats.records == 25 and w.stats.batches >= 3
    assert stat.S_IMODE(os.stat(tmp_path / "a.jsonl").st_mode) == 0o600


def test_time_based_flush(tmp_path):
    w = JsonlWriter(tmp_path / "t.jsonl", batch_size=1000, flush_ms=50)
    w.submit({"x": 1})
    deadline = time.monotonic() + 5
    while not (tmp_path / "t.jsonl").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (tmp_path / "t.jsonl").read_bytes() == b'{"x":1}\n'
    w.close()


def test_refuses_planted_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "log.jsonl").symlink_to(target)
    with pytest.raises(OSError):
        JsonlWriter(tmp_path / "log.jsonl")
    assert target.read_text() == "keep"


def test_log_dir_mode(tmp_path):
    d = make_log_dir(tmp_path / "logs")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_write_failure_rolls_back_and_resumes(tmp_path, monkeypatch):
    w = JsonlWriter(tmp_path / "f.jsonl", batch_size=2, flush_ms=10_000)
    w.submit({"ok": 1})
    w.submit({"ok": 2})
    w.flush()
    real_write = os.write
    calls = {"n": 0}

    def failing(fd, data):
        if fd == w._fd and calls["n"] == 0:
            calls["n"] += 1
            real_write(fd, bytes(data)[:7])     # a partial line reaches the disk, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(jsonl.os, "write", failing)
    w.submit({"lost": 1})
    w.submit({"lost": 2})
    w.flush()
    w.submit({"ok": 3})
    w.submit({"ok": 4})
    w.flush()
    w.close()
    lines = [orjson.loads(l) for l in (tmp_path / "f.jsonl").read_bytes().splitlines()]
    assert lines == [{"ok": 1}, {"ok": 2}, {"ok": 3}, {"ok": 4}]
    assert w.stats.lost_records == 2 and w.stats.write_errors == 1


def test_streamed_huge_body_is_one_valid_line(tmp_path):
    body = Body(spill_at=1 << 16)
    text = ("é data: {\"x\": \"a\\b\"}\n" * 20000).encode()
    body.append(text)
    assert body.spilled
    w = JsonlWriter(tmp_path / "s.jsonl")
    w.submit({"request": {"body": None}, "response": {"status_code": 200, "body_raw": StreamedText(body)},
              "after": [1, 2]})
    w.submit({"next": True})
    w.close()
    lines = (tmp_path / "s.jsonl").read_bytes().splitlines()
    assert len(lines) == 2
    rec = orjson.loads(lines[0])
    assert rec["response"]["body_raw"].encode() == text and rec["after"] == [1, 2]
    assert orjson.loads(lines[1]) == {"next": True}


def test_bounded_queue_makes_the_producer_wait(tmp_path, monkeypatch):
    """max_queue: submit() waits while that many records are queued (the parsing process parks
    there instead of growing a queue while it catches up); nothing is lost or reordered."""
    import threading
    import time
    gate = threading.Event()
    real = JsonlWriter._write_batch

    def slow(self, batch):
        gate.wait(5)
        return real(self, batch)
    monkeypatch.setattr(JsonlWriter, "_write_batch", slow)
    w = JsonlWriter(tmp_path / "q.jsonl", batch_size=5, flush_ms=10, max_queue=10)
    done = threading.Event()

    def produce():
        for i in range(40):
            w.submit({"i": i})
        done.set()
    threading.Thread(target=produce, daemon=True).start()
    time.sleep(0.3)
    assert not done.is_set() and len(w._q) <= 10      # parked: the writer is stuck
    gate.set()
    assert done.wait(10)
    w.close()
    lines = (tmp_path / "q.jsonl").read_bytes().splitlines()
    assert [orjson.loads(l)["i"] for l in lines] == list(range(40))


# ------------------------------------------------------------ records that cannot be serialised
def _record(body: bytes, resp_body: bytes = b'{"ok":true}', n: int = 0):
    from tracer.protocols.base import ConnInfo, Exchange, Message
    from tracer.sinks.record import Clock, build_record
    req = Message(ts_ns=1, method="POST", target="/v1/messages", authority="api.anthropic.com",
                  headers=[("content-type", "application/json")], complete=True)
    req.body.append(body)
    resp = Message(ts_ns=2, status=200, headers=[("content-type", "application/json")], complete=True)
    resp.body.append(resp_body)
    ex = Exchange(ConnInfo(1, 1, "t", f"1:0x1:{n}"), req, resp)
    return build_record(ex, Clock())


NESTED = b"[" * 300 + b"]" * 300     # orjson.loads reads it (up to 1024 levels), orjson.dumps cannot


def test_nested_json_falls_back_to_raw_text_and_the_batch_is_written(tmp_path):
    w = JsonlWriter(tmp_path / "n.jsonl", batch_size=10)
    w.submit(_record(b'{"n":1}', n=1))
    w.submit(_record(b'{"deep":' + NESTED + b"}", resp_body=NESTED, n=2))
    w.submit(_record(b'{"n":3}', n=3))
    w.close()
    lines = [orjson.loads(l) for l in (tmp_path / "n.jsonl").read_bytes().splitlines()]
    assert [l["tracer"]["conn_id"] for l in lines] == ["1:0x1:1", "1:0x1:2", "1:0x1:3"]
    assert lines[0]["request"]["body"] == {"n": 1} and lines[2]["request"]["body"] == {"n": 3}
    mid = lines[1]
    assert mid["request"]["body"] == '{"deep":' + NESTED.decode() + "}"        # the raw text, exact
    assert mid["response"]["body_raw"] == NESTED.decode() and "body" not in mid["response"]
    assert mid["tracer"]["serialization_fallback"] == "raw_body"
    assert "Recursion" in mid["tracer"]["serialization_error"]
    assert "raw text" in mid["note"]
    assert w.stats.records == 3 and w.stats.raw_body_records == 1 and w.stats.stub_records == 0
    assert w.stats.lost_records == 0


def test_redacted_record_never_falls_back_to_its_raw_secrets(tmp_path):
    """A body that redaction rewrote (not a model API call) cannot fall back to its raw text: the raw
    bytes still hold the secret. It becomes a stub; a model API call keeps the raw-text fallback."""
    from tracer.protocols.base import ConnInfo, Exchange, Message
    from tracer.sinks.record import Clock, build_record
    req = Message(ts_ns=1, method="POST", target="/oauth/token", authority="auth.example",
                  headers=[("content-type", "application/json")], complete=True)
    req.body.append(b'{"refresh_token":"rt-SECRET-0123456789","deep":' + NESTED + b"}")
    resp = Message(ts_ns=2, status=200, headers=[("content-type", "application/json")], complete=True)
    resp.body.append(b'{"access_token":"at-SECRET-0123456789"}')
    rec = build_record(Exchange(ConnInfo(1, 1, "t", "1:0x1:9"), req, resp), Clock(), redact=True)
    w = JsonlWriter(tmp_path / "r.jsonl")
    w.submit(rec)
    w.close()
    raw = (tmp_path / "r.jsonl").read_bytes()
    assert b"SECRET" not in raw
    (line,) = [orjson.loads(l) for l in raw.splitlines()]
    assert line["tracer"]["serialization_fallback"] == "stub"
    assert w.stats.stub_records == 1 and w.stats.raw_body_records == 0


def test_unserialisable_without_a_raw_body_becomes_a_stub(tmp_path):
    w = JsonlWriter(tmp_path / "s.jsonl", batch_size=10)
    rec = _record(b'{"n":2}', n=2)
    rec["tracer"]["weird"] = object()          # a bug elsewhere: nothing to fall back to
    w.submit(_record(b'{"n":1}', n=1))
    w.submit(rec)
    w.submit({"request": {"url": "\ud800"}, "big": 1 << 70})   # a lone surrogate, a 71-bit integer
    w.submit(_record(b'{"n":3}', n=3))
    w.close()
    lines = [orjson.loads(l) for l in (tmp_path / "s.jsonl").read_bytes().splitlines()]
    assert len(lines) == 4
    assert lines[1]["tracer"]["serialization_fallback"] == "stub"
    assert lines[1]["tracer"]["conn_id"] == "1:0x1:2" and lines[1]["request"]["url"].endswith("/v1/messages")
    assert lines[1]["request"]["body"] is None and lines[1]["tracer"]["complete"] is False
    assert lines[2]["tracer"]["serialization_fallback"] == "stub"
    assert lines[3]["request"]["body"] == {"n": 3}
    assert w.stats.stub_records == 2 and w.stats.records == 4


def test_streamed_record_with_a_nested_request_body(tmp_path):
    body = Body(spill_at=1 << 16)
    body.append(b"data: x\n\n" * 10000)
    rec = _record(b"[" + NESTED + b"]")
    rec["response"].pop("body")
    rec["response"]["body_raw"] = StreamedText(body)
    w = JsonlWriter(tmp_path / "b.jsonl")
    w.submit(rec)
    w.close()
    (line,) = (tmp_path / "b.jsonl").read_bytes().splitlines()
    got = orjson.loads(line)
    assert got["request"]["body"] == "[" + NESTED.decode() + "]"
    assert got["response"]["body_raw"] == "data: x\n\n" * 10000


def test_writer_thread_death_is_loud_and_counted(tmp_path, monkeypatch, capsys):
    from tracer.threads import ThreadFailures
    failures = ThreadFailures()
    w = JsonlWriter(tmp_path / "d.jsonl", batch_size=1, failures=failures)

    def boom(batch):
        raise MemoryError("simulated")

    monkeypatch.setattr(w, "_write_batch", boom)
    w.submit({"a": 1})
    deadline = time.monotonic() + 5
    while not w.dead and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.dead and failures
    w.submit({"b": 2})
    w.flush(timeout=5)          # returns at once: nothing will ever write these
    w.close()
    assert w.stats.lost_records == 2
    (f,) = failures.as_list()
    assert f["thread"] == "tracer-jsonl" and "MemoryError: simulated" in f["error"]
    assert "INTERNAL ERROR: thread tracer-jsonl died" in capsys.readouterr().err
