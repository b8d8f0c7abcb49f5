"""Who tracer works for (tracer/invoker.py), files created as that user (tracer/userfiles.py), the
ptrace rule (tracer/access.py) and terminal escaping (tracer/textsafe.py)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from tracer import access, invoker, userfiles
from tracer.errors import TracerError
from tracer.textsafe import printable

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="acting for another user needs root")
U, G = 4242, 4243


def env(uid=None, gid=None):
    e = {}
    if uid is not None:
        e["SUDO_UID"] = uid
    if gid is not None:
        e["SUDO_GID"] = gid
    return e


@root_only
@pytest.mark.parametrize("value", ["", "abc", "-1", "+4242", " 4242", "4242 ", "4_242", "0x10", "1e3",
                                   "4294967295", "99999999999", "٤٢٤٢"])
def test_parser_refuses_anything_but_a_plain_id(value):
    with pytest.raises(invoker.InvokerError, match="SUDO_UID"):
        invoker.invoking_user(env(value, "0"))
    with pytest.raises(invoker.InvokerError, match="SUDO_GID"):
        invoker.invoking_user(env("4242", value))


@root_only
def test_who():
    u = invoker.invoking_user(env("4242", "4243"))
    assert (u.uid, u.gid, u.groups[0], u.via_sudo, u.acting_for_other) == (4242, 4243, 4243, True, True)
    r = invoker.invoking_user({})
    assert (r.uid, r.is_root, r.acting_for_other) == (0, True, False)
    assert invoker.invoking_user(env("0", "0")).is_root
    nobody = invoker.invoking_user(env("65534"))          # no SUDO_GID: the passwd entry's group
    assert nobody.gid == 65534 and nobody.name == "nobody"


def _status_ids(tid: int) -> tuple[str, str, str]:
    text = Path(f"/proc/self/task/{tid}/status").read_text()
    get = {ln.split(":")[0]: ln.split(":", 1)[1].split() for ln in text.splitlines() if ":" in ln}
    return get["Uid"][3], get["Gid"][3], " ".join(get["Groups"])


@root_only
def test_as_user_is_per_thread_and_restored():
    user = invoker.invoking_user(env(str(U), str(G)))
    inside = threading.Event()
    done = threading.Event()
    seen = {}

    def worker():
        with invoker.as_user(user):
            seen["worker"] = _status_ids(threading.get_native_id())
            inside.set()
            done.wait(10)
        seen["worker_after"] = _status_ids(threading.get_native_id())

    t = threading.Thread(target=worker)
    before = _status_ids(threading.get_native_id())
    t.start()
    assert inside.wait(10)
    seen["main"] = _status_ids(threading.get_native_id())
    done.set()
    t.join()
    assert seen["worker"][:2] == (str(U), str(G)) and seen["worker"][2] == str(G)
    assert seen["main"] == before and seen["main"][0] == "0"      # the other thread stayed root
    assert seen["worker_after"] == before


@root_only
def test_files_from_a_worker_thread_belong_to_the_user():
    user = invoker.invoking_user(env(str(U), str(G)))
    d = Path(tempfile.mkdtemp())
    try:
        os.chown(d, U, G)
        out = {}
        t = threading.Thread(target=lambda: out.setdefault(
            "fd", userfiles.open_user_file(d / "summary.json", user)))
        t.start()
        t.join()
        os.close(out["fd"])
        st = os.stat(d / "summary.json")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (U, G, 0o600)
    finally:
        shutil.rmtree(d)


@root_only
def test_user_dir_rules(tmp_path):
    user = invoker.invoking_user(env(str(U), str(G)))
    base = Path(tempfile.mkdtemp())
    try:
        os.chown(base, U, G)
        made = userfiles.make_user_dir(base / "a" / "b", user)
        for p in (base / "a", made):
            assert os.stat(p).st_uid == U
        assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
        for mode, why in ((0o777, "writable by others"), (0o770, "writable by its group")):
            os.chmod(made, mode)
            with pytest.raises(userfiles.UnsafeOutput, match=why):
                userfiles.make_user_dir(made, user)
        os.chmod(made, 0o755)
        os.chown(made, 65534, 65534)
        with pytest.raises(userfiles.UnsafeOutput, match="belongs to uid 65534"):
            userfiles.make_user_dir(made, user)
        with pytest.raises(userfiles.UnsafeOutput, match="Permission denied"):
            userfiles.make_user_dir(tmp_path / "x", user)           # root's 0700 dir: not theirs
        (base / "link").symlink_to(base / "a")
        with pytest.raises(userfiles.UnsafeOutput, match="symlink"):
            userfiles.make_user_dir(base / "link", user)
    finally:
        shutil.rmtree(base)


@root_only
def test_become_in_a_child():
    code = ("import os; from tracer.invoker import become; u = become(); "
            "print(os.getresuid(), os.getresgid(), os.getgroups())")
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, SUDO_UID=str(U), SUDO_GID=str(G)),
                       capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=60)
    assert p.stdout.strip() == f"({U}, {U}, {U}) ({G}, {G}, {G}) [{G}]", p.stderr


@root_only
def test_child_credentials_start_a_program_as_the_user():
    """`tracer run`'s command and tracer's helper processes (the OTLP exporter) start with the user's
    ids, groups and HOME; for root itself nothing changes."""
    u = invoker.invoking_user(env("65534", "65534"))
    kw = invoker.child_credentials(u)
    e = invoker.user_environment({"HOME": "/root", "PATH": "/usr/bin:/bin"}, u)
    assert e["HOME"] == u.home and e["USER"] == e["LOGNAME"] == "nobody"
    assert invoker.user_environment({"HOME": "/srv/mine"}, u)["HOME"] == "/srv/mine"   # not root's: kept
    p = subprocess.run(["/usr/bin/python3", "-c", "import os; print(os.getresuid(), os.getresgid(), os.getgroups())"],
                       capture_output=True, text=True, env=e, **kw)
    assert p.stdout.strip() == "(65534, 65534, 65534) (65534, 65534, 65534) [65534]", p.stderr
    r = invoker.invoking_user({})
    assert invoker.child_credentials(r) == {}
    assert invoker.user_environment({"HOME": "/root"}, r) == {"HOME": "/root"}


def _spawn(setup: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", setup + "\nimport sys, time\nprint('ok', flush=True)\n"
                          "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ok"
    return p


@root_only
@pytest.mark.parametrize("setup,ok,why", [
    (f"import os; os.setgroups([]); os.setresgid({G},{G},{G}); os.setresuid({U},{U},{U}); "
     "import ctypes; ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)", True, ""),
    (f"import os; os.setresuid({U}, 0, 0)", False, "not all yours"),
    (f"import os; os.setresgid({G},{G},{G}); os.setresuid({U}, {U}, 0)", False, "not all yours"),
    (f"import os; os.setgroups([]); os.setresuid({U},{U},{U})", False, "gids 0 0 0 0"),
    (f"import os; os.setgroups([]); os.setresgid({G},{G},{G}); os.setresuid({U},{U},{U})", False,
     "not dumpable"),       # changed credentials without exec: the kernel marks it non-dumpable
    ("import os; os.setresuid(65534, 65534, 65534)", False, "belongs to uid 65534"),
])
def test_may_trace_is_the_ptrace_rule(setup, ok, why):
    user = invoker.invoking_user(env(str(U), str(G)))
    p = _spawn(setup)
    try:
        got, reason = access.may_trace(p.pid, user)
        assert got is ok and why in reason, reason
        assert access.may_trace(p.pid, user, allow_other_users=True)[0]
        assert access.may_trace(p.pid, invoker.invoking_user({}))[0]       # root may trace anything
    finally:
        p.kill()
        p.wait()


def test_pinned_process_notices_exit():
    p = subprocess.Popen(["sleep", "30"])
    pin = access.PinnedProcess(p.pid)
    assert pin.same()
    p.kill()
    p.wait()
    assert not pin.alive() and not pin.same()
    pin.close()
    with pytest.raises(ProcessLookupError):
        access.PinnedProcess(p.pid)


def test_printable():
    assert printable("/tmp/\x1b]0;owned\x07lib.so") == "/tmp/\\x1b]0;owned\\x07lib.so"
    assert printable("a\x9bb\x7fc\u202ed\nz") == "a\\x9bb\\x7fc\\u202ed\\x0az"
    assert printable(b"\xff\xfeok") == "\\xff\\xfeok"
    assert printable("line1\nline2\t\x1b[2J", multiline=True) == "line1\nline2\t\\x1b[2J"
    assert printable("C:\\x") == "C:\\\\x"
    assert printable("ünïcode ok") == "ünïcode ok"


def test_become_is_a_noop_without_privilege():
    if os.geteuid() == 0:
        pytest.skip("checks the unprivileged path")
    assert invoker.become().uid == os.getuid()


def test_errors_are_tracer_errors():
    assert issubclass(invoker.InvokerError, TracerError) and issubclass(userfiles.UnsafeOutput, TracerError)
