"""Store paths: parsing, name rules, ordering, CA path computation (spec §5.2, §5.4, §12.4)."""

from __future__ import annotations

import hashlib
import random

import pytest
from fixtures import NAR_CONTENTS_COMPLICATED, NAR_CONTENTS_HELLOWORLD, NAR_CONTENTS_SYMLINK, nar

from nix_compat import nixbase32
from nix_compat.errors import StorePathError
from nix_compat.store_path import (
    StorePath,
    build_fixed_output_path,
    build_nar_sha256_path,
    build_store_path_from_fingerprint,
    build_text_path,
    canon_path,
    compress_hash,
    validate_name,
)

EXAMPLE = "00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432"
EXAMPLE_DIGEST = bytes.fromhex("8a12321522fd91efbd60ebb2481af88580f61600")


def test_parse_basename():
    p = StorePath.from_bytes(EXAMPLE)
    assert p.digest == EXAMPLE_DIGEST
    assert p.name == "net-tools-1.60_p20170221182432"
    assert StorePath.from_bytes(EXAMPLE.encode()) == p
    assert str(p) == p.basename() == EXAMPLE
    assert p.absolute() == "/nix/store/" + EXAMPLE
    assert p.encoded_digest == EXAMPLE[:32]


def test_parse_absolute():
    p = StorePath.from_absolute_path("/nix/store/" + EXAMPLE)
    assert p == StorePath.from_bytes(EXAMPLE)
    assert StorePath.from_absolute_path(("/nix/store/" + EXAMPLE).encode()) == p
    with pytest.raises(StorePathError, match="not in the store directory"):
        StorePath.from_absolute_path("/nix/stor/" + EXAMPLE)
    with pytest.raises(StorePathError, match="not in the store directory"):
        StorePath.from_absolute_path(EXAMPLE)


def test_parse_absolute_full():
    p, rest = StorePath.from_absolute_path_full("/nix/store/" + EXAMPLE + "/bin/arp")
    assert p == StorePath.from_bytes(EXAMPLE)
    assert rest == "bin/arp"
    assert StorePath.from_absolute_path_full("/nix/store/" + EXAMPLE) == (p, "")
    with pytest.raises(StorePathError):
        StorePath.from_absolute_path_full("/tmp/" + EXAMPLE + "/bin/arp")


def test_leading_dot_name_is_valid():
    assert StorePath.from_bytes("fli4bwscgna7lpm7v5xgnjxrxh0yc7ra-.gitignore").name == ".gitignore"


