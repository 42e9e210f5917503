"""Domain objects <-> generated protobuf messages of tvix.castore.v1, with validation.

The only castore module (besides the gRPC shells) that imports generated code. Validation of
incoming Directories follows spec §1.6 in tvix's order; error texts follow tvix's.

Decoding stored bytes (``decode_directory``, and the store's ``decode_path_info``) first tries
``parse_message``, a small reader of the protobuf wire format for the well-formed messages we
write ourselves; it yields objects with the attributes the ``*_from_proto`` validators read.
Anything unusual (unknown or repeated singular message fields, wrong wire types, truncation,
bad UTF-8, out-of-range numbers) goes to the generated code instead, so the result is always
the one protobuf gives. This keeps protobuf's import (tens of milliseconds) off the start-up of
commands that only read, such as ``tvix-store nar``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from tvix_castore.digests import B3_LEN, B3Digest
from tvix_castore.directory import Directory
from tvix_castore.errors import DirectoryError, NodeError, ValidationError
from tvix_castore.nodes import U64_MAX, DirectoryNode, FileNode, Node, SymlinkNode
from tvix_castore.path import name_problem, quoted, validate_symlink_target

if TYPE_CHECKING:
    from tvix.castore.protos import castore_pb2 as pb


_PB_MODULE = "tvix.castore.protos.castore_pb2"


def _pb() -> Any:
    from tvix.castore.protos import castore_pb2

    return castore_pb2


# -- a reader for the wire format of well-formed messages --------------------------------------

# A schema maps field numbers to (attribute, kind, sub-schema or None, repeated). Kinds: "bytes",
# "string", "uint64", "bool", "enum", "message". Only fields of these kinds occur in our protos.
Schema = dict[int, tuple[str, str, "Schema | None", bool]]
_U64_LIMIT = 1 << 64


class Fallback(Exception):
    """The input is not of the simple shape parse_message handles: use the generated code."""


class WireMessage:
    """A parsed message: attributes named after its fields, protobuf's defaults when absent."""

    def __init__(self, schema: Schema, oneof: str | None) -> None:
        self._schema = schema
        self._present: set[str] = set()
        self._oneof = oneof
        self._which: str | None = None
        for name, kind, _, repeated in schema.values():
            if repeated:
                setattr(self, name, [])
            elif kind != "message":  # absent messages are made on first access
                setattr(self, name, _DEFAULTS[kind])

    def __getattr__(self, name: str) -> Any:
        # Only reached for absent singular message fields: an empty message, as protobuf gives.
        for field, kind, sub, _ in self._schema.values():
            if field == name and kind == "message" and sub is not None:
                empty = WireMessage(sub, None)
                setattr(self, name, empty)
                return empty
        raise AttributeError(name)

    def HasField(self, name: str) -> bool:
        """Whether a singular message field was present."""
        return name in self._present

    def WhichOneof(self, _group: str) -> str | None:
        """The member of the message's oneof that was set last, or None."""
        return self._which


_DEFAULTS: dict[str, object] = {"bytes": b"", "string": "", "uint64": 0, "bool": False, "enum": 0}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise Fallback
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def parse_message(data: bytes, schema: Schema, oneof: str | None = None) -> WireMessage:
    """Parse data against schema; raises Fallback for anything but simple, well-formed input."""
    msg = WireMessage(schema, oneof)
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        spec = schema.get(key >> 3)
        if spec is None:
            raise Fallback
        name, kind, sub, repeated = spec
        wire_type = key & 7
        if kind in ("uint64", "bool", "enum"):
            if wire_type != 0:
                raise Fallback
            value, pos = _varint(data, pos)
            if value >= _U64_LIMIT or (kind == "enum" and value >= 1 << 31):
                raise Fallback
            scalar: object = bool(value) if kind == "bool" else value
            setattr(msg, name, scalar)
            continue
        if wire_type != 2:
            raise Fallback
        length, pos = _varint(data, pos)
        if pos + length > end:
            raise Fallback
        raw = data[pos : pos + length]
        pos += length
        if kind == "message":
            assert sub is not None
            if not repeated and name in msg._present:
                raise Fallback  # protobuf would merge the two occurrences
            # Node's members are the only oneof; their sub-schemas have none themselves.
            item: object = parse_message(raw, sub, "node" if sub is _NODE else None)
            if not repeated:
                msg._present.add(name)
                if oneof is not None:
                    if msg._which is not None:
                        raise Fallback  # another member was set before: protobuf clears it
                    msg._which = name
        elif kind == "string":
            try:
                item = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Fallback from None
        else:
            item = raw
        if repeated:
            getattr(msg, name).append(item)
        else:
            setattr(msg, name, item)
    return msg


