"""castore's small protobuf wire reader agrees with the generated code on every input.

``decode_directory`` (in a process without the generated code: ``decode_directory_wire_first``)
and ``decode_path_info`` read stored bytes with ``parse_message`` and hand anything unusual to
protobuf; whatever the input, the outcome (the domain object, or the error type and message) must
be the one the generated code alone gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fixtures import DIRECTORY_COMPLICATED, PATH_INFO
from hypothesis import example, given
from hypothesis import strategies as st

from nix_compat.nixhash import DIGEST_LENGTHS, CAHash, NixHash
from nix_compat.signing import Signature
from nix_compat.store_path import StorePath
from tvix.castore.protos import castore_pb2
from tvix.store.protos import pathinfo_pb2
from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.errors import ValidationError
from tvix_castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from tvix_castore.proto_conv import decode_directory, decode_directory_wire_first, directory_from_proto
from tvix_store.errors import PathInfoError
from tvix_store.path_info import PathInfo
from tvix_store.proto_conv import _CA_TO_PROTO, decode_path_info, encode_path_info, path_info_from_proto


def _outcome(decode: Callable[[bytes], object], data: bytes) -> object:
    try:
        return ("ok", decode(data))
    except Exception as exc:  # every failure must match in type and text
        return ("error", type(exc), str(exc))


def _directory_by_protobuf(data: bytes) -> object:
    msg = castore_pb2.Directory()
    try:
        msg.ParseFromString(data)
    except Exception as exc:
        from tvix_castore.errors import DirectoryError

        raise DirectoryError(f"cannot decode Directory: {exc}") from exc
    return directory_from_proto(msg)


def _path_info_by_protobuf(data: bytes) -> object:
    msg = pathinfo_pb2.PathInfo()
    try:
        msg.ParseFromString(data)
    except Exception as exc:
        from tvix_store.errors import PathInfoError

        raise PathInfoError(f"cannot decode PathInfo: {exc}") from exc
    return path_info_from_proto(msg)


_names = st.binary(max_size=6) | st.sampled_from([b"a", b"b", b".", b"..", b"a/b", b""])
_digests = st.binary(min_size=32, max_size=32) | st.binary(max_size=40)


@st.composite
def _directories(draw: st.DrawFn) -> bytes:
    msg = castore_pb2.Directory()
    for name in draw(st.lists(_names, max_size=4)):
        msg.directories.add(name=name, digest=draw(_digests), size=draw(st.integers(0, 2**64 - 1)))
    for name in draw(st.lists(_names, max_size=4)):
        msg.files.add(
            name=name, digest=draw(_digests), size=draw(st.integers(0, 99)), executable=draw(st.booleans())
        )
    for name in draw(st.lists(_names, max_size=3)):
        msg.symlinks.add(name=name, target=draw(st.binary(max_size=5)))
    return msg.SerializeToString(deterministic=True)


def _mutated(base: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """The message, or it truncated, extended with random bytes, or with a byte changed."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = draw(base)
        how = draw(st.sampled_from(["keep", "cut", "append", "flip", "twice"]))
        if how == "cut" and data:
            return data[: draw(st.integers(0, len(data) - 1))]
        if how == "append":
            return data + draw(st.binary(min_size=1, max_size=8))
        if how == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
        if how == "twice":
            return data + data
        return data

    return mutate()


@given(_mutated(_directories()) | st.binary(max_size=40))
@example(DIRECTORY_COMPLICATED.encode())
@example(b"\x0a\x00\x0a\x00")
@example(b"\x12\x02\x20\x01")  # a file node with executable=true only
def test_directory_decoding_matches_protobuf(data: bytes) -> None:
    """Same Directory, or the same error, as the generated code (both ways of decoding)."""
    expected = _outcome(_directory_by_protobuf, data)
    assert _outcome(decode_directory_wire_first, data) == expected
    assert _outcome(decode_directory, data) == expected


@st.composite
def _path_infos(draw: st.DrawFn) -> bytes:
    msg = pathinfo_pb2.PathInfo.FromString(encode_path_info(PATH_INFO))
    if draw(st.booleans()):
        msg.ClearField("narinfo")
    if draw(st.booleans()):
        msg.references.append(draw(st.binary(max_size=21)))
    if draw(st.booleans()):
        msg.narinfo.reference_names.append(
            draw(st.sampled_from(["", "x", "00000000000000000000000000000000-a"]))
        )
    if draw(st.booleans()):
        msg.narinfo.signatures.add(
            name=draw(st.sampled_from(["k", "", "a:b"])), data=draw(st.binary(max_size=64))
        )
    if draw(st.booleans()):
        msg.narinfo.deriver.name = draw(st.sampled_from(["", "foo.drv", "bad/name"]))
        msg.narinfo.deriver.digest = draw(st.binary(max_size=21))
    if draw(st.booleans()):
        msg.narinfo.ca.type = draw(st.integers(0, 12))  # type: ignore[assignment]
        msg.narinfo.ca.digest = draw(st.binary(max_size=64))
    which = draw(st.sampled_from(["keep", "file", "symlink", "none"]))
    if which == "file":
        msg.node.file.name = msg.node.directory.name
        msg.node.file.digest = draw(_digests)
        msg.node.file.size = 3
    elif which == "symlink":
        msg.node.symlink.name = draw(_names)
        msg.node.symlink.target = draw(st.binary(max_size=5))
    elif which == "none":
        msg.ClearField("node")
    msg.narinfo.nar_size = draw(st.integers(0, 2**64 - 1))
    return msg.SerializeToString(deterministic=True)


