"""Real eBPF: the live view (`tracer run --follow`, `tracer tail`) in a real terminal (tmux), as plain
lines, for a log another tracer writes, and the log unchanged by it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import CLIENTS, client_env, read_log, start_attach, tracer_cmd, wait_for
from tracer.protocols.sse import reconstruct

WORDS = " ".join(f"w{i:03d}" for i in range(1, 161))          # the answer: w001 ... w160, a word per delta
HOSTILE = "\x1b]2;pwned-title\x07\x1b[5;45mBLINK\x1b[0m [bold red]markup[/bold red]"
USER = 4242



def live_client(mock, *args, ca=None) -> list[str]:
    """Streaming calls (py_client.py) whose knobs ride in the query string: they may hold anything."""
    return ["/usr/bin/python3", str(CLIENTS / "py_client.py"), mock.url, ca or str(mock.ca_path), "--stream", *args]


def slow_knobs(delay_ms: int = 30, text: str = WORDS) -> list[str]:
    return ["--knob", f"text={text}", "--knob", f"delay-ms={delay_ms}"]


class Tmux:
    """A tmux server of our own (its socket in the test's directory), one session, a pane running a
    shell script."""

    def __init__(self, tmp: Path, name: str, width: int = 120, height: int = 45):
        self.sock = str(tmp / f"tmux-{name}")
        self.tmp = tmp
        self.width, self.height = width, height
        self.done = tmp / f"{name}.done"

    def tmux(self, *args, check=True) -> str:
        p = subprocess.run(["tmux", "-S", self.sock, *args], capture_output=True, text=True, timeout=30)
        if check and p.returncode != 0:
            raise AssertionError(f"tmux {args}: {p.stderr}")
        return p.stdout

    def start(self, script: str, env: dict) -> None:
        sh = Path(self.sock + ".sh")
        sh.write_text(f"{script}\necho \"EXIT=$?\" > {self.done}\nsleep 600\n")
        env = dict(env, TERM="xterm-256color")
        env.pop("TMUX", None)
        subprocess.run(["tmux", "-S", self.sock, "-f", "/dev/null", "new-session", "-d", "-s", "t",
                        "-x", str(self.width), "-y", str(self.height), f"bash {sh}"],
                       env=env, check=True, timeout=30)

    def screen(self, escapes: bool = False) -> str:
        return self.tmux("capture-pane", "-p", "-J", *(["-e"] if escapes else []), "-t", "t")

    def title(self) -> str:
        return self.tmux("display-message", "-p", "-t", "t", "#{pane_title}").strip()

    def wait(self, pred, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        s = ""
        while time.monotonic() < deadline:
            s = self.screen()
            if pred(s):
                return s
            time.sleep(0.1)
        raise AssertionError(f"the terminal never showed what was expected; it shows:\n{s}")

    def finished(self) -> bool:
        return self.done.exists()

    def close(self) -> None:
        self.tmux("kill-server", check=False)


@pytest.fixture
def tmux_factory(tmp_path):
    if shutil.which("tmux") is None:
        why = "tmux missing (scripts/bootstrap.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    made = []

    def make(name: str, **kw) -> Tmux:
        t = Tmux(tmp_path, name, **kw)
        made.append(t)
        return t
    yield make
    for t in made:
        t.close()


def answer_of(rec: dict) -> str:
    r = reconstruct(rec["response"]["body_raw"])
    return "".join(b.get("text", "") for b in r.message["content"] if b.get("type") == "text")


def words_in(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"\bw(\d{3})\b", text)]


def test_follow_in_a_terminal_streams_prompt_answer_and_tokens_in_order(mock, tmp_path, tmux_factory):
    """tracer run --follow, the command's stdout in a file: the live region shows the prompt and the
    answer while it streams; then the finished call with the whole answer's start and its tokens. The
    target's escape sequences and rich markup are shown, not obeyed."""
    out = tmp_path / "out"
    env = client_env(mock)
    cmd = " ".join(_q(a) for a in tracer_cmd("run", "-o", str(out), "--no-html", "--follow", "--",
                                             *live_client(mock, "--prompt", "live prompt " + HOSTILE,
                                                          *slow_knobs(35, HOSTILE + " " + WORDS))))
    t = tmux_factory("follow")
    t.start(f"cd {_q(os.getcwd())}\n{cmd} > {tmp_path}/answer.txt", env)
    # while the answer streams: header with the prompt, some of the answer, live counters
    mid = t.wait(lambda s: "live prompt" in s and len(words_in(s)) >= 5 and "so far" in s, 90)
    seen = words_in(mid)
    assert max(seen) < 160, "the answer was not complete yet"
    assert "✓ #1" not in mid
    assert mid.index("live prompt") < mid.index(f"w{seen[0]:03d}") < mid.index("so far")
    end = t.wait(lambda s: t.finished() and "✓ #1" in s, 90)
    assert "EXIT=0" in t.done.read_text()
    rec, = read_log(out)
    text = answer_of(rec)
    usage = reconstruct(rec["response"]["body_raw"]).message["usage"]
    lines = end.splitlines()
    head = next(i for i, l in enumerate(lines) if "✓ #1" in l)
    first = next(i for i, l in enumerate(lines) if "│" in l and i > head)
    tokens = next(i for i, l in enumerate(lines) if f"out {usage['output_tokens']:,}" in l)
    assert head < first < tokens, end
    assert "live prompt" in lines[head]
    assert "w001" in "\n".join(lines[first:tokens]), "the final answer's start"
    assert f"in {usage['input_tokens']:,}" in lines[tokens] and "ttft" in lines[tokens]
    assert text.endswith("w160")
    # the terminal obeyed nothing from the target
    assert "pwned" not in t.title()
    assert "\\x1b]2;pwned-title\\x07" in end and "[bold red]markup[/bold red]" in end
    styled = t.screen(escapes=True)
    assert not re.search(r"\x1b\[[0-9;]*\b(5|45)\b[0-9;]*m", styled), "no blink, no magenta background"
    assert (tmp_path / "answer.txt").read_text().count('"status": 200') == 1


def _normalized(recs: list[dict]) -> list[dict]:
    """Records without what differs between two runs of the same traffic: times, process and
    connection ids, the mock's per-response ids."""
    out = []
    for r in recs:
        r = orjson.loads(orjson.dumps(r))
        r.pop("logged_at")
        r["request"].pop("timestamp")
        r["response"].pop("timestamp")
        for k in ("pid", "tid", "conn_id", "ttfb_ms", "duration_ms", "response_chunks"):
            r["tracer"].pop(k)
        proc = r["tracer"].get("process") or {}      # the process that made the call: its pids differ
        for k in ("pid", "ppid"):
            proc.pop(k, None)
        for link in proc.get("chain") or []:
            link.pop("pid", None)
        for k in ("x-mock-record-id", "date", "request-id"):
            r["response"]["headers"].pop(k, None)
        r["response"]["body_raw"] = re.sub(r"msg_[0-9A-Za-z]+", "msg_", r["response"]["body_raw"])
        out.append(r)
    return out


def test_plain_lines_when_not_a_terminal_and_the_log_is_the_same(mock, tmp_path):
    env = client_env(mock)
    # each answer streams for ~2.4 s: longer than the view process (nice 10) may take to start and catch
    # up on a loaded machine, so both calls are seen in flight (at 5 ms a delta, ~0.8 s, the first call
    # was once drawn only when done, under the full suite beside benchmarks)
    client = live_client(mock, "--prompt", "plain " + HOSTILE, "--count", "2", *slow_knobs(15))
    runs = {}
    for follow in (False, True):
        out = tmp_path / ("follow" if follow else "plain")
        p = subprocess.run(tracer_cmd("run", "-o", str(out), "--no-html", *(["--follow"] if follow else []),
                                      "--", *client), env=env, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr
        runs[follow] = (p, read_log(out))
    (p0, recs0), (p1, recs1) = runs[False], runs[True]
    assert len(recs0) == 2 and _normalized(recs0) == _normalized(recs1)
    def shape(out: str):
        return [(j["status"], j["len"]) for j in map(orjson.loads, out.splitlines())]
    assert shape(p0.stdout) == shape(p1.stdout) == [(200, shape(p0.stdout)[0][1])] * 2, \
        "the command's own output is untouched"
    err = p1.stderr
    assert "\x1b" not in err and "\x07" not in err
    lines = err.splitlines()
    for n in (1, 2):
        start = next(i for i, l in enumerate(lines) if l.startswith(f"→ #{n} ") and "plain" in l)
        done = next(i for i, l in enumerate(lines) if l.startswith(f"✓ #{n} "))
        streamed = [l for l in lines[start:done] if l.startswith("  │ ") and "w0" in l]
        assert streamed, f"call {n}: answer lines while it streamed\n{err}"
        tokens = lines[done + 1]
        assert re.search(r"in [\d,]+ · out [\d,]+ · cache read \d+ · cache write \d+ · ttft", tokens), tokens
    assert "\\x1b]2;pwned-title\\x07" in err and "[bold red]markup[/bold red]" in err
    assert "losses: none" in err


def test_attach_follow_shows_a_running_process_calls(mock, tmp_path):
    go = tmp_path / "go"
    env = client_env(mock)
    client = subprocess.Popen(live_client(mock, "--prompt", "attached", "--go-file", str(go), *slow_knobs(15)),
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        t, _secs, _lines = start_attach(client.pid, tmp_path / "out", "--follow", env=env)
        go.touch()
        assert client.wait(60) == 0
        err = t.stderr.read()
        assert t.wait(60) == 0, err
    finally:
        if client.poll() is None:
            client.kill()
    rec, = read_log(tmp_path / "out")
    lines = err.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("→ #1 ") and "attached #0" in l)
    done = next(i for i, l in enumerate(lines) if l.startswith("✓ #1 "))
    assert any("w001" in l for l in lines[start:done]), err
    usage = reconstruct(rec["response"]["body_raw"]).message["usage"]
    assert f"out {usage['output_tokens']:,}" in lines[done + 1]


def test_follow_http2_answers_stream_too(tmp_path):
    """curl over HTTP/2 (nghttp2): the h2 parser's progress reaches the view as the answer streams."""
    from urllib.parse import quote
    from tracer.mock import MockServer
    with MockServer(h2=True) as h2mock:
        url = f"{h2mock.url}/v1/messages?mock-delay-ms=20&mock-text={quote(WORDS[:400])}"
        body = orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                             "messages": [{"role": "user", "content": "over h2"}]}).decode()
        p = subprocess.run(tracer_cmd("run", "-o", str(tmp_path / "out"), "--no-html", "--follow", "--",
                                      "curl", "--cacert", str(h2mock.ca_path), "-sS", "-o", "/dev/null", "-w",
                                      "%{http_version}\n", "-H", "content-type: application/json", "-d", body, url),
                           env=client_env(h2mock), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "2", (p.stdout, p.stderr)
    rec, = read_log(tmp_path / "out")
    assert rec["tracer"]["protocol"] == "h2"
    lines = p.stderr.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("→ #1 ") and "over h2" in l)
    done = next(i for i, l in enumerate(lines) if l.startswith("✓ #1 "))
    assert any("w001" in l for l in lines[start:done]), p.stderr