@pytest.mark.parametrize(
    ("basename", "message"),
    [
        ("", "invalid length"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la-", "invalid length"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la", "invalid length"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44le-x", "invalid hash encoding"),  # 'e' not in alphabet
        ("00bgd045z0d4icpbc2yyz4gx48ak44l!-x", "invalid hash encoding"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la_x", "missing dash"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la-a b", "invalid character at position 1"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la-x/y", "invalid character at position 1"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la-\u00e9", "invalid character"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la-" + "a" * 212, "invalid store path name length 212"),
    ],
)
def test_parse_rejects(basename, message):
    with pytest.raises(StorePathError, match=message):
        StorePath.from_bytes(basename)


def test_non_ascii_bytes_rejected():
    with pytest.raises(StorePathError, match="not ASCII"):
        StorePath.from_bytes(b"00bgd045z0d4icpbc2yyz4gx48ak44la-\xff")


@pytest.mark.parametrize("name", ["a", "a" * 211, "A-Z+0_9?=.", ".", "..", "-", "x.drv"])
def test_valid_names(name):
    assert validate_name(name) == name
    assert validate_name(name.encode()) == name
    assert StorePath(bytes(20), name).name == name


@pytest.mark.parametrize("name", ["", "a" * 212, "a b", "a/b", "a@b", "a:b", "a\0", "caf\u00e9", "a*", "~a"])
def test_invalid_names(name):
    with pytest.raises(StorePathError):
        validate_name(name)
    with pytest.raises(StorePathError):
        StorePath(bytes(20), name)


def test_digest_length_checked():
    with pytest.raises(StorePathError, match="digest length 19"):
        StorePath(bytes(19), "x")


def test_ordering_matches_nixbase32_strings():
    """Sorting StorePaths equals sorting their basenames (digest compared from the last byte)."""
    rng = random.Random(1)
    paths = [StorePath(rng.randbytes(20), rng.choice(["a", "b", "c"])) for _ in range(200)]
    paths += [StorePath(paths[0].digest, "z"), StorePath(paths[0].digest, "0")]
    assert [p.basename() for p in sorted(paths)] == sorted(p.basename() for p in paths)


def test_compress_hash():
    assert compress_hash(bytes(range(32)), 20) == bytes([i ^ (i + 20) if i < 12 else i for i in range(20)])
    assert compress_hash(b"\x01\x02", 4) == b"\x01\x02\x00\x00"


# -- spec §5.4 vectors ------------------------------------------------------------------------------


def test_text_path_vectors():
    foo = build_text_path("foo", hashlib.sha256(b"bar").digest())
    assert foo.absolute() == "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"
    baz = build_text_path("baz", hashlib.sha256(foo.absolute().encode()).digest(), [foo])
    assert baz.basename() == "5xd714cbfnkz02h2vbsj4fm03x3f15nf-baz"


def test_fixed_output_sha1_vector():
    digest = bytes.fromhex("0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33")
    assert build_fixed_output_path("bar", "sha1", digest, recursive=True).basename() == (
        "mp57d33657rf34lzvlbpfa1gjfv5gmpg-bar"
    )


def test_nar_sha256_with_reference_vector():
    digest = nixbase32.decode("1xqkzcb3909fp07qngljr4wcdnrh1gdam1m2n29i6hhrxlmkgkv1")
    ref = StorePath.from_bytes("dxwkwjzdaq7ka55pkk252gh32bgpmql4-foo")
    assert build_nar_sha256_path("baz", digest, [ref]).basename() == "s89y431zzhmdn3k8r96rvakryddkpv2v-baz"


def test_ca_paths_from_content_addresses():
    """build_ca_path picks the rule by address (spec §5.4), on the same vectors; references
    are ordered as Nix orders them, and refused where the address allows none."""
    from nix_compat.nixhash import CAHash, NixHash
    from nix_compat.store_path import build_ca_path

    foo = build_ca_path("foo", CAHash("text", NixHash("sha256", hashlib.sha256(b"bar").digest())), [], False)
    assert foo.basename() == "vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"
    baz = CAHash("text", NixHash("sha256", hashlib.sha256(foo.absolute().encode()).digest()))
    assert build_ca_path("baz", baz, [foo], False).basename() == "5xd714cbfnkz02h2vbsj4fm03x3f15nf-baz"
    sha1 = CAHash("nar", NixHash("sha1", bytes.fromhex("0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33")))
    assert build_ca_path("bar", sha1, [], False).basename() == "mp57d33657rf34lzvlbpfa1gjfv5gmpg-bar"
    source = CAHash(
        "nar", NixHash("sha256", nixbase32.decode("1xqkzcb3909fp07qngljr4wcdnrh1gdam1m2n29i6hhrxlmkgkv1"))
    )
    ref = StorePath.from_bytes("dxwkwjzdaq7ka55pkk252gh32bgpmql4-foo")
    assert build_ca_path("baz", source, [ref], False).basename() == "s89y431zzhmdn3k8r96rvakryddkpv2v-baz"
    # Two references: the fingerprint lists them by name text, whatever order they come in.
    refs = [ref, foo]
    assert build_ca_path("baz", source, refs, False) == build_ca_path("baz", source, refs[::-1], False)
    assert build_ca_path("baz", source, refs, False) == build_nar_sha256_path(
        "baz", source.hash.digest, sorted(refs, key=lambda r: r.basename())
    )
    with pytest.raises(StorePathError, match="cannot have references"):
        build_ca_path("bar", sha1, [ref], False)
    # A repeated reference counts once; a flat or non-sha256 address leaves itself out.
    assert build_ca_path("baz", source, [ref, ref], False) == build_ca_path("baz", source, [ref], False)
    assert build_ca_path("bar", sha1, [], True) == build_ca_path("bar", sha1, [], False)
    with pytest.raises(StorePathError, match="cannot refer to itself"):
        build_ca_path("baz", baz, [foo], True)


@pytest.mark.parametrize(
    ("name", "nar_bytes", "expected"),
    [
        ("hello.txt", NAR_CONTENTS_HELLOWORLD, "925f1jb1ajrypjbyq7rylwryqwizvhp0-hello.txt"),
        ("complicated", NAR_CONTENTS_COMPLICATED, "pngqdzggfqs4q7fg6iywqnlzcgsp85qr-complicated"),
        ("link", NAR_CONTENTS_SYMLINK, "hr870lla96737rimmghg3vjcda4zk2y3-link"),
        (
            "empty",
            nar(b"nix-archive-1", b"(", b"type", b"directory", b")"),
            "9ljssglw74jabzzsqsl3lim4d5jgh4ya-empty",
        ),
    ],
)
def test_import_path_vectors(name, nar_bytes, expected):
    """The store paths `tvix-store import` gives (spec §12.4)."""
    assert build_nar_sha256_path(name, hashlib.sha256(nar_bytes).digest()).basename() == expected


def test_fingerprint_form():
    inner = hashlib.sha256(b"x").hexdigest()
    fp = f"source:sha256:{inner}:/nix/store:n".encode()
    expected = compress_hash(hashlib.sha256(fp).digest(), 20)
    assert build_store_path_from_fingerprint("source", inner, "n").digest == expected


def test_builders_validate_name():
    with pytest.raises(StorePathError):
        build_nar_sha256_path("a b", bytes(32))
    with pytest.raises(StorePathError):
        build_text_path("", bytes(32))


def test_all_comparisons():
    a = StorePath.from_bytes("00bgd045z0d4icpbc2yyz4gx48ak44la-x")
    b = StorePath.from_bytes("10bgd045z0d4icpbc2yyz4gx48ak44la-x")
    assert a < b and a <= b and b > a and b >= a and a <= a and a >= a
    assert not (b < a) and a != b
    with pytest.raises(TypeError):
        _ = a < "00bgd045z0d4icpbc2yyz4gx48ak44la-x"


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/nix/store/x", "/nix/store/x"),
        ("/nix/store/x/", "/nix/store/x"),
        ("//nix///store/./x/.", "/nix/store/x"),
        ("/nix/store/x/a/../b", "/nix/store/x/b"),
        ("/nix/../nix/store", "/nix/store"),
        ("/..", "/"),
        ("/", "/"),
    ],
)
def test_canon_path(path: str, canonical: str) -> None:
    """Nix's canonPath: lexical, and '..' at the top stays at the top."""
    assert canon_path(path) == canonical


def test_canon_path_wants_an_absolute_path() -> None:
    with pytest.raises(StorePathError, match="not an absolute path"):
        canon_path("nix/store")
