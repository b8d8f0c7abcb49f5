"""The live view without a kernel: parser progress hooks, the feed, the log follower, the model and the
renderers (what reaches the terminal)."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import socket
import stat
import subprocess
import sys
import time

import orjson
import pytest

from tests.unit.test_http2 import big_conversation
from tracer.capture import event as ev
from tracer.capture.pipeline import Capture
from tracer.live import wire
from tracer.live import feed as feed_mod
from tracer.live.feed import Listener, LiveFeed, live_path
from tracer.live.follow import Follower, UnsafeLog, connect_feed, open_log
from tracer.live.model import Model, TextTail
from tracer.live.render import LinesRenderer, LiveRenderer, make_console
from tracer.protocols.base import Direction
from tracer.protocols.http1 import Http1Connection
from tracer.protocols.http2 import Http2Connection
from tracer.sinks.record import Clock, Filter, build_record
from tracer.testing.helpers import CONN, chunked, record, tracer_cmd, wait_for
from tracer.viewer.analyze import analyze
from tracer.viewer.synth import claude_code_session

HOSTILE = ("\x1b]2;pwned-title\x07\x1b[5;45mBLINK\x1b[0m\x1b[2J\x9b2J\x1b[1A[bold red]markup[/bold red]"
           "\u202eevil\r\x08")
RAW_SEQUENCES = ("\x1b]2;", "\x1b[5;45m", "\x1b[2J", "\x9b", "\x07", "\u202e", "\r\x08")


# ------------------------------------------------------------------------------ wire-format pieces

def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def answer_events(text_pieces, tool=None, usage_out=7) -> list[bytes]:
    evs = [sse("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
        "usage": {"input_tokens": 11, "output_tokens": 1, "cache_read_input_tokens": 5,
                  "cache_creation_input_tokens": 3}}}),
        sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}})]
    for p in text_pieces:
        evs.append(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": p}}))
    evs.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if tool is not None:
        name, inp = tool
        evs.append(sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": name, "input": {}}}))
        raw = json.dumps(inp)
        for i in range(0, len(raw), 7):
            evs.append(sse("content_block_delta", {"type": "content_block_delta", "index": 1,
                                                   "delta": {"type": "input_json_delta", "partial_json": raw[i:i + 7]}}))
        evs.append(sse("content_block_stop", {"type": "content_block_stop", "index": 1}))
    evs += [sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                  "usage": {"output_tokens": usage_out}}),
            sse("message_stop", {"type": "message_stop"})]
    return evs


def request_bytes(body: dict, host: str = "api.anthropic.com") -> bytes:
    b = orjson.dumps(body)
    return (b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (host.encode(), len(b))) + b


def response_head(gzip_: bool = False) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            + (b"Content-Encoding: gzip\r\n" if gzip_ else b"") + b"\r\n")


BODY = {"model": "claude-sonnet-4-5", "stream": True, "max_tokens": 64,
        "messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                     {"role": "user", "content": [{"type": "text", "text": "say hi " + HOSTILE}]}]}


class Recorder:
    """A Progress observer that writes down what it is told."""

    def __init__(self):
        self.calls = []

    def request_done(self, conn, sid, req):
        self.calls.append(("req", sid, req, req.body.getvalue()))

    def response_head(self, conn, sid, req, resp):
        self.calls.append(("head", sid, req, resp.status))

    def response_data(self, conn, sid, req, data, ts):
        self.calls.append(("data", sid, req, bytes(data)))

    def exchange_done(self, ex):
        self.calls.append(("end", ex.stream_id, ex.request, None))


# ------------------------------------------------------------------------------ parser hooks

@pytest.mark.parametrize("gz", [False, True])
def test_http1_progress_sees_request_head_and_body_bytes_split_anywhere(gz):
    body = b"".join(answer_events(["Hel", "lo"]))
    wire_body = gzip.compress(body) if gz else body
    resp = response_head(gz) + chunked(wire_body, (5, 11, 64))
    req = request_bytes(BODY)
    rng = random.Random(3)
    for _ in range(20):
        p = Http1Connection(CONN)
        rec = Recorder()
        p.progress = rec
        out = []
        ts = 0
        for d, data in ((Direction.WRITE, req), (Direction.READ, resp)):
            i = 0
            while i < len(data):
                n = rng.choice([1, 3, 17, 200, 5000])
                ts += 1
                out += p.feed(d, data[i:i + n], ts)
                i += n
        kinds = [c[0] for c in rec.calls]
        assert kinds[0] == "req" and kinds[1] == "head" and set(kinds[2:]) == {"data"}
        assert rec.calls[0][3] == orjson.dumps(BODY)
        assert all(c[2] is out[0].request for c in rec.calls)
        # the raw body (Content-Encoding not removed), exactly
        assert b"".join(c[3] for c in rec.calls if c[0] == "data") == wire_body
        assert out[0].response.body.getvalue() == body


def test_http2_progress_per_stream_matches_the_exchanges():
    conv = big_conversation(seed=5, reframe=True, n=8)
    p = Http2Connection(CONN)
    rec = Recorder()
    p.progress = rec
    exchanges = []
    for i, (d, data) in enumerate(conv.wire):
        exchanges += p.feed(d, data, i * 1000)
    exchanges += p.close("end", 10**9)
    for ex in exchanges:
        mine = [c for c in rec.calls if c[1] == ex.stream_id]
        if ex.request.complete:
            reqs = [c for c in mine if c[0] == "req"]
            assert len(reqs) == 1 and reqs[0][2] is ex.request and reqs[0][3] == ex.request.body.getvalue()
        heads = [c for c in mine if c[0] == "head"]
        if ex.response is not None and ex.response.status:
            assert [h[3] for h in heads] == [ex.response.status]
            assert b"".join(c[3] for c in mine if c[0] == "data") == ex.response.body.getvalue()


def test_without_an_observer_the_parsers_are_untouched():
    """Same bytes, with and without an observer: the same exchanges (and the observer sees no body it
    could change: it is given bytes)."""
    conv = big_conversation(seed=7, reframe=False, n=6)

    def run(obs):
        p = Http2Connection(CONN)
        p.progress = obs
        out = []
        for i, (d, data) in enumerate(conv.wire):
            out += p.feed(d, data, i)
        out += p.close("end", 10**6)
        return [(e.stream_id, e.request.body.getvalue(), e.response.body.getvalue() if e.response else None,
                 e.notes, e.gaps) for e in out]
    assert run(None) == run(Recorder())


# ------------------------------------------------------------------------------ pipeline + feed

class Wire:
    """Ring records of one client connection, as the BPF program would write them."""

    def __init__(self, conn=0x1000, pid=321):
        self.off = {ev.DIR_WRITE: 0, ev.DIR_READ: 0}
        self.conn, self.pid = conn, pid
        self.t = 1_000_000_000

    def put(self, d, data):
        r = record(data, conn=self.conn, pid=self.pid, dir=d, stream_off=self.off[d], ts_ns=self.t, comm="claude")
        self.off[d] += len(data)
        self.t += 3_000_000
        return r


def exchange_records(n_calls=2, pieces=("Hello", " there\nsecond", " line")):
    w = Wire()
    out = []
    for i in range(n_calls):
        out.append(w.put(ev.DIR_WRITE, request_bytes(dict(BODY, messages=BODY["messages"] + [
            {"role": "user", "content": f"turn {i}"}]))))
        out.append(w.put(ev.DIR_READ, response_head()))
        for e in answer_events(list(pieces), tool=("Bash", {"command": f"echo {i}"})):
            out.append(w.put(ev.DIR_READ, b"%x\r\n%s\r\n" % (len(e), e)))
        out.append(w.put(ev.DIR_READ, b"0\r\n\r\n"))
    return out


def _strip_timing(r: dict) -> dict:
    r = json.loads(json.dumps(r))
    r.pop("logged_at", None)
    return r


def read_frames(sock: socket.socket, until: str = "end", timeout: float = 5.0, count: int = 1):
    sock.settimeout(timeout)
    dec = wire.Decoder()
    frames = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            break
        if not data:
            break
        frames += list(dec.feed(data))
        if sum(1 for h, _ in frames if h.get("t") == until) >= count:
            break
    return frames


def make_feed(capture, clock, listener=None):
    flt = Filter()
    f = LiveFeed(clock=clock, wants=flt.wants, log_name="log-test.jsonl", listen=listener)
    f.attach(capture)
    f.start()
    return f


def test_feed_is_installed_only_while_a_view_is_connected():
    clock = Clock(offset_ns=0)
    cap = Capture(lambda ex: None)
    f = make_feed(cap, clock)
    recs = exchange_records(1)
    cap.feed(recs[0])
    assert cap.progress is None and all(st.parser.progress is None for st in cap.conns.values())
    a, b = socket.socketpair()
    f.add_client(a)
    assert cap.progress is f and all(st.parser.progress is f for st in cap.conns.values())
    b.close()
    assert wait_for(lambda: cap.progress is None, 5)
    assert all(st.parser.progress is None for st in cap.conns.values())
    f.close()


def test_same_traffic_gives_the_same_records_with_and_without_a_view():
    clock = Clock(offset_ns=10**18)
    recs = exchange_records(3)

    def run(with_view: bool):
        logged = []
        cap = Capture(lambda ex: logged.append(build_record(ex, clock)))
        f = make_feed(cap, clock)
        if with_view:
            a, b = socket.socketpair()
            f.add_client(a)
        for r in recs:
            cap.feed(r)
        cap.close_all("end")
        frames = read_frames(b, "end", count=3) if with_view else []
        f.close()
        return [_strip_timing(r) for r in logged], frames
    plain, _ = run(False)
    viewed, frames = run(True)
    assert plain == viewed and len(plain) == 3
    kinds = [h["t"] for h, _ in frames]
    assert kinds[0] == "hello" and kinds.count("req") == 3 and kinds.count("end") == 3
    # the feed's request time is the record's: that is how a view matches them
    reqs = [h for h, _ in frames if h["t"] == "req"]
    assert [(h["conn"], h["sid"], h["ts"]) for h in reqs] == \
        [(r["tracer"]["conn_id"], r["tracer"]["stream_id"], r["request"]["timestamp"]) for r in plain]


def test_feed_skips_what_the_log_filters_out():
    clock = Clock()
    cap = Capture(lambda ex: None)
    f = make_feed(cap, clock)
    a, b = socket.socketpair()
    f.add_client(a)
    w = Wire()
    cap.feed(w.put(ev.DIR_WRITE, request_bytes(BODY, host="telemetry.example.com")))
    cap.feed(w.put(ev.DIR_READ, b"HTTP/1.1 204 No Content\r\n\r\n"))
    w2 = Wire(conn=0x2000)
    for r in [w2.put(ev.DIR_WRITE, request_bytes(BODY))]:
        cap.feed(r)
    frames = read_frames(b, "req", timeout=2)
    f.close()
    reqs = [h for h, _ in frames if h["t"] == "req"]
    assert len(reqs) == 1 and reqs[0]["url"].startswith("https://api.anthropic.com/")


def test_a_slow_view_loses_answer_bytes_never_blocks_the_parser(monkeypatch):
    monkeypatch.setattr(feed_mod, "CLIENT_BUFFER", 4096)
    monkeypatch.setattr(feed_mod, "CLIENT_HARD_LIMIT", 1 << 20)
    clock = Clock()
    cap = Capture(lambda ex: None)
    f = make_feed(cap, clock)
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    f.add_client(a)
    recs = exchange_records(40, pieces=["x" * 900] * 20)
    t0 = time.monotonic()
    for r in recs:
        cap.feed(r)
    assert time.monotonic() - t0 < 10
    assert cap.stats.worker_errors == 0
    frames = read_frames(b, "end", count=40, timeout=5)
    f.close()
    lost = sum(h["bytes"] for h, _ in frames if h["t"] == "lost")
    assert lost > 0
    m = Model()
    for h, p in frames:
        m.on_frame(h, p)
    assert m.live_lost == lost
    assert sum(1 for h, _ in frames if h["t"] == "end") == 40, "control frames are never dropped"


def test_a_view_that_reads_nothing_is_disconnected(monkeypatch):
    monkeypatch.setattr(feed_mod, "CLIENT_BUFFER", 1 << 10)
    monkeypatch.setattr(feed_mod, "CLIENT_HARD_LIMIT", 64 << 10)
    cap = Capture(lambda ex: None)
    f = make_feed(cap, Clock())
    a, b = socket.socketpair()
    f.add_client(a)
    big = {"model": "m", "messages": [{"role": "user", "content": "y" * 200_000}]}
    w = Wire()
    for i in range(40):
        cap.feed(w.put(ev.DIR_WRITE, request_bytes(big)))
        cap.feed(w.put(ev.DIR_READ, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    assert wait_for(lambda: cap.progress is None, 10), "the stuck view was let go"
    f.close()
    b.close()


def test_listener_is_the_users_0600_socket_and_checks_peers(tmp_path):
    log = tmp_path / "log-x.jsonl"
    log.write_bytes(b"")
    lst = Listener(log)
    st = os.lstat(live_path(log))
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    cap = Capture(lambda ex: None)
    f = LiveFeed(clock=Clock(), wants=Filter().wants, listen=lst.sock, allowed_uids={12345})
    f.attach(cap)
    f.start()
    c = socket.socket(socket.AF_UNIX)
    c.connect(str(live_path(log)))
    c.settimeout(3)
    assert c.recv(100) == b""          # root is not in allowed_uids here: refused
    assert f.refused_clients == 1
    f.allowed_uids = {os.geteuid()}
    opened = open_log(log)
    s = connect_feed(opened)
    assert s is not None
    assert wait_for(lambda: cap.progress is f, 5)
    s.close()
    opened.close()
    f.close()
    lst.close()
    assert not os.path.lexists(live_path(log)), "the socket is removed at the end"


def test_listener_never_replaces_an_existing_entry(tmp_path):
    log = tmp_path / "log-y.jsonl"
    live_path(log).write_text("precious")
    with pytest.raises(OSError):
        Listener(log)
    assert live_path(log).read_text() == "precious"


@pytest.mark.skipif(os.geteuid() != 0, reason="acting for another user needs root")
def test_listener_is_bound_as_the_invoking_user_in_the_checked_directory(tmp_path):
    """Under sudo the socket is the invoking user's from the start (bound with their file-system
    identity, through the directory the session opened and checked for the log), and a directory
    others may write to is refused like any output directory."""
    import tempfile
    from tracer.invoker import invoking_user
    from tracer.userfiles import UnsafeOutput, UserDir
    nobody = invoking_user({"SUDO_UID": "65534", "SUDO_GID": "65534"})
    d = tempfile.mkdtemp(prefix="tracer-live-")
    try:
        os.chown(d, 65534, 65534)
        out = UserDir(d, nobody)
        lst = Listener(os.path.join(d, "log-z.jsonl"), nobody, directory=out)
        out.close()                      # the listener keeps its own handle of the directory
        st = os.lstat(live_path(os.path.join(d, "log-z.jsonl")))
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o600)
        lst.close()
        assert not os.path.lexists(live_path(os.path.join(d, "log-z.jsonl")))
        os.chmod(d, 0o777)
        with pytest.raises(UnsafeOutput, match="writable by others"):
            Listener(os.path.join(d, "log-z.jsonl"), nobody)
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------ wire format

def test_wire_frames_split_anywhere_and_bad_sizes_refused():
    frames = [({"t": "data", "k": i}, bytes([i]) * i) for i in range(50)]
    raw = b"".join(wire.encode(h, p) for h, p in frames)
    rng = random.Random(1)
    dec = wire.Decoder()
    got = []
    i = 0
    while i < len(raw):
        n = rng.randint(1, 40)
        got += list(dec.feed(raw[i:i + n]))
        i += n
    assert got == frames and dec.pending == 0
    with pytest.raises(wire.FrameError):
        list(wire.Decoder().feed(wire.PREFIX.pack(wire.MAX_HEADER + 1, 0)))
    with pytest.raises(wire.FrameError):
        list(wire.Decoder().feed(wire.PREFIX.pack(2, 0) + b"[]"))


# ------------------------------------------------------------------------------ the log follower

def test_follower_reads_complete_lines_as_the_log_grows(tmp_path):
    log = tmp_path / "log.jsonl"
    recs = claude_code_session().records
    lines = [orjson.dumps(r) + b"\n" for r in recs]
    log.write_bytes(b"".join(lines[:5]) + lines[5][:40])
    o = open_log(log)
    fo = Follower(o.fd)
    fo.skip_to_last(2)
    got = fo.poll()
    assert [n for n, _ in got] == [4, 5]
    assert fo.poll() == []
    with open(log, "ab") as f:
        f.write(lines[5][40:] + b"not json\n" + lines[6])
    got = fo.poll()
    assert [n for n, _ in got] == [6, 8] and got[0][1] == recs[5]
    assert fo.warnings and "line 7" in fo.warnings[0]
    # the writer rolled back a failed write: read on from the new end
    size = log.stat().st_size
    os.truncate(log, size - len(lines[6]))
    assert fo.poll() == [] and "cut back" in fo.warnings[-1]
    with open(log, "ab") as f:
        f.write(lines[6])
    assert [n for n, _ in fo.poll()] == [8]
    o.close()


def test_follower_keeps_big_strings_in_the_file(tmp_path):
    from tracer.viewer.logs import INLINE_LINE, BigString
    log = tmp_path / "log.jsonl"
    rec = claude_code_session().records[1]
    rec = dict(rec, response=dict(rec["response"], body_raw=rec["response"]["body_raw"] + " " * (INLINE_LINE + 10)))
    log.write_bytes(orjson.dumps(rec) + b"\n")
    o = open_log(log)
    (n, got), = Follower(o.fd).poll()
    assert isinstance(got["response"]["body_raw"], BigString)
    m = Model()
    call = m.on_record(n, got)
    assert call.usage.get("output_tokens") and call.final
    o.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make links owned by another user")
def test_open_log_follows_links_only_of_root_or_the_caller(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"")
    mine = tmp_path / "latest.jsonl"
    mine.symlink_to(log)
    assert open_log(mine).name == "log.jsonl"
    planted = tmp_path / "planted.jsonl"
    planted.symlink_to(log)
    os.lchown(planted, 4242, 4242)
    with pytest.raises(UnsafeLog, match="belongs to uid 4242"):
        open_log(planted)
    d = tmp_path / "dirlink"
    d.symlink_to(tmp_path)
    os.lchown(d, 4242, 4242)
    with pytest.raises(UnsafeLog):
        open_log(d / "log.jsonl")
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeLog, match="not a regular file"):
        open_log(fifo)          # and it did not hang


# ------------------------------------------------------------------------------ model

def frames_of(record: dict, k: int, piece: int = 97) -> list[tuple[dict, bytes]]:
    """The feed frames a record would have been announced with, its answer in pieces."""
    req, res, tr = record["request"], record["response"], record.get("tracer", {})
    h = {"t": "req", "k": k, "conn": tr.get("conn_id"), "sid": tr.get("stream_id"), "ts": req["timestamp"],
         "pid": tr.get("pid", 1), "tid": 1, "comm": "claude", "method": req["method"], "url": req["url"],
         "session": req["headers"].get("x-claude-code-session-id", ""), "ctype": "application/json", "enc": "",
         "size": 0, "cut": False}
    out = [(h, orjson.dumps(req["body"]))]
    ctype = res["headers"].get("content-type", "")
    out.append(({"t": "head", "k": k, "ts": req["timestamp"] + 0.3, "status": res["status_code"],
                 "ctype": ctype, "enc": ""}, b""))
    body = res["body_raw"].encode() if "body_raw" in res else orjson.dumps(res["body"])
    for i in range(0, len(body), piece):
        out.append(({"t": "data", "k": k, "ts": req["timestamp"] + 0.4 + i / 1e6}, body[i:i + piece]))
    out.append(({"t": "end", "k": k, "complete": True}, b""))
    return out


def test_model_streams_text_tools_and_tokens_then_takes_the_record():
    log = claude_code_session()
    rec = next(r for r in log.records if "Task" in r["response"]["body_raw"] and '"tool_use"' in r["response"]["body_raw"])
    m = Model()
    frames = frames_of(rec, 1)
    for h, p in frames[:3]:
        m.on_frame(h, p)
    call = m.calls[1]
    assert call.state == "streaming" and call.model == rec["request"]["body"]["model"]
    assert call.prompt                         # the last user message, shortened
    for h, p in frames[3:]:
        m.on_frame(h, p)
    assert call.state == "ended" and call.usage["output_tokens"] > 1 and call.ttft_s is not None
    assert [t.name for t in call.tools] == ["Task"] and call.tools[0].done
    m.on_record(7, rec)
    assert call.final and call.record_line == 7 and len(m.calls) == 1, "the record replaces the stream"
    an = analyze([rec])
    assert call.usage["output_tokens"] == an.calls[0].output_tokens
    assert call.cost == an.calls[0].cost


def test_subagents_nest_like_the_viewer_groups_them():
    """Calls fed one by one (live frames for some, records only for others) are nested under the call
    whose Task started them, exactly where the viewer's whole-log grouping puts them."""
    recs = [r for r in claude_code_session().records if "tracer" in r and isinstance(r["request"]["body"], dict)
            and "messages" in r["request"]["body"]]
    an = analyze(recs)
    sub_calls = {i for th in an.threads if th.kind == "subagent" for i in th.calls}
    assert sub_calls
    for live in (True, False):
        m = Model()
        by_index = {}
        for i, rec in enumerate(recs):
            if live:
                for h, p in frames_of(rec, i + 1):
                    m.on_frame(h, p)
            call = m.on_record(i + 1, rec)
            by_index[i] = call
        if live:
            buf = io.StringIO()
            LinesRenderer(make_console(buf, terminal=False)).draw(m)
            heads = [l for l in buf.getvalue().splitlines() if re.match(r"\s*✓ #\d+ ", l)]
            for i, call in by_index.items():
                line = next(l for l in heads if re.match(rf"\s*✓ #{call.n} ", l))
                if i in sub_calls:
                    assert line.startswith("    ✓ ") and f"subagent of #{call.parent.n}" in line, line
                else:
                    assert line.startswith("✓ "), line
        for i, call in by_index.items():
            assert (call.depth == 1) == (i in sub_calls), (i, call.depth)
            if i in sub_calls:
                parent = call.parent
                th = an.threads[an.calls[i].thread]
                ptid, tool_id = th.parent
                assert parent is not None and an.calls[[k for k, c in by_index.items() if c is parent][0]].thread == ptid


