"""Domain objects <-> generated protobuf messages of tvix.castore.v1, with validation.

The only castore module (besides the gRPC shells) that imports generated code. Validation of
incoming Directories follows spec §1.6 in tvix's order; error texts follow tvix's.
"""

from __future__ import annotations

from tvix.castore.protos import castore_pb2 as pb
from tvix_castore.digests import B3_LEN, B3Digest
from tvix_castore.directory import Directory
from tvix_castore.errors import DirectoryError, NodeError
from tvix_castore.nodes import U64_MAX, DirectoryNode, FileNode, Node, SymlinkNode
from tvix_castore.path import name_problem, validate_symlink_target


def directory_to_proto(directory: Directory) -> pb.Directory:
    """Split a Directory into the three sorted lists of the wire format."""
    msg = pb.Directory()
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
            raise DirectoryError(f"{name!r} is not sorted")
        if name == prev:
            problem = name_problem(name)
            if problem is not None:
                raise DirectoryError(f"invalid node name {name!r}: {problem}")
            raise DirectoryError(f"{name!r} is a duplicate name")
        prev = name


def _digest(name: bytes, raw: bytes) -> B3Digest:
    if len(raw) != B3_LEN:
        raise DirectoryError(f"invalid node with name {name!r}: invalid digest length: {len(raw)}")
    return B3Digest(raw)


def directory_from_proto(msg: pb.Directory) -> Directory:
    """Validate a wire Directory (spec §1.6) and turn it into the domain type.

    Order as in tvix: sorting of each list; then node by node (directories, files, symlinks)
    its digest or target, then its name; then inserting it (duplicates across lists, overflow).
    """
    _check_sorted("directories", [d.name for d in msg.directories])
    _check_sorted("files", [f.name for f in msg.files])
    _check_sorted("symlinks", [s.name for s in msg.symlinks])
    entries: list[tuple[bytes, Node]] = []
    seen: set[bytes] = set()
    total = 0

    def insert(name: bytes, node: Node) -> None:
        nonlocal total
        problem = name_problem(name)
        if problem is not None:
            raise DirectoryError(f"invalid node name {name!r}: {problem}")
        if name in seen:
            raise DirectoryError(f"{name!r} is a duplicate name")
        total += 1 + (1 + node.size if isinstance(node, DirectoryNode) else 1)
        if total > U64_MAX:
            raise DirectoryError("Total size exceeds u64::MAX")
        seen.add(name)
        entries.append((name, node))

    for d in msg.directories:
        insert(d.name, DirectoryNode(_digest(d.name, d.digest), d.size))
    for f in msg.files:
        insert(f.name, FileNode(_digest(f.name, f.digest), f.size, f.executable))
    for s in msg.symlinks:
        try:
            target = validate_symlink_target(s.target)
        except NodeError as exc:
            raise DirectoryError(f"invalid node with name {s.name!r}: {exc}") from exc
        insert(s.name, SymlinkNode(target))
    # Every rule of the domain constructor was enforced above, with the same size arithmetic.
    return Directory._validated(entries, total)


def decode_directory(data: bytes) -> Directory:
    """Parse and validate a serialized Directory message."""
    msg = pb.Directory()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, a plain Exception subclass
        raise DirectoryError(f"cannot decode Directory: {exc}") from exc
    return directory_from_proto(msg)


def node_to_proto(name: bytes, node: Node) -> pb.Node:
    """A standalone Node message; name may be empty (anonymous)."""
    msg = pb.Node()
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
    try:
        return s.name, SymlinkNode(validate_symlink_target(s.target))
    except NodeError as exc:
        raise NodeError(f"invalid node with name {s.name!r}: {exc}") from exc


def _node_digest(name: bytes, raw: bytes) -> B3Digest:
    if len(raw) != B3_LEN:
        raise NodeError(f"invalid node with name {name!r}: invalid digest length: {len(raw)}")
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
        raise NodeError(f"invalid node name {name!r}: {problem}")
    return name, node
