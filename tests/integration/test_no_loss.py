"""Real eBPF, the shapes of "nothing lost, nothing hangs": a request body sent after the response
(curl -> nginx over h2; an HTTP/1.1 server that answers 401 before reading the body), 100 Continue,
a request nested too deep for orjson to write, and a tracer thread that dies."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import CLIENTS, client_env, read_log, run_traced, wait_for
from tracer.mock.certs import ensure_certs
from tracer.testing.helpers import end_process

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- curl -> nginx, h2

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    location / {{ default_type application/json; return 200 '{{"ok":true}}'; }}
  }}
}}
"""


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    """Debian's nginx on 127.0.0.1 with its own config and a self-signed certificate. `return 200`
    answers before reading the request body, as in the issue."""
    if not os.path.exists(NGINX):
        pytest.fail("nginx is not installed (scripts/bootstrap.sh installs it)")
    d = tmp_path_factory.mktemp("nginx")
    ensure_certs(d)
    for attempt in range(5):
        port = free_port()
        (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, port=port))
        proc = subprocess.Popen([NGINX, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return True
            except OSError:
                return False
        if wait_for(lambda: listening() or proc.poll() is not None, timeout=10) and proc.poll() is None:
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail("nginx did not start: " + (d / "error.log").read_text()[-2000:])
    try:
        yield f"https://127.0.0.1:{port}", d / "ca.pem"
    finally:
        end_process(proc, 10)


@pytest.mark.parametrize("how", ["data-100", "data-60k", "late-100", "late-60k"])
def test_curl_nginx_h2_post_body_sent_after_the_response(nginx, tmp_path, how):
    """nginx answers (END_STREAM) before reading the body; curl sends the body's DATA frames after
    that: the record holds the whole request body and is complete. "data": curl -d @file (whether
    the response overtakes the body is a race); "late": curl -T - with its stdin fed 0.5 s after it
    starts, so the response always comes first."""
    url, ca = nginx
    kind, size = how.split("-")
    body = json.dumps({"model": "claude-sonnet-4-5",
                       "messages": [{"role": "user", "content": "x" * (100 if size == "100" else 60_000)}]})
    (tmp_path / "body.json").write_text(body)
    curl = ["curl", "-sS", "--http2", "--cacert", str(ca), "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
            "-H", "content-type: application/json"]
    if kind == "data":
        cmd = [*curl, "--data-binary", f"@{tmp_path / 'body.json'}", f"{url}/v1/messages"]
    else:
        cmd = ["/usr/bin/python3", str(CLIENTS / "late_stdin.py"), "0.5", str(tmp_path / "body.json"),
               *curl, "-X", "POST", "-T", "-", f"{url}/v1/messages"]
    p, recs = run_traced(cmd, tmp_path / "log", env=dict(os.environ, ANTHROPIC_BASE_URL=url))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["2", "200"]
    (r,) = recs
    assert r["tracer"]["protocol"] == "h2"
    assert r["request"]["body"] == json.loads(body)
    assert r["tracer"]["request_body_bytes"] == len(body)
    assert r["response"]["body"] == {"ok": True}
    assert r["tracer"]["complete"] is True and not r["tracer"]["notes"], r["tracer"]
    assert "losses: none" in p.stderr


# ------------------------------------------------------------- HTTP/1.1: a response before the body

class EarlyServer:
    """A TLS HTTP/1.1 server that answers a request with header `x-early: NNN` as soon as its head
    has arrived, before reading its body (then reads and drops the body); `Expect: 100-continue`
    gets a 100 first; other requests are answered after their body. Keep-alive."""

    def __init__(self, certdir: Path):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(certdir / "cert.pem"), str(certdir / "key.pem"))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.bodies: list[bytes] = []
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, raw):
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as c:
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        d = c.recv(65536)
                        if not d:
                            return
                        buf += d
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    hdrs = {k.strip().lower(): v.strip() for k, _, v in
                            (line.decode().partition(":") for line in head.split(b"\r\n")[1:])}
                    n = int(hdrs.get("content-length", "0"))
                    early = hdrs.get("x-early")
                    if early:
                        self._answer(c, int(early), b'{"error":"answered before the body"}')
                    elif hdrs.get("expect", "").lower() == "100-continue":
                        c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    while len(buf) < n:
                        d = c.recv(65536)
                        if not d:
                            return
                        buf += d
                    body, buf = buf[:n], buf[n:]
                    self.bodies.append(body)
                    if not early:
                        self._answer(c, 200, b'{"got":%d}' % len(body))
        except (OSError, ssl.SSLError):
            return

    @staticmethod
    def _answer(c, status: int, body: bytes):
        c.sendall(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                  % (status, len(body), body))

    def close(self):
        self.sock.close()