_DIRECTORY_NODE: Schema = {
    1: ("name", "bytes", None, False),
    2: ("digest", "bytes", None, False),
    3: ("size", "uint64", None, False),
}
_FILE_NODE: Schema = {**_DIRECTORY_NODE, 4: ("executable", "bool", None, False)}
_SYMLINK_NODE: Schema = {1: ("name", "bytes", None, False), 2: ("target", "bytes", None, False)}
_DIRECTORY: Schema = {
    1: ("directories", "message", _DIRECTORY_NODE, True),
    2: ("files", "message", _FILE_NODE, True),
    3: ("symlinks", "message", _SYMLINK_NODE, True),
}
NODE_SCHEMA: Schema = {
    1: ("directory", "message", _DIRECTORY_NODE, False),
    2: ("file", "message", _FILE_NODE, False),
    3: ("symlink", "message", _SYMLINK_NODE, False),
}
_NODE = NODE_SCHEMA


# -- a writer of the canonical (deterministic) encoding -----------------------------------------
# proto3 as protobuf serializes it deterministically: fields in number order, scalars at their
# default value left out, every element of a repeated field and every set message written.


def varint(value: int) -> bytes:
    """The base-128 varint encoding of a non-negative integer below 2**64."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
    """A field of wire type 2 (bytes, string, message)."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def _node_fields(name: bytes, node: Node) -> tuple[int, bytes]:
    """(the Node oneof member's field number, the member message's encoding)."""
    out = length_delimited(1, name) if name else b""
    if isinstance(node, SymlinkNode):
        return 3, out + (length_delimited(2, node.target) if node.target else b"")
    out += length_delimited(2, node.digest)
    if node.size:
        out += b"\x18" + varint(node.size)
    if isinstance(node, DirectoryNode):
        return 1, out
    return 2, out + b"\x20\x01" if node.executable else out


def encode_directory(directory: Directory) -> bytes:
    """The canonical encoding of a Directory (what its digest is taken over)."""
    lists: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
    for name, node in directory:
        field, payload = _node_fields(name, node)
        lists[field - 1].append(length_delimited(field, payload))
    return b"".join(lists[0]) + b"".join(lists[1]) + b"".join(lists[2])


def encode_node(name: bytes, node: Node) -> bytes:
    """The canonical encoding of a standalone Node message."""
    return length_delimited(*_node_fields(name, node))


def directory_to_proto(directory: Directory) -> pb.Directory:
    """Split a Directory into the three sorted lists of the wire format."""
    msg: pb.Directory = _pb().Directory()
    for name, node in directory:
        if isinstance(node, DirectoryNode):
            msg.directories.add(name=name, digest=node.digest, size=node.size)
        elif isinstance(node, FileNode):
            msg.files.add(name=name, digest=node.digest, size=node.size, executable=node.executable)
        else:
            msg.symlinks.add(name=name, target=node.target)
    return msg


def _check_sorted(kind: str, names: list[bytes]) -> None:
    prev = b""
    for name in names:
        if name < prev:
            raise DirectoryError(f"{quoted(name)} is not sorted")
        if name == prev:
            _check_name(name)
            raise DirectoryError(f"{quoted(name)} is a duplicate name")
        prev = name


def _check_name(name: bytes) -> None:
    problem = name_problem(name)
    if problem is not None:
        raise DirectoryError(f"Invalid name {quoted(name)}: {problem}")


def _invalid_node(name: bytes, problem: str) -> str:
    """The text tvix gives a node that fails validation: its name, then the problem, quoted."""
    return f"invalid node with name {name.decode(errors='replace')}: {quoted(problem.encode())}"


def _digest(name: bytes, raw: bytes) -> B3Digest:
    if len(raw) != B3_LEN:
        raise DirectoryError(_invalid_node(name, f"invalid digest length: {len(raw)}"))
    return B3Digest(raw)


def _target(name: bytes, target: bytes, error: type[ValidationError]) -> bytes:
    try:
        return validate_symlink_target(target)
    except NodeError as exc:
        raise error(_invalid_node(name, str(exc))) from exc


