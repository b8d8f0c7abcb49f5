"""Real eBPF, real clients: tracer follows process trees and processes in other mount namespaces.

`tracer run` follows every process its command starts (fork, vfork, exec, any depth); a new
program is held stopped until its probes are in place, and so is a forked child of a process with
TLS probes. `tracer attach --children` does the same below a running process, `--cgroup` for a
cgroup's processes. Every file is reached through the process' own view of the file system.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (CLIENTS, assert_pair_matches, client_env, curl_client, node_client,
                                        py_client, read_log, run_traced, start_attach, tracer_cmd, wait_for)
from tracer.processes.procinfo import read_cmdline

NODE = shutil.which("node")
SSL_LIB = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")


def served_since(mock, t0: float) -> list[dict]:
    return [r for r in mock.records() if r["arrival"] >= t0 and r["path"] == "/v1/messages"]


def logged_ids(recs: list[dict]) -> list[str]:
    return sorted(r["response"]["headers"]["x-mock-record-id"] for r in recs if r["response"])


def tree(stderr: str) -> list[str]:
    """The process lines of the end-of-run summary."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"processes \(\d+ traced\):", line):
            return [l for l in lines[i + 1:] if not l.startswith(("log:", "html:"))]
    return []


def line_of(stderr: str, pid: int) -> str:
    for line in tree(stderr):
        if re.match(rf"^[\s│├└─]*{pid} ", line):
            return line
    raise AssertionError(f"pid {pid} not in the summary:\n{stderr}")


