"""PathInfo validation and wire form (spec §4.1, §4.3, §12.3, store-go cases of §13)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fixtures import (
    CASTORE_NODE_HELLOWORLD,
    CASTORE_NODE_SYMLINK,
    DIRECTORY_COMPLICATED,
    DUMMY_PATH,
    PATH_INFO,
)

from nix_compat.nixhash import DIGEST_LENGTHS, CAHash, NixHash
from nix_compat.signing import Signature, SigningKey
from nix_compat.store_path import StorePath
from tvix.store.protos import pathinfo_pb2 as pb
from tvix_castore.proto_conv import node_to_proto
from tvix_store.errors import PathInfoError
from tvix_store.path_info import PathInfo
from tvix_store.proto_conv import (
    decode_path_info,
    encode_path_info,
    path_info_from_proto,
    path_info_to_proto,
)

DUMMY = "00000000000000000000000000000000-dummy"
EXAMPLE_STORE_PATH = "00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p2017022118243"
EXAMPLE_DIGEST = bytes.fromhex("8a12321522fd91efbd60ebb2481af88580f61600")
DO_NOT_USE_KEY = (
    "do.not.use:sGPzxuK5WvWPraytx+6sjtaff866sYlfvErE6x0hFEhy5eqe7OVZ8ZMqZ/ME/HaRdKGNGvJkyGKXYTaeA6lR3A=="
)


def _path_info_proto() -> pb.PathInfo:
    return path_info_to_proto(PATH_INFO)


def test_path_info_encoding() -> None:
    """PATH_INFO encodes to the 212 bytes of §12.3 and decodes back to itself."""
    name = DUMMY.encode().hex()
    z32, z20 = "00" * 32, "00" * 20
    expected = f"0a4c0a4a0a26{name}1220{z32}1214{z20}1a6e1220{z32}2226{name}3222" + f"1220{z32}"
    encoded = encode_path_info(PATH_INFO)
    assert len(encoded) == 212
    assert encoded.hex() == expected
    assert decode_path_info(encoded) == PATH_INFO


def test_signature_vector() -> None:
    """The do.not.use key signs PATH_INFO's fingerprint to the vector of §12.3."""
    assert PATH_INFO.fingerprint() == (
        b"1;/nix/store/00000000000000000000000000000000-dummy;"
        b"sha256:0000000000000000000000000000000000000000000000000000;0;"
        b"/nix/store/00000000000000000000000000000000-dummy"
    )
    key = SigningKey.parse(DO_NOT_USE_KEY)
    assert str(key.verifying_key()) == "do.not.use:cuXqnuzlWfGTKmfzBPx2kXShjRryZMhil2E2ngOpUdw="
    sig = key.sign(PATH_INFO.fingerprint())
    assert str(sig) == (
        "do.not.use:xl4q2L5wQMou13ZQ9/YPqK1z/DSIYycTtndVNfp2ybT8Cpg+yPv1sCQN8VVWppnq5BXTuMhjaq7K/ebYN4LYBg=="
    )
    signed = PATH_INFO.with_signatures((sig,))
    back = decode_path_info(encode_path_info(signed))
    assert back.signatures == (sig,)
    assert key.verifying_key().verify(back.fingerprint(), back.signatures[0])


def test_store_go_example_path() -> None:
    """store-go's example store path has the documented digest."""
    assert StorePath.from_bytes(EXAMPLE_STORE_PATH).digest == EXAMPLE_DIGEST


_CA_TYPES = {
    pb.NARInfo.CA.NAR_SHA256: ("nar", "sha256"),
    pb.NARInfo.CA.NAR_SHA1: ("nar", "sha1"),
    pb.NARInfo.CA.NAR_SHA512: ("nar", "sha512"),
    pb.NARInfo.CA.NAR_MD5: ("nar", "md5"),
    pb.NARInfo.CA.TEXT_SHA256: ("text", "sha256"),
    pb.NARInfo.CA.FLAT_SHA1: ("flat", "sha1"),
    pb.NARInfo.CA.FLAT_MD5: ("flat", "md5"),
    pb.NARInfo.CA.FLAT_SHA256: ("flat", "sha256"),
    pb.NARInfo.CA.FLAT_SHA512: ("flat", "sha512"),
}


