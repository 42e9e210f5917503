"""The castore data model: digests, sizes, validation and canonical encoding (spec §1, §12.2, §13).

Vectors are the spec's (tvix castore fixtures and proto tests, castore-go tests), in the
"snapshot" size variant of decision 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from fixtures import (
    BLOB_A_DIGEST,
    BLOB_B_DIGEST,
    DIRECTORY_A,
    DIRECTORY_B,
    DIRECTORY_C,
    DIRECTORY_COMPLICATED,
    DIRECTORY_D,
    DIRECTORY_WITH_KEEP,
    DUMMY_DIGEST,
    DUMMY_DIGEST_2,
    HELLOWORLD_BLOB_DIGEST,
)

from tvix.castore.protos import castore_pb2 as pb
from tvix_castore.digests import EMPTY_BLOB_DIGEST, B3Digest
from tvix_castore.directory import Directory
from tvix_castore.errors import DirectoryError, NodeError, ValidationError
from tvix_castore.nodes import U64_MAX, DirectoryNode, FileNode, SymlinkNode
from tvix_castore.proto_conv import (
    anonymous_node_from_proto,
    decode_directory,
    directory_from_proto,
    directory_to_proto,
    named_node_from_proto,
    node_to_proto,
)

EMPTY_HEX = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
WITH_KEEP_PROTO = "12290a052e6b6565701220" + EMPTY_HEX
COMPLICATED_PROTO = (
    "0a2a0a046b65657012208b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e1802"
    + WITH_KEEP_PROTO
    + "1a1e0a0261611218"
    + "2f6e69782f73746f72652f736f6d657768657265656c7365"
)


# ---- digests and sizes (§1.2, §12.2) ------------------------------------------------------------


def test_empty_directory_digest() -> None:
    """The empty Directory encodes to nothing and hashes like the empty blob (castore-go bytes)."""
    assert DIRECTORY_A.encode() == b""
    assert DIRECTORY_A.digest() == EMPTY_BLOB_DIGEST
    assert DIRECTORY_A.digest() == bytes.fromhex(EMPTY_HEX)
    assert str(DIRECTORY_A.digest()) == "b3:rxNJufX5oaagQE3qNtzJSZvLJcmtwRK3zJqTyuQfMmI="


@pytest.mark.parametrize(
    ("directory", "encoding", "digest", "size"),
    [
        (DIRECTORY_A, "", EMPTY_HEX, 0),
        (
            DIRECTORY_WITH_KEEP,
            WITH_KEEP_PROTO,
            "8b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e",
            2,
        ),
        (
            DIRECTORY_COMPLICATED,
            COMPLICATED_PROTO,
            "424a7f6ce08d805d15b428062faae96299a1675d708c3a39261afe38cdd04feb",
            8,
        ),
        (
            DIRECTORY_B,
            "0a250a01611220" + EMPTY_HEX,
            "8701f4722d8dae7f2c40fa003331b8437a3825f9e1bfd3a77998c64cc226b9cc",
            2,
        ),
        (DIRECTORY_C, None, "78eb200ae0cc95d4ea954655fbcf91e285013a261310e161927f2401d2bca803", 4),
        (DIRECTORY_D, None, "76cd8b55b37333961c1778ba997e57df92e219926ae5a66c414b810331a77603", 6),
    ],
    ids=["A", "with_keep", "complicated", "B", "C", "D"],
)
def test_fixture_vectors(directory: Directory, encoding: str | None, digest: str, size: int) -> None:
    """Canonical encoding, digest and (snapshot) size of every castore fixture."""
    if encoding is not None:
        assert directory.encode().hex() == encoding
    assert directory.digest().hex() == digest
    assert directory.size() == size
    assert directory.as_node() == DirectoryNode(B3Digest(bytes.fromhex(digest)), size)


def test_b3_display() -> None:
    """Digests display as ``b3:`` + padded standard base64."""
    assert str(DIRECTORY_WITH_KEEP.digest()) == "b3:i1tdZCtka7jtUEsIYsOUE+h+V0kUl9570HWVP3uDgQ4="
    assert str(DIRECTORY_COMPLICATED.digest()) == "b3:Qkp/bOCNgF0VtCgGL6rpYpmhZ11wjDo5Jhr+OM3QT+s="
    assert B3Digest.parse(str(DIRECTORY_COMPLICATED.digest())) == DIRECTORY_COMPLICATED.digest()


def test_blob_fixture_digests() -> None:
    """The castore blob fixtures hash to the digests of §12.2."""
    assert str(HELLOWORLD_BLOB_DIGEST) == "b3:XKeBWty0hOmhNsEe/mnB1TAXbVSbXRjQOOtSgLSzRww="
    assert HELLOWORLD_BLOB_DIGEST.hex() == "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"
    assert str(BLOB_A_DIGEST) == "b3:e3AVu5LPCzGAN3AqbN2B3uQSJPc0aEwsEizWNZyx7mM="
    assert str(BLOB_B_DIGEST) == "b3:qCxRVKegwmLG/bkpoxdYVkb4+8+AMm0Ke4dH7a8tmdI="
    assert BLOB_B_DIGEST.hex() == "a82c5154a7a0c262c6fdb929a317585646f8fbcf80326d0a7b8747edaf2d99d2"
    assert DUMMY_DIGEST.hex() == "00" * 32
    assert DUMMY_DIGEST_2.hex() == "10" + "00" * 31


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_b3_digest_length(length: int) -> None:
    """A digest of any length but 32 is refused."""
    with pytest.raises(NodeError, match=f"invalid digest length: {length}"):
        B3Digest(bytes(length))


@pytest.mark.parametrize(
    ("entries", "size"),
    [
        ({}, 0),
        ({b"foo": DirectoryNode(DUMMY_DIGEST, 0)}, 2),
        ({b"foo": DirectoryNode(DUMMY_DIGEST, 4)}, 6),
        ({b"foo": FileNode(DUMMY_DIGEST, 42)}, 2),
        ({b"foo": SymlinkNode(b"blub")}, 2),
        ({b"foo": DirectoryNode(DUMMY_DIGEST, U64_MAX - 2)}, U64_MAX),
    ],
    ids=["empty", "dir0", "dir4", "file", "symlink", "max"],
)
def test_size(entries: dict[bytes, DirectoryNode | FileNode | SymlinkNode], size: int) -> None:
    """size() counts each entry twice plus each child's size (§1.5 vectors, snapshot variant)."""
    assert Directory(entries).size() == size
    assert directory_from_proto(directory_to_proto(Directory(entries))).size() == size


