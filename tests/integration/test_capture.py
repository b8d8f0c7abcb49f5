"""Real eBPF: Node, CPython and curl talk to the mock server under `tracer run` / `tracer attach`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (assert_pair_matches, client_env, curl_body, curl_client,
                                        node_client, py_client, read_log, run_traced, scaled,
                                        start_attach, tracer_cmd, wait_for)


def _ids(out: str) -> list[str]:
    return [json.loads(l)["record"] for l in out.splitlines() if l.startswith("{")]


@pytest.mark.parametrize("client", ["python", "node", "curl"])
def test_run_streaming_and_json(mock, tmp_path, client):
    env = client_env(mock)
    if client == "python":
        cmds = [py_client(mock, "--stream", "--json", "--count", "2")]
        expect = 4
    elif client == "node":
        cmds = [node_client(mock, "--stream", "--json", "--count", "2")]
        expect = 4
    else:
        cmds = [curl_client(mock)]
        expect = 2
    p, recs = run_traced(cmds[0], tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert len(recs) == expect, (p.stderr, recs)
    for r in recs:
        assert_pair_matches(mock, r)
    streamed = [r for r in recs if "body_raw" in r["response"]]
    assert streamed, "expected an SSE response"
    for r in streamed:
        assert r["response"]["body_raw"].startswith("event: message_start")
        assert r["tracer"]["response_chunks"], "per-read timings for deferred SSE timing"
    ids = _ids(p.stdout) if client != "curl" else p.stdout.split()
    assert [r["response"]["headers"]["x-mock-record-id"] for r in recs] == ids
    assert "losses: none" in p.stderr


def test_run_gzip_decoded(mock, tmp_path):
    p, recs = run_traced(py_client(mock, "--json", "--stream", "--gzip"), tmp_path, env=client_env(mock))
    assert p.returncode == 0, p.stderr
    assert len(recs) == 2
    for r in recs:
        assert r["tracer"]["content_encoding"] == "gzip"
        assert_pair_matches(mock, r)


def test_run_passes_exit_code_and_stdio(mock, tmp_path):
    p = subprocess.run(tracer_cmd("run", "-o", str(tmp_path), "--quiet", "--no-html", "--",
                                  "/bin/sh", "-c", "read x; echo got:$x; exit 7"),
                       input="hello\n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 7
    assert p.stdout == "got:hello\n"


def test_untargeted_process_not_captured(mock, tmp_path):
    env = client_env(mock)
    other = subprocess.Popen(py_client(mock, "--json", "--count", "5", "--sleep-between", "0.1"),
                             env=env, stdout=subprocess.PIPE, text=True)
    p, recs = run_traced(py_client(mock, "--json", "--count", "3"), tmp_path, env=env)
    other_out, _ = other.communicate(timeout=60)
    assert p.returncode == 0, p.stderr
    assert len(recs) == 3
    mine = set(_ids(p.stdout))
    assert {r["response"]["headers"]["x-mock-record-id"] for r in recs} == mine
    assert not mine & set(_ids(other_out))
    assert {r["tracer"]["pid"] for r in recs} != {other.pid}


def test_filter_default_and_include_all(mock, tmp_path):
    env = client_env(mock)
    script = ("import ssl,http.client,sys\n"
              "c=http.client.HTTPSConnection('127.0.0.1',%d,context=ssl.create_default_context(cafile=%r))\n"
              "for path in ['/v1/models','/v1/messages/count_tokens']:\n"
              "  c.request('POST',path,body=b'{}',headers={'content-type':'application/json'}); c.getresponse().read()\n"
              % (mock.port, str(mock.ca_path)))
    p, recs = run_traced(["/usr/bin/python3", "-c", script], tmp_path / "a", env=env)
    assert p.returncode == 0, p.stderr
    assert recs == []
    assert "2 filtered out" in p.stderr
    p, recs = run_traced(["/usr/bin/python3", "-c", script], tmp_path / "b", env=env,
                         extra=["--include-all-requests"])
    assert [r["request"]["url"].split(str(mock.port))[1] for r in recs] == \
        ["/v1/models", "/v1/messages/count_tokens"]



@pytest.mark.parametrize("client", ["python", "node", "curl"])
def test_attach(mock, tmp_path, client):
    go = tmp_path / "go"
    env = client_env(mock)
    args = ["--stream", "--json", "--count", "2", "--go-file", str(go)]
    if client == "curl":
        os.mkfifo(go)
        cmd = curl_client(mock, first_body_from=str(go))
    else:
        cmd = py_client(mock, *args) if client == "python" else node_client(mock, *args)
    target = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(0.3 if client != "node" else 0.6)   # let it load its TLS library
    tr, _, head = start_attach(target.pid, tmp_path / "log")
    if client == "curl":
        with open(go, "w") as f:       # releases curl, blocked opening the FIFO for its first body
            f.write(curl_body(True))
    else:
        go.touch()
    out, _ = target.communicate(timeout=scaled(60))
    err = tr.stderr.read()
    assert tr.wait(timeout=30) == 0, "".join(head) + err
    recs = read_log(tmp_path / "log")
    assert len(recs) == (2 if client == "curl" else 4), err
    for r in recs:
        assert_pair_matches(mock, r)
        assert r["tracer"]["pid"] == target.pid
    ids = out.split() if client == "curl" else _ids(out)
    assert [r["response"]["headers"]["x-mock-record-id"] for r in recs] == ids


def test_attach_midstream_resyncs(mock, tmp_path):
    """Attach while a keep-alive connection is in the middle of a slow streamed response: the cut pair
    is skipped (counted), the following pairs on the same connection are logged whole."""
    env = client_env(mock)
    cmd = py_client(mock, "--stream", "--count", "3", "--header", "x-mock-delay-ms: 50",
                    "--header", "x-mock-deltas: 100")
    target = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)   # the first response (5 s long) is under way when the probes go in
    tr, _, head = start_attach(target.pid, tmp_path / "log")
    out, _ = target.communicate(timeout=60)
    err = tr.stderr.read()
    assert tr.wait(timeout=30) == 0, err
    recs = read_log(tmp_path / "log")
    ids = _ids(out)
    logged = [r["response"]["headers"]["x-mock-record-id"] for r in recs]
    # never a garbled pair: every logged pair is exact; the later ones are all there
    for r in recs:
        assert_pair_matches(mock, r)
    assert logged == ids[1:], err
    assert "skipped to resynchronise" in err, err


def test_sigterm_loses_no_completed_pair(mock, tmp_path):
    env = client_env(mock)
    target = subprocess.Popen(py_client(mock, "--stream", "--count", "200", "--sleep-between", "0.02"),
                              env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    tr, _, _ = start_attach(target.pid, tmp_path / "log")
    t_attached = time.time()
    time.sleep(1.5)
    tr.send_signal(signal.SIGTERM)
    t_sig = time.time()
    err = tr.stderr.read()
    assert tr.wait(timeout=30) == 0, err
    target.kill()
    out, _ = target.communicate()
    recs = read_log(tmp_path / "log")
    assert len(recs) >= 5, err
    logged = {r["response"]["headers"]["x-mock-record-id"] for r in recs if r["response"]}
    # every response the client had fully received well before the signal is in the log
    received = _ids(out)
    by_id = {str(m["id"]): m for m in mock.records()}
    done_before = [rid for rid in received
                   if t_attached + 0.05 < by_id[rid]["arrival"] and by_id[rid]["done"] < t_sig - 0.2]
    assert done_before and set(done_before) <= logged
    for r in recs:
        if r["tracer"]["complete"]:
            assert_pair_matches(mock, r)


def test_one_call_longer_than_a_ring_record_and_the_copy_limit(mock, tmp_path):
    """A 300 KB request body in one SSL_write: split over several ring records (64 KiB each, the last
    in the smallest size class that fits) and put back together exactly; with --copy-limit-kb 128 the
    rest of the call is a counted gap in the record and in the summary."""
    env = client_env(mock)
    cmd = py_client(mock, "--json", "--prompt-bytes", "300000")
    p, recs = run_traced(cmd, tmp_path / "whole", env=env)
    assert p.returncode == 0, p.stderr
    rec, = recs
    assert_pair_matches(mock, rec)
    assert len(rec["request"]["body"]["messages"][0]["content"]) == 300000
    assert "request_holes" not in rec["tracer"] and "losses: none" in p.stderr
    p, recs = run_traced(cmd, tmp_path / "cut", env=env, extra=("--copy-limit-kb", "128"))
    assert p.returncode == 0, p.stderr
    rec, = recs
    assert rec["tracer"]["request_holes"], rec["tracer"]
    assert rec["tracer"]["complete"] is False or rec["request"].get("body_raw") is not None or \
        rec["tracer"]["request_holes"]
    assert "per-call copy limit" in p.stderr, p.stderr


def test_ctrl_c_after_the_summary_changes_nothing(mock, tmp_path):
    """Ctrl-C pressed while tracer exits - its summary printed, the log complete - leaves the exit
    status alone (it was "killed by SIGINT" when the signal met the interpreter's exit)."""
    tr = subprocess.Popen(tracer_cmd("run", "--quiet", "--no-html", "-o", str(tmp_path / "log"), "--",
                                     *py_client(mock, "--json")),
                          env=client_env(mock), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    for line in tr.stderr:
        err.append(line)
        if line.startswith("log: "):
            break
    end = time.monotonic() + 30
    while tr.poll() is None and time.monotonic() < end:
        tr.send_signal(signal.SIGINT)
        time.sleep(0.002)
    err.append(tr.stderr.read())
    assert tr.wait(timeout=30) == 0, "".join(err)
    assert len(read_log(tmp_path / "log")) == 1


def test_target_killed_midstream_leaves_note(mock, tmp_path):
    env = client_env(mock)
    cmd = py_client(mock, "--stream", "--header", "x-mock-delay-ms: 100", "--header", "x-mock-deltas: 100")
    tr = subprocess.Popen(tracer_cmd("run", "-o", str(tmp_path), "--quiet", "--no-html", "--", *cmd),
                          env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    def client_pid():
        kids = subprocess.run(["pgrep", "-P", str(tr.pid)], capture_output=True, text=True).stdout.split()
        for k in kids:
            try:
                if "py_client.py" in open(f"/proc/{k}/cmdline").read():
                    return int(k)
            except OSError:
                pass
        return None
    # the tracer's child is held until its probes are in place, then execs the client
    pid = wait_for(client_pid, timeout=60)
    assert pid, "client never started"
    time.sleep(2.0)      # the response (100 events, 100 ms apart) is streaming now
    os.kill(pid, signal.SIGKILL)
    out, err = tr.communicate(timeout=60)
    assert tr.returncode == 128 + signal.SIGKILL, err
    recs = read_log(tmp_path)
    assert len(recs) == 1, err
    r = recs[0]
    assert r["tracer"]["complete"] is False
    assert "note" in r and r["note"]
    assert r["response"]["status_code"] == 200
    body = r["response"]["body_raw"]
    assert body.startswith("event: message_start") and "message_stop" not in body


def test_summary_json(mock, tmp_path):
    """--summary-json: the end-of-run summary as JSON, the same figures as the text on stderr, in a
    new file owned like the log; an existing file is refused before anything is traced."""
    home = Path(tempfile.mkdtemp(prefix="tracer-summary-"))     # the user's own directory: under sudo
    os.chown(home, 4242, 4243)                                  # tracer writes there as them
    os.chmod(home, 0o700)
    try:
        out, summary = home / "out", home / "summary.json"
        env = client_env(mock, SUDO_UID="4242", SUDO_GID="4243")
        p = subprocess.run(tracer_cmd("run", "-o", str(out), "--quiet", "--summary-json", str(summary), "--",
                                      "/bin/true"), env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        s = json.loads(summary.read_text())
        assert s["pairs_logged"] == s["records_written"] == 0 and s["log"].startswith(str(out))
        st = summary.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4243, 0o600)
        p = subprocess.run(tracer_cmd("run", "-o", str(out), "--quiet", "--summary-json", str(summary), "--",
                                      "/usr/bin/touch", str(tmp_path / "ran")), capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 2 and "exists" in p.stderr and not (tmp_path / "ran").exists(), p.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    p = subprocess.run(tracer_cmd("run", "-o", str(out), "--summary-json", str(summary), "--",
                                  *py_client(mock, "--stream", "--json")),
                       env=client_env(mock), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    s = json.loads(summary.read_text())
    text = p.stderr[p.stderr.index("pairs:"):]
    assert text.startswith(f"pairs: {s['pairs_logged']} logged, {s['pairs_filtered_out']} filtered out, "
                           f"{s['pairs_incomplete']} incomplete")
    assert s["pairs_logged"] == 2 and s["bytes_captured"] > 0 and s["ring_records"] > 0
    assert f"captured: {s['bytes_captured']} bytes in {s['ring_records']} ring records" in text
    assert s["html"] and s["html"] in text and "losses: none" in text
