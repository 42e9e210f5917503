"""nixbase32: spec §5.1 vectors, lengths, and rejection of anything non-canonical."""

from __future__ import annotations

import pytest

from nix_compat import nixbase32
from nix_compat.errors import Nixbase32Error

VECTORS = [
    ("", b""),
    ("0z", bytes.fromhex("1f")),
    ("00bgd045z0d4icpbc2yyz4gx48ak44la", bytes.fromhex("8a12321522fd91efbd60ebb2481af88580f61600")),
    (
        "0c5b8vw40dy178xlpddw65q9gf1h2186jcc3p4swinwggbllv8mk",
        bytes.fromhex("b3a24de97a8fdbc835b9833169501030b8977031bcb54b3b3ac13740f846ab30"),
    ),
]


@pytest.mark.parametrize(("text", "data"), VECTORS)
def test_vectors(text, data):
    assert nixbase32.encode(data) == text
    assert nixbase32.decode(text) == data
    assert nixbase32.decode(text.encode()) == data


def test_alphabet():
    assert nixbase32.ALPHABET == "0123456789abcdfghijklmnpqrsvwxyz"
    assert not set("eotu") & set(nixbase32.ALPHABET)


@pytest.mark.parametrize(
    ("n", "m"), [(0, 0), (1, 2), (2, 4), (5, 8), (16, 26), (20, 32), (32, 52), (64, 103)]
)
def test_lengths(n, m):
    assert nixbase32.encode_len(n) == m
    assert nixbase32.decode_len(m) == n
    assert len(nixbase32.encode(bytes(n))) == m


def test_most_significant_group_first():
    """The last input byte's high bits come out first (reversed relative to RFC 4648)."""
    assert nixbase32.encode(b"\x01") == "01"
    assert nixbase32.encode(b"\x00\x80") == "1000"  # bit 15 is the lowest bit of the first group
    assert nixbase32.encode(b"\xff" * 5) == "zzzzzzzz"


@pytest.mark.parametrize("text", ["zz", "c0", "0", "0zz", "0" * 51, "z" + "0" * 51])
def test_rejects_non_canonical_or_bad_length(text):
    with pytest.raises(Nixbase32Error):
        nixbase32.decode(text)


@pytest.mark.parametrize("bad", ["e", "o", "u", "t", "E", "A", "-", " ", "é"])
def test_rejects_characters_outside_alphabet(bad):
    with pytest.raises(Nixbase32Error, match="invalid nixbase32"):
        nixbase32.decode("0" + bad)


def test_rejects_non_ascii_bytes():
    with pytest.raises(Nixbase32Error):
        nixbase32.decode(b"0\xff")