def test_text_tail_is_bounded():
    t = TextTail(100)
    for i in range(10_000):
        t.add("abcdefghij")
    assert t.total == 100_000 and len(t.value()) == 100 and t.start == 99_900
    assert t.kept <= 200


def test_model_memory_is_bounded():
    m = Model(max_calls=20)
    rec = claude_code_session().records[1]
    for i in range(300):
        r = dict(rec, tracer=dict(rec["tracer"], conn_id=f"c{i}"))
        for h, p in frames_of(r, i + 1, piece=4000):
            m.on_frame(h, p)
        m.on_record(i, r)
        m.take_changes()
    assert len(m.calls) <= 20 and len(m.by_k) <= 20 and len(m.by_key) <= 20


def test_a_call_without_its_record_is_given_up():
    m = Model()
    rec = claude_code_session().records[1]
    for h, p in frames_of(rec, 1):
        m.on_frame(h, p)
    m.expire(time.monotonic() + 60)
    assert m.calls[1].state == "lost" and "record" in m.calls[1].notes[-1]


# ------------------------------------------------------------------------------ what reaches the terminal

def hostile_model() -> Model:
    m = Model()
    body = dict(BODY, model="claude-\x1b]2;x\x07model")
    frames = [({"t": "hello", "v": 1}, b""),
              ({"t": "req", "k": 1, "conn": "c", "sid": None, "ts": 100.0, "pid": 7, "comm": "evil\x1b[2J",
                "method": "POST", "url": "https://api.anthropic.com/v1/messages", "cut": False}, orjson.dumps(body)),
              ({"t": "head", "k": 1, "ts": 100.2, "status": 200, "ctype": "text/event-stream", "enc": ""}, b"")]
    evs = answer_events([HOSTILE[:20], HOSTILE[20:], "\nmore " + HOSTILE], tool=("Ba\x1b[2Jsh", {"command": HOSTILE}))
    for i, e in enumerate(evs):
        frames.append(({"t": "data", "k": 1, "ts": 100.3 + i / 100}, e))
    for h, p in frames:
        m.on_frame(h, p)
    return m