@pytest.mark.parametrize(
    "sizes",
    [[U64_MAX], [U64_MAX - 1], [U64_MAX // 2, U64_MAX // 2]],
    ids=["max", "max-1", "two-halves"],
)
def test_size_overflow(sizes: list[int]) -> None:
    """A Directory whose size() would exceed u64::MAX is refused, in the domain and on the wire."""
    entries = {b"d%d" % i: DirectoryNode(DUMMY_DIGEST, s) for i, s in enumerate(sizes)}
    with pytest.raises(DirectoryError, match=r"Total size exceeds u64::MAX"):
        Directory(entries)
    msg = pb.Directory()
    for name, node in entries.items():
        msg.directories.add(name=name, digest=node.digest, size=node.size)
    with pytest.raises(DirectoryError, match=r"Total size exceeds u64::MAX"):
        directory_from_proto(msg)


# ---- validation of wire Directories (§1.6, castore-go §13) ---------------------------------------


def _dir(
    dirs: Sequence[tuple[bytes, bytes, int]] = (),
    files: Sequence[tuple[bytes, bytes, int]] = (),
    symlinks: Sequence[tuple[bytes, bytes]] = (),
) -> pb.Directory:
    msg = pb.Directory()
    for name, digest, size in dirs:
        msg.directories.add(name=name, digest=digest, size=size)
    for name, digest, size in files:
        msg.files.add(name=name, digest=digest, size=size)
    for name, target in symlinks:
        msg.symlinks.add(name=name, target=target)
    return msg


D = bytes(DUMMY_DIGEST)


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (_dir(dirs=[(b"", D, 0)]), "cannot be empty"),
        (_dir(dirs=[(b".", D, 0)]), r"cannot be '\.'"),
        (_dir(dirs=[(b"..", D, 0)]), r"cannot be '\.\.'"),
        (_dir(dirs=[(b"\x00", D, 0)]), "cannot contain null bytes"),
        (_dir(dirs=[(b"a/b", D, 0)]), "cannot contain slashes"),
        (_dir(dirs=[(b"a" * 256, D, 0)]), "cannot be over 255 bytes long"),
        (_dir(files=[(b"", D, 0)]), "cannot be empty"),
        (_dir(files=[(b"..", D, 0)]), r"cannot be '\.\.'"),
        (_dir(files=[(b"a/", D, 0)]), "cannot contain slashes"),
        (_dir(symlinks=[(b"", b"x")]), "cannot be empty"),
        (_dir(symlinks=[(b".", b"x")]), r"cannot be '\.'"),
        (_dir(symlinks=[(b"a\x00", b"x")]), "cannot contain null bytes"),
        (_dir(dirs=[(b"foo", b"", 0)]), "invalid digest length: 0"),
        (_dir(dirs=[(b"foo", b"\x00\x01", 0)]), "invalid digest length: 2"),
        (_dir(files=[(b"foo", b"", 0)]), "invalid digest length: 0"),
        (_dir(files=[(b"foo", D + b"\x00", 0)]), "invalid digest length: 33"),
        (_dir(symlinks=[(b"foo", b"")]), "Invalid symlink target"),
        (_dir(symlinks=[(b"foo", b"a\x00b")]), "Invalid symlink target"),
        (_dir(symlinks=[(b"foo", b"a" * 4096)]), "Invalid symlink target"),
        (_dir(dirs=[(b"b", D, 0), (b"a", D, 0)]), "is not sorted"),
        (_dir(files=[(b"b", D, 0), (b"a", D, 0)]), "is not sorted"),
        (_dir(symlinks=[(b"b", b"x"), (b"a", b"x")]), "is not sorted"),
        (_dir(dirs=[(b"a", D, 0), (b"a", D, 0)]), "is a duplicate name"),
        (_dir(files=[(b"a", D, 0), (b"a", D, 0)]), "is a duplicate name"),
        (_dir(dirs=[(b"a", D, 0)], files=[(b"a", D, 0)]), "is a duplicate name"),
        (_dir(files=[(b"a", D, 0)], symlinks=[(b"a", b"x")]), "is a duplicate name"),
        # A repeated empty name is reported as invalid, not as a duplicate.
        (_dir(dirs=[(b"", D, 0), (b"", D, 0)]), "cannot be empty"),
        # castore-go: an empty name with a valid digest; a nil digest.
        (_dir(dirs=[(b"", bytes(32), 0)]), "cannot be empty"),
        (_dir(files=[(b"a", b"", 0)]), "invalid digest length"),
    ],
)
def test_invalid_directories(msg: pb.Directory, match: str) -> None:
    """Each rule of §1.6 refuses a Directory with a DirectoryError naming the problem."""
    with pytest.raises(DirectoryError, match=match):
        directory_from_proto(msg)
    with pytest.raises(DirectoryError, match=match):
        decode_directory(msg.SerializeToString())


