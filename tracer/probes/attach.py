"""Load the BPF program (bpf/tracer.bpf.c) with BCC and attach its uprobes to target processes."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import threading
from dataclasses import dataclass, field

from tracer.capture.event import BPF_DIR, decode_drops
from tracer.probes import kheaders
from tracer.probes.locate import Located

# function name -> (entry program, return program)
PROBES = {
    "SSL_read": ("probe_read_enter", "probe_read_return"),
    "SSL_write": ("probe_write_enter", "probe_write_return"),
    "SSL_read_ex": ("probe_read_ex_enter", "probe_read_return"),
    "SSL_write_ex": ("probe_write_ex_enter", "probe_write_return"),
}


class TracerError(Exception):
    """An error to show the user as is (no traceback)."""


def _import_bcc():
    try:
        import bcc  # noqa: F401
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
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
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


@dataclass
class Attachment:
    pid: int
    path: str
    located: Located
    probes: list[tuple[str, int, str]] = field(default_factory=list)  # (kind, addr, fn)


class PidAttachments:
    """Book-keeping shared by the program loaders: attachments per target pid.
    Subclasses set self.attachments / self._lock and implement _detach(att)."""

    attachments: list
    _lock: threading.Lock

    def _detach(self, att) -> None:
        raise NotImplementedError

    def detach_pid(self, pid: int):
        with self._lock:
            mine = [a for a in self.attachments if a.pid == pid]
            self.attachments = [a for a in self.attachments if a.pid != pid]
        for a in mine:
            self._detach(a)


class BpfProgram(PidAttachments):
    """One compiled+loaded program; many targets can be attached to it."""

    def __init__(self, ring_buffer_mb: int = 8, copy_limit: int = 1 << 20):
        if os.geteuid() != 0:
            raise TracerError("tracer needs root (or CAP_BPF + CAP_PERFMON) to load eBPF programs; "
                              "run it with sudo")
        BPF = _import_bcc()
        pages = max(1, (ring_buffer_mb << 20) // 4096)
        pages = 1 << (pages.bit_length() - 1)           # power of two
        choice = kheaders.choose()
        if choice.source == "none":
            raise TracerError(f"no kernel headers usable by BCC: {choice.detail}. "
                              f"Fix: {kheaders.install_hint()}")
        kheaders.apply(choice)
        self.header_choice = choice
        self.ring_pages = pages
        cflags = [f"-I{BPF_DIR}", f"-DRINGBUF_PAGES={pages}", f"-DCOPY_LIMIT={int(copy_limit)}",
                  "-Wno-macro-redefined", "-Wno-unused-function"]
        with _capture_stderr() as err:
            try:
                self.bpf = BPF(src_file=str(BPF_DIR / "tracer.bpf.c").encode(), cflags=cflags)
                for fn in sorted({f for pair in PROBES.values() for f in pair}) + ["probe_free"]:
                    self.bpf.load_func(fn.encode(), BPF.KPROBE)
            except Exception as e:
                text = err.getvalue().decode("utf-8", "replace").strip()
                tail = "\n".join(text.splitlines()[-15:])
                raise TracerError(f"could not compile/load the BPF program ({e}). Headers: "
                                  f"{choice.detail}.\n{tail}\nRun `tracer doctor` for a check of "
                                  "this machine.") from None
        self._BPF = BPF
        self.attachments: list[Attachment] = []
        self._lock = threading.Lock()

    def attach(self, pid: int, path: str, located: Located) -> Attachment:
        """uprobes (+uretprobes) on the located functions of `path`, for `pid` only."""
        att = Attachment(pid, path, located)
        name = path.encode()
        try:
            for func, (entry, ret) in PROBES.items():
                loc = located.functions.get(func)
                if loc is None:
                    continue
                self.bpf.attach_uprobe(name=name, addr=loc.address, fn_name=entry.encode(), pid=pid)
                att.probes.append(("uprobe", loc.address, entry))
                self.bpf.attach_uretprobe(name=name, addr=loc.address, fn_name=ret.encode(), pid=pid)
                att.probes.append(("uretprobe", loc.address, ret))
            free = located.functions.get("SSL_free")
            if free is not None:
                self.bpf.attach_uprobe(name=name, addr=free.address, fn_name=b"probe_free", pid=pid)
                att.probes.append(("uprobe", free.address, "probe_free"))
        except Exception as e:
            self._detach(att)
            raise TracerError(f"attaching uprobes to {path} (pid {pid}) failed: {e}") from None
        with self._lock:
            self.attachments.append(att)
        return att

    def _detach(self, att: Attachment):
        name = att.path.encode()
        for kind, addr, _fn in att.probes:
            try:
                if kind == "uprobe":
                    self.bpf.detach_uprobe(name=name, addr=addr, pid=att.pid)
                else:
                    self.bpf.detach_uretprobe(name=name, addr=addr, pid=att.pid)
            except Exception:
                pass
        att.probes.clear()

    def open_ring(self, callback):
        self.bpf["events"].open_ring_buffer(callback)

    def poll(self, timeout_ms: int):
        self.bpf.ring_buffer_poll(timeout_ms)

    def consume(self):
        self.bpf.ring_buffer_consume()

    def drops(self) -> dict[str, int]:
        total: dict[str, int] = {}
        table = self.bpf["drops"]
        for per_cpu in table.values():
            for v in per_cpu:
                raw = bytes(ctypes.string_at(ctypes.addressof(v), ctypes.sizeof(v)))
                for k, n in decode_drops(raw).items():
                    total[k] = total.get(k, 0) + n
        return total

    def close(self):
        for a in list(self.attachments):
            self._detach(a)
        self.attachments.clear()
        try:
            self.bpf.cleanup()
        except Exception:
            pass
