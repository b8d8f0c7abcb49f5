"""Compile bpf/tracer.bpf.c with BCC: in an isolated child process whose result is cached
(tracer/probes/bpfcache.py), or in this process as the fallback backend (`BccProgram`).

Importing BCC maps libbcc and LLVM into a process (~77 MB RSS) and compiling costs 1.5-3 s and
~60 MB more, so normally only a short-lived child does it. The child runs as root, so it is started
isolated: `python -I -S` (no PYTHON* environment, no user or site packages, no script directory or
working directory on sys.path), working directory `/`, an environment of PATH and LANG only, and it
imports exactly two packages, tracer's and BCC's, from the directories this process found them in -
both checked to be root's own first (tracer/trust.py). It compiles and loads the programs, then
prints on stdout, as JSON, what loading them again needs:
  * each program's final instructions (`BPF.dump_func`: after BCC's rewriting, map references are
    ld_imm64 with src_reg BPF_PSEUDO_MAP_FD and imm = the child's map fd), type and license, and
  * every map those instructions reference plus the named maps user space uses (events, active,
    offsets, drops), each as BPF_OBJ_GET_INFO_BY_FD describes it (type, key/value size,
    max_entries, flags, name).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time

from tracer import libbpf, trust
from tracer.errors import TracerError
from tracer.paths import bpf_dir
from tracer.probes import kheaders
from tracer.probes.program import MAP_NAMES, PROGRAMS, TRACEFS, Program, referenced_map_fds

COMPILE_TIMEOUT = 180
# Seconds the compile child may take before tracer falls back to BCC in-process. Emulated or very
# slow machines need more (an arm64 QEMU TCG guest on a busy host: several minutes). Only a number
# is taken from the environment.
COMPILE_TIMEOUT_ENV = "TRACER_COMPILE_TIMEOUT"


def compile_timeout() -> float:
    try:
        v = float(os.environ.get(COMPILE_TIMEOUT_ENV, ""))
    except ValueError:
        return COMPILE_TIMEOUT
    return v if 0 < v < 86400 else COMPILE_TIMEOUT
CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class CompileError(TracerError):
    """BCC could not compile or load the program (the message is for the user, as is)."""


def ring_pages(ring_buffer_mb: int) -> int:
    """Ring size in pages: a power of two, at most `ring_buffer_mb`."""
    pages = max(1, (int(ring_buffer_mb) << 20) // 4096)
    return 1 << (pages.bit_length() - 1)


def cflags(pages: int, copy_limit: int) -> list[str]:
    return [f"-I{bpf_dir()}", f"-DRINGBUF_PAGES={int(pages)}", f"-DCOPY_LIMIT={int(copy_limit)}",
            "-Wno-macro-redefined", "-Wno-unused-function", *tracepoint_cflags()]


def tracepoint_cflags() -> list[str]:
    """Flags for the tracepoint records this kernel writes: sched_process_exit says whether the
    last thread of the process exited (group_dead) since Linux 6.16. From the tracepoint's format
    in tracefs, so the bytecode cache key (which holds the flags) follows the kernel's."""
    for root in TRACEFS:
        try:
            with open(f"{root}/events/sched/sched_process_exit/format") as f:
                return ["-DTRACER_EXIT_GROUP_DEAD"] if " group_dead;" in f.read() else []
        except OSError:
            continue
    return []


def header_choice() -> kheaders.HeaderChoice:
    """The kernel headers to compile against (building a merged tree when needed), or TracerError."""
    choice = kheaders.choose()
    if choice.source == "none":
        raise CompileError(f"no kernel headers usable by BCC: {choice.detail}. "
                           f"Fix: {kheaders.install_hint()}")
    return choice


def _import_bcc():
    try:
        from bcc import BPF
    except ImportError as e:
        raise TracerError(
            f"BCC's Python module is not importable ({e}). Install Debian's python3-bpfcc and run "
            "tracer with /usr/bin/python3 or a venv made with --system-site-packages "
            "(`make bootstrap` does both).") from None
    return BPF


@contextlib.contextmanager
def _capture_stderr():
    """BCC prints compiler/verifier errors on fd 2; collect them to put into our error message."""
    r, w = os.pipe()
    saved = os.dup(2)
    buf = io.BytesIO()

    def pump():
        while chunk := os.read(r, 65536):
            buf.write(chunk)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    os.dup2(w, 2)
    os.close(w)
    try:
        yield buf
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        t.join(timeout=5)
        os.close(r)


def bcc_load(pages: int, copy_limit: int, choice: kheaders.HeaderChoice):
    """Compile with BCC in this process and load every program: (BPF object, {name: prog fd})."""
    BPF = _import_bcc()
    kheaders.apply(choice)
    with _capture_stderr() as err:
        try:
            b = BPF(src_file=str(bpf_dir() / "tracer.bpf.c").encode(), cflags=cflags(pages, copy_limit))
            fds = {p.name: b.load_func(p.name.encode(), int(p.type)).fd for p in PROGRAMS}
        except Exception as e:
            text = err.getvalue().decode("utf-8", "replace").strip()
            tail = "\n".join(text.splitlines()[-15:])
            raise CompileError(f"could not compile/load the BPF program ({e}). Headers: "
                               f"{choice.detail}.\n{tail}\nRun `tracer doctor` for a check of "
                               "this machine.") from None
    return b, fds