def test_validation_order() -> None:
    """Sorting is checked before nodes; nodes in list order, each digest before its name."""
    # Unsorted files win over an invalid directory digest.
    msg = _dir(dirs=[(b"x", b"", 0)], files=[(b"b", D, 0), (b"a", D, 0)])
    with pytest.raises(DirectoryError, match="is not sorted"):
        directory_from_proto(msg)
    # The directory's bad name is found before the file's bad digest.
    msg = _dir(dirs=[(b".", D, 0)], files=[(b"a", b"", 0)])
    with pytest.raises(DirectoryError, match=r"cannot be '\.'"):
        directory_from_proto(msg)
    # A node's digest is checked before its own name.
    msg = _dir(dirs=[(b".", b"", 0)])
    with pytest.raises(DirectoryError, match="invalid digest length: 0"):
        directory_from_proto(msg)
    # Every node is converted before any is inserted: a bad symlink target later on is found
    # before a name used both as a directory and as a file.
    msg = _dir(dirs=[(b"a", D, 0)], files=[(b"a", D, 0)], symlinks=[(b"s", b"")])
    with pytest.raises(DirectoryError, match="Invalid symlink target"):
        directory_from_proto(msg)
    # … and a bad digest later on before a size overflow.
    msg = _dir(dirs=[(b"a", D, 2**64 - 1)], files=[(b"b", b"\x01", 0)])
    with pytest.raises(DirectoryError, match="invalid digest length: 1"):
        directory_from_proto(msg)


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (_dir(files=[(b"a", D, 0), (b"a", D, 0)]), '"a" is a duplicate name'),
        (_dir(files=[(b"a", D, 0)], symlinks=[(b"a", b"x")]), '"a" is a duplicate name'),
        (_dir(files=[(b"b", D, 0), (b"a", D, 0)]), '"a" is not sorted'),
        (_dir(files=[(b"b", D, 0), (b"a\xff\"", D, 0)]), '"a\\xFF\\"" is not sorted'),
        (_dir(dirs=[(b"a", b"\x00\x01", 0)]), 'invalid node with name a: "invalid digest length: 2"'),
        (
            _dir(symlinks=[(b"l", b"")]),
            'invalid node with name l: "Invalid symlink target: cannot be empty"',
        ),
        (_dir(dirs=[(b"a/b", D, 0)]), 'Invalid name "a/b": cannot contain slashes'),
        (_dir(dirs=[(b"a", D, 2**64 - 2)]), "Total size exceeds u64::MAX"),
    ],
)
def test_error_texts(msg: pb.Directory, message: str) -> None:
    """tvix's texts, byte strings shown as Rust shows them (quoted, escaped)."""
    with pytest.raises(DirectoryError) as info:
        directory_from_proto(msg)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "msg",
    [
        _dir(),
        _dir(dirs=[(b"b", D, 0), (b"c", D, 0)], symlinks=[(b"a", b"x")]),
        _dir(dirs=[(b"a" * 255, D, 0)]),
        _dir(files=[(b"\xc5\xc4\xd6", D, 0)]),
        _dir(symlinks=[(b"a", b"a" * 4095)]),
    ],
    ids=["empty", "sorted-per-list", "name-255", "non-utf8-name", "target-4095"],
)
def test_valid_directories(msg: pb.Directory) -> None:
    """Sorting is only required within each list; long and non-UTF-8 names are fine."""
    directory = directory_from_proto(msg)
    assert directory_from_proto(directory_to_proto(directory)) == directory


