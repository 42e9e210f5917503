"""NixHash and CAHash text forms (spec §5.3)."""

from __future__ import annotations

import hashlib

import pytest

from nix_compat import nixbase32
from nix_compat.errors import NixHashError
from nix_compat.nixhash import CAHash, NixHash

SHA256_HELLO = hashlib.sha256(b"hello").digest()


@pytest.mark.parametrize(("algo", "n"), [("md5", 16), ("sha1", 20), ("sha256", 32), ("sha512", 64)])
def test_all_forms_parse_back(algo, n):
    digest = hashlib.new(algo, b"x").digest()
    assert len(digest) == n
    h = NixHash(algo, digest)
    nb = nixbase32.encode(digest)
    assert h.to_nixbase32() == f"{algo}:{nb}"
    assert str(h) == f"{algo}-{nb}"
    for text in (h.to_nixbase32(), f"{algo}:{digest.hex()}", h.to_sri()):
        assert NixHash.parse(text) == h


def test_sri_vector():
    """The SRI form Nix prints for the 120-byte NAR of "hello\\n" (nix path-info --json)."""
    h = NixHash.parse("sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=")
    assert h.to_nixbase32() == "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"


@pytest.mark.parametrize(
    "text",
    ["sha256:abc", "sha3:" + "0" * 52, "sha256", "", "sha256:" + "0" * 63, "md5-AAAA", "sha1:" + "e" * 32],
)
def test_parse_rejects(text):
    with pytest.raises(NixHashError):
        NixHash.parse(text)


def test_constructor_checks_length_and_algo():
    with pytest.raises(NixHashError, match="invalid digest length 31 for sha256"):
        NixHash("sha256", bytes(31))
    with pytest.raises(NixHashError, match="unknown hash algorithm"):
        NixHash("blake3", bytes(32))


@pytest.mark.parametrize(
    ("text", "kind", "algo"),
    [
        ("fixed:r:sha256:" + nixbase32.encode(SHA256_HELLO), "nar", "sha256"),
        ("fixed:sha256:" + nixbase32.encode(SHA256_HELLO), "flat", "sha256"),
        ("text:sha256:" + nixbase32.encode(SHA256_HELLO), "text", "sha256"),
        ("fixed:r:sha1:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw", "nar", "sha1"),
        ("fixed:md5:" + nixbase32.encode(bytes(16)), "flat", "md5"),
        ("fixed:r:sha512:" + nixbase32.encode(bytes(64)), "nar", "sha512"),
    ],
)
def test_cahash_round_trip(text, kind, algo):
    ca = CAHash.parse(text)
    assert (ca.kind, ca.hash.algo) == (kind, algo)
    assert ca.to_nix_string() == text
    assert str(ca) == text


@pytest.mark.parametrize(
    "text",
    [
        "text:sha1:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw",
        "fixed:r:sha3:00",
        "source:sha256:" + "0" * 52,
        "fixed:r:sha256",
        "fixed:sha256:xyz",
        "",
    ],
)
def test_cahash_rejects(text):
    with pytest.raises(NixHashError):
        CAHash.parse(text)
