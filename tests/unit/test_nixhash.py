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


def test_hash_modulo_without_the_modulus_is_the_plain_hash():
    import hashlib

    from nix_compat.nixhash import HashModulo

    data = b"no self reference in here " * 1000
    h = HashModulo("sha1", b"x" * 32)
    h.update(data)
    assert h.finish() == NixHash("sha1", hashlib.sha1(data).digest())


def test_hash_modulo_zeroes_each_occurrence_and_hashes_where_it_was():
    """Nix's HashModuloSink: occurrences count as NULs, then "|offset" for each, in order; the
    result does not depend on how the stream is cut, occurrences across cuts included."""
    import hashlib

    from nix_compat.nixhash import HashModulo

    modulus = b"0123456789abcdfghijklmnpqrsvwxyz"
    data = b"head " + modulus + b" middle " + modulus + modulus + b" tail"
    first = 5
    second = first + 32 + 8
    zeroed = b"head " + bytes(32) + b" middle " + bytes(64) + b" tail"
    expected_input = zeroed + f"|{first}|{second}|{second + 32}".encode()
    expected = NixHash("sha256", hashlib.sha256(expected_input).digest())
    for cut in (1, 3, 7, 31, 32, 33, len(data)):
        h = HashModulo("sha256", modulus)
        for i in range(0, len(data), cut):
            h.update(data[i : i + cut])
        assert h.finish() == expected, cut
