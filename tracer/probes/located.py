"""What the locator answers: the TLS functions found in one ELF object, and the object's build-id."""

from __future__ import annotations

from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile

DATA_FUNCS = ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex")
ALL_FUNCS = DATA_FUNCS + ("SSL_free",)


class LocateError(Exception):
    """Something that looked like a TLS library was found but could not be located safely."""


@dataclass(frozen=True)
class FunctionLocation:
    name: str
    address: int          # ELF virtual address
    method: str           # "symbol table", "dynamic symbol table", "boringssl error-site fingerprint", "cache"


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
    for sec in elf.iter_sections():
        if sec.header.sh_type == "SHT_NOTE":
            for note in sec.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    return note["n_desc"]
    return ""
