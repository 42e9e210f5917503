"""``memory://``: blobs in a dict, for tests and throwaway stores (tvix ``blobservice/memory.rs``).

Blobs are kept whole and never chunked, so ``chunks()`` answers ``[]`` for every present blob.
The digest is computed from the written bytes on ``close()``; nothing the caller says is trusted.
"""

from __future__ import annotations

import threading
from typing import final

import blake3

from tvix_castore.blobservice import BlobReader, BlobService, BlobWriter
from tvix_castore.blobservice.chunked_reader import BytesBlobReader
from tvix_castore.digests import B3Digest
from tvix_castore.errors import ClosedError
from tvix_castore.url import ServiceUrl

__all__ = ["MemoryBlobService"]


@final
class MemoryBlobService(BlobService):
    """Blobs in a dict guarded by a lock; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[B3Digest, bytes] = {}

    @classmethod
    def from_url(cls, url: ServiceUrl) -> MemoryBlobService:
        """Accept exactly ``memory://`` (no host, no path, no options)."""
        url.require_no_host()
        url.require_no_path()
        url.require_no_query()
        return cls()

    def has(self, digest: B3Digest) -> bool:
        """Whether the blob is present."""
        with self._lock:
            return digest in self._blobs

    def open_read(self, digest: B3Digest) -> BlobReader | None:
        """A reader over the blob, or None."""
        with self._lock:
            data = self._blobs.get(digest)
        # Stored bytes were hashed on the way in and are immutable Python bytes: nothing to re-verify.
        return None if data is None else BytesBlobReader(data)

    def open_write(self) -> BlobWriter:
        """A writer that stores the blob on close."""
        return _MemoryBlobWriter(self)

    def _store(self, digest: B3Digest, data: bytes) -> None:
        with self._lock:
            self._blobs.setdefault(digest, data)


@final
class _MemoryBlobWriter(BlobWriter):
    def __init__(self, service: MemoryBlobService) -> None:
        self._service = service
        self._buf: bytearray | None = bytearray()
        self._hasher = blake3.blake3()
        self._digest: B3Digest | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append data."""
        if self._buf is None:
            raise ClosedError("blob writer is already closed")
        self._buf += data
        self._hasher.update(data)
        return len(data)

    def close(self) -> B3Digest:
        """Store the blob and return its digest; a second call returns the same digest."""
        if self._digest is not None:
            return self._digest
        if self._buf is None:
            raise ClosedError("blob writer was aborted")
        digest = B3Digest(self._hasher.digest())
        self._service._store(digest, bytes(self._buf))
        self._buf = None
        self._digest = digest
        return digest

    def abort(self) -> None:
        """Forget what was written."""
        self._buf = None
