"""The three node kinds (without names: a Directory maps names to nodes)."""

from __future__ import annotations

from dataclasses import dataclass

from tvix_castore.digests import B3Digest
from tvix_castore.errors import NodeError
from tvix_castore.path import validate_symlink_target

U64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class FileNode:
    """A regular file: BLAKE3 of its contents, its length, and the executable bit."""

    digest: B3Digest
    size: int
    executable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.digest, B3Digest):
            object.__setattr__(self, "digest", B3Digest(self.digest))
        if not 0 <= self.size <= U64_MAX:
            raise NodeError(f"invalid file size {self.size}")


@dataclass(frozen=True, slots=True)
class DirectoryNode:
    """A directory: the digest of its Directory and its recursive ``size`` (spec decision 1)."""

    digest: B3Digest
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.digest, B3Digest):
            object.__setattr__(self, "digest", B3Digest(self.digest))
        if not 0 <= self.size <= U64_MAX:
            raise NodeError(f"invalid directory size {self.size}")


@dataclass(frozen=True, slots=True)
class SymlinkNode:
    """A symbolic link and its (validated) target."""

    target: bytes

    def __post_init__(self) -> None:
        validate_symlink_target(self.target)


Node = FileNode | DirectoryNode | SymlinkNode
