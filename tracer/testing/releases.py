"""Download real client releases from npm (for tests and benchmarks), cached outside the repository.

``fetch_npm_release("@anthropic-ai/claude-code-linux-x64", "2.1.332")`` downloads the package with
``npm pack`` (so npm's own registry/proxy configuration and integrity checks apply), unpacks it once
under ``$TRACER_CACHE_DIR/npm/`` (default ``/var/cache/tracer/npm/`` as root, else
``$XDG_CACHE_HOME/tracer/npm/``) and returns the path of the package's program:

  * ``@anthropic-ai/claude-code-<platform>``  -> the native ``claude`` executable (Bun-compiled)
  * ``@oven/bun-<platform>``                   -> ``bin/bun``
  * ``@anthropic-ai/claude-code`` (2.0.x)      -> ``cli.js`` (run it with node)
  * anything else                              -> the first ``bin`` entry of package.json, else the
                                                  package directory

Calls are idempotent and safe to run concurrently (one ``flock``-ed lock file per release); an
interrupted unpack never leaves a half-populated release behind (unpack into a temporary directory,
then rename).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tracer.paths import cache_root, npm_cache_dir

_COMPLETE = ".tracer-complete"


class ReleaseError(RuntimeError):
    """A release could not be downloaded or unpacked."""


# npm's platform names for the native Claude Code packages: @anthropic-ai/claude-code-linux-<platform>
CLAUDE_CODE_PLATFORMS = ("x64", "arm64", "x64-musl", "arm64-musl")
_NPM_CPU = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


def claude_code_package(platform_name: str | None = None) -> str:
    """The native Claude Code package for a platform ("x64", "arm64", "arm64-musl", ...), by
    default this machine's (glibc)."""
    if platform_name is None:
        import platform
        platform_name = _NPM_CPU.get(platform.machine(), platform.machine())
    if platform_name not in CLAUDE_CODE_PLATFORMS:
        raise ReleaseError("no native Claude Code package for platform %r (known: %s)"
                           % (platform_name, ", ".join(CLAUDE_CODE_PLATFORMS)))
    return "@anthropic-ai/claude-code-linux-" + platform_name


def release_dir(package: str, version: str) -> Path:
    """Directory holding the unpacked release (``<dir>/package/...``)."""
    safe = package.lstrip("@").replace("/", "+")
    return npm_cache_dir() / safe / version


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lf:
        fcntl.flock(lf.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lf.fileno(), fcntl.LOCK_UN)


def _program(package: str, pkgdir: Path) -> Path:
    name = package.split("/")[-1]
    if package.startswith("@anthropic-ai/claude-code-"):
        return pkgdir / "claude"
    if package.startswith("@oven/bun-"):
        return pkgdir / "bin" / "bun"
    if package == "@anthropic-ai/claude-code":
        return pkgdir / "cli.js"
    try:
        meta = json.loads((pkgdir / "package.json").read_text())
    except (OSError, ValueError):
        return pkgdir
    b = meta.get("bin")
    if isinstance(b, str):
        return pkgdir / b
    if isinstance(b, dict) and b:
        return pkgdir / (b.get(name) or next(iter(b.values())))
    return pkgdir


