"""NAR size and SHA-256 of a castore node, by rendering it; or its size alone, from the tree.

``LocalNarCalculationService`` is the NarCalculationService used when the path-info service has
no remote one; ``nar_size`` needs only the Directories, never a blob (``nar_size_from`` with
them fetched already, and ``FetchedDirectories`` to render from the same ones).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, final

from nix_compat.nar import wire
from tvix_castore.blobservice import BlobService
from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.directoryservice import DirectoryPutter, DirectoryService
from tvix_castore.errors import InvalidRequest, StorageError
from tvix_castore.nodes import DirectoryNode, FileNode, Node
from tvix_store.errors import Abandoned
from tvix_store.nar.renderer import write_nar

if TYPE_CHECKING:
    from tvix_store.nar_cache import NarCache

__all__ = [
    "FetchedDirectories",
    "LocalNarCalculationService",
    "NarHasher",
    "fetch_directories",
    "nar_size",
    "nar_size_from",
]


def _str_len(n: int) -> int:
    """Bytes of a NAR string of n bytes: length, bytes, padding."""
    return 8 + n + wire.padding_len(n)


def fetch_directories(root: Node, directory_service: DirectoryService) -> dict[B3Digest, Directory]:
    """The Directories of root's tree by digest (none for a file or symlink root)."""
    if not isinstance(root, DirectoryNode):
        return {}
    return {d.digest(): d for d in directory_service.get_recursive(root.digest)}


def nar_size(root: Node, directory_service: DirectoryService) -> int:
    """The size of root's NAR, from node sizes, names and targets (no blob is read).

    Raises:
        StorageError: a Directory of the tree is missing.

    """
    return nar_size_from(root, fetch_directories(root, directory_service))


def nar_size_from(root: Node, directories: dict[B3Digest, Directory]) -> int:
    """``nar_size`` with the tree's Directories at hand (``fetch_directories``).

    Raises:
        StorageError: a Directory of the tree is not among them.

    """
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


@final
class FetchedDirectories(DirectoryService):
    """Directories already fetched (``fetch_directories``), served from memory; read-only.

    For rendering a NAR whose tree was just read to find its size: the tree is read once.
    """

    def __init__(self, directories: dict[B3Digest, Directory]) -> None:
        self._directories = directories

    def get(self, digest: B3Digest) -> Directory | None:
        """The Directory, if it was fetched."""
        return self._directories.get(digest)

    def put(self, directory: Directory) -> B3Digest:
        """Refused: a read-only view."""
        raise InvalidRequest("fetched directories are read-only")

    def put_multiple_start(self) -> DirectoryPutter:
        """Refused: a read-only view."""
        raise InvalidRequest("fetched directories are read-only")


# How much NAR a calculation hashes between asking whether it is still wanted.
_ASK_EVERY = 16 * 1024 * 1024


class NarHasher:
    """A write callable that counts and SHA-256-hashes what it is given.

    With wanted, it asks after every ``_ASK_EVERY`` bytes whether to go on, and raises
    ``Abandoned`` when not.
    """

    __slots__ = ("_ask_at", "_sha", "_wanted", "size")

    def __init__(self, wanted: Callable[[], bool] | None = None) -> None:
        self._sha = hashlib.sha256()
        self.size = 0
        self._wanted = wanted
        self._ask_at = _ASK_EVERY

    def __call__(self, data: bytes | memoryview) -> None:
        """Count and hash data."""
        self._sha.update(data)
        self.size += len(data)
        if self.size >= self._ask_at and self._wanted is not None:
            self._ask_at = self.size + _ASK_EVERY
            if not self._wanted():
                raise Abandoned(f"NAR calculation abandoned by its caller after {self.size} bytes")

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

    def calculate_nar(self, node: Node, wanted: Callable[[], bool] | None = None) -> tuple[int, bytes]:
        """(nar_size, nar_sha256) of node.

        Raises:
            NarRenderError: a blob or directory below node is missing or inconsistent.
            Abandoned: wanted answered False.

        """
        cache = self._nar_cache
        if cache is not None:
            hit = cache.get_nar_cache(node)
            if hit is not None:
                return hit
        hasher = NarHasher(wanted)
        write_nar(hasher, node, self._blob_service, self._directory_service)
        if cache is not None:
            cache.put_nar_cache(node, hasher.size, hasher.digest())
        return hasher.size, hasher.digest()