def _assert_safe(out: str, terminal: bool):
    for seq in RAW_SEQUENCES:
        assert seq not in out, repr(seq)
    if not terminal:
        assert "\x1b" not in out
    else:
        # what is left is rich's own styling and cursor handling
        rest = re.sub(r"\x1b\[[0-9;?]*[mAKlhG]", "", out)
        assert "\x1b" not in rest, repr(rest[rest.index("\x1b") - 20:][:60])
    assert "[bold red]markup[/bold red]" in out, "markup is shown as typed"
    assert "\\x1b]2;pwned-title\\x07" in out, "escape sequences are shown escaped"


@pytest.mark.parametrize("terminal", [False, True])
def test_lines_renderer_shows_target_text_escaped(terminal):
    m = hostile_model()
    buf = io.StringIO()
    r = LinesRenderer(make_console(buf, terminal=terminal, width=120))
    r.draw(m)
    m.on_frame({"t": "end", "k": 1}, b"")
    r.draw(m)
    m.expire(feed_gone=True)          # as the view does once the tracer is gone
    r.stop(m)
    out = buf.getvalue()
    _assert_safe(out, terminal)
    assert "│ more " in out


def test_live_renderer_shows_target_text_escaped():
    m = hostile_model()
    buf = io.StringIO()
    r = LiveRenderer(make_console(buf, terminal=True, width=400), title="t\x1b]2;x\x07")
    r.start()
    r.draw(m)
    m.expire(feed_gone=True)
    r.draw(m)
    r.stop(m)
    _assert_safe(buf.getvalue(), True)


