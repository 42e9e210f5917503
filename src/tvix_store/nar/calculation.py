"""NAR size and SHA-256 of a castore node, computed by rendering it locally.

This is the NarCalculationService used when the path-info service has no remote one.
"""

from __future__ import annotations

import hashlib

from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.nodes import Node
from tvix_store.nar.renderer import write_nar

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
    """Renders a node's NAR from the blob and directory services and hashes it."""

    def __init__(self, blob_service: BlobService, directory_service: DirectoryService) -> None:
        self._blob_service = blob_service
        self._directory_service = directory_service

    def calculate_nar(self, node: Node) -> tuple[int, bytes]:
        """(nar_size, nar_sha256) of node.

        Raises:
            NarRenderError: a blob or directory below node is missing or inconsistent.

        """
        hasher = NarHasher()
        write_nar(hasher, node, self._blob_service, self._directory_service)
        return hasher.size, hasher.digest()