EARLY_CLIENT = r"""
import json, socket, ssl, sys
port, cafile, mode, size = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = ssl.create_default_context(cafile=cafile)
c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
buf = b""
def response():
    global buf
    while b"\r\n\r\n" not in buf:
        buf += c.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    n = int(([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
             or [0])[0])   # a 100 Continue has no body
    while len(rest) < n:
        rest += c.recv(65536)
    buf = rest[n:]
    return head.split(b" ")[1].decode(), rest[:n]
def head(extra, n):
    return (b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            + extra + b"content-length: %d\r\n\r\n" % n)
body = json.dumps({"messages": [{"role": "user", "content": "b" * size}]}).encode()
if mode == "early":        # head, the server's 401, then the body in pieces
    c.sendall(head(b"x-early: 401\r\n", len(body)))
    print(response())
    for i in range(0, len(body), 16384):
        c.sendall(body[i:i + 16384])
elif mode == "continue":   # Expect: 100-continue, the 100, the body, the final response
    c.sendall(head(b"expect: 100-continue\r\n", len(body)))
    print(response())
    c.sendall(body)
    print(response())
second = b'{"second":true}'
c.sendall(head(b"", len(second)) + second)
print(response())
c.close()
"""


@pytest.fixture(scope="module")
def early_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("early")
    ensure_certs(d)
    srv = EarlyServer(d)
    yield srv, d / "ca.pem"
    srv.close()


@pytest.mark.parametrize("mode", ["early", "continue"])
def test_http1_body_after_an_early_response_or_100_continue(early_server, tmp_path, mode):
    srv, ca = early_server
    script = tmp_path / "client.py"
    script.write_text(EARLY_CLIENT)
    size = 100_000
    cmd = ["/usr/bin/python3", str(script), str(srv.port), str(ca), mode, str(size)]
    p, recs = run_traced(cmd, tmp_path / "log", extra=("--include-all-requests",))
    assert p.returncode == 0, p.stderr + p.stdout
    first, second = recs
    assert first["request"]["body"] == {"messages": [{"role": "user", "content": "b" * size}]}
    assert first["tracer"]["complete"] is True, first["tracer"]
    if mode == "early":
        assert first["response"]["status_code"] == 401
        assert first["response"]["body"] == {"error": "answered before the body"}
    else:
        assert first["response"]["status_code"] == 200 and "interim response 100" in first["note"]
    assert second["request"]["body"] == {"second": True} and second["tracer"]["complete"] is True
    assert "losses: none" in p.stderr


def test_curl_expect_100_continue(early_server, tmp_path):
    srv, ca = early_server
    body = json.dumps({"messages": [{"role": "user", "content": "c" * 50_000}]})
    (tmp_path / "b.json").write_text(body)
    cmd = ["curl", "-sS", "--http1.1", "--cacert", str(ca), "-o", "/dev/null", "-H", "expect: 100-continue",
           "-H", "content-type: application/json", "--data-binary", f"@{tmp_path / 'b.json'}",
           f"https://127.0.0.1:{srv.port}/v1/messages"]
    p, recs = run_traced(cmd, tmp_path / "log", extra=("--include-all-requests",))
    assert p.returncode == 0, p.stderr
    (r,) = recs
    assert r["request"]["body"] == json.loads(body) and r["tracer"]["complete"] is True
    assert r["response"]["body"] == {"got": len(body)}


