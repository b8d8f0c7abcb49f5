"""Deferred parsing with real eBPF (tracer/stage.py): the ring thread moves records to the spool, the
parsing process parses behind it at SCHED_IDLE; priorities, the spool's bound, a dying parsing
process, and the in-process path (--no-deferred-parsing) logging the same."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.integration.conftest import (assert_pair_matches, client_env, mock_record, py_client, read_log,
                                        start_attach, tracer_cmd, wait_for)
from tracer.testing.helpers import comm, parsing_processes, stop_tracer

NICE_PROBE = ("import os, sys, time\n"
              "print(os.getpriority(os.PRIO_PROCESS, 0), flush=True)\n"
              "os.execv(sys.argv[1], sys.argv[1:])\n")


def parser_of(tracer_pid: int) -> int:
    return wait_for(lambda: next(iter(parsing_processes(tracer_pid)), None), timeout=30)


def test_priorities_and_the_same_log_inline(mock, tmp_path):
    """The parsing process is SCHED_IDLE while tracing; tracer's own threads (the ring thread too) run at nice -10; the
    command started by `tracer run` keeps the caller's nice value; --no-deferred-parsing logs the
    same pairs."""
    env = client_env(mock)
    go = tmp_path / "go"
    c = subprocess.Popen(py_client(mock, "--stream", "--json", "--count", "2", "--go-file", str(go)), env=env,
                         stdout=subprocess.PIPE, text=True)
    t, _, _ = start_attach(c.pid, tmp_path / "deferred", "--include-all-requests", env=env)
    try:
        parser = parser_of(t.pid)
        assert parser, "no tracer-parse process"
        assert wait_for(lambda: os.sched_getscheduler(parser) == os.SCHED_IDLE, timeout=30)
        tids = [int(tid) for tid in os.listdir(f"/proc/{t.pid}/task")]
        assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in tids} == {-10}
        ring = [tid for tid in tids if comm(t.pid, tid) == "tracer-ring"]
        assert len(ring) == 1 and os.sched_getscheduler(ring[0]) == os.SCHED_OTHER
        assert os.getpgid(parser) == parser and os.getsid(parser) == os.getsid(t.pid)
        go.touch()
        assert c.wait(60) == 0
    finally:
        err = stop_tracer(t, timeout=60)
    assert t.returncode == 0, err
    assert "deferred parsing:" in err and "FAILED" not in err
    deferred = read_log(tmp_path / "deferred")
    assert len(deferred) == 4
    for rec in deferred:
        assert_pair_matches(mock, rec)

    # tracer run: the command runs at the nice value tracer was started with
    p = subprocess.run(["nice", "-n", "3", *tracer_cmd("run", "-o", str(tmp_path / "inline"), "--quiet",
                        "--no-html", "--no-deferred-parsing", "--", "/usr/bin/python3", "-c", NICE_PROBE,
                        *py_client(mock, "--stream", "--json", "--count", "2"))],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "3"
    assert "deferred parsing:" not in p.stderr
    inline = read_log(tmp_path / "inline")
    assert len(inline) == 4
    for rec in inline:
        assert_pair_matches(mock, rec)
    shape = lambda r: (r["request"]["method"], r["request"]["url"], r["response"]["status_code"],  # noqa: E731
                       sorted(r["request"]["headers"]), sorted(r["tracer"]))
    assert [shape(r) for r in inline] == [shape(r) for r in deferred]


def test_parsing_process_death_is_loud(mock, tmp_path):
    """A parsing process that dies: tracer says so at once and in the summary, keeps tracing (the
    ring is still drained, nothing hangs) and exits with status 70."""
    env = client_env(mock)
    go = tmp_path / "go"
    c = subprocess.Popen(py_client(mock, "--json", "--count", "3", "--go-file", str(go), "--sleep-between", "0.3"),
                         env=env, stdout=subprocess.PIPE, text=True)
    t, _, _ = start_attach(c.pid, tmp_path / "log", env=env)
    try:
        os.kill(parser_of(t.pid), signal.SIGKILL)
        go.touch()
        assert c.wait(60) == 0
        time.sleep(0.3)
    finally:
        err = stop_tracer(t, timeout=60)
    assert t.returncode == 70, err
    assert "INTERNAL ERROR: parsing process tracer-parse died (it exited (signal 9) before finishing)" in err
    assert "FAILED: tracer's parsing process tracer-parse died (it exited (signal 9) before finishing)" in err


def test_bounded_spool_counts_what_does_not_fit(mock, tmp_path):
    """With the parsing process stopped, a 40 MB answer fills a 16 MB spool, then the 1 MB ring:
    the rest is dropped in the kernel and counted, the pair logged incomplete - and once the parser
    runs again everything the spool holds is logged."""
    env = client_env(mock)
    go = tmp_path / "go"
    c = subprocess.Popen(py_client(mock, "--stream", "--go-file", str(go), "--header", "x-mock-text-bytes: 40000000",
                                   "--header", "x-mock-delta-size: 16000"),
                         env=env, stdout=subprocess.PIPE, text=True)
    t, _, _ = start_attach(c.pid, tmp_path / "log", "--spool-max-mb", "16", "--ring-buffer-mb", "1", env=env)
    parser = parser_of(t.pid)
    try:
        os.kill(parser, signal.SIGSTOP)
        go.touch()
        assert c.wait(120) == 0
        time.sleep(0.5)
    finally:
        os.kill(parser, signal.SIGCONT)
        err = stop_tracer(t, timeout=120)
    assert t.returncode == 0, err
    assert "ring-buffer drops (events)" in err, err
    recs = read_log(tmp_path / "log")
    assert len(recs) == 1
    # the drops are the stream's tail: the pair ends where the capture does (nothing later shows the gap)
    assert recs[0]["tracer"]["complete"] is False and recs[0]["note"]
    spooled = float(err.split("deferred parsing: ")[1].split(" MB spooled")[0])
    assert 14 < spooled < 20, err      # the spool stopped at its bound (+ one batch)



def test_ctrl_c_and_kill_of_the_tracer(mock, tmp_path):
    """A Ctrl-C at the terminal (SIGINT to the whole foreground process group) is the tracer's: the
    parsing process does not die of it, every pair is logged. A SIGKILLed tracer: the parsing
    process still writes everything that was spooled, then exits."""
    env = client_env(mock)
    for how in ("ctrl-c", "kill"):
        go, out = tmp_path / f"go-{how}", tmp_path / how
        c = subprocess.Popen(py_client(mock, "--json", "--count", "3", "--go-file", str(go)), env=env,
                             stdout=subprocess.PIPE, text=True)
        t = subprocess.Popen(tracer_cmd("attach", "--pid", str(c.pid), "-o", str(out), "--quiet", "--no-html"),
                             stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        while "tracing" not in (line := t.stderr.readline()):
            assert line, "tracer attach exited early"
        parser = parser_of(t.pid)
        go.touch()
        assert c.wait(60) == 0
        time.sleep(0.5)             # drained into the spool (every 50 ms)
        if how == "ctrl-c":
            os.killpg(t.pid, signal.SIGINT)
            err = t.stderr.read()
            assert t.wait(60) == 0, err
            assert "FAILED" not in err
        else:
            t.kill()
            t.wait(10)
            assert wait_for(lambda: not os.path.exists(f"/proc/{parser}"), timeout=60)
        recs = read_log(out)
        assert len(recs) == 3, how
        for rec in recs:
            assert_pair_matches(mock, rec)


def test_parser_waits_while_records_come_fast_and_keeps_up_otherwise(mock, tmp_path):
    """A few requests with pauses are parsed and logged while the tracer runs; a stream whose records
    come faster than the busy rate is held back from the parser while it streams (the summary says
    for how long) and still logged whole at the end. (The busy rate is lowered for the second part:
    a fast answer is over within the first 250 ms window on a quiet machine.)"""
    env = client_env(mock)
    go = tmp_path / "go"
    c = subprocess.Popen(py_client(mock, "--json", "--count", "3", "--go-file", str(go), "--sleep-between", "0.7"),
                         env=env, stdout=subprocess.PIPE, text=True)
    summary = tmp_path / "light.json"
    t, _, _ = start_attach(c.pid, tmp_path / "light", "--summary-json", str(summary), env=env)
    try:
        go.touch()
        assert wait_for(lambda: len(list((tmp_path / "light").glob("*.jsonl"))) == 1
                        and len(read_log(tmp_path / "light")) >= 2, timeout=30), "not logged while running"
        assert c.wait(60) == 0
    finally:
        stop_tracer(t, timeout=60)
    assert orjson_loads(summary)["parse_held_s"] == 0

    go = tmp_path / "go2"
    c = subprocess.Popen(py_client(mock, "--stream", "--go-file", str(go), "--header", "x-mock-text-bytes: 1500000",
                                   "--header", "x-mock-delta-size: 1000", "--header", "x-mock-delay-ms: 1"),
                         env=env, stdout=subprocess.PIPE, text=True)
    summary = tmp_path / "busy.json"
    t, _, _ = start_attach(c.pid, tmp_path / "busy", "--summary-json", str(summary),
                           env=dict(env, TRACER_BUSY_RECORDS_S="100"))
    try:
        go.touch()
        assert c.wait(60) == 0
    finally:
        err = stop_tracer(t, timeout=60)
    s = orjson_loads(summary)
    assert s["parse_held_s"] > 0 and s["thread_failures"] == [], err
    recs = read_log(tmp_path / "busy")
    assert len(recs) == 1 and recs[0]["tracer"]["complete"]
    import hashlib
    sent = mock_record(mock, recs[0])["response_body"]
    assert hashlib.sha256(recs[0]["response"]["body_raw"].encode()).hexdigest() == sent["sha256"]


def orjson_loads(path):
    import orjson
    return orjson.loads(path.read_bytes())
