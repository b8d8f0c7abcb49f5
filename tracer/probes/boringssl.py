"""Locate SSL_read / SSL_write inside a stripped, statically linked BoringSSL (Bun, Claude Code).

Bun's executables carry no ``SSL_*`` symbols, but BoringSSL's error macro
``OPENSSL_PUT_ERROR(SSL, reason)`` expands to ``ERR_put_error(ERR_LIB_SSL=16, [0,] reason, __FILE__,
__LINE__)`` and the ``__FILE__`` strings survive in .rodata. Every error site in ssl_lib.cc therefore
loads the address of the string ``…/vendor/boringssl/ssl/ssl_lib.cc`` into an argument register next to
the library number and the reason code. The reason codes are stable BoringSSL constants, so the set of
reasons raised by a function is a fingerprint that survives recompilation (line numbers do not):

  * ``SSL_write``      raises exactly {SHOULD_NOT_HAVE_BEEN_CALLED 0x42, UNINITIALIZED 0xe2,
                       SSL_HANDSHAKE_FAILURE 0xd7, BAD_LENGTH 0x6f}
  * ``ssl_read_impl``  raises exactly {0xe2, 0xd7}
  * ``SSL_read``       raises 0x42 (its inlined SSL_peek) and calls ssl_read_impl directly
                       (SSL_shutdown also calls it but raises no 0x42)

Discovery, all on the mapped file (no full disassembly):
  1. find the string, turn its file offset into a virtual address through the PT_LOAD headers;
  2. find the code that loads it: a 32-bit absolute immediate (non-PIE, what Bun ships) found with a
     byte search, or a rip-relative ``lea`` (PIE) found with a vectorised numpy scan;
  3. decode a few instructions around each site with capstone and read the constants in the argument
     registers (two calling conventions are seen in the wild: file in rcx / reason in edx / line in
     r8d in newer builds, file in rdx / reason in esi / line in ecx in older ones); keep library 16;
  4. map each site to its function: the nearest 16-byte aligned address preceded by int3 padding
     that is the target of a direct ``call`` (call targets come from a numpy scan of e8 rel32);
  5. fingerprint, insist on exactly one candidate per function, else raise LocateError.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field

import numpy as np
from capstone import CS_ARCH_X86, CS_MODE_64, CS_OP_IMM, CS_OP_MEM, CS_OP_REG, Cs
from capstone import x86_const as X
from elftools.elf.elffile import ELFFile

from tracer.probes import boringssl_arm64, elfview
from tracer.probes.errsite import MAX_FUNC, ErrorSite, decode_reason
from tracer.probes.located import FunctionLocation, Located, LocateError, build_id

METHOD = "boringssl error-site fingerprint"

R_SHOULD_NOT_HAVE_BEEN_CALLED = 0x42
R_BAD_LENGTH = 0x6F
R_SSL_HANDSHAKE_FAILURE = 0xD7
R_UNINITIALIZED = 0xE2

SSL_WRITE_REASONS = frozenset({R_SHOULD_NOT_HAVE_BEEN_CALLED, R_UNINITIALIZED,
                               R_SSL_HANDSHAKE_FAILURE, R_BAD_LENGTH})
SSL_READ_IMPL_REASONS = frozenset({R_UNINITIALIZED, R_SSL_HANDSHAKE_FAILURE})

_FILE_SUFFIX = b"/ssl/ssl_lib.cc\x00"    # ...and "boringssl" earlier in the same path string

_PF_X = 1

_CALL_GROUPS = (X.X86_GRP_CALL,)
_JUMP_GROUPS = (X.X86_GRP_JUMP,)
_STOP_GROUPS = (X.X86_GRP_RET, X.X86_GRP_INT, X.X86_GRP_IRET)

# argument position (System V: rdi, rsi, rdx, rcx, r8, r9) of every alias of an argument register
_ARG_REGS = {}
for _pos, _aliases in enumerate((
    (X.X86_REG_RDI, X.X86_REG_EDI, X.X86_REG_DI, X.X86_REG_DIL),
    (X.X86_REG_RSI, X.X86_REG_ESI, X.X86_REG_SI, X.X86_REG_SIL),
    (X.X86_REG_RDX, X.X86_REG_EDX, X.X86_REG_DX, X.X86_REG_DL),
    (X.X86_REG_RCX, X.X86_REG_ECX, X.X86_REG_CX, X.X86_REG_CL),
    (X.X86_REG_R8, X.X86_REG_R8D, X.X86_REG_R8W, X.X86_REG_R8B),
    (X.X86_REG_R9, X.X86_REG_R9D, X.X86_REG_R9W, X.X86_REG_R9B),
)):
    for _r in _aliases:
        _ARG_REGS[_r] = _pos


@dataclass
class Analysis:
    """Everything discovery learned about one object (kept for diagnostics and tests)."""
    file_string_va: list[int] = field(default_factory=list)
    references: int = 0                     # instructions loading the string
    sites: list[ErrorSite] = field(default_factory=list)
    functions: dict[int, frozenset[int]] = field(default_factory=dict)   # start -> reasons
    found: dict[str, int] = field(default_factory=dict)
    internal: dict[str, int] = field(default_factory=dict)     # helper functions (ssl_read_impl)

    def describe(self) -> str:
        parts = ["%d reference(s) to ssl_lib.cc, %d SSL error site(s) in %d function(s)"
                 % (self.references, len(self.sites), len(self.functions))]
        for name, addr in sorted(self.found.items()):
            parts.append("%s=%#x" % (name, addr))
        if self.functions:
            parts.append("reasons per function: " + " ".join(
                "%#x{%s}" % (f, ",".join("%x" % r for r in sorted(rs)))
                for f, rs in sorted(self.functions.items())))
        return "; ".join(parts)


class _Image:
    """The ELF file mapped read-only, with VA <-> file offset translation through PT_LOAD."""

    def __init__(self, f, elf: ELFFile):
        self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.size = len(self.mm)
        # (vaddr, offset, filesz, flags) of each PT_LOAD, from bounded header reads (elfview); filesz
        # is clipped to the file, so every range below lies inside the mapping
        self.loads = [(s.vaddr, s.offset, s.filesz, s.flags) for s in elfview.loads(elf)]
        self.pie = elf.header.e_type == "ET_DYN"
        self.machine = elf.header.e_machine           # the file's, never the host's

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:  # a numpy view still alive (e.g. in a traceback); GC will unmap
            pass

    def off_to_va(self, off: int) -> int | None:
        for va, o, sz, _ in self.loads:
            if o <= off < o + sz:
                return va + (off - o)
        return None

    def va_to_off(self, va: int) -> int | None:
        for v, o, sz, _ in self.loads:
            if v <= va < v + sz:
                return o + (va - v)
        return None

    def data_ranges(self):
        """(va, offset, size) of read-only, non-executable PT_LOADs (where .rodata lives); all
        non-writable PT_LOADs when there is none (old single-segment layouts)."""
        ro = [(va, o, min(sz, self.size - o)) for va, o, sz, fl in self.loads if not fl & 3 and sz]
        return ro or [(va, o, min(sz, self.size - o)) for va, o, sz, fl in self.loads
                      if not fl & 2 and sz]

    def find_in(self, ranges, needle: bytes) -> list[int]:
        """File offsets of every occurrence of needle inside the given ranges."""
        out = []
        for _, off, size in ranges:
            p = self.mm.find(needle, off, off + size)
            while p >= 0:
                out.append(p)
                p = self.mm.find(needle, p + 1, off + size)
        return out

    def prefetch(self, ranges) -> None:
        for _, off, size in ranges:
            start = off & ~(mmap.PAGESIZE - 1)
            try:
                self.mm.madvise(mmap.MADV_WILLNEED, start, size + (off - start))
            except (AttributeError, OSError, ValueError):
                pass

    def exec_ranges(self):
        """(va, offset, size) of every executable PT_LOAD, clipped to the file."""
        for va, o, sz, fl in self.loads:
            if fl & _PF_X and sz:
                yield va, o, min(sz, self.size - o)

    def read_va(self, va: int, n: int) -> bytes:
        off = self.va_to_off(va)
        if off is None:
            return b""
        return self.mm[off:off + n]


class BoringSSLStrategy:
    """Stripped BoringSSL (Bun / Claude Code): see the module documentation."""

    name = "boringssl"
    cacheable = True      # ~1 s on a 400 MB binary: worth caching by build-id

    def locate(self, path: str, elf: ELFFile) -> Located | None:
        if elf.header.e_machine not in MACHINE_CODE:
            return None
        img = _Image(elf.stream, elf)       # the very file `elf` reads (not the path again)
        try:
            if not _file_string_vas(img):
                return None
            an = analyze(img, path)
        finally:
            img.close()
        if an is None:
            return None
        funcs = {n: FunctionLocation(n, a, METHOD) for n, a in an.found.items()}
        return Located(path=path, build_id=build_id(elf), library="boringssl", functions=funcs)


# --------------------------------------------------------------------------------------------------
# discovery


def _file_string_vas(img: _Image) -> list[int]:
    """VAs of every ``…/boringssl/ssl/ssl_lib.cc`` string (the start of the NUL-terminated string)."""
    out = []
    for pos in img.find_in(img.data_ranges(), _FILE_SUFFIX):
        start = img.mm.rfind(b"\x00", max(0, pos - 1024), pos) + 1
        if start == 0 or b"boringssl" not in img.mm[start:pos]:
            continue   # OpenSSL's ssl_lib.c is .c; other ssl_lib.cc files are not BoringSSL
        va = img.off_to_va(start)
        if va is not None:
            out.append(va)
    return out


def _text_array(img: _Image, off: int, size: int) -> np.ndarray:
    return np.frombuffer(img.mm, dtype=np.uint8, count=size, offset=off)


def _le32(arr: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Little-endian signed int32 at each byte position (vectorised, unaligned)."""
    v = (arr[pos].astype(np.uint32) | (arr[pos + 1].astype(np.uint32) << 8)
         | (arr[pos + 2].astype(np.uint32) << 16) | (arr[pos + 3].astype(np.uint32) << 24))
    return v.view(np.int32).astype(np.int64)


