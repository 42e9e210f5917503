"""NAR size and SHA-256 of a castore node, by rendering it; or its size alone, from the tree.

``LocalNarCalculationService`` is the NarCalculationService used when the path-info service has
no remote one; ``nar_size`` needs only the Directories, never a blob.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from nix_compat.nar import wire
from tvix_castore.blobservice import BlobService
from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.errors import StorageError
from tvix_castore.nodes import DirectoryNode, FileNode, Node
from tvix_store.nar.renderer import write_nar

if TYPE_CHECKING:
    from tvix_store.nar_cache import NarCache

__all__ = ["LocalNarCalculationService", "NarHasher", "nar_size"]


def _str_len(n: int) -> int:
    """Bytes of a NAR string of n bytes: length, bytes, padding."""
    return 8 + n + wire.padding_len(n)


def nar_size(root: Node, directory_service: DirectoryService) -> int:
    """The size of root's NAR, from node sizes, names and targets (no blob is read).

    Raises:
        StorageError: a Directory of the tree is missing.

    """
    directories: dict[B3Digest, Directory] = {}
    if isinstance(root, DirectoryNode):
        directories = {d.digest(): d for d in directory_service.get_recursive(root.digest)}
    total = len(wire.TOK_NAR)
    stack: list[Node] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, FileNode):
            tokens = wire.TOK_EXE if node.executable else wire.TOK_REG
            total += len(tokens) + _str_len(node.size) + len(wire.TOK_PAR)
        elif isinstance(node, DirectoryNode):
            directory = directories.get(node.digest)
            if directory is None:
                raise StorageError(f"directory {node.digest} does not exist")
            total += len(wire.TOK_DIR) + len(wire.TOK_PAR)
            for name, child in directory:
                # entry ( name <name> node ( type … ) ): the child's own ')' is counted with it.
                total += len(wire.TOK_ENT) + _str_len(len(name)) + len(wire.TOK_NOD) + len(wire.TOK_PAR)
                stack.append(child)
        else:
            total += len(wire.TOK_SYM) + _str_len(len(node.target)) + len(wire.TOK_PAR)
    return total


class NarHasher:
    """A write callable that counts and SHA-256-hashes what it is given."""

    __slots__ = ("_sha", "size")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    def __call__(self, data: bytes | memoryview) -> None:
        """Count and hash data."""
        self._sha.update(data)
        self.size += len(data)

    def digest(self) -> bytes:
        """SHA-256 of everything written so far."""
        return self._sha.digest()


class LocalNarCalculationService:
    """Renders a node's NAR from the blob and directory services and hashes it.

    With a ``NarCache`` the result is looked up first and remembered afterwards (decision 8):
    it depends only on the node, whose digests pin down every byte below it.
    """

    def __init__(
        self,
        blob_service: BlobService,
        directory_service: DirectoryService,
        nar_cache: NarCache | None = None,
    ) -> None:
        self._blob_service = blob_service
        self._directory_service = directory_service
        self._nar_cache = nar_cache

    def calculate_nar(self, node: Node) -> tuple[int, bytes]:
        """(nar_size, nar_sha256) of node.

        Raises:
            NarRenderError: a blob or directory below node is missing or inconsistent.

        """
        cache = self._nar_cache
        if cache is not None:
            hit = cache.get_nar_cache(node)
            if hit is not None:
                return hit
        hasher = NarHasher()
        write_nar(hasher, node, self._blob_service, self._directory_service)
        if cache is not None:
            cache.put_nar_cache(node, hasher.size, hasher.digest())
        return hasher.size, hasher.digest()