class BccProgram(Program):
    """The program compiled and loaded by BCC inside this process (no cache, LLVM mapped here)."""

    backend = "bcc"

    def __init__(self, ring_buffer_mb: int = 8, copy_limit: int = 1 << 20, *, started: float | None = None):
        super().__init__()
        t0 = time.monotonic() if started is None else started
        self.header_choice = header_choice()
        self.ring_pages = ring_pages(ring_buffer_mb)
        self.bpf, self.prog_fds = bcc_load(self.ring_pages, copy_limit, self.header_choice)
        for name in MAP_NAMES:
            fd = self.bpf[name.encode()].map_fd
            self.maps[name] = (fd, libbpf.map_info(fd))
        self.load_seconds = time.monotonic() - t0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.bpf.cleanup()
        except Exception:
            pass


# -- the child ----------------------------------------------------------------------------------

def describe(b, prog_fds: dict[str, int]) -> dict:
    """What loading the programs of BPF object `b` again needs (see the module docstring)."""
    from bcc import libbcc
    license = libbcc.lib.bpf_module_license(b.module)
    license = license.decode() if license else "GPL"
    programs, fds = {}, set()
    for p in PROGRAMS:
        code = b.dump_func(p.name.encode())
        fds |= referenced_map_fds(code)
        programs[p.name] = {"insns": base64.b64encode(code).decode(), "license": license,
                            "type": int(p.type), "insn_count": len(code) // 8}
    roles = {name: int(b[name.encode()].map_fd) for name in MAP_NAMES}
    maps = []
    for fd in sorted(fds | set(roles.values())):
        info = libbpf.map_info(fd)
        maps.append({"fd": fd, "name": info.name, "type": info.type, "key_size": info.key_size,
                     "value_size": info.value_size, "max_entries": info.max_entries,
                     "flags": info.flags})
    return {"kern_version": int(libbcc.lib.bpf_module_kern_version(b.module)),
            "roles": roles, "maps": maps, "programs": programs}


def child_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="tracer-compile")
    ap.add_argument("--ring-pages", type=int, required=True)
    ap.add_argument("--copy-limit", type=int, required=True)
    ap.add_argument("--kernel-source", default="")
    a = ap.parse_args(argv)
    choice = kheaders.HeaderChoice("given", a.kernel_source or None, a.kernel_source or "default")
    t0 = time.monotonic()
    try:
        b, fds = bcc_load(a.ring_pages, a.copy_limit, choice)
        out = describe(b, fds)
        b.cleanup()
    except TracerError as e:
        print(str(e), file=sys.stderr)
        return 2
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    out["compile_seconds"] = round(time.monotonic() - t0, 3)
    sys.stdout.write(json.dumps(out))
    return 0


# The child's whole program: load the two packages from the given directories, nothing else.
_CHILD = """\
import importlib.util, sys
def load(name, init):
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[init.rpartition('/')[0]])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
load('tracer', sys.argv[1])
load('bcc', sys.argv[2])
from tracer.probes.compile import child_main
sys.exit(child_main(sys.argv[3:]))
"""


def child_command(pages: int, copy_limit: int, choice: kheaders.HeaderChoice) -> list[str]:
    bcc_dir = trust.package_dir("bcc")
    if not bcc_dir:
        _import_bcc()                               # raises the explanation
    return [os.path.realpath(sys.executable), "-I", "-S", "-c", _CHILD,
            os.path.join(trust.tracer_dir(), "__init__.py"), os.path.join(bcc_dir, "__init__.py"),
            "--ring-pages", str(pages), "--copy-limit", str(copy_limit),
            "--kernel-source", choice.path or ""]


def compile_isolated(pages: int, copy_limit: int, choice: kheaders.HeaderChoice,
                     timeout: float | None = None) -> dict:
    """Compile in the isolated child; its description of the programs and maps (see `describe`).
    Raises CompileError (BCC said no) or RuntimeError (the child failed otherwise)."""
    trust.check_root_can_trust()
    timeout = timeout or compile_timeout()
    cmd = child_command(pages, copy_limit, choice)
    try:
        p = subprocess.run(cmd, env=CHILD_ENV, cwd="/", capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"compiling the BPF program took longer than {timeout:.0f} s") from None
    except OSError as e:
        raise RuntimeError(f"could not start {cmd[0]}: {e.strerror}") from None
    err = p.stderr.decode("utf-8", "replace").strip()
    if p.returncode == 2:
        raise CompileError(err or "BCC could not compile the BPF program")
    if p.returncode != 0:
        tail = "\n".join(err.splitlines()[-8:])
        raise RuntimeError(f"the compile step exited with {p.returncode}: {tail}")
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise RuntimeError(f"the compile step printed no description ({e})") from None