@pytest.mark.parametrize(
    "target", [b"/nix/store/x", b"a", b".", b"..", b"./..", b"a/b", b"\xc5\xc4\xd6", b"a" * 4095]
)
def test_valid_symlink_targets(target: bytes) -> None:
    """Relative, absolute, dot and non-UTF-8 symlink targets are all valid (§1.4)."""
    assert SymlinkNode(target).target == target


@pytest.mark.parametrize("target", [b"", b"\x00", b"a\x00b", b"a" * 4096])
def test_invalid_symlink_targets(target: bytes) -> None:
    """Empty targets, NUL bytes and targets over 4095 bytes are refused (§1.4)."""
    with pytest.raises(NodeError):
        SymlinkNode(target)


def test_domain_directory_rules() -> None:
    """The domain constructor enforces names and uniqueness, and orders entries across kinds."""
    with pytest.raises(DirectoryError, match="cannot be empty"):
        Directory({b"": FileNode(DUMMY_DIGEST, 0)})
    with pytest.raises(DirectoryError, match="duplicate"):
        Directory([(b"a", FileNode(DUMMY_DIGEST, 0)), (b"a", SymlinkNode(b"x"))])
    d = Directory({b"c": SymlinkNode(b"x"), b"a": FileNode(DUMMY_DIGEST, 1), b"b": DIRECTORY_A.as_node()})
    assert [name for name, _ in d] == [b"a", b"b", b"c"]
    assert d.get(b"b") == DIRECTORY_A.as_node() and d.get(b"z") is None
    assert [name for name, _ in d.directories()] == [b"b"]


