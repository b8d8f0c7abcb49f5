"""Security properties of `tracer attach` / `tracer run` (issue 6), as a sudo user would meet them:
SUDO_UID/SUDO_GID in the environment of a root tracer."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import client_env, py_client, read_log, tracer_cmd
from tracer.mock import body_bytes

NOBODY = 65534
API_KEY = "sk-ant-api03-secretsecretsecret"
BEARER = "Bearer tok-9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def sudo_env(uid: int = NOBODY, gid: int = NOBODY, **extra) -> dict:
    env = dict(os.environ, SUDO_UID=str(uid), SUDO_GID=str(gid), SUDO_USER="nobody")
    env.update(extra)
    return env


@pytest.fixture
def other_users_process():
    """A process owned by nobody (not by the 'invoking user' of the tests below)."""
    p = subprocess.Popen(["sleep", "60"], user=NOBODY, group=NOBODY)
    yield p
    p.kill()
    p.wait()


def test_attach_refuses_pid_of_another_user(tmp_path, other_users_process, user_dir):
    home = user_dir(4242, 4242)
    p = subprocess.run(tracer_cmd("attach", "--pid", str(other_users_process.pid), "-o", str(home / "a"),
                                  "--quiet", "--no-html", "--duration", "1"),
                       env=sudo_env(uid=4242, gid=4242), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert f"pid {other_users_process.pid} belongs to uid {NOBODY}" in p.stderr
    assert "--allow-other-users" in p.stderr
    assert not (home / "a").exists(), "refused, yet a log directory was made"
    p = subprocess.run(tracer_cmd("attach", "--pid", str(other_users_process.pid), "-o", str(home / "b"),
                                  "--quiet", "--no-html", "--duration", "1", "--allow-other-users"),
                       env=sudo_env(uid=4242, gid=4242), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "tracing 1 process" in p.stderr


def test_attach_accepts_own_pid(other_users_process, user_dir):
    p = subprocess.run(tracer_cmd("attach", "--pid", str(other_users_process.pid), "-o", str(user_dir() / "a"),
                                  "--quiet", "--no-html", "--duration", "1"),
                       env=sudo_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_run_never_runs_child_as_root(user_dir):
    out = user_dir() / "out"
    p = subprocess.run(tracer_cmd("run", "-o", str(out), "--quiet", "--no-html", "--",
                                  "/bin/sh", "-c", "id -u; id -g; id -G; echo $HOME"),
                       env=sudo_env(), capture_output=True, text=True, timeout=120, cwd="/")
    assert p.returncode == 0, p.stderr
    uid, gid, groups, home = p.stdout.split("\n")[:4]
    assert (uid, gid) == (str(NOBODY), str(NOBODY))
    assert "0" not in groups.split(), "the child kept root's supplementary groups"
    assert home != "/root"


def _owner_mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_secrets_redacted_and_files_private(mock, user_dir):
    """Credentials never reach the log, the HTML viewer or the summary; the directory is 0700 and the
    log 0600, both owned by the invoking user."""
    out = user_dir(4242, 4243) / "out"
    shared = Path(tempfile.mkdtemp(prefix="tracer-sec-"))   # the CA, readable by the unprivileged child
    os.chmod(shared, 0o755)
    ca = shared / "ca.pem"
    shutil.copy(mock.ca_path, ca)
    os.chmod(ca, 0o644)
    cmd = py_client(mock, "--stream", "--json", "--header", f"authorization: {BEARER}",
                    "--header", "cookie: session=abcdefghijklmnopqrstuvwxyz0123")
    cmd[cmd.index(str(mock.ca_path))] = str(ca)
    env = client_env(mock, **{k: v for k, v in sudo_env(uid=4242, gid=4243).items()
                              if k.startswith("SUDO_")})
    p = subprocess.run(tracer_cmd("run", "-o", str(out), "--", *cmd), env=env, capture_output=True,
                       text=True, timeout=180)
    shutil.rmtree(shared, ignore_errors=True)
    assert p.returncode == 0, p.stderr
    recs = read_log(out)
    assert len(recs) == 2
    log = next(out.glob("*.jsonl"))
    html = log.with_suffix(".html")
    assert html.exists(), p.stderr
    secrets = [API_KEY, BEARER.split()[1], "secretsecret", "abcdefghijklmnopqrstuvwxyz0123"]
    for f in (log, html):
        data = f.read_bytes()
        for s in secrets:
            assert s.encode() not in data, f"{s} in {f.name}"
    for s in secrets:
        assert s not in p.stderr and s not in p.stdout
    h = recs[0]["request"]["headers"]
    assert h["x-api-key"] == API_KEY[:10] + "..." + API_KEY[-4:]
    assert h["authorization"].startswith("Bearer tok") and "..." in h["authorization"]
    assert _owner_mode(out) == (4242, 4243, 0o700)
    assert _owner_mode(log) == (4242, 4243, 0o600)
    assert _owner_mode(html) == (4242, 4243, 0o600)


def _plant(out: Path, target: Path, seconds: int = 90) -> list[Path]:
    """Symlinks at every log name the tracer could pick in the next `seconds` (and -1.. variants)."""
    now = datetime.now()
    planted = []
    for s in range(-2, seconds):
        stem = f"log-{(now + timedelta(seconds=s)).strftime('%Y-%m-%d-%H-%M-%S')}"
        for name in (f"{stem}.jsonl", f"{stem}.html", f"{stem}-1.jsonl"):
            link = out / name
            link.symlink_to(target)
            planted.append(link)
    return planted


@pytest.mark.parametrize("dangling", [False, True])
def test_planted_symlink_never_followed(mock, tmp_path, dangling):
    """A symlink planted in the output directory at the log's (or viewer's) name is never written
    through: the victim file stays as it was (or is never created), and the tracer still logs."""
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_text("precious\n")
    planted = _plant(out, victim)
    p = subprocess.run(tracer_cmd("run", "-o", str(out), "--", *py_client(mock, "--json")),
                       env=client_env(mock), capture_output=True, text=True, timeout=180)
    if dangling:
        assert not victim.exists(), "a dangling symlink was followed"
    else:
        assert victim.read_text() == "precious\n"
    for link in planted:
        assert link.is_symlink() or not link.exists()
    assert p.returncode == 0, p.stderr
    logs = [f for f in out.iterdir() if f.suffix == ".jsonl" and not f.is_symlink()]
    assert len(logs) == 1 and len(logs[0].read_bytes().splitlines()) == 1, p.stderr


def test_symlinked_output_dir_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    p = subprocess.run(tracer_cmd("run", "-o", str(link), "--quiet", "--", "/bin/true"),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "symlink" in p.stderr
    assert list(real.iterdir()) == []


def test_run_child_uid_without_passwd_entry(user_dir):
    """SUDO_UID of a user with no passwd entry (containers): the child still gets that uid, not root."""
    p = subprocess.run(tracer_cmd("run", "-o", str(user_dir(4242, 4243) / "out"), "--quiet", "--no-html", "--",
                                  "/bin/sh", "-c", "id -u; id -g"),
                       env=sudo_env(uid=4242, gid=4243), capture_output=True, text=True, timeout=120, cwd="/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["4242", "4243"]


@pytest.mark.parametrize("value", ["abc", "", "-1"])
def test_unusable_sudo_uid_refused(tmp_path, value, other_users_process):
    """A SUDO_UID that is not a user id must not make tracer fall back to root: `run` does not start the
    command and `attach` does not trace."""
    marker = tmp_path / "ran"
    env = dict(os.environ, SUDO_UID=value, SUDO_GID="0")
    p = subprocess.run(tracer_cmd("run", "-o", str(tmp_path / "out"), "--quiet", "--no-html", "--",
                                  "/usr/bin/touch", str(marker)),
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "SUDO_UID" in p.stderr, p.stderr
    assert not marker.exists()
    p = subprocess.run(tracer_cmd("attach", "--pid", str(other_users_process.pid), "-o", str(tmp_path / "a"),
                                  "--quiet", "--no-html", "--duration", "1"),
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "SUDO_UID" in p.stderr, p.stderr
    assert "tracing" not in p.stderr


# The names a Python child would import from its working directory if it had it on sys.path: the
# stdlib modules the compile step uses, the site hooks, and tracer/BCC themselves.
PLANTED = ("base64.py", "json.py", "argparse.py", "subprocess.py", "sitecustomize.py", "usercustomize.py",
           "tracer/__init__.py", "tracer/probes/__init__.py", "tracer/probes/compile.py", "bcc/__init__.py")


def _plant_modules(home: Path, marker: Path) -> None:
    code = (f"import os\nopen({str(marker)!r}, 'a').write(f'{{os.getuid()}} {{__name__}}\\n')\n")
    for rel in PLANTED:
        f = home / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(code)
    for p in [home, *home.rglob("*")]:
        os.chown(p, 4242, 4242)


def test_compile_child_never_imports_from_the_working_directory(tmp_path, user_dir):
    """A cache miss starts the BCC compile child as root. Modules planted in the directory sudo was
    started from (owned by the invoking user) must not run - neither under `tracer doctor` nor
    under `tracer run` with a non-default ring size. The real console script, as sudo runs it."""
    home = tmp_path / "home"
    marker = tmp_path / "planted-code-ran"
    _plant_modules(home, marker)
    tracer = str(Path(sys.executable).parent / "tracer")
    env = sudo_env(uid=4242, gid=4242, TRACER_BPF_CACHE_DIR=str(tmp_path / "bpfcache"))
    p = subprocess.run([tracer, "doctor"], cwd=home, env=env, capture_output=True, text=True, timeout=300)
    assert not marker.exists(), f"planted code ran as root: {marker.read_text()}"
    assert p.returncode == 0, p.stdout + p.stderr
    assert "compiled with BCC and cached" in p.stdout, p.stdout
    p = subprocess.run([tracer, "run", "--ring-buffer-mb", "2", "-o", str(user_dir(4242, 4242) / "out"), "--quiet",
                        "--no-html", "--", "/bin/true"],
                       cwd=home, env=env, capture_output=True, text=True, timeout=300)
    assert not marker.exists(), f"planted code ran as root: {marker.read_text()}"
    assert p.returncode == 0, p.stderr
    assert len(list((tmp_path / "bpfcache").glob("tracer-*.json"))) == 2      # two compiles happened


def test_code_another_user_can_change_is_refused(tmp_path):
    """tracer installed where another user can write (here: its package owned by uid 4242) refuses
    to load BPF programs as root, naming the path, before compiling or loading anything."""
    pkg = tmp_path / "site"
    shutil.copytree(Path(__file__).resolve().parents[2] / "tracer", pkg / "tracer", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for p in [pkg, *pkg.rglob("*")]:
        os.chown(p, 4242, 4242)
    code = ("import sys\nsys.path.insert(0, sys.argv[1])\n"
            "from tracer.errors import TracerError\nfrom tracer.probes.load import load_program\n"
            "try:\n    load_program(1)\nexcept TracerError as e:\n    print('REFUSED', e)\n")
    p = subprocess.run([sys.executable, "-I", "-c", code, str(pkg)], cwd="/", capture_output=True,
                       text=True, timeout=120,
                       env=dict(os.environ, TRACER_BPF_CACHE_DIR=str(tmp_path / "bpfcache")))
    assert p.stdout.startswith("REFUSED refusing to run as root"), p.stdout + p.stderr
    assert f"{pkg}/tracer" in p.stdout and "owned by uid 4242" in p.stdout
    assert not (tmp_path / "bpfcache").exists()


# -- issue 10: one test per finding, each as an attacker with a sudo entry would set it up ---------

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
U, G = 4242, 4243


@pytest.fixture
def shared_dir():
    """A root-owned 0755 directory anyone can read (for scripts, CAs and binaries the user's
    processes need); removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="tracer-shared-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def readable_ca(mock, shared: Path) -> str:
    ca = shared / f"ca-{mock.port}.pem"
    shutil.copy(mock.ca_path, ca)
    os.chmod(ca, 0o644)
    return str(ca)