def _npm_pack(spec: str, dest: Path) -> Path:
    """``npm pack`` into dest with a throw-away npm cache (no second copy of big tarballs in ~/.npm)."""
    npm = shutil.which("npm")
    if npm is None:
        raise ReleaseError("npm is not installed (needed to download %s)" % spec)
    npmcache = dest / "npm-cache"
    proc = subprocess.run(
        [npm, "pack", spec, "--json", "--pack-destination", str(dest), "--cache", str(npmcache),
         "--loglevel", "error", "--ignore-scripts"],
        cwd=dest, capture_output=True, text=True, timeout=1800)
    shutil.rmtree(npmcache, ignore_errors=True)
    if proc.returncode != 0:
        raise ReleaseError("npm pack %s failed: %s" % (spec, proc.stderr.strip()[-2000:]))
    try:
        filename = json.loads(proc.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        tgz = sorted(dest.glob("*.tgz"))
        if len(tgz) != 1:
            raise ReleaseError("npm pack %s: cannot find the tarball (%r)" % (spec, proc.stdout[-500:]))
        return tgz[0]
    # npm pack names scoped tarballs "scope-name-version.tgz"
    path = dest / filename
    if not path.exists():
        tgz = sorted(dest.glob("*.tgz"))
        if len(tgz) != 1:
            raise ReleaseError("npm pack %s: tarball %s missing" % (spec, filename))
        path = tgz[0]
    return path


def _unpack(tgz: Path, dest: Path) -> None:
    with tarfile.open(tgz, "r:gz") as tf:
        try:
            tf.extractall(dest, filter="data")
        except TypeError:  # Python without extraction filters
            for m in tf.getmembers():
                if m.name.startswith("/") or ".." in Path(m.name).parts or m.issym() or m.islnk():
                    raise ReleaseError("unsafe member %r in %s" % (m.name, tgz))
            tf.extractall(dest)


def fetch_npm_release(package: str, version: str) -> Path:
    """Download (once) and unpack an npm release; return the path of its program (see module doc)."""
    rdir = release_dir(package, version)
    marker = rdir / _COMPLETE
    if not marker.exists():
        with _locked(rdir.parent / (version + ".lock")):
            if not marker.exists():
                if rdir.exists():  # leftovers of an interrupted run
                    shutil.rmtree(rdir)
                for stale in rdir.parent.glob(".tmp-%s-*" % version):   # killed mid-download
                    shutil.rmtree(stale, ignore_errors=True)
                rdir.parent.mkdir(parents=True, exist_ok=True)
                work = Path(tempfile.mkdtemp(prefix=".tmp-%s-" % version, dir=rdir.parent))
                try:
                    tgz = _npm_pack("%s@%s" % (package, version), work)
                    unpacked = work / "unpacked"
                    _unpack(tgz, unpacked)
                    tgz.unlink()
                    if not (unpacked / "package").is_dir():
                        raise ReleaseError("%s@%s: tarball has no package/ directory" % (package, version))
                    (unpacked / _COMPLETE).write_text("%s@%s\n" % (package, version))
                    os.rename(unpacked, rdir)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
    prog = _program(package, rdir / "package")
    if not prog.exists():
        raise ReleaseError("%s@%s: expected program %s not in the package" % (package, version, prog))
    if prog.is_file() and prog.suffix != ".js" and not os.access(prog, os.X_OK):
        prog.chmod(prog.stat().st_mode | 0o111)
    return prog


def remove_npm_release(package: str, version: str) -> None:
    """Delete an unpacked release from the cache (benchmarks over many big releases)."""
    rdir = release_dir(package, version)
    with _locked(rdir.parent / (version + ".lock")):
        shutil.rmtree(rdir, ignore_errors=True)


def is_cached(package: str, version: str) -> bool:
    return (release_dir(package, version) / _COMPLETE).exists()


def npm_versions(package: str) -> list[str]:
    """All published versions of a package (``npm view PACKAGE versions``)."""
    npm = shutil.which("npm")
    if npm is None:
        raise ReleaseError("npm is not installed")
    proc = subprocess.run([npm, "view", package, "versions", "--json"], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise ReleaseError("npm view %s failed: %s" % (package, proc.stderr.strip()[-1000:]))
    v = json.loads(proc.stdout)
    return [v] if isinstance(v, str) else list(v)


def pypi_venv(requirement: str) -> Path:
    """A virtualenv (made once, cached next to the npm releases) with `requirement` installed from
    PyPI, e.g. "claude-agent-sdk==0.2.189"; returns its python. A venv of its own: the package's
    dependencies never meet tracer's pins. Built in a temporary directory, then renamed."""
    safe = "".join(c if c.isalnum() or c in "._-" else "+" for c in requirement)
    vdir = cache_root() / "pypi" / safe
    marker = vdir / _COMPLETE
    if not marker.exists():
        with _locked(vdir.parent / (safe + ".lock")):
            if not marker.exists():
                if vdir.exists():
                    shutil.rmtree(vdir)
                for stale in vdir.parent.glob(".tmp-%s-*" % safe):
                    shutil.rmtree(stale, ignore_errors=True)
                work = Path(tempfile.mkdtemp(prefix=".tmp-%s-" % safe, dir=vdir.parent))
                try:
                    # the venv's own paths must be the final ones: build it there under a lock
                    subprocess.run(["/usr/bin/python3", "-m", "venv", str(vdir)], check=True,
                                   capture_output=True, timeout=300)
                    proc = subprocess.run(
                        [str(vdir / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                         "--only-binary", ":all:", "--cache-dir", str(work / "pip-cache"), requirement],
                        capture_output=True, text=True, timeout=1800)
                    if proc.returncode != 0:
                        raise ReleaseError("pip install %s failed: %s" % (requirement, proc.stderr.strip()[-2000:]))
                    marker.write_text(requirement + "\n")
                except BaseException:
                    shutil.rmtree(vdir, ignore_errors=True)
                    raise
                finally:
                    shutil.rmtree(work, ignore_errors=True)
    return vdir / "bin" / "python"
