"""Batched JSONL writer: whole lines, batching, flush on close, disk-full rollback, huge bodies."""

from __future__ import annotations

import errno
import os
import stat

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
    import time
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
