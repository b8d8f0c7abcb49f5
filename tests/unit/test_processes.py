"""The process-tree bookkeeping without root: command lines in logs, resolving paths inside another
root, the tree and the accounting in the summary, cgroup paths."""

from __future__ import annotations

import os

import pytest

from tracer.processes import cgroup, resolve
from tracer.processes.table import Probed, Proc, ProcessTable, short_command
from tracer.sinks.redact import redact_argv
from tracer.sinks.summary import format_summary, process_problems


@pytest.mark.parametrize("argv,secret", [
    (["curl", "-H", "x-api-key: sk-ant-api03-abcdefghijklmnop"], "abcdefghijklmnop"),
    (["curl", "-H", "Authorization: Bearer tok-0123456789abcdef"], "0123456789abcdef"),
    (["tool", "--api-key", "s3cr3t-value-1234"], "s3cr3t-value-1234"),
    (["tool", "--token=abcdef0123456789"], "abcdef0123456789"),
    (["env", "ANTHROPIC_API_KEY=sk-ant-0123456789abcdef", "claude"], "0123456789abcdef"),
    (["python3", "agent.py", "sk-ant-api03-0123456789abcdefgh"], "0123456789abcdefgh"),
    (["sh", "-c", "curl -H 'x-api-key: sk-ant-api03-zyxwvutsrqponmlk' https://h\nexport TOKEN=qwertyuiop123"],
     "zyxwvutsrqponmlk"),
    (["sh", "-c", "export GH_TOKEN=qwertyuiop123456; run"], "qwertyuiop123456"),
    (["curl", "-d", '{"model":"m","api_key":"abcdefghijkl0987"}'], "abcdefghijkl0987"),
])
def test_secrets_on_command_lines_are_redacted(argv, secret):
    out = " ".join(redact_argv(argv))
    assert secret not in out
    assert out.split()[0] == argv[0]


@pytest.mark.parametrize("argv", [
    ["claude", "-p", "say hi", "--max-tokens", "5", "--output-format", "stream-json"],
    ["curl", "-d", '{"max_tokens": 64, "stream": true}', "https://127.0.0.1:8443/v1/messages"],
    ["python3", "-m", "http.server", "--bind", "127.0.0.1"],
    ["make", "-j4", "KEYBOARD=us"],
])
def test_harmless_command_lines_are_kept(argv):
    assert redact_argv(argv) == argv


def test_short_command_drops_directories():
    assert short_command(["/usr/bin/python3", "/home/u/agent.py", "--x", "/tmp/y"]) == \
        "python3 agent.py --x /tmp/y"
    assert short_command([], "kworker") == "[kworker]"


def _fake_root(tmp_path):
    """A directory laid out like a container's root, with absolute and relative symlinks."""
    root = tmp_path / "root"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")                                     # merged /usr
    real = root / "usr/lib/x86_64-linux-gnu/libssl.so.3"
    real.write_bytes(b"\x7fELF-not-really")
    (root / "usr/lib/x86_64-linux-gnu/libssl.so").symlink_to("/usr/lib/x86_64-linux-gnu/libssl.so.3")
    (root / "usr/lib/escape").symlink_to("../../../../../../etc")
    (root / "loop").symlink_to("/loop")
    return root, real


def test_resolve_in_root_keeps_absolute_links_inside(tmp_path):
    root, real = _fake_root(tmp_path)
    got = resolve.resolve_in_root(str(root), "/lib/x86_64-linux-gnu/libssl.so")
    assert got is not None and os.path.samefile(got, real)
    assert got.startswith(str(root) + "/")
    # '..' stops at the root: /etc inside the fake root does not exist
    assert resolve.resolve_in_root(str(root), "/usr/lib/escape/passwd") is None
    assert resolve.resolve_in_root(str(root), "/loop") is None                 # link loop
    assert resolve.resolve_in_root(str(root), "/usr/lib/missing.so") is None


def _proc(pid, ppid, argv, **kw) -> Proc:
    p = Proc(pid, ppid=ppid, argv=argv, comm=os.path.basename(argv[0]))
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def _table() -> ProcessTable:
    t = ProcessTable()
    t.procs[10] = _proc(10, 1, ["python3", "agent.py"])
    t.procs[11] = _proc(11, 10, ["/opt/claude/claude", "-p", "hi"], stops=1, pairs=3)
    t.procs[11].files[(1, 2)] = Probed("/opt/claude/claude", "/proc/11/map_files/1-2", "boringssl",
                                       {"SSL_read": "cache"}, True, 1, 2)
    t.procs[12] = _proc(12, 11, ["bash", "-c", "echo hi"], alive=False)
    t.procs[13] = _proc(13, 10, ["/usr/bin/sudo", "x"], traced=False, why_not="exec'd /usr/bin/sudo: setuid")
    return t