@given(_mutated(_path_infos()) | st.binary(max_size=40))
@example(encode_path_info(PATH_INFO))
def test_path_info_decoding_matches_protobuf(data: bytes) -> None:
    """Same PathInfo, or the same error, as the generated code."""
    assert _outcome(decode_path_info, data) == _outcome(_path_info_by_protobuf, data)


def test_ca_numbers_match_the_generated_enum() -> None:
    """The hard-coded NARInfo.CA.Hash numbers are the generated enum's."""
    ca = pathinfo_pb2.NARInfo.CA
    for (kind, algo), number in _CA_TO_PROTO.items():
        name = {"nar": "NAR", "text": "TEXT", "flat": "FLAT"}[kind] + "_" + algo.upper()
        assert ca.Hash.Value(name) == number


def test_canonical_encodings_take_the_fast_path() -> None:
    """What we store ourselves is read without falling back to the generated code (which
    parse_message signals by raising Fallback), into what was stored."""
    from tvix_castore.proto_conv import _DIRECTORY, parse_message
    from tvix_store.proto_conv import _PATH_INFO

    directory: Any = parse_message(DIRECTORY_COMPLICATED.encode(), _DIRECTORY)
    assert directory_from_proto(directory) == DIRECTORY_COMPLICATED
    info: Any = parse_message(encode_path_info(PATH_INFO), _PATH_INFO)
    assert path_info_from_proto(info) == PATH_INFO


def test_the_examples_decode() -> None:
    """The explicit examples of the two properties below are valid, so those properties check
    at least these encodings (they skip what does not decode)."""
    assert decode_directory(DIRECTORY_COMPLICATED.encode()) == DIRECTORY_COMPLICATED
    assert decode_path_info(encode_path_info(PATH_INFO)) == PATH_INFO


# -- the writer ------------------------------------------------------------------------------------


@given(_directories())
@example(DIRECTORY_COMPLICATED.encode())
def test_directory_encoding_matches_protobuf(data: bytes) -> None:
    """Every valid Directory encodes exactly as the generated code serializes it."""
    from tvix_castore.proto_conv import directory_to_proto

    try:
        directory = decode_directory(data)
    except ValidationError:  # a Directory the data model refuses; nothing else may be raised
        return
    assert directory.encode() == directory_to_proto(directory).SerializeToString(deterministic=True)


@given(_path_infos())
@example(encode_path_info(PATH_INFO))
def test_path_info_encoding_matches_protobuf(data: bytes) -> None:
    """Every valid PathInfo encodes exactly as the generated code serializes it."""
    from tvix_store.proto_conv import path_info_to_proto

    try:
        info = decode_path_info(data)
    except (PathInfoError, ValidationError):  # refused by the data model; nothing else may be raised
        return
    assert encode_path_info(info) == path_info_to_proto(info).SerializeToString(deterministic=True)


_node_names = st.binary(min_size=1, max_size=8).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)
_b3 = st.binary(min_size=32, max_size=32).map(B3Digest)
_nodes = st.one_of(
    st.builds(FileNode, _b3, st.integers(0, 2**64 - 1), st.booleans()),
    st.builds(DirectoryNode, _b3, st.integers(0, 2**40)),
    st.builds(SymlinkNode, st.binary(min_size=1, max_size=8).filter(lambda t: b"\0" not in t)),
)


@given(st.dictionaries(_node_names, _nodes, max_size=8))
def test_domain_directory_encoding_matches_protobuf(entries: dict[bytes, Node]) -> None:
    """Directories built from domain objects encode as the generated code serializes them."""
    from tvix_castore.proto_conv import directory_to_proto

    directory = Directory(entries)
    assert directory.encode() == directory_to_proto(directory).SerializeToString(deterministic=True)
    assert decode_directory(directory.encode()) == directory


_store_paths = st.builds(
    StorePath,
    st.binary(min_size=20, max_size=20),
    st.sampled_from(["a", "foo-1.0", "x.drv", "name+with=chars"]),
)


@given(
    _store_paths,
    _nodes,
    st.integers(0, 2**64 - 1),
    st.lists(_store_paths, max_size=3),
    st.lists(
        st.builds(
            Signature, st.sampled_from(["k", "cache.nixos.org-1"]), st.binary(min_size=64, max_size=64)
        ),
        max_size=2,
    ),
    st.none() | _store_paths,
    st.none() | st.sampled_from(sorted(_CA_TO_PROTO)),
)
def test_domain_path_info_encoding_matches_protobuf(
    store_path: StorePath,
    node: Node,
    nar_size: int,
    references: list[StorePath],
    signatures: list[Signature],
    deriver: StorePath | None,
    ca_kind: tuple[str, str] | None,
) -> None:
    """PathInfos with every optional part encode as the generated code serializes them."""
    from tvix_store.proto_conv import path_info_to_proto

    ca = None
    if ca_kind is not None:
        length = DIGEST_LENGTHS[ca_kind[1]]
        ca = CAHash(ca_kind[0], NixHash(ca_kind[1], bytes(range(length))))  # type: ignore[arg-type]
    info = PathInfo(
        store_path=store_path,
        node=node,
        nar_size=nar_size,
        nar_sha256=bytes(32),
        references=tuple(references),
        signatures=tuple(signatures),
        deriver=deriver,
        ca=ca,
    )
    assert encode_path_info(info) == path_info_to_proto(info).SerializeToString(deterministic=True)
    assert decode_path_info(encode_path_info(info)) == info
