"""Text from a target, made safe to print on a terminal.

Paths from /proc/PID/maps, command names, command lines, file names and error messages that quote
them are chosen by whoever runs the traced program. Printed raw, ``ESC ] 0 ; … BEL`` retitles the
terminal, ``ESC [ … m`` recolours it, CSI sequences move the cursor and can hide or fake lines, and
some terminals answer queries by typing into the shell. `printable()` is the one helper every such
message goes through: it escapes, visibly,

  * C0 controls (U+0000-U+001F, which includes ESC, BEL, CR, LF and TAB) and DEL (U+007F): ``\\x1b``;
  * C1 controls (U+0080-U+009F; U+009B is a one-character CSI on some terminals): ``\\x9b``;
  * characters that reorder or hide text (bidirectional overrides and isolates U+202A-U+202E,
    U+2066-U+2069, U+200E/U+200F, U+061C, the line/paragraph separators U+2028/U+2029, zero-width
    U+200B-U+200D, U+2060, U+FEFF): ``\\u202e``;
  * lone surrogates (bytes that were not UTF-8 in a file name, decoded with surrogateescape) as the
    original byte: ``\\xff``;
  * the backslash itself (``\\\\``), so an escaped text cannot be confused with a raw one.

Everything else, including printable non-ASCII text, is left as it is.
"""

from __future__ import annotations

import re

_REST = "\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060\u2066-\u2069\ufeff\ud800-\udfff"
_UNSAFE = re.compile("[\\\\\x00-\x1f" + _REST + "]")
_UNSAFE_KEEP_LINES = re.compile("[\\\\\x00-\x08\x0b-\x1f" + _REST + "]")     # keeps \t and \n


def _escape(m: re.Match) -> str:
    c = m.group()
    if c == "\\":
        return "\\\\"
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:            # surrogateescape'd byte
        return f"\\x{n - 0xDC00:02x}"
    if n <= 0xFF:
        return f"\\x{n:02x}"
    return f"\\u{n:04x}"


def printable(value, *, multiline: bool = False) -> str:
    """``value`` (str, bytes, path or anything with str()) with every control character escaped.
    ``multiline`` keeps newlines and tabs (for tracer's own multi-line messages, e.g. a verifier log
    tail) while still escaping everything else."""
    if isinstance(value, bytes):
        s = value.decode("utf-8", "surrogateescape")
    else:
        s = value if isinstance(value, str) else str(value)
    return (_UNSAFE_KEEP_LINES if multiline else _UNSAFE).sub(_escape, s)
