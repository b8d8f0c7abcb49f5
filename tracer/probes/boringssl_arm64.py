"""The AArch64 reader of machine code for BoringSSL discovery (linux-arm64 Bun / Claude Code).

Same evidence as on x86-64 (tracer.probes.boringssl), read from A64 instructions:

  * the ``ssl_lib.cc`` file name is materialised with ``adrp Xn, page`` + ``add Xd, Xn, #lo12``
    (the executable is not position independent, but A64 has no 64-bit immediates: every address
    load is pc-relative). A numpy pass over the instruction words finds the adrp's of the string's
    page; the add that completes the address must follow within a few instructions;
  * the argument registers around the site (``mov w0, #0x10`` library, ``mov w2, #0xe2`` reason,
    ``x3`` file, ``mov w4, #line``) are read with capstone's AArch64 decoder, following one
    unconditional ``b`` to the shared ``bl ERR_put_error`` as clang emits it, and filling registers
    set just before the adrp from the straight-line code there;
  * direct calls are ``bl imm26`` words: instructions are 4-byte aligned, so a numpy scan of the
    words is exact (no false positives inside other instructions, unlike x86's e8 bytes);
  * a function starts at a ``bl`` target (functions are only 4-byte aligned and have no padding,
    so alignment says nothing). An address belongs to the nearest call target at or before it,
    unless a function boundary lies in between: a frame-setting prologue right after an
    unconditional terminator (``ret``/``b``/``br``/``brk``/``udf``), or zero padding. Then it is
    unknown (0) and the site does not count, so a mistake shows up as a failed fingerprint
    (LocateError), never as a wrong address.
"""

from __future__ import annotations

import numpy as np
from capstone import CS_ARCH_ARM64, CS_MODE_ARM, CS_OP_IMM, CS_OP_REG, Cs
from capstone import arm64_const as A

from tracer.probes.errsite import MAX_FUNC, ErrorSite, decode_reason

_ADD_WINDOW = 16        # instructions between the adrp and the add that completes the address
_FORWARD = 24           # instructions decoded from the site towards the call
_BACKWARD = 12          # straight-line instructions read before the site

# argument position of every name of an argument register (x0-x7 and their w views)
_ARG_REGS = {}
for _i in range(8):
    _ARG_REGS[getattr(A, "ARM64_REG_X%d" % _i)] = _i
    _ARG_REGS[getattr(A, "ARM64_REG_W%d" % _i)] = _i
_ZERO_REGS = (A.ARM64_REG_WZR, A.ARM64_REG_XZR)
_STOP_GROUPS = (A.ARM64_GRP_JUMP, A.ARM64_GRP_RET, A.ARM64_GRP_INT, A.ARM64_GRP_CALL,
                A.ARM64_GRP_BRANCH_RELATIVE)

# word masks of the instructions the numpy passes look for
_ADRP_MASK, _ADRP = 0x9F000000, 0x90000000
_BL_MASK, _BL = 0xFC000000, 0x94000000
_B_MASK, _B = 0xFC000000, 0x14000000
_RET_MASK, _RET = 0xFFFFFC1F, 0xD65F0000                # ret Xn
_BR_MASK, _BR = 0xFFFFFC1F, 0xD61F0000                  # br Xn
_BRK_MASK, _BRK = 0xFFE0001F, 0xD4200000
_UDF_MASK, _UDF = 0xFFFF0000, 0x00000000
_STP_FP_LR_PRE_MASK, _STP_FP_LR_PRE = 0xFFC07FFF, 0xA9807BFD   # stp x29, x30, [sp, #-N]!
_SUB_SP_MASK, _SUB_SP = 0xFF8003FF, 0xD10003FF                 # sub sp, sp, #N
_STP_FP_LR_OFF_MASK, _STP_FP_LR_OFF = 0xFFC07FFF, 0xA9007BFD   # stp x29, x30, [sp, #M]
_PACIASP, _BTI_C = 0xD503233F, 0xD503245F


def _sext(v: np.ndarray, bits: int) -> np.ndarray:
    return np.where(v & (1 << (bits - 1)), v - (1 << bits), v)