def _reference_candidates(img: _Image, targets: list[int]) -> list[tuple[int, int]]:
    """(VA of the 4-byte field, kind) for every place code could load one of ``targets``.

    kind 0: absolute imm32 (field holds the address); kind 1: rip-relative disp32 of a ``lea``.
    """
    found: list[tuple[int, int]] = []
    for tva in targets:
        if 0 < tva < 1 << 31:
            pat = struct.pack("<I", tva)
            for va, off, size in img.exec_ranges():
                p = img.mm.find(pat, off, off + size)
                while p >= 0:
                    found.append((va + (p - off), 0))
                    p = img.mm.find(pat, p + 1, off + size)
    if found and not img.pie:
        return found
    # rip-relative lea: [REX] 8d modrm(mod=00, rm=101) disp32; next instruction = field + 4
    tset = np.array(sorted(targets), dtype=np.int64)
    for va, off, size in img.exec_ranges():
        if size < 8:
            continue
        a = _text_array(img, off, size)
        cand = np.flatnonzero((a[:-6] == 0x8D) & ((a[1:-5] & 0xC7) == 0x05))
        field_pos = cand + 2
        dest = _le32(a, field_pos) + (va + field_pos + 4)
        hit = np.isin(dest, tset)
        for fp in field_pos[hit]:
            found.append((va + int(fp), 1))
    return found


