"""Nix's base32: alphabet without e, o, u, t; most significant group first; no padding."""

from __future__ import annotations

from nix_compat.errors import Nixbase32Error

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_VALUES = {c: i for i, c in enumerate(ALPHABET)}


def encode_len(n: int) -> int:
    """Length of the encoding of n bytes."""
    return (n * 8 + 4) // 5


def decode_len(m: int) -> int:
    """Number of bytes encoded by m characters."""
    return m * 5 // 8


def encode(data: bytes) -> str:
    """Encode bytes as nixbase32."""
    # Treat the input as one little-endian integer; emit 5-bit groups from the top down.
    value = int.from_bytes(data, "little")
    return "".join(ALPHABET[(value >> (5 * k)) & 0x1F] for k in range(encode_len(len(data)) - 1, -1, -1))


def decode(text: str | bytes) -> bytes:
    """Decode canonical nixbase32; raises Nixbase32Error on anything else."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError as exc:
            raise Nixbase32Error(f"invalid nixbase32 {text!r}") from exc
    n = decode_len(len(text))
    if encode_len(n) != len(text):
        raise Nixbase32Error(f"invalid nixbase32 length {len(text)}")
    value = 0
    for c in text:
        v = _VALUES.get(c)
        if v is None:
            raise Nixbase32Error(f"invalid nixbase32 character {c!r} in {text!r}")
        value = (value << 5) | v
    if value >> (8 * n):
        # Non-zero bits above the last byte: not the canonical encoding of any input.
        raise Nixbase32Error(f"non-canonical nixbase32 {text!r}")
    return value.to_bytes(n, "little")