@pytest.fixture(scope="module")
def fast_clients(tmp_path_factory) -> dict[str, Path]:
    """tests/integration/clients/fast_client.c built against the system OpenSSL, dynamically (libssl
    loaded by ld.so after exec) and statically (OpenSSL inside the executable)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (scripts/bootstrap.sh installs gcc and libssl-dev)")
    d = tmp_path_factory.mktemp("fast")
    out = {}
    for kind, extra in (("dynamic", []), ("static", ["-static", "-lpthread"])):
        exe = d / f"fast_client_{kind}"
        subprocess.run([cc, "-O2", "-o", str(exe), str(CLIENTS / "fast_client.c"), "-lssl", "-lcrypto", *extra],
                       check=True, capture_output=True)
        out[kind] = exe
    return out


def test_shell_script_with_python_node_and_curl(mock, tmp_path):
    """One shell script runs a CPython, a Node and a curl client, one after the other: every call
    is logged with its process, command line and parent chain; the summary lists each process."""
    if NODE is None:
        pytest.skip("node not installed")
    q = lambda args: " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)   # noqa: E731
    script = "set -e\n" + "\n".join(q(c) for c in (py_client(mock, "--stream", "--json"),
                                                     node_client(mock), curl_client(mock)))
    t0 = time.time()
    p, recs = run_traced(["sh", "-c", script], tmp_path / "log", env=client_env(mock))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "losses: none" in p.stderr, p.stderr
    served = served_since(mock, t0)
    assert len(served) >= 5                         # 2 python, 1+ node, 2 curl
    assert logged_ids(recs) == sorted(str(r["id"]) for r in served)
    by_comm: dict[str, list[dict]] = {}
    for r in recs:
        assert_pair_matches(mock, r)
        proc = r["tracer"]["process"]
        assert proc["pid"] == r["tracer"]["pid"]
        assert proc["chain"][0]["command"].startswith("sh -c set -e")
        assert proc["chain"][-1]["pid"] == proc["pid"] and len(proc["chain"]) == 2
        assert proc["chain_text"].startswith("sh -c set -e") and " → " in proc["chain_text"]
        exe = os.path.basename(proc["exe"])
        by_comm.setdefault("python3" if exe.startswith("python3") else exe, []).append(r)
    assert sorted(by_comm) == ["curl", "node", "python3"], sorted(by_comm)
    assert "py_client.py" in by_comm["python3"][0]["tracer"]["process"]["command"]
    assert "node_client.mjs" in by_comm["node"][0]["tracer"]["process"]["command"]
    # the key on curl's command line is redacted like a header value
    curl_cmd = by_comm["curl"][0]["tracer"]["process"]["command"]
    assert "x-api-key: sk-ant-api..." in curl_cmd and "curlsecretcurlsecret" not in curl_cmd
    assert b"curlsecretcurlsecret" not in next((tmp_path / "log").glob("*.jsonl")).read_bytes()
    for r in recs:
        line = line_of(p.stderr, r["tracer"]["pid"])
        assert "(probed" in line and "held until probed" in line, line
    assert re.search(r"libssl\.so\.3 \(probed", line_of(p.stderr, by_comm["curl"][0]["tracer"]["pid"]))
    # node's OpenSSL: in the node executable (nodesource, official builds) or the system libssl (Debian)
    assert re.search(r"openssl in \S+ \(probed", line_of(p.stderr, by_comm["node"][0]["tracer"]["pid"]))


def test_exec_then_request_at_once_20_times(mock, tmp_path, fast_clients):
    """A program that sends its request as soon as it runs is probed before its first instruction
    (held at exec): 20 runs of each build of the C client in a row, every request logged."""
    port = mock.url.rsplit(":", 1)[1]
    loop = (f"for i in $(seq 20); do {fast_clients['dynamic']} {port} || exit 1; "
            f"{fast_clients['static']} {port} || exit 1; done")
    t0 = time.time()
    p, recs = run_traced(["sh", "-c", loop], tmp_path / "log", env=client_env(mock), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = [l.split() for l in p.stdout.splitlines()]
    assert len(out) == 40
    delays_us = [int(us) for _, us in out]
    print(f"fast_client: first SSL_write {min(delays_us)}..{max(delays_us)} µs after main() "
          f"(median {sorted(delays_us)[20]})")
    assert logged_ids(recs) == sorted(rid for rid, _ in out) == sorted(str(r["id"]) for r in served_since(mock, t0))
    assert all(r["tracer"]["complete"] for r in recs)
    assert len({r["tracer"]["pid"] for r in recs}) == 40
    assert "losses: none" in p.stderr, p.stderr
    static = [r for r in recs if r["tracer"]["process"]["exe"].endswith("fast_client_static")]
    assert len(static) == 20
    assert f"openssl in {fast_clients['static']} (probed)" in line_of(p.stderr, static[0]["tracer"]["pid"])


def test_forked_children_write_at_once_20_times(mock, tmp_path):
    """fork() without exec: each child writes a request on a TLS connection it inherited, as soon as
    fork() returns. A child is held on its way out of fork() until its probes are in place: all 20
    requests logged, each under the child's pid."""
    t0 = time.time()
    p, recs = run_traced(["/usr/bin/python3", str(CLIENTS / "fork_client.py"), mock.url, str(mock.ca_path), "20"],
                         tmp_path / "log", env=client_env(mock), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    kids = [l.split() for l in p.stdout.splitlines()]
    assert len(kids) == 20
    print("fork_client: request written", sorted(int(us) for *_, us in kids)[10], "µs after fork (median)")
    assert logged_ids(recs) == sorted(rid for _, rid, _ in kids) == sorted(str(r["id"]) for r in served_since(mock, t0))
    pid_of = {r["response"]["headers"]["x-mock-record-id"]: r["tracer"]["pid"] for r in recs}
    held = 0
    for pid, rid, _ in kids:
        assert pid_of[rid] == int(pid)
        # held on its way out of fork(), unless tracer had probed it even before that
        held += "held until probed" in line_of(p.stderr, int(pid))
    print(f"{held} of 20 children were held until probed")
    for r in recs:
        assert_pair_matches(mock, r)
        assert r["tracer"]["process"]["ppid"] == r["tracer"]["process"]["chain"][0]["pid"]
    assert "losses: none" in p.stderr, p.stderr


def test_attach_children_of_a_running_shell(mock, tmp_path):
    """`attach --pid SHELL --children`: the clients the shell starts after the attach are traced."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    script = (f"read x < {fifo}\n/usr/bin/python3 {CLIENTS / 'py_client.py'} {mock.url} {mock.ca_path} --json\n"
              + " ".join("'" + a + "'" if " " in a or "{" in a else a for a in curl_client(mock)))
    sh = subprocess.Popen(["sh", "-c", script], env=client_env(mock), stdout=subprocess.PIPE, text=True)
    t0 = time.time()
    try:
        tr, _, _ = start_attach(sh.pid, tmp_path / "log", "--children")
        with open(fifo, "w") as f:
            f.write("go\n")
        sh.wait(timeout=60)
        _, err = tr.communicate(timeout=60)
    finally:
        sh.kill()
    assert tr.returncode == 0, err
    recs = read_log(tmp_path / "log")
    assert len(recs) == 3 and logged_ids(recs) == sorted(str(r["id"]) for r in served_since(mock, t0))
    for r in recs:
        assert_pair_matches(mock, r)
        assert r["tracer"]["process"]["chain"][0]["pid"] == sh.pid
    assert "losses: none" in err, err


def test_private_libssl_in_another_mount_namespace(mock, tmp_path):
    """`unshare -m` with a copy of libssl bind-mounted over the system path: curl inside maps the
    copy, and the probes go on the copy (its own inode), never on the host's same-named file."""
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) not installed")
    copy = tmp_path / "libssl.so.3"
    shutil.copy2(SSL_LIB, copy)
    ino = os.stat(copy).st_ino
    assert ino != os.stat(SSL_LIB).st_ino
    curl = " ".join("'" + a + "'" if " " in a or "{" in a else a for a in curl_client(mock))
    script = f"set -e\nmount --bind {copy} {SSL_LIB}\nstat -c %i {SSL_LIB}\n{curl}\n"
    t0 = time.time()
    p, recs = run_traced(["unshare", "-m", "sh", "-c", script], tmp_path / "log", env=client_env(mock))
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split()[0] == str(ino)             # inside, the path is the copy
    assert len(recs) == 2 and logged_ids(recs) == sorted(str(r["id"]) for r in served_since(mock, t0))
    for r in recs:
        assert_pair_matches(mock, r)
    line = line_of(p.stderr, recs[0]["tracer"]["pid"])
    assert f"{SSL_LIB} [its mount namespace's file: device" in line and f"inode {ino}]" in line, line
    assert "losses: none" in p.stderr