def test_lines_renderer_streams_long_paragraphs_and_prints_each_line_once():
    m = Model()
    buf = io.StringIO()
    r = LinesRenderer(make_console(buf, terminal=False), wrap=40)
    rec = claude_code_session().records[1]
    frames = frames_of(rec, 1, piece=13)
    words = " ".join(f"word{i}" for i in range(60))
    req = frames[0]
    m.on_frame(*req)
    m.on_frame(*frames[1])
    m.on_frame({"t": "head", "k": 1, "status": 200, "ctype": "text/event-stream"}, b"")
    evs = answer_events([words[i:i + 9] for i in range(0, len(words), 9)] + ["\nlast line"])
    seen_during = []
    for i, e in enumerate(evs):
        m.on_frame({"t": "data", "k": 1, "ts": 1.0 + i}, e)
        r.draw(m)
        seen_during.append(buf.getvalue().count("word"))
    assert seen_during[len(evs) // 2] > 0, "a long paragraph appears before it ends"
    m.on_frame({"t": "end", "k": 1}, b"")
    m.on_record(1, rec)
    r.draw(m)
    out = buf.getvalue()
    for i in range(60):
        assert out.count(f"word{i} ") + out.count(f"word{i}\n") == 1, i
    assert out.count("last line") == 1


# ------------------------------------------------------------------------------ tracer tail on a finished log

def test_tail_prints_the_last_calls_of_a_log_as_plain_lines(tmp_path):
    log = tmp_path / "log-1.jsonl"
    recs = claude_code_session().records
    log.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))
    p = subprocess.Popen(tracer_cmd("tail", str(log), "--last", "3"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(1 for l in seen if re.match(r"[✓✗⚠] #", l)) < 3:
        seen.append(p.stdout.readline())
    p.terminate()                  # without a live feed it follows the log until stopped
    rest, err = p.communicate(timeout=10)
    out = "".join(seen) + rest
    assert "no live feed" in out
    assert out.count("✓ #") + out.count("✗ #") + out.count("⚠ #") == 3, out
    assert "\x1b" not in out
    assert "in " in out and "out " in out


def test_bedrock_event_stream_answers_stream_too():
    from tracer.protocols.eventstream import bedrock_chunk
    events = [orjson.loads(e.split(b"data: ", 1)[1]) for e in answer_events(["Bed", "rock ", "answer"],
                                                                              tool=("Read", {"path": "/x"}))]
    body = b"".join(bedrock_chunk(e) for e in events)
    m = Model()
    m.on_frame({"t": "req", "k": 1, "conn": "c", "sid": None, "ts": 5.0, "pid": 3, "comm": "py",
                "method": "POST", "url": "https://bedrock-runtime.us-east-1.amazonaws.com/model/"
                "anthropic.claude-sonnet-4-5/invoke-with-response-stream", "cut": False},
               orjson.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
                             "messages": [{"role": "user", "content": "hi bedrock"}]}))
    m.on_frame({"t": "head", "k": 1, "status": 200, "ctype": "application/vnd.amazon.eventstream"}, b"")
    for i in range(0, len(body), 33):
        m.on_frame({"t": "data", "k": 1, "ts": 5.5 + i / 1e5}, body[i:i + 33])
    c = m.calls[1]
    assert c.text.value() == "Bedrock answer" and c.prompt == "hi bedrock"
    assert c.usage["output_tokens"] == 7 and [t.name for t in c.tools] == ["Read"] and c.tools[0].done