# ---- canonical encoding (§1.2) ------------------------------------------------------------------


def test_fixtures_round_trip() -> None:
    """Every fixture survives encode -> decode unchanged."""
    for d in (DIRECTORY_A, DIRECTORY_B, DIRECTORY_C, DIRECTORY_D, DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED):
        assert decode_directory(d.encode()) == d
        assert decode_directory(d.encode()).digest() == d.digest()


def test_unknown_fields_stripped() -> None:
    """Unknown fields received on the wire (top level and in nodes) do not reach the digest."""
    canonical = bytes.fromhex(WITH_KEEP_PROTO)
    # Field 15 (varint 1) appended at the top level.
    top = canonical + bytes.fromhex("7801")
    # Field 15 inside the FileNode: its length grows from 0x29 to 0x2b.
    inner = bytes.fromhex("122b" + WITH_KEEP_PROTO[4:] + "7801")
    for wire in (top, inner):
        decoded = decode_directory(wire)
        assert decoded.encode() == canonical
        assert decoded.digest() == DIRECTORY_WITH_KEEP.digest()


def test_non_canonical_field_order_rehashes() -> None:
    """A node with its fields in another order decodes to the canonical digest."""
    # FileNode fields digest (2) before name (1).
    node = bytes.fromhex("1220" + EMPTY_HEX) + bytes.fromhex("0a052e6b656570")
    wire = bytes([0x12, len(node)]) + node
    assert wire.hex() != WITH_KEEP_PROTO
    assert decode_directory(wire).digest() == DIRECTORY_WITH_KEEP.digest()


def test_undecodable_bytes() -> None:
    """Bytes that are no protobuf message are a DirectoryError."""
    with pytest.raises(DirectoryError, match="cannot decode"):
        decode_directory(b"\x0a\xff")


# ---- standalone nodes (§1.7) --------------------------------------------------------------------


def test_node_round_trip() -> None:
    """Nodes convert to standalone messages and back, with and without a name."""
    for node in (DIRECTORY_COMPLICATED.as_node(), FileNode(DUMMY_DIGEST, 12, True), SymlinkNode(b"t")):
        assert named_node_from_proto(node_to_proto(b"n", node)) == (b"n", node)
        assert anonymous_node_from_proto(node_to_proto(b"", node)) == node


def test_node_errors() -> None:
    """No node set, a name on an anonymous node, an invalid name on a named one."""
    with pytest.raises(ValidationError, match="No node set"):
        anonymous_node_from_proto(pb.Node())
    with pytest.raises(ValidationError, match="Name is set when it shouldn't"):
        anonymous_node_from_proto(node_to_proto(b"x", SymlinkNode(b"t")))
    with pytest.raises(ValidationError, match="cannot be empty"):
        named_node_from_proto(node_to_proto(b"", SymlinkNode(b"t")))
    msg = pb.Node()
    msg.file.name = b"f"
    with pytest.raises(ValidationError, match="invalid digest length: 0"):
        anonymous_node_from_proto(msg)
