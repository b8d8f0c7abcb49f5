"""libbpf (`libbpf.so.1`, installed as BCC's dependency) through ctypes: the bpf(2) commands tracer
uses - create a map, load a program, describe a map, read/write/delete map elements - and libbpf's
ring-buffer reader (tracer/capture/ring.py).

Only libbpf's stable low-level API is used (the functions exist since libbpf 0.6 / 0.0.9 with the
same signatures through 1.x); option structs carry their size, so an older or newer libbpf reads
exactly the fields it knows. Every call returns a negative errno on failure, turned into OSError here.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

from tracer.errors import TracerError
from tracer.probes.program import MapInfo

c_int, c_uint, c_size_t, c_void_p, c_char_p = (ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t,
                                               ctypes.c_void_p, ctypes.c_char_p)


class _MapCreateOpts(ctypes.Structure):      # struct bpf_map_create_opts (libbpf 0.6+)
    _fields_ = [("sz", c_size_t), ("btf_fd", c_uint), ("btf_key_type_id", c_uint),
                ("btf_value_type_id", c_uint), ("btf_vmlinux_value_type_id", c_uint),
                ("inner_map_fd", c_uint), ("map_flags", c_uint), ("map_extra", ctypes.c_uint64),
                ("numa_node", c_uint), ("map_ifindex", c_uint)]


class _ProgLoadOpts(ctypes.Structure):       # struct bpf_prog_load_opts (libbpf 0.6+)
    _fields_ = [("sz", c_size_t), ("attempts", c_int), ("expected_attach_type", c_int),
                ("prog_btf_fd", c_uint), ("prog_flags", c_uint), ("prog_ifindex", c_uint),
                ("kern_version", c_uint), ("attach_btf_id", c_uint), ("attach_prog_fd", c_uint),
                ("attach_btf_obj_fd", c_uint), ("fd_array", c_void_p), ("func_info", c_void_p),
                ("func_info_cnt", c_uint), ("func_info_rec_size", c_uint), ("line_info", c_void_p),
                ("line_info_cnt", c_uint), ("line_info_rec_size", c_uint), ("log_level", c_uint),
                ("log_size", c_uint), ("log_buf", c_void_p)]


class _MapInfo(ctypes.Structure):            # the head of struct bpf_map_info (linux/bpf.h)
    _fields_ = [("type", c_uint), ("id", c_uint), ("key_size", c_uint), ("value_size", c_uint),
                ("max_entries", c_uint), ("map_flags", c_uint), ("name", ctypes.c_char * 16)]


# int (*)(void *ctx, void *data, size_t size); data as char* so that data[:size] copies it in one step
RING_SAMPLE_FN = ctypes.CFUNCTYPE(c_int, c_void_p, ctypes.POINTER(ctypes.c_char), c_size_t)

_SIGNATURES = {
    "bpf_map_create": (c_int, [c_int, c_char_p, c_uint, c_uint, c_uint, ctypes.POINTER(_MapCreateOpts)]),
    "bpf_prog_load": (c_int, [c_int, c_char_p, c_char_p, c_void_p, c_size_t,
                              ctypes.POINTER(_ProgLoadOpts)]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, ctypes.POINTER(c_uint)]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "ring_buffer__new": (c_void_p, [c_int, RING_SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
    "libbpf_major_version": (c_uint, []),
    "libbpf_minor_version": (c_uint, []),
    "libbpf_set_strict_mode": (c_int, [c_int]),
}

LIBBPF_STRICT_DIRECT_ERRS = 0x02
# bpf_map_update_elem flags
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2


INSTALL_HINT = "install libbpf 0.6 or newer (Debian/Ubuntu: apt-get install libbpf1, BCC's dependency)"


@functools.lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    """libbpf, loaded once; TracerError when it is missing or too old (tracer cannot trace without)."""
    try:
        so = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as e:
        raise TracerError(f"libbpf.so.1 cannot be loaded ({e}); {INSTALL_HINT}") from None
    for name, (restype, argtypes) in _SIGNATURES.items():
        try:
            fn = getattr(so, name)
        except AttributeError:
            raise TracerError(f"libbpf.so.1 has no {name} (older than 0.6); {INSTALL_HINT}") from None
        fn.restype, fn.argtypes = restype, argtypes
    if so.libbpf_major_version() == 0:      # 0.x returns -1 + errno unless told to return -errno
        so.libbpf_set_strict_mode(LIBBPF_STRICT_DIRECT_ERRS)
    return so


def version() -> str:
    return f"{lib().libbpf_major_version()}.{lib().libbpf_minor_version()}"


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0,
               name: str = "") -> int:
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), map_flags=flags)
    return _check(lib().bpf_map_create(map_type, name.encode() or None, key_size, value_size,
                                       max_entries, ctypes.byref(opts)), f"creating map {name}")


class VerifierError(OSError):
    """The kernel refused a program; `log` is the verifier's explanation."""

    def __init__(self, err: int, name: str, log: str):
        super().__init__(err, f"loading {name}: {os.strerror(err)}")
        self.name = name
        self.log = log