class _Decoder:
    def __init__(self, img: _Image):
        self.img = img
        self.cs = Cs(CS_ARCH_X86, CS_MODE_64)
        self.cs.detail = True

    def insns(self, va: int, size: int, count: int = 0):
        code = self.img.read_va(va, size)
        return list(self.cs.disasm(code, va, count))

    def one(self, va: int):
        r = self.insns(va, 16, 1)
        return r[0] if r else None

    def site_insn(self, field_va: int, kind: int, targets: set[int]):
        """The instruction whose imm/disp field is at field_va and that loads a target address."""
        for k in (1, 2, 3, 4):
            ins = self.one(field_va - k)
            if ins is None or ins.address + ins.size != field_va + 4:
                continue
            dst, val = _const_load(ins)
            if dst is None:
                continue
            if kind == 0 and val in targets:
                return ins, dst
            if kind == 1 and ins.id == X.X86_INS_LEA and val in targets:
                return ins, dst
        return None, None

    def preceding(self, va: int, window: int = 48):
        """Straight-line instructions ending exactly at va (best effort; [] if no clean decode)."""
        code = self.img.read_va(va - window, window)
        if len(code) != window:
            return []
        for skip in range(window):
            out = []
            ok = False
            for ins in self.cs.disasm(code[skip:], va - window + skip):
                out.append(ins)
                end = ins.address + ins.size
                if end == va:
                    ok = True
                    break
                if end > va:
                    break
            if ok:
                # keep what follows the last control transfer
                for i in range(len(out) - 1, -1, -1):
                    if _is_control(out[i]):
                        return out[i + 1:]
                return out[1:]  # the first decoded instruction may be a partial one
        return []


