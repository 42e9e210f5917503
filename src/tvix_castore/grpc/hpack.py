"""HPACK (RFC 7541): header block decoding with Huffman strings, and a table-less encoder.

The decoder keeps the connection's dynamic table and accepts every representation a peer may
send (gRPC C-core, Go, hyper/h2 all index and Huffman-code). The encoder never inserts into the
dynamic table and never Huffman-codes: every block it makes is valid against any decoder state,
so the blocks for fixed header lists can be built once and reused.
"""

from __future__ import annotations

from collections import deque

__all__ = ["Decoder", "HpackError", "encode", "encode_int"]


class HpackError(ValueError):
    """A header block that cannot be decoded: the connection is broken (COMPRESSION_ERROR)."""


STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
"""RFC 7541 Appendix A; index i is ``STATIC_TABLE[i - 1]``."""

_STATIC_NAME_INDEX: dict[bytes, int] = {}
for _i, (_name, _) in enumerate(STATIC_TABLE, 1):
    _STATIC_NAME_INDEX.setdefault(_name, _i)

# Code length in bits of each symbol 0..256 (256 is EOS), RFC 7541 Appendix B. The code is
# canonical: codes of one length are consecutive in symbol order, so the lengths define it.
_HUFFMAN_LENGTHS = bytes(
    [
        *(13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28),
        *(28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28),
        *(6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6),
        *(5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10),
        *(13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7),
        *(7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6),
        *(15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5),
        *(6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28),
        *(20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23),
        *(24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24),
        *(22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23),
        *(21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23),
        *(26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25),
        *(19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27),
        *(20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23),
        *(26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26),
        30,
    ]
)
_EOS = 256


def _huffman_tables() -> tuple[dict[int, tuple[int, int]], list[int]]:
    """Per code length L: (first code of length L, offset into the sorted symbols)."""
    order = sorted(range(257), key=lambda s: (_HUFFMAN_LENGTHS[s], s))
    first: dict[int, tuple[int, int]] = {}
    code = 0
    prev = _HUFFMAN_LENGTHS[order[0]]
    for pos, sym in enumerate(order):
        length = _HUFFMAN_LENGTHS[sym]
        code <<= length - prev
        prev = length
        if length not in first:
            first[length] = (code, pos)
        code += 1
    return first, order


_HUFF_FIRST, _HUFF_SYMBOLS = _huffman_tables()
_HUFF_COUNT = {length: sum(1 for s in range(257) if _HUFFMAN_LENGTHS[s] == length) for length in _HUFF_FIRST}
_HUFF_MIN = min(_HUFF_FIRST)
_HUFF_MAX = max(_HUFF_FIRST)


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string (RFC 7541 §5.2).

    Raises:
        HpackError: EOS inside the string, padding longer than 7 bits or not all ones.

    """
    value = int.from_bytes(data, "big")
    bits = len(data) * 8
    out = bytearray()
    pos = 0  # bits consumed
    while bits - pos >= _HUFF_MIN:
        length = _HUFF_MIN
        while True:
            if length > bits - pos:
                length = 0
                break
            code = (value >> (bits - pos - length)) & ((1 << length) - 1)
            first = _HUFF_FIRST.get(length)
            if first is not None and code - first[0] < _HUFF_COUNT[length]:
                break
            length += 1
            if length > _HUFF_MAX:
                raise HpackError("invalid Huffman code")
        if not length or first is None:
            break
        sym = _HUFF_SYMBOLS[first[1] + code - first[0]]
        if sym == _EOS:
            raise HpackError("EOS in Huffman string")
        out.append(sym)
        pos += length
    rest = bits - pos
    if rest > 7 or (value & ((1 << rest) - 1)) != (1 << rest) - 1:
        raise HpackError("invalid Huffman padding")
    return bytes(out)


def encode_int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer with an N-bit prefix; first holds the representation's high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_str(data: bytes) -> bytes:
    return encode_int(len(data), 7, 0) + data


def encode(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block: fully indexed static entries, else literals without indexing."""
    out = bytearray()
    for name, value in headers:
        index = _STATIC_NAME_INDEX.get(name)
        if index is not None and STATIC_TABLE[index - 1][1] == value:
            out += encode_int(index, 7, 0x80)
            continue
        if index is not None:
            out += encode_int(index, 4, 0x00)
        else:
            out += b"\x00" + _encode_str(name)
        out += _encode_str(value)
    return bytes(out)