def directory_from_proto(msg: pb.Directory) -> Directory:
    """Validate a wire Directory (spec §1.6) and turn it into the domain type.

    Order as in tvix: sorting of each list; then every node (directories, files, symlinks) is
    converted, its digest or target checked before its name; then the nodes are inserted one by
    one (duplicates across lists, size overflow).
    """
    _check_sorted("directories", [d.name for d in msg.directories])
    _check_sorted("files", [f.name for f in msg.files])
    _check_sorted("symlinks", [s.name for s in msg.symlinks])
    entries: list[tuple[bytes, Node]] = []
    for d in msg.directories:
        node: Node = DirectoryNode(_digest(d.name, d.digest), d.size)
        _check_name(d.name)
        entries.append((d.name, node))
    for f in msg.files:
        node = FileNode(_digest(f.name, f.digest), f.size, f.executable)
        _check_name(f.name)
        entries.append((f.name, node))
    for s in msg.symlinks:
        node = SymlinkNode(_target(s.name, s.target, DirectoryError))
        _check_name(s.name)
        entries.append((s.name, node))
    seen: set[bytes] = set()
    total = 0
    for name, node in entries:
        if name in seen:
            raise DirectoryError(f"{quoted(name)} is a duplicate name")
        seen.add(name)
        total += 1 + (1 + node.size if isinstance(node, DirectoryNode) else 1)
        if total > U64_MAX:
            raise DirectoryError("Total size exceeds u64::MAX")
    # Every rule of the domain constructor was enforced above, with the same size arithmetic.
    return Directory._validated(entries, total)


def decode_directory(data: bytes) -> Directory:
    """Parse and validate a serialized Directory message."""
    # Where the generated code is loaded anyway (servers, gRPC clients), its C parser is twice
    # as fast as parse_message, which is for the commands that never load it.
    if _PB_MODULE in sys.modules:
        return _decode_directory_by_protobuf(data)
    return decode_directory_wire_first(data)


def decode_directory_wire_first(data: bytes) -> Directory:
    """``decode_directory`` by ``parse_message``, with the generated code for unusual input."""
    try:
        fast: Any = parse_message(data, _DIRECTORY)
    except Fallback:
        return _decode_directory_by_protobuf(data)
    return directory_from_proto(fast)


def _decode_directory_by_protobuf(data: bytes) -> Directory:
    msg: pb.Directory = _pb().Directory()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, a plain Exception subclass
        raise DirectoryError(f"cannot decode Directory: {exc}") from exc
    return directory_from_proto(msg)


def node_to_proto(name: bytes, node: Node) -> pb.Node:
    """A standalone Node message; name may be empty (anonymous)."""
    msg: pb.Node = _pb().Node()
    if isinstance(node, DirectoryNode):
        msg.directory.name = name
        msg.directory.digest = node.digest
        msg.directory.size = node.size
    elif isinstance(node, FileNode):
        msg.file.name = name
        msg.file.digest = node.digest
        msg.file.size = node.size
        msg.file.executable = node.executable
    else:
        msg.symlink.name = name
        msg.symlink.target = node.target
    return msg


def node_from_proto(msg: pb.Node) -> tuple[bytes, Node]:
    """Validate a standalone Node; returns (name, node). The name may be empty."""
    kind = msg.WhichOneof("node")
    if kind is None:
        raise NodeError("No node set")
    if kind == "directory":
        d = msg.directory
        return d.name, DirectoryNode(_node_digest(d.name, d.digest), d.size)
    if kind == "file":
        f = msg.file
        return f.name, FileNode(_node_digest(f.name, f.digest), f.size, f.executable)
    s = msg.symlink
    return s.name, SymlinkNode(_target(s.name, s.target, NodeError))


def _node_digest(name: bytes, raw: bytes) -> B3Digest:
    if len(raw) != B3_LEN:
        raise NodeError(_invalid_node(name, f"invalid digest length: {len(raw)}"))
    return B3Digest(raw)


def anonymous_node_from_proto(msg: pb.Node) -> Node:
    """Validate a Node that must carry no name (CalculateNAR, nar-bridge URLs)."""
    name, node = node_from_proto(msg)
    if name:
        raise NodeError("Name is set when it shouldn't")
    return node


def named_node_from_proto(msg: pb.Node) -> tuple[bytes, Node]:
    """Validate a Node whose name must be a valid entry name."""
    name, node = node_from_proto(msg)
    problem = name_problem(name)
    if problem is not None:
        raise NodeError(f"Invalid name {quoted(name)}: {problem}")
    return name, node