def test_record_info_chain():
    info = _table().record_info(11)
    assert info["chain"] == [{"pid": 10, "command": "python3 agent.py"},
                             {"pid": 11, "command": "/opt/claude/claude -p hi"}]
    assert info["chain_text"] == "python3 agent.py → claude -p hi"
    assert info["ppid"] == 10


def test_records_keep_the_program_that_made_them(monkeypatch):
    """A process that exec'd: a record whose first byte came before the exec names the earlier
    program (and its ancestors as they were then) even when it is built afterwards - the later
    program's command line (a setuid one's, say) never reaches a record it did not make."""
    from tracer.processes import procinfo
    t = _table()
    new = {11: ["/usr/bin/sudo-like", "SECRET-ARGS"], 10: ["bash", "wrapper.sh"]}
    monkeypatch.setattr(procinfo, "read_cmdline", lambda pid: new.get(pid, []))
    monkeypatch.setattr(procinfo, "read_exe", lambda pid: "/usr/bin/sudo-like" if pid == 11 else "")
    monkeypatch.setattr(procinfo, "read_stat", lambda pid: None)
    now_before = t.record_info(11, 0)
    t.exec_(t.procs[11], 1_000)
    before = t.record_info(11, 999)
    assert before["command"] == "/opt/claude/claude -p hi" and before == now_before
    assert "SECRET" not in str(before)
    after = t.record_info(11, 1_000)
    assert after["command"] == "/usr/bin/sudo-like SECRET-ARGS"
    assert t.record_info(11, 0) == after                      # no time: the program running now
    # the parent exec'd later: records from before keep its earlier command in their chains
    t.exec_(t.procs[10], 2_000)
    assert t.record_info(11, 1_500)["chain_text"] == "python3 agent.py → sudo-like SECRET-ARGS"
    assert t.record_info(11, 2_500)["chain_text"] == "bash wrapper.sh → sudo-like SECRET-ARGS"
    assert t.record_info(11, 500)["chain_text"] == "python3 agent.py → claude -p hi"


def test_tree_lines_show_every_process():
    lines = _table().tree_lines()
    assert lines[0].startswith("  10 python3 agent.py — no TLS library in its mappings; pairs logged: 0")
    assert "11 /opt/claude/claude -p hi — boringssl in /opt/claude/claude (probed); pairs logged: 3 " \
           "(held until probed)" in lines[1]
    assert lines[2].strip().startswith("│  └─ 12 bash -c echo hi") and "(exited)" in lines[2]
    assert "13 /usr/bin/sudo x — not traced: exec'd /usr/bin/sudo: setuid" in lines[3]


def test_losses_name_processes_whose_tls_was_not_probed():
    t = _table()
    t.procs[14] = _proc(14, 10, ["node", "x.js"], problems=["/app/node: cannot reach the mapped file"])
    t.procs[15] = _proc(15, 10, ["curl", "x"], unprobed="exec'd /usr/bin/curl and ended before tracer could probe it")
    problems = process_problems(t.summary())
    assert any(p.startswith("TLS code not probed in 1 process(es): pid 14") for p in problems)
    assert any(p.startswith("ran before tracer could probe them: 1 process(es): pid 15") for p in problems)
    assert any(p.startswith("not traced: 1 process(es): pid 13") for p in problems)
    s = {"pairs_logged": 3, "pairs_filtered_out": 0, "pairs_incomplete": 0, "pairs_seen": 3, "connections": 1,
         "bytes_captured": 1, "ring_records": 1, "duration_s": 1, "log": "x", "processes": t.summary(),
         "process_tree": t.tree_lines()}
    text = format_summary(s)
    assert "losses: none" not in text and "processes (5 traced):" in text


def test_cgroup_paths(tmp_path):
    with pytest.raises(Exception) as e:
        cgroup.resolve(str(tmp_path))
    assert "cgroup" in str(e.value)


