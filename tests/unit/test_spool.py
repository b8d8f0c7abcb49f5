"""The spool between the ring thread and the parsing process (tracer/capture/spool.py), and the
parsing process itself (tracer/worker.py) fed through it - no kernel needed."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
from array import array

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracer.capture import event as ev
from tracer.capture import spool as sp
from tracer.capture.spool import KIND_CONTROL, KIND_RECORDS, SpoolReader, SpoolWriter, open_spool_file
from tracer.testing.helpers import record as ring_record


def record(payload: bytes, *, conn=0x1000, stream_off=0, direction=ev.DIR_WRITE, pid=4242, ts=1_000_000,
           flags=0, pad=0, etype=None) -> bytes:
    """A ring record as the BPF program writes it: header, payload, then `pad` bytes of class padding."""
    return ring_record(payload, conn=conn, stream_off=stream_off, pid=pid, dir=direction, ts_ns=ts, flags=flags,
                       type=etype or ev.EV_DATA, pad_to=ev.HEADER_SIZE + len(payload) + pad)


def pipe_spool(tmp_path, max_backlog=1 << 30, directory=None):
    fd, where = open_spool_file(directory or tmp_path / "spool")
    r, w = os.pipe()
    return SpoolWriter(fd, w, max_backlog=max_backlog, where=where, stderr=io.StringIO()), SpoolReader(fd, r)


def read_all(reader: SpoolReader, timeout=5.0) -> list:
    out = []
    while reader.wait(timeout):
        for kind, payload in reader.segments():
            out.append((kind, [bytes(r) for r in payload] if kind == KIND_RECORDS else payload))
    return out


def store(writer: SpoolWriter, recs: list[bytes]) -> bool:
    bufs = [memoryview(r)[:ev.record_size(r)] for r in recs]
    return writer.store(array("I", map(len, bufs)), bufs)


def test_record_size_cuts_class_padding():
    assert ev.record_size(record(b"abc", pad=253)) == ev.HEADER_SIZE + 3
    assert ev.record_size(record(b"", etype=ev.EV_CLOSE)) == ev.HEADER_SIZE
    failed = record(b"x" * 100, flags=ev.F_COPY_FAIL)        # len says 100, nothing was copied
    assert ev.record_size(failed) == ev.HEADER_SIZE
    bogus = record(b"abc")[:ev.HEADER_SIZE + 1]               # len claims more than the record holds
    assert ev.record_size(bogus) == ev.HEADER_SIZE + 1


def test_spool_file_is_unnamed_and_private(tmp_path):
    fd, where = open_spool_file(tmp_path / "spool")
    try:
        assert "unnamed" in where
        assert os.listdir(tmp_path / "spool") == []                 # O_TMPFILE: no name to open
        assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700
        assert os.fstat(fd).st_mode & 0o777 == 0o600
    finally:
        os.close(fd)
    os.chmod(tmp_path / "spool", 0o755)                              # not private: refused, memfd instead
    fd, where = open_spool_file(tmp_path / "spool")
    os.close(fd)
    assert where == "memory (memfd)"


def test_records_and_control_in_order(tmp_path):
    w, r = pipe_spool(tmp_path)
    a, b, c = record(b"GET / HTTP/1.1\r\n\r\n", pad=100), record(b"x" * 5000), record(b"", etype=ev.EV_CLOSE)
    assert store(w, [a, b])
    assert w.control({"op": "close_pid", "pid": 7, "reason": "gone"})
    assert store(w, [c])
    w.close()
    got = read_all(r)
    assert got == [(KIND_RECORDS, [a[:ev.record_size(a)], b]),
                   (KIND_CONTROL, {"op": "close_pid", "pid": 7, "reason": "gone"}),
                   (KIND_RECORDS, [c])]
    assert r.eof and r.pos == w.written


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.lists(st.integers(0, 70_000), min_size=1, max_size=40),
                          st.dictionaries(st.sampled_from("abc"), st.integers())), max_size=12),
       st.integers(1, 5))
def test_any_batches_read_back_exactly(tmp_path_factory, batches, notify_every):
    tmp = tmp_path_factory.mktemp("s")
    w, r = pipe_spool(tmp)
    want = []
    for i, b in enumerate(batches):
        if isinstance(b, dict):
            assert w.control(b)
            want.append((KIND_CONTROL, b))
        else:
            recs = [record(os.urandom(1) * n, stream_off=i) for n in b]
            assert store(w, recs)
            want.append((KIND_RECORDS, recs))
        if i % notify_every == 0:
            w.notify()
    w.close()
    assert read_all(r) == want


def ring_stretch(recs: list[bytes], discard=()) -> bytes:
    """Records framed as the kernel's ring buffer frames them: 8-byte header (length, flags, page
    offset), the record, padding to 8 - what MappedRing.drain hands to store_ring."""
    out = b""
    for i, r in enumerate(recs):
        flags = ev.RINGBUF_DISCARD_BIT if i in discard else 0
        out += struct.pack("<II", len(r) | flags, 0x1234) + r + b"\xee" * (-len(r) % 8)
    return out


def test_ring_stretches_read_back_as_records(tmp_path):
    """A stretch of the ring (records with class padding, ring headers, a discarded record, a copy
    failure, a close) comes back as the records cut to their content, in order with the rest."""
    padded = record(b"GET / HTTP/1.1\r\n\r\n", pad=237)
    failed = record(b"x" * 100, flags=ev.F_COPY_FAIL, pad=100)
    close = record(b"", etype=ev.EV_CLOSE)
    big = record(b"b" * 5000, pad=16384 - 5000)
    junk = b"\x99" * 200
    stretch = ring_stretch([padded, junk, failed, close, big], discard={1})
    w, r = pipe_spool(tmp_path)
    assert w.store_ring([memoryview(stretch)[:1000], memoryview(stretch)[1000:]], 5)    # wrapped: two pieces
    assert w.control({"op": "api_url", "url": "https://x"})
    assert store(w, [record(b"after")])
    w.close()
    cut = [bytes(x[:ev.record_size(x)]) for x in (padded, failed, close, big)]
    assert read_all(r) == [(KIND_RECORDS, cut), (KIND_CONTROL, {"op": "api_url", "url": "https://x"}),
                           (KIND_RECORDS, [record(b"after")])]
    assert w.records == 6


@pytest.mark.parametrize("damage", ["busy", "short"])
def test_damaged_ring_stretch_is_an_error(damage):
    """A stretch that does not hold whole committed records is never read past silently."""
    a, b = record(b"one", pad=5), record(b"two")
    stretch = bytearray(ring_stretch([a, b]))
    if damage == "busy":
        struct.pack_into("<I", stretch, 8 + len(a) + (-len(a) % 8), len(b) | ev.RINGBUF_BUSY_BIT)
    else:
        stretch = stretch[:-8]
    with pytest.raises(ValueError, match="spool damaged"):
        sp.ring_records(bytes(stretch), memoryview(bytes(stretch)), 0, len(stretch))


def test_segment_longer_than_a_read(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "READ_CHUNK", 4096)
    w, r = pipe_spool(tmp_path)
    recs = [record(bytes([i]) * 3000) for i in range(5)]       # one 15 KB segment
    assert store(w, recs) and store(w, recs[:1])
    w.close()
    assert read_all(r) == [(KIND_RECORDS, recs), (KIND_RECORDS, recs[:1])]


def test_committed_length_is_what_the_reader_sees(tmp_path):
    """Bytes written but not yet notified are not read (a segment is never read half-written)."""
    w, r = pipe_spool(tmp_path)
    assert store(w, [record(b"one")])
    w.notify()
    assert store(w, [record(b"two")])            # not notified yet
    assert r.wait(1)
    got = [bytes(p[0])[ev.HEADER_SIZE:] for k, p in r.segments()]
    assert got == [b"one"]
    assert not r.wait(0.05)
    w.close()
    assert r.wait(1)
    assert [bytes(p[0])[ev.HEADER_SIZE:] for k, p in r.segments()] == [b"two"]


def test_backlog_limit_refuses_until_consumed(tmp_path):
    w, r = pipe_spool(tmp_path, max_backlog=10_000)
    assert store(w, [record(b"x" * 9000)])
    assert w.written >= 9000
    assert store(w, [record(b"y" * 1000)])       # under the limit when it started: taken
    assert not store(w, [record(b"z")])          # now at the limit: refused, nothing written
    assert w.refused == 1
    w.consumed = w.written                       # the parsing process reported progress
    assert store(w, [record(b"z")])
    assert w.peak_backlog >= 9000


def test_write_error_keeps_the_records_and_says_so_once(tmp_path):
    w, r = pipe_spool(tmp_path)
    good = os.dup(w.fd)
    ro = os.open(tmp_path, os.O_RDONLY)
    os.dup2(ro, w.fd)                                 # writes fail (EBADF / EISDIR)
    assert not store(w, [record(b"a")]) and not store(w, [record(b"b")])
    assert w.written == 0 and w.write_errors == 2
    assert w.stderr.getvalue().count("cannot write the capture spool") == 1
    os.dup2(good, w.fd)
    assert store(w, [record(b"c")])
    assert "works again" in w.stderr.getvalue()
    w.close()
    assert [bytes(p[0])[ev.HEADER_SIZE:] for k, p in read_all(r)] == [b"c"]


def test_consumed_spool_is_punched_out(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "PUNCH_EVERY", 1 << 20)
    w, r = pipe_spool(tmp_path)
    for _ in range(40):
        assert store(w, [record(b"p" * 60_000) for _ in range(8)])
    w.close()
    n = sum(len(p) for k, p in read_all(r))
    assert n == 320
    w.closed = False              # (as the ring thread does while the spool is in use)
    w.consumed = r.pos            # what the parsing process reports
    w.punch()
    blocks = os.fstat(w.fd).st_blocks * 512
    assert blocks < 4 << 20, blocks        # ~19 MB written, all but the last MB or so freed


# -- the parsing process -----------------------------------------------------------------------

def http_records(n_pairs: int, conn=0x5000, pid=4242) -> list[bytes]:
    out, woff, roff, ts = [], 0, 0, 10_000_000
    for i in range(n_pairs):
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]}).encode()
        req = (b"POST /v1/messages HTTP/1.1\r\nHost: api.example\r\nx-api-key: sk-ant-secret-key-123456\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        rbody = b'{"id":"msg_%d","content":[{"type":"text","text":"hello"}]}' % i
        resp = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % len(rbody)) + rbody
        out.append(record(req, conn=conn, pid=pid, stream_off=woff, direction=ev.DIR_WRITE, ts=ts))
        out.append(record(resp, conn=conn, pid=pid, stream_off=roff, direction=ev.DIR_READ, ts=ts + 500_000,
                          pad=64))
        woff += len(req)
        roff += len(resp)
        ts += 1_000_000
    return out


def _cfg(log: str) -> dict:
    return {"log_path": log, "batch_size": 10, "flush_ms": 20, "durable": False, "include_all": True,
            "redact": True, "api_hosts": [], "clock_offset_ns": 1_700_000_000_000_000_000, "priority": "normal"}


def _without_timing(line: bytes) -> dict:
    rec = orjson.loads(line)
    rec.pop("logged_at")
    return rec


def run_worker(tmp_path, recs: list[bytes], controls_after=(), framing="cut",
               controls_before=()) -> tuple[list[bytes], list[dict], int]:
    from tracer.worker import command
    w, reader = pipe_spool(tmp_path)
    for c in controls_before:
        w.control(c)
    for i in range(0, len(recs), 7):
        if framing == "ring":
            assert w.store_ring([ring_stretch(recs[i:i + 7])], len(recs[i:i + 7]))
        else:
            assert store(w, recs[i:i + 7])
    for c in controls_after:
        w.control(c)
    notify_r = reader.notify_fd
    log = tmp_path / "worker.jsonl"
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    rr, rw = os.pipe()
    cmd = [*command(), "--spool-fd", str(w.fd),
           "--notify-fd", str(notify_r), "--reply-fd", str(rw), "--log-fd", str(log_fd),
           "--config", json.dumps(_cfg(str(log)))]
    p = subprocess.Popen(cmd, pass_fds=(w.fd, notify_r, rw, log_fd), cwd="/")
    for fd in (rw, log_fd):
        os.close(fd)
    w.close()
    with os.fdopen(rr, "rb") as f:
        reports = [json.loads(line) for line in f]
    code = p.wait(60)
    return log.read_bytes().splitlines(), reports, code


def inline_log(tmp_path, recs: list[bytes]) -> list[bytes]:
    from tracer.stage import InlineStage
    log = tmp_path / "inline.jsonl"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    stage = InlineStage(_cfg(str(log)), fd)
    for r in recs:
        stage.callback(r)
    stage.finish()
    return log.read_bytes().splitlines()


@pytest.mark.parametrize("framing", ["cut", "ring"])
def test_worker_logs_exactly_what_inline_parsing_logs(tmp_path, framing):
    recs = http_records(50)
    lines, reports, code = run_worker(tmp_path, recs, framing=framing)
    assert code == 0, reports
    final = [m for m in reports if m["t"] == "final"]
    assert len(final) == 1 and final[0]["stats"]["pairs_logged"] == 50
    assert final[0]["stats"]["records_written"] == 50
    assert reports[0]["t"] == "ready"
    inline = inline_log(tmp_path, recs)
    assert [_without_timing(l) for l in lines] == [_without_timing(l) for l in inline]
    first = orjson.loads(lines[0])
    assert first["request"]["headers"]["x-api-key"] != "sk-ant-secret-key-123456"   # redacted there too
    assert first["tracer"]["complete"] is True


def test_worker_applies_controls_in_stream_order(tmp_path):
    recs = http_records(3)[:-1]                  # the last response never comes
    lines, reports, code = run_worker(tmp_path, recs, controls_after=[
        {"op": "close_pid", "pid": 4242, "reason": "target exited", "ts": 12_000_000}])
    assert code == 0
    last = orjson.loads(lines[-1])
    assert last["tracer"]["complete"] is False
    assert "target exited" in last["note"]


def test_worker_failure_is_reported(tmp_path):
    lines, reports, code = run_worker(tmp_path, http_records(1), controls_after=[{"op": "no-such-op"}])
    assert code == 70
    err = [m for m in reports if m["t"] == "error"]
    assert err and "unknown spool instruction" in err[0]["error"]


def test_records_name_their_process_from_the_sessions_table(tmp_path):
    """The session's process table reaches the parsing process as "proc" instructions (tracer/stage.py
    process_message): records carry tracer.process - with the program that ran at their first byte
    (an exec in between keeps the earlier one) - and the summary's per-process pair counts come back."""
    from tracer.processes.table import Image, Proc
    from tracer.stage import process_message
    parent = Proc(100, argv=["bash"], exe="/usr/bin/bash", comm="bash")
    child = Proc(4242, ppid=100, argv=["python3", "agent.py"], exe="/usr/bin/python3", comm="python3",
                 earlier=[Image(("sh", "-c", "old"), "/usr/bin/sh", "sh", 1)])     # exec'd at ts 1 ns
    recs = http_records(3)
    lines, reports, code = run_worker(tmp_path, recs, controls_before=[process_message(parent),
                                                                       process_message(child)])
    assert code == 0, reports
    procs = [orjson.loads(l)["tracer"]["process"] for l in lines]
    assert len(procs) == 3
    for info in procs:
        assert info["pid"] == 4242 and info["ppid"] == 100 and info["exe"] == "/usr/bin/python3"
        assert info["command"] == "python3 agent.py"
        assert [c["pid"] for c in info["chain"]] == [100, 4242] and info["chain_text"] == "bash → python3 agent.py"
    final = [m for m in reports if m["t"] == "final"][0]["stats"]
    assert final["pairs_by_pid"] == {"4242": 3} and final["thread_failures"] == []


def test_a_view_handed_to_the_parsing_process_observes_before_add_client_returns(tmp_path):
    """run/attach --follow start their view before the traffic: once the session's add_client returns,
    the feed in the parsing process already observes the parsers - a pair parsed right after is shown
    from its start (before, the view could join after the answer's head and show nothing live)."""
    import socket

    from tracer.live import wire
    from tracer.stage import SpoolStage
    log = tmp_path / "stage.jsonl"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    stage = SpoolStage({**_cfg(str(log)), "priority": "idle"}, fd, max_backlog=64 << 20, spool_dir=tmp_path)
    os.close(fd)
    views = []
    try:
        for _ in range(2):
            a, b = socket.socketpair()
            views.append(b)
            stage.feed.add_client(a)
            assert stage.viewers, "the feed was not observing the parsers when add_client returned"
        for b in views:
            b.settimeout(10)
            frames = list(wire.Decoder().feed(b.recv(4096)))
            assert frames[0][0]["t"] == "hello"
    finally:
        stage.finish()
        for b in views:
            b.close()
    assert stage.feed.clients_served == 2