# ------------------------------------------------------------------------- the writer never stops

NESTED_CLIENT = r"""
import http.client, json, ssl, sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
conn = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=sys.argv[2]))
for i, content in enumerate(["first", "[" * 300 + "]" * 300, "third"]):
    body = ('{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"%s"}],"deep":%s}'
            % (("n%d" % i), content if content.startswith("[") else '"%s"' % content)).encode()
    conn.request("POST", "/v1/messages", body=body, headers={"content-type": "application/json",
                                                            "x-api-key": "sk-ant-api03-secretsecret"})
    r = conn.getresponse()
    print(r.status, r.getheader("x-mock-record-id"), len(r.read()))
"""


def test_request_nested_300_levels_is_logged_between_its_neighbours(mock, tmp_path):
    """orjson reads the 300-level request body but cannot write it: the record falls back to the raw
    text, says so, and the requests before and after it are written too."""
    script = tmp_path / "nested.py"
    script.write_text(NESTED_CLIENT)
    p, recs = run_traced(["/usr/bin/python3", str(script), mock.url, str(mock.ca_path)], tmp_path / "log",
                         env=client_env(mock))
    assert p.returncode == 0, p.stderr
    assert [line.split()[0] for line in p.stdout.splitlines()] == ["200", "200", "200"]
    assert len(recs) == 3, p.stderr
    first, mid, third = recs
    assert first["request"]["body"]["deep"] == "first" and third["request"]["body"]["deep"] == "third"
    assert "tracer" in first and "serialization_fallback" not in first["tracer"]
    raw = mid["request"]["body"]
    assert isinstance(raw, str) and raw.endswith('"deep":' + "[" * 300 + "]" * 300 + "}")
    assert mid["tracer"]["serialization_fallback"] == "raw_body"
    assert "raw text" in mid["note"]
    assert "records with raw-text bodies (their JSON was not serialisable): 1" in p.stderr
    assert "FAILED" not in p.stderr


BREAK_WRITER = r"""
from tracer.sinks import jsonl
def broken(self, batch):
    raise RuntimeError("injected: the writer thread dies")
jsonl.JsonlWriter._write_batch = broken
"""
# in the tracer process (--no-deferred-parsing), and in the parsing process it starts (tracer/worker.py)
KILL_WRITER = BREAK_WRITER + "BREAK = " + repr(BREAK_WRITER) + r"""
import sys
from tracer import worker
worker.BOOT = worker.BOOT.replace("from tracer.worker import main", BREAK + "from tracer.worker import main")
from tracer.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("parsing", ["deferred", "inline"])
def test_a_dead_writer_thread_is_loud_and_fails_the_run(mock, tmp_path, parsing):
    """Any tracer thread's death - in the tracer process or in its parsing process: an error at
    once, FAILED first in the summary, records counted as lost, and exit status 70 instead of the
    command's."""
    out = tmp_path / "log"
    mode = ["--no-deferred-parsing"] if parsing == "inline" else []
    cmd = [sys.executable, "-c", KILL_WRITER, "run", *mode, "-o", str(out), "--quiet", "--no-html", "--",
           "/usr/bin/python3", str(Path(__file__).parent / "clients" / "py_client.py"), mock.url,
           str(mock.ca_path), "--count", "2"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=client_env(mock),
                       cwd=str(Path(__file__).resolve().parents[2]))
    assert p.returncode == 70, p.stderr
    assert "INTERNAL ERROR: thread tracer-jsonl died (RuntimeError: injected" in p.stderr
    summary = p.stderr[p.stderr.index("FAILED: tracer's thread tracer-jsonl died"):]
    assert "records lost (log write failures): 2" in summary
    assert "exit status 70 because tracer failed (the command exited with 0)" in p.stderr
    assert read_log(out) == []
