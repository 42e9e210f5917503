"""NAR size and SHA-256 of a castore node, computed by rendering it locally.

This is the NarCalculationService used when the path-info service has no remote one.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.nodes import Node
from tvix_store.nar.renderer import write_nar

if TYPE_CHECKING:
    from tvix_store.nar_cache import NarCache

__all__ = ["LocalNarCalculationService", "NarHasher"]


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
