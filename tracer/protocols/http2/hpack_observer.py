"""HPACK decoding for an observer that may not have seen the connection's start.

HPACK inserts new entries at the *front* of the dynamic table and evicts from the back, so if a decoder
starts with an empty table at some point and then sees every header block the sender emits after that
point, its table is always a front slice of the sender's real table: every index it has maps to the
right entry, and an index beyond its end refers to an entry inserted before we started looking. Such
fields (and literals whose *name* is such an index) are counted as unknown and left out; everything
else in the block is decoded exactly. Eviction bookkeeping may drift when the names of unknown entries
are unknown, but drift only ever keeps extra entries at the back (never referenced by the sender) or
drops entries (then reported unknown) -- it never produces a wrong header. A gap that loses header-block
bytes restarts that direction's table empty, with the same guarantee.
"""

from __future__ import annotations

import collections

from hpack import Decoder as _HpackDecoder
from hpack import HPACKDecodingError, InvalidTableIndex
from hpack.exceptions import HPACKError
from hpack.hpack import decode_integer
from hpack.huffman_table import decode_huffman


class _Unknown(bytes):
    """Name of a dynamic-table entry whose name we never saw (it referenced an older entry)."""


_UNKNOWN_NAME = _Unknown(b"")


class ObserverDecoder(_HpackDecoder):
    """hpack's decoder plus a field-by-field fallback that tolerates references we cannot resolve.

    ``complete`` says whether the table was followed from the connection's start; when it was, an
    unresolvable index is a protocol error (counted by the caller), otherwise it is expected.
    """

    def __init__(self, complete: bool):
        super().__init__(max_header_list_size=1 << 26)
        self.max_allowed_table_size = 1 << 32   # observers do not police SETTINGS_HEADER_TABLE_SIZE
        self.complete = complete
        if not complete:
            # Keep more than the usual 4 KiB: the sender's table may be bigger than we know, and
            # entries kept past its real end are harmless (never referenced).
            self.header_table_size = 1 << 16

    def decode_block(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
        """Header fields (raw bytes) in order and the number of fields that could not be decoded."""
        table = self.header_table
        if any(type(e[0]) is _Unknown for e in table.dynamic_entries):
            return self._decode_tolerant(block)
        saved = (collections.deque(table.dynamic_entries), table._current_size, table._maxsize)
        try:
            return [(n, v) for n, v in self.decode(block, raw=True)], 0
        except HPACKError:
            pass
        # Roll back whatever the library applied before it failed and redo the block tolerantly.
        table.dynamic_entries, table._current_size, table._maxsize = saved
        return self._decode_tolerant(block)

    def _lookup(self, index: int) -> tuple[bytes, bytes] | None:
        try:
            entry = self.header_table.get_by_index(index)
        except InvalidTableIndex:
            return None
        if type(entry[0]) is _Unknown:
            return None
        return entry

    def _string(self, data: memoryview) -> tuple[bytes, int]:
        length, used = decode_integer(data, 7)
        raw = data[used:used + length].tobytes()
        if len(raw) != length:
            raise HPACKDecodingError("Truncated header block")
        if data[0] & 0x80:
            raw = decode_huffman(raw)
        return raw, used + length

    def _decode_tolerant(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
        mv = memoryview(block)
        out: list[tuple[bytes, bytes]] = []
        unknown = 0
        i = 0
        while i < len(mv):
            b = mv[i]
            if b & 0x80:                                     # indexed field
                index, used = decode_integer(mv[i:], 7)
                i += used
                entry = self._lookup(index)
                if entry is None:
                    unknown += 1
                else:
                    out.append((bytes(entry[0]), bytes(entry[1])))
                continue
            if b & 0x40:
                prefix, indexing = 6, True                   # literal, incremental indexing
            elif b & 0x20:                                   # dynamic table size update
                size, used = decode_integer(mv[i:], 5)
                i += used
                self.header_table_size = size
                continue
            else:
                prefix, indexing = 4, False                  # literal without / never indexed
            name_index = b & ((1 << prefix) - 1)
            if name_index:
                index, used = decode_integer(mv[i:], prefix)
                i += used
                entry = self._lookup(index)
                name = entry[0] if entry is not None else _UNKNOWN_NAME
            else:
                name, used = self._string(mv[i + 1:])
                i += 1 + used
            value, used = self._string(mv[i:])
            i += used
            if indexing:
                # Insert even when the name is unknown so later indices stay aligned.
                self.header_table.add(name, value)
            if type(name) is _Unknown:
                unknown += 1
            else:
                out.append((bytes(name), value))
        return out, unknown
