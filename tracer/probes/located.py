"""What the locator answers: the TLS functions found in one ELF object, and the object's build-id."""

from __future__ import annotations

from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile

from tracer.probes import elfview

DATA_FUNCS = ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex")
ALL_FUNCS = DATA_FUNCS + ("SSL_free",)


class LocateError(Exception):
    """Something that looked like a TLS library was found but could not be located safely."""


@dataclass(frozen=True)
class FunctionLocation:
    name: str
    address: int          # ELF virtual address
    method: str           # "symbol table", "dynamic symbol table", "boringssl error-site fingerprint", "cache"
    code: bytes = b""     # first bytes at the address when the answer came from the cache (re-checked
                          # before attaching: tracer/probes/verify.py)


@dataclass
class Located:
    path: str                                  # path as given (may be /proc/PID/root/...)
    build_id: str = ""
    library: str = ""                          # "openssl", "boringssl", ...
    functions: dict[str, FunctionLocation] = field(default_factory=dict)

    @property
    def has_data_funcs(self) -> bool:
        return ("SSL_read" in self.functions or "SSL_read_ex" in self.functions) and (
            "SSL_write" in self.functions or "SSL_write_ex" in self.functions)

    def to_json(self) -> dict:
        return {
            "binary": self.path,
            "build_id": self.build_id,
            "library": self.library,
            "functions": {n: {"address": hex(f.address), "method": f.method}
                          for n, f in sorted(self.functions.items())},
        }


def build_id(elf: ELFFile) -> str:
    """The GNU build-id the file declares (informational: nothing is keyed on it), read with every
    note size checked (tracer/probes/elfview.py)."""
    try:
        return elfview.build_id(elf)
    except elfview.ELFBoundsError:
        return ""