def test_a_file_unreachable_because_the_process_ended_is_no_probing_problem(monkeypatch):
    """A followed process (git under Claude Code, say) that exits while tracer looks at a library it
    mapped: the file cannot be reached because the process is gone - the prober reports the process
    gone (its EXIT record follows), it does not list a TLS library it could not probe. The same
    unreachable file in a live process stays a problem."""
    from tracer.processes import procinfo, prober, resolve
    unreachable = resolve.MappedFile("/usr/lib/libpcre2-8.so.0", 8, 99, "",
                                     "cannot reach the mapped file: /proc/7/map_files/1-2: No such process")
    monkeypatch.setattr(resolve, "mapped_files", lambda pid: [unreachable])
    p = prober.Prober(probes=None, locator=None)
    gone = Proc(7)
    monkeypatch.setattr(procinfo, "alive", lambda pid: False)
    with pytest.raises(OSError):
        p.probe(gone)
    assert gone.problems == []
    running = Proc(8)
    monkeypatch.setattr(procinfo, "alive", lambda pid: True)
    p.probe(running)
    assert running.problems == [f"/usr/lib/libpcre2-8.so.0: {unreachable.error}"]


def test_a_process_that_ends_while_its_probes_are_attached_is_gone_not_unprobed(monkeypatch, tmp_path):
    """CI (arm64 guest, Claude Code 2.1.250): a vfork child of claude exited while tracer attached its
    uprobes; the kernel's "no such process" was listed as "NOT PROBED: attaching uprobes ... failed" -
    a loss in the summary. The prober reports the process gone (its EXIT record follows); the same
    failure in a live process stays a problem."""
    from types import SimpleNamespace

    from tracer.errors import TracerError
    from tracer.processes import procinfo, prober, resolve

    lib = tmp_path / "libssl.so.3"
    lib.write_bytes(b"\x7fELF")
    st = lib.stat()
    mapped = resolve.MappedFile(str(lib), st.st_dev, st.st_ino, str(lib), "")
    monkeypatch.setattr(resolve, "mapped_files", lambda pid: [mapped])
    monkeypatch.setattr(prober, "check_before_attach", lambda fd, loc, display: None)
    located = SimpleNamespace(library="openssl", functions={})
    locator = SimpleNamespace(locate_file=lambda path, display: located, errors={})

    def attach(pid, path, loc):
        raise TracerError(f"attaching uprobes to {path} (pid {pid}) failed: no such process")

    p = prober.Prober(probes=SimpleNamespace(attach=attach), locator=locator)
    monkeypatch.setattr(procinfo, "alive", lambda pid: False)
    gone = Proc(7)
    with pytest.raises(OSError):
        p.probe(gone)
    assert gone.problems == [] and gone.files == {}
    monkeypatch.setattr(procinfo, "alive", lambda pid: True)
    running = Proc(8)
    assert p.probe(running) == 0
    assert running.problems == [f"{lib}: attaching uprobes to {lib} (pid 8) failed: no such process"]


def test_a_process_that_ends_between_its_pin_and_the_checks_exited_and_was_not_refused():
    """CI (arm64 guest, Claude Code): a child that exited after tracer pinned it but before the ptrace
    rule read its /proc entry was listed as "not traced: no such process" - a loss in the summary.
    It exited; a refusal is only for a process that lives."""
    import subprocess
    from types import SimpleNamespace

    from tracer.processes.follower import Follower

    child = subprocess.Popen(["sleep", "30"])
    proc = ProcessTable().add(child.pid, ppid=os.getpid(), origin="child")

    def admit(pid):
        child.kill()
        child.wait()
        return False, f"no such process: {pid}"

    nothing = SimpleNamespace(detach_pid=lambda pid: None, forget=lambda pid: None)
    fake = SimpleNamespace(pins={}, session=SimpleNamespace(admit=admit, probes=nothing, release=lambda pid: None),
                           prober=SimpleNamespace(attacher=nothing), kernel=nothing, _debug=lambda msg: None)
    fake._drop = lambda p, why, alive=True: Follower._drop(fake, p, why, alive=alive)
    assert Follower._admit(fake, proc) is False
    assert proc.why_not == "it exited before tracer could look at it" and not proc.alive and not proc.traced
    summary = {"pid": proc.pid, "traced": False, "why_not": proc.why_not, "problems": [], "late": [], "tls": []}
    assert process_problems([summary]) == []
