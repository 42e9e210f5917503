"""nixbase32 properties: round trip, length, alphabet, canonical decoding, order preservation."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nix_compat import nixbase32
from nix_compat.errors import Nixbase32Error


@settings(max_examples=500)
@given(st.binary(max_size=100))
@example(b"")
@example(b"\xff" * 20)
@example(b"\xff" * 32)
def test_round_trip(data):
    text = nixbase32.encode(data)
    assert len(text) == nixbase32.encode_len(len(data))
    assert set(text) <= set(nixbase32.ALPHABET)
    assert nixbase32.decode(text) == data


@settings(max_examples=500)
@given(st.text(alphabet=nixbase32.ALPHABET, max_size=60))
def test_decode_accepts_only_canonical(text):
    """Every string over the alphabet either decodes to bytes that encode back to it, or is refused."""
    try:
        data = nixbase32.decode(text)
    except Nixbase32Error:
        return
    assert nixbase32.encode(data) == text


@settings(max_examples=300)
@given(
    st.integers(0, 40).flatmap(lambda n: st.lists(st.binary(min_size=n, max_size=n), min_size=2, max_size=10))
)
def test_string_order_is_reversed_byte_order(blobs):
    """For equal lengths, sorting encodings equals sorting the inputs read from the last byte."""
    assert sorted(nixbase32.encode(b) for b in blobs) == [
        nixbase32.encode(b) for b in sorted(blobs, key=lambda b: b[::-1])
    ]


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=40), st.data())
def test_any_foreign_character_refused(data, draw):
    text = nixbase32.encode(data)
    pos = draw.draw(st.integers(0, len(text) - 1))
    bad = draw.draw(st.characters().filter(lambda c: c not in nixbase32.ALPHABET))
    with pytest.raises(Nixbase32Error):
        nixbase32.decode(text[:pos] + bad + text[pos + 1 :])
