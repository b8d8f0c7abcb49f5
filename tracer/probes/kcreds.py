"""User-space side of the BPF credential guard (bpf/tracer.bpf.c `may_copy`).

The return probes copy plaintext only for a process user space approved, and - unless told not to
check - only while the calling thread's credentials are exactly the approved uid/gid and its process
is dumpable: the kernel's ptrace rule, applied at the moment of the copy, so a setuid/setgid exec
(uprobes attached with a pid survive exec) yields nothing even before user space notices it.

Two maps:
  * ``cred_layout`` [1]: where the ids and the dumpable bits are in the running kernel's
    ``task_struct``/``cred``/``mm_struct``. Read from the kernel's own BTF
    (/sys/kernel/btf/vmlinux) through libbpf's BTF API: the headers BCC compiles against can be
    another kernel's (tracer/probes/kheaders.py), so the offsets cannot come from them.
  * ``target_ids`` (key: tgid): the approved ids, and flags: whether to check the ids at all (not
    when root itself invoked tracer or the caller passed --allow-other-users: then any process may be
    traced), and - set by the kernel side when a followed process exec's - that the approval is
    withdrawn until user space has checked the new program and approves it again.

`CredGuard.approve(pid, ...)` must be called for a process before its probes are attached (and by
anything that starts tracing a new process, e.g. a fork/exec follower, after `tracer.access.may_trace`
said yes); `forget(pid)` when it is gone. Without BTF the layout stays unknown: checked processes are
then approved unchecked and the caller is told (the user-space re-check still stops them, a watch
interval later).
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from dataclasses import dataclass

from tracer import libbpf
from tracer.errors import TracerError

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
GUARD_CHECK, GUARD_EXECED = 0x1, 0x2       # struct tracer_target_ids.flags (bpf/tracer_event.h)
BTF_KIND_STRUCT, BTF_KIND_UNION = 4, 5


@dataclass(frozen=True)
class CredLayout:
    task_real_cred: int
    cred_uid: int
    task_mm: int
    mm_flags: int

    def pack(self) -> bytes:
        return struct.pack("<IIII", self.task_real_cred, self.cred_uid, self.task_mm, self.mm_flags)


def _libbpf():
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    lib.btf__parse.restype = ctypes.c_void_p
    lib.btf__parse.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    lib.btf__find_by_name_kind.restype = ctypes.c_int
    lib.btf__find_by_name_kind.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint]
    lib.btf__type_by_id.restype = ctypes.c_void_p
    lib.btf__type_by_id.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.btf__name_by_offset.restype = ctypes.c_char_p
    lib.btf__name_by_offset.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.btf__free.restype = None
    lib.btf__free.argtypes = [ctypes.c_void_p]
    return lib


def _members(lib, btf, type_id: int, base_bits: int = 0, depth: int = 0) -> dict[str, tuple[int, int]]:
    """name -> (bit offset, type id) of a struct/union's members, anonymous members flattened."""
    if depth > 8:
        return {}
    p = lib.btf__type_by_id(btf, type_id)
    if not p:
        return {}
    _name_off, info, _size = struct.unpack("<III", ctypes.string_at(p, 12))
    kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
    if kind not in (BTF_KIND_STRUCT, BTF_KIND_UNION):
        return {}
    raw = ctypes.string_at(p + 12, 12 * vlen)
    out: dict[str, tuple[int, int]] = {}
    for i in range(vlen):
        name_off, mtype, off = struct.unpack_from("<III", raw, 12 * i)
        bits = base_bits + (off & 0xFFFFFF if kflag else off)
        name = (lib.btf__name_by_offset(btf, name_off) or b"").decode()
        if name:
            out.setdefault(name, (bits, mtype))
        else:
            for k, v in _members(lib, btf, mtype, bits, depth + 1).items():
                out.setdefault(k, v)
    return out


@functools.lru_cache(maxsize=1)
def cred_layout(btf_path: str = VMLINUX_BTF) -> CredLayout | None:
    """The offsets the guard needs, from the running kernel's BTF; None when unavailable."""
    if not os.path.exists(btf_path):
        return None
    try:
        lib = _libbpf()
    except OSError:
        return None
    btf = lib.btf__parse(btf_path.encode(), None)
    if not btf or btf > 2**64 - 4096:          # libbpf returns NULL or an ERR_PTR
        return None
    try:
        found = {}
        for struct_name in ("task_struct", "cred", "mm_struct"):
            tid = lib.btf__find_by_name_kind(btf, struct_name.encode(), BTF_KIND_STRUCT)
            if tid <= 0:
                return None
            found[struct_name] = _members(lib, btf, tid)
        task, cred, mm = found["task_struct"], found["cred"], found["mm_struct"]
        ids = ("uid", "gid", "suid", "sgid", "euid", "egid", "fsuid", "fsgid")
        if not all(k in cred for k in ids) or "real_cred" not in task or "mm" not in task:
            return None
        first = cred["uid"][0]
        if any(cred[k][0] != first + 32 * i for i, k in enumerate(ids)) or first % 8:
            return None                          # the guard reads the eight ids as one array
        flags = mm.get("flags") or mm.get("__mm_flags")
        if flags is None or flags[0] % 64 or task["real_cred"][0] % 64 or task["mm"][0] % 64:
            return None
        return CredLayout(task["real_cred"][0] // 8, first // 8, task["mm"][0] // 8, flags[0] // 8)
    finally:
        lib.btf__free(btf)


class CredGuard:
    """The two maps of one loaded program."""

    def __init__(self, layout_fd: int, targets_fd: int):
        self.targets_fd = targets_fd
        self.layout = cred_layout()
        if self.layout is not None:
            libbpf.map_update(layout_fd, struct.pack("<I", 0), self.layout.pack())

    @property
    def enforcing(self) -> bool:
        return self.layout is not None

    def approve(self, pid: int, uid: int, gid: int, check: bool) -> bool:
        """Let the probes copy ``pid``'s data (while its ids stay uid/gid, when ``check``); also after
        an exec (it clears TRACER_GUARD_EXECED: call it only once the new program passed the ptrace
        rule). The process' count of refused calls is kept. Returns whether the kernel will check the
        ids (False: no BTF layout, checked in user space only)."""
        check = check and self.enforcing
        key = struct.pack("<I", pid)
        try:
            libbpf.map_update(self.targets_fd, key, struct.pack(
                "<IIII", uid, gid, GUARD_CHECK if check else 0, self.denied(pid)))
        except OSError as e:        # e.g. E2BIG: more traced processes than the map holds
            raise TracerError(f"cannot approve pid {pid} for tracing: {e.strerror or e}") from None
        return check

    def denied(self, pid: int) -> int:
        """SSL calls of ``pid`` whose data the guard did not copy (its ids changed, or it exec'd and
        was not approved anew yet)."""
        raw = libbpf.map_lookup(self.targets_fd, struct.pack("<I", pid), 16)
        return struct.unpack("<IIII", raw)[3] if raw else 0

    def forget(self, pid: int) -> None:
        libbpf.map_delete(self.targets_fd, struct.pack("<I", pid))
