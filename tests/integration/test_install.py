"""`pip install .` the way a user or pipx installs a tool: build the wheel from the tracked files (a
fresh clone), install it into a new virtualenv (system site packages for BCC), and run the installed
`tracer` from `/` - help, doctor, and a traced call against the mock server. Nothing of the checkout
may be needed at run time. Dependencies come from pip's configured wheel sources and cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import assert_pair_matches, client_env, py_client, read_log

ROOT = Path(__file__).resolve().parents[2]


def _tracked_copy(dst: Path) -> None:
    """The repository's tracked files (symlinks kept), as a fresh clone has them."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
                           ).stdout.split(b"\0")
    for rel in (f.decode() for f in files if f):
        src, out = ROOT / rel, dst / rel
        if not os.path.lexists(src):
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, out)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to build the wheel from its tracked files")
    base = tmp_path_factory.mktemp("install")
    os.chmod(base, 0o755)
    src, dist, venv = base / "src", base / "dist", base / "venv"
    _tracked_copy(src)
    pip_env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip_env.pop("PYTHONPATH", None)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)],
                   check=True, env=pip_env, cwd=base, timeout=600)
    wheel = next(dist.glob("tracer-*.whl"))
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True,
                   timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, env=pip_env,
                   cwd=base, timeout=900)
    shutil.rmtree(src)                 # nothing of the source tree is needed from here on
    return venv


def _run(venv: Path, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    env = dict(env if env is not None else os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(venv / "bin" / "tracer"), *args], cwd="/", env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_installed_package_is_self_contained(installed):
    code = ("import json, tracer, tracer.paths as p\n"
            "print(json.dumps([tracer.__file__, str(p.bpf_dir())]))")
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd="/", capture_output=True,
                         text=True, check=True).stdout
    pkg, bpf = json.loads(out)
    site = str(installed / "lib")
    assert pkg.startswith(site) and bpf.startswith(site), (pkg, bpf)
    assert (Path(bpf) / "tracer.bpf.c").is_file() and not Path(bpf).is_symlink()


def test_help(installed):
    p = _run(installed, "--help")
    assert p.returncode == 0, p.stderr
    for cmd in ("attach", "run", "doctor", "locate", "html"):
        assert cmd in p.stdout


def test_doctor_compiles_and_loads(installed, tmp_path):
    p = _run(installed, "doctor", env=dict(os.environ, TRACER_BPF_CACHE_DIR=str(tmp_path / "bpf")))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "[ok  ] BPF program: compiled with BCC and cached" in p.stdout, p.stdout
    assert "FAIL" not in p.stdout


def test_traced_call(installed, mock, tmp_path):
    out = tmp_path / "out"
    p = _run(installed, "run", "-o", str(out), "--quiet", "--no-html", "--", *py_client(mock, "--json"),
             env=client_env(mock))
    assert p.returncode == 0, p.stderr
    recs = read_log(out)
    assert len(recs) == 1
    assert_pair_matches(mock, recs[0])