def _is_control(ins) -> bool:
    g = ins.groups
    return any(x in g for x in _CALL_GROUPS + _JUMP_GROUPS + _STOP_GROUPS) or ins.id in (
        X.X86_INS_INT3, X.X86_INS_UD2, X.X86_INS_HLT)


def _const_load(ins):
    """(argument register, constant) when ins puts a known constant in an argument register."""
    ops = ins.operands
    if len(ops) != 2 or ops[0].type != CS_OP_REG:
        return None, None
    dst = _ARG_REGS.get(ops[0].reg)
    if dst is None:
        return None, None
    if ins.id == X.X86_INS_MOV and ops[1].type == CS_OP_IMM:
        return dst, ops[1].imm & 0xFFFFFFFFFFFFFFFF
    if ins.id == X.X86_INS_XOR and ops[1].type == CS_OP_REG and ops[1].reg == ops[0].reg:
        return dst, 0
    if ins.id == X.X86_INS_LEA and ops[1].type == CS_OP_MEM and ops[1].mem.base == X.X86_REG_RIP \
            and ops[1].mem.index == 0:
        return dst, ins.address + ins.size + ops[1].mem.disp
    return None, None


def _clobbers(ins) -> list[int]:
    try:
        _, written = ins.regs_access()
    except Exception:  # pragma: no cover - capstone without access info
        return []
    return [_ARG_REGS[r] for r in written if r in _ARG_REGS]


def _site_args(dec: _Decoder, site):
    """Argument-register constants around an error site and the callee they are passed to.

    Decodes forward from the site to the call (following one unconditional jump, as clang shares
    a single ``call ERR_put_error`` between sites), then fills registers not set on that path from
    the straight-line code just before the site.
    """
    regs: dict[int, int] = {}
    callee = 0
    va = site.address
    followed = False
    budget = 24
    done = False
    while budget > 0 and not done:
        chunk = dec.insns(va, 160, 12)
        if not chunk:
            break
        nxt = None
        for ins in chunk:
            budget -= 1
            op = ins.operands[0] if ins.operands else None
            if ins.id == X.X86_INS_CALL:
                if op is not None and op.type == CS_OP_IMM:
                    callee = op.imm
                done = True
                break
            if ins.id == X.X86_INS_JMP and op is not None and op.type == CS_OP_IMM and not followed:
                followed = True
                nxt = op.imm
                break
            if _is_control(ins) or budget <= 0:
                done = True
                break
            d, v = _const_load(ins)
            if d is not None:
                regs[d] = v
            else:
                for r in _clobbers(ins):
                    regs.pop(r, None)
        va = nxt if nxt is not None else chunk[-1].address + chunk[-1].size
    before: dict[int, int] = {}
    for ins in dec.preceding(site.address):
        d, v = _const_load(ins)
        if d is not None:
            before[d] = v
        else:
            for r in _clobbers(ins):
                before.pop(r, None)
    for r, v in before.items():
        regs.setdefault(r, v)
    return regs, callee