def test_tail_follows_a_log_another_tracer_writes(mock, user_dir, tmux_factory):
    """`sudo tracer run` for user 4242 writes the log and offers the live feed; that user runs `tracer
    tail LOG` twice (a terminal and a pipe), without privileges: both show the answers as they stream,
    then every call finished with its tokens, and end when the tracer does."""
    home = user_dir(USER, USER)              # tracer writes its log there as that user
    shared = user_dir(0, 0, 0o755)           # the CA and go file, readable by the user's processes
    ca = shared / "ca.pem"
    shutil.copy(mock.ca_path, ca)
    os.chmod(ca, 0o644)
    go = shared / "go"
    out = home / "out"
    env = client_env(mock, SUDO_UID=str(USER), SUDO_GID=str(USER))
    tracer = subprocess.Popen(tracer_cmd("run", "-o", str(out), "--no-html", "--quiet", "--",
                                         *live_client(mock, "--prompt", "tailed", "--count", "2", "--sleep-between", "1",
                                                      "--go-file", str(go), *slow_knobs(25), ca=str(ca))),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sock = wait_for(lambda: next(iter(out.glob("*.live")), None) if out.exists() else None, 60)
        assert sock is not None, "the live feed is offered beside the log"
        st = os.lstat(sock)
        assert (st.st_uid, st.st_mode & 0o777) == (USER, 0o600)
        log = sock.with_suffix(".jsonl")
        assert os.stat(log).st_uid == USER
        plain = subprocess.Popen(tracer_cmd("tail", str(log)), user=USER, group=USER, extra_groups=[],
                                 cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"})
        assert "tracer tail" in plain.stdout.readline()
        t = tmux_factory("tail")
        t.start(f"cd / && setpriv --reuid={USER} --regid={USER} --clear-groups -- "
                + " ".join(_q(a) for a in tracer_cmd("tail", str(log))), dict(os.environ))
        t.wait(lambda s: "in flight · live" in s, 60)
        go.touch()
        mid = t.wait(lambda s: "tailed #0" in s and len(words_in(s)) >= 5 and "so far" in s, 60)
        assert max(words_in(mid)) < 160
        end = t.wait(lambda s: t.finished() and "✓ #2" in s, 90)
        assert tracer.wait(60) == 0
        text, err = plain.communicate(timeout=30)
        assert plain.returncode == 0, err
    finally:
        if tracer.poll() is None:
            tracer.kill()
    assert not sock.exists(), "the feed's socket is gone with the tracer"
    recs = read_log(out)
    for n, rec in ((1, recs[0]), (2, recs[1])):
        usage = reconstruct(rec["response"]["body_raw"]).message["usage"]
        assert f"out {usage['output_tokens']:,}" in end
        lines = text.splitlines()
        start = next(i for i, l in enumerate(lines) if l.startswith(f"→ #{n} ") and f"tailed #{n - 1}" in l)
        done = next(i for i, l in enumerate(lines) if l.startswith(f"✓ #{n} "))
        assert any("w001" in l for l in lines[start:done]), "streamed before the call finished"
        assert f"out {usage['output_tokens']:,}" in lines[done + 1]
    assert "EXIT=0" in t.done.read_text()


def _q(s: str) -> str:
    import shlex
    return shlex.quote(str(s))
