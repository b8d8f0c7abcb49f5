"""Forked children that send a request the moment they exist (no exec): for each round the parent
opens a TLS connection, then forks; the child writes a Messages API request on the inherited
connection within microseconds of the fork, reads the answer and exits. The parent never uses the
connection. Prints one line per child: "<pid> <x-mock-record-id> <µs from fork() to the write>".

usage: fork_client.py BASE_URL CAFILE ROUNDS
"""
import json
import os
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit

base, cafile, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urlsplit(base)
ctx = ssl.create_default_context(cafile=cafile)
body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": False,
                   "messages": [{"role": "user", "content": "hello from a forked child"}]}).encode()
req = (f"POST /v1/messages HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\ncontent-type: application/json\r\n"
       f"x-api-key: sk-ant-api03-forkforkforkfork\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
       ).encode() + body
for _ in range(rounds):
    conn = ctx.wrap_socket(socket.create_connection((u.hostname, u.port)), server_hostname=u.hostname)
    t0 = time.monotonic_ns()
    pid = os.fork()
    if pid == 0:
        t1 = time.monotonic_ns()
        conn.sendall(req)
        got = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except (ssl.SSLError, OSError):
                break
            if not chunk:
                break
            got += chunk
        rid = ""
        for line in got.split(b"\r\n"):
            if line.lower().startswith(b"x-mock-record-id:"):
                rid = line.split(b":", 1)[1].strip().decode()
        print(os.getpid(), rid, (t1 - t0) // 1000, flush=True)
        os._exit(0 if got.startswith(b"HTTP/1.1 200") else 1)
    os.close(conn.detach())             # the parent's copy: no TLS close_notify
    _, status = os.waitpid(pid, 0)
    if status:
        sys.exit(f"child {pid} failed: {status}")