class Decoder:
    """One connection's receiving HPACK context."""

    MAX_STRING = 64 * 1024
    """Longest name or value accepted (far beyond what gRPC metadata needs)."""

    def __init__(self, max_table_size: int = 4096) -> None:
        self._limit = max_table_size  # what our SETTINGS_HEADER_TABLE_SIZE allows
        self._max = max_table_size  # the encoder's current choice (≤ limit)
        self._size = 0
        self._table: deque[tuple[bytes, bytes]] = deque()
        self._huffman_cache: dict[bytes, bytes] = {}
        # Blocks that neither read nor change the dynamic table decode the same every time:
        # peers that send fixed header lists (our own client and server) hit this cache.
        self._block_cache: dict[bytes, list[tuple[bytes, bytes]]] = {}

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if index <= 0 or dynamic >= len(self._table):
            raise HpackError(f"header index {index} out of range")
        return self._table[dynamic]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        self._table.appendleft((name, value))
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max and self._table:
            old_name, old_value = self._table.pop()
            self._size -= len(old_name) + len(old_value) + 32

    def _huffman(self, raw: bytes) -> bytes:
        cache = self._huffman_cache
        out = cache.get(raw)
        if out is None:
            out = huffman_decode(raw)
            if len(cache) >= 512:
                cache.clear()
            cache[raw] = out
        return out

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of one complete header block (HEADERS plus CONTINUATIONs).

        Raises:
            HpackError: a malformed block.

        """
        cached = self._block_cache.get(block)
        if cached is not None:
            return list(cached)
        headers: list[tuple[bytes, bytes]] = []
        pos = 0
        end = len(block)
        static = len(STATIC_TABLE)
        pure = True  # no dynamic table entry read or written
        try:
            while pos < end:
                b = block[pos]
                if b & 0x80:
                    index, pos = self._int(block, pos, 7)
                    pure = pure and index <= static
                    headers.append(self._entry(index))
                    continue
                if b & 0xC0 == 0x40:
                    index, pos = self._int(block, pos, 6)
                    indexing = True
                    pure = False
                elif b & 0xE0 == 0x20:
                    size, pos = self._int(block, pos, 5)
                    if size > self._limit:
                        raise HpackError(f"table size {size} over the limit {self._limit}")
                    self._max = size
                    self._evict()
                    pure = False
                    continue
                else:
                    index, pos = self._int(block, pos, 4)
                    indexing = False
                if index:
                    pure = pure and index <= static
                    name = self._entry(index)[0]
                else:
                    name, pos = self._str(block, pos)
                value, pos = self._str(block, pos)
                if indexing:
                    self._add(name, value)
                headers.append((name, value))
        except IndexError:
            raise HpackError("truncated header block") from None
        if pure and len(block) <= 1024:
            if len(self._block_cache) >= 256:
                self._block_cache.clear()
            self._block_cache[block] = list(headers)
        return headers

    @staticmethod
    def _int(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        value = block[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            b = block[pos]
            pos += 1
            value += (b & 0x7F) << shift
            if not b & 0x80:
                return value, pos
            shift += 7
            if shift > 28:
                raise HpackError("integer too large")

    def _str(self, block: bytes, pos: int) -> tuple[bytes, int]:
        huffman = block[pos] & 0x80
        length, pos = self._int(block, pos, 7)
        if length > self.MAX_STRING or pos + length > len(block):
            raise HpackError("string length out of range")
        raw = block[pos : pos + length]
        return (self._huffman(raw) if huffman else raw), pos + length