def test_a_gzip_answer_is_decoded_live():
    body = gzip.compress(b"".join(answer_events(["zip", "ped"])))
    m = Model()
    m.on_frame({"t": "req", "k": 1, "conn": "c", "sid": None, "ts": 1.0, "cut": False},
               orjson.dumps(BODY))
    m.on_frame({"t": "head", "k": 1, "status": 200, "ctype": "text/event-stream", "enc": "gzip"}, b"")
    for i in range(0, len(body), 10):
        m.on_frame({"t": "data", "k": 1, "ts": 1.1}, body[i:i + 10])
    assert m.calls[1].text.value() == "zipped"


def test_view_goes_on_from_the_log_when_the_feed_lets_it_go(tmp_path):
    """A feed that closes without a goodbye while its tracer runs: the view keeps following the log
    (records only) until the tracer is gone; with the goodbye it ends at once."""
    from tracer.live.follow import OpenedLog
    from tracer.live.view import View
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"")
    recs = claude_code_session().records
    sleeper = subprocess.Popen(["sleep", "30"])
    a, b = socket.socketpair()
    a.sendall(wire.encode({"t": "hello", "v": 1, "pid": sleeper.pid}))
    a.close()                                     # no bye
    fd = os.open(log, os.O_RDONLY)
    v = View(OpenedLog(fd, os.open("/", os.O_PATH), "log.jsonl", 0), b,
             LinesRenderer(make_console(io.StringIO(), terminal=False)), history=0)
    import threading
    th = threading.Thread(target=v.run)
    th.start()
    time.sleep(0.5)
    assert th.is_alive() and v.model.feed_state.startswith("records only")
    with open(log, "ab") as f:
        f.write(orjson.dumps(recs[1]) + b"\n")
    assert wait_for(lambda: v.model.records == 1, 5)
    sleeper.kill()
    sleeper.wait()
    th.join(10)
    assert not th.is_alive()