def test_ca_enum_numbers() -> None:
    """The CA hash enum has tvix's numbers."""
    assert [pb.NARInfo.CA.Hash.Name(i) for i in range(9)] == [
        "NAR_SHA256",
        "NAR_SHA1",
        "NAR_SHA512",
        "NAR_MD5",
        "TEXT_SHA256",
        "FLAT_SHA1",
        "FLAT_MD5",
        "FLAT_SHA256",
        "FLAT_SHA512",
    ]


@pytest.mark.parametrize("ca_type", sorted(_CA_TYPES), ids=lambda t: pb.NARInfo.CA.Hash.Name(t))
def test_ca_round_trip(ca_type: int) -> None:
    """Every CA type maps to its Nix kind and algorithm with a raw digest, both ways."""
    kind, algo = _CA_TYPES[ca_type]
    msg = _path_info_proto()
    msg.narinfo.ca.type = ca_type  # type: ignore[assignment]
    msg.narinfo.ca.digest = bytes(range(DIGEST_LENGTHS[algo]))
    info = path_info_from_proto(msg)
    assert info.ca == CAHash(kind, NixHash(algo, bytes(range(DIGEST_LENGTHS[algo]))))  # type: ignore[arg-type]
    assert path_info_to_proto(info) == msg


@pytest.mark.parametrize(
    "node",
    [CASTORE_NODE_SYMLINK, CASTORE_NODE_HELLOWORLD, DIRECTORY_COMPLICATED.as_node()],
    ids=["symlink", "file", "directory"],
)
def test_round_trip_full(node: object) -> None:
    """A PathInfo with every field set survives domain -> wire -> domain."""
    sig = SigningKey.parse(DO_NOT_USE_KEY).sign(b"x")
    info = PathInfo(
        store_path=StorePath.from_bytes(EXAMPLE_STORE_PATH),
        node=node,  # type: ignore[arg-type]
        nar_size=840,
        nar_sha256=bytes(range(32)),
        references=(DUMMY_PATH, StorePath.from_bytes(EXAMPLE_STORE_PATH)),
        signatures=(sig, Signature("other", bytes(64))),
        deriver=StorePath(EXAMPLE_DIGEST, "foo.drv"),
        ca=CAHash("flat", NixHash("sha1", bytes(20))),
    )
    assert decode_path_info(encode_path_info(info)) == info
    msg = path_info_to_proto(info)
    assert msg.node.WhichOneof("node") in ("symlink", "file", "directory")
    assert list(msg.narinfo.reference_names) == [DUMMY, EXAMPLE_STORE_PATH]


def test_store_go_symlink_path_info_valid() -> None:
    """store-go's symlink PathInfo validates; the same without narinfo ("thin") does not (Rust rule)."""
    msg = pb.PathInfo()
    msg.node.CopyFrom(node_to_proto(DUMMY.encode(), CASTORE_NODE_SYMLINK))
    msg.narinfo.nar_size = 136
    msg.narinfo.nar_sha256 = bytes.fromhex("097d397e9b5826384eaa16c457715d1c1a51670313ead0f58566e0b232539cf1")
    info = path_info_from_proto(msg)
    assert info.store_path == DUMMY_PATH and info.node == CASTORE_NODE_SYMLINK
    msg.ClearField("narinfo")
    with pytest.raises(PathInfoError, match="The narinfo field is missing"):
        path_info_from_proto(msg)


def test_nar_size_zero_legal() -> None:
    """nar_size 0 is accepted (PATH_INFO has it)."""
    assert path_info_from_proto(_path_info_proto()).nar_size == 0