def kernel_version_code() -> int:
    nums = [int(x) for x in platform.release().split("-")[0].split(".")[:3] if x.isdigit()]
    nums += [0] * (3 - len(nums))
    return (nums[0] << 16) + (nums[1] << 8) + min(nums[2], 255)


def prog_load(prog_type: int, insns: bytes, name: str, license: str = "GPL",
              kern_version: int | None = None, log_size: int = 4 << 20) -> int:
    """Load one program; when the kernel refuses it, load again with a verifier log and raise
    VerifierError carrying that log."""
    if len(insns) % 8 or not insns:
        raise ValueError(f"{name}: instruction bytes not a multiple of 8")
    code = ctypes.create_string_buffer(insns, len(insns))
    kv = kernel_version_code() if kern_version is None else kern_version

    def attempt(log=None) -> int:
        opts = _ProgLoadOpts(sz=ctypes.sizeof(_ProgLoadOpts), kern_version=kv)
        if log is not None:
            opts.log_level, opts.log_size, opts.log_buf = 1, len(log), ctypes.addressof(log)
        return lib().bpf_prog_load(prog_type, name.encode(), license.encode(), code, len(insns) // 8,
                                   ctypes.byref(opts))

    rc = attempt()
    if rc >= 0:
        return rc
    if -rc == 1:                            # EPERM: not privileged; a log would not say more
        _check(rc, f"loading {name}")
    log = ctypes.create_string_buffer(log_size)
    rc = attempt(log)
    if rc >= 0:
        return rc
    raise VerifierError(-rc, name, log.value.decode("utf-8", "replace"))


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    size = c_uint(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "map info")
    return MapInfo(info.type, info.key_size, info.value_size, info.max_entries, info.map_flags,
                   info.name.decode("ascii", "replace"))


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under `key` (for per-CPU maps: value_size = slot x possible CPUs), or None."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    rc = lib().bpf_map_lookup_elem(fd, k, v)
    if rc == -2:                            # ENOENT
        return None
    _check(rc, "map lookup")
    return v.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    _check(lib().bpf_map_update_elem(fd, k, v, flags), "map update")


def map_delete(fd: int, key: bytes) -> bool:
    """Remove `key`; False when it was not there."""
    k = ctypes.create_string_buffer(key, len(key))
    rc = lib().bpf_map_delete_elem(fd, k)
    if rc == -2:
        return False
    _check(rc, "map delete")
    return True


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key of a hash map, in the map's order (bpf_map_get_next_key from no key)."""
    out: list[bytes] = []
    cur, nxt = None, ctypes.create_string_buffer(key_size)
    while len(out) < (1 << 24):
        rc = lib().bpf_map_get_next_key(fd, cur, nxt)
        if rc == -2:                            # ENOENT: the end
            break
        _check(rc, "map next key")
        out.append(nxt.raw)
        cur = ctypes.create_string_buffer(nxt.raw, key_size)
    return out