def _call_targets(img: _Image):
    """(caller VA array, callee VA array) of every e8 rel32 byte pattern in executable segments.

    Includes false positives (e8 bytes inside other instructions); callers use this only as a
    membership test or verify individual calls by decoding.
    """
    callers, callees = [], []
    for va, off, size in img.exec_ranges():
        if size < 5:
            continue
        a = _text_array(img, off, size)
        pos = np.flatnonzero(a[:-4] == 0xE8)
        tgt = _le32(a, pos + 1) + (va + pos + 5)
        callers.append(pos + va)
        callees.append(tgt)
    if not callers:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(callers).astype(np.int64), np.concatenate(callees)


def _boundaries_before(img: _Image, va: int, limit: int = MAX_FUNC) -> list[int]:
    """Plausible function starts <= va, nearest first: 16-byte aligned addresses preceded by int3
    padding (clang) or starting with ``push %rbp`` (frame-pointer prologue; needed where a function
    ends in a noreturn call exactly on a 16-byte boundary and leaves no padding, and for gcc, which
    pads with nops). Callers additionally require a direct call to the address."""
    seg_lo = next((v for v, _, sz in img.exec_ranges() if v <= va < v + sz), None)
    if seg_lo is None:
        return []
    lo = (max(va - limit, seg_lo + 1) + 15) & ~0xF
    off = img.va_to_off(lo)
    if off is None or off < 1:
        return []
    n = min(va - lo + 5, img.size - off + 1)
    a = _text_array(img, off - 1, n)
    # a[i] is the byte at lo - 1 + i; A = lo + 16k: byte A-1 is a[16k], bytes A.. are a[16k+1..]
    grid = np.arange(0, n - 4, 16)
    ok = a[grid] == 0xCC
    ok |= a[grid + 1] == 0x55
    cands = lo + grid[ok]
    cands = cands[cands <= va]
    return [int(x) for x in cands[::-1]]


def _function_of(img: _Image, addrs: list[int], callee_sorted: np.ndarray) -> dict[int, int]:
    """Map addresses to their enclosing function start (0 when none within MAX_FUNC)."""
    out = {}
    for a in addrs:
        out[a] = 0
        for b in _boundaries_before(img, a):
            i = np.searchsorted(callee_sorted, b)
            if i < len(callee_sorted) and callee_sorted[i] == b:
                out[a] = b
                break
    return out


def _calls_in(dec: _Decoder, start: int, callers_to: list[int], target: int) -> bool:
    """True when one of the e8 positions callers_to is a real ``call target`` instruction of the
    function at ``start`` (linear decode from the function start)."""
    if not callers_to:
        return False
    last = max(callers_to)
    wanted = set(callers_to)
    va = start
    while va <= last:
        chunk = dec.insns(va, min(4096, last - va + 16))
        if not chunk:
            return False
        for ins in chunk:
            if ins.address in wanted and ins.id == X.X86_INS_CALL and ins.operands \
                    and ins.operands[0].type == CS_OP_IMM and ins.operands[0].imm == target:
                return True
            if ins.address > last:
                return False
        va = chunk[-1].address + chunk[-1].size
    return False


class X86Code:
    """The x86-64 reader of machine code; tracer.probes.boringssl_arm64.Arm64Code is the AArch64 one.

    Both answer the same four questions for analyze(): where the file name is passed to
    ERR_put_error and with which constants, every direct call (caller, callee), the function an
    address belongs to, and whether a function really calls a target at given call sites."""

    def __init__(self, img: _Image):
        self.img = img
        self.dec = _Decoder(img)

    def error_sites(self, targets: list[int]) -> tuple[int, list[ErrorSite]]:
        """(instructions loading one of the target strings, decoded library-16 error sites)."""
        tset = set(targets)
        refs, sites = 0, []
        for field_va, kind in _reference_candidates(self.img, targets):
            ins, dst = self.dec.site_insn(field_va, kind, tset)
            if ins is None:
                continue
            refs += 1
            regs, callee = _site_args(self.dec, ins)
            reason = decode_reason(regs, dst)
            if reason is not None:
                sites.append(ErrorSite(address=ins.address, reason=reason, err_call=callee))
        return refs, sites

    def call_graph(self):
        """(caller VAs, callee VAs, sorted plausible function starts among the callees)."""
        callers, callees = _call_targets(self.img)
        # function starts are 16-byte aligned: only aligned targets matter for membership tests
        return callers, callees, np.sort(callees[(callees & 0xF) == 0])

    def function_of(self, addrs: list[int], starts: np.ndarray) -> dict[int, int]:
        return _function_of(self.img, addrs, starts)

    def calls(self, start: int, call_sites: list[int], target: int) -> bool:
        return _calls_in(self.dec, start, call_sites, target)