def test_deriver_examples_valid() -> None:
    """Derivers with or without a .drv suffix are accepted (store-go {example, "foo"})."""
    for name in ("foo", "foo.drv", "foo.drv.drv"):
        msg = _path_info_proto()
        msg.narinfo.deriver.digest = EXAMPLE_DIGEST
        msg.narinfo.deriver.name = name
        assert path_info_from_proto(msg).deriver == StorePath(EXAMPLE_DIGEST, name)


Mutation = Callable[[pb.PathInfo], None]


def _set_node(name: bytes, node: object) -> Mutation:
    def m(msg: pb.PathInfo) -> None:
        msg.node.CopyFrom(node_to_proto(name, node))  # type: ignore[arg-type]

    return m


def _clear(field: str) -> Mutation:
    return lambda msg: msg.ClearField(field)


def _narinfo(**fields: object) -> Mutation:
    def m(msg: pb.PathInfo) -> None:
        for k, v in fields.items():
            setattr(msg.narinfo, k, v)

    return m


def _refs(refs: list[bytes], names: list[str]) -> Mutation:
    def m(msg: pb.PathInfo) -> None:
        del msg.references[:]
        msg.references.extend(refs)
        del msg.narinfo.reference_names[:]
        msg.narinfo.reference_names.extend(names)

    return m


def _empty_node(msg: pb.PathInfo) -> None:
    msg.ClearField("node")
    msg.node.SetInParent()


def _dir_digest_len0(msg: pb.PathInfo) -> None:
    msg.node.directory.digest = b""


def _deriver(digest: bytes, name: str) -> Mutation:
    def m(msg: pb.PathInfo) -> None:
        msg.narinfo.deriver.digest = digest
        msg.narinfo.deriver.name = name

    return m


def _bad_signature(msg: pb.PathInfo) -> None:
    msg.narinfo.signatures.add(name="k", data=bytes(64))
    msg.narinfo.signatures.add(name="k", data=bytes(63))


def _ca(ca_type: int, digest: bytes) -> Mutation:
    def m(msg: pb.PathInfo) -> None:
        msg.narinfo.ca.type = ca_type  # type: ignore[assignment]
        msg.narinfo.ca.digest = digest

    return m


Z20 = bytes(20)