def user_log(user_home: Path) -> tuple[Path, bytes]:
    """A small valid log owned by the user (as `tracer run` would have left it)."""
    log = user_home / "log.jsonl"
    log.write_bytes(b'{"request": {"method": "POST", "url": "https://api.anthropic.com/v1/messages", '
                    b'"headers": {}, "body": null}, "response": null, "logged_at": "x"}\n')
    os.chown(log, U, G)
    os.chmod(log, 0o600)
    return log, log.read_bytes()


@pytest.mark.parametrize("uid,gid", [("4294967295", "4243"), ("4242", "4294967295"), ("4_242", "4243"),
                                     ("+4242", "4243"), ("4242", "abc"), ("0x10", "4243")])
def test_one_sudo_parser_for_every_command(uid, gid, user_dir, shared_dir, other_users_process):
    """SUDO_UID/SUDO_GID mean the same to every command; a value that is not a plain id (including
    (uid_t)-1, which set*id() reads as 'unchanged') is refused before anything is done."""
    home = user_dir(U, G)
    log, _ = user_log(home)
    env = dict(os.environ, SUDO_UID=uid, SUDO_GID=gid)
    marker = shared_dir / "ran"
    for args in (("run", "-o", str(home / "o"), "--quiet", "--no-html", "--", "/usr/bin/touch", str(marker)),
                 ("attach", "--pid", str(other_users_process.pid), "-o", str(home / "a"), "--quiet",
                  "--duration", "1"),
                 ("html", str(log), "-o", str(home / "v.html")),
                 ("index", str(home))):
        p = subprocess.run(tracer_cmd(*args), env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and ("SUDO_UID" in p.stderr or "SUDO_GID" in p.stderr), (args, p.stderr)
    assert not marker.exists()
    assert sorted(x.name for x in home.iterdir()) == ["log.jsonl"], "a refused command created files"


def test_output_dir_is_created_as_the_user(user_dir, shared_dir):
    """`-o` naming a place the user may not write: refused by the kernel (tracer creates it as them);
    it used to create a root-owned parent and a user-owned directory there."""
    p = subprocess.run(tracer_cmd("run", "-o", str(shared_dir / "x" / "y.d"), "--quiet", "--", "/bin/true"),
                       env=sudo_env(U, G), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "Permission denied" in p.stderr, p.stderr
    assert list(shared_dir.iterdir()) == []
    home = user_dir(U, G)
    p = subprocess.run(tracer_cmd("run", "-o", str(home / "new" / "logs"), "--quiet", "--", "/bin/true"),
                       env=sudo_env(U, G), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for d in (home / "new", home / "new" / "logs"):
        assert os.stat(d).st_uid == U
    assert _owner_mode(home / "new" / "logs")[2] == 0o700
    for f in (home / "new" / "logs").iterdir():
        assert _owner_mode(f) == (U, G, 0o600), f


@pytest.mark.parametrize("owner,mode,why", [(NOBODY, 0o777, "belongs to uid 65534"),
                                            (U, 0o777, "writable by others"),
                                            (U, 0o770, "writable by its group"),
                                            (0, 0o1777, "belongs to uid 0")])
def test_existing_output_dir_must_be_the_users_and_private(user_dir, owner, mode, why):
    d = user_dir(U, G, 0o755) / "out"
    d.mkdir()
    os.chown(d, owner, G)
    os.chmod(d, mode)
    p = subprocess.run(tracer_cmd("run", "-o", str(d), "--quiet", "--", "/bin/true"),
                       env=sudo_env(U, G), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and why in p.stderr, p.stderr
    assert list(d.iterdir()) == []


def test_html_output_is_written_as_the_user(user_dir, shared_dir):
    """`tracer html LOG -o FILE`: written by the user (the kernel refuses a root-only directory); it
    used to leave a user-owned file in /etc/profile.d-like places."""
    home = user_dir(U, G)
    log, _ = user_log(home)
    target = shared_dir / "zz.sh"
    p = subprocess.run(tracer_cmd("html", str(log), "-o", str(target)), env=sudo_env(U, G),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and not target.exists(), p.stderr
    assert list(shared_dir.iterdir()) == []
    secret = shared_dir / "root-only.jsonl"                 # nor may it read what the user cannot
    secret.write_bytes(log.read_bytes())
    os.chmod(secret, 0o600)
    p = subprocess.run(tracer_cmd("html", str(secret), "-o", str(home / "leak.html")), env=sudo_env(U, G),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "Permission denied" in p.stderr and not (home / "leak.html").exists()
    p = subprocess.run(tracer_cmd("html", str(log)), env=sudo_env(U, G), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert _owner_mode(home / "log.html") == (U, G, 0o600)


def test_index_never_writes_through_a_planted_symlink(user_dir, shared_dir):
    """`tracer index DIR` wrote its temp file `.index.html.<pid>.tmp` as root, following a symlink the
    directory's owner planted there. Links are planted for the next pids."""
    home = user_dir(U, G)
    user_log(home)
    victim = shared_dir / "victim"
    victim.write_text("precious\n")
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    for pid in range(last + 1, last + 3000):
        (home / f".index.html.{pid}.tmp").symlink_to(victim)
    p = subprocess.run(tracer_cmd("index", str(home)), env=sudo_env(U, G), capture_output=True, text=True,
                       timeout=120)
    assert victim.read_text() == "precious\n"
    assert p.returncode == 0, p.stderr
    assert _owner_mode(home / "index.html") == (U, G, 0o600)
    assert _owner_mode(home / "log.html")[:2] == (U, G)
    other = user_dir(NOBODY, NOBODY, 0o755)
    p = subprocess.run(tracer_cmd("index", str(other)), env=sudo_env(U, G), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and "belongs to uid 65534" in p.stderr and not (other / "index.html").exists()


@pytest.mark.skipif(shutil.which("gcc") is None or not os.path.exists(LIBSSL), reason="needs gcc and libssl")
def test_fake_elf_with_libssls_build_id_does_not_poison_locate(mock, tmp_path, user_dir, shared_dir):
    """An ELF built with libssl's build-id used to put its own (BoringSSL-discovered) addresses into
    the locate cache under that id: `tracer locate libssl.so.3` then answered them, and a traced
    client crashed (int3 in .dynstr)."""
    from elftools.elf.elffile import ELFFile

    from tests.unit.test_locate_synthetic import CFLAGS, SRC
    from tracer.probes.locate import build_id

    with open(LIBSSL, "rb") as f:
        bid = build_id(ELFFile(f))
    src = tmp_path / "fake.c"
    src.write_text(SRC)
    fake = shared_dir / "fake"
    subprocess.run(["gcc", *CFLAGS, "-fno-pie", "-no-pie", "-s", f"-Wl,--build-id=0x{bid}", "-o", str(fake),
                    str(src)], check=True)
    cache = tmp_path / "cache"                  # root's private cache, as /var/cache/tracer is
    env = sudo_env(U, G, TRACER_CACHE_DIR=str(cache), ANTHROPIC_BASE_URL=mock.url)
    p = subprocess.run(tracer_cmd("locate", "--json", str(fake)), env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)["build_id"] == bid, p.stderr
    p = subprocess.run(tracer_cmd("locate", "--json", LIBSSL), env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    funcs = json.loads(p.stdout)["functions"]
    assert {f["method"] for f in funcs.values()} == {"dynamic symbol table"}, funcs
    out = user_dir(U, G) / "out"
    cmd = py_client(mock, "--json")
    cmd[cmd.index(str(mock.ca_path))] = readable_ca(mock, shared_dir)
    p = subprocess.run(tracer_cmd("run", "-o", str(out), "--quiet", "--no-html", "--", *cmd), env=env,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert len(read_log(out)) == 1


def _hold(setup: str) -> subprocess.Popen:
    """A root-started Python that runs `setup` (changing its own credentials), says ok, and waits."""
    proc = subprocess.Popen(["/usr/bin/python3", "-c", setup + "\nprint('ok', flush=True)\n"
                             "import time\ntime.sleep(120)"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ok"
    return proc


@pytest.mark.parametrize("setup,why", [
    (f"import os; os.setresuid({U}, 0, 0)", "not all yours"),                         # uids 4242 0 0 0
    (f"import os; os.setgroups([]); os.setresuid({U}, {U}, {U})", "gids 0 0 0 0"),   # root's group
    (f"import os, ctypes; os.setgroups([]); os.setresgid({G}, {G}, {G}); os.setresuid({U}, {U}, {U}); "
     "ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)", "not dumpable"),                       # PR_SET_DUMPABLE 0
])
def test_attach_applies_the_ptrace_rule(user_dir, setup, why):
    """`attach` compared the real uid only: a process with uids 4242 0 0 0 was accepted for
    SUDO_UID=4242."""
    proc = _hold(setup)
    try:
        p = subprocess.run(tracer_cmd("attach", "--pid", str(proc.pid), "-o", str(user_dir(U, G) / "a"),
                                      "--quiet", "--duration", "1"),
                           env=sudo_env(U, G), capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and why in p.stderr and "--allow-other-users" in p.stderr, p.stderr
        assert "tracing" not in p.stderr
    finally:
        proc.kill()
        proc.wait()


SETUID_CLIENT = r"""
import http.client, json, os, ssl, sys, time
from urllib.parse import urlsplit
base, ca, marker, setuid_python, delay = sys.argv[1:6]
if len(sys.argv) > 6:
    time.sleep(float(delay))            # (the setuid stage) give user space time to notice, or not
u = urlsplit(base)
c = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=ca))
body = json.dumps({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": marker}]})
c.request("POST", "/v1/messages", body=body, headers={"content-type": "application/json"})
c.getresponse().read()
if len(sys.argv) > 6:
    print("euid", os.geteuid(), flush=True)
    sys.exit(0)
os.execv(setuid_python, [setuid_python, __file__, base, ca, marker + "-AFTER-SETUID-EXEC", setuid_python,
                         delay, "setuid stage"])
"""


@pytest.mark.parametrize("delay", ["0", "1.5"])
def test_setuid_exec_stops_the_tracing(mock, user_dir, shared_dir, delay):
    """A traced process that execs a setuid-root program: nothing of that program is logged (the probes
    on libssl survive exec), its tracing stops, and the summary says why. delay 0: the setuid program
    talks at once and exits before tracer's next watch round (only the kernel-side check can stop
    it); 1.5 s: tracer notices the new credentials first and detaches."""
    py = shared_dir / "python3-setuid"
    shutil.copy(os.path.realpath("/usr/bin/python3"), py)
    os.chmod(py, 0o4755)
    script = shared_dir / "client.py"
    script.write_text(SETUID_CLIENT)
    os.chmod(script, 0o644)
    out = user_dir(U, G) / "out"
    marker = f"BEFORE-EXEC-{delay}"
    p = subprocess.run(tracer_cmd("run", "-o", str(out), "--no-html", "--", "/usr/bin/python3", str(script),
                                  mock.url, readable_ca(mock, shared_dir), marker, str(py), delay),
                       env=sudo_env(U, G, ANTHROPIC_BASE_URL=mock.url), capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0, p.stderr
    assert "euid 0" in p.stdout, "the setuid program did not run as root: the test proves nothing"
    sent = [body_bytes(r["request_body"]) for r in mock.records()]        # (the mock is shared)
    assert any((marker + "-AFTER-SETUID-EXEC").encode() in b for b in sent)
    log = next(out.glob("*.jsonl")).read_bytes()
    assert marker.encode() in log
    assert b"AFTER-SETUID-EXEC" not in log        # neither its traffic nor its command line
    # the record names the program that made it, also when it was built after the exec
    made = [json.loads(line) for line in log.splitlines() if marker.encode() in line]
    assert made and all(r["tracer"]["process"]["exe"] == os.path.realpath("/usr/bin/python3") for r in made)
    # the summary names the process: user space saw the new credentials and stopped tracing it, or
    # (delay 0, when it exits first) the kernel-side check counted the calls it refused
    assert ("tracing stopped" in p.stderr and "not all yours" in p.stderr) or (
        delay == "0" and "not logged: the process ran with other credentials" in p.stderr), p.stderr


def _user_process(code: str) -> subprocess.Popen:
    """A Python of the user's (exec'd with their ids: dumpable, traceable by them) that runs `code`
    and then waits; returns once `code` has run."""
    proc = subprocess.Popen(["/usr/bin/python3", "-c", code + "\nprint('ok', flush=True)\n"
                             "import time\ntime.sleep(120)"], stdout=subprocess.PIPE, text=True,
                            user=U, group=G, extra_groups=[], cwd="/")
    assert proc.stdout.readline().strip() == "ok"
    return proc


def _map_exec(path: Path) -> str:
    return (f"import mmap\nf = open({str(path)!r}, 'rb')\n"
            "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ | mmap.PROT_EXEC)")


def test_crafted_elf_in_a_target_allocates_nothing(user_dir, shared_dir):
    """A 367-byte ELF (1 GiB SHT_NOBITS .dynsym) mapped executable by a traced process made tracer
    allocate 1 GiB; its RSS must stay what it is for any other process."""
    from tests import crafted_elf

    crafted = shared_dir / "crafted.so"
    crafted.write_bytes(crafted_elf.dynsym_nobits())
    os.chmod(crafted, 0o644)
    rss = {}
    for what, code in (("plain", "pass"), ("crafted", _map_exec(crafted))):
        proc = _user_process(code)
        try:
            t = subprocess.Popen(tracer_cmd("attach", "--pid", str(proc.pid), "-o", str(user_dir(U, G) / what),
                                            "--quiet", "--no-html", "--duration", "1"),
                                 env=sudo_env(U, G), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            err = t.stderr.read()
            _, status, ru = os.wait4(t.pid, 0)
            t.returncode = os.waitstatus_to_exitcode(status)
            assert t.returncode == 0, err
            rss[what] = ru.ru_maxrss
        finally:
            proc.kill()
            proc.wait()
    assert rss["crafted"] - rss["plain"] < 16 * 1024, rss       # KiB


def test_target_text_is_escaped_on_the_terminal(user_dir, shared_dir):
    """Paths from /proc/PID/maps (and errors quoting them) were printed raw: ESC ] 0 ; ... BEL retitled
    the terminal. The target maps a libssl and a malformed ELF under names full of escape sequences."""
    from tests import crafted_elf

    evil = shared_dir / "\x1b]0;pwned\x07\x1b[2J\u202e"
    evil.mkdir()
    os.chmod(evil, 0o755)
    lib = evil / "libssl\x9b31m.so.3"
    shutil.copy(LIBSSL, lib)
    bad = evil / "bad\x1b[31m.so"
    bad.write_bytes(crafted_elf.huge_section_count())
    for f in (lib, bad):
        os.chmod(f, 0o644)
    procs = [_user_process(f"import ctypes\nctypes.CDLL({str(lib)!r})"),      # "probes on <path>"
             _user_process(_map_exec(bad))]                                   # "...(<path>: malformed ...)"
    try:
        p = subprocess.run(tracer_cmd("attach", "--pid", str(procs[0].pid), "--pid", str(procs[1].pid),
                                      "-o", str(user_dir(U, G) / "o"), "--duration", "1", "--no-html"),
                           env=sudo_env(U, G), capture_output=True, timeout=120)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 0, err
    assert "probes on" in err and "\\x1b]0;pwned\\x07" in err and "malformed" in err, err
    for c in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert c not in err, repr(err)


@pytest.fixture(scope="module")
def h2mock():
    from tracer.mock import MockServer
    with MockServer(h2=True) as srv:
        yield srv


@pytest.mark.parametrize("proto", ["http/1.1", "h2"])
def test_credentials_redacted(mock, h2mock, user_dir, shared_dir, proto):
    """--include-all-requests logs every pair: credential headers of every kind (HTTP/1.1 and HTTP/2
    header blocks), secret query parameters and OAuth token exchanges (JSON and form bodies, both
    directions) must not reach the log or the viewer."""
    srv = mock if proto == "http/1.1" else h2mock
    prefix = "S3CR3T-" + proto.replace("/", "") + "-"
    client = shared_dir / "secrets_client.py"
    shutil.copy(Path(__file__).parent / "clients" / "secrets_client.py", client)
    os.chmod(client, 0o644)
    out = user_dir(U, G) / "out"
    py = sys.executable if proto == "h2" else "/usr/bin/python3"       # httpx lives in the venv
    p = subprocess.run(tracer_cmd("run", "-o", str(out), "--include-all-requests", "--quiet", "--",
                                  py, str(client), srv.url, readable_ca(srv, shared_dir), prefix,
                                  *(["--h2"] if proto == "h2" else [])),
                       env=sudo_env(U, G), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr + p.stdout
    ids = [line.split()[0] for line in p.stdout.splitlines()]
    recs = {str(r["id"]): r for r in srv.records()}
    issued = [orjson.loads(body_bytes(recs[i]["response_body"])) for i in ids[1:]]
    sent = ("amzsecuritytoken", "googapikey", "azureapikey", "litellmkey", "customsecret", "upstreamauth",
            "basiccreds", "querykey", "querytoken", "amzsig", "refreshtoken", "authcode", "verifier",
            "clientsecret")          # what secrets_client.py sends, each after the prefix
    secrets = [t[k] for t in issued for k in ("access_token", "refresh_token")] + [prefix + x for x in sent]
    logged = read_log(out)
    assert len(logged) == 3
    assert {r["tracer"]["protocol"] for r in logged} == {proto}
    for f in [next(out.glob("*.jsonl")), next(out.glob("*.html"))]:
        data = f.read_bytes()
        for s in secrets:
            i = data.find(s.encode())
            assert i < 0, f"{s} in {f.name}: ...{data[max(0, i - 300):i + 100]!r}"
    msgs = next(r for r in logged if "/v1/messages" in r["request"]["url"])
    assert msgs["request"]["headers"]["authorization"] == "Basic [REDACTED]"
    assert "beta=true" in msgs["request"]["url"] and "key=[REDACTED]" in msgs["request"]["url"]
    form = next(r for r in logged if isinstance(r["request"]["body"], str))
    assert "client_id=cid" in form["request"]["body"] and "code=[REDACTED]" in form["request"]["body"]
    assert form["response"]["body"]["token_type"] == "Bearer"


def test_caches_and_headers_named_by_the_environment_must_be_roots(user_dir):
    """sudo may keep variables: a BPF cache, cache root or kernel-header tree the user owns would let
    them shape the bytecode root loads (or have root build a header tree through their symlinks)."""
    home = user_dir(U, G)
    out = user_dir(U, G) / "out"
    for var in ("TRACER_CACHE_DIR", "TRACER_BPF_CACHE_DIR"):
        p = subprocess.run(tracer_cmd("run", "-o", str(out), "--quiet", "--", "/bin/true"),
                           env=sudo_env(U, G, **{var: str(home / "cache")}), capture_output=True, text=True,
                           timeout=300)
        assert p.returncode != 0 and f"{var}=" in p.stderr and "owned by uid 4242" in p.stderr, p.stderr
    assert not (home / "cache").exists()
    (home / "include" / "linux").mkdir(parents=True)
    p = subprocess.run(tracer_cmd("doctor", "--no-compile"), env=sudo_env(U, G, BCC_KERNEL_SOURCE=str(home)),
                       capture_output=True, text=True, timeout=300)
    assert "BCC_KERNEL_SOURCE" in p.stdout and "not trusted" in p.stdout, p.stdout