class Arm64Code:
    """See the module documentation; the interface is tracer.probes.boringssl.X86Code's."""

    def __init__(self, img):
        self.img = img
        self.cs = Cs(CS_ARCH_ARM64, CS_MODE_ARM)
        self.cs.detail = True
        # (first VA, words) of every executable PT_LOAD, from its first 4-byte aligned address
        self.segments = []
        for va, off, size in img.exec_ranges():
            skip = -va % 4
            n = (size - skip) // 4
            if n > 0:
                words = np.frombuffer(img.mm, dtype="<u4", count=n, offset=off + skip)
                self.segments.append((va + skip, words))

    # -- helpers ----------------------------------------------------------------------------------

    def _segment(self, va: int):
        for base, words in self.segments:
            if base <= va < base + 4 * len(words):
                return base, words
        return None, None

    def _word(self, va: int) -> int | None:
        base, words = self._segment(va)
        if base is None or (va - base) % 4:
            return None
        return int(words[(va - base) // 4])

    def _insn(self, va: int):
        w = self._word(va)
        if w is None:
            return None
        r = list(self.cs.disasm(w.to_bytes(4, "little"), va, 1))
        return r[0] if r else None

    @staticmethod
    def _const(ins) -> tuple[int | None, int | None]:
        """(argument position, constant) when ins puts a known constant in x0-x7 / w0-w7."""
        ops = ins.operands
        if len(ops) != 2 or ops[0].type != CS_OP_REG or ops[0].reg not in _ARG_REGS:
            return None, None
        pos = _ARG_REGS[ops[0].reg]
        if ins.id in (A.ARM64_INS_MOV, A.ARM64_INS_MOVZ) and ops[1].type == CS_OP_IMM \
                and not ops[1].shift.value:
            return pos, ops[1].imm & 0xFFFFFFFFFFFFFFFF
        if ins.id == A.ARM64_INS_MOV and ops[1].type == CS_OP_REG and ops[1].reg in _ZERO_REGS:
            return pos, 0
        return None, None

    @staticmethod
    def _written_args(ins) -> list[int]:
        try:
            _, written = ins.regs_access()
        except Exception:  # pragma: no cover - capstone without access info
            written = [ins.operands[0].reg] if ins.operands and ins.operands[0].type == CS_OP_REG else []
        return [_ARG_REGS[r] for r in written if r in _ARG_REGS]

    @staticmethod
    def _is_control(ins) -> bool:
        return any(g in ins.groups for g in _STOP_GROUPS) or ins.id in (
            A.ARM64_INS_B, A.ARM64_INS_BL, A.ARM64_INS_BR, A.ARM64_INS_BLR, A.ARM64_INS_RET,
            A.ARM64_INS_BRK, A.ARM64_INS_UDF, A.ARM64_INS_CBZ, A.ARM64_INS_CBNZ, A.ARM64_INS_TBZ,
            A.ARM64_INS_TBNZ)

    # -- the four questions -----------------------------------------------------------------------

    def error_sites(self, targets: list[int]) -> tuple[int, list[ErrorSite]]:
        """(adrp+add pairs that materialise one of the target strings, decoded error sites)."""
        refs, sites = 0, []
        pages = np.array(sorted({t & ~0xFFF for t in targets}), dtype=np.int64)
        tset = set(targets)
        for base, words in self.segments:
            hit = np.flatnonzero((words & _ADRP_MASK) == _ADRP)
            w = words[hit].astype(np.int64)
            imm = _sext(((w >> 5) & 0x7FFFF) << 2 | ((w >> 29) & 3), 21)
            page = ((base + 4 * hit) & ~0xFFF) + (imm << 12)
            sel = np.isin(page, pages)
            for i, pg in zip(hit[sel], page[sel]):
                adrp_va = base + 4 * int(i)
                loaded = self._complete(adrp_va, int(pg), tset)
                if loaded is None:
                    continue
                refs += 1
                regs, callee = self._site_args(adrp_va)
                reason = decode_reason(regs, loaded)
                if reason is not None:
                    sites.append(ErrorSite(address=adrp_va, reason=reason, err_call=callee))
        return refs, sites

    def _complete(self, adrp_va: int, page_va: int, tset: set[int]) -> int | None:
        """Argument position that receives a target address from the adrp at adrp_va: the first
        later ``add Xd, Xn, #lo12`` on the adrp's register, before that register is overwritten
        or control flow leaves the straight line."""
        adrp = self._insn(adrp_va)
        if adrp is None or adrp.id != A.ARM64_INS_ADRP:
            return None
        rn = adrp.operands[0].reg
        for k in range(1, _ADD_WINDOW + 1):
            ins = self._insn(adrp_va + 4 * k)
            if ins is None or self._is_control(ins):
                return None
            ops = ins.operands
            if ins.id == A.ARM64_INS_ADD and len(ops) == 3 and ops[1].type == CS_OP_REG \
                    and ops[1].reg == rn and ops[2].type == CS_OP_IMM and not ops[2].shift.value:
                if page_va + ops[2].imm in tset and ops[0].reg in _ARG_REGS:
                    return _ARG_REGS[ops[0].reg]
                return None
            try:
                _, written = ins.regs_access()
            except Exception:  # pragma: no cover - capstone without access info
                written = [ops[0].reg] if ops and ops[0].type == CS_OP_REG else []
            if rn in written:
                return None
        return None

    def _site_args(self, site_va: int) -> tuple[dict[int, int], int]:
        """Constants in the argument registers at the call that follows the site, and its callee:
        decoded forward from the site (through one unconditional ``b``) to the ``bl``; registers
        not set on that path are taken from the straight-line code just before the site."""
        regs: dict[int, int] = {}
        callee, va, followed = 0, site_va, False
        for _ in range(_FORWARD):
            ins = self._insn(va)
            if ins is None:
                break
            op = ins.operands[0] if ins.operands else None
            if ins.id == A.ARM64_INS_BL:
                callee = op.imm if op is not None and op.type == CS_OP_IMM else 0
                break
            if ins.id == A.ARM64_INS_B and op is not None \
                    and op.type == CS_OP_IMM and ins.cc in (A.ARM64_CC_INVALID, A.ARM64_CC_AL) \
                    and not followed:
                followed, va = True, op.imm
                continue
            if self._is_control(ins):
                break
            self._apply(regs, ins)
            va += 4
        straight = []
        va = site_va - 4
        for _ in range(_BACKWARD):
            ins = self._insn(va)
            if ins is None or self._is_control(ins):
                break
            straight.append(ins)
            va -= 4
        before: dict[int, int] = {}
        for ins in reversed(straight):
            self._apply(before, ins)
        for r, v in before.items():
            regs.setdefault(r, v)
        return regs, callee

    def _apply(self, regs: dict[int, int], ins) -> None:
        pos, val = self._const(ins)
        if pos is not None:
            regs[pos] = val
        else:
            for r in self._written_args(ins):
                regs.pop(r, None)

    def call_graph(self):
        """(caller VAs, callee VAs, sorted unique callees: the function starts) of every bl."""
        callers, callees = [], []
        for base, words in self.segments:
            pos = np.flatnonzero((words & _BL_MASK) == _BL)
            off = _sext(words[pos].astype(np.int64) & 0x3FFFFFF, 26) * 4
            callers.append(base + 4 * pos)
            callees.append(base + 4 * pos + off)
        if not callers:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        callers_a = np.concatenate(callers).astype(np.int64)
        callees_a = np.concatenate(callees).astype(np.int64)
        inside = np.zeros(len(callees_a), bool)
        for base, words in self.segments:
            inside |= (callees_a >= base) & (callees_a < base + 4 * len(words))
        return callers_a, callees_a, np.unique(callees_a[inside])

    def function_of(self, addrs: list[int], starts: np.ndarray) -> dict[int, int]:
        """Map addresses to the function they belong to (0 when that cannot be told safely)."""
        out = {}
        for a in addrs:
            out[a] = 0
            i = int(np.searchsorted(starts, a, side="right")) - 1
            if i < 0 or a - int(starts[i]) > MAX_FUNC:
                continue
            start = int(starts[i])
            base, words = self._segment(start)
            if base is None or not base <= a < base + 4 * len(words):
                continue
            if not self._boundary_between(words, (start - base) // 4, (a - base) // 4):
                out[a] = start
        return out

    @staticmethod
    def _boundary_between(words: np.ndarray, lo: int, hi: int) -> bool:
        """A function boundary at some index in (lo, hi]: zero padding, or a frame-setting
        prologue (optionally after paciasp / bti c) right after an unconditional terminator."""
        if hi <= lo:
            return False
        w = words[lo:hi + 1]
        if np.any(w[1:] == 0):
            return True
        prev, cur = w[:-1], w[1:]
        nxt = np.append(w[2:], np.uint32(0))
        term = (((prev & _RET_MASK) == _RET) | ((prev & _B_MASK) == _B) | ((prev & _BR_MASK) == _BR)
                | ((prev & _BRK_MASK) == _BRK) | ((prev & _UDF_MASK) == _UDF))
        frame = (((cur & _STP_FP_LR_PRE_MASK) == _STP_FP_LR_PRE)
                 | (((cur & _SUB_SP_MASK) == _SUB_SP) & ((nxt & _STP_FP_LR_OFF_MASK) == _STP_FP_LR_OFF))
                 | (cur == _PACIASP) | (cur == _BTI_C))
        return bool(np.any(term & frame))

    def calls(self, start: int, call_sites: list[int], target: int) -> bool:
        """True when one of call_sites is a ``bl target`` instruction of the function at start."""
        starts = np.array([start], dtype=np.int64)
        for c in call_sites:
            ins = self._insn(c)
            if ins is not None and ins.id == A.ARM64_INS_BL and ins.operands[0].imm == target \
                    and self.function_of([c], starts)[c] == start:
                return True
        return False