INVALID: list[tuple[str, list[Mutation], str]] = [
    ("no-narinfo", [_clear("narinfo")], "The narinfo field is missing"),
    (
        "ref-len",
        [_refs([b"\x00\x01"], [DUMMY])],
        "Invalid length of digest at position 0, expected 20, got 2",
    ),
    # store-go: an extra 1-byte reference.
    (
        "extra-1-byte-ref",
        [_refs([Z20, b"\x00"], [DUMMY, DUMMY])],
        "Invalid length of digest at position 1, expected 20, got 1",
    ),
    (
        "ref-count",
        [_refs([Z20], [DUMMY, DUMMY])],
        r"Inconsistent Number of References: 1 \(references\) vs 2 \(narinfo\)",
    ),
    (
        "ref-name-empty-name",
        [_refs([Z20], ["00000000000000000000000000000000-"])],
        "Invalid reference_name at position 0",
    ),
    (
        "ref-name-absolute",
        [_refs([Z20], ["/nix/store/" + DUMMY])],
        "Invalid reference_name at position 0",
    ),
    (
        "ref-name-digest-mismatch",
        [_refs([Z20], ["11111111111111111111111111111111-dummy"])],
        "digest in reference_name at position 0 does not match",
    ),
    ("no-node", [_clear("node")], "No node present"),
    ("node-not-set", [_empty_node], "Invalid root node: No node set"),
    ("node-digest-len-0", [_dir_digest_len0], "Invalid root node: .*invalid digest length: 0"),
    ("node-name-empty", [_set_node(b"", CASTORE_NODE_SYMLINK)], "Invalid root node: .*cannot be empty"),
    # store-go: an absolute root node name.
    (
        "node-name-absolute",
        [_set_node(b"/nix/store/" + DUMMY.encode(), CASTORE_NODE_SYMLINK)],
        "Invalid root node: .*cannot contain slashes",
    ),
    (
        "node-name-not-store-path",
        [_set_node(b"invalid", CASTORE_NODE_SYMLINK)],
        'Failed to parse "invalid" as StorePath',
    ),
    (
        "node-name-bad-hash",
        [_set_node(b"0000000000000000000000000000000e-dummy", CASTORE_NODE_SYMLINK)],
        "Failed to parse .* as StorePath",
    ),
    # store-go: nar_sha256 = beef.
    (
        "nar-sha256-beef",
        [_narinfo(nar_sha256=b"\xbe\xef")],
        "Invalid narinfo.nar_sha256 length: expected 32, got 2",
    ),
    # store-go: a deriver with an empty digest.
    ("deriver-empty-digest", [_deriver(b"", "foo")], "deriver field is invalid"),
    ("deriver-bad-name", [_deriver(EXAMPLE_DIGEST, "fo o")], "deriver field is invalid"),
    ("deriver-empty-name", [_deriver(EXAMPLE_DIGEST, "")], "deriver field is invalid"),
    ("signature-len", [_bad_signature], "The signature at position 1 is invalid"),
    ("ca-unknown-type", [_ca(99, bytes(32))], "The ca field is invalid: Unknown hash type: 99"),
    (
        "ca-digest-len",
        [_ca(pb.NARInfo.CA.NAR_SHA256, bytes(20))],
        "The ca field is invalid: Invalid digest length '20' for type NarSha256",
    ),
    (
        "ca-md5-len",
        [_ca(pb.NARInfo.CA.FLAT_MD5, bytes(32))],
        "The ca field is invalid: Invalid digest length '32' for type FlatMd5",
    ),
    # Order: each pair breaks two rules; the earlier one in §4.3 is reported.
    ("order-narinfo-node", [_clear("node"), _clear("narinfo")], "The narinfo field is missing"),
    ("order-refs-node", [_clear("node"), _refs([b"\x00"], [DUMMY])], "Invalid length of digest"),
    (
        "order-node-sha",
        [_narinfo(nar_sha256=b""), _set_node(b"invalid", CASTORE_NODE_SYMLINK)],
        "Failed to parse",
    ),
    (
        "order-sha-deriver",
        [_narinfo(nar_sha256=b""), _deriver(b"", "foo")],
        "Invalid narinfo.nar_sha256 length",
    ),
    ("order-deriver-signature", [_deriver(b"", "foo"), _bad_signature], "deriver field is invalid"),
    ("order-signature-ca", [_bad_signature, _ca(99, b"")], "The signature at position 1 is invalid"),
]


@pytest.mark.parametrize(("mutations", "match"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_path_info(mutations: list[Mutation], match: str) -> None:
    """Every rule of §4.3 refuses a broken PATH_INFO with its message, in tvix's order."""
    msg = _path_info_proto()
    for mutate in mutations:
        mutate(msg)
    with pytest.raises(PathInfoError, match=match):
        path_info_from_proto(msg)
    with pytest.raises(PathInfoError, match=match):
        decode_path_info(msg.SerializeToString())


def test_undecodable_bytes() -> None:
    """Bytes that are no protobuf message are a PathInfoError."""
    with pytest.raises(PathInfoError, match="cannot decode"):
        decode_path_info(b"\x0a\xff")


def test_domain_refuses_bad_sha256() -> None:
    """The domain object itself refuses a nar_sha256 that is not 32 bytes."""
    with pytest.raises(PathInfoError, match=r"Invalid narinfo\.nar_sha256 length"):
        PathInfo(store_path=DUMMY_PATH, node=CASTORE_NODE_SYMLINK, nar_size=0, nar_sha256=b"\xbe\xef")