def test_a_subagent_is_nested_from_the_stream_before_any_record():
    """The parent's Task call is read from its streamed answer (a long prompt too): the subagent's
    first request is placed under it at once, header included, without waiting for the log."""
    prompt = "Survey every module and report. " * 70          # ~2,300 characters
    m = Model()
    sys_main = [{"type": "text", "text": "main agent"}]
    main_body = {"model": "claude-sonnet-4-5", "system": sys_main, "stream": True,
                 "tools": [{"name": "Task"}], "messages": [{"role": "user", "content": "do the survey"}]}
    m.on_frame({"t": "req", "k": 1, "conn": "c1", "sid": None, "ts": 10.0, "session": "s1"}, orjson.dumps(main_body))
    m.on_frame({"t": "head", "k": 1, "status": 200, "ctype": "text/event-stream"}, b"")
    for e in answer_events(["delegating"], tool=("Task", {"description": "survey", "prompt": prompt})):
        m.on_frame({"t": "data", "k": 1, "ts": 10.5}, e)
    m.on_frame({"t": "end", "k": 1, "complete": True}, b"")
    sub_body = {"model": "claude-haiku", "system": [{"type": "text", "text": "sub agent"}], "stream": True,
                "messages": [{"role": "user", "content": prompt}]}
    m.on_frame({"t": "req", "k": 2, "conn": "c2", "sid": None, "ts": 11.0, "session": "s1"}, orjson.dumps(sub_body))
    sub = m.calls[2]
    assert sub.depth == 1 and sub.parent is m.calls[1]
    buf = io.StringIO()
    LinesRenderer(make_console(buf, terminal=False)).draw(m)
    assert re.search(r"^    → #2 subagent of #1 ", buf.getvalue(), re.M), buf.getvalue()