def test_deleted_library_is_still_probed(tmp_path):
    """A TLS library deleted after the process mapped it (an upgrade under a running program) is
    reached through /proc/PID/map_files, not by its name, and probed."""
    copy = tmp_path / "libssl.so.3"
    shutil.copy2(SSL_LIB, copy)
    code = (f"import ctypes, os, sys; ctypes.CDLL({str(copy)!r}); os.unlink({str(copy)!r}); "
            "sys.stdout.write('ok\\n'); sys.stdout.flush(); sys.stdin.read()")
    proc = subprocess.Popen(["/usr/bin/python3", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "ok\n"
        tr, _, lines = start_attach(proc.pid, tmp_path / "log")
        proc.stdin.close()
        proc.wait(timeout=30)
        _, err = tr.communicate(timeout=60)
    finally:
        proc.kill()
    err = "".join(lines) + err
    assert f"probes on {copy} (openssl)" in err, err
    assert f"openssl in {copy} (deleted) (probed)" in line_of(err, proc.pid)


def test_setuid_exec_is_not_traced(mock, tmp_path):
    """A traced process that execs a setuid program (uids 65534 0 0 0) is dropped before the new
    program runs: its probes go, its request is not logged, the summary says why; the same program
    without the setuid bit is traced."""
    shared = Path(tempfile.mkdtemp(prefix="tracer-suid-"))
    # tracer creates the log as the invoking user (tracer/userfiles.py): a directory of theirs
    out = Path(tempfile.mkdtemp(prefix="tracer-suid-out-"))
    os.chown(out, 65534, 65534)
    try:
        os.chmod(shared, 0o755)
        suid = shared / "curl-suid"
        shutil.copy2(shutil.which("curl"), suid)
        os.chown(suid, 0, 0)
        os.chmod(suid, 0o4755)
        ca = shared / "ca.pem"
        shutil.copy(mock.ca_path, ca)
        os.chmod(ca, 0o644)
        args = curl_client(mock)
        args[args.index(str(mock.ca_path))] = str(ca)
        args[args.index("--next"):] = []                # one request each
        plain = " ".join("'" + a + "'" if " " in a or "{" in a else a for a in args)
        script = f"set -e\n{suid} {plain[len('curl '):]}\n{plain}\n"
        env = client_env(mock, SUDO_UID="65534", SUDO_GID="65534", SUDO_USER="nobody")
        t0 = time.time()
        p = subprocess.run(tracer_cmd("run", "-o", str(out / "log"), "--quiet", "--no-html", "--",
                                      "sh", "-c", script), env=env, capture_output=True, text=True,
                           timeout=120, cwd="/")
        assert p.returncode == 0, p.stderr[-3000:]
        served = served_since(mock, t0)
        assert len(served) == 2
        recs = read_log(out / "log")
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    assert len(recs) == 1, [r["tracer"]["process"]["command"] for r in recs]
    assert recs[0]["tracer"]["process"]["exe"] == shutil.which("curl")
    assert re.search(r"not traced: exec'd \S*curl-suid: pid \d+ runs with uids 65534 0 0 0", p.stderr), p.stderr
    assert re.search(r"pid \d+: tracing stopped: exec'd \S*curl-suid", p.stderr), p.stderr
    assert "losses: not traced: 1 process(es)" in p.stderr


def _wait_state(pid: int, state: str, timeout: float = 5.0) -> bool:
    def now():
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == state
        except (OSError, IndexError):
            return False
    return bool(wait_for(now, timeout))


def _held_child_setup(tmp_path, marker: str):
    """`tracer run -- sh -c 'read x < FIFO; exec python3 -c ...'`, returned once sh waits on the FIFO."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    script = f"read x < {fifo}; exec /usr/bin/python3 -c 'print(\"{marker}\")'"
    tr = subprocess.Popen(tracer_cmd("run", "-o", str(tmp_path / "log"), "--quiet", "--no-html", "--",
                                     "sh", "-c", script), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)

    def sh_waiting():
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    cmd = Path(f"/proc/{d}/cmdline").read_bytes()
                except OSError:
                    continue
                if cmd.startswith(b"sh\0-c\0read x < " + str(fifo).encode()):
                    return int(d)
        return None
    sh = wait_for(sh_waiting, 60)
    assert sh, "the traced shell never started"
    assert _wait_state(sh, "S")
    return tr, fifo, sh


def _kill_tree(tr):
    try:
        os.kill(tr.pid, signal.SIGCONT)
    except OSError:
        pass
    tr.kill()
    tr.wait(timeout=30)


def test_tracer_killed_while_a_program_is_held(tmp_path):
    """tracer dies (SIGKILL) while the kernel side holds a freshly exec'd program: its watchdog
    resumes the program, which runs to its end."""
    tr, fifo, sh = _held_child_setup(tmp_path, "ran after tracer died")
    try:
        os.kill(tr.pid, signal.SIGSTOP)            # tracer can no longer let it go...
        with open(fifo, "w") as f:
            f.write("go\n")                        # ...when sh execs python
        assert _wait_state(sh, "T"), "the exec'd program was not held"
        time.sleep(0.3)
        assert _wait_state(sh, "T", 0.1)
        tr.kill()
        tr.wait(timeout=30)
        out = tr.stdout.read()
        assert wait_for(lambda: not os.path.exists(f"/proc/{sh}") or _wait_state(sh, "Z", 0.05), 10), \
            "the held program was never resumed"
        assert "ran after tracer died" in out
    finally:
        _kill_tree(tr)


def test_nothing_held_while_tracer_does_not_answer(tmp_path):
    """A tracer that shows no sign of life (stopped for longer than the grace period) holds nothing:
    the program runs at once and the summary says it was probed late."""
    tr, fifo, sh = _held_child_setup(tmp_path, "ran while tracer was stopped")
    try:
        os.kill(tr.pid, signal.SIGSTOP)
        time.sleep(2.5)                            # the kernel side's grace period is 2 s
        with open(fifo, "w") as f:
            f.write("go\n")
        assert wait_for(lambda: not os.path.exists(f"/proc/{sh}") or _wait_state(sh, "Z", 0.05), 10), \
            "the program was held although tracer was not answering"
        os.kill(tr.pid, signal.SIGCONT)
        out, err = tr.communicate(timeout=60)
    finally:
        _kill_tree(tr)
    assert tr.returncode == 0, err
    assert "ran while tracer was stopped" in out
    assert "not held at exec (tracer was not responsive)" in err, err
    assert "losses: ran before tracer could probe them: 1 process(es)" in err, err


def test_interactive_shell_jobs_are_not_shown_stopped(mock, tmp_path):
    """attach --children to an interactive bash (job control): its commands are not held at exec -
    bash would report them as stopped jobs - and are still traced."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve("/bin/bash", ["bash", "--norc", "--noprofile", "-i"],
                  {"PS1": "PROMPT$ ", "TERM": "dumb", "PATH": "/usr/bin:/bin", **client_env(mock)})
    out = b""

    def pump(until: bytes, timeout: float = 60) -> None:
        nonlocal out
        end = time.monotonic() + timeout
        while until not in out and time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    return
    tr = None
    try:
        pump(b"PROMPT$ ")
        t0 = time.time()
        tr, _, _ = start_attach(pid, tmp_path / "log", "--children")
        # the command starts its traffic a moment after it starts (as claude does, after seconds of
        # start-up): not held, it is probed in that moment
        go = tmp_path / "go"
        cmd = " ".join(py_client(mock, "--json", "--go-file", str(go)))
        os.write(fd, f"/bin/echo hello; {cmd}; echo after-$((40+2))\n".encode())
        wait_for(lambda: any(str(go) in " ".join(read_cmdline(int(p)))
                             for p in os.listdir("/proc") if p.isdigit()), timeout=30)
        time.sleep(1.0)
        go.touch()
        pump(b"after-42")
        os.write(fd, b"jobs; exit\n")
        pump(b"exit")
        tr.send_signal(signal.SIGINT)
        _, err = tr.communicate(timeout=60)
    finally:
        if tr is not None and tr.poll() is None:
            tr.kill()
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
    text = out.decode(errors="replace")
    assert "Stopped" not in text, text
    assert "hello" in text and "after-42" in text
    recs = read_log(tmp_path / "log")
    assert len(recs) == 1 and logged_ids(recs) == sorted(str(r["id"]) for r in served_since(mock, t0)), err
    assert "not held at exec (its parent is a job-control shell)" in err, err


def _cgroup2_root() -> Path | None:
    from tracer.processes.cgroup import cgroup2_mounts
    for m in cgroup2_mounts():
        if os.access(m, os.W_OK):
            return Path(m)
    return None


def test_cgroup_processes_present_and_future(mock, tmp_path):
    """`attach --cgroup DIR`: a shell already in the cgroup and the clients it starts later are
    traced; a client outside the cgroup at the same time is not."""
    root = _cgroup2_root()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy")
    cg = root / f"tracer-test-{os.getpid()}-{time.monotonic_ns()}"
    cg.mkdir()
    fifo_in, fifo_out = tmp_path / "in", tmp_path / "out"
    os.mkfifo(fifo_in)
    os.mkfifo(fifo_out)
    client = " ".join(py_client(mock, "--json"))
    inside = subprocess.Popen(["sh", "-c", f"read x < {fifo_in}; {client}"], env=client_env(mock),
                              stdout=subprocess.PIPE, text=True)
    outside = subprocess.Popen(["sh", "-c", f"read x < {fifo_out}; {client}"], env=client_env(mock),
                               stdout=subprocess.PIPE, text=True)
    tr = None
    try:
        (cg / "cgroup.procs").write_text(f"{inside.pid}\n")
        t0 = time.time()
        tr, _, lines = start_attach([], tmp_path / "log", "--cgroup", str(cg))
        for fifo in (fifo_in, fifo_out):
            with open(fifo, "w") as f:
                f.write("go\n")
        inside.wait(timeout=60)
        outside.wait(timeout=60)
        time.sleep(0.5)
        tr.send_signal(signal.SIGINT)
        _, err = tr.communicate(timeout=60)
    finally:
        for p in (inside, outside):
            p.kill()
        if tr is not None and tr.poll() is None:
            tr.kill()
        wait_for(lambda: not (cg / "cgroup.procs").read_text().strip(), 10)
        cg.rmdir()
    inside_id = json.loads(inside.stdout.read().splitlines()[0])["record"]
    outside_id = json.loads(outside.stdout.read().splitlines()[0])["record"]
    assert tr.returncode == 0, err
    recs = read_log(tmp_path / "log")
    assert logged_ids(recs) == [str(inside_id)], (inside_id, outside_id, err)
    assert recs[0]["tracer"]["process"]["chain"][0]["pid"] == inside.pid
    assert f"every process in cgroup {cg}" in "".join(lines)


def test_no_children_traces_the_command_only(mock, tmp_path):
    """`--no-children`: the command's own calls are logged, its children's are not."""
    curl = " ".join("'" + a + "'" if " " in a or "{" in a else a for a in curl_client(mock))
    py = " ".join(py_client(mock, "--json"))
    script = f"{curl}\nexec {py}"          # curl is a child; python replaces the shell (same process)
    t0 = time.time()
    p, recs = run_traced(["sh", "-c", script], tmp_path / "log", env=client_env(mock), extra=("--no-children",))
    assert p.returncode == 0, p.stderr[-3000:]
    served = served_since(mock, t0)
    assert len(served) == 3
    assert len(recs) == 1 and recs[0]["tracer"]["process"]["exe"].startswith("/usr/bin/python3")
    assert len(tree(p.stderr)) == 1, p.stderr


def test_held_program_killed_before_tracer_resumes_it(tmp_path):
    """A held program that is killed (SIGKILL works on a stopped process) is simply gone: tracer
    takes its exit, says so, and ends with its exit status."""
    tr, fifo, sh = _held_child_setup(tmp_path, "never printed")
    try:
        os.kill(tr.pid, signal.SIGSTOP)
        with open(fifo, "w") as f:
            f.write("go\n")
        assert _wait_state(sh, "T"), "the exec'd program was not held"
        os.kill(sh, signal.SIGKILL)
        os.kill(tr.pid, signal.SIGCONT)
        out, err = tr.communicate(timeout=60)
    finally:
        _kill_tree(tr)
    assert tr.returncode == 128 + signal.SIGKILL, err
    assert "never printed" not in out
    assert re.search(rf"{sh} .*\(.*exited\)", line_of(err, sh)), err
