"""What a BoringSSL error site is, independent of the instruction set that encodes it.

``OPENSSL_PUT_ERROR(SSL, reason)`` compiles to a call ``ERR_put_error(ERR_LIB_SSL, [0,] reason,
__FILE__, __LINE__)``. The machine-code readers (x86-64 in tracer.probes.boringssl, AArch64 in
tracer.probes.boringssl_arm64) find the instructions that load the ``ssl_lib.cc`` file name into an
argument register, collect the constants loaded into the other argument registers by *position*
(0 = first argument: rdi / x0), and hand them to :func:`decode_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass

ERR_LIB_SSL = 16
MAX_FUNC = 0x10000           # how far back from an error site its function may start


@dataclass
class ErrorSite:
    address: int                 # VA of the instruction that loads the file-name string
    reason: int
    function: int = 0            # VA of the enclosing function (0: unknown)
    err_call: int = 0            # VA of the ERR_put_error-like callee, when seen


def decode_reason(regs: dict[int, int], file_arg: int) -> int | None:
    """Library-16 reason code for either calling convention, else None. ``regs`` maps argument
    positions to the constants loaded into them; ``file_arg`` is the position that received the
    file-name string."""
    if file_arg == 3:      # ERR_put_error(lib, unused, reason, file, line)
        lib, reason = regs.get(0), regs.get(2)
    elif file_arg == 2:    # older: (lib, reason, file, line)
        lib, reason = regs.get(0), regs.get(1)
    else:
        return None
    if lib != ERR_LIB_SSL or reason is None or reason > 0xFFF:
        return None
    return reason
