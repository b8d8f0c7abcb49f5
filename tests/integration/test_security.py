"""Security properties of `tracer attach` / `tracer run` (issue 6), as a sudo user would meet them:
SUDO_UID/SUDO_GID in the environment of a root tracer."""

from __future__ import annotations

import os
import stat
import sys
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.conftest import client_env, py_client, read_log, tracer_cmd

NOBODY = 65534
API_KEY = "sk-ant-api03-secretsecretsecret"
BEARER = "Bearer tok-9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def sudo_env(uid: int = NOBODY, gid: int = NOBODY, **extra) -> dict:
    env = dict(os.environ, SUDO_UID=str(uid), SUDO_GID=str(gid), SUDO_USER="nobody")
    env.update(extra)
    return env


@pytest.fixture
def user_dir():
    """user_dir(uid, gid) -> a fresh 0700 directory of that user, reachable by them (pytest's own temp
    dirs are root's 0700: tracer, writing as the invoking user, could not create anything there)."""
    made = []

    def make(uid: int = NOBODY, gid: int = NOBODY, mode: int = 0o700) -> Path:
        d = Path(tempfile.mkdtemp(prefix="tracer-sec-"))
        os.chown(d, uid, gid)
        os.chmod(d, mode)
        made.append(d)
        return d
    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


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


def test_compile_child_never_imports_from_the_working_directory(tmp_path):
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
    p = subprocess.run([tracer, "run", "--ring-buffer-mb", "2", "-o", str(tmp_path / "out"), "--quiet",
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