# ELF e_machine -> machine-code reader (chosen from the file, never from the host)
MACHINE_CODE = {"EM_X86_64": X86Code, "EM_AARCH64": boringssl_arm64.Arm64Code}


def analyze(img: _Image, path: str = "") -> Analysis | None:
    """Run discovery; None when the object has no BoringSSL ssl_lib.cc error sites."""
    an = Analysis()
    an.file_string_va = _file_string_vas(img)
    if not an.file_string_va:
        return None
    code = MACHINE_CODE[img.machine](img)
    img.prefetch(list(img.exec_ranges()))      # cold start: let readahead work while we scan
    an.references, sites = code.error_sites(an.file_string_va)
    what = path or "this object"
    if not an.references:
        return None          # the string is there but no code uses it: not a BoringSSL we can probe
    if not sites:
        raise LocateError("BoringSSL in %s: %d instruction(s) load the ssl_lib.cc file name but none "
                          "decodes as ERR_put_error(ERR_LIB_SSL, ...)" % (what, an.references))
    an.sites = sites

    # all error sites should funnel into one ERR_put_error; outliers mean misparsed sites
    callees = [s.err_call for s in sites if s.err_call]
    if callees:
        common = max(set(callees), key=callees.count)
        sites = [s for s in sites if s.err_call in (0, common)]

    callers, callees_all, starts = code.call_graph()
    fmap = code.function_of([s.address for s in sites], starts)
    funcs: dict[int, set[int]] = {}
    for s in sites:
        s.function = fmap[s.address]
        if s.function:
            funcs.setdefault(s.function, set()).add(s.reason)
    an.functions = {k: frozenset(v) for k, v in funcs.items()}

    def one(name: str, cands: list[int]) -> int:
        if len(cands) != 1:
            raise LocateError(
                "BoringSSL in %s: expected exactly one %s candidate, found %d (%s); %s"
                % (what, name, len(cands), ", ".join("%#x" % c for c in cands) or "none",
                   an.describe()))
        return cands[0]

    ssl_write = one("SSL_write", [f for f, r in an.functions.items() if r == SSL_WRITE_REASONS])

    # ssl_read_impl raises UNINITIALIZED and SSL_HANDSHAKE_FAILURE (and, when the compiler inlines
    # ssl_do_post_handshake into it, that function's reasons too) but never BAD_LENGTH.
    impls = [f for f, r in an.functions.items()
             if SSL_READ_IMPL_REASONS <= r and R_BAD_LENGTH not in r and f != ssl_write]
    # SSL_read: raises SHOULD_NOT_HAVE_BEEN_CALLED (inlined SSL_peek) and calls ssl_read_impl directly
    pairs = []
    for impl in impls:
        sel = callees_all == impl
        call_sites = [int(x) for x in callers[sel]]
        cmap = code.function_of(call_sites, starts)
        by_func: dict[int, list[int]] = {}
        for c, f in cmap.items():
            if f and f not in (impl, ssl_write):
                by_func.setdefault(f, []).append(c)
        for f, cs in sorted(by_func.items()):
            if R_SHOULD_NOT_HAVE_BEEN_CALLED in an.functions.get(f, frozenset()) \
                    and code.calls(f, cs, impl):
                pairs.append((f, impl))
    ssl_read = one("SSL_read", sorted({f for f, _ in pairs}))
    impl = one("ssl_read_impl", sorted({i for f, i in pairs if f == ssl_read}))
    an.found = {"SSL_read": ssl_read, "SSL_write": ssl_write}
    an.internal = {"ssl_read_impl": impl}
    return an


def analyze_path(path: str) -> Analysis | None:
    """Convenience for tools and tests: analyse one file."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        img = _Image(f, elf)
        try:
            if not _file_string_vas(img):
                return None
            return analyze(img, path)
        finally:
            img.close()
