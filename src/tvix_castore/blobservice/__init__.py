"""BlobService: content-addressed blobs keyed by BLAKE3, optionally split into chunks.

Backends (one module each, chosen by URL through ``from_addr``): ``memory://`` (memory.py),
``lmdb:///abs/dir`` (lmdb_store.py), ``grpc+unix:///sock`` / ``grpc+http://host:port``
(grpc_client.py). Readers are seekable file-likes; ``chunked_reader`` assembles chunk lists.
"""

from __future__ import annotations

import abc
import io
from collections.abc import Sequence
from types import TracebackType

from tvix_castore.digests import B3Digest
from tvix_castore.frozen import Frozen
from tvix_castore.url import Registry


class ChunkMeta(Frozen):
    """One chunk of a blob: its BLAKE3 digest and length."""

    __slots__ = ("digest", "size")
    digest: B3Digest
    size: int

    def __init__(self, digest: B3Digest, size: int) -> None:
        object.__setattr__(self, "digest", digest)
        object.__setattr__(self, "size", size)


ChunkData = bytes | memoryview
"""A chunk's verified bytes: a backend may hand out read-only views (of a received message)."""


class BlobReader(io.RawIOBase):
    """A seekable, read-only view of one blob's bytes. Not thread-safe: one user at a time.

    Every byte handed out has been checked against its BLAKE3 digest (spec decision 6).
    """

    def readable(self) -> bool:
        """Always true."""
        return True

    def seekable(self) -> bool:
        """Always true."""
        return True

    @abc.abstractmethod
    def size(self) -> int:
        """Length of the blob in bytes."""


class BlobWriter(abc.ABC):
    """Receives a blob's bytes; ``close()`` stores it and returns its digest.

    The digest always comes from the data, never from the caller. ``close()`` is idempotent
    (a second call returns the same digest); ``write()`` after ``close()`` raises ClosedError.
    Leaving a ``with`` block on an exception aborts the writer and stores nothing more.
    """

    @abc.abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append data; returns len(data)."""

    @abc.abstractmethod
    def close(self) -> B3Digest:
        """Finish the blob, make it readable, and return its digest."""

    def abort(self) -> None:
        """Drop what was written; the default does nothing beyond forgetting the writer."""

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class BlobService(abc.ABC):
    """Blob storage. Methods are blocking and thread-safe."""

    @abc.abstractmethod
    def has(self, digest: B3Digest) -> bool:
        """Whether the blob (or a chunk of that digest) is present."""

    @abc.abstractmethod
    def open_read(self, digest: B3Digest) -> BlobReader | None:
        """A seekable reader over the blob, or None if absent."""

    @abc.abstractmethod
    def open_write(self) -> BlobWriter:
        """A writer for a new blob."""

    def chunks(self, digest: B3Digest) -> list[ChunkMeta] | None:
        """The blob's chunks: None if absent; [] if it is not split further (the default)."""
        return [] if self.has(digest) else None

    def flush(self, digest: B3Digest | None = None) -> None:
        """Return once every blob written so far (or just digest) is stored; raise if not.

        A commit point (a PathInfo put) calls it first, whichever service holds PathInfos; a
        daemon calls it for each blob it acknowledges. Most backends store a blob before
        ``close`` returns and have nothing to do here; the gRPC client uploads behind the
        writer and waits for its uploads.

        Raises:
            StoreError: a blob written earlier did not arrive.

        """

    def put(self, data: bytes) -> B3Digest:
        """Store data as one blob and return its digest (convenience over open_write)."""
        with self.open_write() as w:
            w.write(data)
            return w.close()

    def put_many(self, blobs: Sequence[bytes]) -> list[B3Digest]:
        """Store several (typically small) blobs; their digests, in order.

        Each becomes readable no later than when this returns. Backends may store them all in
        one operation (the LMDB store: one write transaction); the default puts them one by one.
        """
        return [self.put(data) for data in blobs]

    def close(self) -> None:
        """Release resources (connections, environments)."""


registry: Registry[BlobService] = Registry(
    "blob service",
    {
        "memory": "tvix_castore.blobservice.memory:MemoryBlobService",
        "lmdb": "tvix_castore.blobservice.lmdb_store:LmdbBlobService",
        "grpc": "tvix_castore.blobservice.grpc_client:GrpcBlobService",
    },
)


def from_addr(url: str) -> BlobService:
    """Build the BlobService a URL names (``memory://``, ``lmdb:///dir``, ``grpc+…``)."""
    return registry.from_addr(url)
