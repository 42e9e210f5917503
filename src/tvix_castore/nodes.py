"""The three node kinds (without names: a Directory maps names to nodes)."""

from __future__ import annotations

from tvix_castore.digests import B3Digest
from tvix_castore.errors import NodeError
from tvix_castore.frozen import Frozen
from tvix_castore.path import validate_symlink_target

U64_MAX = (1 << 64) - 1


class FileNode(Frozen):
    """A regular file: BLAKE3 of its contents, its length, and the executable bit."""

    __slots__ = ("digest", "executable", "size")
    digest: B3Digest
    size: int
    executable: bool

    def __init__(self, digest: B3Digest | bytes, size: int, executable: bool = False) -> None:
        if not 0 <= size <= U64_MAX:
            raise NodeError(f"invalid file size {size}")
        object.__setattr__(self, "digest", digest if isinstance(digest, B3Digest) else B3Digest(digest))
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "executable", executable)


class DirectoryNode(Frozen):
    """A directory: the digest of its Directory and its recursive ``size`` (spec decision 1)."""

    __slots__ = ("digest", "size")
    digest: B3Digest
    size: int

    def __init__(self, digest: B3Digest | bytes, size: int) -> None:
        if not 0 <= size <= U64_MAX:
            raise NodeError(f"invalid directory size {size}")
        object.__setattr__(self, "digest", digest if isinstance(digest, B3Digest) else B3Digest(digest))
        object.__setattr__(self, "size", size)


class SymlinkNode(Frozen):
    """A symbolic link and its (validated) target."""

    __slots__ = ("target",)
    target: bytes

    def __init__(self, target: bytes) -> None:
        validate_symlink_target(target)
        object.__setattr__(self, "target", target)


Node = FileNode | DirectoryNode | SymlinkNode
