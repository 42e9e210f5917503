"""Directory: an immutable, validated, name-sorted map of entries, addressed by BLAKE3.

Its digest is BLAKE3 over the canonical protobuf encoding (``proto_conv``); its ``size`` follows
spec decision 1: ``len(entries) + Σ(1 for a file or symlink, 1 + size for a directory)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from tvix_castore.digests import B3Digest, blake3_digest
from tvix_castore.errors import DirectoryError, NodeError
from tvix_castore.nodes import U64_MAX, DirectoryNode, FileNode, Node, SymlinkNode
from tvix_castore.path import name_problem


def _entry_weight(node: Node) -> int:
    return 1 + node.size if isinstance(node, DirectoryNode) else 1


class Directory:
    """An immutable set of named nodes, iterated in bytewise name order."""

    __slots__ = ("_digest", "_encoded", "_entries", "_index", "_size")

    def __init__(self, entries: Mapping[bytes, Node] | Iterable[tuple[bytes, Node]] = ()) -> None:
        items = list(entries.items()) if isinstance(entries, Mapping) else list(entries)
        items.sort(key=lambda kv: kv[0])
        size = 0
        index: dict[bytes, Node] = {}
        for name, node in items:
            problem = name_problem(name)
            if problem is not None:
                raise DirectoryError(f"invalid node name {name!r}: {problem}")
            if name in index:
                raise DirectoryError(f"{name!r} is a duplicate name")
            if not isinstance(node, FileNode | DirectoryNode | SymlinkNode):
                raise NodeError(f"{name!r}: not a node: {node!r}")
            size += 1 + _entry_weight(node)
            if size > U64_MAX:
                raise DirectoryError("Total size exceeds u64::MAX")
            index[name] = node
        self._entries: tuple[tuple[bytes, Node], ...] = tuple(items)
        self._index = index
        self._size = size
        self._encoded: bytes | None = None
        self._digest: B3Digest | None = None

    @classmethod
    def _validated(cls, items: list[tuple[bytes, Node]], size: int) -> Directory:
        """Build from entries already checked by ``proto_conv`` (names, uniqueness, overflow).

        Skips the second validation pass of ``__init__``; only for callers that enforce the same
        rules and computed ``size`` the same way.
        """
        self = cls.__new__(cls)
        items.sort(key=lambda kv: kv[0])
        self._entries = tuple(items)
        self._index = dict(items)
        self._size = size
        self._encoded = None
        self._digest = None
        return self

    def __iter__(self) -> Iterator[tuple[bytes, Node]]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def get(self, name: bytes) -> Node | None:
        """The node called name, or None."""
        return self._index.get(name)

    def entries(self) -> tuple[tuple[bytes, Node], ...]:
        """All (name, node) pairs in bytewise name order."""
        return self._entries

    def directories(self) -> Iterator[tuple[bytes, DirectoryNode]]:
        """The subdirectory entries, in name order."""
        for name, node in self._entries:
            if isinstance(node, DirectoryNode):
                yield name, node

    def size(self) -> int:
        """The recursive size recorded in a parent's DirectoryNode (spec decision 1)."""
        return self._size

    def encode(self) -> bytes:
        """The canonical protobuf encoding (fields in number order, defaults omitted)."""
        if self._encoded is None:
            from tvix_castore.proto_conv import encode_directory

            self._encoded = encode_directory(self)
        return self._encoded

    def digest(self) -> B3Digest:
        """BLAKE3 of the canonical encoding."""
        if self._digest is None:
            self._digest = B3Digest(blake3_digest(self.encode()))
        return self._digest

    def as_node(self) -> DirectoryNode:
        """A DirectoryNode that refers to this Directory."""
        return DirectoryNode(self.digest(), self.size())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Directory) and self._entries == other._entries

    def __hash__(self) -> int:
        return hash(self.digest())

    def __repr__(self) -> str:
        return f"Directory({self.digest()}, {len(self._entries)} entries)"
